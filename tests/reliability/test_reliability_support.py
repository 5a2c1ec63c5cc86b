"""Shared helpers of the reliability tests (no tests here): a toy COCO corpus, cheap settings,
the reader-visible bytes of an output, and running a job in a forked child.

The toy corpus is 8 small PNGs (160x120) of coloured shapes with polygon annotations: no
segmenter runs, so a whole build takes a fraction of a second and many kill trials fit in CI.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import cv2
import numpy as np

from scone_data.imageio import encode_png

LABELS = ("cup", "ball", "box", "lamp")
COLOURS = ((220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 200, 40), (150, 60, 180))
TOY_IMAGES = 8
# Preloaded into the fork server once, so each forked child starts with them imported.
PRELOAD = ["scone_data.runtime.build", "scone_data.runtime.executor", "scone_data.pairs",
           "scone_data.sources", "scone_data.stages.decode", "scone_data.stages.grabcut",
           "scone_data.stages.subjects", "scone_data.shards.validate", "scone_data.schemas", "cv2",
           "pyarrow.parquet", "pandas", "jsonschema", "PIL.Image", "pycocotools.mask", "webdataset"]  # fmt: skip


def _poly_oval(x0, y0, x1, y1, n: int = 16):
    """An n-gon inscribed in the box: a shape, not a rectangle (the subjects stage refuses rectangles)."""
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [round(float(v), 1) for xy in zip(cx + rx * np.cos(t), cy + ry * np.sin(t)) for v in xy]


def make_toy_coco(root: Path, n: int = TOY_IMAGES, seed: int = 0) -> Path:
    """Write ``n`` toy images and ``root/coco.json``; returns the json's path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        h, w = 120, 160
        img = np.clip(rng.normal(128, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        # two or three shapes in separate columns; image 2k and 2k+1 share a label (intra pairs)
        k = 2 + i % 2
        for j in range(k):
            x0 = 8 + j * 50 + int(rng.integers(0, 6))
            y0 = 15 + int(rng.integers(0, 30))
            x1, y1 = x0 + 34 + int(rng.integers(0, 8)), y0 + 40 + int(rng.integers(0, 20))
            colour = COLOURS[(i + j) % len(COLOURS)]
            pts = np.array(_poly_oval(x0, y0, x1, y1)).reshape(-1, 2)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], colour)
            label = LABELS[0] if j < 2 and i % 4 == 0 else LABELS[(i + j) % len(LABELS)]
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": LABELS.index(label) + 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": [_poly_oval(x0, y0, x1, y1)],
                 "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            )  # fmt: skip
        (root / f"toy{i:02d}.png").write_bytes(encode_png(img))
        images.append({"id": i + 1, "file_name": f"toy{i:02d}.png", "width": w, "height": h})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(LABELS)]
    path = root / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def toy_config(coco: Path, out: Path, **sections) -> dict:
    """A loaded build config over the toy corpus: in-process, units of 1 image, shards of 3 samples."""
    from scone_data.runtime.config import load_config

    return load_config(None, base=toy_settings(coco, out, **sections))


def toy_pipeline(path: Path, coco: Path, out: Path, **sections) -> Path:
    """The toy build as a pipeline file at ``path`` (for the CLI); returns ``path``."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(toy_settings(coco, out, **sections)))
    return path


def toy_settings(coco: Path, out: Path, **sections) -> dict:
    base = {
        "output": str(out),
        "seed": 0,
        "sources": [{"type": "coco", "name": "toy", "annotations": str(coco)}],
        "decode": {"min_side": 32},
        "detect": None,
        "segment": None,
        "subjects": {},
        "pairs": {"ref_size": 64, "target_max_side": 128, "distractor_strategy": "random"},
        "shards": {"samples_per_shard": 3},
        "runtime": {"executor": "local", "unit_size": 1, "progress": False},
    }
    for k, v in sections.items():
        base[k] = {**base[k], **v} if isinstance(base.get(k), dict) and isinstance(v, dict) else v
    return base


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``scone-data ARGV`` in this process: ``(exit code, stderr)``; a traceback fails the test."""
    from scone_data.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    """The single ``error: ...`` line of a refused command's stderr (log lines aside)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def temporaries(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".tmp-*"))


# -- jobs in forked children ----------------------------------------------------------------------
def _job(kind: str, args: dict, fault: str, once: str | None, trace: str | None) -> None:
    from scone_data.runtime import faults

    faults.arm(fault, once=once, trace=trace)
    if kind == "build":
        from scone_data.runtime.build import build

        build(toy_config(Path(args["coco"]), Path(args["out"]), **args.get("sections", {})))
    else:
        from scone_data.runtime.build import regen

        regen(args["bank"], args["out"], args.get("overrides", []))


_CTX = None


def context():
    """The fork-server context: children fork from a clean single-threaded server with the
    modules preloaded (forking pytest itself could inherit locked thread pools)."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def run_child(kind: str, args: dict, fault: str = "", once=None, trace=None, timeout: float = 120) -> int:
    """Run a build/regen in a child; returns its exit code (-9 when a fault point SIGKILLed it)."""
    p = context().Process(target=_job, args=(kind, args, fault, once and str(once), trace and str(trace)))
    p.start()
    p.join(timeout)
    if p.is_alive():
        os.kill(p.pid, 9)
        p.join()
        raise TimeoutError(f"{kind} child ran past {timeout}s (fault {fault!r})")
    return p.exitcode
