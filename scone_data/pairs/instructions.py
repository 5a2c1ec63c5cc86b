"""Instruction templates: several phrasings per task type; a Scone-style scene sentence woven from the
source caption where one holds (:mod:`scone_data.pairs.captions`).

A template gets ``{subjects}``: each subject named once by its reference ("the dog from image 1 and the
red mug from image 2"), ``{noun}`` (the label of a single intended subject) and ``{nouns}`` (its plural).
Rules every template keeps, because the target is a real photo (or a crop of one), not a generated scene:
it never promises a "new" photo or scene; it uses no pronoun for a subject ("it" is wrong for a person);
it mentions each reference exactly once, inside ``{subjects}``. Distinction templates say that the other
candidates are to be left out, since that is what the task teaches. The text checker
(:mod:`scone_data.pairs.truth`) reads every instruction back against these rules.
"""

from __future__ import annotations

import random
import re

from scone_data.pairs.captions import weave

TEMPLATES: dict[str, tuple[str, ...]] = {
    "composition_single": (
        "Generate an image of {subjects}.",
        "Create a photo featuring {subjects}.",
        "Show {subjects} in a photo.",
        "Make a realistic picture of {subjects}.",
        "A photograph of {subjects}.",
        "Produce a photo in which {subjects} appears.",
    ),
    "composition_multi": (
        "Generate an image containing {subjects}.",
        "Create one photo in which {subjects} appear together.",
        "Compose a scene with {subjects}.",
        "Make a realistic picture showing {subjects} together.",
        "Put {subjects} into one photo.",
        "A single photograph with {subjects}.",
    ),
    "distinction_single_cross": (
        "Generate an image of {subjects}; ignore the other things in the reference.",
        "Use only {subjects} and leave out everything else.",
        "Create a photo featuring {subjects} and nothing else from the reference.",
        "Show {subjects}, without the other things next to the {noun}.",
        "Make a picture of {subjects} alone.",
    ),
    "distinction_single_intra": (
        "Generate an image of {subjects}; leave out the other {nouns}.",
        "Use only {subjects}, not the other {nouns}.",
        "Create a photo featuring {subjects} and none of the other {nouns}.",
        "Find {subjects} and make a photo with just that {noun}.",
        "Of the {nouns} shown, take {subjects} only.",
    ),
    "distinction_multi_cross": (
        "Generate an image containing {subjects}; ignore everything else in the references.",
        "Compose a scene with {subjects}, taking nothing else from the references.",
        "Create one photo with {subjects}, leaving out the other things.",
        "Use only {subjects} and put them in one photo.",
    ),
    "distinction_multi_intra": (
        "Generate an image containing {subjects}; leave out the look-alikes.",
        "Each reference shows several similar subjects: use only {subjects} in one photo.",
        "Create one photo with {subjects} and none of the others.",
        "Pick {subjects}, not their look-alikes, and put them in one photo.",
    ),
}

_IRREGULAR = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "foot": "feet",
    "tooth": "teeth",
    "mouse": "mice",
    "goose": "geese",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
    "glasses": "glasses",
    "scissors": "scissors",
    "knife": "knives",
    "leaf": "leaves",
    "shelf": "shelves",
}


def plural(noun: str) -> str:
    """English plural of a label's last word: ``"coin" -> "coins"``, ``"potted plant" -> "potted plants"``."""
    *head, last = noun.split(" ")
    if last in _IRREGULAR:
        p = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        p = last + "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return " ".join([*head, p])


_POSITIONED = re.compile(r" (?:from|on|at) the (?:left|right|top|bottom)$| in the middle$")


def name_subject(phrase: str, ref_index: int) -> str:
    """``"the dog"``, 0 -> ``"the dog from image 1"``; a phrase that ends in a position says "in":
    ``"the second flag from the left"`` -> ``"the second flag from the left in image 1"``, ``"the cup
    at the top"`` -> ``"the cup at the top in image 1"`` (no doubled "from"). References count from 1."""
    joiner = "in" if _POSITIONED.search(phrase) else "from"
    return f"{phrase} {joiner} image {ref_index + 1}"


def join_names(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def instruction(
    task: str,
    names: list[str],
    labels: list[str],
    caption: str | None,
    rng: random.Random,
    cfg,
    other_labels: set[str] = frozenset(),
) -> tuple[str, str | None]:
    """``(text, why)`` for one sample: ``names`` from :func:`name_subject` and the intended labels, both
    in reference order; ``caption``: the target's own caption, or None (a cropped target: the caption
    describes the whole photo); ``other_labels``: labels of the candidates the references show and the
    instruction does not want. ``why``: None when no caption was tried, ``""`` when the text is woven
    from the caption (:func:`scone_data.pairs.captions.weave`), else the reason it could not be."""
    # Drawn whether or not there is a caption, so adding captions to a source keeps the other draws.
    use_caption = rng.random() < cfg.use_caption_prob
    why = None
    if caption and caption.strip() and use_caption:
        text, why = weave(caption, task, names, labels, other_labels, plural(labels[0]))
        if text is not None:
            return text, why
    template = rng.choice(TEMPLATES[task])
    return template.format(subjects=join_names(names), noun=labels[0], nouns=plural(labels[0])), why
