"""One shard: a WebDataset tar, its parquet index and its stats json, all written atomically.

Member layout per sample (DESIGN.md): ``{key}.json``, ``{key}.ref0.jpg`` ... ``{key}.refN.jpg``,
``{key}.target.jpg`` (webdataset's TarWriter writes a sample's members in sorted order). Tar
headers carry fixed metadata (mtime 0, uid/gid 0, owner "scone") so the same samples give the
same bytes. The index records each sample's byte range in the tar, computed from USTAR's layout
(a 512-byte header per member, data padded to 512); ``validate`` checks it against the tar.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import webdataset as wds

from scone_data import SCHEMA_VERSION, schemas
from scone_data.runtime import storage
from scone_data.shards.files import atomic_open, write_json, write_parquet

BLOCK = 512
MAX_MEMBER_NAME = 100  # USTAR's name field; keys are 16 hex so member names stay far below it


def _padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def sample_json(record: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of a sample record (sorted keys, compact, UTF-8)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ShardWriter:
    """Collects samples for shard ``name`` in ``directory``; :meth:`close` publishes the three files.

    Nothing is visible under the final names until close() returns.
    """

    def __init__(self, directory: str | Path, name: str):
        self.directory = storage.path(directory)
        self.name = name
        self.buf = io.BytesIO()
        self.tar = wds.TarWriter(self.buf, user="scone", group="scone", mode=0o444, mtime=0, encoder=False)
        self.rows: list[dict[str, Any]] = []
        self.offset = 0
        self.tasks: Counter = Counter()
        self.keys: set[str] = set()

    def write(self, record: dict[str, Any], members: dict[str, bytes]) -> None:
        """Add one sample. ``members`` maps ``ref0.jpg``/``target.jpg``... to encoded bytes."""
        schemas.validate("sample", record)
        key = record["key"]
        if key in self.keys:
            raise ValueError(f"duplicate key {key} in shard {self.name}")
        expected = {r["member"] for r in record["references"]} | {record["target"]["member"]}
        if set(members) != expected:
            raise ValueError(
                f"sample {key}: members {sorted(members)} != those its record names {sorted(expected)}"
            )
        obj = {"__key__": key, "json": sample_json(record), **members}
        size = sum(BLOCK + _padded(len(v)) for k, v in obj.items() if k != "__key__")
        if any(len(f"{key}.{k}") > MAX_MEMBER_NAME for k in obj):
            raise ValueError(f"sample {key}: member name longer than {MAX_MEMBER_NAME} bytes")
        self.tar.write(obj)
        self.rows.append(
            {
                "schema_version": SCHEMA_VERSION,
                "key": key,
                "task": record["task"],
                "split": record["split"],
                "num_references": len(record["references"]),
                "offset": self.offset,
                "size": size,
            }
        )
        self.offset += size
        self.tasks[record["task"]] += 1
        self.keys.add(key)

    def close(self) -> dict[str, Any]:
        """Finish the tar and publish tar, index and stats; returns the stats dict."""
        self.tar.close()
        data = self.buf.getvalue()
        tar_path = self.directory / f"{self.name}.tar"
        with atomic_open(tar_path) as f:
            f.write(data)
        write_parquet(self.directory / f"{self.name}.parquet", schemas.to_table("index_row", self.rows))
        stats = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "samples": len(self.rows),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "tasks": dict(sorted(self.tasks.items())),
        }
        write_json(self.directory / f"{self.name}.stats.json", stats)
        return stats


def iter_records(tar_path: str | Path):
    """The sample records of a shard, in order, reading only the json members (image data is seeked
    over). Kept for callers outside this package; new code reads through
    :class:`scone_data.shards.output.Output`."""
    from scone_data.shards.output import iter_tar

    for rec, _ in iter_tar(tar_path, want_images=False):
        yield rec
