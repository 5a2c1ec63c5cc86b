"""Re-posed targets (the anti-copy-paste targets of UNO, OmniGen2 and Echo-4o) as two bank steps:
``repose`` (after subjects) and ``repose_check`` (after a second detect, segment and subjects pass over
what ``repose`` made).

``repose`` (:class:`ReposeTargets`, an :class:`~scone_data.stages.generated.EditStep`): for each ok
photo with subjects (not an image another step generated), its largest subject (mask area, then
subject id) seen whole (:meth:`ReposeTargets.pick`: not cut by the frame on two sides or more, not
covered by other subjects, not a part of another; a photo without one is not re-posed) is cut out by
its mask, laid on a plain square canvas (``canvas_side`` pixels, the subject's longer side
``subject_frac`` of it) and the edit model is asked to show it in a scene drawn from the prompt file
(``prompts/repose.<version>.txt``: the instruction, the caption and the scenes): "Show the mug of this
picture on a sandy beach. Keep the mug exactly as in the picture, in a new pose and from a new
viewpoint." Scene and seed
are drawn from the step's ``seed`` and the photo's id, so they are the same whatever the executor. The
generated image becomes a **new row** after the unit's rows: a group mate of the photo (``image_id``
``{id}-rep``, ``uri`` ``{uri}#repose``, ``group_id`` the photo's group or else its id, which the photo
gets too), PNG bytes, ``caption`` "The mug on a sandy beach." (the sample's instruction is woven from it),
``subject_tags`` the label (so the detector looks for it), and ``generation`` the edit's provenance
(model, weights digest, prompt, seed, steps, guidance) with ``parent_image_id``, ``parent_subject_id``,
``label``, ``scene``, ``cutout_box`` and the prompt file's name, version and digest.

The generated image has no subjects yet: the pipeline lists ``detect``, ``sam`` and ``subjects`` again
with ``only_added_by: repose`` (they see only these rows), then ``repose_check``
(:class:`ReposeCheck`): a generated row stays only when it holds exactly one instance of the label,
kept or dropped by the subjects step (``repose_count: 2 != 1 mug``: planning keeps every instance of
a named label out of a target, so a second one would make the target unusable), whose colours inside
its mask match the parent subject's (hue x saturation histogram intersection at least
``min_similarity``, else ``repose_unlike: 0.31 < 0.50 mug``); ``repose_parent_rejected`` and ``repose_no_original`` when the photo or its subject is gone.

The planner (:mod:`scone_data.pairs.tasks`) lets a kept re-posed image anchor single-subject samples
of every task: its intended subject is the re-posed one and that subject's reference is always cut from
the **real photo** (the parent subject), never from the generated target. The generated images are
stored in the bank, so ``regen`` never edits.

Limits: one re-posed target per photo, of its largest subject seen whole; the scenes are generic places
(any movable object, animal or person; buildings, fixed structures and large vehicles, ``LARGE_THINGS``
of :mod:`~scone_data.stages.edit`, get outdoor places of their own); the colour check cannot tell two
same-coloured objects apart.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from scone_data.stages.base import Batch, register_stage
from scone_data.stages.edit import flatten, is_large
from scone_data.stages.generated import EditRequest, EditStep, GeneratedCheck


@dataclass(frozen=True)
class ReposeText:
    """The prompt file's parts: the edit instruction, the caption, the scenes, and the scenes of large
    things (buildings, fixed structures, large vehicles: :func:`~scone_data.stages.edit.is_large`)."""

    prompt: str
    caption: str
    scenes: tuple[str, ...]
    large_scenes: tuple[str, ...]
    info: dict

    def scenes_for(self, label: str) -> tuple[str, ...]:
        """The scenes a subject of ``label`` may be shown in: a large thing's
        (:func:`~scone_data.stages.edit.is_large`) when the file has them, else the general ones."""
        if self.large_scenes and is_large(label):
            return self.large_scenes
        return self.scenes


def load_repose_text(version: str) -> ReposeText:
    """``prompts/repose.<version>.txt`` read into its parts (ValueError naming what is missing)."""
    from scone_data.stages.vlm import load_prompt

    p = load_prompt("repose", version)
    keys = ("prompt", "caption", "scene", "large_scene")
    parts: dict[str, list[str]] = {k: [] for k in keys}
    for line in p.text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in parts and val.strip():
            parts[key.strip()].append(val.strip())
    bad = [k for k in keys[:3] if not parts[k] or (k != "scene" and len(parts[k]) > 1)]
    if bad:
        raise ValueError(f"prompts/repose.{version}.txt: needs one prompt:, one caption: and scene: lines")
    for k in ("prompt", "caption"):
        if "{label}" not in parts[k][0] or "{scene}" not in parts[k][0]:
            raise ValueError(f"prompts/repose.{version}.txt: its {k} must name {{label}} and {{scene}}")
    return ReposeText(parts["prompt"][0], parts["caption"][0], tuple(parts["scene"]),
                      tuple(parts["large_scene"]), p.info())  # fmt: skip


def _draw(seed: int, image_id: str, n_scenes: int) -> tuple[int, int]:
    """(scene index, edit seed) for one photo: a hash of the step's seed and the photo's id."""
    d = hashlib.sha256(f"repose|{int(seed)}|{image_id}".encode()).digest()
    return int.from_bytes(d[0:4], "big") % n_scenes, int.from_bytes(d[4:8], "big") & 0x7FFFFFFF


def whole_view(crops: list, k: int, width: int, height: int) -> tuple[int, float, float]:
    """How whole subject ``k`` is seen, its mask and the others' as
    :class:`~scone_data.stages.subjects.Crop`: (sides of the frame its mask touches, the share of its
    convex hull that other subjects' masks cover outside its own (what lies in front of it, or shows
    through it), the largest share of its mask inside another subject's mask (a part: an eye of a
    cat)). Everything is counted inside its own crop."""
    import cv2

    from scone_data.stages.subjects import border_sides, meet

    c = crops[k]
    m = np.pad(c.m, 1).astype(np.uint8)  # a zero border: the contour of a mask at its crop's edge closes
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = np.zeros(m.shape, np.uint8)
    cv2.fillPoly(hull, [cv2.convexHull(np.concatenate(contours))], 1)
    hull = hull[1:-1, 1:-1] > 0
    others = np.zeros(c.m.shape, bool)
    part = 0.0
    for j, o in enumerate(crops):
        if j == k or (hit := meet(c, o)) is None:
            continue
        (ys, xs), om = hit
        others[ys, xs] |= om
        part = max(part, float((om & c.m[ys, xs]).sum()) / c.area)
    covered = float((others & hull & ~c.m).sum()) / float(hull.sum())
    return border_sides(c.rect(), width, height), covered, part


def cutout_canvas(image: np.ndarray, mask: np.ndarray, side: int,
                  frac: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:  # fmt: skip
    """The subject of ``mask`` cut from ``image`` and centred on a ``side`` x ``side`` transparent canvas,
    its longer side ``frac`` of the canvas (Lanczos for the colours, bilinear for the mask's edge);
    returns (canvas (side, side, 4) uint8 RGBA, for :func:`~scone_data.stages.edit.flatten`, and the
    subject's box in the photo)."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ValueError("empty mask")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    w, h = x1 - x0, y1 - y0
    s = frac * side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    rgb = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1])).resize(size, Image.Resampling.LANCZOS)
    alpha = Image.fromarray((mask[y0:y1, x0:x1] > 0).astype(np.uint8) * 255).resize(
        size, Image.Resampling.BILINEAR
    )
    canvas = np.zeros((side, side, 4), np.uint8)
    ox, oy = (side - size[0]) // 2, (side - size[1]) // 2
    canvas[oy : oy + size[1], ox : ox + size[0], :3] = np.asarray(rgb)
    canvas[oy : oy + size[1], ox : ox + size[0], 3] = np.asarray(alpha)
    return canvas, (x0, y0, x1, y1)


