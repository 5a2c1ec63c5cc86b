"""Decode and validate source images; turn given annotations into subjects.

Adds the columns ``image`` ((H, W, 3) uint8 RGB, EXIF orientation applied), ``width``,
``height``, ``image_id``, ``subjects`` and ``subject_rejects`` (see :mod:`scone_data.sources` for
the row contract). ``image_bytes`` is kept.

Row reject reasons (``reason`` column):

- ``missing_image``: the row has no ``image_bytes``.
- ``empty_file``, ``not_an_image``, ``too_many_pixels``, ``truncated``, ``decode_error: <detail>``:
  from :func:`scone_data.imageio.decode_image`.
- ``too_small: <w>x<h>``: a side shorter than ``min_side``.

Subject reject reasons (``subject_rejects[i]["reason"]``; the image is kept):

- ``bad_annotation``: not a dict.  ``bad_label``: label missing or not a non-empty string.
- ``crowd``: ``iscrowd`` set and ``keep_crowd`` is False (a crowd region is not one subject).
- ``bad_box``: box not 4 numbers.  ``non_finite_box``: NaN or inf.
- ``bad_box_size``: x1 <= x0 or y1 <= y0.  ``outside_image``: nothing left after clipping.
- ``missing_box``: neither a box nor a mask to take one from.
- ``bad_polygon``, ``bad_rle``, ``bad_segmentation``: a mask that cannot be read; polygons are
  also refused (``bad_polygon: <why>``) past the limits below, which keep pycocotools' rasteriser
  (memory ~80 bytes per pixel of outline; int overflow and a crash past ~4e8) safe.
- ``mask_size_mismatch``: an RLE whose size is not the decoded image's [h, w].
- ``empty_mask``: the mask covers no pixel of the image.
- ``exif_frame_mismatch: <detail>``: an EXIF-rotated image whose json ``width``/``height`` are
  neither its stored nor its shown size, so the annotation cannot be placed (see
  :func:`to_display_frame`: annotations in the stored grid are rotated with the image).
- ``box_mask_mismatch: <detail>``: less than ``MIN_MASK_IN_BOX`` of a polygon mask lies in the
  given box (RLE masks are not checked yet).

Why no ``max_side``: ``max_pixels`` already bounds memory and ``min_side`` rejects degenerate
strips; a long panorama is still a valid source image.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from scone_data.imageio import (
    DecodeError,
    content_id,
    decode_image,
    rle_counts_from_string,
    rle_counts_str,
    sanitize_id,
)
from scone_data.stages.base import Batch, Stage, batch_len, register_stage, reject

# Untrusted polygons: at most this many vertices per annotation (COCO's largest have a few
# hundred, LVIS's a few thousand); every coordinate within +-MAX_POLYGON_OUTLINE * (w + h) (far
# below pycocotools' int overflow at ~4e8) and an outline (sum of L-inf edge lengths) of at most
# MAX_POLYGON_OUTLINE * (w + h) pixels: ~36 MB of rasteriser memory at 4000x3000.
MAX_POLYGON_VERTICES = 50_000
MAX_POLYGON_OUTLINE = 64
# Share of a mask's pixels its given box must hold. COCO and LVIS boxes are the mask's bounds
# (~100%, less a pixel of rounding at the border); half tolerates loosely drawn boxes.
MIN_MASK_IN_BOX = 0.5


@register_stage
@dataclass
class DecodeImages(Stage):
    """``max_pixels``: decompression-bomb cap, checked from the header before any pixel is decoded
    (40 MP holds every common camera and stock photo); ``min_side`` (pixels): smaller images are
    useless as references; ``keep_crowd``: keep COCO ``iscrowd`` annotations as subjects."""

    name: ClassVar[str] = "decode"
    type: ClassVar[str] = "decode"
    needs: ClassVar[tuple[str, ...]] = ("image_bytes",)
    adds: ClassVar[dict[str, str]] = {
        "image": "array",
        "width": "value",
        "height": "value",
        "image_id": "value",
        "subjects": "json",  # the annotations' subjects, in the displayed frame
        "subject_rejects": "json",
    }
    max_pixels: int = 40_000_000
    min_side: int = 32
    keep_crowd: bool = False

    def validate(self) -> list[str]:
        problems = []
        for f in ("max_pixels", "min_side"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"{f}: must be an integer >= 1, got {v!r}")
        if not problems and self.min_side * self.min_side > self.max_pixels:
            problems.append(f"min_side: {self.min_side}^2 exceeds max_pixels={self.max_pixels}")
        if not isinstance(self.keep_crowd, bool):
            problems.append(f"keep_crowd: must be true or false, got {self.keep_crowd!r}")
        return problems

    def process(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        for col, empty in (("image", None), ("width", None), ("height", None)):
            batch[col] = [empty] * n
        batch["subjects"] = [[] for _ in range(n)]
        batch["subject_rejects"] = [[] for _ in range(n)]
        ids = batch.get("image_id") or [None] * n
        batch["image_id"] = list(ids)
        anns = batch.get("annotations") or [None] * n
        for i in range(n):
            data = batch["image_bytes"][i] if "image_bytes" in batch else None
            given = ids[i]
            if given is not None and given != "":
                batch["image_id"][i] = sanitize_id(given)
            elif data:
                batch["image_id"][i] = content_id(data)
            if data is None:
                reject(batch, i, "missing_image")
                continue
            try:
                img = decode_image(bytes(data), self.max_pixels)
            except DecodeError as e:
                reject(batch, i, e.as_reason())
                continue
            h, w = img.shape[:2]
            if min(h, w) < self.min_side:
                reject(batch, i, f"too_small: {w}x{h}")
                continue
            batch["image"][i], batch["width"][i], batch["height"][i] = img, w, h
            orientation = exif_orientation(bytes(data)) if anns[i] else 1  # a header read, no pixels
            given, frame_rejects = to_display_frame(anns[i], orientation, h, w)
            subjects, rejects = annotations_to_subjects(given, h, w, keep_crowd=self.keep_crowd)
            rejects = frame_rejects + rejects
            batch["subjects"][i], batch["subject_rejects"][i] = subjects, rejects
        return batch


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of encoded image bytes; 1 when absent or unreadable (the
    decode that just succeeded applied the same tag, so a bad one was already a reject)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            o = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - orientation unknown: the image was decoded as stored
        return 1
    return o if isinstance(o, int) and 1 <= o <= 8 else 1


# EXIF orientation -> the stored pixel (x, y) of a W0 x H0 image in the displayed frame, for
# continuous coordinates; the same as PIL's exif_transpose does to the pixels.
_POINT = {
    2: lambda x, y, W, H: (W - x, y),
    3: lambda x, y, W, H: (W - x, H - y),
    4: lambda x, y, W, H: (x, H - y),
    5: lambda x, y, W, H: (y, x),
    6: lambda x, y, W, H: (H - y, x),
    7: lambda x, y, W, H: (H - y, W - x),
    8: lambda x, y, W, H: (y, W - x),
}
_MASK = {
    2: lambda m: m[:, ::-1],
    3: lambda m: m[::-1, ::-1],
    4: lambda m: m[::-1, :],
    5: lambda m: m.T,
    6: lambda m: np.rot90(m, -1),
    7: lambda m: m[::-1, ::-1].T,
    8: lambda m: np.rot90(m, 1),
}


def to_display_frame(annotations: Any, orientation: int, h: int, w: int) -> tuple[Any, list]:
    """Annotations given in the stored pixel grid -> the displayed (EXIF-rotated, ``h`` x ``w``)
    one, as ``(annotations, subject_rejects)``.

    An annotation's ``image_wh`` (the COCO json's ``[width, height]``) says its frame: the stored
    one (or absent: COCO's convention) is transformed, the displayed one is kept, and one matching
    neither is rejected (``exif_frame_mismatch``: its coordinates cannot be placed). Malformed
    boxes and masks pass through untouched for :func:`annotations_to_subjects` to reject."""
    if orientation == 1 or not isinstance(annotations, list):
        return annotations, []
    W0, H0 = (w, h) if orientation <= 4 else (h, w)
    out, rejects = [], []
    for ann in annotations:
        if not isinstance(ann, dict):
            out.append(ann)
            continue
        frame = ann.get("image_wh")
        if frame is None or list(frame) == [W0, H0]:
            out.append(_transform(ann, orientation, W0, H0))
        elif list(frame) == [w, h]:
            out.append(ann)
        else:
            label = ann.get("label")
            rejects.append({"label": label if isinstance(label, str) else "", "reason": "exif_frame_mismatch",
                            "detail": f"json {list(frame)}, image {W0}x{H0} stored, {w}x{h} shown"})  # fmt: skip
    return out, rejects


def _transform(ann: dict, o: int, W0: int, H0: int) -> dict:
    point = _POINT[o]
    ann = dict(ann)
    box = ann.get("box_xyxy")
    if isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box):
        (ax, ay), (bx, by) = point(box[0], box[1], W0, H0), point(box[2], box[3], W0, H0)
        ann["box_xyxy"] = [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        polys = [seg] if all(_is_number(v) for v in seg) else seg
        if all(
            isinstance(p, (list, tuple)) and len(p) % 2 == 0 and all(_is_number(v) for v in p) for p in polys
        ):
            ann["segmentation"] = [
                [c for k in range(0, len(p), 2) for c in point(p[k], p[k + 1], W0, H0)] for p in polys
            ]
    elif isinstance(seg, dict):
        try:
            rle = _rle_at_size(seg, H0, W0)
        except _SubjectReject:
            return ann  # rejected as it is, with its own reason
        from pycocotools import mask as mask_utils

        m = np.asfortranarray(_MASK[o](mask_utils.decode(rle)))
        ann["segmentation"] = {"size": list(m.shape), "counts": rle_counts_str(mask_utils.encode(m))}
    return ann


class _SubjectReject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def annotations_to_subjects(annotations: Any, h: int, w: int, keep_crowd: bool = False) -> tuple[list, list]:
    """Source annotations -> ``(subjects, subject_rejects)`` for an image of ``h`` x ``w`` pixels.

    Boxes are clipped to the image; masks become compressed RLE of size [h, w]. A box missing from
    an annotation with a mask is taken from the mask. Reasons are in the module docstring.
    """
    if annotations is None:
        return [], []
    if not isinstance(annotations, list):
        return [], [
            {
                "label": "",
                "reason": "bad_annotation",
                "detail": f"annotations is {type(annotations).__name__}",
            }
        ]
    subjects, rejects = [], []
    for ann in annotations:
        label = ann.get("label") if isinstance(ann, dict) else None
        try:
            subjects.append(_one_subject(ann, h, w, keep_crowd))
        except _SubjectReject as e:
            rejects.append(
                {"label": label if isinstance(label, str) else "", "reason": e.reason, "detail": e.detail}
            )
    return subjects, rejects


def _one_subject(ann: Any, h: int, w: int, keep_crowd: bool) -> dict:
    if not isinstance(ann, dict):
        raise _SubjectReject("bad_annotation", f"{type(ann).__name__}, not a dict")
    label = ann.get("label")
    if not isinstance(label, str) or not label.strip():
        raise _SubjectReject("bad_label", repr(label)[:80])
    if ann.get("iscrowd") and not keep_crowd:
        raise _SubjectReject("crowd")
    rle = _mask_rle(ann.get("segmentation"), h, w)
    box = ann.get("box_xyxy")
    given_box = box is not None
    if box is None:
        if rle is None:
            raise _SubjectReject("missing_box")
        from pycocotools import mask as mask_utils

        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        box = [x, y, x + bw, y + bh]
    box = _clip_box(box, h, w)
    if rle is not None and given_box and isinstance(ann.get("segmentation"), list):
        _check_box_holds_mask(box, rle, h, w)
    out = {"label": label.strip(), "box_xyxy": box, "det_score": 1.0, "det_source": "annotation"}
    if rle is not None:
        out["mask_rle"] = {"size": [h, w], "counts": rle_counts_str(rle)}
        out.update(mask_score=1.0, stability=1.0, mask_source="annotation")
    return out


def _check_box_holds_mask(box: list[float], rle: dict, h: int, w: int) -> None:
    """A given box must hold most of its mask: COCO boxes are the mask's bounds, so a box beside
    its polygon is a broken annotation, and one of the two would put the subject on background."""
    from pycocotools import mask as mask_utils

    x0, y0, x1, y1 = box
    box_rle = mask_utils.frPyObjects(np.array([[x0, y0, x1 - x0, y1 - y0]], np.float64), h, w)[0]
    inside = int(mask_utils.area(mask_utils.merge([rle, box_rle], intersect=True)))
    share = inside / int(mask_utils.area(rle))
    if share < MIN_MASK_IN_BOX:
        raise _SubjectReject("box_mask_mismatch", f"{share:.0%} of the mask inside the box {box}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _clip_box(box: Any, h: int, w: int) -> list[float]:
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise _SubjectReject("bad_box", repr(box)[:80])
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise _SubjectReject("non_finite_box", repr(box)[:80])
    if x1 <= x0 or y1 <= y0:
        raise _SubjectReject("bad_box_size", f"{[x0, y0, x1, y1]}")
    cx0, cy0 = min(max(x0, 0.0), w), min(max(y0, 0.0), h)
    cx1, cy1 = min(max(x1, 0.0), w), min(max(y1, 0.0), h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise _SubjectReject("outside_image", f"{[x0, y0, x1, y1]} vs {w}x{h}")
    return [cx0, cy0, cx1, cy1]


def _mask_rle(seg: Any, h: int, w: int) -> dict | None:
    """A COCO segmentation (polygons, RLE with list or str counts) -> compressed RLE, or None."""
    from pycocotools import mask as mask_utils

    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, list):
        polys = [seg] if all(_is_number(v) for v in seg) else seg  # a flat list is one polygon
        clean = []
        for p in polys:
            if (
                not isinstance(p, (list, tuple))
                or len(p) < 6
                or len(p) % 2
                or not all(_is_number(v) for v in p)
            ):
                raise _SubjectReject("bad_polygon", repr(p)[:80])
            if not all(math.isfinite(float(v)) for v in p):
                raise _SubjectReject("bad_polygon", "non-finite coordinate")
            clean.append([float(v) for v in p])
        _check_polygons(clean, h, w)
        rle = mask_utils.merge(mask_utils.frPyObjects(clean, h, w))
    elif isinstance(seg, dict):
        rle = _rle_at_size(seg, h, w)
    else:
        raise _SubjectReject("bad_segmentation", type(seg).__name__)
    if int(mask_utils.area(rle)) == 0:
        raise _SubjectReject("empty_mask")
    return rle


def _check_polygons(polys: list[list[float]], h: int, w: int) -> None:
    n = sum(len(p) // 2 for p in polys)
    if n > MAX_POLYGON_VERTICES:
        raise _SubjectReject("bad_polygon", f"{n} vertices > {MAX_POLYGON_VERTICES}")
    limit = MAX_POLYGON_OUTLINE * (w + h)
    outline = 0.0
    for p in polys:
        xy = np.asarray(p, np.float64).reshape(-1, 2)
        if np.abs(xy).max() > limit:
            raise _SubjectReject("bad_polygon", f"a coordinate lies far outside the {w}x{h} image")
        outline += float(np.abs(np.diff(xy, axis=0, append=xy[:1])).max(axis=1).sum())
    if outline > limit:
        raise _SubjectReject("bad_polygon", f"outline of {outline:.0f} px > {MAX_POLYGON_OUTLINE} x (w + h)")


def _rle_at_size(seg: dict, h: int, w: int) -> dict:
    from pycocotools import mask as mask_utils

    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) for v in size)):
        raise _SubjectReject("bad_rle", f"size {size!r}"[:80])
    if [int(size[0]), int(size[1])] != [h, w]:
        raise _SubjectReject("mask_size_mismatch", f"mask {list(size)} vs image {[h, w]}")
    if isinstance(counts, (str, bytes)):
        try:
            runs = rle_counts_from_string(counts)
        except (ValueError, UnicodeDecodeError) as e:
            raise _SubjectReject("bad_rle", str(e)) from None
    elif isinstance(counts, list) and all(_is_number(v) and v >= 0 for v in counts):
        runs = [int(v) for v in counts]
    else:
        raise _SubjectReject("bad_rle", "counts must be a string or a list of non-negative ints")
    # pycocotools' C decoder trusts the runs; a wrong sum would write outside its buffer.
    if sum(runs) != h * w:
        raise _SubjectReject("bad_rle", f"runs sum to {sum(runs)}, image has {h * w} pixels")
    return mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
