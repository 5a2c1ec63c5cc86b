"""Referring expressions over the candidates of one reference, read as a person reads them.

An expression is a tuple of predicates about the intended candidate. Each predicate is judged on its
own against *all* candidates that share the noun's label (no predicate filters the others first):

- ``("rank", axis, k)``: k-th from an end along ``axis`` in ``"left" | "right" | "top" | "bottom"``
  (k = 1 is "on the left" / "at the top": the leftmost / topmost of all; k = 2 "the second ... from the
  left": second of all); ``("rank", "middle", 0)``: the middle one of an odd number (>= 3) from the left;
- ``("size", "largest" | "smallest")``: the largest / smallest of all;
- ``("color", name)``: the colour clearly dominates this candidate and no other candidate of the label.

A predicate is *clearly true* of a candidate when no reading of the picture could make it false (ranks
need every other candidate :data:`POS_MARGIN_FRAC` of the long side away, sizes need :data:`SIZE_RATIO`,
colours :data:`COLOR_DOMINANT` of the mask); it *could hold* for a candidate when some reading makes
it true. An expression is usable only when every predicate is clearly true of the intended candidate
and no other candidate could satisfy all of them. The builder proposes single predicates only: under
these semantics each clearly true predicate already picks one candidate, so the shortest expression
always suffices. Colour words are never used for people (:func:`is_person`): on a person a colour
word reads as skin colour, and a dark suit named "black person" is both wrong and harmful.

The text checker (:mod:`scone_data.pairs.truth`) reads the final instruction back and applies the same
semantics with its own parser; this module only generates.
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
# A colour word names a candidate only when that colour covers at least this share of its (eroded)
# mask, i.e. it is what a person sees first (the bank's own ``attributes.color`` rule: at 0.5 a white
# espresso cup read "orange" from its crema) ...
COLOR_DOMINANT = 0.6
# ... and covers less than this share of every other candidate of the label: "the red cup" is not
# said when another cup is a quarter red.
COLOR_OTHER_MAX = 0.2
ORDINALS = {2: "second", 3: "third"}
# Ordinals past "third" are rare in human referring expressions and hard to read off an image.
MAX_ORDINAL = 3
# Ordinals ("the second cup from the top") are proposed along every axis: stacked subjects (shelves,
# towers, frames of a video) are told apart from the top or bottom as often as from the sides.
ORDINAL_AXES = ("left", "right", "top", "bottom")
# Nouns for people and bodies: never qualified by a colour word (see the module docstring).
PERSON_NOUNS = frozenset(
    "person people man men woman women child children kid kids boy boys girl girls baby babies "
    "player players lady ladies gentleman guy face head hand hands arm arms leg legs body skin "
    "astronaut pedestrian rider skier surfer".split()
)


def is_person(label: str) -> bool:
    """Whether ``label`` names a person or a body part (any of its words is a person noun)."""
    return any(w in PERSON_NOUNS for w in label.lower().split())


@dataclass(frozen=True)
class Cand:
    """A candidate as the expression logic sees it: box (x0, y0, x1, y1) in reference pixels, mask area
    in reference pixels, colour shares ``((name, share), ...)`` of its eroded mask (empty: unknown)."""

    label: str
    box: tuple[float, float, float, float]
    area: float
    colors: tuple[tuple[str, float], ...] = ()

    def share(self, name: str) -> float:
        return next((s for n, s in self.colors if n == name), 0.0)

    @property
    def top_color(self) -> str | None:
        return max(self.colors, key=lambda ns: ns[1])[0] if self.colors else None


def _coord(c: Cand, axis: str) -> float:
    x0, y0, x1, y1 = c.box
    # Ranking "from the right" is ranking from the left of the mirrored coordinate, and so on.
    return {"left": (x0 + x1) / 2, "right": -(x0 + x1) / 2, "top": (y0 + y1) / 2, "bottom": -(y0 + y1) / 2}[
        axis
    ]


def rank_range(cands: list[Cand], idx: list[int], i: int, axis: str, margin: float) -> tuple[int, int]:
    """0-based ranks ``i`` could have along ``axis`` among ``idx``: from the count of others clearly before
    it to the count of others not clearly after it."""
    v = {j: _coord(cands[j], axis) for j in idx}
    lo = sum(1 for j in idx if j != i and v[j] < v[i] - margin)
    hi = sum(1 for j in idx if j != i and v[j] <= v[i] + margin)
    return lo, hi


def _rank_k(pred: tuple, n: int) -> tuple[str, int] | None:
    axis, k = pred[1], pred[2]
    if axis == "middle":
        return ("left", (n + 1) // 2) if n >= 3 and n % 2 else None
    return axis, k


def judge(pred: tuple, cands: list[Cand], idx: list[int], i: int, margin: float) -> str:
    """``"true"`` (clearly true of ``cands[i]`` among ``idx``), ``"maybe"`` or ``"false"``."""
    kind = pred[0]
    if kind == "rank":
        ak = _rank_k(pred, len(idx))
        if ak is None:
            return "false"
        lo, hi = rank_range(cands, idx, i, ak[0], margin)
        k0 = ak[1] - 1
        return "true" if lo == hi == k0 else ("maybe" if lo <= k0 <= hi else "false")
    if kind == "size":
        a = cands[i].area
        others = [cands[j].area for j in idx if j != i]
        if pred[1] == "largest":
            if all(a >= o * SIZE_RATIO for o in others):
                return "true"
            return "maybe" if not any(o > a * SIZE_RATIO for o in others) else "false"
        if all(o >= a * SIZE_RATIO for o in others):
            return "true"
        return "maybe" if not any(o * SIZE_RATIO < a for o in others) else "false"
    if kind == "color":
        c = cands[i]
        if is_person(c.label):
            return "false"
        s = c.share(pred[1])
        if s >= COLOR_DOMINANT and c.top_color == pred[1]:
            return "true"
        return "maybe" if s >= COLOR_OTHER_MAX else "false"
    raise ValueError(f"unknown predicate {pred!r}")


def select(
    expr: tuple, cands: list[Cand], label: str, ref_wh: tuple[int, int], slack: float = 0.0
) -> list[int]:
    """Indices of the candidates of ``label`` for which every predicate of ``expr`` could hold.

    ``slack``: pixels by which each box edge may still move (the planner checks planned boxes, the
    renderer records the tight box of what it pasted); positional margins grow by twice this, so an
    expression accepted on planned boxes still holds on rendered ones.
    """
    idx = [i for i, c in enumerate(cands) if c.label == label]
    margin = POS_MARGIN_FRAC * max(ref_wh) + 2 * slack
    return [i for i in idx if all(judge(p, cands, idx, i, margin) != "false" for p in expr)]


def true_and_unique(
    expr: tuple, cands: list[Cand], target: int, ref_wh: tuple[int, int], slack: float = 0.0
) -> bool:
    """Every predicate clearly true of ``cands[target]`` and no other candidate could match them all."""
    label = cands[target].label
    idx = [i for i, c in enumerate(cands) if c.label == label]
    margin = POS_MARGIN_FRAC * max(ref_wh) + 2 * slack
    if not all(judge(p, cands, idx, target, margin) == "true" for p in expr):
        return False
    return select(expr, cands, label, ref_wh, slack) == [target]


def proposals(cands: list[Cand], target: int) -> list[tuple]:
    """Every single-predicate expression the generator considers for ``cands[target]`` (unchecked)."""
    n = sum(1 for c in cands if c.label == cands[target].label)
    singles: list[tuple] = [(("rank", a, 1),) for a in ("left", "right", "top", "bottom")]
    singles += [(("size", "largest"),), (("size", "smallest"),)]
    if n >= 3:
        singles.append((("rank", "middle", 0),))
        singles += [(("rank", a, k),) for a in ORDINAL_AXES for k in range(2, min(n, MAX_ORDINAL) + 1)]
    top = cands[target].top_color
    if top and not is_person(cands[target].label):
        singles.append((("color", top),))
    return singles


def unique_expressions(
    cands: list[Cand], target: int, ref_wh: tuple[int, int], slack: float = 0.0
) -> list[tuple]:
    """The proposals that are clearly true of ``cands[target]`` and of no other candidate."""
    return [e for e in proposals(cands, target) if true_and_unique(e, cands, target, ref_wh, slack)]


def choose(exprs: list[tuple], rng: random.Random) -> tuple | None:
    """One expression, drawn uniformly among the plainest that work: "on the left", "the largest", "the
    red cup", "in the middle" before ordinals ("the second ... from the top"); None if none."""
    plain = [e for e in exprs if not any(p[0] == "rank" and p[1] != "middle" and p[2] > 1 for p in e)]
    pool = plain or exprs
    return rng.choice(pool) if pool else None


