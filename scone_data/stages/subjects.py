"""SubjectFilter: the last stage before the subject bank.

Turns each image's working ``subjects`` (from annotations or the detector, masked by a segmenter)
into Subject records (``schemas/subject.v1.json``): assigns ``subject_id``, measures ``area_frac``,
computes the attributes the pair builder's referring expressions use (colour names of the eroded
mask, see :mod:`scone_data.stages.colors`; position bucket; size rank within the image) and drops
subjects that fail the filters, recording each drop in ``subject_rejects`` with its reason, label
and box.

Overlaps are resolved first, over every subject of the image that has a mask (kept or rejected, any
label): a pixel in two masks belongs to the smaller mask (a cup in a hand, a pedestrian before a bus)
and is removed from the larger, so a cut-out never carries a second object; parts and worn things
(:data:`PART_LABELS`: an eye of a cat, a patch on a suit, a hat) stay in their owner's mask. Masks that are no segmentation
(``mask_is_box``) take no pixels. A mask that took more than ``max_foreign_share`` (0.3) of its pixels
from one larger neighbour's mask, where its box is not inside that neighbour's box (at least
``nest_share`` (0.9) of it: a hat on a head, an eye of a cat, a pedestrian before a bus are inside
their neighbour by nature), has bled into that neighbour (GrabCut on a flag whose box overlaps a
person takes the person's shoulder): it gives those pixels back. Overlaps are then resolved again.
A mask that changed is re-encoded, and its area, ``area_frac`` and box are recomputed from it. The
work is done on each mask's tight crop.

Subject reject reasons, in the order they are reported (settings and defaults in brackets):

- ``no_mask``, ``mask_size_mismatch``: no usable mask.
- ``too_small`` / ``too_large``: mask area (after overlaps) out of [``min_area_frac`` 0.002,
  ``max_area_frac`` 0.95] of the image: a handful of pixels, or background.
- ``low_det_score``, ``low_mask_score``, ``low_stability``: below the model-score floors (0 = off).
- ``touches_border``: the box touches more than ``max_border_sides`` (2) image sides: cut off.
- ``mask_is_box``: ``mask_source == "box"`` (the segmenter fell back to the box) or the mask fills
  ``max_rect_fill`` (0.97) of its own bounding rectangle: a rectangle is never pasted as a subject.
- ``mask_fill_low``: the mask covers less than ``min_box_fill`` (0.25) of the subject's box: the
  segmenter found a part of the subject, or something else. Thin objects lying across their box (a
  diagonal spoon fills ~0.1 of it) pass when the mask spans ``thin_span`` (0.8) of the box both ways
  and fills ``thin_rect_fill`` (0.3) of its rotated bounding rectangle (a spoon 0.35-0.5; a mask
  hugging two box edges 0.15).
- ``mask_partial``: the mask's bounding rectangle stays more than ``max_side_gap`` (0.18) of the box's
  width (height), past 4 pixels of slack, away from one side of the subject's box. Boxes (annotations, detections) are tight
  around what is visible, so a mask that covers the subject reaches all four sides; one that does not
  lost a part (a woman whose head and hair GrabCut left out, keeping her cards and her dress, a face
  mask on a white sheet), and would be pasted as if it were the whole subject.
- ``mask_in_pieces``: the largest 8-connected piece holds less than ``min_component_share`` (0.75)
  of the mask: fragments of background or of other objects came along.
- ``mask_bleeds``: more than ``max_bleed_share`` (0.5) of the mask was claimed by larger
  neighbours' masks (as above): the mask is mostly a neighbour, e.g. a "person" that is mostly a bus
  wheel. It takes no pixels from anyone.
- ``mask_covers_subject``: more than ``max_hidden_share`` (0.15) of the mask lies inside the boxes of
  smaller, non-part subjects whose masks took no pixels (no mask, a box fallback, a bleeder): the
  cut-out would carry them, e.g. a bus with the pedestrians in front of it.
- ``too_many_subjects``: past ``max_subjects`` (32) kept in one image.

Each dropped subject keeps ``label``, ``box_xyxy`` (its input box) and a ``detail`` with the number
that failed.

Row reject reason: ``no_subjects`` (the image kept no subject, so no sample can use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from scone_data import SCHEMA_VERSION
from scone_data.imageio import mask_to_rle, rle_counts_str, rle_to_mask
from scone_data.stages.base import Batch, Stage, register_stage, reject
from scone_data.stages.colors import color_attributes


def position_bucket(box: list[float], width: int, height: int) -> str:
    """``{top|middle|bottom}-{left|center|right}`` from the box centre, by thirds of the image."""
    cx = (box[0] + box[2]) / 2 / width
    cy = (box[1] + box[3]) / 2 / height
    h = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "center")
    v = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "middle")
    return f"{v}-{h}"


# Pixels of slack between a box side and its mask (annotation and box rounding, a feathered edge).
SIDE_GAP_SLACK_PX = 4


def side_gap(rect, box) -> float:
    """The largest share of ``box``'s width (left, right) or height (top, bottom) between a side of the
    box and the same side of ``rect`` (a mask's bounding rectangle), less SIDE_GAP_SLACK_PX; 0 where the
    mask reaches it."""
    bw, bh = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    gaps = ((rect[0] - box[0], bw), (box[2] - rect[2], bw), (rect[1] - box[1], bh), (box[3] - rect[3], bh))
    return max(max(0.0, g - SIDE_GAP_SLACK_PX) / side for g, side in gaps)


class Crop:
    """A mask kept as its tight bounding crop: ``m`` (h, w) bool at rows ``y0:y0+h``, cols ``x0:x0+w``."""

    def __init__(self, m: np.ndarray, x0: int = 0, y0: int = 0):
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        if len(rows) == 0:
            self.y0 = self.x0 = 0
            self.m = np.zeros((0, 0), bool)
        else:
            self.y0, self.x0 = y0 + int(rows[0]), x0 + int(cols[0])
            self.m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
        self.area = int(self.m.sum())

    def window(self, x0: int, y0: int, x1: int, y1: int) -> tuple[slice, slice] | None:
        """Slices of ``m`` for the image rectangle [x0, x1) x [y0, y1); None when they do not meet."""
        h, w = self.m.shape
        r0, r1 = max(0, y0 - self.y0), min(h, y1 - self.y0)
        c0, c1 = max(0, x0 - self.x0), min(w, x1 - self.x0)
        return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None

    def rect(self) -> tuple[int, int, int, int]:
        """Tight box ``(x0, y0, x1, y1)``, exclusive ends, in image pixels."""
        return self.x0, self.y0, self.x0 + self.m.shape[1], self.y0 + self.m.shape[0]

    def full(self, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w), bool)
        out[self.y0 : self.y0 + self.m.shape[0], self.x0 : self.x0 + self.m.shape[1]] = self.m
        return out


def border_sides(box, width: int, height: int, margin: float = 0) -> int:
    """How many sides of the image (0..4) ``box`` (x0, y0, x1, y1; exclusive ends) comes within
    ``margin`` pixels of."""
    x0, y0, x1, y1 = box
    return int(x0 <= margin) + int(y0 <= margin) + int(x1 >= width - margin) + int(y1 >= height - margin)


def meet(c: Crop, o: Crop) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Where crops ``c`` and ``o`` meet: the slices of ``c.m`` and the matching part of ``o.m``."""
    win = c.window(o.x0, o.y0, o.x0 + o.m.shape[1], o.y0 + o.m.shape[0])
    if win is None:
        return None
    ys, xs = win
    dy, dx = c.y0 - o.y0, c.x0 - o.x0
    return win, o.m[ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]


# Labels of parts and worn things: where such a subject's mask overlaps a larger one, the larger keeps the
# pixels. A cat's cut-out shows its eyes and a person's their hat; without this the owner's cut-out got a
# hole in the shape of the part (seen on the demo: a cat with white eye holes, an astronaut with a hole for
# her mission patch). Separate objects (a cup in a hand, a pedestrian before a bus) still take their
# pixels from the larger mask.
PART_LABELS = frozenset(
    "eye eyes ear ears nose mouth face head hand hands arm arms leg legs foot feet hair beard tail paw "
    "wheel window door handle button badge patch logo label emblem "
    "hat cap helmet glasses sunglasses tie scarf mask collar".split()
)


def is_part(label: str) -> bool:
    """Whether ``label`` names a part or a worn thing (its last word is in :data:`PART_LABELS`)."""
    words = str(label).lower().split()
    return bool(words) and words[-1] in PART_LABELS


def resolve_overlaps(masks: list[Crop | None], takers: set[int]) -> list[Crop | None]:
    """Every pixel claimed by several masks goes to the smallest of them (ties: the earlier subject).

    Only masks in ``takers`` (trusted ones) take pixels from larger masks; ``masks`` are left as they
    are. Returns the resolved crops (re-tightened)."""
    rank = {
        k: r for r, (_, k) in enumerate(sorted((c.area, k) for k, c in enumerate(masks) if c is not None))
    }
    out: list[Crop | None] = list(masks)
    for k, c in enumerate(masks):
        if c is None or c.area == 0:
            continue
        m = None
        for j in sorted(takers):
            if j == k or rank[j] >= rank[k] or (hit := meet(c, masks[j])) is None:
                continue
            (ys, xs), other = hit
            if (c.m[ys, xs] & other).any():
                m = c.m.copy() if m is None else m
                m[ys, xs] &= ~other
        if m is not None:
            out[k] = Crop(m, c.x0, c.y0)
    return out


def _int_box(box, w: int, h: int) -> tuple[int, int, int, int]:
    """Pixel rectangle (exclusive ends) covering a float ``box_xyxy``, clipped to the image."""
    x0, y0, x1, y1 = box
    return (max(0, int(x0)), max(0, int(y0)), min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1))))


