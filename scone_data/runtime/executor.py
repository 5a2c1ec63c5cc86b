"""Running the bank phase's work units, in-process or on Ray Data.

A unit is a fixed list of source refs. :func:`read_unit` reads them and :func:`run_stages` runs
every stage in order; both executors call these two:

- ``local``: units one after another in this process (tests, the GPU machine without Ray, small jobs).
- ``ray``: Ray Data. Consecutive CPU stages are fused with the reader into one actor pool (no
  object-store hop between them, and no CPU-actor deadlock on small machines); each GPU stage gets
  its own actor pool with the GPUs :func:`gpu_requests` gives it (``auto``: a share of each GPU). The driver receives finished rows,
  reassembles units and hands each complete unit to ``on_unit`` (which writes it and marks the
  ledger), so a unit is recorded only when every one of its rows is on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from scone_data.runtime import transport
from scone_data.sources import Source
from scone_data.stages.base import Batch, Stage

log = logging.getLogger(__name__)
Unit = tuple[int, list[tuple[int, str]]]  # (unit id, [(source index, ref), ...])
DRIVER_UNUSED = ("image", "annotations")  # columns the last segment drops before rows go to the driver


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


def run_local(sources: list[Source], stages: list[Stage], units: list[Unit], on_unit: Callable) -> None:
    for unit in units:
        on_unit(unit[0], run_stages(stages, read_unit(sources, unit)))


class _RaySegment:
    """A Ray Data callable class: optionally reads units, then runs a fused list of stages."""

    def __init__(self, stages: list[Stage], sources: list[Source] | None = None, drop: tuple[str, ...] = ()):
        self.stages, self.sources, self.drop = stages, sources, drop

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = transport.decode(batch)
        if self.sources is not None:
            parts = [
                read_unit(self.sources, (u, [tuple(r) for r in refs]))
                for u, refs in zip(rows["unit"], rows["refs"])
            ]
            rows = {
                k: [v for p in parts for v in p.get(k, [None] * len(p["pos"]))] for k in set().union(*parts)
            }
        out = run_stages(self.stages, rows)
        return transport.encode({k: v for k, v in out.items() if k not in self.drop})


def run_ray(
    sources: list[Source], stages: list[Stage], units: list[Unit], on_unit: Callable, cpu_workers: int
) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    if not units:
        return
    # One block per unit so Ray can spread units over the actor pool; refs travel as JSON.
    items = [{"unit": u, "refs": transport.encode({"refs": [refs]})["refs"][0]} for u, refs in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    requests = dict(zip(map(id, stages), gpu_requests(stages, cluster_gpus)))
    segs = split_segments(stages, [requests[id(st)] for st in stages])
    for i, seg in enumerate(segs):
        gpus = requests[id(seg[0])]
        # one actor per GPU (a fraction shares it with the other GPU stages' actors)
        size = max(1, int(cluster_gpus)) if gpus else cpu_workers
        ds = ds.map_batches(
            _RaySegment,
            fn_constructor_kwargs={
                "stages": seg,
                "sources": sources if i == 0 else None,
                # the driver writes the bank from the encoded bytes and the subjects: decoded pixels
                # (36 MB for a 12 MP photo) never travel back to it
                "drop": DRIVER_UNUSED if i == len(segs) - 1 else (),
            },
            # the first segment takes one unit per call; later ones take rows in the first stage's own
            # batch size (a stage without one: 8 rows)
            batch_size=1 if i == 0 else getattr(seg[0], "batch_size", 8),
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=min(size, len(units))),
            num_gpus=gpus or None,
            # the reader segment holds a whole CPU; later CPU segments half of one (they wait on their
            # inputs much of the time, and two fit beside a reader on a 2-core machine); a GPU
            # segment's CPU work overlaps its GPU work, so it reserves no CPU
            num_cpus=1 if i == 0 else (0.5 if not gpus else 0),
        )
    pending: dict[int, list[Batch]] = {}
    expected = {u: len(refs) for u, refs in units}
    got: dict[int, int] = {}
    for raw in _iter(ds):
        rows = transport.decode(raw)
        n = len(rows["unit"])
        for j in range(n):
            u = rows["unit"][j]
            pending.setdefault(u, []).append({k: v[j] for k, v in rows.items()})
            got[u] = got.get(u, 0) + 1
            if got[u] == expected[u]:
                rs = pending.pop(u)
                keys = set().union(*(r.keys() for r in rs))
                on_unit(u, {k: [r.get(k) for r in rs] for k in keys})


def _iter(ds) -> Iterator[dict[str, Any]]:
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")
