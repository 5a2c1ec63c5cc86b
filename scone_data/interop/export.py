"""``scone-data export``: our shards in the formats of the Scone/BAGEL code.

``scone-parquet`` (what Scone's ``S2IIterableDataset.parse_row`` reads)::

  DEST/parquet_data/NAME/part-00000.parquet    columns: image (list<binary>: references in order,
                                               the target LAST), instruction (string), plus key and
                                               task (ignored by Scone's loader, kept for tracing)
  DEST/parquet_info/NAME.json                  {"<data_dir>/part-00000.parquet": {"num_row_groups": N,
                                                                                  "num_rows": M}, ...}
  DEST/parquet_info/NAME.dataset_info.py       the DATASET_INFO['s2i'][NAME] entry to paste into
                                               Scone's data/dataset_info.py
  DEST/parquet_info/NAME.config.yaml           the s2i group of a Scone data config, with the
                                               num_used_data the row-group layout needs
  DEST/dataset_info.json                       the same entry as JSON

BAGEL's ``ParquetStandardIterableDataset`` looks each file up in parquet_info under
``os.path.join(data_dir, file_name)``: a ``data_dir`` that differs from the keys gives no work at all.
So every path written (the keys, ``data_dir``, ``parquet_info_path``) starts with ``--data-dir``, DEST
as the training job will see it (default: DEST's absolute local path). Row groups are cut for Scone's
rank/worker split (:mod:`scone_data.interop.scone_layout`).

``sconeeval-jsonl`` (what SconeEval's ``test_score.py`` reads, ``--test_data DEST/data.jsonl
--test_image_dir DEST``): one line per sample with ``key``, ``task_type``, ``instruction``,
``input_images`` (paths relative to DEST), ``subject_list`` (per reference, a description of every
candidate shown) and ``subject_label`` (per reference, 1 for the candidates that must appear, else 0),
plus ``target_image`` (our ground truth; the evaluator ignores it). Images go to ``DEST/images/``.
"""

from __future__ import annotations

import itertools
import json
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data import schemas
from scone_data.interop.reader import (
    InteropError,
    claim_folder,
    count_samples,
    iter_samples,
    load_manifest,
    task_counts,
)
from scone_data.interop.report import Reporter
from scone_data.interop.scone_layout import (
    DEFAULT_WORKERS,
    DEFAULT_WORLD_SIZE,
    dataset_info_entry,
    plan_layout,
    scone_paths,
    yaml_group,
)
from scone_data.runtime import storage
from scone_data.runtime.outdir import EXPORT_MARKER
from scone_data.shards.files import atomic_open, write_bytes, write_json

# Scone's released sets hold ~1000 rows per file (70 files for 70 K samples).
DEFAULT_ROWS_PER_FILE = 1000
# A row group is the unit BAGEL's loader spreads over ranks/workers and loads whole into pandas:
# 64 samples of ~3-4 images at 100-300 KB each is ~20-80 MB in memory per worker.
DEFAULT_ROWS_PER_ROW_GROUP = 64
# Beside parquet_info/NAME.json (DEST's top level holds only what --overwrite knows to replace):
# what a Scone user pastes into data/dataset_info.py and into a data/configs/*.yaml.
SNIPPET_PY = "{name}.dataset_info.py"
SNIPPET_YAML = "{name}.config.yaml"

