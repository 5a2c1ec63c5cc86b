"""One run owns its output folder: an OS lock, and an ``--overwrite`` that cannot destroy.

**Lock.** A run that writes into a folder (build, regen, export, import) holds an exclusive
``fcntl.flock`` on ``FOLDER/.scone-data.lock`` from its first write to its last; the file holds the
holder's pid and command. A second run into the same folder is refused at once
(:class:`OutputBusy`, naming that pid) instead of sweeping the first run's temporaries. The kernel
drops the lock when its process dies, SIGKILL included, so a killed run never leaves a stale lock.
Holding the lock, a run sweeps the temporaries of killed writers (ours only, see
:func:`scone_data.shards.files.is_temporary`) when it starts and again when it completes.

**Overwrite.** The caller checks every setting first; :func:`claim` then refuses
(:class:`OutputError`, one line, exit code 2) to replace a folder that

- is, or holds, something the run reads (the build it regenerates, the output it exports, a
  source, the pipeline file),
- shows no sign of being ours (a manifest, a ledger, an export marker or our lock file), or
- holds top-level entries that scone-data does not write (they would be deleted with it).

The old folder is renamed to a hidden sibling (``.NAME.scone-old-PID``) and deleted only once the
new one is complete. A run that fails or is killed leaves it there (the error says where); the
next complete run into the same folder deletes it.

**Object stores** (``s3://...``, see :mod:`scone_data.runtime.storage`) have neither locks nor
renames, so there a claim takes no lock (two runs into one prefix are not stopped: the user keeps
them apart), refuses ``--overwrite`` (nothing can be moved aside; delete the prefix yourself) and
refuses a prefix that holds anything but our entries (a resume). README: Object storage.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from scone_data.runtime import storage
from scone_data.shards.files import is_temporary, sweep_temporaries, write_error

log = logging.getLogger("scone_data")

LOCK_NAME = ".scone-data.lock"
EXPORT_MARKER = ".scone-data-export.json"  # written first by every export: the folder is ours
OLD_INFIX = ".scone-old-"
# the top-level entries each kind of folder may hold; anything else is the user's
OUTPUT_ENTRIES = frozenset(
    {"bank", "shards", "ledger", "rejects.parquet", "dataset_card.md", "manifest.json", LOCK_NAME}
)
EXPORT_ENTRIES = frozenset(
    {"parquet_data", "parquet_info", "dataset_info.json", "images", "data.jsonl", EXPORT_MARKER, LOCK_NAME}
)
_GLOB_CHARS = re.compile(r"[*?\[]")
# the lock file holds "<pid> <command>\n" (command: build, regen, export, import, delete): well
# under this; a hand-edited file is read no further than it to name the holder
_HOLDER_MAX_BYTES = 200


class OutputError(Exception):
    """A run refused before it deleted or wrote anything: one line, exit code 2."""

    code = 2


class OutputBusy(OutputError):
    """Another run holds the folder's lock."""


def _lock(folder: Path, command: str) -> int:
    """Take ``folder``'s lock (the folder must exist); returns the open descriptor that holds it."""
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only or full output: the same one-line error as any write (exit 1)
        raise write_error(path, e) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, _HOLDER_MAX_BYTES, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"{holder[1]}, pid {holder[0]}" if len(holder) >= 2 else "pid unknown"
        raise OutputBusy(
            f"{folder} is in use by another scone-data run ({who}); wait for it to end or choose another output"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with suppress(OSError):
            os.close(fd)  # closing the last descriptor drops the flock


def _entries(folder: Path) -> list[str]:
    """Top-level names of ``folder`` other than our lock file and our temporaries."""
    if not folder.is_dir():
        return []
    return sorted(n for n in os.listdir(folder) if n != LOCK_NAME and not is_temporary(n))


def ours(folder: Path, allowed: frozenset[str]) -> str | None:
    """None when ``folder`` is a scone-data folder holding only what we write; else why not."""
    return ours_names(set(os.listdir(folder)), allowed)


def ours_names(names: set[str], allowed: frozenset[str]) -> str | None:
    """:func:`ours` on a folder's top-level ``names``."""
    foreign = sorted(n for n in names - allowed if not is_temporary(n))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"it holds files scone-data does not write ({shown})"
    if not names & {"manifest.json", "ledger", EXPORT_MARKER, LOCK_NAME}:
        return "it is not a scone-data output (no manifest, ledger or lock of ours)"
    return None


def input_paths(values: Iterable[object]) -> list[Path]:
    """Every path-like string in ``values`` (nested dicts/lists too, e.g. the ``sources`` section),
    absolute; a glob stands for the folder before its first wildcard."""
    out: list[Path] = []

    def walk(v: object, key: str = "") -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, str(k))
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x, key)
        elif isinstance(v, str) and key not in ("type", "name") and storage.is_uri(v):
            out.append(storage.path(v.split("*")[0].split("?")[0].split("[")[0]))
        elif isinstance(v, str | os.PathLike) and key not in ("type", "name") and str(v):
            s = str(v).removeprefix("file://")
            parts = Path(s).parts
            cut = next((i for i, p in enumerate(parts) if _GLOB_CHARS.search(p)), len(parts))
            if cut:
                out.append(Path(*parts[:cut]).absolute())

    for v in values:
        walk(v)
    return out


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_not_input(target: Path, reads: Iterable[Path], what: str = "output") -> None:
    """Refuse when ``target`` is, or holds, anything in ``reads``."""
    real = target.resolve()
    for r in reads:
        rr = storage.path(r).resolve()
        if _within(rr, real):
            rel = "is" if rr == real else "holds"
            raise OutputError(f"{what} {target} {rel} {r}, which this run reads: choose another {what}")


