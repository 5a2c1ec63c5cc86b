"""Atomic file writes: readers never see a partial file.

Every output is written under a hidden temporary name in the same directory (``.tmp-<name>``,
which no ``*.tar``/``*.parquet`` glob matches), flushed and fsynced, then renamed into place with
``os.replace`` (atomic on POSIX). A crash leaves at worst a stale temporary, which the next run
overwrites or :func:`sweep_temporaries` removes.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def tmp_path(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary beside ``path``; on a clean exit fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    f = open(tmp, mode)  # noqa: SIM115 - closed below on both paths
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    """Deterministic parquet bytes: no creation timestamps, fixed compression."""
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", write_statistics=True, store_schema=True)


def sweep_temporaries(root: str | os.PathLike) -> int:
    """Delete stale temporaries left by a killed run under ``root``; returns how many."""
    n = 0
    for p in Path(root).rglob(f"{TMP_PREFIX}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