@register_stage
@dataclass
class ReposeTargets(EditStep):
    """The ``repose`` bank step (module docstring); the model settings are :class:`ImageEdit`'s."""

    name: ClassVar[str] = "repose"
    type: ClassVar[str] = "repose"
    needs: ClassVar[tuple[str, ...]] = ("image", "image_id", "width", "height", "subjects")
    generates: ClassVar[str] = "repose"

    prompt_version: str = "v1"  # prompts/repose.<version>.txt: instruction, caption, scenes
    canvas_side: int = 1024  # the edit's input and output side (a multiple of 16)
    subject_frac: float = 0.6  # the cut-out's longer side on the canvas
    background: list[int] = field(default_factory=lambda: [255, 255, 255])
    # the subject re-posed is the largest one seen whole: its mask touches at most max_border_sides sides
    # of the frame (a portrait cut by the bottom edge is whole as people see it; a cat's head cut on three
    # sides is not), other subjects cover at most max_occluded of its convex hull outside its mask (a
    # saucer under a cup is not), and at most max_part_share of it lies inside another subject (an eye)
    max_border_sides: int = 1
    max_occluded: float = 0.2
    max_part_share: float = 0.5

    def validate(self) -> list[str]:
        out = super().validate()
        try:
            load_repose_text(self.prompt_version)
        except (OSError, ValueError) as e:
            out.append(f"prompt_version: {e}")
        if int(self.canvas_side) < 16 or int(self.canvas_side) % 16:
            out.append(f"canvas_side: {self.canvas_side} must be a multiple of 16, at least 16")
        if not 0.1 <= float(self.subject_frac) <= 1.0:
            out.append(f"subject_frac: {self.subject_frac} must be in [0.1, 1]")
        if len(self.background) != 3 or any(not 0 <= int(v) <= 255 for v in self.background):
            out.append(f"background: {self.background!r} must be three values in 0..255")
        if not 0 <= int(self.max_border_sides) <= 4:
            out.append(f"max_border_sides: {self.max_border_sides} must be in 0..4")
        for f in ("max_occluded", "max_part_share"):
            if not 0 <= float(getattr(self, f)) <= 1:
                out.append(f"{f}: {getattr(self, f)} must be in [0, 1]")
        return out

    def pick(self, subjects: list[dict]) -> tuple[dict, np.ndarray] | None:
        """The subject to re-pose (see the settings above) and its mask, or None."""
        from scone_data.imageio import rle_to_mask
        from scone_data.stages.subjects import Crop

        subs = sorted((s for s in subjects or [] if isinstance(s, dict) and s.get("mask_rle")),
                      key=lambda s: (-float(s.get("area_frac") or 0.0), s["subject_id"]))  # fmt: skip
        masks = [rle_to_mask(s["mask_rle"]) > 0 for s in subs]
        crops = [Crop(m) for m in masks]
        for k, s in enumerate(subs):
            if not crops[k].area:
                continue
            h, w = masks[k].shape
            sides, covered, part = whole_view(crops, k, w, h)
            if (
                sides <= self.max_border_sides
                and covered <= self.max_occluded
                and part <= self.max_part_share
            ):
                return s, masks[k]
        return None

    def setup(self) -> None:
        super().setup()
        self._text = load_repose_text(self.prompt_version)

    def request(self, batch: Batch, i: int) -> EditRequest | None:
        got = self.pick(batch["subjects"][i])
        if got is None:
            return None  # no subject seen whole: the photo is not re-posed
        sub, mask = got
        label, text = sub["label"], self._text
        scenes = text.scenes_for(label)
        k, seed = _draw(self.seed, batch["image_id"][i], len(scenes))
        cutout, box = cutout_canvas(batch["image"][i], mask, int(self.canvas_side), float(self.subject_frac))
        gen = {"parent_image_id": batch["image_id"][i], "parent_subject_id": sub["subject_id"], "label": label,
               "scene": scenes[k], "cutout_box": list(box), "canvas_side": int(self.canvas_side),
               "subject_frac": float(self.subject_frac), **{f"repose_{k}": v for k, v in text.info.items()}}  # fmt: skip
        return EditRequest(
            flatten(cutout, tuple(int(v) for v in self.background)),
            text.prompt.format(label=label, scene=scenes[k]),
            seed,
            gen,
            {
                "caption": text.caption.format(label=label, scene=scenes[k]),
                "subject_tags": [label],
                "caption_provenance": None,
            },  # fmt: skip
        )


