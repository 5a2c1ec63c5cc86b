"""The truth checker: reads a finished sample's instruction *text* back and judges it against the
rendered record, as a person would read it beside the pictures.

It never sees the planner's predicates. It finds each "... from image N" / "... in image N" mention in
the text, parses the noun phrase with its own small grammar (colour word, size word, ordinal, label,
position), and evaluates every word on the candidates the record says the reference shows (rendered
boxes, visible mask areas, colour shares): each word must be clearly true of the intended candidate
among *all* candidates of its label, and the whole phrase must fit no other candidate. It also checks
the text for slips and the target for instances the instruction names but the target should not show.

The build runs it on every rendered sample and does not write a sample that fails (counted under
``truth_<reason>``); ``scone-data audit`` runs it again on a finished output.
"""

from __future__ import annotations

import re

from scone_data.pairs.expressions import (
    COLOR_DOMINANT,
    COLOR_OTHER_MAX,
    POS_MARGIN_FRAC,
    SIZE_RATIO,
    is_person,
)
from scone_data.pairs.layout import TARGET_MAX_VISIBLE, visible_fraction

COLOR_WORDS = frozenset("black white gray grey brown beige red orange yellow green blue purple pink".split())
SIZE_WORDS = {"largest": "largest", "biggest": "largest", "smallest": "smallest"}
ORDINAL_WORDS = {"second": 2, "third": 3, "fourth": 4, "fifth": 5}
SIDES = {"left", "right", "top", "bottom"}
# An intended subject counts as whole in the target when this share of its box is inside the crop
# (box rounding at the crop's edge).
TARGET_MIN_WHOLE = 0.95

_MENTION = re.compile(r"\b(from|in) image (\d+)\b")
_THE = re.compile(r"\bthe ", re.I)
_ANY_IMAGE = re.compile(r"\bimage (\d+)\b")
_SLIPS = {
    "doubled_from": re.compile(r"\bfrom the (?:left|right|top|bottom) from image\b"),
    "promises_new_scene": re.compile(r"\b(?:new|natural|different) (?:photo|image|scene|picture|setting)\b"),
}
_PRONOUN = re.compile(r"\b(?:it|its|itself)\b")


def parse_mentions(text: str, labels: list[list[str]] | None = None) -> list[tuple[int, str | None]]:
    """``[(reference index from 0, noun phrase starting with "the " or None), ...]`` in text order; None
    where "image N" follows no noun phrase ("out of everything in image 1").

    The phrase is the longest "the ..." before the mention within its clause; with ``labels`` (the
    candidate labels of each reference), the longest that :func:`parse_phrase` understands, so that a
    scene sentence ("... in front of the flag beside the cup from image 1") gives "the cup"."""
    out: list[tuple[int, str | None]] = []
    start = 0
    for m in _MENTION.finditer(text):
        seg = text[start : m.start()]
        start = m.end()
        ref = int(m.group(2)) - 1
        # the phrase begins after the last clause break (punctuation or "and") before the mention
        seg = re.split(r"[.;:,!?]| and ", seg)[-1]
        starts = [t.start() for t in _THE.finditer(seg)]
        phrase = seg[starts[0] :].strip() if starts else None
        if labels is not None and 0 <= ref < len(labels):
            phrase = next(
                (seg[k:].strip() for k in starts if parse_phrase(seg[k:].strip(), labels[ref]) is not None),
                phrase,
            )
        out.append((ref, phrase))
    return out


def parse_phrase(phrase: str, labels: list[str]) -> tuple[str, list[tuple]] | None:
    """``(label, predicates)`` of ``"the <words>"`` given the labels the reference shows, or None when a
    word is not understood. Predicates as in :mod:`scone_data.pairs.expressions`."""
    words = phrase.lower().split()[1:]
    best = None
    for lb in sorted(set(labels), key=lambda s: -len(s.split())):
        lw = lb.lower().split()
        for i in range(len(words) - len(lw) + 1):
            if words[i : i + len(lw)] == lw:
                best = (lb, i, i + len(lw))
                break
        if best:
            break
    if best is None:
        return None
    label, i, j = best
    pre, post = words[:i], words[j:]
    preds: list[tuple] = []
    ordinal = None
    for w in pre:
        if w in COLOR_WORDS:
            preds.append(("color", "gray" if w == "grey" else w))
        elif w in SIZE_WORDS:
            preds.append(("size", SIZE_WORDS[w]))
        elif w in ORDINAL_WORDS:
            ordinal = ORDINAL_WORDS[w]
        else:
            return None
    if post == ["in", "the", "middle"] and ordinal is None:
        preds.append(("rank", "middle", 0))
    elif len(post) == 3 and post[1] == "the" and post[2] in SIDES:
        side, how = post[2], post[0]
        if ordinal is not None and how == "from":
            preds.append(("rank", side, ordinal))
        elif ordinal is None and how == ("on" if side in ("left", "right") else "at"):
            preds.append(("rank", side, 1))
        else:
            return None
    elif post or ordinal is not None:
        return None
    return label, preds


def _center(box, side: str) -> float:
    x0, y0, x1, y1 = box
    c = {"left": (x0 + x1) / 2, "right": -(x0 + x1) / 2, "top": (y0 + y1) / 2, "bottom": -(y0 + y1) / 2}
    return c[side]


