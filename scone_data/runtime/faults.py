"""Fault injection for the reliability tests: make this process die, or a write fail, at a named point.

Off unless armed; then :func:`point` is one ``None`` check. Armed from the environment (so Ray
workers and CLI subprocesses inherit it) or in-process with :func:`arm`:

- ``SCONE_FAULT="name[@glob]:n[:action]"`` (several, comma-separated): on the ``n``-th hit (1-based,
  counted in this process) of point ``name`` whose path's file name matches ``glob`` (fnmatch),
  do ``action``: ``kill`` (SIGKILL this process; the default), ``stop`` (SIGSTOP: the process
  pauses there, holding what it holds, until a SIGCONT), ``enospc``, ``erofs`` or ``eio`` (raise
  that ``OSError``, as a full disk, a read-only mount or a failing device would).
- ``SCONE_FAULT_ONCE=path``: fire at most once over every process (the file is created, with
  O_EXCL, before firing), so a Ray task retry or a resumed run does not die again.
- ``SCONE_FAULT_TRACE=path``: append ``name<TAB>path`` for every hit (armed or not), to choose
  kill points from a clean run.

The points (one-line hooks, see :data:`POINTS`) sit at the commit boundaries of
:func:`scone_data.shards.files.atomic_open`, which every output file goes through: bank parts,
shard tars, indexes, stats, ledger markers, rejects, the manifest.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
from dataclasses import dataclass
from pathlib import Path

ENV, ENV_ONCE, ENV_TRACE = "SCONE_FAULT", "SCONE_FAULT_ONCE", "SCONE_FAULT_TRACE"
POINTS = {
    "before_publish": "a file's bytes are flushed to its hidden temporary, not yet fsynced or renamed",
    "published": "the file is renamed into place, nothing recorded after it yet",
}
# an action sends this process a signal (SIGKILL never returns; SIGSTOP returns once continued) ...
SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
# ... or raises an OSError of this errno
ERRNOS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eio": errno.EIO}
ACTIONS = {**SIGNALS, **ERRNOS}


@dataclass
class Fault:
    name: str
    glob: str
    nth: int
    action: str
    hits: int = 0


def parse(spec: str) -> list[Fault]:
    """``"before_publish@*.tar:2:enospc,published:5"`` -> faults; raises ValueError naming the bad part."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fields = part.split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"{ENV}: {part!r} is not name[@glob]:n[:action]")
        name, _, glob = fields[0].partition("@")
        action = fields[2] if len(fields) == 3 else "kill"
        if name not in POINTS or action not in ACTIONS or not fields[1].isdigit() or int(fields[1]) < 1:
            raise ValueError(
                f"{ENV}: {part!r}: point one of {sorted(POINTS)}, n >= 1, action one of {sorted(ACTIONS)}"
            )
        out.append(Fault(name, glob or "*", int(fields[1]), action))
    return out


class _State:
    def __init__(self, faults: list[Fault], once: str | None, trace: str | None):
        self.faults, self.once, self.trace = faults, once, trace


_state: _State | None = None
_loaded = False  # the environment has been read (or arm() called) in this process


def arm(
    spec: str = "", once: str | os.PathLike | None = None, trace: str | os.PathLike | None = None
) -> None:
    """Arm this process (counts start at zero); ``arm()`` with no arguments disarms it."""
    global _state, _loaded
    faults = parse(spec)
    _state = _State(faults, str(once) if once else None, str(trace) if trace else None)
    if not faults and not trace:
        _state = None
    _loaded = True


def _load() -> _State | None:
    if not _loaded:  # first call in this process: read the environment once
        arm(os.environ.get(ENV, ""), os.environ.get(ENV_ONCE), os.environ.get(ENV_TRACE))
    return _state


def point(name: str, path: str | os.PathLike = "") -> None:
    """A fault point; see the module docstring. A no-op unless armed."""
    st = _state if _loaded else _load()
    if st is None:
        return
    fname = path.name if hasattr(path, "name") else Path(path).name  # a Path or an object-store path
    if st.trace:
        with open(st.trace, "a") as f:
            f.write(f"{name}\t{path}\n")
    for fault in st.faults:
        if fault.name != name or not fnmatch.fnmatchcase(fname, fault.glob):
            continue
        fault.hits += 1
        if fault.hits == fault.nth and _claim(st.once):
            _fire(fault, path)


def _claim(once: str | None) -> bool:
    if once is None:
        return True
    try:
        os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _fire(fault: Fault, path: str | os.PathLike) -> None:
    if fault.action in SIGNALS:
        os.kill(os.getpid(), SIGNALS[fault.action])
        return
    code = ERRNOS[fault.action]
    raise OSError(code, f"{os.strerror(code)} (injected at {fault.name})", str(path))
