"""Geometry decided at planning time: where each candidate goes in a reference and how it is warped.

Everything here is drawn from the plan's ``random.Random``, so a plan fully determines its pixels and
the referring-expression check sees the same boxes the renderer will draw. Boxes are integer
(x0, y0, x1, y1) pixels, x1/y1 exclusive.
"""

from __future__ import annotations

import math
import random

from scone_data.bank.records import BankSubject

# A single cutout fills this fraction of the reference's side before the random scale; enough margin
# that rotation and perspective stay inside the canvas.
CUTOUT_FILL = 0.6
CUTOUT_FILL_BOUNDS = (0.3, 0.85)
# Canvas candidates: long side as a fraction of the canvas side, by number of candidates (2, 3, 4).
CANVAS_SIDE = {2: (0.3, 0.45), 3: (0.25, 0.38), 4: (0.22, 0.33)}
# Empty pixels kept between two canvas candidates, so they never touch or overlap.
CANVAS_GAP_PX = 8
# Random placement tries per candidate before everything is shrunk and laid out again.
PLACE_TRIES = 60
# When a canvas layout fails, every candidate shrinks by SHRINK and the layout is tried again, at
# most MAX_SHRINKS times (0.85^4 = 52% of the first size, still above the smallest useful subject).
SHRINK = 0.85
MAX_SHRINKS = 4
# Upscaling a small subject more than this makes a blurry reference the model learns to recognise.
MAX_UPSCALE = 3.0
# A natural crop pads the union of its instances by this fraction of the union's side on each side.
CROP_PAD_FRAC = 0.1
# A subject counts as shown in a crop if this much of its box is inside; a same-label instance with
# less (but some) inside makes the crop ambiguous.
CROP_MIN_VISIBLE = 0.9
CROP_MIN_PARTIAL = 0.05


def int_box(b) -> tuple[int, int, int, int]:
    """Pixel-aligned box covering the float box ``b`` (never empty)."""
    x0, y0 = int(math.floor(b[0])), int(math.floor(b[1]))
    return x0, y0, max(x0 + 1, int(math.ceil(b[2]))), max(y0 + 1, int(math.ceil(b[3])))


def draw_warp(rng: random.Random, cfg) -> tuple[float, tuple[float, ...]]:
    """Rotation in degrees and 8 perspective corner offsets (fractions of the patch side)."""
    rot = rng.uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg)
    persp = tuple(round(rng.uniform(-cfg.perspective_max, cfg.perspective_max), 4) for _ in range(8))
    return round(rot, 3), persp


def place_cutout(b: BankSubject, side: int, cfg, rng: random.Random) -> tuple[int, int, int, int]:
    """Box of one subject's mask region in a ``side`` x ``side`` cutout reference."""
    x0, y0, x1, y1 = int_box(b.mbox)
    w, h = x1 - x0, y1 - y0
    lo, hi = CUTOUT_FILL_BOUNDS
    fill = min(hi, max(lo, CUTOUT_FILL * rng.uniform(*cfg.scale_range)))
    s = min(fill * side / max(w, h), MAX_UPSCALE)
    pw, ph = max(1, round(w * s)), max(1, round(h * s))
    # Off-centre by up to a quarter of the free room, so the subject is not always dead centre.
    cx = (side - pw) / 2 + rng.uniform(-0.25, 0.25) * (side - pw)
    cy = (side - ph) / 2 + rng.uniform(-0.25, 0.25) * (side - ph)
    return round(cx), round(cy), round(cx) + pw, round(cy) + ph


