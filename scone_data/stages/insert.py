"""Scone's distractor insertion as two bank steps: ``insert`` (before detect) and ``insert_check``
(after subjects).

``insert`` (:class:`InsertDistractors`, an :class:`~scone_data.stages.generated.EditStep`): for each ok
row that names a label (:meth:`InsertDistractors.label_of`: a caption label its annotations have,
else the caption's first vocabulary label, as the detector reads captions, else its first
``subject_tags`` entry), the edit model is asked to insert candidates beside it, with a seed of its
own (:meth:`InsertDistractors.plan`):

- look-alikes, ``count`` of them, count drawn in [1, ``max_count``] (at most 3): "add another
  {label} to the {left|right} of the {label}" (``prompt``) for one, "add two more {labels} to the
  ..." (``prompt_many``, ``{labels}`` the plural) for more;
- with probability ``cross_prob``, one instance of **another category** instead: "add a cat to the
  right of the dog" (``cross_prompt``, "a"/"an" as the word sounds), the other label drawn from
  ``cross_labels`` less the labels the photo already shows (caption, tags, given subjects, its
  label); none left: look-alikes as above.

Side, seed, count, cross or not and the other label are drawn from separate bytes of one hash of
the row's ``image_id`` and the step's ``seed``, so they are the same whatever the executor or the
batch, and with ``max_count: 1``, ``cross_prob: 0`` (the defaults) as they were before either
existed. The edited image becomes a **new row** after the unit's rows: a generated group mate of the
photo (``image_id`` ``{id}-ins``, ``uri`` ``{uri}#insert``, the photo's source, license, caption and
tags, ``group_id`` the photo's group or else the photo's id, which the photo gets too: its split
does not change), its bytes PNG-encoded (lossless), its ``generation`` the edit's provenance (model,
weights digest, prompt, seed, steps, guidance, parent, ``label`` the photo's label, ``side``,
``count``, ``inserted_label``: ``label`` for look-alikes, the other label for a cross insertion).
It has no subjects yet: the detector and the segmenter find them like any photo's (its
``subject_tags`` are the photo's plus the label and the inserted label, so a detector without fixed
labels looks for both). Rows that name no label are left as they are.

``insert_check`` (:class:`InsertCheck`, :func:`check_insertion`): each generated row is compared with
its photo (same unit): it stays only if it holds exactly ``count`` more instances of the inserted
label than the photo kept, the photo kept its label, and every extra instance (one that no instance
of the photo overlaps best, boxes scaled to the generated image) has its box centre on the asked
side of the nearest original instance of the label. Else it is rejected (``insert_count: 1 != 2
dog``, ``insert_side: ...``, ``insert_no_original``, ``insert_parent_rejected``), a bank reject
record like any other. A generation record without ``count``/``inserted_label`` (a bank written
before them) reads as one look-alike. The photo is never rejected here.

Limits: one to three look-alikes, or one instance of one other category, per photo (not several
categories at once, not a mix of look-alikes and others); left or right only (not above, below,
behind, "on the sofa"); the other category is chosen from a fixed list less what the row names, not
by what fits the scene. The generated images are stored in the bank, so ``regen`` never edits.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from scone_data.pairs.instructions import plural
from scone_data.stages.base import Batch, register_stage
from scone_data.stages.edit import is_large
from scone_data.stages.generated import GENERATED, EditRequest, EditStep, GeneratedCheck, generated_id

SIDES = ("left", "right")


def child_id(image_id: str) -> str:
    """The generated image's id: ``{image_id}-ins`` (:func:`~scone_data.stages.generated.generated_id`)."""
    return generated_id(image_id, GENERATED["insertion"][0])


# COCO labels (the detector's default vocabulary, so it finds them) of small things that sit
# plausibly beside most subjects, indoors or out: pets, tableware, desk and shelf things, toys. Not
# people (a person inserted by an edit is a privacy and consent matter), not vehicles or furniture
# (too big to stand "beside a cup"), not food that only belongs on a plate.
CROSS_LABELS = ("cat", "dog", "cup", "bottle", "book", "vase", "potted plant", "teddy bear",
                "sports ball", "apple", "bowl", "backpack")  # fmt: skip
COUNT_WORDS = ("zero", "one", "two", "three")
MAX_COUNT = 3


def _digest(seed: int, image_id: str) -> bytes:
    """The sha256 every draw of one photo reads its own bytes of: byte 0 the side, bytes 1..4 the
    edit seed, byte 5 the count, byte 6 whether the insertion is cross-category, bytes 7..8 the
    other label (so a new draw never moves an old one)."""
    return hashlib.sha256(f"insert|{int(seed)}|{image_id}".encode()).digest()


