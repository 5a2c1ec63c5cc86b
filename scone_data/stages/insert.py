"""Scone's distractor insertion as two bank steps: ``insert`` (before detect) and ``insert_check``
(after subjects).

``insert`` (:class:`InsertDistractors`, an :class:`~scone_data.stages.edit.ImageEdit`): for each ok
row that names a label (:meth:`InsertDistractors.label_of`: a caption label its annotations have,
else the caption's first vocabulary label, as the detector reads captions, else its first
``subject_tags`` entry), the edit model is asked "add another {label} to the
{left|right} of the {label}" with a seed of its own; side and seed are drawn from the row's
``image_id`` and the step's ``seed``, so they are the same whatever the executor. The edited image
becomes a **new row** after the unit's rows: a generated group mate of the photo (``image_id``
``{id}-ins``, ``uri`` ``{uri}#insert``, the photo's source, license, caption and tags, ``group_id`` the
photo's group or else the photo's id, which the photo gets too: its split does not change), its
bytes PNG-encoded (lossless), its ``generation`` the edit's provenance (model, weights digest,
prompt, seed, steps, guidance, parent, label, side). It has no subjects yet: the detector and the
segmenter find them like any photo's (its ``subject_tags`` are the photo's plus the wanted label, so a
detector without fixed labels looks for it). Rows that name no label are left as they are.

``insert_check`` (:class:`InsertCheck`): each generated row is compared with its photo (same unit):
it stays only if it holds exactly one more instance of the wanted label than the photo kept and
that extra instance (the one no instance of the photo overlaps best, boxes scaled to the generated
image) has its box centre on the asked side of the nearest original one. Else it is rejected
(``insert_count: 1 != 2 dog``, ``insert_side: ...``, ``insert_no_original``,
``insert_parent_rejected``), a bank reject record like any other. The photo is never rejected here.

Limits: one inserted look-alike per photo, of the same label (cross-category insertion is not
done), left or right only. The generated images are stored in the bank, so ``regen`` never edits.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from scone_data.stages.base import ADDED_BY, OK, Batch, Stage, register_stage, reject
from scone_data.stages.edit import ImageEdit
from scone_data.stages.model_stage import is_rgb_uint8

SIDES = ("left", "right")
ID_MAX = 64  # source_image.v1.json's image_id pattern: ^[A-Za-z0-9_-]{1,64}$


def child_id(image_id: str) -> str:
    """The generated image's id: ``{image_id}-ins``; a long id is shortened by a hash of it."""
    out = f"{image_id}-ins"
    if len(out) <= ID_MAX:
        return out
    h = hashlib.sha256(image_id.encode()).hexdigest()[:16]
    return f"{image_id[: ID_MAX - 21]}-{h}-ins"


def _draw(seed: int, image_id: str) -> tuple[int, int]:
    """(side index, edit seed) for one photo: a hash of the step's seed and the photo's id."""
    d = hashlib.sha256(f"insert|{int(seed)}|{image_id}".encode()).digest()
    return d[0] % 2, int.from_bytes(d[1:5], "big") & 0x7FFFFFFF


