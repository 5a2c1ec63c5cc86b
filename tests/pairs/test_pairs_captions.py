"""Scone-style scene instructions woven from captions, against texts written by hand."""

from __future__ import annotations

import pytest

from scone_data.pairs.captions import weave
from scone_data.pairs.truth import parse_mentions

# (caption, task, names, labels, other candidate labels) -> the instruction a person would write, by hand
WOVEN = [
    (
        "A man holding a white coffee cup in a cafe.",
        "composition_multi",
        ["the person from image 1", "the cup from image 2"],
        ["person", "cup"],
        set(),
        "The person from image 1 holding the cup from image 2 in a cafe.",
    ),
    (
        "An astronaut in an orange spacesuit smiles beside her helmet.",
        "distinction_single_cross",
        ["the person from image 1"],
        ["person"],
        {"dog"},
        "The person from image 1 in an orange spacesuit smiles beside her helmet. "
        "Take nothing else from the reference.",
    ),
    (
        "A quokka sits up on its hind legs on a sandy path.",
        "composition_single",
        ["the gray quokka from image 1"],
        ["quokka"],
        set(),
        "The gray quokka from image 1 sits up on its hind legs on a sandy path.",
    ),
    (
        "A close-up portrait of a man with dark curly hair",
        "distinction_single_intra",
        ["the person on the left in image 1"],
        ["person"],
        {"person"},
        "A close-up portrait of the person on the left in image 1 with dark curly hair. "
        "Leave out the other people.",
    ),
    (
        "A man in a dark coat looks through a camera mounted on a tripod in a field.",
        "distinction_multi_cross",
        ["the tripod from image 1", "the person from image 2"],
        ["tripod", "person"],
        {"bus", "bowl"},
        "The person from image 2 in a dark coat looks through a camera mounted on the tripod from image 1 "
        "in a field. Take nothing else from the references.",
    ),
    (
        "Two dogs play in the snow next to a small red ball",
        "distinction_multi_intra",
        ["the largest ball from image 1"],
        ["ball"],
        {"ball"},
        "Two dogs play in the snow next to the largest ball from image 1. Leave out the look-alikes.",
    ),
]

# captions a person would not turn into a true instruction for these subjects, and why
REFUSED = [
    ("Two men in suits and ties at a football match.", ["person"], set(), "plural"),
    ("A man next to another man on a bench.", ["person"], set(), "mentioned_twice"),
    ("A group of friends play cards around a table.", ["person"], set(), "no_mention"),
    ("A cup of espresso on a red saucer.", ["cup"], set(), "of_phrase"),
    ("An astronaut poses in front of a flag.", ["person"], {"flag"}, "names_distractor"),
    ("A flag and a space shuttle model behind a woman.", ["space shuttle"], set(), "compound"),
    ("A red plastic tote holding a book, a bar of soap and scissors.", ["soap"], set(), "no_determiner"),
    ("A boy and his dog; the boy throws a stick.", ["person"], set(), "mentioned_twice"),
    ("A woman holds it up to the image on the wall.", ["person"], set(), "text_slip"),
    ("A dog sleeps on a couch.", ["cat"], set(), "no_mention"),
    ("", ["cat"], set(), "no_caption"),
    ("A cat " + "sleeping " * 60, ["cat"], set(), "too_long"),
]


@pytest.mark.parametrize("caption,task,names,labels,others,expected", WOVEN)
def test_weave_reads_like_the_hand_written_text(caption, task, names, labels, others, expected):
    nouns = {"person": "people", "ball": "balls"}.get(labels[0], labels[0] + "s")
    text, why = weave(caption, task, names, labels, others, nouns)
    assert (text, why) == (expected, "")
    # every name is found again by the text checker as its reference's noun phrase
    found = dict(parse_mentions(text, [[lb] for lb in labels]))
    assert sorted(found) == list(range(len(names)))


@pytest.mark.parametrize("caption,labels,others,reason", REFUSED)
def test_weave_refuses_captions_that_would_not_read_true(caption, labels, others, reason):
    names = [f"the {lb} from image {i + 1}" for i, lb in enumerate(labels)]
    assert weave(caption, "composition_single", names, labels, others) == (None, reason)


def test_checker_finds_the_name_inside_a_scene_sentence():
    text = "A man stands in front of the flag beside the blue cup from image 1."
    assert parse_mentions(text, [["cup", "flag"]]) == [(0, "the blue cup")]
    # without the labels, the longest "the ..." phrase (the checker then reports it unparsed)
    assert parse_mentions(text) == [(0, "the flag beside the blue cup")]