def _aside_name(folder: Path) -> Path:
    base = folder.parent / f".{folder.name}{OLD_INFIX}{os.getpid()}"
    p, i = base, 0
    while p.exists() or p.is_symlink():
        i += 1
        p = base.with_name(f"{base.name}-{i}")
    return p


def _stale_asides(folder: Path) -> list[Path]:
    pat = re.compile(re.escape(f".{folder.name}{OLD_INFIX}") + r"\d+(-\d+)?")
    if not folder.parent.is_dir():
        return []
    return sorted(
        p for p in folder.parent.iterdir() if pat.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    )


def _delete_old(folder: Path, allowed: frozenset[str]) -> None:
    """Delete old outputs moved aside from ``folder`` by runs of ours that no process still holds."""
    for old in _stale_asides(folder):
        try:
            fd = _lock(old, "delete") if (old / LOCK_NAME).exists() else None
        except (OutputError, OSError):
            continue  # still held by the run that moved it aside (or not ours to open)
        try:
            if ours(old, allowed) is None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            _unlock(fd)


def _claim_store(
    folder: storage.StorePath,
    command: str,
    overwrite: bool,
    reads: list,
    empty: bool,
    allowed: frozenset[str],
) -> storage.StorePath:
    """:func:`claim` on an object store: the checks only (no lock, no moving aside; see above)."""
    if overwrite:
        raise OutputError(
            f"--overwrite is not supported on an object store ({folder}): nothing can be moved aside "
            "there; delete the prefix yourself, or choose another output"
        )
    check_not_input(folder, reads)
    names = {p.name for p in folder.iterdir()}
    if names and empty:
        raise OutputError(f"{folder} exists and is not empty (delete the prefix, or choose another)")
    if names:
        why = ours_names(names, allowed)
        if why:
            raise OutputError(f"refusing to write into {folder}: {why}")
    # not a lock: the sign that the prefix is ours, so that a run killed before its first ledger
    # marker is resumed rather than refused as someone else's
    try:
        (folder / LOCK_NAME).write_bytes(f"{os.getpid()} {command}\n".encode())
    except OSError as e:
        raise write_error(folder / LOCK_NAME, e) from e
    return folder


@contextmanager
def claim(
    folder: str | os.PathLike,
    command: str,
    *,
    overwrite: bool = False,
    reads: Iterable[Path] = (),
    empty: bool = False,
    kind: str = "output",
) -> Iterator[Path]:
    """Own ``folder`` for one run (call it after every setting is checked); yields its path.

    ``reads``: what the run reads (never replaced). ``empty``: a folder with contents is refused
    unless ``overwrite`` (export and import never resume). ``kind``: ``"output"`` (build, regen,
    import) or ``"export"``, which decides what the folder may hold to be replaced. On a clean exit
    the replaced folder is deleted; on an error it is kept and a warning says where.
    """
    allowed = EXPORT_ENTRIES if kind == "export" else OUTPUT_ENTRIES
    reads = list(reads)
    if storage.is_remote(folder):
        yield _claim_store(storage.path(folder), command, overwrite, reads, empty, allowed)
        return
    folder = Path(folder).absolute()
    if overwrite:
        check_not_input(folder, reads)
    elif any(folder.resolve() == storage.path(r).resolve() for r in reads):
        raise OutputError(f"output {folder} is what this run reads: choose another output")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    old_fd = new_fd = None
    aside: Path | None = None
    try:
        if _entries(folder):
            if not overwrite and empty:
                raise OutputError(f"{folder} exists and is not empty (use --overwrite)")
            if overwrite:
                old_fd = _lock(folder, command)
                why = ours(folder, allowed)
                if why:
                    raise OutputError(
                        f"refusing to overwrite {folder}: {why}; delete it yourself if you mean it"
                    )
                aside = _aside_name(folder)
                try:
                    os.rename(folder, aside)
                except OSError as e:
                    raise OutputError(
                        f"cannot move {folder} aside to replace it ({e.strerror or e}); nothing was deleted"
                    ) from e
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(folder, e) from e
        new_fd = _lock(folder, command)
        sweep_temporaries(folder)  # left by killed runs: no live run writes here but us
        yield folder
    except BaseException:
        if aside is not None:
            log.warning("the previous %s is kept at %s (the next complete run into %s deletes it)",
                        folder.name, aside, folder)  # fmt: skip
        _unlock(new_fd)
        _unlock(old_fd)
        raise
    sweep_temporaries(folder)  # a killed worker's, its task redone by another under another name
    _unlock(old_fd)
    _delete_old(folder, allowed)  # the new folder is complete: only now does the old one go
    _unlock(new_fd)
