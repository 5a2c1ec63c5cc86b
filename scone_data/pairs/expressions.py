"""Referring expressions over the candidates of one reference, and the checker that they are unique.

An expression is a tuple of predicates read against the candidates that share the noun's label:

- ``("rank", axis, k)``: k-th from an end along ``axis`` in ``"left" | "right" | "top" | "bottom"``
  (k = 1 is "on the left" / "at the top", k = 2 "the second ... from the left" / "from the top");
  ``"middle"`` is the middle rank of an odd number (>= 3) of candidates from the left;
- ``("size", "largest" | "smallest")``;
- ``("color", name)``: a filter, applied before any rank or size predicate ("the red cup on the left"
  means the leftmost of the red cups).

:func:`select` returns every candidate an expression could mean: a candidate is kept unless another
is *clearly* before it (by :data:`POS_MARGIN_FRAC` of the reference's long side) or *clearly* larger (by
:data:`SIZE_RATIO`). An expression is usable only when :func:`select` returns exactly the intended one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Two candidates closer than this fraction of the reference's long side along an axis are "level":
# neither is "the left one". 10% of 512 px is ~51 px, plainly visible to a person and a model. The long
# side is used for both axes so that a wide, short crop does not get a tiny vertical margin.
POS_MARGIN_FRAC = 0.10
# "The largest" must be at least this many times the area of every other candidate.
SIZE_RATIO = 1.3
ORDINALS = {2: "second", 3: "third"}
# Ordinals past "third" are rare in human referring expressions and hard to read off an image.
MAX_ORDINAL = 3
# Ordinals ("the second cup from the top") are proposed along every axis: stacked subjects (shelves,
# towers, frames of a video) are told apart from the top or bottom as often as from the sides.
ORDINAL_AXES = ("left", "right", "top", "bottom")
# Combinations are drawn less often than single predicates: they are longer and rarer in use.
COMBO_WEIGHT = 0.5


@dataclass(frozen=True)
class Cand:
    """A candidate as the checker sees it: box (x0, y0, x1, y1) in reference pixels, mask area in
    reference pixels, basic colour name."""

    label: str
    box: tuple[float, float, float, float]
    area: float
    color: str


def _coord(c: Cand, axis: str) -> float:
    x0, y0, x1, y1 = c.box
    # Ranking "from the right" is ranking from the left of the mirrored coordinate, and so on.
    return {"left": (x0 + x1) / 2, "right": -(x0 + x1) / 2, "top": (y0 + y1) / 2, "bottom": -(y0 + y1) / 2}[
        axis
    ]


def _rank_select(cands: list[Cand], idx: list[int], axis: str, k: int, margin: float) -> list[int]:
    v = {i: _coord(cands[i], axis) for i in idx}
    out = []
    for i in idx:
        # Possible 0-based ranks of i: from the count of others clearly before it to the count of
        # others not clearly after it.
        lo = sum(1 for j in idx if j != i and v[j] < v[i] - margin)
        hi = sum(1 for j in idx if j != i and v[j] <= v[i] + margin)
        if lo <= k - 1 <= hi:
            out.append(i)
    return out


def _size_select(cands: list[Cand], idx: list[int], which: str) -> list[int]:
    a = {i: cands[i].area for i in idx}
    if which == "largest":
        return [i for i in idx if not any(a[j] > a[i] * SIZE_RATIO for j in idx if j != i)]
    return [i for i in idx if not any(a[j] * SIZE_RATIO < a[i] for j in idx if j != i)]


def select(
    expr: tuple, cands: list[Cand], label: str, ref_wh: tuple[int, int], slack: float = 0.0
) -> list[int]:
    """Indices of the candidates of ``label`` that ``expr`` could refer to (see module docstring).

    ``slack``: pixels by which each box edge may still move (the planner checks planned boxes, the
    renderer records the tight box of what it pasted); positional margins grow by twice this, so an
    expression accepted on planned boxes still holds on rendered ones.
    """
    idx = [i for i, c in enumerate(cands) if c.label == label]
    for pred in expr:
        if pred[0] == "color":
            idx = [i for i in idx if cands[i].color == pred[1]]
    for pred in expr:
        if pred[0] == "rank":
            axis, k = pred[1], pred[2]
            if axis == "middle":
                if len(idx) < 3 or len(idx) % 2 == 0:
                    return idx  # no single middle: ambiguous by definition
                axis, k = "left", (len(idx) + 1) // 2
            margin = POS_MARGIN_FRAC * max(ref_wh) + 2 * slack
            idx = _rank_select(cands, idx, axis, k, margin)
        elif pred[0] == "size":
            idx = _size_select(cands, idx, pred[1])
    return idx


def proposals(cands: list[Cand], target: int) -> list[tuple]:
    """Every expression the generator considers for ``cands[target]`` (unchecked)."""
    n = sum(1 for c in cands if c.label == cands[target].label)
    color = cands[target].color
    singles: list[tuple] = [(("rank", a, 1),) for a in ("left", "right", "top", "bottom")]
    singles += [(("size", "largest"),), (("size", "smallest"),)]
    if n >= 3:
        singles.append((("rank", "middle", 0),))
        singles += [(("rank", a, k),) for a in ORDINAL_AXES for k in range(2, min(n, MAX_ORDINAL) + 1)]
    combos: list[tuple] = []
    if color:
        singles.append((("color", color),))
        combos = [(("color", color), *e) for e in singles if e[0][0] != "color"]
    return singles + combos


def unique_expressions(
    cands: list[Cand], target: int, ref_wh: tuple[int, int], informative, slack: float = 0.0
) -> list[tuple]:
    """The proposals that select exactly ``cands[target]``; colour proposals only if ``informative(color)``."""
    out = []
    for e in proposals(cands, target):
        if any(p[0] == "color" and not informative(p[1]) for p in e):
            continue
        if select(e, cands, cands[target].label, ref_wh, slack) == [target]:
            out.append(e)
    return out


def choose(exprs: list[tuple], rng: random.Random) -> tuple | None:
    """One expression drawn with single predicates weighted above combinations; None if none."""
    if not exprs:
        return None
    weights = [1.0 if len(e) == 1 else COMBO_WEIGHT for e in exprs]
    return rng.choices(exprs, weights=weights, k=1)[0]


def phrase(expr: tuple, label: str) -> str:
    """English noun phrase: ``"the red cup on the left"``, ``"the second coin from the right"``."""
    color = next((p[1] for p in expr if p[0] == "color"), None)
    noun = f"{color} {label}" if color else label
    for p in expr:
        if p[0] == "size":
            return f"the {p[1]} {noun}"
        if p[0] == "rank":
            axis, k = p[1], p[2]
            if axis == "middle":
                return f"the {noun} in the middle"
            if k == 1:
                return (
                    f"the {noun} on the {axis}" if axis in ("left", "right") else f"the {noun} at the {axis}"
                )
            return f"the {ORDINALS[k]} {noun} from the {axis}"
    return f"the {noun}"
