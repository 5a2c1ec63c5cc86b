"""Bank records as planning reads them: :class:`BankSubject`, the split of an image, a mask's box and
area from its RLE, the colour shares and the scene (every instance known in a photo)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

from pycocotools import mask as mask_utils

# Salt of the split hash: fixed (not the seed) so that a source image stays on the same side of the
# split across seeds and settings, and validation sets of different builds are comparable.
SPLIT_SALT = "scone-data/split/v1"
# Colour names that say nothing about a subject and so cannot single it out.
UNINFORMATIVE_COLORS = frozenset({"", "unknown", "mixed", "none"})


@dataclass(frozen=True)
class BankSubject:
    """One usable subject. ``mbox``: tight box of the mask, (x0, y0, x1, y1) float pixels, x1/y1 exclusive;
    ``area``: mask pixels in the source image."""

    subject_id: str
    image_id: str
    label: str
    mask_rle: dict
    mbox: tuple[float, float, float, float]
    area: float
    color: str
    split: str
    # colour shares of the eroded mask, ((name, share), ...) largest first; empty when the bank does not
    # record them (then no colour word is ever used for this subject)
    colors: tuple[tuple[str, float], ...] = ()


def split_of(image: dict, val_fraction: float, val_images: frozenset[str] | list[str] = ()) -> str:
    """``"val"`` or ``"train"`` by a hash of the image's ``group_id`` (if any) or ``image_id``, so all
    images of one group land on the same side; an image whose id or group id is in ``val_images`` is
    always ``"val"``."""
    unit = image.get("group_id") or image["image_id"]
    if unit in val_images or image["image_id"] in val_images:
        return "val"
    h = int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}|{unit}".encode()).digest()[:8], "big")
    return "val" if h / 2.0**64 < val_fraction else "train"


def mask_box(rle: dict) -> tuple[tuple[float, float, float, float], float]:
    """Tight box (x0, y0, x1, y1) and pixel area of a compressed COCO RLE, without decoding it."""
    r = {"size": list(rle["size"]), "counts": rle["counts"].encode()}
    x, y, w, h = (float(v) for v in mask_utils.toBbox(r))
    return (x, y, x + w, y + h), float(mask_utils.area(r))


def scene_index(subjects: list[dict], others=()) -> dict[str, list[tuple[str, str, tuple[float, ...]]]]:
    """image_id -> every instance known in that photo, ``(subject_id or "", label, box_xyxy)``: the
    Subject records (by subject id) and the subject rejects that kept their box (``others``)."""
    scene: dict[str, list] = defaultdict(list)
    for s in sorted(subjects, key=lambda s: s["subject_id"]):
        box = s.get("box_xyxy") or mask_box(s["mask_rle"])[0]
        scene[s["image_id"]].append((s["subject_id"], s["label"], tuple(box)))
    for o in others:
        if o.get("box_xyxy") and o.get("label"):
            scene[o["image_id"]].append(("", o["label"], tuple(o["box_xyxy"])))
    return scene


def color_shares(attributes: dict) -> tuple[tuple[str, float], ...]:
    """``attributes["colors"]`` (a list of ``{"name", "share"}``) as ``((name, share), ...)``, largest first."""
    out = [(str(c["name"]), float(c["share"])) for c in attributes.get("colors") or ()]
    return tuple(sorted(out, key=lambda ns: (-ns[1], ns[0])))


def informative(color: str) -> bool:
    """Whether a colour name can single a subject out (see :data:`UNINFORMATIVE_COLORS`)."""
    return color.lower() not in UNINFORMATIVE_COLORS
