"""Small builders shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (24, 32)) -> bytes:
    img = np.zeros((*size, 3), np.uint8)
    img[:] = color
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def make_sample(key: str, n_refs: int = 1, task: str = "composition_single", split: str = "train"):
    """A valid Sample record and its members (tiny solid-colour JPEGs)."""
    refs = []
    for i in range(n_refs):
        refs.append(
            {
                "member": f"ref{i}.jpg",
                "width": 32,
                "height": 24,
                "kind": "cutout",
                "candidates": [
                    {
                        "subject_id": f"img{i}-000",
                        "label": "cup",
                        "box_xyxy": [1.0, 2.0, 20.0, 22.0],
                        "intended": True,
                        "source_image_id": f"img{i}",
                    }
                ],
                "expression": None,
                "augment": {},
            }
        )
    rec = {
        "schema_version": 2,
        "key": key,
        "task": task,
        "split": split,
        "instruction": "Put the cup from image 1 on a table.",
        "references": refs,
        "target": {
            "member": "target.jpg",
            "image_id": "img0",
            "width": 32,
            "height": 24,
            "boxes": [
                {"subject_id": "img0-000", "label": "cup", "box_xyxy": [1.0, 2.0, 20.0, 22.0], "ref_index": 0}
            ],
        },
        "provenance": {
            "builder_version": "test",
            "config_hash": "0" * 16,
            "seed": 0,
            "source": "test",
            "models": [],
        },
    }
    members = {f"ref{i}.jpg": jpeg((40 * i, 100, 200)) for i in range(n_refs)}
    members["target.jpg"] = jpeg((200, 50, 50))
    return rec, members


def png_header(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h pixels but carries almost no data (a decompression bomb by header)."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def reader_files(out: Path) -> dict[str, bytes]:
    """Every file a reader uses (bank, shards, rejects.parquet), by relative path; no temporaries
    (the ledger and the manifest hold the output path itself, so they differ between two outputs)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".tmp-")
        and (p.parts[len(out.parts)] in ("shards", "bank") or p.name == "rejects.parquet")
    }


def build_demo(repo_root: Path, out: Path) -> dict:
    """``pipelines/demo.yaml`` built in this process into ``out``; returns its manifest."""
    from scone_data.runtime.build import build
    from scone_data.runtime.config import load_config

    over = [f"output={out}", "runtime.executor=local", "runtime.progress=false"]
    return build(load_config(repo_root / "pipelines/demo.yaml", over))


def write_tar(path: Path, members: list[tuple[str, bytes]], **open_kw) -> Path:
    """A tar of regular-file ``(name, data)`` members, in order (``open_kw``: e.g. ``format``)."""
    import io
    import tarfile

    with tarfile.open(path, "w", **open_kw) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def weights_cli(*argv: str) -> int:
    """``scone-data weights ARGV...`` through the real parser and handler; its exit code."""
    import argparse

    from scone_data.models.weights_cli import add_weights_parser, run_weights

    p = argparse.ArgumentParser()
    add_weights_parser(p.add_subparsers(dest="cmd"))
    return run_weights(p.parse_args(["weights", *argv]))
