"""``scone-data validate OUTPUT``: everything a reader relies on, checked against the bytes on disk.

Checks: the manifest against its schema; for each shard it lists, the tar's sha256 and size and its
integrity (every member readable, groups complete: json + the references and target its record
names, no stray or duplicate members), every sample json against the Sample schema and its split
against the shard's name, every JPEG decodes; the parquet index against the tar (each row's key,
task, split, number of references and byte range, in the tar's order); the stats json against the
tar (samples, bytes, sha256, samples per task); every count of the manifest against the files
(samples, tasks, splits, reject reasons from ``rejects.parquet``; images and subjects from the bank
of a build, or of the build a regen read, or from the records of an import); the bank of a build
(see :func:`scone_data.bank.store.check_bank`); no tar or other file the output does not account
for; no temporary file left where a reader could see it.

Returns every problem found, one line each (empty list = valid). A damaged file is a finding, never
an exception.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scone_data import schemas
from scone_data.bank.store import check_bank, one_line
from scone_data.runtime import storage
from scone_data.runtime.outdir import LOCK_NAME
from scone_data.shards.files import TMP_PREFIX
from scone_data.shards.output import CARD, MANIFEST, REJECTS, SHARD_EXTS, ManifestError, Output
from scone_data.shards.writer import _padded

MAX_PROBLEMS_PER_SHARD = 20  # past this a shard is clearly broken; more lines would bury the others
# what a build, regen or import writes at the top of its output
TOP_FILES = {MANIFEST, REJECTS, CARD, LOCK_NAME}
SHARD_FILES = SHARD_EXTS


class _Tally:
    """What the shards hold, summed for the manifest's counts."""

    def __init__(self) -> None:
        self.tasks: Counter = Counter()
        self.splits: Counter = Counter()
        self.samples = 0
        self.images: set[str] = set()  # import outputs count these from the records
        self.references = 0

    def add(self, rec: dict[str, Any]) -> None:
        self.tasks[rec["task"]] += 1
        self.splits[rec["split"]] += 1
        self.images.add(rec["target"]["image_id"])
        for r in rec["references"]:
            self.references += 1
            if r.get("candidates"):
                self.images.add(r["candidates"][0]["source_image_id"])

    def merge(self, other: _Tally) -> None:
        self.tasks.update(other.tasks)
        self.splits.update(other.splits)
        self.samples += other.samples
        self.images |= other.images
        self.references += other.references


def _read_tar(name: str, data: bytes, problems: list[str]):
    """Members grouped by sample key, each sample's byte range, and the keys in order."""
    groups: dict[str, dict[str, bytes]] = {}
    first_offset: dict[str, int] = {}
    end: dict[str, int] = {}
    order: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:  # the bytes just hashed: one read
        for m in tf:
            if not m.isfile():
                problems.append(f"{name}: member {m.name} is not a regular file")
                continue
            key, _, ext = m.name.partition(".")
            if key not in groups:
                if key in end:
                    problems.append(f"{name}: sample {key} is split across the tar")
                groups[key] = {}
                first_offset[key] = m.offset
                order.append(key)
            if ext in groups[key]:
                problems.append(f"{name}: duplicate member {m.name}")
            groups[key][ext] = tf.extractfile(m).read()
            end[key] = m.offset_data + _padded(m.size)
    return groups, first_offset, end, order


def _check_records(name: str, groups, order, decode_images: bool, problems: list[str]) -> dict[str, dict]:
    import cv2

    split = Output.split_of(name)
    records: dict[str, dict] = {}
    for key in order:
        members = groups[key]
        if "json" not in members:
            problems.append(f"{name}/{key}: no json member")
            continue
        try:
            rec = json.loads(members["json"])
            schemas.validate("sample", rec)
        except (ValueError, schemas.SchemaError) as e:
            problems.append(f"{name}/{key}: {one_line(e)}")
            continue
        if rec["key"] != key:
            problems.append(f"{name}/{key}: json key {rec['key']!r} differs from the member names")
        if rec["split"] != split:
            problems.append(f"{name}/{key}: split {rec['split']!r} in a shard of split {split!r}")
        want = {r["member"] for r in rec["references"]} | {rec["target"]["member"], "json"}
        if set(members) != want:
            problems.append(f"{name}/{key}: members {sorted(members)} != {sorted(want)}")
        if decode_images:
            for ext, b in members.items():
                if (
                    ext.endswith(".jpg")
                    and cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) is None
                ):
                    problems.append(f"{name}/{key}.{ext}: does not decode as an image")
        records[key] = rec
    return records


