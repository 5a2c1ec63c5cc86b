"""Scone-style scene instructions woven from a source caption.

Scone's instructions describe the target scene and name each subject by its reference: "The man from
image 2 holds the red mug from image 1 in a coffee shop". Where the target's source photo has a caption
(COCO ``captions_*.json``, a folder ``.txt`` sidecar, a parquet/jsonl caption field, a tar's ``txt``)
and the target is that whole photo, :func:`weave` rewrites the caption so: each intended subject's
mention in the caption ("a man", "a white coffee cup") is replaced by the subject's name from its
reference ("the person on the left in image 2", "the cup from image 1"); the rest of the caption (the
scene, the action, what else the photo shows) stays as written. Distinction tasks get one more sentence
that says the other candidates are to be left out.

A caption is used only when the reading stays true; otherwise :func:`weave` returns ``(None, reason)``
and the builder falls back to a template (the reason is counted under ``caption_unused:<reason>``):

- ``no_mention`` / ``mentioned_twice``: each intended label must be mentioned exactly once (by its label
  or a vocabulary synonym: "man", "astronaut" -> person; "mug" is not a cup unless the vocabulary says
  so). Two intended subjects of one label cannot be told apart in the caption.
- ``plural`` / ``counted``: a plural mention or a count word ("two", "several", "another", "other")
  next to a named label says the photo has more of them than the instruction names.
- ``names_distractor``: the caption mentions the label of a candidate the references show but the
  instruction does not want: it would ask for what it tells the model to leave out.
- ``no_determiner`` / ``of_phrase`` / ``compound``: the mention's noun phrase cannot be cut out cleanly
  (no article within :data:`MAX_MODIFIERS` words before the noun; "a cup of coffee", whose "of" part
  would dangle; "a space shuttle model", where the word after the noun may continue the phrase: only a
  preposition, conjunction, relative pronoun or a verb-like word ending in -s/-ed/-ing may follow).
- ``text_slip``: the caption says "image" (read as a reference), "it"/"its" with a person named, or promises a new scene.
- ``too_long``: longer than :data:`MAX_CAPTION_CHARS`, mostly detail the references cannot supply.

No POS tagger: mentions are found by the vocabulary's longest match (:mod:`scone_data.models.vocab`),
and a mention's noun phrase is the nearest article before the noun and the words between them.
"""

from __future__ import annotations

import re
from functools import cache

from scone_data.models.vocab import _IRREGULAR, _plurals, load_vocabulary
from scone_data.pairs.expressions import is_person

# A caption longer than this is mostly detail the references cannot supply; it is left out.
MAX_CAPTION_CHARS = 300
# Words allowed between an article and the noun it belongs to ("a small white coffee cup").
MAX_MODIFIERS = 3
ARTICLES = frozenset("a an the one this that his her their".split())
COUNT_WORDS = frozenset(
    "two three four five six seven eight nine ten eleven twelve several many some few couple pair group "
    "groups crowd both multiple lots dozen dozens numerous various another other others".split()
)
# Words that end a noun phrase when walking back from its noun: a preposition, conjunction or verb
# between the article and the noun means the article belongs to something else.
_BREAKS = frozenset(
    "of and or with in on at to for by from near next under over behind beside between into onto "
    "is are was were has have holding sitting standing wearing while as".split()
)
# People are named by many nouns; the vocabularies list only some of them.
PERSON_WORDS = (
    "person man woman child kid boy girl baby lady gentleman guy human adult astronaut player "
    "pedestrian rider skier surfer skateboarder snowboarder officer worker chef tourist"
).split()
# Words that may follow a mention's noun: a preposition, conjunction, relative pronoun or verb. Any
# other word right after the noun may continue a compound ("a space shuttle model"): not cut.
_FOLLOW = _BREAKS | frozenset(
    "who which that about above across against along among around below beneath inside outside "
    "through toward towards up down out off over past sat stood ran lay lies can could will".split()
)
LEAVE_OUT = {
    "distinction_single_cross": "Take nothing else from the reference.",
    "distinction_multi_cross": "Take nothing else from the references.",
    "distinction_single_intra": "Leave out the other {nouns}.",
    "distinction_multi_intra": "Leave out the look-alikes.",
}
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")
_IMAGE = re.compile(r"\bimages?\b", re.I)
_PRONOUN = re.compile(r"\b(?:it|its|itself)\b", re.I)
_NEW_SCENE = re.compile(r"\b(?:new|natural|different) (?:photo|image|scene|picture|setting)\b", re.I)


