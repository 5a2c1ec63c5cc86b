"""The one executor interface of both phases, in-process or on Ray.

An :class:`Executor` offers two calls, each yielding small completion records to the driver as work
finishes (in whatever order it finishes), so progress and the ledger stay on the driver:

- :meth:`Executor.run_units` (bank phase): each unit is read (:func:`read_unit`), run through every
  stage (:func:`run_stages`) and written as its three bank part files (:func:`finish_unit`) by the
  worker that computed it; the driver receives only a :class:`UnitDone` (unit id, row counts, file
  names) and marks the ledger after it arrives, so a unit is recorded only once all its files are on
  disk. No image byte crosses the driver.
- :meth:`Executor.map_tasks` (shard phase): ``fn(**task, **shared)`` for each ``(key, task)``; the
  task writes its own output (a shard) and returns its small stats, yielded as ``(key, result)``.

Two implementations, picked by ``runtime.executor`` through :func:`open_executor`:

- :class:`LocalExecutor` (``local``): one unit or task after another in this process (tests, the GPU
  machine without Ray, small jobs).
- :class:`RayExecutor` (``ray``): an embedded Ray instance or a connection to ``ray_address``, for
  the duration of the job. Units run on Ray Data with one block per unit: the first segment reads a
  unit per call, consecutive CPU stages are fused with the reader into one actor pool (no
  object-store hop between them, and no CPU-actor deadlock on small machines); each GPU stage gets
  its own actor pool with the GPUs :func:`gpu_requests` gives it (``auto``: a share of each GPU),
  and takes whole units (the model stages batch inside themselves, by their own ``batch_size``).
  The last segment writes each unit it completes and returns only its record. Tasks are Ray tasks
  (one CPU each); the ``shared`` arguments go to the object store once, not once per task.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scone_data.bank.store import KINDS, UNIT_FMT, write_unit
from scone_data.runtime import storage, transport
from scone_data.sources import Source
from scone_data.stages.base import ADDED_BY, Batch, Stage

log = logging.getLogger(__name__)
Unit = tuple[int, list[tuple[int, str]]]  # (unit id, [(source index, ref), ...])
DRIVER_UNUSED = ("image", "annotations")  # columns a segment can drop when nothing after it reads them
RECORD = "record"  # the only column the writing segment returns: one UnitDone (JSON) per unit
UNIT_ROWS = "unit_rows"  # the reader's row count of each row's unit: the writer checks it has them all


@dataclass(frozen=True)
class UnitDone:
    """What the driver learns of a finished bank unit: its id, the rows of each of its part files
    (``images``, ``subjects``, ``rejects``) and those files' paths relative to the output."""

    unit: int
    images: int
    subjects: int
    rejects: int
    files: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        """Rows per part file, as the ledger marker records them."""
        return {k: getattr(self, k) for k in KINDS}

    def to_json(self) -> str:
        return json.dumps({**self.counts(), "unit": self.unit, "files": list(self.files)})

    @classmethod
    def from_json(cls, text: str) -> UnitDone:
        d = json.loads(text)
        return cls(int(d["unit"]), *(int(d[k]) for k in KINDS), tuple(d["files"]))


def finish_unit(root: str | Path, uid: int, batch: Batch) -> UnitDone:
    """Write a processed unit's bank parts (each atomically, in the worker that computed it)."""
    counts = write_unit(root, uid, batch)
    name = UNIT_FMT.format(uid) + ".parquet"
    return UnitDone(uid, *(counts[k] for k in KINDS), tuple(f"bank/{k}/{name}" for k in KINDS))


