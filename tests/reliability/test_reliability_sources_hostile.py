"""Hostile inputs the sources must survive: each comes out as a reject with a reason (or a settings
error naming it), never a hang, a crash, or a record that cannot be written as UTF-8."""

from __future__ import annotations

import io
import os
import tarfile
import threading

import numpy as np
import pytest

from scone_data.imageio import encode_png
from scone_data.sources import make_source
from scone_data.sources.folder import FolderSource


def _png(w=48, h=48, seed=1) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _rows(batch: dict) -> list[dict]:
    return [dict(zip(batch, vals)) for vals in zip(*batch.values())]


def _in_thread(fn, timeout=20):
    """``fn()`` on a daemon thread; fails the test instead of hanging when it blocks."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"blocked for more than {timeout} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_hostile_fifo_in_folder_is_rejected_not_waited_on(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "good.png").write_bytes(_png())
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "good.txt")  # a FIFO caption sidecar must not block either
    src = FolderSource(name="photos", root=str(root))
    rows = {os.path.basename(r["uri"]): r for r in _rows(_in_thread(src.read_all))}
    assert rows["pipe.jpg"]["status"] == "rejected"
    assert rows["pipe.jpg"]["reason"] == "not_a_regular_file"
    assert rows["good.png"]["reason"] == "bad_caption: not_a_regular_file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_hostile_fifo_matched_by_a_tar_glob_is_a_settings_error(tmp_path):
    good = tmp_path / "a.tar"
    with tarfile.open(good, "w") as tf:
        ti = tarfile.TarInfo("000.png")
        data = _png()
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    os.mkfifo(tmp_path / "b.tar")
    cfg = {"type": "webdataset", "name": "shards", "paths": str(tmp_path / "*.tar")}
    with pytest.raises(ValueError, match="not_a_regular_file"):
        _in_thread(lambda: make_source(cfg))
    src = make_source(cfg, check=False)
    refs = _in_thread(src.list_refs)
    assert refs == [f"{good}#000"]