def _box_area(b: tuple[int, int, int, int]) -> int:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


def rotated_rect_fill(m: np.ndarray) -> float:
    """Mask area over the area of its minimum rotated bounding rectangle (1.0 for a filled bar)."""
    import cv2

    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    (_, _), (rw, rh), _ = cv2.minAreaRect(np.concatenate(contours))
    return float(m.sum()) / max(1.0, (rw + 1) * (rh + 1))


def largest_piece_share(m: np.ndarray) -> float:
    """Share of the mask's pixels in its largest 8-connected piece."""
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max()) / max(1, int(m.sum())) if n > 1 else 0.0


@register_stage
@dataclass
class SubjectFilter(Stage):
    """Filters and describes subjects; see the module docstring for the reasons it records."""

    name = "subjects"
    type: ClassVar[str] = "subjects"
    needs: ClassVar[tuple[str, ...]] = ("image", "image_id", "subjects")
    adds: ClassVar[dict[str, str]] = {"subjects": "json", "subject_rejects": "json"}
    min_area_frac: float = 0.002  # below this a cutout is a handful of pixels at training resolution
    max_area_frac: float = 0.95  # a "subject" filling the frame is background
    min_det_score: float = 0.0
    min_mask_score: float = 0.0
    min_stability: float = 0.0
    max_border_sides: int = 2  # a subject touching 3-4 image borders is almost surely cut off
    border_px: float = 2.0  # a box edge within this many pixels of the image edge "touches" it (box rounding)
    max_subjects: int = 32  # per image; subject ids are 3 digits, and more rarely helps pairing
    # mask quality gate (module docstring: one reject reason each)
    max_rect_fill: float = 0.97  # a mask filling this much of its own bounding rectangle is a box
    min_box_fill: float = 0.25  # GrabCut masks under a quarter of their box were a part or background
    thin_span: float = 0.8  # a thin object's mask reaches across this share of its box both ways ...
    thin_rect_fill: float = 0.3  # ... and fills this much of its rotated rect (spoon 0.35-0.5, edge L 0.15)
    min_component_share: float = 0.75  # a mask whose largest piece holds less is in pieces
    max_side_gap: float = 0.18  # a mask this far (box share) from a side of its tight box lost a part
    max_foreign_share: float = 0.3  # more of the mask claimed by a larger neighbour's mask: trimmed off
    max_bleed_share: float = 0.5  # more than this claimed by larger neighbours: the mask is theirs, rejected
    nest_share: float = 0.9  # a box this much inside a neighbour's box is a part or occluder of it
    max_hidden_share: float = 0.15  # more of the mask inside smaller unresolved subjects' boxes: rejected

    def validate(self) -> list[str]:
        errs = []
        if not 0 <= self.min_area_frac < self.max_area_frac <= 1:
            errs.append("subjects.min_area_frac/max_area_frac: need 0 <= min < max <= 1")
        for f in ("min_det_score", "min_mask_score", "min_stability", "min_box_fill", "thin_span",
                  "thin_rect_fill", "min_component_share", "max_side_gap", "max_foreign_share", "max_bleed_share",
                  "max_hidden_share"):  # fmt: skip
            if not 0 <= getattr(self, f) <= 1:
                errs.append(f"subjects.{f}: must be in [0, 1]")
        # at or below 0.5 a disc (pi/4 of its square) or a diamond (1/2) would read as a box
        if not 0.8 < self.max_rect_fill <= 1:
            errs.append("subjects.max_rect_fill: must be in (0.8, 1]")
        if not 0.5 <= self.nest_share <= 1:
            errs.append("subjects.nest_share: must be in [0.5, 1]")
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

    def _check(self, s: dict, c: Crop, h: int, w: int) -> tuple[str, str] | None:
        """The first filter ``s`` fails on its (overlap-resolved) mask ``c``, as ``(reason, detail)``."""
        frac = c.area / (h * w)
        if c.area == 0 or frac < self.min_area_frac:
            return "too_small", f"area_frac {frac:.4f}"
        if frac > self.max_area_frac:
            return "too_large", f"area_frac {frac:.3f}"
        for key, floor, why in (
            ("det_score", self.min_det_score, "low_det_score"),
            ("mask_score", self.min_mask_score, "low_mask_score"),
            ("stability", self.min_stability, "low_stability"),
        ):
            if s.get(key, 1.0) < floor:
                return why, f"{key} {s.get(key):.3f}"
        sides = border_sides(s["box_xyxy"], w, h, self.border_px)
        if sides > self.max_border_sides:
            return "touches_border", f"{sides} sides"
        return None

    def _is_box_mask(self, s: dict, orig: Crop) -> str | None:
        """Why the segmenter's mask is (nearly) a rectangle, or None."""
        if s.get("mask_source") == "box":
            return "segmenter fell back to the box"
        rect = orig.m.shape[0] * orig.m.shape[1]
        if orig.area >= self.max_rect_fill * rect:
            return f"fills {orig.area / rect:.3f} of its rectangle"
        return None

    def _bleed(self, k: int, c: Crop, masks: list, takers: set[int], boxes: list) -> tuple[float, list[int]]:
        """Pixels of subject ``k``'s resolved mask ``c`` that a larger neighbour's own mask claims too (``k``
        kept them only by being smaller): their share of ``c`` and the neighbours each claiming more than
        ``max_foreign_share``. Neighbours whose box holds ``nest_share`` of ``k``'s box do not count."""
        box, own = boxes[k], _box_area(boxes[k])
        total, over = 0.0, []
        for j in sorted(takers):
            if j == k or c.area == 0 or own == 0 or (hit := meet(c, masks[j])) is None:
                continue
            o = boxes[j]
            common = (max(box[0], o[0]), max(box[1], o[1]), min(box[2], o[2]), min(box[3], o[3]))
            if _box_area(common) >= self.nest_share * own:
                continue  # inside its neighbour: a part (hat, eye) or an occluder (a pedestrian before a bus)
            (ys, xs), other = hit
            share = float((c.m[ys, xs] & other).sum()) / c.area
            total += share
            if share > self.max_foreign_share:
                over.append(j)
        return total, over

    def _carries(self, k: int, c: Crop, subjects: list, boxes: list, resolved: set[int]):
        """``("mask_covers_subject", detail)`` when more than ``max_hidden_share`` of ``c`` lies inside the
        boxes of smaller, non-part subjects whose masks took no pixels (no mask, a box fallback, a bleeder):
        the cut-out would carry them (a bus cut-out with the pedestrians in front of it)."""
        own = _box_area(boxes[k])
        inside = np.zeros_like(c.m)
        for j, s in enumerate(subjects):
            if j == k or j in resolved or is_part(s.get("label", "")) or _box_area(boxes[j]) >= own:
                continue
            win = c.window(*boxes[j])
            if win is not None:
                inside[win] = True
        share = float((inside & c.m).sum()) / max(1, c.area)
        if share > self.max_hidden_share:
            return "mask_covers_subject", f"{share:.3f} of it inside other subjects' boxes"
        return None

    def _gate(
        self, c: Crop, box: tuple[int, int, int, int], raw: Crop | None = None
    ) -> tuple[str, str] | None:
        """Box fill and pieces of a resolved mask ``c`` (module docstring)."""
        fill = c.area / max(1, _box_area(box))
        if fill < self.min_box_fill:
            mh, mw = c.m.shape
            spans = mw >= self.thin_span * (box[2] - box[0]) and mh >= self.thin_span * (box[3] - box[1])
            if not (spans and rotated_rect_fill(c.m) >= self.thin_rect_fill):
                return "mask_fill_low", f"fills {fill:.3f} of its box"
        # the mask as segmented: pixels a neighbour took in front of it are occluded, not lost
        gap = side_gap((raw or c).rect(), box)
        if gap > self.max_side_gap:
            return "mask_partial", f"leaves {gap:.3f} of its box empty on one side"
        piece = largest_piece_share(c.m)
        if piece < self.min_component_share:
            return "mask_in_pieces", f"largest piece {piece:.3f}"
        return None

    def _filter_image(self, image: np.ndarray, image_id: str, subjects: list[dict]):
        h, w = image.shape[:2]
        n = len(subjects)
        why: list[tuple[str, str] | None] = [None] * n
        masks: list[Crop | None] = [None] * n
        for k, s in enumerate(subjects):
            if not s.get("mask_rle"):
                why[k] = ("no_mask", "")
            elif [int(v) for v in s["mask_rle"]["size"]] != [h, w]:
                why[k] = ("mask_size_mismatch", f"{list(s['mask_rle']['size'])} != {[h, w]}")
            else:
                masks[k] = Crop(rle_to_mask(s["mask_rle"]))  # decoded once, kept as its tight crop
        boxes = [_int_box(s["box_xyxy"], w, h) for s in subjects]
        # Trusted masks take the pixels they share with larger masks; a rectangle is no segmentation and
        # takes nothing. A mask that took much of a larger neighbour it does not sit inside has bled into
        # it: it gives those pixels back (trimmed), or, when they were most of it, is rejected and takes
        # nothing. Overlaps are then resolved again; every round trims or drops one mask for good.
        boxy = {
            k: r for k, c in enumerate(masks) if c is not None and (r := self._is_box_mask(subjects[k], c))
        }
        takers = {k for k, c in enumerate(masks) if c is not None and k not in boxy}
        inputs = list(masks)
        bleeds: dict[int, str] = {}
        while True:
            # a part or a worn thing leaves its pixels to its owner too (see PART_LABELS)
            crops = resolve_overlaps(masks, {k for k in takers if not is_part(subjects[k].get("label", ""))})
            found = False
            for k in sorted(takers):
                total, over = self._bleed(k, crops[k], masks, takers, boxes)
                if total > self.max_bleed_share:
                    bleeds[k] = f"{total:.3f} of it claimed by larger neighbours' masks"
                    takers.discard(k)
                elif over:
                    m = masks[k].m.copy()
                    for j in over:
                        (ys, xs), other = meet(masks[k], masks[j])
                        m[ys, xs] &= ~other
                    masks[k] = Crop(m, masks[k].x0, masks[k].y0)
                else:
                    continue
                found = True
                break
            if not found:
                break
        # masks only ever lose pixels (to smaller masks, or trimmed back from a neighbour): a changed mask has a
        # smaller area than its input
        changed = [c is not None and c.area != inputs[k].area for k, c in enumerate(crops)]
        kept, dropped = [], []
        for k, s in enumerate(subjects):
            if why[k] is None:
                why[k] = self._check(s, crops[k], h, w)
            if why[k] is None and k in boxy:
                why[k] = ("mask_is_box", boxy[k])
            if why[k] is None:
                why[k] = self._gate(crops[k], boxes[k], inputs[k])
            if why[k] is None and k in bleeds:
                why[k] = ("mask_bleeds", bleeds[k])
            if why[k] is None:
                why[k] = self._carries(k, crops[k], subjects, boxes, takers)
            if why[k] is None and len(kept) >= self.max_subjects:
                why[k] = ("too_many_subjects", "")
            if why[k] is None:
                kept.append(k)
                continue
            drop = {"label": str(s.get("label", "")), "reason": why[k][0], "detail": why[k][1]}
            drop["box_xyxy"] = [float(v) for v in s["box_xyxy"]]
            dropped.append(drop)
        order = sorted(range(len(kept)), key=lambda r: (-crops[kept[r]].area, r))
        rank = {r: i for i, r in enumerate(order)}
        return [self._record(image, image_id, i, subjects[k], crops[k], changed[k], rank[i])
                for i, k in enumerate(kept)], dropped  # fmt: skip

    def _record(self, image: np.ndarray, image_id: str, n: int, s: dict, c: Crop, changed: bool, rank: int):
        h, w = image.shape[:2]
        if changed:  # the mask lost pixels to smaller subjects: its RLE and box follow
            rle = mask_to_rle(c.full(h, w))
            box = [float(v) for v in c.rect()]
        else:
            rle = {"size": [int(v) for v in s["mask_rle"]["size"]], "counts": rle_counts_str(s["mask_rle"])}
            box = [float(v) for v in s["box_xyxy"]]
        x0, y0, x1, y1 = c.rect()
        color, colors = color_attributes(image[y0:y1, x0:x1], c.m)
        return {
            "schema_version": SCHEMA_VERSION,
            "subject_id": f"{image_id}-{n:03d}",
            "image_id": image_id,
            "label": " ".join(str(s["label"]).lower().split()),
            "box_xyxy": box,
            "det_score": float(min(max(s.get("det_score", 1.0), 0.0), 1.0)),
            "det_source": s.get("det_source", "annotation"),
            "mask_rle": rle,
            "mask_score": float(min(max(s.get("mask_score", 1.0), 0.0), 1.0)),
            "mask_source": s.get("mask_source", "annotation"),
            "stability": float(min(max(s.get("stability", 1.0), 0.0), 1.0)),
            "area_frac": c.area / (h * w),
            "attributes": {
                "color": color,
                "colors": colors,
                "position": position_bucket(box, w, h),
                "size_rank": rank,
            },
        }
