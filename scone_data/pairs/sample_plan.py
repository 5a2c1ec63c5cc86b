"""The plan records: plain, frozen, picklable dataclasses shipped from the planner to render workers."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class PlacedCandidate:
    """One subject shown in a reference. ``src_box``: region cut from the source image (integer x0, y0,
    x1, y1, exclusive); ``box``: where it goes in the reference (float pixels, before any warp);
    ``area``: mask pixels in the reference; ``mask_size``: (height, width) of the source image."""

    subject_id: str
    label: str
    image_id: str
    mask_size: tuple[int, int]
    mask_counts: str
    src_box: tuple[int, int, int, int]
    box: tuple[float, float, float, float]
    area: float
    colors: tuple[tuple[str, float], ...]  # colour shares of the subject's eroded mask, largest first
    intended: bool
    flip: bool = False
    rotate_deg: float = 0.0
    perspective: tuple[float, ...] = ()


@dataclass(frozen=True)
class ReferencePlan:
    """One reference image. ``kind``: cutout | canvas | crop. ``background``: ``("plain", (r, g, b))``,
    ``("texture", (r, g, b))`` or ``("crop",)``. ``crop_box`` (source pixels) and ``crop_flip`` only for
    crops. ``source``: ``"self"`` | ``"group"``. ``jitter``: (brightness offset in [-1, 1] of 255, contrast factor, saturation factor)."""

    kind: str
    width: int
    height: int
    candidates: tuple[PlacedCandidate, ...]
    expression: str | None
    expression_spec: tuple = ()
    background: tuple = ("plain", (255, 255, 255))
    crop_image_id: str | None = None
    crop_box: tuple[int, int, int, int] | None = None
    crop_flip: bool = False
    jitter: tuple[float, float, float] = (0.0, 1.0, 1.0)
    erode_px: int = 0
    feather_px: float = 0.0
    # "self": the intended subject is cut from the target image; "group": from its match in another
    # image of the target's group (frames of one video), so no pixel of the target is in the reference.
    source: str = "self"


@dataclass(frozen=True)
class TargetBox:
    subject_id: str
    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the (resized) target's pixels
    ref_index: int


@dataclass(frozen=True)
class SamplePlan:
    """Everything needed to render one sample; plain, picklable data."""

    key: str
    task: str
    split: str
    image_id: str  # the target: source image of the intended subjects
    width: int  # target size after capping its long side
    height: int
    references: tuple[ReferencePlan, ...]
    target_boxes: tuple[TargetBox, ...]
    instruction: str
    seed: int
    # The target is this region (x0, y0, x1, y1, source pixels) of the source image, resized to width x
    # height; None: the whole image. A crop keeps every intended subject whole and leaves out other
    # instances of the labels the instruction names.
    target_crop: tuple[int, int, int, int] | None = None
    # Every known instance of a named label in the target's source image, intended or not:
    # (subject_id or "" for a rejected subject, label, box in source pixels). The text checker reads it.
    scene: tuple[tuple[str, str, tuple[float, ...]], ...] = ()
    # The caption the instruction is woven from (``{"text", "source"}``: the source's name), or None.
    caption: dict | None = None


def _tuples(v):
    """Lists as tuples, all the way down (what a plan's fields hold before JSON made them lists)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def plan_to_json(plan: SamplePlan) -> str:
    """A plan as one line of JSON: planning writes plans to files that shard workers read. The
    encoder writes tuples as lists and asks ``default`` only for the dataclasses (``asdict`` deep-copies
    every value first: ten times slower on plans)."""
    return json.dumps(plan, default=lambda o: o.__dict__, separators=(",", ":"), sort_keys=True)


def plan_from_json(text: str) -> SamplePlan:
    """The plan :func:`plan_to_json` wrote, equal to the original (tuples again, not lists). Plain JSON
    into known dataclasses: reading a plan file runs no code."""
    d = json.loads(text)
    refs = []
    for r in d.pop("references"):
        cands = tuple(
            PlacedCandidate(**{k: v if k == "subject_id" else _tuples(v) for k, v in c.items()})
            for c in r.pop("candidates")
        )
        refs.append(ReferencePlan(candidates=cands, **{k: _tuples(v) for k, v in r.items()}))
    boxes = tuple(TargetBox(**{k: _tuples(v) for k, v in t.items()}) for t in d.pop("target_boxes"))
    caption = d.pop("caption")
    return SamplePlan(
        references=tuple(refs),
        target_boxes=boxes,
        caption=caption,
        **{k: _tuples(v) for k, v in d.items()},
    )
