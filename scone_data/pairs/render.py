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

from scone_data.imageio import encode_jpeg, rle_to_mask
from scone_data.pairs import augment
from scone_data.pairs.sample_plan import PlacedCandidate, ReferencePlan, SamplePlan
from scone_data.schemas import SAMPLE_VERSION

LoadImage = Callable[[str], np.ndarray]


def render_sample(
    plan: SamplePlan, load_image: LoadImage, cfg, provenance: dict
) -> tuple[dict, dict[str, bytes]]:
    """Render ``plan``. ``load_image(image_id)`` -> HxWx3 uint8 RGB. Returns (Sample record valid against
    ``schemas/sample.v2.json``, members ``{"ref0.jpg": bytes, ..., "target.jpg": bytes}``)."""
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
    target = get(plan.image_id)
    if plan.target_crop is not None:
        x0, y0, x1, y1 = plan.target_crop
        target = target[y0:y1, x0:x1]
    if (target.shape[1], target.shape[0]) != (plan.width, plan.height):
        target = cv2.resize(target, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
    target_box = {t.ref_index: t.box for t in plan.target_boxes}
    for i, r in enumerate(plan.references):
        img, boxes, areas, mask, aug = _render_reference(r, get, rng)
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
                "area": round(float(area), 1),
                "colors": [{"name": n, "share": sh} for n, sh in c.colors],
            }
            for c, box, area in zip(r.candidates, boxes, areas)
        ]
        mine = next((box for c, box in zip(r.candidates, boxes) if c.intended), None)
        score = None
        if mine is not None and i in target_box:
            score = copy_paste_score(img, mine, target, target_box[i], mask)
        aug["jitter"] = dict(zip(("brightness", "contrast", "saturation"), r.jitter))
        aug["source"] = r.source
        refs.append(
            {
                "member": member,
                "width": r.width,
                "height": r.height,
                "kind": r.kind,
                "candidates": cands,
                "expression": r.expression,
                "augment": aug,
                **({"copy_paste": score} if score is not None else {}),
            }
        )
    members["target.jpg"] = encode_jpeg(target, cfg.jpeg_quality)
    record = {
        "schema_version": SAMPLE_VERSION,
        "key": plan.key,
        "task": plan.task,
        "split": plan.split,
        "instruction": plan.instruction,
        **({"caption": dict(plan.caption)} if plan.caption else {}),
        "references": refs,
        "target": {
            **({"crop_box": list(plan.target_crop)} if plan.target_crop is not None else {}),
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
    """(HxWx3 uint8 RGB reference, candidate boxes, candidate mask areas in reference pixels, the intended
    candidate's alpha over the whole reference (None for natural crops), augment record)."""
    if r.kind == "crop":
        x0, y0, x1, y1 = r.crop_box
        img = get(r.crop_image_id)[y0:y1, x0:x1]
        img = cv2.resize(img, (r.width, r.height), interpolation=_interp(x1 - x0, r.width))
        if r.crop_flip:
            img = np.ascontiguousarray(img[:, ::-1])
        aug = {"crop_box": list(r.crop_box), "flip": r.crop_flip, "scale": round(r.width / (x1 - x0), 4)}
        return img, [c.box for c in r.candidates], [c.area for c in r.candidates], None, aug
    kind, rgb = r.background
    canvas = augment.background(kind, rgb, r.width, r.height, rng)
    boxes, areas, per = [], [], []
    mask = None
    for c in r.candidates:
        box, area, eroded, alpha, (ax, ay) = _paste_candidate(canvas, c, get(c.image_id), r)
        boxes.append(box)
        areas.append(area)
        if c.intended:
            mask = np.zeros(canvas.shape[:2], np.float32)
            augment.paste(mask[..., None], alpha[..., None], alpha, ax, ay)
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
    return canvas, boxes, areas, mask, aug


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
        return c.box, 0.0, eroded, alpha, (bx0 + dx, by0 + dy)
    H, W = canvas.shape[:2]
    box = (
        max(0, bx0 + dx + xs.min()),
        max(0, by0 + dy + ys.min()),
        min(W, bx0 + dx + xs.max() + 1),
        min(H, by0 + dy + ys.max() + 1),
    )
    return tuple(float(v) for v in box), float(len(xs)), eroded, alpha, (bx0 + dx, by0 + dy)


def _interp(src_side: int, dst_side: int) -> int:
    # INTER_AREA for shrinking avoids aliasing; linear for enlarging.
    return cv2.INTER_AREA if dst_side < src_side else cv2.INTER_LINEAR


# Both patches are compared at this side: enough to see pose and shading, too coarse for JPEG noise.
COPY_PASTE_SIDE = 32
# Fewer subject pixels than this (of 32 x 32) after erosion and warp: too little survived to compare.
MIN_COPY_PASTE_PIXELS = 16
# Rotations tried to undo the reference's own (augmentation rotates by up to pairs.rotate_max_deg = 20;
# the step is fine enough that a pixel copy rotated between two tried angles still scores above 0.9):
# a rotated pixel copy is still a copy, and a model learns to rotate it back.
COPY_PASTE_STEP = 5
COPY_PASTE_ANGLES = tuple(range(-20, 21, COPY_PASTE_STEP))
# The reference region is rotated at this side (long side, pixels) before it is cut and compared.
_ALIGN_SIDE = 2 * COPY_PASTE_SIDE


def copy_paste_score(ref: np.ndarray, ref_box, target: np.ndarray, target_box, ref_mask=None) -> float:
    """How nearly the reference's intended subject is a copy of its pixels in the target, up to the
    augmentations a model can undo: the best normalised cross-correlation over rotations
    (:data:`COPY_PASTE_ANGLES`), mirror images and scale (both patches are resized to a
    COPY_PASTE_SIDE square, so the aspect ratio too), of the reference's box region (grey, over the pixels
    of the subject's mask ``ref_mask``, HxW float alpha of the whole reference; None: the whole box),
    rotated back and cut to its subject's box, against the target's box patch. Clipped to [0, 1]: 1.0 is
    a pixel copy, however rotated or flipped; a subject seen in another pose or light scores far lower.
    Boxes: (x0, y0, x1, y1) pixels."""

    def region(img, box):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(img.shape[1], max(x1, x0 + 1)), min(img.shape[0], max(y1, y0 + 1))
        p = np.ascontiguousarray(img[y0:y1, x0:x1])
        return cv2.cvtColor(p, cv2.COLOR_RGB2GRAY) if p.ndim == 3 else p

    def square(p):
        return cv2.resize(p, (COPY_PASTE_SIDE, COPY_PASTE_SIDE), interpolation=cv2.INTER_AREA).astype(
            np.float64
        )

    b = square(region(target, target_box))
    a = region(ref, ref_box).astype(np.float32)
    m = (region(ref_mask, ref_box) if ref_mask is not None else np.ones(a.shape, np.float32)).astype(
        np.float32
    )
    k = min(1.0, _ALIGN_SIDE / max(a.shape))
    if k < 1.0:
        size = (max(1, round(a.shape[1] * k)), max(1, round(a.shape[0] * k)))
        a, m = (
            cv2.resize(a, size, interpolation=cv2.INTER_AREA),
            cv2.resize(m, size, interpolation=cv2.INTER_AREA),
        )
    h, w = a.shape
    side = int(np.ceil(np.hypot(h, w))) + 2  # room for any rotation of the region
    pad = ((side - h) // 2, (side - w) // 2)
    ca, cm = np.zeros((side, side), np.float32), np.zeros((side, side), np.float32)
    ca[pad[0] : pad[0] + h, pad[1] : pad[1] + w], cm[pad[0] : pad[0] + h, pad[1] : pad[1] + w] = a, m

    def ncc(x, y, msk):
        x, y = x[msk], y[msk]
        x, y = x - x.mean(), y - y.mean()
        return float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-6))

    def at(angle: float) -> float:
        rot = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        rm = cv2.warpAffine(cm, rot, (side, side), flags=cv2.INTER_LINEAR)
        x, y, bw, bh = cv2.boundingRect((rm > 0.5).astype(np.uint8))
        if bw * bh < MIN_COPY_PASTE_PIXELS:
            return 0.0
        ra = cv2.warpAffine(ca, rot, (side, side), flags=cv2.INTER_LINEAR)
        pa, pm = square(ra[y : y + bh, x : x + bw]), square(rm[y : y + bh, x : x + bw]) > 0.5
        if pm.sum() < MIN_COPY_PASTE_PIXELS:
            return 0.0
        return max(ncc(pa, b, pm), ncc(pa[:, ::-1], b, pm[:, ::-1]))

    # coarse to fine: every COPY_PASTE_STEP * 2 degrees, then the neighbours of the best
    coarse = {angle: at(angle) for angle in COPY_PASTE_ANGLES[::2]}
    top = max(coarse, key=coarse.get)
    fine = {
        angle: at(angle)
        for angle in (top - COPY_PASTE_STEP, top + COPY_PASTE_STEP)
        if abs(angle) <= COPY_PASTE_ANGLES[-1]
    }
    best = max([*coarse.values(), *fine.values()])
    return round(min(1.0, max(0.0, best)), 4)