def place_canvas(
    subs: list[BankSubject], side: int, rng: random.Random
) -> list[tuple[int, int, int, int]] | None:
    """Non-overlapping boxes for ``subs`` (2..4) in a ``side`` x ``side`` canvas, in ``subs`` order, at
    random scales and positions; None if no layout was found."""
    lo, hi = CANVAS_SIDE[len(subs)]
    sizes = []
    for b in subs:
        w, h = b.mbox[2] - b.mbox[0], b.mbox[3] - b.mbox[1]
        s = min(rng.uniform(lo, hi) * side / max(w, h), MAX_UPSCALE)
        sizes.append((max(1, round(w * s)), max(1, round(h * s))))
    for _ in range(MAX_SHRINKS + 1):
        boxes = _try_place(sizes, side, rng)
        if boxes is not None:
            return boxes
        sizes = [(max(1, round(w * SHRINK)), max(1, round(h * SHRINK))) for w, h in sizes]
    return None


def _try_place(sizes, side, rng):
    boxes: list[tuple[int, int, int, int]] = []
    for w, h in sizes:
        for _ in range(PLACE_TRIES):
            x, y = rng.randint(0, max(0, side - w)), rng.randint(0, max(0, side - h))
            cand = (x, y, x + w, y + h)
            if all(_apart(cand, o) for o in boxes):
                boxes.append(cand)
                break
        else:
            return None
    return boxes


def _apart(a, b) -> bool:
    g = CANVAS_GAP_PX
    return a[2] + g <= b[0] or b[2] + g <= a[0] or a[3] + g <= b[1] or b[3] + g <= a[1]


def plan_crop(anchor: BankSubject, in_image: list[BankSubject], img_wh: tuple[int, int]):
    """A crop of the anchor's source image around every instance of its label.

    Returns ``(crop_box, shown)`` with ``shown`` the subjects at least :data:`CROP_MIN_VISIBLE` inside,
    or a reject reason: ``"crop_single_instance"`` or ``"crop_partial_instance"``.
    """
    same = [o for o in in_image if o.label == anchor.label]
    if len(same) < 2:
        return "crop_single_instance"
    ux0 = min(o.mbox[0] for o in same)
    uy0 = min(o.mbox[1] for o in same)
    ux1 = max(o.mbox[2] for o in same)
    uy1 = max(o.mbox[3] for o in same)
    px, py = CROP_PAD_FRAC * (ux1 - ux0), CROP_PAD_FRAC * (uy1 - uy0)
    crop = int_box((max(0, ux0 - px), max(0, uy0 - py), min(img_wh[0], ux1 + px), min(img_wh[1], uy1 + py)))
    shown = []
    for o in in_image:
        v = visible_fraction(o.mbox, crop)
        if v >= CROP_MIN_VISIBLE:
            shown.append(o)
        elif v > CROP_MIN_PARTIAL and o.label == anchor.label:
            return "crop_partial_instance"
    return crop, shown


