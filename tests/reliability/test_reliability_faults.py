"""Fault injection: SIGKILL at every kind of commit boundary of build and regen, then resume.

A clean run of the toy corpus records every fault point it passes (``SCONE_FAULT_TRACE``); each
trial picks one of those hits at random (seeded), runs the job in a forked child armed to
SIGKILL itself exactly there, checks what a reader could see at that moment, resumes, and
compares with the clean run: the same files and bytes, every key once, no temporary left.
Some trials are killed a second time during the resume. One trial kills a Ray worker instead
(Ray retries its task). ``SCONE_SOAK_TRIALS`` multiplies the trials (``make soak``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_reliability_support import make_toy_coco, run_child, temporaries, toy_config
from tests_helpers import reader_files

from scone_data.runtime import faults
from scone_data.runtime.build import build, regen
from scone_data.shards.validate import validate_output

# 14 build + 6 regen trials in CI (~1 s each); `make soak` sets SCONE_SOAK_TRIALS=25 (500 trials).
SOAK = max(1, int(os.environ.get("SCONE_SOAK_TRIALS", "1")))
BUILD_TRIALS, REGEN_TRIALS = 14 * SOAK, 6 * SOAK
SEED = int(os.environ.get("SCONE_SOAK_SEED", "7"))
REGEN_OVERRIDES = ["seed=3", "shards.samples_per_shard=2", "runtime.executor=local", "runtime.progress=false"]


def _trace(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


def _spec(trace: list[tuple[str, str]], i: int) -> str:
    """The SCONE_FAULT spec that fires at hit ``i`` of a trace: its point, file name and repeat count."""
    name, path = trace[i]
    fname = Path(path).name
    nth = sum(1 for n, p in trace[: i + 1] if n == name and Path(p).name == fname)
    return f"{name}@{fname}:{nth}"


def _keys(out: Path) -> list[str]:
    return [
        k for p in sorted((out / "shards").glob("*.parquet")) for k in pq.read_table(p)["key"].to_pylist()
    ]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    coco = make_toy_coco(root / "in")
    ref, ref_regen = root / "ref", root / "ref_regen"
    try:
        faults.arm(trace=root / "build.trace")
        build(toy_config(coco, ref))
        faults.arm(trace=root / "regen.trace")
        regen(ref, ref_regen, REGEN_OVERRIDES)
    finally:
        faults.arm()
    return {
        "root": root,
        "coco": coco,
        "ref": ref,
        "want": reader_files(ref),
        "trace": _trace(root / "build.trace"),
        "ref_regen": ref_regen,
        "want_regen": reader_files(ref_regen),
        "trace_regen": _trace(root / "regen.trace"),
    }


def _check_visible(out: Path, want: dict[str, bytes], label: str) -> None:
    """After a kill: every file under a final name is complete (the clean run's exact bytes)."""
    got = reader_files(out)
    torn = [k for k, v in got.items() if want.get(k) != v]
    assert not torn, f"{label}: readers could see incomplete or foreign files {torn}"
    # anything else under the output is the run's own bookkeeping or a hidden temporary, never a
    # half-written file under a name a reader would take
    known = set(got)
    stray = [
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file()
        and str(p.relative_to(out)) not in known
        and p.parts[len(out.parts)] != "ledger"
        and p.name not in ("manifest.json", "dataset_card.md", ".scone-data.lock")
        and not p.name.startswith(".tmp-")
    ]
    assert not stray, f"{label}: files under final names that readers do not know: {stray}"


def _check_final(out: Path, want: dict[str, bytes], ref: Path, label: str) -> None:
    got = reader_files(out)
    assert got.keys() == want.keys(), (
        f"{label}: missing {want.keys() - got.keys()}, extra {got.keys() - want.keys()}"
    )
    assert [k for k in want if got[k] != want[k]] == [], f"{label}: bytes differ"
    assert temporaries(out) == [], f"{label}: temporaries left"
    keys = _keys(out)
    assert keys == _keys(ref) and max(Counter(keys).values()) == 1, f"{label}: keys missing or duplicated"
    assert validate_output(out) == [], label


def test_trace_covers_every_commit(toy):
    kinds = Counter((n, Path(p).parent.name) for n, p in toy["trace"])
    # bank parts, ledger markers, shard files, rejects and manifest all pass through the points
    for d in ("images", "subjects", "rejects", "bank", "shards"):
        assert kinds[("before_publish", d)] > 0 and kinds[("published", d)] > 0, d
    assert sum(1 for _, p in toy["trace"] if p.endswith("manifest.json")) == 2
    assert len(toy["want"]) > 20 and any(k.endswith(".tar") for k in toy["want"])


@pytest.mark.parametrize("trial", range(BUILD_TRIALS))
def test_sigkill_build_then_resume(toy, tmp_path, trial):
    rng = random.Random(SEED * 1000 + trial)
    out, trace = tmp_path / "out", toy["trace"]
    args = {"coco": str(toy["coco"]), "out": str(out)}
    spec = _spec(trace, rng.randrange(len(trace)))
    assert run_child("build", args, fault=spec) == -9, f"the fault {spec} did not fire"
    _check_visible(out, toy["want"], spec)
    if trial % 3 == 2:  # killed again while resuming (the point may lie in work already done)
        spec2 = _spec(trace, rng.randrange(len(trace)))
        assert run_child("build", args, fault=spec2) in (0, -9)
        _check_visible(out, toy["want"], f"{spec} then {spec2}")
    build(toy_config(toy["coco"], out))
    _check_final(out, toy["want"], toy["ref"], spec)


@pytest.mark.parametrize("trial", range(REGEN_TRIALS))
def test_sigkill_regen_then_resume(toy, tmp_path, trial):
    rng = random.Random(SEED * 1000 + 500 + trial)
    out, trace = tmp_path / "regen", toy["trace_regen"]
    args = {"bank": str(toy["ref"]), "out": str(out), "overrides": REGEN_OVERRIDES}
    spec = _spec(trace, rng.randrange(len(trace)))
    assert run_child("regen", args, fault=spec) == -9, f"the fault {spec} did not fire"
    _check_visible(out, toy["want_regen"], spec)
    regen(toy["ref"], out, REGEN_OVERRIDES)
    _check_final(out, toy["want_regen"], toy["ref_regen"], f"regen {spec}")
    assert reader_files(toy["ref"]) == toy["want"], "regen touched the build it read"


def test_sigkill_of_a_ray_worker_is_retried_and_changes_nothing(toy, tmp_path, repo_root):
    """The shard tasks run in Ray workers: kill the one writing a shard, once; Ray retries it."""
    cfg = toy_config(toy["coco"], tmp_path / "out")
    cfg["runtime"] = {"executor": "ray", "num_cpus": 2, "unit_size": 1, "progress": False}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    once = tmp_path / "fired"
    env = {**os.environ, faults.ENV: "before_publish@train-00001.tar:1", faults.ENV_ONCE: str(once)}
    p = subprocess.run(
        [sys.executable, "-m", "scone_data.cli", "build", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert once.exists(), "the fault never fired"
    _check_final(tmp_path / "out", toy["want"], toy["ref"], "ray worker kill")
