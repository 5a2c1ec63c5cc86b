"""A folder of truncated, zero-byte, non-image, oversized and wrongly-named files builds to completion."""

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from tests_helpers import png_header

from scone_data.runtime.build import build
from scone_data.runtime.config import load_config
from scone_data.shards.validate import validate_output


def _png(w=40, h=30, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), color, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(w=64, h=48) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_hostile_folder_builds_and_every_bad_file_is_a_reject(tmp_path, repo_root):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    j = _jpeg()
    files = {
        "truncated.jpg": j[: len(j) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"this is not an image\n",
        "sub/bomb.png": png_header(100_000, 100_000),
        "png_named.jpg": _png(64, 48),  # wrongly named but a fine image: decoded by content
        "README.md": b"# not data\n",
        "good.webp": b"",
    }
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(buf, "WEBP")
    files["good.webp"] = buf.getvalue()
    for name, data in files.items():
        (src / name).write_bytes(data)
    out = tmp_path / "out"
    cfg = load_config(
        repo_root / "pipelines/demo.yaml",
        [f"output={out}", "runtime.executor=local", "runtime.progress=false"],
    )
    cfg["sources"].append({"type": "folder", "name": "hostile", "root": str(src)})
    manifest = build(cfg)
    assert manifest["samples"] > 0  # the good source still made its samples
    rejects = {
        r["uri"].split("/in/")[-1]: r
        for r in pq.read_table(out / "rejects.parquet").to_pylist()
        if "/in/" in r["uri"]
    }
    assert rejects["truncated.jpg"]["reason"] == "truncated"
    assert rejects["empty.jpg"]["reason"] == "empty_file"
    assert rejects["notes.jpg"]["reason"] == "not_an_image"
    assert rejects["sub/bomb.png"]["reason"] == "too_many_pixels"
    assert rejects["README.md"]["reason"] == "unsupported_extension"
    # the fine images were decoded and only lacked subjects (no annotations, no detector)
    assert rejects["png_named.jpg"]["reason"] == "no_subjects"
    assert rejects["good.webp"]["reason"] == "no_subjects"
    assert set(rejects) == set(files)
    assert validate_output(out) == []