def read_unit(sources: list[Source], unit: Unit) -> Batch:
    """Rows of one unit, in the unit's order, with ``unit`` and ``pos`` columns."""
    uid, refs = unit
    by_src: dict[int, list[int]] = {}
    for pos, (si, _) in enumerate(refs):
        by_src.setdefault(si, []).append(pos)
    rows: list[dict[str, Any] | None] = [None] * len(refs)
    for si, positions in by_src.items():
        got = sources[si].read([refs[p][1] for p in positions])
        n = len(next(iter(got.values()))) if got else 0
        if n != len(positions):
            raise RuntimeError(f"source {sources[si].name} returned {n} rows for {len(positions)} refs")
        for j, p in enumerate(positions):
            rows[p] = {k: v[j] for k, v in got.items()}
    cols = sorted(set().union(*(r.keys() for r in rows))) if rows else []
    batch = {k: [r.get(k) for r in rows] for k in cols}
    batch["unit"] = [uid] * len(rows)
    batch["pos"] = list(range(len(rows)))
    return batch


def run_stages(stages: list[Stage], batch: Batch) -> Batch:
    for st in stages:
        batch = st(batch)
    return batch


def gpu_requests(stages: list[Stage], cluster_gpus: float) -> list[float]:
    """GPUs each stage's Ray workers ask for, on a cluster with ``cluster_gpus`` GPUs in all.

    A model stage's ``num_gpus: auto`` is decided by the cluster, not by the driver's own CUDA (a
    head node often has none): 0 on a cluster without GPUs; else an equal share of one GPU among the
    pipeline's ``auto`` stages, so detect and segment share each GPU. At 1.0 each, a one-GPU machine
    could start only one of the two actor pools and the run would wait forever. Explicit numbers are
    kept; a set of requests that cannot all be placed at once (each pool needs one actor running) is
    refused here with the fix, instead of hanging.
    """
    auto = [getattr(st, "num_gpus", None) == "auto" for st in stages]
    share = 1.0 / sum(auto) if any(auto) and cluster_gpus > 0 else 0.0
    out = [share if a else float(st.resources().get("num_gpus", 0)) for st, a in zip(stages, auto)]
    if not _fits(out, cluster_gpus):
        asked = ", ".join(f"{st.name}.num_gpus={r:g}" for st, r in zip(stages, out) if r > 0)
        from scone_data.runtime.config import ConfigError

        raise ConfigError(
            [
                f"GPU requests {asked} cannot all run at once on this Ray cluster's {cluster_gpus:g} GPU(s) "
                "(every GPU stage needs one worker at a time); set them to auto, or to fractions that fit "
                "(e.g. 0.5 each to share one GPU)"
            ]
        )
    return out


