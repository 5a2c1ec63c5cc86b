"""Rendering: a :class:`SamplePlan` to a Sample record and its JPEG members.

The only randomness is the texture noise, drawn from ``plan.seed``; everything else was decided by the
planner, so the same plan and settings give byte-identical members. Candidate boxes written to the
record are the tight boxes of what was actually pasted (after warp and erosion), in reference pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np

from scone_data import SCHEMA_VERSION
from scone_data.imageio import encode_jpeg, rle_to_mask
from scone_data.pairs import augment
from scone_data.pairs.sample_plan import PlacedCandidate, ReferencePlan, SamplePlan

LoadImage = Callable[[str], np.ndarray]


def render_sample(
    plan: SamplePlan, load_image: LoadImage, cfg, provenance: dict
) -> tuple[dict, dict[str, bytes]]:
    """Render ``plan``. ``load_image(image_id)`` -> HxWx3 uint8 RGB. Returns (Sample record valid against
    ``schemas/sample.v1.json``, members ``{"ref0.jpg": bytes, ..., "target.jpg": bytes}``)."""
    cache: dict[str, np.ndarray] = {}

    def get(image_id: str) -> np.ndarray:
        if image_id not in cache:
            img = load_image(image_id)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(
                    f"load_image({image_id!r}) must return HxWx3 uint8 RGB, got {img.shape} {img.dtype}"
                )
            cache[image_id] = img
        return cache[image_id]

    rng = np.random.default_rng(plan.seed)
    members: dict[str, bytes] = {}
    refs = []
    for i, r in enumerate(plan.references):
        img, boxes, aug = _render_reference(r, get, rng)
        img = augment.jitter(img, *r.jitter)
        member = f"ref{i}.jpg"
        members[member] = encode_jpeg(img, cfg.jpeg_quality)
        cands = [
            {
                "subject_id": c.subject_id,
                "label": c.label,
                "box_xyxy": [round(float(v), 2) for v in box],
                "intended": c.intended,
                "source_image_id": c.image_id,
            }
            for c, box in zip(r.candidates, boxes)
        ]
        aug["jitter"] = dict(zip(("brightness", "contrast", "saturation"), r.jitter))
        aug["source"] = r.source
        refs.append(
            {
                "member": member,
                "width": r.width,
                "height": r.height,
                "kind": r.kind,
                "candidates": cands,
                "subject_list": [c.label for c in r.candidates],
                "subject_label": [c.label for c in r.candidates if c.intended],
                "expression": r.expression,
                "augment": aug,
            }
        )
    target = get(plan.image_id)
    if (target.shape[1], target.shape[0]) != (plan.width, plan.height):
        target = cv2.resize(target, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
    members["target.jpg"] = encode_jpeg(target, cfg.jpeg_quality)
    record = {
        "schema_version": SCHEMA_VERSION,
        "key": plan.key,
        "task": plan.task,
        "split": plan.split,
        "instruction": plan.instruction,
        "references": refs,
        "target": {
            "member": "target.jpg",
            "image_id": plan.image_id,
            "width": plan.width,
            "height": plan.height,
            "boxes": [
                {
                    "subject_id": t.subject_id,
                    "label": t.label,
                    "box_xyxy": list(t.box),
                    "ref_index": t.ref_index,
                }
                for t in plan.target_boxes
            ],
        },
        "provenance": {
            k: provenance[k] for k in ("builder_version", "config_hash", "seed", "source", "models")
        },
    }
    # Not validated here: ShardWriter.write validates every record it writes (once is enough: a
    # validation costs ~7 ms, most of our overhead over a plain webdataset loop).
    return record, members


def _render_reference(r: ReferencePlan, get, rng: np.random.Generator):
    """(HxWx3 uint8 RGB reference, candidate boxes, augment record) for one reference."""
    if r.kind == "crop":
        x0, y0, x1, y1 = r.crop_box
        img = get(r.crop_image_id)[y0:y1, x0:x1]
        img = cv2.resize(img, (r.width, r.height), interpolation=_interp(x1 - x0, r.width))
        if r.crop_flip:
            img = np.ascontiguousarray(img[:, ::-1])
        aug = {"crop_box": list(r.crop_box), "flip": r.crop_flip, "scale": round(r.width / (x1 - x0), 4)}
        return img, [c.box for c in r.candidates], aug
    kind, rgb = r.background
    canvas = augment.background(kind, rgb, r.width, r.height, rng)
    boxes, per = [], []
    for c in r.candidates:
        box, eroded = _paste_candidate(canvas, c, get(c.image_id), r)
        boxes.append(box)
        per.append(
            {
                "subject_id": c.subject_id,
                "flip": c.flip,
                "scale": round((c.box[2] - c.box[0]) / (c.src_box[2] - c.src_box[0]), 4),
                "rotate_deg": c.rotate_deg,
                "perspective": list(c.perspective),
                "eroded": eroded,
            }
        )
    aug = {
        "background": {"kind": kind, "rgb": list(rgb)},
        "erode_px": r.erode_px,
        "feather_px": r.feather_px,
        "candidates": per,
    }
    return canvas, boxes, aug


MASK_CACHE = 64  # subject masks kept per process (a 500x500 crop is 1 MB as float32)


@lru_cache(maxsize=MASK_CACHE)
def _mask_crop(size: tuple[int, int], counts: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """The float32 mask of a subject inside ``box`` (read-only, shared). A subject is drawn in many
    samples (as intended and as a distractor) from the same box; a full-size decode each time cost
    ~2 ms at 1080x1440."""
    x0, y0, x1, y1 = box
    m = rle_to_mask({"size": list(size), "counts": counts})[y0:y1, x0:x1].astype(np.float32)
    m.flags.writeable = False
    return m


def _paste_candidate(canvas: np.ndarray, c: PlacedCandidate, src: np.ndarray, r: ReferencePlan):
    if tuple(src.shape[:2]) != tuple(c.mask_size):
        raise ValueError(f"image {c.image_id} is {src.shape[:2]}, mask of {c.subject_id} is {c.mask_size}")
    x0, y0, x1, y1 = c.src_box
    patch, m = src[y0:y1, x0:x1], _mask_crop(tuple(c.mask_size), c.mask_counts, tuple(c.src_box))
    if c.flip:
        patch, m = patch[:, ::-1], m[:, ::-1]
    bx0, by0, bx1, by1 = (int(round(v)) for v in c.box)
    size = (max(1, bx1 - bx0), max(1, by1 - by0))
    patch = cv2.resize(np.ascontiguousarray(patch), size, interpolation=_interp(x1 - x0, size[0]))
    m = cv2.resize(np.ascontiguousarray(m), size, interpolation=cv2.INTER_LINEAR)
    dx = dy = 0
    if c.rotate_deg or any(c.perspective):
        patch, m, (dx, dy) = augment.warp(patch, m, c.rotate_deg, c.perspective)
    alpha, eroded = augment.mask_edges(m, r.erode_px, r.feather_px)
    augment.paste(canvas, patch, alpha, bx0 + dx, by0 + dy)
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:  # nothing visible survived: keep the planned box rather than invent one
        return c.box, eroded
    H, W = canvas.shape[:2]
    box = (
        max(0, bx0 + dx + xs.min()),
        max(0, by0 + dy + ys.min()),
        min(W, bx0 + dx + xs.max() + 1),
        min(H, by0 + dy + ys.max() + 1),
    )
    return tuple(float(v) for v in box), eroded


def _interp(src_side: int, dst_side: int) -> int:
    # INTER_AREA for shrinking avoids aliasing; linear for enlarging.
    return cv2.INTER_AREA if dst_side < src_side else cv2.INTER_LINEAR
