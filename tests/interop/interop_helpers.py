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
