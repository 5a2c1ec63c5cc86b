"""The executor interface: the worker that computes a bank unit writes its parts and the driver gets
only a small record; both executors give the same records and bytes; a unit whose files are on disk
but whose record never reached the ledger is redone on resume, with the same bytes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests_helpers import reader_files

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from test_reliability_support import make_toy_coco, toy_config  # noqa: E402

from scone_data.runtime import executor as X  # noqa: E402
from scone_data.runtime import faults  # noqa: E402
from scone_data.runtime.build import build, make_sources, make_stages, plan_units  # noqa: E402
from scone_data.runtime.config import RuntimeSettings  # noqa: E402
from scone_data.shards.files import OutputWriteError  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    coco = make_toy_coco(root / "in")
    ref = root / "ref"
    build(toy_config(coco, ref))  # in-process: the reference bytes
    return coco, ref, reader_files(ref)


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    # functions of this module run as Ray tasks: test modules are not importable on the workers
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with X.open_executor(RuntimeSettings(executor="ray", num_cpus=2, progress=False)) as ex:
        yield ex


def _units(coco: Path, out: Path, unit_size: int = 3):
    cfg = toy_config(coco, out)
    problems: list[str] = []
    sources, stages = make_sources(cfg, problems), make_stages(cfg, problems)
    assert not problems
    return sources, stages, plan_units(sources, unit_size)


def test_both_executors_write_the_same_units_and_the_driver_gets_records_only(
    toy, ray_executor, tmp_path, monkeypatch
):
    coco = toy[0]
    sources, stages, units = _units(coco, tmp_path / "a")
    assert len(units) == 3
    local = list(X.LocalExecutor().run_units(tmp_path / "a", sources, stages, units))

    received: list[dict] = []
    real_iter = X._iter

    def spy(ds):
        for raw in real_iter(ds):
            received.append(raw)
            yield raw

    monkeypatch.setattr(X, "_iter", spy)
    remote = list(ray_executor.run_units(tmp_path / "b", sources, stages, units))

    assert all(type(r) is X.UnitDone for r in local + remote)
    # the same records (Ray: in the order units finished), naming exactly the files written
    assert sorted(remote, key=lambda r: r.unit) == local
    assert [r.unit for r in local] == [0, 1, 2] and all(r.images for r in local)
    a, b = reader_files(tmp_path / "a"), reader_files(tmp_path / "b")
    assert sorted(a) == sorted(f for r in local for f in r.files) and a == b
    # what crossed to the driver: one record column, a few hundred bytes per unit, no image byte
    assert received and all(set(raw) == {X.RECORD} for raw in received)
    got = sum(len(str(v)) for raw in received for v in raw[X.RECORD])
    images = sum(len(v) for k, v in a.items() if k.startswith("bank/images/"))
    assert got < 300 * len(units) and images > 50 * got, (got, images)


def _task(name: str, plans: list[int], base: int) -> dict:
    if base < 0:
        raise ValueError(f"task {name}: negative base")
    return {"name": name, "sum": base + sum(plans)}


def test_map_tasks_gives_the_same_results_on_both_executors(ray_executor):
    tasks = [(f"s{i}", {"name": f"s{i}", "plans": list(range(i))}) for i in range(5)]
    local = dict(X.LocalExecutor().map_tasks(_task, tasks, {"base": 10}))
    remote = dict(ray_executor.map_tasks(_task, tasks, {"base": 10}))
    assert local == remote == {f"s{i}": {"name": f"s{i}", "sum": 10 + sum(range(i))} for i in range(5)}
    # a task's own error reaches the driver as itself, as it does in-process
    for ex in (X.LocalExecutor(), ray_executor):
        with pytest.raises(ValueError, match="negative base"):
            list(ex.map_tasks(_task, tasks[:1], {"base": -1}))


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_unit_on_disk_without_its_marker_is_redone_on_resume(executor, toy, tmp_path, request):
    """The driver fails to record unit 2 after its worker wrote its parts (as a kill between the
    two would leave it): the parts are there, the marker is not; a resume redoes the unit (the torn
    part the test leaves is rewritten) and the output equals an uninterrupted build's."""
    coco, _, want = toy
    if executor == "ray":
        request.getfixturevalue("ray_executor")  # the build joins the Ray instance already running
    out = tmp_path / "out"
    cfg = toy_config(coco, out)
    cfg["runtime"]["executor"] = executor
    faults.arm("before_publish@unit-00002.done:1:eio")
    try:
        with pytest.raises(OutputWriteError):
            build(cfg)
    finally:
        faults.arm()
    parts = [out / f"bank/{k}/part-00002.parquet" for k in ("images", "subjects", "rejects")]
    assert all(p.is_file() for p in parts), "the worker writes the unit's parts before its record"
    assert not (out / "ledger/bank/unit-00002.done").exists()
    parts[0].write_bytes(parts[0].read_bytes()[:100])  # unrecorded, so never trusted: redone
    cfg = toy_config(coco, out)
    cfg["runtime"]["executor"] = executor
    build(cfg)
    got = reader_files(out)
    assert got.keys() == want.keys() and [k for k in want if got[k] != want[k]] == []


def test_a_writer_given_part_of_a_unit_refuses_it_instead_of_writing_it_short(tmp_path):
    """Ray Data keeps a unit in one block; were it ever split, the writer would record a unit with
    rows missing: it fails instead, and writes nothing."""
    from scone_data.runtime import transport

    rows = {"unit": [4, 4], X.UNIT_ROWS: [3, 3], "pos": [0, 1], "status": ["ok", "ok"]}
    with pytest.raises(RuntimeError, match="unit 4: 2 of its 3 rows"):
        X._RaySegment([], write_to=str(tmp_path))(transport.encode(rows))
    assert not (tmp_path / "bank").exists()
