"""A pipeline's bank steps: the ``steps`` list, the old section form, overrides that name a step, and
building the stages with every problem listed at once.

  steps:
    - {type: decode, max_pixels: 40000000}
    - {type: grabcut, iterations: 4}        # or {type: sam, ...}; a {type: detect, ...} before it
    - {type: subjects, min_area_frac: 0.001}

Each ``type`` names a class of the one stage registry (:func:`scone_data.stages.stage_types`); the
other keys are its settings. The steps run in the listed order; each reads the columns it ``needs``
from the sources or an earlier step, which is checked before any work (so is that the bank gets the
columns it stores, and that a ``subjects`` step makes its subject records).

An override names a step by its type or its stage name: ``segment.iterations=2`` sets a setting,
``detect=null`` drops the step, ``steps=[...]`` replaces the list. Old pipeline files (``decode:``,
``detect:``, ``segment:``, ``subjects:`` sections, no ``steps``) are read as the same steps, in the
same order, with the same settings: the stages and so every config hash are those of before.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("scone_data")

LEGACY = ("decode", "detect", "segment", "subjects")
# what bank/store.py's unit_tables reads from the steps (the sources give uri, source, image_bytes)
BANK_NEEDS = ("image_id", "width", "height", "subjects", "subject_rejects")


def _types() -> dict[str, type]:
    from scone_data.stages import stage_types

    return stage_types()


def from_sections(cfg: dict[str, Any], problems: list[str]) -> list[dict[str, Any]]:
    """The steps the old sections meant (popped from ``cfg``): decode and subjects always; detect when
    set (an empty mapping too meant none); segment unless null, GrabCut unless its ``type`` says sam."""
    sec = {k: cfg.pop(k, None) for k in LEGACY}
    for k, v in sec.items():
        if v is not None and not isinstance(v, dict):
            problems.append(f"{k}: must be a mapping or null")
            sec[k] = {} if k in ("decode", "subjects") else None
        elif isinstance(v, dict) and "type" in v and (k != "segment" or v["type"] not in ("grabcut", "sam")):
            what = "is not one of grabcut, sam" if k == "segment" else "is not a setting of this section"
            problems.append(f"{k}.type: {v.pop('type')!r} {what}")
    steps = [{"type": "decode", **(sec["decode"] or {})}]
    if sec["detect"]:
        steps.append({"type": "detect", **sec["detect"]})
    if sec["segment"] is not None:
        steps.append({"type": "grabcut", **sec["segment"]})  # its own type (sam) replaces grabcut
    steps.append({"type": "subjects", **(sec["subjects"] or {})})
    return steps


def with_steps(cfg: dict[str, Any], over: dict[str, Any], path: str | Path | None, problems: list[str]):
    """``cfg`` (read from ``path``, or a base when None) with the overrides ``over`` applied and its
    ``steps`` list set: an old-form file's sections become its steps, with a one-line note."""
    from scone_data.runtime.config import SECTIONS, merge

    old_form = "steps" not in cfg and "steps" not in over
    # a key that is neither a section nor (in an old-form file) an old section names a step:
    # ``segment.iterations=2``, ``grabcut.iterations=2``, ``detect=null``
    first = {k: v for k, v in over.items() if k in SECTIONS or (old_form and k in LEGACY)}
    cfg = merge(cfg, first)
    if old_form:
        old = [k for k in LEGACY if k in cfg]
        cfg["steps"] = from_sections(cfg, problems)
        if old and path is not None:
            types = ", ".join(st["type"] for st in cfg["steps"])
            log.warning("%s: old form (%s sections), read as steps [%s]; README: Bank steps", path,
                        ", ".join(old), types)  # fmt: skip
    for k in LEGACY:
        if k in cfg:
            problems.append(f"{k}: an old-form section beside steps; give its settings to the step")
            del cfg[k]
    listed = check_list(cfg["steps"])
    problems += listed
    if not listed:
        cfg["steps"] = apply_overrides(
            cfg["steps"], {k: v for k, v in over.items() if k not in first}, problems
        )
        problems += check_list(cfg["steps"])  # every step dropped
    return cfg


def steps_of(cfg: dict[str, Any]) -> list:
    """``cfg["steps"]``, or the steps of an old-form config that was not read by ``load_config``."""
    if "steps" in cfg:
        return cfg["steps"]
    return from_sections(copy.deepcopy(cfg), [])


def step_names() -> set[str]:
    """Every name an override may give a step: the registered types and their stage names."""
    return {n for t, cls in _types().items() for n in (t, cls.name)}


