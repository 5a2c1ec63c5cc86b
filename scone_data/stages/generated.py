"""What the generative bank steps share: the generated image as a new row, and its check.

A generative step (:class:`EditStep`: ``insert``, ``repose``) asks the edit model for one image per
photo (:meth:`EditStep.request`) and appends each as a **new row** after the unit's rows
(:func:`append_generated`): a group mate of its photo, ``image_id`` ``{id}-{suffix}``, ``uri``
``{uri}#{...}`` (:data:`GENERATED`, by ``generation.use``), the photo's columns otherwise, PNG bytes,
no subjects yet, ``generation`` its provenance. The detector and the segmenter then find its subjects
like any photo's, and a check step (:class:`GeneratedCheck`: ``insert_check``, ``repose_check``)
compares it with its photo in the same unit and rejects it with its reason, or keeps it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from scone_data.stages.base import ADDED_BY, OK, Batch, Stage, reject
from scone_data.stages.edit import ImageEdit
from scone_data.stages.model_stage import is_rgb_uint8

ID_MAX = 64  # source_image.v1.json's image_id pattern: ^[A-Za-z0-9_-]{1,64}$
# generation.use -> (the id's suffix, the uri's suffix) of a generated image
GENERATED = {"insertion": ("ins", "#insert"), "repose": ("rep", "#repose")}


def generated_id(image_id: str, suffix: str) -> str:
    """A generated image's id: ``{image_id}-{suffix}``; a long id is shortened by a hash of it."""
    out = f"{image_id}-{suffix}"
    if len(out) <= ID_MAX:
        return out
    h = hashlib.sha256(image_id.encode()).hexdigest()[:16]
    return f"{image_id[: ID_MAX - len(suffix) - 18]}-{h}-{suffix}"


def generated_use(uri: str) -> str | None:
    """The ``generation.use`` a uri's suffix names (a generated image's), or None for a photo."""
    return next((use for use, (_, suf) in GENERATED.items() if uri.endswith(suf)), None)


def append_generated(batch: Batch, i: int, step: str, use: str, img: np.ndarray, generation: dict,
                     **fields: Any) -> None:  # fmt: skip
    """Append ``img``, generated from row ``i`` by ``step``, as a new row (module docstring); ``fields``
    set further columns (caption, subject_tags, ...). Row ``i`` joins the group it names (its own id
    when it has none): a split hashes the group id or else the image id, so its split does not change.
    ``pos`` stays the photo's: the bank stores a generated image right after it."""
    from scone_data.imageio import encode_png

    id_suffix, uri_suffix = GENERATED[use]
    group = batch["group_id"][i] or batch["image_id"][i]
    batch["group_id"][i] = group
    m = len(batch["status"])
    h, w = img.shape[:2]
    row = {c: v[i] for c, v in batch.items()}
    row.update(
        image=img, image_bytes=encode_png(img), width=w, height=h,
        image_id=generated_id(row["image_id"], id_suffix), uri=row["uri"] + uri_suffix, group_id=group,
        subjects=[], subject_rejects=[], annotations=None, generation=generation, status=OK, reason="",
        rejected_by="", **{ADDED_BY: step}, **fields,
    )  # fmt: skip
    for c, v in row.items():
        batch.setdefault(c, [None] * m).append(v)


@dataclass(frozen=True)
class EditRequest:
    """What :meth:`EditStep.request` asks of the edit model for one photo, and what the new row gets:
    ``generation`` is added to the edit's provenance, ``fields`` are further columns."""

    image: np.ndarray
    prompt: str
    seed: int
    generation: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)


@dataclass
class EditStep(ImageEdit):
    """A bank step that edits each ok photo (not a generated row, an RGB image) it has a request for
    into a new row; subclasses set ``generates`` (their images' ``generation.use``) and write
    :meth:`request`. The model settings are :class:`ImageEdit`'s."""

    adds: ClassVar[dict[str, str]] = {"generation": "json", "group_id": "value"}
    adds_rows: ClassVar[bool] = True
    generates: ClassVar[str] = ""  # its images' generation.use (the manifest's generated account)

    def request(self, batch: Batch, i: int) -> EditRequest | None:  # pragma: no cover - abstract
        """The edit for photo ``i``, or None to leave it as it is."""
        raise NotImplementedError

    def process(self, batch: Batch) -> Batch:
        self._ensure()
        n = len(batch["status"])
        # every batch gets the columns, edited or not: on Ray each unit is a block, and blocks of one
        # dataset are best kept to one set of columns
        for col in ("group_id", "generation", ADDED_BY):
            batch.setdefault(col, [None] * n)
        todo = []
        for i in range(n):
            if batch[ADDED_BY][i] is not None or not is_rgb_uint8(batch["image"][i]):
                continue  # a generated row is not edited again; a bad image is the detector's to reject
            req = self.request(batch, i)
            if req is not None:
                todo.append((i, req))
        res = self.edit_many(self.generates, [r.image for _, r in todo], [r.prompt for _, r in todo],
                             [r.seed for _, r in todo])  # fmt: skip
        for (i, req), (img, prov) in zip(todo, res):
            append_generated(
                batch, i, self.name, self.generates, img, {**prov, **req.generation}, **req.fields
            )
        return batch


@dataclass
class GeneratedCheck(Stage):
    """A bank step that judges each generated image of use ``checks`` against its photo (the same
    unit): :meth:`judge` gives the reject reason, "" to keep it. A generated image whose photo was
    rejected before is rejected as ``{prefix}_parent_rejected: <id>``, the prefix its name less
    ``_check``. The photo is never rejected here."""

    checks: ClassVar[str] = ""  # the generation.use it judges

    def judge(self, batch: Batch, i: int, j: int, g: dict) -> str:  # pragma: no cover - abstract
        """Why generated row ``i`` (its ``generation`` ``g``) fails against its photo, row ``j``; ""."""
        raise NotImplementedError

    def process(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        gen = batch.get("generation", [None] * n)
        row_of = {batch["image_id"][i]: i for i in range(n) if gen[i] is None}
        prefix = self.name.removesuffix("_check")
        for i in range(n):
            g = gen[i]
            if not isinstance(g, dict) or g.get("use") != self.checks:
                continue
            j = row_of.get(g["parent_image_id"])
            why = (
                f"{prefix}_parent_rejected: {g['parent_image_id']}"
                if j is None
                else self.judge(batch, i, j, g)
            )
            if why:
                reject(batch, i, why)
        return batch