def _check_index(name: str, path: Path, order, records, first_offset, end, problems: list[str]) -> None:
    if not path.exists():
        problems.append(f"{name}: index {path.name} is missing")
        return
    try:
        rows = pq.read_table(storage.parquet_source(path)).to_pylist()
    except (OSError, pa.ArrowException, ValueError) as e:
        problems.append(f"{name}: index {path.name} is unreadable ({one_line(e)})")
        return
    for i, r in enumerate(rows):
        try:
            schemas.validate("index_row", r)
        except schemas.SchemaError as e:
            problems.append(f"{name}: index row {i}: {one_line(e)}")
            return
    if [r["key"] for r in rows] != order:
        problems.append(f"{name}: index keys differ from the tar's samples or their order")
    for r in rows:
        k, rec = r["key"], records.get(r["key"])
        if rec is not None:
            for field, want in (
                ("task", rec["task"]),
                ("split", rec["split"]),
                ("num_references", len(rec["references"])),
            ):
                if r[field] != want:
                    problems.append(f"{name}/{k}: index {field} {r[field]!r} != {want!r} in the tar")
        if k in first_offset and (r["offset"] != first_offset[k] or r["offset"] + r["size"] != end[k]):
            problems.append(f"{name}/{k}: index byte range {r['offset']}+{r['size']} does not match the tar")


def _check_stats(name: str, path: Path, data: bytes, digest: str, tally: _Tally, problems: list[str]) -> None:
    if not path.exists():
        problems.append(f"{name}: stats {path.name} is missing")
        return
    try:
        st = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        problems.append(f"{name}: stats {path.name} is unreadable ({one_line(e)})")
        return
    if not isinstance(st, dict):
        problems.append(f"{name}: stats {path.name} is not a json object")
        return
    want = {
        "name": name,
        "samples": tally.samples,
        "bytes": len(data),
        "sha256": digest,
        "tasks": dict(sorted(tally.tasks.items())),
    }
    for k, v in want.items():
        if st.get(k) != v:
            problems.append(f"{name}: stats {k} {st.get(k)!r} != {v!r} in the tar")


def _check_shard(out: Output, entry: dict, decode_images: bool) -> tuple[list[str], _Tally]:
    name = entry["name"]
    tar_path = out.shard_path(name)
    problems: list[str] = []
    tally = _Tally()
    if not tar_path.exists():
        return [f"{name}: {tar_path.name} is missing"], tally
    try:
        data = tar_path.read_bytes()
    except OSError as e:
        return [f"{name}: {tar_path.name} is unreadable ({one_line(e)})"], tally
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest")
    if entry.get("bytes") != len(data):
        problems.append(f"{name}: manifest says {entry.get('bytes')} bytes, the tar has {len(data)}")
    try:
        groups, first_offset, end, order = _read_tar(name, data, problems)
    except (tarfile.TarError, OSError, EOFError) as e:
        return problems + [f"{name}: unreadable tar ({one_line(e)})"], tally
    records = _check_records(name, groups, order, decode_images, problems)
    for key in order:
        if key in records:
            tally.add(records[key])
    tally.samples = len(order)  # not counted by add: a sample whose json is bad is one in the tar too
    _check_index(name, out.shard_path(name, ".parquet"), order, records, first_offset, end, problems)
    _check_stats(name, out.shard_path(name, ".stats.json"), data, digest, tally, problems)
    if entry["samples"] != len(order):
        problems.append(f"{name}: manifest says {entry['samples']} samples, tar has {len(order)}")
    return problems[:MAX_PROBLEMS_PER_SHARD], tally