@cache
def _vocabulary_table() -> dict[tuple[str, ...], tuple[str, bool]]:
    """Name tokens -> (label, plural) for every COCO and LVIS name and the person words (COCO first)."""
    table: dict[tuple[str, ...], tuple[str, bool]] = {}
    for w in PERSON_WORDS:
        for form in _plurals(w):
            table.setdefault((form,), ("person", form != w))
    for vocab in ("coco", "lvis"):
        for cat in load_vocabulary(vocab):
            for name in cat.names:
                toks = name.split()
                for form in sorted(_plurals(toks[-1])):
                    table.setdefault((*toks[:-1], form), (cat.label, form != toks[-1]))
    return table


def _table_for(labels: set[str]) -> tuple[dict[tuple[str, ...], tuple[str, bool]], int]:
    """The vocabulary table with the sample's own labels added first (a label the vocabularies lack,
    such as an annotation category "coin", is still found by its own name)."""
    table = dict(_vocabulary_table())
    for lb in labels:
        toks = lb.lower().split()
        for form in _plurals(toks[-1]) | ({_IRREGULAR[toks[-1]]} if toks[-1] in _IRREGULAR else set()):
            table[(*toks[:-1], form)] = (lb, form != toks[-1])
    return table, max(len(k) for k in table)


def _mentions(tokens: list[str], table, max_len: int) -> list[tuple[int, int, str, bool]]:
    """``(first token, end token, label, plural)`` of every vocabulary phrase, longest match first."""
    out, i = [], 0
    while i < len(tokens):
        for n in range(min(max_len, len(tokens) - i), 0, -1):
            hit = table.get(tuple(tokens[i : i + n]))
            if hit is not None:
                out.append((i, i + n, *hit))
                i += n
                break
        else:
            i += 1
    return out


def _norm(label: str) -> str:
    return "person" if is_person(label) else label


def weave(
    caption: str | None,
    task: str,
    names: list[str],
    labels: list[str],
    other_labels: set[str],
    nouns: str = "",
) -> tuple[str | None, str]:
    """``(instruction, "")`` woven from ``caption``, or ``(None, reason)`` (reasons: module docstring).

    ``names``: each intended subject's name with its reference ("the cup from image 1"); ``labels``:
    their labels, same order; ``other_labels``: labels of the candidates the references show that the
    instruction does not want; ``nouns``: the plural of the intended label (intra distinction)."""
    cap = (caption or "").strip().rstrip(".").strip()
    if not cap:
        return None, "no_caption"
    if len(cap) > MAX_CAPTION_CHARS:
        return None, "too_long"
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(cap)]
    tokens = [cap[a:b].lower() for a, b in spans]
    want = [_norm(lb) for lb in labels]
    if len(set(want)) != len(want):
        return None, "mentioned_twice"
    table, max_len = _table_for(set(labels) | other_labels)
    found = [(i, j, _norm(lb), pl) for i, j, lb, pl in _mentions(tokens, table, max_len)]
    unwanted = {_norm(lb) for lb in other_labels} - set(want)
    if any(lb in unwanted for _, _, lb, _ in found):
        return None, "names_distractor"
    cuts = []
    for lb, name in zip(want, names):
        mine = [m for m in found if m[2] == lb]
        if not mine:
            return None, "no_mention"
        if len(mine) > 1:
            return None, "mentioned_twice"
        i, j, _, pl = mine[0]
        if pl:
            return None, "plural"
        if j < len(tokens) and tokens[j] == "of":
            return None, "of_phrase"
        nxt = tokens[j] if j < len(tokens) and not cap[spans[j - 1][1] : spans[j][0]].strip() else None
        if nxt is not None and nxt not in _FOLLOW and not nxt.endswith(("s", "ed", "ing")):
            return None, "compound"
        before = tokens[max(0, i - MAX_MODIFIERS - 1) : i]
        if any(w in COUNT_WORDS for w in before):
            return None, "counted"
        start = None
        for k in range(i - 1, max(-1, i - MAX_MODIFIERS - 2), -1):
            if cap[spans[k][1] : spans[k + 1][0]].strip():
                break  # punctuation between: the article is not this noun's
            if tokens[k] in ARTICLES:
                start = k
                break
            if tokens[k] in _BREAKS:
                break  # a function word between: the article is not this noun's
        if start is None:
            return None, "no_determiner"
        cuts.append((spans[start][0], spans[j - 1][1], name))
    out, pos = [], 0
    for a, b, name in sorted(cuts):
        out += [cap[pos:a], name]
        pos = b
    text = "".join(out) + cap[pos:]
    text = text[0].upper() + text[1:] + "."
    if task in LEAVE_OUT:
        text += " " + LEAVE_OUT[task].format(nouns=nouns)
    if (
        len(_IMAGE.findall(text)) != len(names)
        or _NEW_SCENE.search(text)
        or (_PRONOUN.search(text) and "person" in want)
    ):
        return None, "text_slip"
    return text, ""
