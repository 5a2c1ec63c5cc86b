"""SIGKILL at random moments, then rerun: exactly the keys and bytes of an uninterrupted build.

The build runs as a subprocess in its own process group; the whole group is killed with SIGKILL
at a random moment of a seeded schedule (spread over the clean run's duration), then the same
command is run again to completion. Units of one image and shards of 4 samples give the kill
many commit boundaries to land near.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from tests_helpers import reader_files

# small work units and cheaper settings: many commit boundaries, a few seconds per build
ARGS = [
    "runtime.unit_size=1",
    "shards.samples_per_shard=4",
    "runtime.progress=false",
    "pairs.distractor_strategy=random",
    "pairs.ref_size=256",
    "pairs.target_max_side=512",
    "segment.max_side=128",
    "segment.iterations=2",
]


def _cmd(repo_root, out, executor):
    return [
        sys.executable,
        "-m",
        "scone_data.cli",
        "build",
        str(repo_root / "pipelines/demo.yaml"),
        f"output={out}",
        f"runtime.executor={executor}",
        "runtime.num_cpus=2",
        *ARGS,
    ]


def _run(cmd, kill_after=None) -> bool:
    """Run a build; with ``kill_after``, SIGKILL it then. True when the kill landed (it was still running)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    if kill_after is None:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
        return False
    try:
        p.wait(timeout=kill_after)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return True


@pytest.mark.parametrize("executor,trials", [("local", 4), ("ray", 1)])
def test_sigkill_then_resume_equals_clean_build(tmp_path, repo_root, executor, trials):
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    _run(_cmd(repo_root, ref, executor))
    duration = time.monotonic() - t0
    want = reader_files(ref)
    assert any(k.endswith(".tar") for k in want)
    rng = random.Random(1234 + trials)
    landed = 0
    for t in range(trials):
        out = tmp_path / f"trial{t}"
        # first kill somewhere in the run, sometimes a second one during the resume
        # (kills end by 0.85 of the clean run, so that one lands despite timing noise)
        landed += _run(_cmd(repo_root, out, executor), kill_after=rng.uniform(0.3, 0.85) * duration)
        if t % 2:
            landed += _run(_cmd(repo_root, out, executor), kill_after=rng.uniform(0.2, 0.8) * duration)
        _run(_cmd(repo_root, out, executor))
        got = reader_files(out)
        assert got.keys() == want.keys(), f"trial {t}: files differ"
        bad = [k for k in want if got[k] != want[k]]
        assert not bad, f"trial {t}: bytes differ in {bad}"
        assert not list(out.rglob(".tmp-*")), f"trial {t}: temporaries left visible"
    assert landed, "no kill landed before the build finished: the trials tested nothing"
