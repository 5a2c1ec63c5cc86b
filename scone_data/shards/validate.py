"""``scone-data validate OUTPUT``: everything a reader relies on, checked against the bytes on disk.

Checks: the manifest against its schema; for each shard it lists, the tar's sha256 and integrity
(every member readable, groups complete: json + the references and target its record names, no
stray or duplicate members), every sample json against the Sample schema, every JPEG decodes,
the parquet index against the tar (keys, order, byte offsets and sizes), the stats json against
the tar; totals against the manifest; no tar that the manifest does not list; no temporary file
left where a reader could see it. Returns every problem found (empty list = valid).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scone_data import schemas
from scone_data.shards.files import TMP_PREFIX
from scone_data.shards.writer import _padded

MAX_PROBLEMS_PER_SHARD = 20  # past this a shard is clearly broken; more lines would bury the others


def _check_shard(shard_dir: Path, entry: dict, decode_images: bool) -> tuple[list[str], Counter, int]:
    import cv2

    name = entry["name"]
    tar_path = shard_dir / f"{name}.tar"
    problems: list[str] = []
    tasks: Counter = Counter()
    if not tar_path.exists():
        return [f"{name}: {tar_path.name} is missing"], tasks, 0
    data = tar_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest")
    groups: dict[str, dict[str, bytes]] = {}
    first_offset: dict[str, int] = {}
    end: dict[str, int] = {}
    order: list[str] = []
    try:
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
    except (tarfile.TarError, OSError, EOFError) as e:
        return problems + [f"{name}: unreadable tar ({e})"], tasks, 0
    for key in order:
        members = groups[key]
        if "json" not in members:
            problems.append(f"{name}/{key}: no json member")
            continue
        try:
            rec = json.loads(members["json"])
            schemas.validate("sample", rec)
        except (ValueError, schemas.SchemaError) as e:
            problems.append(f"{name}/{key}: {e}")
            continue
        if rec["key"] != key:
            problems.append(f"{name}/{key}: json key {rec['key']!r} differs from the member names")
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
        tasks[rec["task"]] += 1
    index_path = shard_dir / f"{name}.parquet"
    if not index_path.exists():
        problems.append(f"{name}: index {index_path.name} is missing")
    else:
        rows = pq.read_table(index_path).to_pylist()
        if [r["key"] for r in rows] != order:
            problems.append(f"{name}: index keys differ from the tar's samples or their order")
        for r in rows:
            k = r["key"]
            if k in first_offset and (r["offset"] != first_offset[k] or r["offset"] + r["size"] != end[k]):
                problems.append(
                    f"{name}/{k}: index byte range {r['offset']}+{r['size']} does not match the tar"
                )
    stats_path = shard_dir / f"{name}.stats.json"
    if not stats_path.exists():
        problems.append(f"{name}: stats {stats_path.name} is missing")
    else:
        st = json.loads(stats_path.read_text())
        if st.get("samples") != len(order) or st.get("tasks") != dict(sorted(tasks.items())):
            problems.append(f"{name}: stats json disagrees with the tar")
    if entry["samples"] != len(order):
        problems.append(f"{name}: manifest says {entry['samples']} samples, tar has {len(order)}")
    return problems[:MAX_PROBLEMS_PER_SHARD], tasks, len(order)


def validate_output(output: str | Path, decode_images: bool = True) -> list[str]:
    out = Path(output)
    mpath = out / "manifest.json"
    if not mpath.exists():
        return [f"{out}: no manifest.json (the run did not finish)"]
    try:
        manifest = json.loads(mpath.read_text())
        schemas.validate("manifest", manifest)
    except (ValueError, schemas.SchemaError) as e:
        return [f"manifest.json: {e}"]
    shard_dir = out / "shards"
    problems: list[str] = []
    tasks: Counter = Counter()
    total = 0
    for entry in manifest["shards"]:
        p, t, n = _check_shard(shard_dir, entry, decode_images)
        problems += p
        tasks.update(t)
        total += n
    listed = {e["name"] for e in manifest["shards"]}
    for tar in sorted(shard_dir.glob("*.tar")) if shard_dir.exists() else []:
        if tar.stem not in listed:
            problems.append(f"{tar.name}: a shard the manifest does not list")
    for tmp in sorted(out.rglob(f"{TMP_PREFIX}*")):
        problems.append(f"{tmp.relative_to(out)}: a temporary file left behind")
    if total != manifest["samples"]:
        problems.append(f"manifest: samples {manifest['samples']} != {total} in the shards")
    if dict(sorted(tasks.items())) != manifest["tasks"]:
        problems.append(
            f"manifest: task counts {manifest['tasks']} != {dict(sorted(tasks.items()))} in the shards"
        )
    if not (out / "rejects.parquet").exists():
        problems.append("rejects.parquet is missing")
    return problems
