"""The ``export``, ``import`` and ``inspect`` subcommands; ``scone_data.cli`` adds them with
:func:`add_interop_parsers`. Every handler returns an exit code: 0 done, 1 failed, 2 bad settings.

All three take ``--log-json`` (JSON lines on stderr: start / progress / summary events, see
:mod:`scone_data.interop.report`) and ``--no-progress``; each prints a summary table on stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from scone_data.interop.reader import InteropError
from scone_data.interop.report import Reporter
from scone_data.runtime import storage


def _run(command: str, args, work: Callable[[Reporter], dict[str, Any]], title: str) -> int:
    rep = Reporter(command, log_json=args.log_json, show_progress=not args.no_progress)
    try:
        counts = work(rep)
    except InteropError as e:
        rep.fail(str(e))
        print(f"error: {e}", file=sys.stderr)
        return e.code
    snippet = counts.pop("snippet", None)
    rep.summary(title, counts)
    if snippet:
        where = storage.path(args.dest) / "parquet_info"
        print(f"\nTo train Scone on it, paste (also written to {where}):\n\n{snippet}", end="")
    return 0


def cmd_export(args) -> int:
    from scone_data.interop import export

    def work(rep: Reporter) -> dict[str, Any]:
        if args.format == "scone-parquet":
            return export.export_scone_parquet(
                args.output,
                args.dest,
                split=args.split or "train",
                rows_per_file=args.rows_per_file,
                rows_per_row_group=args.rows_per_row_group,
                dataset_name=args.dataset_name,
                data_dir=args.data_dir,
                world_size=args.world_size,
                workers=args.workers,
                overwrite=args.overwrite,
                reporter=rep,
            )
        return export.export_sconeeval_jsonl(
            args.output,
            args.dest,
            split=args.split or "val",
            allow_missing=args.allow_missing,
            overwrite=args.overwrite,
            reporter=rep,
        )

    return _run("export", args, work, f"export {args.format}: {args.dest}")


def cmd_import(args) -> int:
    from scone_data.interop import imports

    def work(rep: Reporter) -> dict[str, Any]:
        fm = imports.field_map(args.format, args.preset, args.field) if args.preset else None
        m = imports.import_dataset(
            args.sources,
            args.output,
            args.format,
            fm,
            overrides=args.field,
            split=args.split,
            label=args.label,
            image_root=args.image_root,
            samples_per_shard=args.samples_per_shard,
            max_references=args.max_references,
            overwrite=args.overwrite,
            reporter=rep,
        )
        return {
            "output": args.output,
            "layout": m["config"]["import"]["layout"],
            "samples": m["samples"],
            "shards": len(m["shards"]),
            "images": m["images"],
            "tasks": m["tasks"],
            "rejected rows": m["rejects"],
        }

    return _run("import", args, work, f"import {args.format}: {args.output}")


def cmd_inspect(args) -> int:
    from scone_data.interop import inspect_html

    def work(rep: Reporter) -> dict[str, Any]:
        if args.html:
            return inspect_html.build_report(
                args.output, args.html, args.per_task, args.bank_subjects, args.split, reporter=rep
            )
        rep.start(output=args.output)
        return inspect_html.text_summary(args.output)

    return _run("inspect", args, work, f"inspect: {args.output}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-json", action="store_true", help="JSON lines on stderr: start, progress, summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_interop_parsers(subparsers) -> None:
    """Add ``export``, ``import`` and ``inspect`` to ``scone-data``'s subparsers."""
    from scone_data.interop import export, imports

    e = subparsers.add_parser("export", help="shards -> Scone training parquet or SconeEval jsonl")
    e.add_argument("output", help="a scone-data output directory")
    e.add_argument("dest", help="directory to write (must be empty unless --overwrite)")
    e.add_argument("--format", required=True, choices=["scone-parquet", "sconeeval-jsonl"])
    e.add_argument("--split", choices=["train", "val", "all"], help="default: train (parquet), val (jsonl)")
    e.add_argument("--rows-per-file", type=int, default=export.DEFAULT_ROWS_PER_FILE, help="at most")
    e.add_argument(
        "--rows-per-row-group", type=int, default=export.DEFAULT_ROWS_PER_ROW_GROUP, help="at most"
    )
    e.add_argument("--dataset-name", default="scone_data", help="name under parquet_data/ and parquet_info/")
    e.add_argument(
        "--data-dir",
        help="DEST as the training job will see it (a path or URI); every path written starts with it",
    )
    e.add_argument(
        "--world-size",
        type=int,
        default=export.DEFAULT_WORLD_SIZE,
        help="GPUs of the Scone run: row groups are cut so that every rank and worker gets work",
    )
    e.add_argument("--workers", type=int, default=export.DEFAULT_WORKERS, help="data workers per GPU")
    e.add_argument(
        "--allow-missing",
        action="store_true",
        help="sconeeval-jsonl: export even when a task type is missing (warns)",
    )
    e.add_argument("--overwrite", action="store_true", help="replace DEST (an earlier export of ours)")
    _common(e)
    e.set_defaults(fn=cmd_export)

    i = subparsers.add_parser(
        "import", help="an existing subject-driven set (parquet, jsonl or a JSON array) -> our shards"
    )
    i.add_argument("sources", nargs="+", help="parquet, jsonl or JSON-array files")
    i.add_argument("-o", "--output", required=True, help="new output directory")
    i.add_argument("--format", required=True, choices=list(imports.FORMATS))
    i.add_argument(
        "--preset", choices=list(imports.PRESETS), help="field names (default: detected from the rows)"
    )
    i.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="KEY=FIELD",
        help="override a field: images, references (FIELD or F1,F2), target, instruction, label, placeholders",
    )
    i.add_argument("--label", default="subject", help="candidate label when the source has no label field")
    i.add_argument("--split", default="train", choices=["train", "val"])
    i.add_argument("--image-root", help="base of relative image paths (default: each jsonl's folder)")
    i.add_argument("--samples-per-shard", type=int, default=imports.DEFAULT_SAMPLES_PER_SHARD)
    i.add_argument("--max-references", type=int, default=imports.DEFAULT_MAX_REFERENCES)
    i.add_argument("--overwrite", action="store_true", help="replace OUTPUT (an earlier import of ours)")
    _common(i)
    i.set_defaults(fn=cmd_import)

    s = subparsers.add_parser("inspect", help="counts, or a self-contained HTML report with --html")
    s.add_argument("output", help="a scone-data output directory")
    s.add_argument("--html", help="write the report page here")
    s.add_argument("--per-task", type=int, default=4, help="sample cards per task")
    s.add_argument("--bank-subjects", type=int, default=24, help="subjects shown from the bank")
    s.add_argument("--split", choices=["train", "val"], help="only this split (default: all)")
    _common(s)
    s.set_defaults(fn=cmd_inspect)
