"""``scone-data export``: our shards in the formats of the Scone/BAGEL code.

``scone-parquet`` (what Scone's ``S2IIterableDataset.parse_row`` reads)::

  DEST/parquet_data/NAME/part-00000.parquet    columns: image (list<binary>: references in order,
                                               the target LAST), instruction (string), plus key and
                                               task (ignored by Scone's loader, kept for tracing)
  DEST/parquet_info/NAME.json                  {"<data_dir>/part-00000.parquet": {"num_row_groups": N,
                                                                                  "num_rows": M}, ...}
  DEST/dataset_info.json                       the DATASET_INFO['s2i'][NAME] entry to paste into
                                               Scone's data/dataset_info.py

BAGEL's ``ParquetStandardIterableDataset`` looks each file up in parquet_info under
``os.path.join(data_dir, file_name)``, so the keys use ``data_dir`` exactly as given (``--data-dir``,
default: the absolute local path); the same string must go into dataset_info.py.

``sconeeval-jsonl`` (what SconeEval's ``test_score.py`` reads, ``--test_data DEST/data.jsonl
--test_image_dir DEST``): one line per sample with ``key``, ``task_type``, ``instruction``,
``input_images`` (paths relative to DEST), ``subject_list`` (per reference, a description of every
candidate shown) and ``subject_label`` (per reference, 1 for the candidates that must appear, else 0),
plus ``target_image`` (our ground truth; the evaluator ignores it). Images go to ``DEST/images/``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data.interop.reader import InteropError, claim_folder, count_samples, iter_samples, load_manifest
from scone_data.interop.report import Reporter
from scone_data.runtime.outdir import EXPORT_MARKER
from scone_data.shards.files import atomic_open, write_bytes, write_json

# Scone's released sets hold ~1000 rows per file (70 files for 70 K samples).
DEFAULT_ROWS_PER_FILE = 1000
# A row group is the unit BAGEL's loader spreads over ranks/workers and loads whole into pandas:
# 64 samples of ~3-4 images at 100-300 KB each is ~20-80 MB in memory per worker.
DEFAULT_ROWS_PER_ROW_GROUP = 64

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


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


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
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write ``output``'s samples of ``split`` ("all" for every split) as Scone parquet; returns counts."""
    problems = []
    if rows_per_file < 1:
        problems.append(f"rows_per_file must be >= 1, got {rows_per_file}")
    if not 1 <= rows_per_row_group <= max(rows_per_file, 1):
        problems.append(f"rows_per_row_group must be in 1..rows_per_file, got {rows_per_row_group}")
    if not dataset_name or "/" in dataset_name:
        problems.append(f"dataset_name must be a plain name, got {dataset_name!r}")
    if problems:
        raise InteropError("; ".join(problems), code=2)
    reporter, manifest, total = _begin(output, split, reporter)
    with _owned_dest(Path(output), Path(dest), "scone-parquet", overwrite) as dest:
        local_dir = dest / "parquet_data" / dataset_name
        local_dir.mkdir(parents=True)
        data_dir = data_dir if data_dir is not None else str(local_dir.resolve())

        info: dict[str, dict[str, int]] = {}
        tasks: dict[str, int] = {}
        reporter.start(format="scone-parquet", output=str(output), dest=str(dest), split=split, samples=total)
        samples = iter_samples(output, _split_arg(split), manifest=manifest)
        with reporter.phase(total, "export samples") as bar:
            while (head := next(samples, None)) is not None:
                # Lazy: only one row group of samples is in memory at a time, whatever rows_per_file is.
                chunk = itertools.chain([head], itertools.islice(samples, rows_per_file - 1))
                name = f"part-{len(info):05d}.parquet"
                groups = rows = 0
                with atomic_open(local_dir / name) as f:
                    # No statistics on the image list: min/max of JPEG bytes would only bloat the footer.
                    writer = pq.ParquetWriter(
                        f,
                        SCONE_SCHEMA,
                        compression={"image": "none", "instruction": "zstd", "key": "zstd", "task": "zstd"},
                        write_statistics=["instruction", "key", "task"],
                    )
                    for group in _batched(chunk, rows_per_row_group):
                        writer.write_table(
                            pa.Table.from_pylist([_scone_row(*s) for s in group], schema=SCONE_SCHEMA)
                        )
                        groups += 1
                        rows += len(group)
                        for rec, _ in group:
                            tasks[rec["task"]] = tasks.get(rec["task"], 0) + 1
                        bar.update(len(group))
                    writer.close()
                info[os.path.join(data_dir, name)] = {"num_row_groups": groups, "num_rows": rows}
        info_path = dest / "parquet_info" / f"{dataset_name}.json"
        write_json(info_path, info)
        n = sum(v["num_rows"] for v in info.values())
        write_json(
            dest / "dataset_info.json",
            {
                "s2i": {
                    dataset_name: {
                        "data_dir": data_dir,
                        "num_files": len(info),
                        "num_total_samples": n,
                        "parquet_info_path": str(info_path.resolve()),
                    }
                }
            },
        )
        return {
            "format": "scone-parquet",
            "dest": str(dest),
            "samples": n,
            "files": len(info),
            "row_groups": sum(v["num_row_groups"] for v in info.values()),
            "tasks": dict(sorted(tasks.items())),
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
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write ``output``'s samples of ``split`` as SconeEval's data.jsonl + images; returns counts."""
    reporter, manifest, total = _begin(output, split, reporter)
    with _owned_dest(Path(output), Path(dest), "sconeeval-jsonl", overwrite) as dest:
        return _write_sconeeval(output, dest, split, reporter, manifest, total)


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