def _fits(requests: list[float], cluster_gpus: float) -> bool:
    """Whether one worker per request can be placed: fractions packed first-fit-decreasing into
    whole GPUs, requests above 1 taking whole GPUs."""
    free = [1.0] * int(cluster_gpus)
    for r in sorted((r for r in requests if r > 0), reverse=True):
        if r > 1:
            whole = -(-r // 1)
            idle = [i for i, f in enumerate(free) if f == 1.0][: int(whole)]
            if len(idle) < whole:
                return False
            for i in idle:
                free[i] = 0.0
            continue
        i = next((i for i, f in enumerate(free) if f + 1e-9 >= r), None)
        if i is None:
            return False
        free[i] -= r
    return True


def split_segments(stages: list[Stage], requests: list[float]) -> list[list[Stage]]:
    """Group consecutive stages by whether they need a GPU (each GPU stage stands alone);
    ``requests``: GPUs per stage, from :func:`gpu_requests`."""
    segs: list[list[Stage]] = []
    prev_gpu = False
    for st, r in zip(stages, requests):
        gpu = r > 0
        if gpu or not segs or prev_gpu:
            segs.append([st])
        else:
            segs[-1].append(st)
        prev_gpu = gpu
    return segs


class Executor:
    """Runs the bank's units and the shard phase's tasks; see the module docstring."""

    name = ""

    def run_units(
        self, root: str | Path, sources: list[Source], stages: list[Stage], units: list[Unit]
    ) -> Iterator[UnitDone]:
        """Process and write each unit under ``root``; yield each one's record as it completes."""
        raise NotImplementedError

    def map_tasks(
        self, fn: Callable[..., Any], tasks: Iterable[tuple[Hashable, dict[str, Any]]],
        shared: dict[str, Any] | None = None, resources: dict[str, float] | None = None,
    ) -> Iterator[tuple[Hashable, Any]]:  # fmt: skip
        """``fn(**task, **shared)`` for each ``(key, task)``; yield ``(key, result)`` as each finishes.
        A task's error is raised here as the task raised it. ``resources``: what each task asks of Ray
        besides its CPU (``{"num_gpus": 0.5}`` for a model inside it)."""
        raise NotImplementedError


class LocalExecutor(Executor):
    name = "local"

    def run_units(self, root, sources, stages, units):
        for uid, refs in units:
            yield finish_unit(root, uid, run_stages(stages, read_unit(sources, (uid, refs))))

    def map_tasks(self, fn, tasks, shared=None, resources=None):
        for key, kw in tasks:
            yield key, fn(**kw, **(shared or {}))


def _units_of(batch: Batch) -> Iterator[tuple[int, Batch]]:
    """The units of a batch (rows in their batch order), each checked complete against its reader's
    row count: a unit written from part of its rows would be recorded as done with rows missing.
    Rows a step appended (``added_by``: generated images) travel with their unit and are not counted."""
    by_unit: dict[int, list[int]] = {}
    for j, u in enumerate(batch["unit"]):
        by_unit.setdefault(int(u), []).append(j)
    added = batch.get(ADDED_BY) or [None] * len(batch["unit"])
    for u, rows in by_unit.items():
        want = int(batch[UNIT_ROWS][rows[0]])
        have = sum(added[j] is None for j in rows)
        if have != want:
            raise RuntimeError(f"unit {u}: {have} of its {want} rows reached its writer together")
        yield u, {k: [v[j] for j in rows] for k, v in batch.items()}


class _RaySegment:
    """A Ray Data callable class: optionally reads units, then runs a fused list of stages; the last
    segment (``write_to``: the output folder) writes each unit's bank parts and returns its record."""

    def __init__(
        self,
        stages: list[Stage],
        sources: list[Source] | None = None,
        drop: tuple[str, ...] = (),
        write_to: str | None = None,
    ):
        self.stages, self.sources, self.drop, self.write_to = stages, sources, drop, write_to

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = transport.decode(batch)
        if self.sources is not None:
            parts = [
                read_unit(self.sources, (u, [tuple(r) for r in refs]))
                for u, refs in zip(rows["unit"], rows["refs"])
            ]
            for p in parts:
                p[UNIT_ROWS] = [len(p["pos"])] * len(p["pos"])
            rows = {
                k: [v for p in parts for v in p.get(k, [None] * len(p["pos"]))] for k in set().union(*parts)
            }
        out = run_stages(self.stages, rows)
        if self.write_to is None:
            return transport.encode({k: v for k, v in out.items() if k not in self.drop})
        recs = [finish_unit(self.write_to, u, unit).to_json() for u, unit in _units_of(out)]
        col = np.empty(len(recs), dtype=object)
        col[:] = recs
        return {RECORD: col}


class RayExecutor(Executor):
    """Ray Data for the units, Ray tasks for the shards (Ray is started by :func:`open_executor`)."""

    name = "ray"

    def __init__(self, cpu_workers: int | None = None):
        self._cpu_workers = cpu_workers

    def cpu_workers(self) -> int:
        if self._cpu_workers:
            return self._cpu_workers
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)))

    def run_units(self, root, sources, stages, units):
        import ray
        from ray.data import ActorPoolStrategy

        if not units:
            return
        # workers on other nodes run in other folders: they get the output as an absolute path
        root = str(storage.path(root).absolute())  # an object-store URI stays as it is
        cpu_workers = self.cpu_workers()
        # One block per unit so Ray can spread units over the actor pool; refs travel as JSON.
        items = [{"unit": u, "refs": transport.encode({"refs": [refs]})["refs"][0]} for u, refs in units]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # a unit stays one block through every segment: no block is split at a size limit (a unit
        # of decoded 12 MP photos passes 128 MB), and later segments take whole blocks (batch_size
        # None), so the writer always holds all of a unit's rows
        ds.context.target_max_block_size = None
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        requests = dict(zip(map(id, stages), gpu_requests(stages, cluster_gpus)))
        segs = split_segments(stages, [requests[id(st)] for st in stages])
        for i, seg in enumerate(segs):
            gpus = requests[id(seg[0])]
            # one actor per GPU (a fraction shares it with the other GPU stages' actors)
            size = max(1, int(cluster_gpus)) if gpus else cpu_workers
            last = i == len(segs) - 1
            # Ray Data's public map_batches refuses whole-block batches (batch_size None) beside a GPU
            # request, as a guard against default-sized batches on a GPU; the stages here batch on
            # the device by their own batch_size, so the GPU segments go through the same call
            # without that guard
            map_batches = ds.map_batches_internal if gpus else ds.map_batches
            ds = map_batches(
                _RaySegment,
                fn_constructor_kwargs={
                    "stages": seg,
                    "sources": sources if i == 0 else None,
                    # the last segment writes the unit's parts itself and returns only its record:
                    # neither pixels nor encoded bytes travel back to the driver
                    "write_to": root if last else None,
                },
                # the first segment takes one unit per call; later ones whole blocks (one unit each)
                batch_size=1 if i == 0 else None,
                batch_format="numpy",
                compute=ActorPoolStrategy(min_size=1, max_size=min(size, len(units))),
                num_gpus=gpus or None,
                # the reader segment holds a whole CPU; later CPU segments half of one (they wait on
                # their inputs much of the time, and two fit beside a reader on a 2-core machine); a GPU
                # segment's CPU work overlaps its GPU work, so it reserves no CPU
                num_cpus=1 if i == 0 else (0.5 if not gpus else 0),
            )
        for raw in _iter(ds):
            for text in raw[RECORD]:
                yield UnitDone.from_json(str(text))

    def map_tasks(self, fn, tasks, shared=None, resources=None):
        import ray

        tasks = list(tasks)
        if not tasks:
            return
        asks = {k: v for k, v in (resources or {}).items() if v}
        # SPREAD: short tasks (a demo's two shards) would otherwise reuse the first node's worker
        # lease one after the other; spread, they share a cluster's nodes from the first task on
        remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD", **asks)(fn)  # title: ray::<fn name>
        # each shared value goes to the object store once, shared by every task
        refs = {k: ray.put(v) for k, v in (shared or {}).items()}
        futures = {remote.remote(**kw, **refs): key for key, kw in tasks}
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            key = futures.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                # the worker's own error (a full disk, say) reads the same as under the local executor
                raise (e.cause if isinstance(e.cause, BaseException) else e) from None
            yield key, result