def _names(step: Any) -> set[str]:
    kind = step.get("type") if isinstance(step, dict) else None
    cls = _types().get(kind) if isinstance(kind, str) else None
    return {kind, cls.name} if cls else ({kind} if isinstance(kind, str) else set())


def labels(steps: list) -> list[str]:
    """How problems name each step: its stage name (``segment``) where no other step has it, else its
    type where unique, else ``steps[i]`` (the names overrides accept, so a message shows the fix)."""
    out = []
    for i, st in enumerate(steps):
        kind = st.get("type") if isinstance(st, dict) else None
        cls = _types().get(kind) if isinstance(kind, str) else None
        label = f"steps[{i}]"
        for name in (cls.name, kind) if cls else ():
            if sum(name in _names(o) for o in steps) == 1:
                label = name
                break
        out.append(label)
    return out


def check_list(steps: Any) -> list[str]:
    """The problem with the list itself (not a non-empty list); its entries are checked when the
    stages are made, with every other setting."""
    if not isinstance(steps, list) or not steps:
        return ["steps: a non-empty list of steps ({type: ..., <settings>}) is required"]
    return []


def apply_overrides(steps: list, over: dict[str, Any], problems: list[str]) -> list:
    """``steps`` with overrides keyed by a step's type or stage name applied (a new list)."""
    from scone_data.runtime.config import merge

    steps = copy.deepcopy(steps)
    for key, val in over.items():
        hits = [i for i, st in enumerate(steps) if key in _names(st)]
        if len(hits) > 1:
            problems.append(f"{key}: names steps {hits}; set them in the pipeline file or with steps=[...]")
        elif not hits:
            if val is not None:  # dropping a step the pipeline does not have changes nothing
                from scone_data.runtime.config import SECTIONS

                problems.append(
                    f"{key}: unknown section (known: {', '.join(SECTIONS)}) and not a step of this "
                    f"pipeline (steps: {', '.join(labels(steps))})"
                )
        elif val is None:
            del steps[hits[0]]
        elif isinstance(val, dict):
            steps[hits[0]] = merge(steps[hits[0]], val)
        else:
            problems.append(f"{key}: a step's settings are a mapping (or null to drop it), got {val!r}")
    return steps


def make_stages(steps: list, problems: list[str]) -> list:
    """The configured stages, in order; every problem is appended (settings, order, missing steps)."""
    from scone_data.runtime.config import build_dataclass
    from scone_data.sources.base import COLUMNS
    from scone_data.stages.subjects import SubjectFilter

    listed = check_list(steps)
    if listed:
        problems.extend(listed)
        return []
    types, known = _types(), ", ".join(sorted(_types()))
    stages, classes = [], []
    for i, (st, label) in enumerate(zip(steps, labels(steps))):
        if not isinstance(st, dict):
            problems.append(f"steps[{i}]: must be a mapping with a type, got {st!r}")
            continue
        cls = types.get(st.get("type")) if isinstance(st.get("type"), str) else None
        if cls is None:
            problems.append(f"steps[{i}].type: {st.get('type')!r} is not a step type (known: {known})")
            continue
        settings = {k: v for k, v in st.items() if k != "type"}
        stages.append(build_dataclass(cls, label, settings, problems))
        classes.append((cls, label))
    if len(classes) < len(steps):  # the order around a step of no known type cannot be judged
        return stages
    have = set(COLUMNS)

    def added_by(col: str) -> str:
        adders = [t for t, c in sorted(types.items()) if col in c.adds]
        return f"{col}: added by {' or '.join(adders) or 'no step'}"

    adders: list[str] = []  # names of the earlier steps that append rows
    for (cls, label), stage in zip(classes, stages):
        missing = [c for c in cls.needs if c not in have]
        if missing:
            why = "; ".join(added_by(c) for c in missing)
            problems.append(f"{label}: reads {', '.join(missing)}, which no step before it adds ({why})")
        only = getattr(stage, "only_added_by", None)
        if only is not None and only not in adders:
            problems.append(
                f"{label}.only_added_by: {only!r} is not an earlier step that adds rows "
                f"(earlier: {', '.join(adders) or 'none'})"
            )
        if cls.adds_rows:
            adders.append(cls.name)
        have |= set(cls.adds)
    missing = [c for c in BANK_NEEDS if c not in have]
    if missing:
        why = "; ".join(added_by(c) for c in missing)
        problems.append(f"steps: the bank stores {', '.join(missing)}, which no step adds ({why})")
    if not any(issubclass(c, SubjectFilter) for c, _ in classes):
        problems.append("steps: a subjects step is required (it makes the bank's subject records)")
    return stages