def visible_fraction(b, crop) -> float:
    """Share of box ``b``'s area inside ``crop`` (both x0, y0, x1, y1)."""
    ix = max(0.0, min(b[2], crop[2]) - max(b[0], crop[0]))
    iy = max(0.0, min(b[3], crop[3]) - max(b[1], crop[1]))
    area = max(1e-9, (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / area


def crop_to_ref(box, crop, scale: float, flip: bool, ref_w: int) -> tuple[float, float, float, float]:
    """A source-image box in the coordinates of the (scaled, maybe mirrored) crop reference, clipped."""
    x0 = (max(box[0], crop[0]) - crop[0]) * scale
    x1 = (min(box[2], crop[2]) - crop[0]) * scale
    y0 = (max(box[1], crop[1]) - crop[1]) * scale
    y1 = (min(box[3], crop[3]) - crop[1]) * scale
    if flip:
        x0, x1 = ref_w - x1, ref_w - x0
    return round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)


# A target crop may show at most this share of another named-label instance's box (a sliver at the
# crop's edge from box rounding); more would show the instance the instruction says to leave out.
TARGET_MAX_VISIBLE = 0.02
# Above this many other instances the exhaustive edge search (edges^4 crops) is not worth it: a photo
# with a crowd of the named label gives no clean target.
TARGET_MAX_OBSTACLES = 12


def plan_target_crop(
    keep: list[tuple[float, float, float, float]],
    avoid: list[tuple[float, float, float, float]],
    img_wh: tuple[int, int],
    min_area_frac: float,
    min_side_px: int,
    max_aspect: float,
) -> tuple[int, int, int, int] | None | str:
    """The largest crop of the image that holds every ``keep`` box whole and shows at most
    :data:`TARGET_MAX_VISIBLE` of any ``avoid`` box, with area >= ``min_area_frac`` of the image, both
    sides >= ``min_side_px`` and aspect ratio <= ``max_aspect``.

    Returns None when the whole image already qualifies (nothing to avoid is visible), the crop box
    (integer x0, y0, x1, y1, exclusive), or the reason there is none: ``"target_instance_overlaps"``
    (an instance to avoid overlaps the intended ones), ``"target_crowded"``, ``"target_crop_too_small"``.
    """
    W, H = img_wh
    u = int_box(
        (min(b[0] for b in keep), min(b[1] for b in keep), max(b[2] for b in keep), max(b[3] for b in keep))
    )
    u = (max(0, u[0]), max(0, u[1]), min(W, u[2]), min(H, u[3]))
    avoid = [b for b in avoid if visible_fraction(b, (0, 0, W, H)) > TARGET_MAX_VISIBLE]
    if not avoid:
        return None
    if any(visible_fraction(b, u) > TARGET_MAX_VISIBLE for b in avoid):
        return "target_instance_overlaps"
    if len(avoid) > TARGET_MAX_OBSTACLES:
        return "target_crowded"
    # A maximal crop has each edge at the image border or at an avoided box's edge facing the kept union.
    xs0 = sorted({0} | {math.ceil(b[2]) for b in avoid if b[2] <= u[0]})
    xs1 = sorted({W} | {math.floor(b[0]) for b in avoid if b[0] >= u[2]})
    ys0 = sorted({0} | {math.ceil(b[3]) for b in avoid if b[3] <= u[1]})
    ys1 = sorted({H} | {math.floor(b[1]) for b in avoid if b[1] >= u[3]})
    best, best_area = None, 0
    for x0 in xs0:
        for x1 in xs1:
            for y0 in ys0:
                for y1 in ys1:
                    c = _fit_aspect((x0, y0, x1, y1), u, max_aspect)
                    if c is None:
                        continue
                    area = (c[2] - c[0]) * (c[3] - c[1])
                    if area <= best_area or min(c[2] - c[0], c[3] - c[1]) < min_side_px:
                        continue
                    if any(visible_fraction(b, c) > TARGET_MAX_VISIBLE for b in avoid):
                        continue
                    best, best_area = c, area
    if best is None or best_area < min_area_frac * W * H:
        return "target_crop_too_small"
    return best


def _fit_aspect(c, u, max_aspect: float):
    """``c`` shrunk along its long side (around ``u``, staying inside ``c``) to aspect <= ``max_aspect``;
    None when ``u`` itself does not fit."""
    x0, y0, x1, y1 = c
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        return None
    if w > max_aspect * h:
        nw = int(max_aspect * h)
        x0, x1 = _shrink(x0, x1, u[0], u[2], nw)
        if x0 is None:
            return None
    elif h > max_aspect * w:
        nh = int(max_aspect * w)
        y0, y1 = _shrink(y0, y1, u[1], u[3], nh)
        if y0 is None:
            return None
    return x0, y0, x1, y1


def _shrink(a0: int, a1: int, k0: int, k1: int, n: int):
    """An interval of length ``n`` inside [a0, a1] holding [k0, k1], centred on it where possible."""
    if k1 - k0 > n:
        return None, None
    s = round((k0 + k1) / 2 - n / 2)
    s = min(max(s, a0, k1 - n), a1 - n, k0)
    return s, s + n
