"""SubjectFilter: the last stage before the subject bank.

Turns each image's working ``subjects`` (from annotations or the detector, masked by a segmenter)
into Subject records (``schemas/subject.v1.json``): assigns ``subject_id``, measures ``area_frac``,
computes the attributes the pair builder's referring expressions use (dominant colour name inside
the mask, position bucket, size rank within the image) and drops subjects that fail the filters,
recording each drop in ``subject_rejects`` with its reason.

Subject reject reasons: ``no_mask``, ``mask_size_mismatch``, ``too_small``, ``too_large``,
``low_det_score``, ``low_mask_score``, ``low_stability``, ``touches_border``, ``too_many_subjects``.
Row reject reason: ``no_subjects`` (the image kept no subject, so no sample can use it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scone_data import SCHEMA_VERSION
from scone_data.imageio import rle_area, rle_counts_str, rle_to_mask
from scone_data.stages.base import Batch, Stage, reject

# Hue ranges in OpenCV's 0..179 scale; the first match wins. Names are plain English on purpose:
# they end up in referring expressions ("the red cup").
_HUES = (
    ("red", 0, 8),
    ("orange", 8, 20),
    ("yellow", 20, 34),
    ("green", 34, 85),
    ("blue", 85, 130),
    ("purple", 130, 150),
    ("pink", 150, 170),
    ("red", 170, 180),
)
COLOR_NAMES = (
    "black",
    "white",
    "gray",
    "brown",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
)


def pixel_color_names(rgb: np.ndarray) -> np.ndarray:
    """Basic colour name index (into COLOR_NAMES) of each pixel. ``rgb``: (N, 3) uint8 RGB."""
    import cv2

    hsv = cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.int32)
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    out = np.full(len(hsv), COLOR_NAMES.index("gray"), np.int32)
    # OpenCV HSV (s, v in 0..255): below saturation 60 or value 50 a pixel reads as grey or black, not
    # as a hue; these names end up in referring expressions, so only clear colours get a hue name
    chromatic = (s >= 60) & (v >= 50)
    for name, lo, hi in _HUES:
        sel = chromatic & (h >= lo) & (h < hi)
        out[sel] = COLOR_NAMES.index(name)
    # dark (value < 150), saturated orange/red reads as brown; unsaturated and bright (> 200) as white
    out[chromatic & (h < 20) & (v < 150)] = COLOR_NAMES.index("brown")
    out[~chromatic & (v < 50)] = COLOR_NAMES.index("black")
    out[~chromatic & (v >= 50) & (s < 60) & (v > 200)] = COLOR_NAMES.index("white")
    return out


def dominant_color(image: np.ndarray, mask: np.ndarray, max_pixels: int = 20_000) -> str:
    """The most frequent basic colour name inside ``mask`` (H, W bool) of ``image`` (H, W, 3 uint8 RGB).

    At most ``max_pixels`` pixels are read (a fixed-stride subsample, deterministic): 20,000 samples
    put a majority colour's share within about 1% while a 12 MP mask would cost a full HSV pass."""
    pix = image[mask]
    if len(pix) == 0:
        return "gray"
    stride = max(1, len(pix) // max_pixels)
    counts = np.bincount(pixel_color_names(pix[::stride]), minlength=len(COLOR_NAMES))
    return COLOR_NAMES[int(counts.argmax())]


def position_bucket(box: list[float], width: int, height: int) -> str:
    """``{top|middle|bottom}-{left|center|right}`` from the box centre, by thirds of the image."""
    cx = (box[0] + box[2]) / 2 / width
    cy = (box[1] + box[3]) / 2 / height
    h = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "center")
    v = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "middle")
    return f"{v}-{h}"