def masked_similarity(img_a: np.ndarray, sub_a: dict, img_b: np.ndarray, sub_b: dict) -> float:
    """Hue x saturation histogram intersection (0..1) of the pixels inside two subjects' masks."""
    from scone_data.imageio import rle_to_mask
    from scone_data.pairs.distractors import color_histogram

    ha = color_histogram(img_a, rle_to_mask(sub_a["mask_rle"]))
    hb = color_histogram(img_b, rle_to_mask(sub_b["mask_rle"]))
    return float(np.minimum(ha, hb).sum())


@register_stage
@dataclass
class ReposeCheck(GeneratedCheck):
    """The ``repose_check`` bank step (module docstring): keeps a re-posed image only where the second
    detect/segment pass found exactly one subject of the label, coloured like the photo's."""

    name: ClassVar[str] = "repose_check"
    type: ClassVar[str] = "repose_check"
    needs: ClassVar[tuple[str, ...]] = ("image", "subjects", "generation")
    checks: ClassVar[str] = "repose"

    min_similarity: float = 0.5  # as pairs.group_min_similarity: the same measure, the same floor

    def validate(self) -> list[str]:
        if 0 <= float(self.min_similarity) <= 1:
            return []
        return [f"min_similarity: {self.min_similarity} not in [0, 1]"]

    def judge(self, batch: Batch, i: int, j: int, g: dict) -> str:
        parent = next((s for s in batch["subjects"][j] if s["subject_id"] == g["parent_subject_id"]), None)
        if parent is None:
            return f"repose_no_original: {g['parent_subject_id']}"
        label = g["label"]
        found = [s for s in batch["subjects"][i] if s["label"] == label]
        # a dropped instance keeps its box, and planning keeps every target free of such instances
        dropped = [
            s
            for s in batch.get("subject_rejects", [None] * len(batch["status"]))[i] or []
            if s.get("label") == label
        ]
        if len(found) + len(dropped) != 1:
            why = f" ({len(dropped)} dropped by subjects)" if dropped else ""
            return f"repose_count: {len(found) + len(dropped)} != 1 {label}{why}"
        sim = masked_similarity(batch["image"][j], parent, batch["image"][i], found[0])
        if sim < self.min_similarity:
            return f"repose_unlike: {sim:.2f} < {self.min_similarity:.2f} {label}"
        return ""