SCONE_SCHEMA = pa.schema(
    [
        pa.field("image", pa.list_(pa.binary()), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
    ]
)


@contextmanager
def _owned_dest(output: Path, dest: Path, fmt: str, overwrite: bool) -> Iterator[Path]:
    """Own ``dest`` for the export (:func:`scone_data.runtime.outdir.claim`): locked for the run;
    refused when it is or holds ``output``, is not empty without ``overwrite``, or is not an export
    of ours; a replaced export is deleted only once the new one is complete."""
    with claim_folder(dest, "export", overwrite=overwrite, reads=[output], empty=True, kind="export") as d:
        write_json(d / EXPORT_MARKER, {"format": fmt, "output": str(output.absolute())})
        yield d


def _split_arg(split: str) -> str | None:
    return None if split == "all" else split


def _scone_row(rec: dict[str, Any], members: dict[str, bytes]) -> dict[str, Any]:
    refs = [members[r["member"]] for r in rec["references"]]
    return {
        "image": refs + [members[rec["target"]["member"]]],  # references first, the target last
        "instruction": rec["instruction"],
        "key": rec["key"],
        "task": rec["task"],
    }


def _begin(output, split: str, reporter: Reporter | None):
    """What both exports do before touching ``dest``: the manifest (read once) and the sample count
    (an empty split is an error). Returns ``(reporter, manifest, total)``."""
    reporter = reporter or Reporter("export", show_progress=False)
    manifest = load_manifest(output)
    total = count_samples(output, _split_arg(split), manifest)
    if total == 0:
        raise InteropError(f"{output}: no samples in split {split!r}")
    return reporter, manifest, total


def export_scone_parquet(
    output: str | Path,
    dest: str | Path,
    split: str = "train",
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    rows_per_row_group: int = DEFAULT_ROWS_PER_ROW_GROUP,
    dataset_name: str = "scone_data",
    data_dir: str | None = None,
    world_size: int = DEFAULT_WORLD_SIZE,
    workers: int = DEFAULT_WORKERS,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write ``output``'s samples of ``split`` ("all" for every split) as Scone parquet; returns counts.

    ``rows_per_file`` and ``rows_per_row_group`` are upper bounds: the row groups are cut for
    ``world_size`` x ``workers`` (:func:`scone_layout.plan_layout`). ``data_dir``: DEST as the training
    job will see it (default: DEST's absolute local path); every path written is under it. Also
    writes the text a Scone user pastes in beside ``parquet_info/NAME.json`` (returned as
    ``counts["snippet"]``)."""
    problems = []
    if rows_per_file < 1:
        problems.append(f"rows_per_file must be >= 1, got {rows_per_file}")
    if not 1 <= rows_per_row_group <= max(rows_per_file, 1):
        problems.append(f"rows_per_row_group must be in 1..rows_per_file, got {rows_per_row_group}")
    if not dataset_name or "/" in dataset_name:
        problems.append(f"dataset_name must be a plain name, got {dataset_name!r}")
    if world_size < 1 or workers < 1:
        problems.append(f"world_size and workers must be >= 1, got {world_size} and {workers}")
    if problems:
        raise InteropError("; ".join(problems), code=2)
    reporter, manifest, total = _begin(output, split, reporter)
    layout = plan_layout(total, world_size, workers, rows_per_row_group, rows_per_file)
    with _owned_dest(storage.path(output), storage.path(dest), "scone-parquet", overwrite) as dest:
        local_dir = dest / "parquet_data" / dataset_name
        local_dir.mkdir(parents=True)
        data_dir, info_path = scone_paths(data_dir or str(dest.resolve()), dataset_name)

        info: dict[str, dict[str, int]] = {}
        tasks: dict[str, int] = {}
        reporter.start(format="scone-parquet", output=str(output), dest=str(dest), split=split, samples=total)
        samples = iter_samples(output, _split_arg(split), manifest=manifest)
        with reporter.phase(total, "export samples") as bar:
            for groups in layout.files:
                name = f"part-{len(info):05d}.parquet"
                with atomic_open(local_dir / name) as f:
                    # No statistics on the image list: min/max of JPEG bytes would only bloat the footer.
                    # closed on an error too: left to the garbage collector, it wrote its footer into
                    # the already-closed temporary
                    with pq.ParquetWriter(
                        f,
                        SCONE_SCHEMA,
                        compression={"image": "none", "instruction": "zstd", "key": "zstd", "task": "zstd"},
                        write_statistics=["instruction", "key", "task"],
                    ) as writer:
                        for size in groups:  # only one row group of samples is in memory at a time
                            group = list(itertools.islice(samples, size))
                            if len(group) < size:  # never an empty row group: a worker given one spins
                                raise InteropError(
                                    f"{output}: the shard indexes count {total} samples, the tars hold fewer; "
                                    f"`scone-data validate {output}` lists every problem",
                                    code=2,
                                )
                            writer.write_table(
                                pa.Table.from_pylist([_scone_row(*s) for s in group], schema=SCONE_SCHEMA)
                            )
                            for rec, _ in group:
                                tasks[rec["task"]] = tasks.get(rec["task"], 0) + 1
                            bar.update(len(group))
                info[posixpath.join(data_dir, name)] = {
                    "num_row_groups": len(groups),
                    "num_rows": sum(groups),
                }
        write_json(dest / "parquet_info" / f"{dataset_name}.json", info)
        n = sum(v["num_rows"] for v in info.values())
        entry = {"data_dir": data_dir, "num_files": len(info), "num_total_samples": n}
        write_json(
            dest / "dataset_info.json", {"s2i": {dataset_name: {**entry, "parquet_info_path": info_path}}}
        )
        py = dataset_info_entry(dataset_name, data_dir, len(info), n, info_path) + "\n"
        yml = yaml_group(dataset_name, layout, world_size, workers) + "\n"
        write_bytes(dest / "parquet_info" / SNIPPET_PY.format(name=dataset_name), py.encode())
        write_bytes(dest / "parquet_info" / SNIPPET_YAML.format(name=dataset_name), yml.encode())
        return {
            "format": "scone-parquet",
            "dest": str(dest),
            "samples": n,
            "files": len(info),
            "row_groups": layout.row_groups,
            "row groups Scone reads": f"{layout.units()} ({world_size} ranks x {workers} workers)",
            "tasks": dict(sorted(tasks.items())),
            "snippet": py + "\n" + yml,
        }


# --- SconeEval -------------------------------------------------------------------------------------


def _position(box: list[float], w: int, h: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    vert = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    where = " ".join(p for p in (vert, horiz) if p)
    return f"at the {where}" if where else "in the middle"


def describe_candidates(ref: dict[str, Any]) -> list[str]:
    """One description per candidate of a reference, for SconeEval's ``subject_list``.

    A candidate whose label is unique in the reference is its label. Look-alikes (intra) need more
    to be told apart by the judge: the intended one gets the reference's checked referring
    expression, the others their position in the reference image; a description still shared
    gets its rank from the left appended.
    """
    cands = ref["candidates"]
    labels = [c["label"] for c in cands]
    out = []
    for c in cands:
        if labels.count(c["label"]) == 1:
            out.append(c["label"])
        elif c["intended"] and ref.get("expression"):
            out.append(ref["expression"])
        else:
            out.append(f"the {c['label']} {_position(c['box_xyxy'], ref['width'], ref['height'])}")
    order = sorted(range(len(cands)), key=lambda i: cands[i]["box_xyxy"][0])
    rank = {i: r + 1 for r, i in enumerate(order)}
    return [f"{d} (number {rank[i]} from the left)" if out.count(d) > 1 else d for i, d in enumerate(out)]


def sconeeval_row(rec: dict[str, Any], image_dir: str = "images") -> dict[str, Any]:
    """The SconeEval jsonl object of one sample record (image paths relative to the jsonl's folder)."""
    key = rec["key"]
    return {
        "key": key,
        "task_type": rec["task"],
        "instruction": rec["instruction"],
        "input_images": [f"{image_dir}/{key}.{r['member']}" for r in rec["references"]],
        "subject_list": [describe_candidates(r) for r in rec["references"]],
        "subject_label": [[int(c["intended"]) for c in r["candidates"]] for r in rec["references"]],
        "target_image": f"{image_dir}/{key}.{rec['target']['member']}",
    }


def export_sconeeval_jsonl(
    output: str | Path,
    dest: str | Path,
    split: str = "val",
    allow_missing: bool = False,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write ``output``'s samples of ``split`` as SconeEval's data.jsonl + images; returns counts.

    SconeEval's statistics script reports per task type and fails when one of the six is absent, so
    an export missing a type is refused before anything is written; ``allow_missing`` exports anyway
    with a warning (and lists the missing types in the counts)."""
    reporter, manifest, total = _begin(output, split, reporter)
    have = task_counts(output, _split_arg(split), manifest)
    missing = [t for t in schemas.tasks() if not have.get(t)]
    if missing:
        why = (
            f"split {split!r} of {output} has no {', '.join(missing)} sample: SconeEval's statistics "
            "script needs all six task types"
        )
        if not allow_missing:
            raise InteropError(f"{why} (--allow-missing exports it anyway)")
        reporter.warn(f"{why}; exporting anyway (--allow-missing)")
    with _owned_dest(storage.path(output), storage.path(dest), "sconeeval-jsonl", overwrite) as dest:
        counts = _write_sconeeval(output, dest, split, reporter, manifest, total)
    return counts | ({"missing tasks": missing} if missing else {})


def _write_sconeeval(
    output, dest: Path, split: str, reporter: Reporter, manifest, total: int
) -> dict[str, Any]:
    reporter.start(format="sconeeval-jsonl", output=str(output), dest=str(dest), split=split, samples=total)
    lines, tasks, images = [], {}, 0
    with reporter.phase(total, "export samples") as bar:
        for rec, members in iter_samples(output, _split_arg(split), manifest=manifest):
            for member, data in members.items():
                write_bytes(dest / "images" / f"{rec['key']}.{member}", data)
                images += 1
            lines.append(json.dumps(sconeeval_row(rec), ensure_ascii=False, sort_keys=True))
            tasks[rec["task"]] = tasks.get(rec["task"], 0) + 1
            bar.update()
    write_bytes(dest / "data.jsonl", ("\n".join(lines) + "\n").encode())
    return {
        "format": "sconeeval-jsonl",
        "dest": str(dest),
        "samples": len(lines),
        "images": images,
        "tasks": dict(sorted(tasks.items())),
    }