@dataclass
class SubjectFilter(Stage):
    """Filters and describes subjects; see the module docstring for the reasons it records."""

    name = "subjects"
    min_area_frac: float = 0.002  # below this a cutout is a handful of pixels at training resolution
    max_area_frac: float = 0.95  # a "subject" filling the frame is background
    min_det_score: float = 0.0
    min_mask_score: float = 0.0
    min_stability: float = 0.0
    max_border_sides: int = 2  # a subject touching 3-4 image borders is almost surely cut off
    border_px: float = 2.0  # a box edge within this many pixels of the image edge "touches" it (box rounding)
    max_subjects: int = 32  # per image; subject ids are 3 digits, and more rarely helps pairing

    def validate(self) -> list[str]:
        errs = []
        if not 0 <= self.min_area_frac < self.max_area_frac <= 1:
            errs.append("subjects.min_area_frac/max_area_frac: need 0 <= min < max <= 1")
        for f in ("min_det_score", "min_mask_score", "min_stability"):
            if not 0 <= getattr(self, f) <= 1:
                errs.append(f"subjects.{f}: must be in [0, 1]")
        if not 0 <= self.max_border_sides <= 4:
            errs.append("subjects.max_border_sides: must be in 0..4")
        if not 1 <= self.max_subjects <= 999:
            errs.append("subjects.max_subjects: must be in 1..999")
        return errs

    def process(self, batch: Batch) -> Batch:
        n = len(batch["image"])
        batch.setdefault("subject_rejects", [[] for _ in range(n)])
        for i in range(n):
            kept, dropped = self._filter_image(
                batch["image"][i], batch["image_id"][i], batch["subjects"][i] or []
            )
            batch["subjects"][i] = kept
            batch["subject_rejects"][i] = list(batch["subject_rejects"][i] or []) + dropped
            if not kept:
                reject(batch, i, "no_subjects")
        return batch

    def _check(self, s: dict, area: int | None, h: int, w: int) -> str | None:
        if area is None:
            return "no_mask"
        if [int(v) for v in s["mask_rle"]["size"]] != [h, w]:
            return "mask_size_mismatch"
        frac = float(area) / (h * w)
        if frac < self.min_area_frac:
            return "too_small"
        if frac > self.max_area_frac:
            return "too_large"
        if s.get("det_score", 1.0) < self.min_det_score:
            return "low_det_score"
        if s.get("mask_score", 1.0) < self.min_mask_score:
            return "low_mask_score"
        if s.get("stability", 1.0) < self.min_stability:
            return "low_stability"
        x0, y0, x1, y1 = s["box_xyxy"]
        b = self.border_px
        sides = (x0 <= b) + (y0 <= b) + (x1 >= w - b) + (y1 >= h - b)
        if sides > self.max_border_sides:
            return "touches_border"
        return None

    def _filter_image(self, image: np.ndarray, image_id: str, subjects: list[dict]):
        h, w = image.shape[:2]
        kept, dropped, areas = [], [], []
        for s in subjects:
            # Areas straight from the RLE (masks reaching here are well-formed: sources and model
            # stages check or make them); only kept subjects are decoded, for their colour.
            area = rle_area(s["mask_rle"]) if s.get("mask_rle") else None
            why = self._check(s, area, h, w)
            if why:
                dropped.append({"label": s.get("label", ""), "reason": why, "detail": ""})
            elif len(kept) >= self.max_subjects:
                dropped.append({"label": s["label"], "reason": "too_many_subjects", "detail": ""})
            else:
                kept.append(s)
                areas.append(area)
        order = sorted(range(len(kept)), key=lambda j: (-areas[j], j))
        rank = {j: r for r, j in enumerate(order)}
        records = []
        for j, s in enumerate(kept):
            m = rle_to_mask(s["mask_rle"])
            records.append(
                {
                    "schema_version": SCHEMA_VERSION,
                    "subject_id": f"{image_id}-{j:03d}",
                    "image_id": image_id,
                    "label": " ".join(str(s["label"]).lower().split()),
                    "box_xyxy": [float(v) for v in s["box_xyxy"]],
                    "det_score": float(min(max(s.get("det_score", 1.0), 0.0), 1.0)),
                    "det_source": s.get("det_source", "annotation"),
                    "mask_rle": {
                        "size": [int(v) for v in s["mask_rle"]["size"]],
                        "counts": rle_counts_str(s["mask_rle"]),
                    },
                    "mask_score": float(min(max(s.get("mask_score", 1.0), 0.0), 1.0)),
                    "mask_source": s.get("mask_source", "annotation"),
                    "stability": float(min(max(s.get("stability", 1.0), 0.0), 1.0)),
                    "area_frac": areas[j] / (h * w),
                    "attributes": {
                        "color": dominant_color(image, m),
                        "position": position_bucket(s["box_xyxy"], w, h),
                        "size_rank": rank[j],
                    },
                }
            )
        return records, dropped