def article(word: str) -> str:
    """The article before ``word`` by its sound, near enough for labels: "an apple", "an umbrella",
    "a cup", "a unicycle", "a one-way sign", "an hour"."""
    w = word.strip().lower()
    if w.startswith(("uni", "use", "usu", "eu", "one", "once")):
        return "a"
    return "an" if w[:1] in ("a", "e", "i", "o", "u") or w.startswith(("hour", "honest", "heir")) else "a"


def with_article(template: str, other: str) -> str:
    """``template`` with the article before ``{other}`` ("a {other}", "an {other}") matching ``other``."""

    def fix(m: re.Match) -> str:
        a = article(other)
        return (a.capitalize() if m.group(1)[0].isupper() else a) + " {other}"

    return re.sub(r"\b(an?|An?) \{other\}", fix, template)


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
class InsertDistractors(EditStep):
    """The ``insert`` bank step (module docstring): one to ``max_count`` look-alikes of the photo's
    label, or (``cross_prob``) one instance of a ``cross_labels`` label the photo does not show,
    beside it; the model settings are :class:`ImageEdit`'s."""

    name: ClassVar[str] = "insert"
    type: ClassVar[str] = "insert"
    needs: ClassVar[tuple[str, ...]] = ("image", "image_id", "width", "height")
    generates: ClassVar[str] = "insertion"

    prompt: str = "add another {label} to the {side} of the {label}"
    vocabularies: tuple[str, ...] = ("coco",)  # caption labels, as the detector's
    use_tags: bool = True  # no caption label: the first subject tag
    sides: list[str] = field(default_factory=lambda: list(SIDES))
    max_side: int | None = 1024  # the photo is shrunk to this longer side before the edit; null: as is
    max_count: int = 1  # look-alikes inserted per photo: a count drawn in [1, max_count] (at most 3)
    prompt_many: str = "add {count} more {labels} to the {side} of the {label}"  # count > 1
    cross_prob: float = 0.0  # share of photos that get one instance of another label instead
    cross_labels: list[str] = field(default_factory=lambda: list(CROSS_LABELS))
    cross_prompt: str = "add a {other} to the {side} of the {label}"  # "a {other}": "an" as it sounds

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
        if not isinstance(self.max_count, int) or not 1 <= self.max_count <= MAX_COUNT:
            out.append(f"max_count: {self.max_count!r} must be an integer in 1..{MAX_COUNT}")
        elif self.max_count > 1 and ("{side}" not in self.prompt_many or "{count}" not in self.prompt_many):
            out.append(f"prompt_many: {self.prompt_many!r} must name {{count}} and {{side}}")
        if not isinstance(self.cross_prob, (int, float)) or not 0.0 <= self.cross_prob <= 1.0:
            out.append(f"cross_prob: {self.cross_prob!r} must be in 0..1")
        elif self.cross_prob > 0:
            if not self.cross_labels or any(
                not isinstance(x, str) or not x.strip() for x in self.cross_labels
            ):
                out.append(f"cross_labels: {self.cross_labels!r}; a non-empty list of labels")
            if "{other}" not in self.cross_prompt or "{side}" not in self.cross_prompt:
                out.append(f"cross_prompt: {self.cross_prompt!r} must name {{other}} and {{side}}")
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

    def shown(
        self, label: str, caption: str | None, tags: list[str] | None, given: list[dict] | None
    ) -> set[str]:
        """The labels a photo already shows, as far as the row says: its caption's vocabulary labels,
        its tags' (as vocabulary labels when known), its given subjects' labels and ``label``."""
        out = {label, *(x.strip().lower() for x in self._matcher.match(caption) if x and x.strip())}
        out |= {str(s.get("label", "")).strip().lower() for s in given or [] if isinstance(s, dict)}
        for tag in tags or []:
            out |= {x.strip().lower() for x in self._matcher.match(tag) or [tag] if x and x.strip()}
        return out

    def plan(self, image_id: str, label: str, shown: set[str]) -> tuple[str, int, int, str, str]:
        """(side, edit seed, count, inserted label, prompt) for one photo, drawn from its digest: a
        cross-category insertion (one instance of a cross label the photo does not show) with
        probability ``cross_prob``, else ``count`` look-alikes of ``label``, count in [1, max_count]."""
        d = _digest(self.seed, image_id)
        side = self.sides[(d[0] % 2) % len(self.sides)]
        seed = int.from_bytes(d[1:5], "big") & 0x7FFFFFFF
        # nothing small beside a large thing: a teddy bear to the right of a pagoda is no scene
        if d[6] < self.cross_prob * 256 and not is_large(label):
            others = [
                x for x in dict.fromkeys(x.strip().lower() for x in self.cross_labels) if x not in shown
            ]
            if others:
                other = others[int.from_bytes(d[7:9], "big") % len(others)]
                prompt = with_article(self.cross_prompt, other).format(label=label, side=side, other=other)
                return side, seed, 1, other, prompt
        n = 1 + d[5] % max(1, int(self.max_count))
        if n == 1:
            return side, seed, 1, label, self.prompt.format(label=label, side=side)
        text = self.prompt_many.format(count=COUNT_WORDS[n], labels=plural(label), label=label, side=side)
        return side, seed, n, label, text

    def request(self, batch: Batch, i: int) -> EditRequest | None:
        n = len(batch["status"])
        caption = batch.get("caption", [None] * n)[i]
        tags = batch.get("subject_tags", [None] * n)[i]
        given = batch.get("subjects", [None] * n)[i]
        label = self.label_of(caption, tags, given)
        if label is None:
            return None  # nothing named to insert beside
        shown = self.shown(label, caption, tags, given) if self.cross_prob > 0 else {label}
        side, seed, count, other, prompt = self.plan(batch["image_id"][i], label, shown)
        photo = fit(batch["image"][i], self.max_side)
        gen = {"parent_image_id": batch["image_id"][i], "label": label, "side": side, "count": count,
               "inserted_label": other, "input_size": [int(photo.shape[0]), int(photo.shape[1])]}  # fmt: skip
        # the detector looks for the label and the inserted one (a detector without fixed labels reads tags)
        tags = list(dict.fromkeys([*(tags or []), label, other]))
        return EditRequest(photo, prompt, seed, gen, {"subject_tags": tags})


