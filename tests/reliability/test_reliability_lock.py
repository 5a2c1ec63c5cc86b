"""One run per output folder, and a sweep that removes only our own temporaries.

The first build is a real CLI run paused (SIGSTOP, from a fault point) in the middle of its shard
phase with a temporary open: a second run into the same folder must be refused at once, naming
the first run's pid, and must not touch its files; the first run then resumes and completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from test_reliability_support import make_toy_coco, one_line_error, run_cli, toy_pipeline
from tests_helpers import reader_files

from scone_data.runtime import faults
from scone_data.shards.files import is_temporary
from scone_data.shards.validate import validate_output


def _wait_stopped(pid: int) -> None:
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the first run ended before its fault point (status {status})"


def test_hostile_second_run_into_a_busy_output_is_refused(tmp_path, capsys):
    coco = make_toy_coco(tmp_path / "in")
    out = tmp_path / "out"
    yml = toy_pipeline(tmp_path / "toy.yaml", coco, out)
    ref = tmp_path / "ref"
    assert run_cli(["build", toy_pipeline(tmp_path / "ref.yaml", coco, ref)], capsys)[0] == 0
    # paused with train-00001.tar's bytes in its hidden temporary, not yet renamed
    env = {**os.environ, faults.ENV: "before_publish@train-00001.tar:1:stop"}
    first = subprocess.Popen(
        [sys.executable, "-m", "scone_data.cli", "build", str(yml)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_stopped(first.pid)
        pending = sorted(p.name for p in (out / "shards").iterdir() if is_temporary(p.name))
        assert pending, "the first run should be holding a temporary"
        for argv in (["build", yml], ["build", yml, "--overwrite"], ["regen", ref, out]):
            code, err = run_cli(argv, capsys)
            line = one_line_error(err)
            assert code == 2 and f"pid {first.pid}" in line and "in use" in line, line
        assert sorted(p.name for p in (out / "shards").iterdir() if is_temporary(p.name)) == pending
    finally:
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-3000:]
    assert validate_output(out) == [] and reader_files(out) == reader_files(ref)


def test_hostile_sweep_removes_only_temporaries_of_ours(tmp_path, capsys):
    coco = make_toy_coco(tmp_path / "in")
    out = tmp_path / "out"
    yml = toy_pipeline(tmp_path / "toy.yaml", coco, out)
    assert run_cli(["build", yml], capsys)[0] == 0
    users = [out / ".tmp-notes.txt", out / "shards" / ".tmp-my-draft.tar", out / "bank" / ".tmp-scone.keep"]
    for p in users:
        p.write_text("the user's own file\n")
    stale = out / "shards" / ".tmp-scone.4242.train-00000.tar"  # a killed run of ours left it
    stale.write_bytes(b"half a tar")
    (out / "ledger" / "shards" / "train-00000.done").unlink()  # the rerun has work to do
    assert run_cli(["build", yml], capsys)[0] == 0
    assert all(p.read_text() == "the user's own file\n" for p in users)
    assert not stale.exists() and (out / "shards" / "train-00000.tar").exists()


def test_hostile_lock_is_released_when_a_run_is_killed(tmp_path, capsys):
    """A SIGKILLed run never leaves a stale lock: the next run proceeds and completes."""
    coco = make_toy_coco(tmp_path / "in")
    out = tmp_path / "out"
    yml = toy_pipeline(tmp_path / "toy.yaml", coco, out)
    env = {**os.environ, faults.ENV: "published@train-00000.tar:1"}
    p = subprocess.run([sys.executable, "-m", "scone_data.cli", "build", str(yml)], env=env, timeout=300)
    assert p.returncode == -signal.SIGKILL
    assert Path(out / ".scone-data.lock").exists()
    assert run_cli(["build", yml], capsys)[0] == 0 and validate_output(out) == []
