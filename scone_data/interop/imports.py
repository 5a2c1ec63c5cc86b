"""``scone-data import``: existing subject-driven sets into our shards (a normal, validatable output).

Two readers, one field map (:class:`FieldMap`, presets in :data:`PRESETS`, any field overridable):

- ``scone-parquet``: parquet files, e.g. Scone-S2I-57K's one list column of encoded images
  (references first, the target last) and an instruction column (preset ``scone-s2i``).
- ``jsonl`` (or ``json``, the same reader): JSON lines or one JSON array of objects, with image paths
  relative to ``image_root`` (default: the file's folder): X2I / OmniGen style (preset ``x2i``:
  ``input_images``, ``output_image``, ``instruction``, with ``<img><|image_N|></img>`` turned into
  "image N"), UNO style (preset ``uno``: a JSON array of ``image_paths`` or a single ``image_path``,
  ``image_tgt_path``, ``prompt``), ``generic`` (``references``, ``target``, ``prompt``), or any
  other layout through ``--field`` (``references`` may also name several single-image fields:
  ``references=img1,img2``).

Without ``--preset`` the layout is detected from the first rows (:func:`detect_layout`: the preset,
``--field`` overrides applied, that fits the most of them); when none fits, the import stops before
writing anything and names the fields it found. An import whose every row is rejected writes its
output (the rejects table says why) and exits 1.

An image value may be a path, raw bytes, or a ``{"bytes": ..., "path": ...}`` struct (Hugging Face
Image columns). What an imported sample is, since these sets say nothing about candidates:

- task: ``composition_single`` for one reference, ``composition_multi`` for more (no distractor
  information exists to call anything a distinction sample);
- each reference has ONE candidate, the intended one, covering the whole reference image
  (``box_xyxy = [0, 0, w, h]``), labelled from the ``label`` field (a string or one per reference),
  else ``--label``, else "subject"; reference ``kind`` is "crop" (a real photo, not a cutout/canvas);
- the target has one box per reference, each the whole target image;
- ``provenance.source`` is ``import:<format>:<file>#<row>`` (row counted from 0), ``models`` empty.

JPEG inputs without an EXIF rotation are stored byte for byte; anything else is decoded and re-encoded
as JPEG (quality ``convert.JPEG_QUALITY``) so the ``.jpg`` member names stay true. A row that cannot be
imported becomes a reject row (stage ``import``) with one of the reasons in ``convert.REASONS``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from scone_data import SCHEMA_VERSION, __version__, schemas
from scone_data.interop.convert import (
    DEFAULT_MAX_REFERENCES,
    FORMATS,
    PRESETS,
    REASONS,
    FieldMap,
    RowReject,
    convert_row,
    field_map,
    fits,
    with_overrides,
)
from scone_data.interop.reader import InteropError, claim_folder
from scone_data.interop.report import Reporter
from scone_data.runtime.config import ShardSettings
from scone_data.shards.files import write_parquet
from scone_data.shards.output import Output
from scone_data.shards.writer import ShardWriter

__all__ = ["FORMATS", "PRESETS", "REASONS", "FieldMap", "detect_layout", "field_map", "import_dataset"]

DEFAULT_SAMPLES_PER_SHARD = ShardSettings.samples_per_shard  # the build's default
PARQUET_BATCH_ROWS = 64  # rows read at a time from a parquet source: bounded memory for big image lists
DETECT_ROWS = 20  # rows read to tell the layout of a source


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        while not head and (chunk := f.read(4096)):
            head = chunk.lstrip()
    return head.startswith(b"[")


class _Source:
    """One source file's rows: ``(row_number, row_dict | None, error)``; a bad jsonl line or a
    non-object array item is a row error. A JSON array (UNO's training file) is parsed once, whole."""

    def __init__(self, fmt: str, path: Path):
        self.fmt, self.path = fmt, path
        self._array: list[Any] | None = None
        if fmt != "scone-parquet" and _is_json_array(path):
            try:
                self._array = json.loads(path.read_bytes())
            except ValueError as e:
                raise InteropError(
                    f"{path}: not valid JSON ({' '.join(str(e).split())[:200]})", code=2
                ) from None

    def __len__(self) -> int:
        if self._array is not None:
            return len(self._array)
        if self.fmt == "scone-parquet":
            return pq.ParquetFile(self.path).metadata.num_rows
        with open(self.path, "rb") as f:
            return sum(1 for line in f if line.strip())

    def rows(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        if self._array is not None:
            for i, obj in enumerate(self._array):
                yield (
                    i,
                    (obj if isinstance(obj, dict) else None),
                    "" if isinstance(obj, dict) else "not an object",
                )
        elif self.fmt == "scone-parquet":
            i = 0
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    yield i, row, ""
                    i += 1
        else:
            with open(self.path, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        yield i, None, f"invalid json: {e}"
                        continue
                    yield (
                        i,
                        (obj if isinstance(obj, dict) else None),
                        "" if isinstance(obj, dict) else "not an object",
                    )


def _field_names(row: dict[str, Any], prefix: str = "") -> list[str]:
    """A row's field names, nested objects as dotted names (what ``--field`` can name)."""
    out = []
    for k, v in row.items():
        out.append(prefix + k)
        if isinstance(v, dict) and not ({"bytes", "path"} & set(v)):
            out += _field_names(v, f"{prefix}{k}.")
    return out


def detect_layout(sources: list[_Source], overrides: list[str]) -> tuple[str, FieldMap]:
    """The preset (with ``overrides``) that fits the most of the first :data:`DETECT_ROWS` rows of
    ``sources``: ``(preset name, field map)``. Raises InteropError (code 2) naming the fields found
    when none fits a single row."""
    problems: list[str] = []
    maps = {name: with_overrides(fm, overrides, problems) for name, fm in PRESETS.items()}
    if problems:
        raise InteropError("bad import settings: " + "; ".join(sorted(set(problems))), code=2)
    rows = [r for src in sources for _, r, _ in itertools.islice(src.rows(), DETECT_ROWS) if r is not None]
    rows = rows[:DETECT_ROWS]
    # ties: the preset whose own field names are used most (not those --field replaced), then PRESETS order
    score = {
        name: (sum(fits(fm, r) for r in rows), len(set(fm.names()) & set(PRESETS[name].names())))
        for name, fm in maps.items()
        if not fm.validate()
    }
    best = max(score, key=lambda n: score[n], default=None)
    if best is not None and score[best][0] and not score[best][1]:
        return "custom", with_overrides(FieldMap(), overrides, [])  # all named by --field: no preset quirk
    if best is None or not score[best][0]:
        found = sorted({n for r in rows for n in _field_names(r)})
        known = "; ".join(f"{n} ({', '.join(fm.names())})" for n, fm in PRESETS.items())
        raise InteropError(
            f"cannot tell the layout of {', '.join(str(s.path) for s in sources)}: its rows have the fields "
            f"{', '.join(found) or '(no object rows)'}; the known layouts need: {known}. "
            "Name one with --preset, or map the fields with --field KEY=FIELD",
            code=2,
        )
    return best, maps[best]


def import_dataset(
    sources: list[str | Path],
    output: str | Path,
    fmt: str,
    fm: FieldMap | None = None,
    split: str = "train",
    label: str = "subject",
    image_root: str | Path | None = None,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    max_references: int = DEFAULT_MAX_REFERENCES,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Import ``sources`` (files of format ``fmt``) into a new output directory; returns its manifest.

    ``fm`` None: the layout is detected from the rows (:func:`detect_layout`, ``overrides`` applied).
    Raises InteropError (code 1) after writing the output when every row was rejected."""
    problems = fm.validate() if fm is not None else []
    if fmt not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}")
    if split not in ("train", "val"):
        problems.append(f"split must be train or val, got {split!r}")
    if samples_per_shard < 1 or max_references < 1:
        problems.append("samples_per_shard and max_references must be >= 1")
    if not label:
        problems.append("label must not be empty")
    paths = [Path(s) for s in sources]
    problems += [f"{p}: no such file" for p in paths if not p.is_file()]
    if problems:
        raise InteropError("bad import settings: " + "; ".join(problems), code=2)
    srcs = [_Source(fmt, p) for p in paths]
    layout = "given"
    if fm is None:
        layout, fm = detect_layout(srcs, list(overrides or []))
    out = Path(output)
    # locked for the run; an earlier import is replaced only once this one is complete
    reads = paths + ([Path(image_root)] if image_root else [])
    with claim_folder(out, "import", overwrite=overwrite, reads=reads, empty=True):
        reporter = reporter or Reporter("import", show_progress=False)
        config = {
            "import": {
                "format": fmt,
                "sources": [str(p.resolve()) for p in paths],
                "layout": layout,
                "fields": asdict(fm),
                "split": split,
                "label": label,
                "image_root": str(image_root) if image_root else None,
                "samples_per_shard": samples_per_shard,
                "max_references": max_references,
            }
        }
        cfg_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        total = sum(len(src) for src in srcs)
        reporter.start(format=fmt, sources=[str(p) for p in paths], output=str(out), rows=total)
        dest = Output(out)
        shard_dir = dest.shard_dir
        shard_dir.mkdir(parents=True, exist_ok=True)
        rejects: list[dict[str, Any]] = []
        shards: list[dict[str, Any]] = []
        tasks: Counter = Counter()
        seen: set[str] = set()
        images: set[str] = set()
        subjects = 0
        writer: ShardWriter | None = None

        def close_shard() -> None:
            nonlocal writer
            if writer is not None and writer.rows:
                st = writer.close()
                shards.append({k: st[k] for k in ("name", "samples", "bytes", "sha256")})
            writer = None

        with reporter.phase(total, "import rows") as bar:
            for src in srcs:
                path = src.path
                root = Path(image_root) if image_root else path.parent
                for i, row, err in src.rows():
                    uri = f"{path}#{i}"
                    try:
                        if row is None:
                            raise RowReject("invalid_row", err)
                        src = f"import:{fmt}:{path.name}#{i}"
                        rec, members = convert_row(row, fm, root, src, split, label, max_references, cfg_hash)
                        if rec["key"] in seen:
                            raise RowReject(
                                "duplicate_sample",
                                f"same images and instruction as an earlier row ({rec['key']})",
                            )
                    except RowReject as e:
                        # details quote the offending row; 200 characters name the problem without copying the row
                        rejects.append(schemas.reject_record("import", uri, None, e.reason, e.detail[:200]))
                        bar.update()
                        continue
                    if writer is None:
                        writer = ShardWriter(shard_dir, Output.shard_name(split, len(shards)))
                    writer.write(rec, members)
                    seen.add(rec["key"])
                    tasks[rec["task"]] += 1
                    subjects += len(rec["references"])
                    images.update(
                        [rec["target"]["image_id"]]
                        + [r["candidates"][0]["source_image_id"] for r in rec["references"]]
                    )
                    if len(writer.rows) == samples_per_shard:
                        close_shard()
                    bar.update()
        close_shard()
        write_parquet(dest.rejects, schemas.to_table("reject", rejects))
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "scone_data_version": __version__,
            "kind": "import",  # config.import says where the data came from
            "config": config,
            "config_hash": cfg_hash,
            "seed": 0,
            "images": len(images),
            "subjects": subjects,
            "samples": sum(tasks.values()),
            "tasks": dict(sorted(tasks.items())),
            "splits": {split: sum(tasks.values())} if tasks else {},
            "rejects": dict(sorted(Counter(r["reason"] for r in rejects).items())),
            "pair_rejects": {},
            "shards": shards,
        }
        dest.write_manifest(manifest)
    if rejects and not tasks:
        first = rejects[0]
        raise InteropError(
            f"every row was rejected ({', '.join(f'{k}: {v}' for k, v in manifest['rejects'].items())}; "
            f"the first, {first['uri']}: {first['reason']} {first['detail']}); layout {layout}, fields "
            f"{', '.join(fm.names())}; every reject is in {dest.rejects}"
        )
    return manifest
