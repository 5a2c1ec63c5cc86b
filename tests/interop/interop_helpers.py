"""Helpers of the interop tests: tiny encoded images and the interop subcommands' own parser."""

from __future__ import annotations

import argparse

import cv2
import numpy as np


def image_bytes(seed: int, w: int = 48, h: int = 40, ext: str = ".png") -> bytes:
    """A small random-blocks image encoded as ``ext``; distinct seeds give distinct bytes."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def interop_parser() -> argparse.ArgumentParser:
    from scone_data.interop.cli import add_interop_parsers

    ap = argparse.ArgumentParser(prog="scone-data")
    add_interop_parsers(ap.add_subparsers(dest="cmd", required=True))
    return ap


def run_cli(argv: list[str]) -> int:
    args = interop_parser().parse_args(argv)
    return args.fn(args)


def tiny_output(out, n: int, split: str = "train"):
    """An output folder of ``n`` tiny samples (tasks in turn through the six types) in one shard,
    with the manifest the interop readers need; returns ``out``."""
    from tests_helpers import make_sample

    from scone_data import schemas
    from scone_data.shards.files import write_json
    from scone_data.shards.writer import ShardWriter

    tasks = schemas.tasks()
    w = ShardWriter(out / "shards", f"{split}-00000")
    for i in range(n):
        w.write(*make_sample(f"s{i:03d}", n_refs=1 + i % 2, task=tasks[i % len(tasks)], split=split))
    st = w.close()
    write_json(
        out / "manifest.json", {"shards": [{k: st[k] for k in ("name", "samples", "bytes", "sha256")}]}
    )
    return out