def fit(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """``img`` (H, W, 3) uint8 shrunk (Lanczos) so that its longer side is at most ``max_side``."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    from PIL import Image

    s = max_side / max(h, w)
    size = (max(16, round(w * s)), max(16, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


@register_stage
@dataclass
class InsertDistractors(ImageEdit):
    """The ``insert`` bank step (module docstring); the model settings are :class:`ImageEdit`'s."""

    name: ClassVar[str] = "insert"
    type: ClassVar[str] = "insert"
    needs: ClassVar[tuple[str, ...]] = ("image", "image_id", "width", "height")
    adds: ClassVar[dict[str, str]] = {"generation": "json", "group_id": "value"}
    adds_rows: ClassVar[bool] = True

    prompt: str = "add another {label} to the {side} of the {label}"
    vocabularies: tuple[str, ...] = ("coco",)  # caption labels, as the detector's
    use_tags: bool = True  # no caption label: the first subject tag
    sides: list[str] = field(default_factory=lambda: list(SIDES))
    max_side: int | None = 1024  # the photo is shrunk to this longer side before the edit; null: as is

    def validate(self) -> list[str]:
        from scone_data.models.vocab import VOCABULARIES

        out = super().validate()
        bad = [v for v in self.vocabularies if v not in VOCABULARIES]
        if bad or not self.vocabularies:
            out.append(f"vocabularies: {bad or 'empty'}; choose from {', '.join(VOCABULARIES)}")
        if not self.sides or any(s not in SIDES for s in self.sides):
            out.append(f"sides: {self.sides!r}; a non-empty list of {', '.join(SIDES)}")
        if "{label}" not in self.prompt or "{side}" not in self.prompt:
            out.append(f"prompt: {self.prompt!r} must name {{label}} and {{side}}")
        if self.max_side is not None and int(self.max_side) < 16:
            out.append(f"max_side: {self.max_side} must be >= 16 (or null)")
        return out

    def setup(self) -> None:
        from scone_data.models.vocab import PhraseMatcher

        super().setup()
        self._matcher = PhraseMatcher.from_names(list(self.vocabularies))

    def label_of(self, caption: str | None, tags: list[str] | None, given: list[dict] | None) -> str | None:
        """The label to insert, first found of: the caption's vocabulary labels that the row's given
        subjects (annotations) have; the given labels the caption names ("coins" names coin); the
        caption's vocabulary labels (as the detector reads captions); the first tag (as its
        vocabulary label when known)."""
        found = [x.strip().lower() for x in self._matcher.match(caption) if x and x.strip()]
        have = [str(s.get("label", "")).strip().lower() for s in given or [] if isinstance(s, dict)]
        words = set(re.findall(r"[a-z]+", (caption or "").lower()))
        named = [
            x for x in dict.fromkeys(have) if x and all(w in words or w + "s" in words for w in x.split())
        ]
        for x in [*(x for x in found if x in have), *named, *found]:
            return x
        for tag in (tags or []) if self.use_tags else []:
            for x in self._matcher.match(tag) or [tag]:
                if x and x.strip():
                    return x.strip().lower()
        return None

    def process(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        caption = batch.get("caption", [None] * n)
        tags = batch.get("subject_tags", [None] * n)
        # every batch gets the columns, edited or not: on Ray each unit is a block, and blocks of one
        # dataset are best kept to one set of columns
        for col in ("group_id", "generation", ADDED_BY):
            batch.setdefault(col, [None] * n)
        todo = []  # (row, label, side, seed, photo)
        for i in range(n):
            if batch.get(ADDED_BY, [None] * n)[i] is not None or not is_rgb_uint8(batch["image"][i]):
                continue  # a generated row is not edited again; a bad image is the detector's to reject
            label = self.label_of(caption[i], tags[i], batch.get("subjects", [None] * n)[i])
            if label is None:
                continue
            k, seed = _draw(self.seed, batch["image_id"][i])
            side = self.sides[k % len(self.sides)]
            todo.append((i, label, side, seed, fit(batch["image"][i], self.max_side)))
        prompts = [self.prompt.format(label=lab, side=side) for _, lab, side, _, _ in todo]
        res = self.insert([t[4] for t in todo], prompts, [t[3] for t in todo])
        from scone_data.imageio import encode_png

        for (i, label, side, _, photo), (img, prov) in zip(todo, res):
            group = batch["group_id"][i] or batch["image_id"][i]
            batch["group_id"][i] = group
            h, w = img.shape[:2]
            prov = {**prov, "parent_image_id": batch["image_id"][i], "label": label, "side": side,
                    "input_size": [int(photo.shape[0]), int(photo.shape[1])]}  # fmt: skip
            row = {c: v[i] for c, v in batch.items()}
            row.update(
                image=img, image_bytes=encode_png(img), width=w, height=h, image_id=child_id(row["image_id"]),
                uri=f"{row['uri']}#insert", group_id=group, subject_tags=list(dict.fromkeys([*(tags[i] or []), label])),
                subjects=[], subject_rejects=[], annotations=None, generation=prov, status=OK, reason="",
                rejected_by="", **{ADDED_BY: self.name},
            )  # fmt: skip
            for c in row:  # pos stays the photo's: the bank stores a generated image right after it
                batch.setdefault(c, [None] * n).append(row.get(c))
        return batch


def _center_x(box) -> float:
    return (float(box[0]) + float(box[2])) / 2


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check_insertion(parent: list[dict], child: list[dict], label: str, side: str,
                    scale: tuple[float, float]) -> str:  # fmt: skip
    """The reject reason of a generated image ("" when it passes); ``parent``/``child``: the Subject
    records of the photo and of the generated image, ``scale``: (x, y) from the photo's pixels to
    the generated image's."""
    p = [[v * scale[k % 2] for k, v in enumerate(s["box_xyxy"])] for s in parent if s["label"] == label]
    c = [list(s["box_xyxy"]) for s in child if s["label"] == label]
    if not p:
        return f"insert_no_original: the photo kept no {label}"
    if len(c) != len(p) + 1:
        return f"insert_count: {len(c)} != {len(p) + 1} {label}"
    # each original instance takes the generated image's box it overlaps best (greedy, best first)
    pairs = sorted(((_iou(a, b), i, j) for i, a in enumerate(p) for j, b in enumerate(c)), reverse=True)
    used_p, used_c = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_c:
            used_p.add(i)
            used_c.add(j)
    extra = next(j for j in range(len(c)) if j not in used_c)
    ex = _center_x(c[extra])
    orig = min((c[j] for j in used_c), key=lambda b: abs(_center_x(b) - ex))
    ox = _center_x(orig)
    if (ex < ox) != (side == "left") or ex == ox:
        return f"insert_side: the new {label} at x={ex:.0f} is not {side} of the original at x={ox:.0f}"
    return ""


@register_stage
@dataclass
class InsertCheck(Stage):
    """The ``insert_check`` bank step (module docstring): keeps a generated image only where the
    detector and the segmenter found the look-alike the edit was asked for."""

    name: ClassVar[str] = "insert_check"
    type: ClassVar[str] = "insert_check"
    needs: ClassVar[tuple[str, ...]] = ("subjects", "generation")

    def process(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        gen = batch.get("generation", [None] * n)
        row_of = {batch["image_id"][i]: i for i in range(n) if gen[i] is None}
        for i in range(n):
            g = gen[i]
            if not isinstance(g, dict) or g.get("use") != "insertion":
                continue
            j = row_of.get(g["parent_image_id"])
            if j is None:  # rejected before (only ok rows reach a step)
                reject(batch, i, f"insert_parent_rejected: {g['parent_image_id']}")
                continue
            scale = (batch["width"][i] / batch["width"][j], batch["height"][i] / batch["height"][j])
            why = check_insertion(batch["subjects"][j], batch["subjects"][i], g["label"], g["side"], scale)
            if why:
                reject(batch, i, why)
        return batch