def _center_x(box) -> float:
    return (float(box[0]) + float(box[2])) / 2


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match(p: list, c: list) -> set[int]:
    """The indices of ``c`` that the boxes ``p`` take: each takes the box it overlaps best (greedy,
    best first; a pair that does not overlap still pairs, so min(len) boxes are taken)."""
    pairs = sorted(((_iou(a, b), i, j) for i, a in enumerate(p) for j, b in enumerate(c)), reverse=True)
    used_p, used_c = set(), set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_c:
            used_p.add(i)
            used_c.add(j)
    return used_c


def check_insertion(parent: list[dict], child: list[dict], label: str, side: str,
                    scale: tuple[float, float], *, count: int = 1, inserted: str | None = None) -> str:  # fmt: skip
    """The reject reason of a generated image ("" when it passes); ``parent``/``child``: the Subject
    records of the photo and of the generated image, ``scale``: (x, y) from the photo's pixels to
    the generated image's; ``label``: the photo's label the insertion stands beside, ``inserted``:
    the label inserted (``label`` when None: look-alikes), ``count``: how many were asked for.

    The generated image must hold the photo's instances of ``inserted`` plus ``count``; the extra
    ones (those no instance of the photo takes, by overlap) must each have their box centre on
    ``side`` of the nearest original ``label`` instance (the generated boxes the photo's take)."""
    inserted = inserted or label

    def boxes(subjects, lab, sc=(1.0, 1.0)):
        return [[v * sc[k % 2] for k, v in enumerate(s["box_xyxy"])] for s in subjects if s["label"] == lab]

    p = boxes(parent, label, scale)
    if not p:
        return f"insert_no_original: the photo kept no {label}"
    p_ins = p if inserted == label else boxes(parent, inserted, scale)
    c = boxes(child, inserted)
    if len(c) != len(p_ins) + count:
        return f"insert_count: {len(c)} != {len(p_ins) + count} {inserted}"
    kept = _match(p_ins, c)
    extra = [j for j in range(len(c)) if j not in kept]
    if inserted == label:
        orig = [c[j] for j in sorted(kept)]
    else:
        c_orig = boxes(child, label)
        orig = [c_orig[j] for j in sorted(_match(p, c_orig))]
        if not orig:
            return f"insert_no_original: the generated image kept no {label}"
    what = "the original" if inserted == label else f"the original {label}"
    for j in extra:
        ex = _center_x(c[j])
        ox = _center_x(min(orig, key=lambda b: abs(_center_x(b) - ex)))
        if (ex < ox) != (side == "left") or ex == ox:
            return f"insert_side: the new {inserted} at x={ex:.0f} is not {side} of {what} at x={ox:.0f}"
    return ""


@register_stage
@dataclass
class InsertCheck(GeneratedCheck):
    """The ``insert_check`` bank step (module docstring): keeps a generated image only where the
    detector and the segmenter found exactly the candidates the edit was asked for, where they were
    asked for (:func:`check_insertion`)."""

    name: ClassVar[str] = "insert_check"
    type: ClassVar[str] = "insert_check"
    needs: ClassVar[tuple[str, ...]] = ("subjects", "generation")
    checks: ClassVar[str] = "insertion"

    def judge(self, batch: Batch, i: int, j: int, g: dict) -> str:
        scale = (batch["width"][i] / batch["width"][j], batch["height"][i] / batch["height"][j])
        return check_insertion(batch["subjects"][j], batch["subjects"][i], g["label"], g["side"], scale,
                               count=int(g.get("count") or 1), inserted=g.get("inserted_label"))  # fmt: skip
