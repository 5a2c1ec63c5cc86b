"""Atomic file writes: readers never see a partial file.

Every output is written under a hidden temporary name in the same directory
(``.tmp-scone.<pid>.<name>``, which no ``*.tar``/``*.parquet`` glob matches), flushed and fsynced,
then renamed into place with ``os.replace`` (atomic on POSIX). A crash leaves at worst a stale
temporary, which the next run into that output removes with :func:`sweep_temporaries`. The name is
specific (a marker and the writer's pid) so that the sweep deletes only files of exactly that
form: a user's own ``.tmp-*`` files in a reused folder are left alone.

On an object store (``s3://``..., :mod:`scone_data.runtime.storage`) there is no rename: the data is
collected in memory and PUT under its final name in one request, which is atomic (the object appears
whole or not at all), so there are no temporaries to sweep.
"""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data.runtime import faults, storage

TMP_PREFIX = ".tmp-scone."  # every temporary of ours starts with it (validate looks for them)
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"[0-9]+\..+")


def tmp_path(path: Path) -> Path:
    """The hidden temporary this process writes ``path`` under."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}.{path.name}")


def is_temporary(name: str) -> bool:
    """True for exactly the names :func:`tmp_path` makes."""
    return _TMP_NAME.fullmatch(name) is not None


class OutputWriteError(OSError):
    """An output file could not be written (disk full, read-only, ...); nothing was published under
    its name. ``errno`` is the OS error's; ``str()`` is one line naming the file and what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def write_error(path: Path, e: OSError) -> OutputWriteError:
    return OutputWriteError(
        e.errno,
        f"cannot write {path}: {e.strerror or e}; nothing was published under that name "
        "(free space or make the output writable, then rerun: the run resumes)",
    )


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary beside ``path``; on a clean exit fsync it and rename it to ``path``.

    A failing write (full disk, read-only output) removes the temporary and raises
    :class:`OutputWriteError`; other exceptions from the body pass through unchanged.
    """
    if storage.is_remote(path):
        with _object_open(storage.path(path), mode) as f:
            yield f
        return
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(tmp, mode)  # noqa: SIM115 - closed below on both paths
    except OSError as e:
        raise write_error(path, e) from e
    try:
        yield f
        f.flush()
        faults.point("before_publish", path)
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        faults.point("published", path)
    except BaseException as e:
        with suppress(OSError):  # on a full disk, flushing the rest of the buffer fails again
            f.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError):
            raise write_error(path, e) from e
        raise


@contextmanager
def _object_open(path: storage.StorePath, mode: str):
    """:func:`atomic_open` on an object store: a memory buffer, PUT whole on a clean exit."""
    if mode != "wb":
        raise ValueError(f"{path}: only binary writes ('wb') go to an object store, not {mode!r}")
    buf = io.BytesIO()
    yield buf
    try:
        faults.point("before_publish", path)
        path.write_bytes(buf.getvalue())
    except OSError as e:
        raise write_error(path, e) from e
    faults.point("published", path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(path: str | os.PathLike, table: pa.Table, row_group_size: int | None = None) -> None:
    """Deterministic parquet bytes: no creation timestamps, fixed compression; ``row_group_size`` rows
    per row group (None: pyarrow's default, one group for our tables)."""
    with atomic_open(path, "wb") as f:
        pq.write_table(
            table,
            f,
            compression="zstd",
            write_statistics=True,
            store_schema=True,
            row_group_size=row_group_size,
        )


def sweep_temporaries(root: str | os.PathLike) -> int:
    """Delete stale temporaries left by a killed run of ours under ``root``; returns how many.

    Call it only while holding the output's lock (:mod:`scone_data.runtime.outdir`): a live run's
    temporaries look the same as a dead one's. An object store has none (see the module docstring)."""
    if storage.is_remote(root):
        return 0
    n = 0
    for p in Path(root).rglob(f"{TMP_PREFIX}*"):
        if is_temporary(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n
