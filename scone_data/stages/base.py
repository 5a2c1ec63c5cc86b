"""The one base class of every pipeline stage.

A batch is a dict of equal-length columns (``dict[str, list]``); one row is one source image.
Every row carries ``status`` (``"ok"`` or ``"rejected"``), ``reason`` (``""`` when ok) and
``rejected_by`` (the name of the stage that rejected it, ``"source"`` for rows a reader rejected). A
subclass overrides :meth:`process`, which sees only the rows still ok and returns the same number
of rows; it rejects a row by setting its ``status``/``reason`` (or by calling :func:`reject`). A
step that makes new images (``adds_rows = True``: the insertion step's edited photos) may return
more rows: the new ones come after the rows it was given, with ``added_by`` set to its name (the
executor counts a unit's rows from its reader without them).
Rejected rows pass through later stages untouched, so nothing is ever silently dropped. A step
with ``only_added_by: <step>`` sees only the ok rows that step appended (a second detect, sam and
subjects pass over the re-posed targets of :mod:`scone_data.stages.repose`); the other rows pass it
untouched too.

Counting, timing, lazy ``setup()`` and the ok/rejected split live here, not in subclasses.
Settings are dataclass fields: cheap and picklable, so Ray can ship the stage to its workers;
models load in :meth:`setup`, once per worker. GPU needs are declared by :meth:`resources`.
No stage imports Ray.

A pipeline file names its bank steps by ``type``: a class joins the one registry of steps with
:func:`register_stage` (``@register_stage`` above the class). It declares the columns it reads
(``needs``) and the ones it adds or rewrites (``adds``, each with how it travels between Ray workers),
so a pipeline's order is checked before any work and the transport needs no list of its own.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

OK = "ok"
REJECTED = "rejected"

Batch = dict[str, list[Any]]
ADDED_BY = "added_by"  # the step that appended a row (adds_rows), None for the reader's rows

# how a column's values travel between Ray workers (runtime/transport.py): "array" (HxW or HxWxC
# uint8 arrays, or None), "json" (nested lists and dicts), "value" (scalars, strings, bytes as they are)
CODECS = ("array", "json", "value")


@dataclass
class StageStats:
    """Per-stage counters of the batches this instance ran (in-process callers and tests read them;
    under Ray each actor keeps its own, and the run's counts come from the reject records)."""

    rows_in: int = 0
    rows_ok: int = 0
    seconds: float = 0.0
    rejects: Counter = field(default_factory=Counter)


def batch_len(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def reject(batch: Batch, i: int, reason: str) -> None:
    """Mark row ``i`` rejected with ``reason`` (a short snake_case code, optionally ``code: detail``)."""
    batch["status"][i] = REJECTED
    batch["reason"][i] = reason


@dataclass
class Stage:
    """Base class: subclasses add dataclass fields (their settings) and override ``process``."""

    name: ClassVar[str] = "stage"  # rejected_by of the rows it rejects; default: its type
    type: ClassVar[str] = ""  # the name a pipeline's steps use ({type: decode, ...}); see register_stage
    needs: ClassVar[tuple[str, ...]] = ()  # columns it reads, added by a source or an earlier step
    adds: ClassVar[dict[str, str]] = {}  # columns it adds or rewrites -> codec (one of CODECS)
    adds_rows: ClassVar[bool] = False  # True: process may append new rows (see the module docstring)
    # settings that change how a stage runs but never what it outputs (left out of resume hashes)
    execution_fields: ClassVar[tuple[str, ...]] = (
        "batch_size",
        "device",
        "num_gpus",
        "compile",
        "verify_sha256",
    )
    # settings left out of settings() and of config hashes while None, so that adding one to the base
    # class leaves every existing pipeline's hashes as they were
    omitted_when_none: ClassVar[tuple[str, ...]] = ("only_added_by",)

    # run only on the rows the named earlier step appended (adds_rows); None: every ok row
    only_added_by: str | None = None

    def __post_init__(self) -> None:
        self._ready = False
        self.stats = StageStats()

    # -- to override -------------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Every problem with the settings, as messages naming the field; empty when fine."""
        return []

    def setup(self) -> None:
        """Load models and other heavy state. Called once per worker, before the first batch."""

    def resources(self) -> dict[str, float]:
        """What one worker of this stage needs, e.g. ``{"num_gpus": 1.0}``."""
        return {"num_cpus": 1.0}

    def process(self, batch: Batch) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- machinery -----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The constructor's arguments, as plain data (used for config hashes and manifests)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.init and not (f.name in self.omitted_when_none and getattr(self, f.name) is None)
        }

    def __call__(self, batch: Batch) -> Batch:
        if not self._ready:
            self.setup()
            self._ready = True
        t0 = time.perf_counter()
        n = batch_len(batch)
        batch = {k: list(v) for k, v in batch.items()}
        batch.setdefault("status", [OK] * n)
        batch.setdefault("reason", [""] * n)
        batch.setdefault("rejected_by", ["" if s == OK else "source" for s in batch["status"]])
        ok_idx = [i for i in range(n) if batch["status"][i] == OK]
        if self.only_added_by is not None:
            added_by = batch.get(ADDED_BY) or [None] * n
            ok_idx = [i for i in ok_idx if added_by[i] == self.only_added_by]
        new: list[int] = []  # rows this stage appended
        if ok_idx:
            if len(ok_idx) == n:
                out = self.process(batch)
            else:
                sub = {k: [v[i] for i in ok_idx] for k, v in batch.items()}
                sub_out = self.process(sub)
                out = _scatter(batch, sub_out, ok_idx)
            m = batch_len(out)
            if m != n and not (self.adds_rows and m > n):
                raise RuntimeError(f"stage {self.name} changed the row count ({n} -> {m})")
            new = list(range(n, m))
            if new:
                added = out.setdefault(ADDED_BY, [None] * m)
                for i in new:
                    added[i] = self.name
        else:
            out = batch
        dt = time.perf_counter() - t0
        self.stats.rows_in += n
        self.stats.seconds += dt
        for i in ok_idx + new:
            if out["status"][i] == OK:
                self.stats.rows_ok += 1
            else:
                out["rejected_by"][i] = self.name
                self.stats.rejects[out["reason"][i].split(":", 1)[0]] += 1
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Ship settings only: models are rebuilt by setup() on the worker.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()


STAGE_TYPES: dict[str, type[Stage]] = {}  # type -> class; scone_data.stages.stage_types() fills it


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: ``cls`` becomes the bank step a pipeline names ``{type: <cls.type>, ...}``.

    Raises ValueError for a bad or taken ``type`` (two classes, one name) and for a column whose
    codec another step declares differently (one column travels one way)."""
    kind = cls.type
    if not (isinstance(kind, str) and kind.isidentifier() and kind.islower()):
        raise ValueError(f"{cls.__qualname__}.type: a lowercase identifier is needed, got {kind!r}")
    # declared without ClassVar they would become settings (and change every config hash)
    clash = sorted({"name", "type", "needs", "adds"} & {f.name for f in fields(cls)})
    if clash:
        raise ValueError(f"{cls.__qualname__}: {', '.join(clash)} must be ClassVar, not settings")
    old = STAGE_TYPES.get(kind)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"stage type {kind!r} is taken by {old.__module__}.{old.__qualname__}")
    for col, codec in cls.adds.items():
        if codec not in CODECS:
            raise ValueError(f"{cls.__qualname__}.adds[{col!r}]: {codec!r} is not one of {', '.join(CODECS)}")
        for other in STAGE_TYPES.values():
            theirs = other.adds.get(col, codec)
            if other.type != kind and theirs != codec:
                raise ValueError(
                    f"{cls.__qualname__}.adds[{col!r}]: {codec!r}, but {other.type} says {theirs!r}"
                )
    if "name" not in vars(cls):  # rejects name the step that made them
        cls.name = kind
    STAGE_TYPES[kind] = cls
    return cls


def _scatter(full: Batch, sub: Batch, idx: list[int]) -> Batch:
    """Write the processed ok-rows back into the full batch; new columns get ``None`` elsewhere. Rows
    ``sub`` has past ``len(idx)`` (appended by an ``adds_rows`` step) go after the full batch's."""
    n, extra = batch_len(full), range(len(idx), batch_len(sub))
    out: Batch = {}
    for k in set(full) | set(sub):
        col = list(full[k]) if k in full else [None] * n
        if k in sub:
            for j, i in enumerate(idx):
                col[i] = sub[k][j]
        col += [sub[k][j] if k in sub else None for j in extra]
        out[k] = col
    return out