def _iter(ds) -> Iterator[dict[str, Any]]:
    """What the driver receives from the bank's Ray Data pipeline: batches of :data:`RECORD` only."""
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


@contextmanager
def open_executor(rt) -> Iterator[Executor]:
    """The executor ``rt.executor`` names (``rt``: :class:`~scone_data.runtime.config.RuntimeSettings`),
    for the duration of a job: for ``ray``, an embedded local Ray instance (or a connection to
    ``ray_address``), shut down at the end if this call started it."""
    if rt.executor != "ray":
        yield LocalExecutor()
        return
    from scone_data.runtime.progress import json_mode, route_ray_logs

    if json_mode():  # Ray's C++ components log straight to stderr: keep them to fatal errors
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    import ray

    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = (
            {"address": rt.ray_address}
            if rt.ray_address
            else {"num_cpus": rt.num_cpus, "num_gpus": rt.num_gpus}
        )
        # workers on other nodes do not inherit this process's environment: the S3 settings travel
        # in the job's runtime_env (README: Object storage says who can read them there)
        env = storage.env_vars()
        if env:
            kw["runtime_env"] = {"env_vars": env}
        ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = rt.progress and not json_mode()
        if json_mode():
            route_ray_logs()
    try:
        yield RayExecutor(rt.cpu_workers)
    finally:
        if started:
            ray.shutdown()
