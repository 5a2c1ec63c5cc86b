"""A full disk and a read-only output: a clear one-line error, no torn or temporary file left visible,
and a rerun (once there is room) resumes to the clean run's bytes.

Both are injected at a fault point (``enospc``/``erofs``), and, where this process may mount
(root with CAP_SYS_ADMIN), also for real: a 256 KiB tmpfs (the toy build writes ~860 KiB) and a
tmpfs remounted read-only.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_reliability_support import make_toy_coco, temporaries, toy_config
from tests_helpers import reader_files

from scone_data.runtime import faults
from scone_data.runtime.build import build
from scone_data.shards.files import OutputWriteError
from scone_data.shards.validate import validate_output

SMALL_DISK = "256k"  # well below the toy build's ~860 KiB output, above its first files


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    coco = make_toy_coco(root / "in")
    build(toy_config(coco, root / "ref"))
    return coco, reader_files(root / "ref")


def _check_failed_cleanly(out: Path, err: OutputWriteError, code: int, want: dict[str, bytes]) -> None:
    assert err.errno == code
    msg = str(err)
    assert "\n" not in msg and msg.startswith(f"cannot write {out}") and os.strerror(code) in msg, msg
    assert temporaries(out) == [], "a failed write left its temporary"
    torn = [k for k, v in reader_files(out).items() if want.get(k) != v]
    assert not torn, f"readers could see incomplete files {torn}"
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "spec,code",
    [
        ("before_publish@train-00001.tar:1:enospc", errno.ENOSPC),
        ("before_publish@train-00002.parquet:1:enospc", errno.ENOSPC),
        ("before_publish@part-00003.parquet:2:erofs", errno.EROFS),
        ("before_publish@manifest.json:1:eio", errno.EIO),
    ],
)
def test_injected_write_failure_is_clear_and_resumable(toy, tmp_path, spec, code):
    coco, want = toy
    out = tmp_path / "out"
    faults.arm(spec)
    try:
        with pytest.raises(OutputWriteError) as e:
            build(toy_config(coco, out))
    finally:
        faults.arm()
    _check_failed_cleanly(out, e.value, code, want)
    build(toy_config(coco, out))  # room again: the rerun resumes
    assert reader_files(out) == want and validate_output(out) == []


@pytest.fixture
def mountpoint(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    yield mp
    subprocess.run(["umount", "-l", str(mp)], capture_output=True)


def _mount(mp: Path, *opts: str) -> None:
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(mp)], capture_output=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")


def test_real_full_disk(toy, mountpoint):
    coco, want = toy
    _mount(mountpoint, f"size={SMALL_DISK}")
    out = mountpoint / "out"
    with pytest.raises(OutputWriteError) as e:
        build(toy_config(coco, out))
    _check_failed_cleanly(out, e.value, errno.ENOSPC, want)
    assert reader_files(out), "the disk filled before anything was published: raise SMALL_DISK"


def test_real_read_only_output(toy, mountpoint):
    coco, want = toy
    _mount(mountpoint, "size=4m")
    out = mountpoint / "out"
    out.mkdir()
    p = subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], capture_output=True)
    if p.returncode:
        pytest.skip(f"cannot remount read-only: {p.stderr.decode().strip()}")
    with pytest.raises(OutputWriteError) as e:
        build(toy_config(coco, out))
    _check_failed_cleanly(out, e.value, errno.EROFS, want)


def test_unwritable_output_directory_without_root(toy, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through chmod; the read-only mount test covers this as root")
    coco, want = toy
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError) as e:
            build(toy_config(coco, out))
    finally:
        out.chmod(0o755)
    _check_failed_cleanly(out, e.value, errno.EACCES, want)