def _share(cand: dict, name: str) -> float:
    return next((float(c["share"]) for c in cand.get("colors") or () if c["name"] == name), 0.0)


def _fits(pred: tuple, i: int, same: list[dict], margin: float) -> tuple[bool, bool]:
    """(clearly true of ``same[i]``, could be true of ``same[i]``) among ``same``."""
    kind = pred[0]
    me = same[i]
    others = [c for j, c in enumerate(same) if j != i]
    if kind == "rank":
        side, k = pred[1], pred[2]
        if side == "middle":
            if len(same) < 3 or len(same) % 2 == 0:
                return False, False
            side, k = "left", (len(same) + 1) // 2
        v = _center(me["box_xyxy"], side)
        before_clear = sum(1 for o in others if _center(o["box_xyxy"], side) < v - margin)
        before_maybe = sum(1 for o in others if _center(o["box_xyxy"], side) <= v + margin)
        return before_clear == before_maybe == k - 1, before_clear <= k - 1 <= before_maybe
    if kind == "size":
        a = float(me.get("area", 0.0))
        oa = [float(o.get("area", 0.0)) for o in others]
        if pred[1] == "largest":
            return all(a >= o * SIZE_RATIO for o in oa), not any(o > a * SIZE_RATIO for o in oa)
        return all(o >= a * SIZE_RATIO for o in oa), not any(o * SIZE_RATIO < a for o in oa)
    s = _share(me, pred[1])
    top = max(me.get("colors") or [{"name": None, "share": 0}], key=lambda c: c["share"])["name"]
    return s >= COLOR_DOMINANT and top == pred[1], s >= COLOR_OTHER_MAX


def check_reference(ref: dict, phrase: str) -> str | None:
    """Reason the phrase does not single out the reference's intended candidate, or None."""
    cands = ref["candidates"]
    intended = [c for c in cands if c["intended"]]
    if len(intended) != 1:
        return "intended_count"
    parsed = parse_phrase(phrase, [c["label"] for c in cands])
    if parsed is None:
        return "unparsed_expression"
    label, preds = parsed
    if label != intended[0]["label"]:
        return "wrong_label"
    if any(p[0] == "color" for p in preds) and is_person(label):
        return "color_on_person"
    same = [c for c in cands if c["label"] == label]
    me = same.index(intended[0])
    margin = POS_MARGIN_FRAC * max(ref["width"], ref["height"])
    fits = [[_fits(p, j, same, margin) for p in preds] for j in range(len(same))]
    if not all(clear for clear, _ in fits[me]):
        return "expression_false"
    if any(all(maybe for _, maybe in fits[j]) for j in range(len(same)) if j != me):
        return "expression_ambiguous"
    return None


# Pasted candidates whose tight boxes share more than this share of the smaller box read as one object
# on top of another: a tile that shows two things at once.
MAX_CANDIDATE_OVERLAP = 0.05


def _overlapping(cands: list[dict]) -> bool:
    boxes = [c["box_xyxy"] for c in cands]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if ix * iy > MAX_CANDIDATE_OVERLAP * max(small, 1e-9):
                return True
    return False


def check_target(record: dict, scene) -> list[str]:
    """Reasons the target breaks "show the named subjects, none of the other instances of their labels".

    ``scene``: every known instance in the target's source image, ``(subject_id or "", label, box)`` in
    source pixels (bank subjects, subject rejects with a box, annotations)."""
    t = record["target"]
    crop = t.get("crop_box")  # absent: the whole photo, which shows every instance whole
    intended = {b["subject_id"] for b in t["boxes"]}
    named = {b["label"] for b in t["boxes"]}
    out = []
    for sid, label, box in scene:
        if sid in intended:
            if crop and visible_fraction(box, crop) < TARGET_MIN_WHOLE:
                out.append("target_cuts_intended")
        elif label in named and (not crop or visible_fraction(box, crop) > TARGET_MAX_VISIBLE):
            out.append("target_shows_named_instance")
    return sorted(set(out))


def check_sample(record: dict, scene=(), max_copy_paste: float = 1.0) -> list[str]:
    """Every reason ``record`` is not true to a person's reading (empty: it passes)."""
    text = record["instruction"]
    refs = record["references"]
    out: list[str] = []
    mentions = parse_mentions(text, [[c["label"] for c in r["candidates"]] for r in refs])
    seen = [i for i, _ in mentions]
    if sorted(seen) != list(range(len(refs))) or len(_ANY_IMAGE.findall(text)) != len(refs):
        out.append("mention_count")
    for i, phrase in mentions:
        if phrase is None:
            if seen.count(i) == 1:
                out.append("unparsed_expression")
        elif 0 <= i < len(refs):
            why = check_reference(refs[i], phrase)
            if why:
                out.append(why)
    for name, rx in _SLIPS.items():
        if rx.search(text.lower()):
            out.append(name)
    if _PRONOUN.search(text.lower()) and any(is_person(b["label"]) for b in record["target"]["boxes"]):
        out.append("pronoun_for_person")
    for ref in refs:
        if ref["kind"] != "crop" and _overlapping(ref["candidates"]):
            out.append("candidates_overlap")
    out += check_target(record, scene)
    if any((r.get("copy_paste") or 0.0) > max_copy_paste for r in refs):
        out.append("copy_paste")
    return sorted(set(out))
