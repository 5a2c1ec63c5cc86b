"""Instruction templates: several phrasings per task type, the source caption woven in when present.

A template gets ``{subjects}``: each subject named by its reference ("the dog from image 1 and the red
mug from image 2"), and, for captioned variants, ``{caption}``. Distinction templates also say that the
other things in the reference are to be left out, since that is what the task teaches.
"""

from __future__ import annotations

import random

TEMPLATES: dict[str, tuple[str, ...]] = {
    "composition_single": (
        "Generate an image of {subjects}.",
        "Create a photo featuring {subjects}.",
        "Show {subjects} in a natural scene.",
        "Make a realistic picture that contains {subjects}.",
    ),
    "composition_multi": (
        "Generate an image containing {subjects}.",
        "Create one photo in which {subjects} appear together.",
        "Compose a scene with {subjects}.",
        "Make a realistic picture showing {subjects} in the same place.",
    ),
    "distinction_single_cross": (
        "Generate an image of {subjects}; ignore the other objects in the reference.",
        "Out of everything in image 1, use only {subjects} and create a new photo of it.",
        "Create a photo featuring {subjects} and nothing else from the reference.",
        "Pick {subjects} and show it in a natural scene.",
    ),
    "distinction_single_intra": (
        "Generate an image of {subjects}; leave out the other ones.",
        "Image 1 shows several similar objects: use only {subjects} and create a new photo of it.",
        "Create a photo featuring {subjects}, not the others in the reference.",
        "Find {subjects} and show it in a natural scene.",
    ),
    "distinction_multi_cross": (
        "Generate an image containing {subjects}; ignore everything else in the references.",
        "From each reference take only the named object and compose a scene with {subjects}.",
        "Create one photo with {subjects}, leaving out the other objects.",
    ),
    "distinction_multi_intra": (
        "Generate an image containing {subjects}; leave out the similar ones.",
        "Each reference shows several similar objects: use only {subjects} and compose one scene.",
        "Create one photo with {subjects}, not the other look-alikes.",
    ),
}

CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "composition": (
        "{caption_cap}. Use {subjects}.",
        "Generate an image that matches this description: {caption}. It must contain {subjects}.",
    ),
    "distinction": (
        "{caption_cap}. Use only {subjects} from the references.",
        "Generate an image that matches this description: {caption}. Take only {subjects}.",
    ),
}

# A caption longer than this is mostly detail the references cannot supply; it is left out.
MAX_CAPTION_CHARS = 300


def name_subject(phrase: str, ref_index: int) -> str:
    """``"the dog"``, 0 -> ``"the dog from image 1"`` (references are numbered from 1 for people)."""
    return f"{phrase} from image {ref_index + 1}"


def join_names(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def instruction(task: str, names: list[str], caption: str | None, rng: random.Random, cfg) -> str:
    """The instruction text for one sample; ``names`` from :func:`name_subject`, in reference order."""
    subjects = join_names(names)
    cap = (caption or "").strip().rstrip(".")
    # Drawn whether or not there is a caption, so adding captions to a source keeps the other draws.
    use_caption = rng.random() < cfg.use_caption_prob
    if cap and use_caption and len(cap) <= MAX_CAPTION_CHARS:
        family = "composition" if task.startswith("composition") else "distinction"
        t = rng.choice(CAPTION_TEMPLATES[family])
        return t.format(subjects=subjects, caption=cap, caption_cap=cap[0].upper() + cap[1:])
    return rng.choice(TEMPLATES[task]).format(subjects=subjects)