# A lone subject (a composition cut-out) is named with a colour only above this share: the word tells no
# candidate apart there, so it is used only where nobody could disagree (on the demo at 0.6, a white cup
# full of coffee was "the orange cup" and a mostly star-field flag "the blue flag").
COLOR_ALONE = 0.8


def color_word(colors: tuple[tuple[str, float], ...], label: str) -> str | None:
    """The colour word a lone subject may be named with (composition: "the red mug"), or None."""
    c = Cand(label, (0, 0, 1, 1), 1.0, colors)
    top = c.top_color
    return top if top and not is_person(label) and c.share(top) >= COLOR_ALONE else None


def phrase(expr: tuple, label: str) -> str:
    """English noun phrase: ``"the red cup"``, ``"the cup on the left"``, ``"the second coin from the right"``."""
    for p in expr:
        if p[0] == "color":
            return f"the {p[1]} {label}"
        if p[0] == "size":
            return f"the {p[1]} {label}"
        if p[0] == "rank":
            axis, k = p[1], p[2]
            if axis == "middle":
                return f"the {label} in the middle"
            if k == 1:
                return (
                    f"the {label} on the {axis}"
                    if axis in ("left", "right")
                    else f"the {label} at the {axis}"
                )
            return f"the {ORDINALS[k]} {label} from the {axis}"
    return f"the {label}"