def _check_rejects(out: Output, manifest: dict) -> list[str]:
    path = out.rejects
    if not path.exists():
        return ["rejects.parquet is missing"]
    try:
        table = pq.read_table(storage.parquet_source(path))
        missing = [c for c in schemas.json_schema("reject")["required"] if c not in table.schema.names]
        if missing:
            return [f"rejects.parquet: not a rejects table (missing columns {missing})"]
        reasons = Counter(table.column("reason").to_pylist())
    except (OSError, pa.ArrowException, ValueError) as e:
        return [f"rejects.parquet is unreadable ({one_line(e)})"]
    have = dict(sorted(reasons.items()))
    if have != manifest["rejects"]:
        return [f"manifest: rejects by reason {manifest['rejects']} != {have} in rejects.parquet"]
    return []


def _check_sources(out: Path, manifest: dict, tally: _Tally) -> list[str]:
    """images, subjects (and the bank itself) against what they were counted from."""
    kind = manifest["kind"]
    if kind == "build":
        return check_bank(out, manifest)[1]
    if kind == "regen":
        # the counts are those of the build whose bank it read; checked while that bank is there
        bank = manifest["config"].get("bank")
        if isinstance(bank, str) and (storage.path(bank) / "bank").is_dir():
            problems = check_bank(bank, manifest)[1]
            return [f"bank of {bank}: {p}" for p in problems]
        return []
    problems = []  # import: counted from the records themselves
    for what, have in (("images", len(tally.images)), ("subjects", tally.references)):
        if manifest[what] != have:
            problems.append(f"manifest: {what} {manifest[what]} != {have} in the shards")
    return problems


def _unknown_files(out: Path, listed: set[str]) -> list[str]:
    """Files the output does not account for (the bank's own folder is checked by check_bank)."""
    problems = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        top = rel.parts[0]
        if p.is_dir() or p.name.startswith(TMP_PREFIX) or top == "bank":
            continue
        if len(rel.parts) == 1:
            ok = top in TOP_FILES
        elif top == "shards" and len(rel.parts) == 2 and p.suffix == ".tar" and p.stem not in listed:
            problems.append(f"{rel}: a shard the manifest does not list")
            continue
        elif top == "shards":
            ok = len(rel.parts) == 2 and any(
                p.name.endswith(ext) and p.name[: -len(ext)] in listed for ext in SHARD_FILES
            )
        elif top == "ledger":
            ok = len(rel.parts) == 3 and rel.parts[1] in ("bank", "shards") and p.name.endswith(".done")
        else:
            ok = False
        if not ok:
            problems.append(f"{rel}: a file the output does not account for")
    return problems


def validate_output(output: str | Path, decode_images: bool = True) -> list[str]:
    out = storage.path(output)
    dest = Output(out)
    try:
        manifest = dest.read_manifest()
    except ManifestError as e:
        return [
            f"{out}: no manifest.json (the run did not finish)"
            if e.missing
            else f"manifest.json: {one_line(e.error)}"
        ]
    except OSError as e:
        return [f"manifest.json: {one_line(e)}"]
    problems: list[str] = []
    tally = _Tally()
    for entry in manifest["shards"]:
        p, t = _check_shard(dest, entry, decode_images)
        problems += p
        tally.merge(t)
    problems += _unknown_files(out, {e["name"] for e in manifest["shards"]})
    for tmp in sorted(out.rglob(f"{TMP_PREFIX}*")):
        problems.append(f"{tmp.relative_to(out)}: a temporary file left behind")
    if tally.samples != manifest["samples"]:
        problems.append(f"manifest: samples {manifest['samples']} != {tally.samples} in the shards")
    for what, have in (("tasks", tally.tasks), ("splits", tally.splits)):
        have = dict(sorted(have.items()))
        if have != manifest[what]:
            problems.append(f"manifest: {what} {manifest[what]} != {have} in the shards")
    problems += _check_rejects(dest, manifest)
    problems += _check_sources(out, manifest, tally)
    return problems
