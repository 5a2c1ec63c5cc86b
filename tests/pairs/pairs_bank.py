"""Tiny subject banks for the pair-builder tests: real photos from skimage.data with hand-picked boxes
(checked by drawing them), masks made with pycocotools from ellipses, and synthetic coloured shapes."""

from __future__ import annotations

import random

import cv2
import numpy as np
import skimage.data as skd
from pycocotools import mask as mask_utils

from scone_data import schemas

# (label, box x0 y0 x1 y1, shape) per real photo; boxes picked on a 50 px grid drawn over each image.
REAL = {
    "coffee": [
        ("cup", (175, 15, 410, 300), "ellipse"),
        ("saucer", (75, 75, 480, 390), "ellipse"),
        ("spoon", (320, 65, 425, 325), "ellipse"),
    ],
    "chelsea": [
        ("cat", (30, 0, 400, 300), "ellipse"),
        ("eye", (135, 85, 205, 148), "ellipse"),
        ("eye", (295, 108, 345, 165), "ellipse"),
    ],
    "astronaut": [
        ("person", (20, 15, 365, 512), "ellipse"),
        ("flag", (0, 0, 95, 512), "rect"),
        ("helmet", (275, 340, 505, 512), "ellipse"),
        ("space shuttle", (355, 0, 470, 285), "ellipse"),
        ("badge", (135, 345, 210, 425), "ellipse"),
    ],
    "coins": [
        ("coin", b, "ellipse")
        for b in [
            (22, 33, 68, 75),
            (80, 38, 120, 75),
            (132, 28, 180, 75),
            (305, 15, 365, 72),
            (22, 102, 68, 145),
            (185, 103, 228, 145),
            (315, 155, 380, 220),
            (92, 245, 137, 288),
        ]
    ],  # fmt: skip
    "rocket": [
        ("rocket", (305, 125, 340, 405), "rect"),
        ("tower", (0, 0, 90, 427), "rect"),
        ("tower", (165, 120, 210, 427), "rect"),
        ("tower", (435, 120, 480, 427), "rect"),
        ("tower", (558, 0, 640, 427), "rect"),
    ],
}
CAPTIONS = {
    "coffee": "a cup of espresso on a red saucer on a wooden table",
    "rocket": "a rocket on its launch pad at dusk",
}

SHAPE_RGB = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30)}
SHAPE_LABELS = ("ball", "box", "ring", "star", "leaf", "key", "bell", "kite")


def color_name(image: np.ndarray, mask: np.ndarray) -> str:
    """Basic colour name of the mean colour inside ``mask`` (a stand-in for the bank's attribute)."""
    mean = image[mask > 0].reshape(-1, 3).mean(0).astype(np.uint8)
    h, s, v = cv2.cvtColor(mean[None, None], cv2.COLOR_RGB2HSV)[0, 0].astype(int)
    if s < 50:
        return "black" if v < 60 else "white" if v > 200 else "gray"
    for name, hi in (
        ("red", 8),
        ("orange", 20),
        ("yellow", 34),
        ("green", 85),
        ("blue", 130),
        ("purple", 160),
    ):
        if h < hi:
            return name
    return "red"


def shape_mask(h: int, w: int, box, shape: str) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    if shape == "rect":
        m[y0:y1, x0:x1] = 1
    else:
        cv2.ellipse(m, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0 - 1, y1 - y0 - 1), 0), 1, -1)
    return m


def subject_record(image_id: str, n: int, label: str, box, image: np.ndarray, shape: str) -> dict:
    h, w = image.shape[:2]
    m = shape_mask(h, w, box, shape)
    rle = mask_utils.encode(np.asfortranarray(m))
    rec = {
        "schema_version": 1,
        "subject_id": f"{image_id}-{n:03d}",
        "image_id": image_id,
        "label": label,
        "box_xyxy": [float(v) for v in box],
        "det_score": 1.0,
        "det_source": "annotation",
        "mask_rle": {"size": [h, w], "counts": rle["counts"].decode()},
        "mask_score": 1.0,
        "mask_source": "annotation",
        "stability": 1.0,
        "area_frac": float(m.sum()) / (h * w),
        "attributes": {
            "color": color_name(image, m),
            "position": "center",
            "size_rank": 0,
            "colors": [{"name": color_name(image, m), "share": 1.0}],
        },
    }
    schemas.validate("subject", rec)
    return rec


def image_record(image_id: str, image: np.ndarray, caption=None, group_id=None) -> dict:
    rec = {
        "schema_version": 1,
        "image_id": image_id,
        "uri": f"mem://{image_id}",
        "width": image.shape[1],
        "height": image.shape[0],
        "caption": caption,
        "group_id": group_id,
        "source": "test",
        "license": None,
    }
    schemas.validate("source_image", rec)
    return rec


def shapes_image(seed: int, n_shapes: int, h: int = 240, w: int = 320, labels=SHAPE_LABELS[:2]):
    """A grey image with ``n_shapes`` coloured ellipses at random non-overlapping spots, and its subjects
    as (label, box, "ellipse")."""
    rng = random.Random(seed)
    img = np.full((h, w, 3), 128, np.uint8)
    spots: list[tuple[int, int, int, int]] = []
    while len(spots) < n_shapes:
        s = rng.randint(30, 70)
        x, y = rng.randint(0, w - s), rng.randint(0, h - s)
        b = (x, y, x + s, y + s)
        if all(b[2] + 6 <= o[0] or o[2] + 6 <= b[0] or b[3] + 6 <= o[1] or o[3] + 6 <= b[1] for o in spots):
            spots.append(b)
    subs = []
    for b in spots:
        color = rng.choice(sorted(SHAPE_RGB))
        m = shape_mask(h, w, b, "ellipse")
        img[m > 0] = SHAPE_RGB[color]
        subs.append((rng.choice(labels), b, "ellipse"))
    return img, subs


def make_bank(n_synthetic: int = 6, seed: int = 0, labels=SHAPE_LABELS[:2]):
    """(subjects, images, pixels): the five real photos plus ``n_synthetic`` shape images."""
    pixels: dict[str, np.ndarray] = {}
    specs: dict[str, list] = {}
    captions: dict[str, str | None] = {}
    for name, subs in REAL.items():
        img = getattr(skd, name)()
        pixels[name] = np.stack([img] * 3, -1) if img.ndim == 2 else img
        specs[name], captions[name] = subs, CAPTIONS.get(name)
    for i in range(n_synthetic):
        iid = f"shapes{seed}x{i:04d}"
        pixels[iid], specs[iid] = shapes_image(seed * 100_003 + i, 2 + i % 3, labels=labels)
        captions[iid] = None
    subjects = [
        subject_record(iid, n, label, box, pixels[iid], shape)
        for iid, subs in specs.items()
        for n, (label, box, shape) in enumerate(subs)
    ]
    images = {iid: image_record(iid, pixels[iid], captions[iid]) for iid in pixels}
    return subjects, images, pixels
