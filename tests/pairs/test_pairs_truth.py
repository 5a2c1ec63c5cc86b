"""The text checker, against instructions and pictures whose truth was written by hand.

Each case is a sentence a person reads beside a reference with known candidates; the expected verdict
is what a person says, written before running the checker."""

import pytest

from scone_data.pairs import layout
from scone_data.pairs.truth import check_sample, parse_mentions, parse_phrase


def cand(label, x0, x1, intended=False, y0=200, y1=300, colors=(), area=None):
    area = area if area is not None else (x1 - x0) * (y1 - y0)
    return {
        "subject_id": f"s{x0}",
        "label": label,
        "box_xyxy": [x0, y0, x1, y1],
        "intended": intended,
        "source_image_id": "img",
        "area": area,
        "colors": [{"name": n, "share": s} for n, s in colors],
    }


def record(text, refs, task="distinction_single_intra", boxes=None, crop=None):
    return {
        "task": task,
        "instruction": text,
        "references": [
            {"kind": "canvas", "width": 512, "height": 512, "candidates": c, "copy_paste": 0.3} for c in refs
        ],
        "target": {"crop_box": crop, "boxes": boxes or [{"subject_id": "t", "label": refs[0][0]["label"]}]},
    }


RED, BLUE = (("red", 0.8), ("gray", 0.2)), (("blue", 0.85),)
FLAGS = [cand("flag", 40, 120, colors=BLUE), cand("flag", 300, 380, True, colors=BLUE)]
PEOPLE = [
    cand("person", 20, 100, area=9000),
    cand("person", 200, 280, True, area=5000),
    cand("person", 400, 480),
]


@pytest.mark.parametrize(
    "text, refs, expected",
    [
        # the cases, read as a person reads them
        ("Use only the blue flag on the left from image 1.", [FLAGS], ["expression_false"]),
        ("Use only the flag on the right from image 1.", [FLAGS], []),
        ("Use only the blue flag from image 1.", [FLAGS], ["expression_ambiguous"]),
        ("Use only the red person in the middle from image 1.", [PEOPLE], ["color_on_person"]),
        ("Use only the person in the middle from image 1.", [PEOPLE], []),
        ("Use only the second person from the left in image 1.", [PEOPLE], []),
        ("Use only the third person from the left in image 1.", [PEOPLE], ["expression_false"]),
        ("Use only the smallest person from image 1.", [PEOPLE], []),
        ("Use only the largest person from image 1.", [PEOPLE], ["expression_false"]),
        ("Use only the second person from the left from image 1.", [PEOPLE], ["doubled_from"]),
        ("Use only the person from image 1.", [PEOPLE], ["expression_ambiguous"]),
        ("Use only the dog from image 1.", [PEOPLE], ["unparsed_expression"]),
        ("Use only the person on the left from image 1 and show it in a new scene.", [PEOPLE],
         ["expression_false", "promises_new_scene", "pronoun_for_person"]),
        ("Use only the person in the middle.", [PEOPLE], ["mention_count"]),
        ("Out of everything in image 1, use only the person in the middle from image 1.", [PEOPLE],
         ["mention_count"]),
        ("Use only the wobbly person from image 1.", [PEOPLE], ["unparsed_expression"]),
        # colour words: dominant here, absent elsewhere
        ("Use only the red cup from image 1.", [[cand("cup", 0, 80, True, colors=RED), cand("cup", 300, 380, colors=BLUE)]], []),
        ("Use only the red cup from image 1.",
         [[cand("cup", 0, 80, True, colors=RED), cand("cup", 300, 380, colors=(("blue", 0.7), ("red", 0.3)))]],
         ["expression_ambiguous"]),
        # two references, each mentioned once, each judged on its own candidates
        ("Compose a scene with the flag on the right from image 1 and the person in the middle from image 2.",
         [FLAGS, PEOPLE], []),
        ("Compose a scene with the flag on the right from image 1 and the person from image 2.",
         [FLAGS, PEOPLE], ["expression_ambiguous"]),
    ],
)  # fmt: skip
def test_hand_written_cases(text, refs, expected):
    assert check_sample(record(text, refs)) == sorted(expected)


def test_cross_reference_needs_the_label_alone_to_pick_one():
    refs = [[cand("cup", 0, 80, True), cand("plate", 200, 280), cand("spoon", 300, 380)]]
    assert check_sample(record("Use only the cup from image 1.", refs, "distinction_single_cross")) == []
    refs[0].append(cand("cup", 400, 480))
    assert check_sample(record("Use only the cup from image 1.", refs)) == ["expression_ambiguous"]


def test_overlapping_tiles_and_copy_paste():
    refs = [[cand("cup", 0, 100, True), cand("plate", 60, 160)]]
    assert check_sample(record("Use only the cup from image 1.", refs)) == ["candidates_overlap"]
    r = record("Use only the cup from image 1.", [[cand("cup", 0, 100, True)]])
    r["references"][0]["copy_paste"] = 0.97
    assert check_sample(r, max_copy_paste=0.9) == ["copy_paste"]
    assert check_sample(r, max_copy_paste=1.0) == []


def test_target_must_not_show_other_named_instances():
    scene = [
        ("t", "person", (100, 100, 200, 300)),
        ("", "person", (400, 100, 500, 300)),
        ("x", "car", (0, 0, 50, 50)),
    ]
    r = record("Use only the person in the middle from image 1.", [PEOPLE])
    r["target"]["boxes"] = [{"subject_id": "t", "label": "person"}]
    assert check_sample(r, scene) == ["target_shows_named_instance"]
    r["target"]["crop_box"] = [0, 0, 390, 480]  # the rejected person (no subject id) is left out
    assert check_sample(r, scene) == []
    r["target"]["crop_box"] = [150, 0, 390, 480]  # ... but now the intended person is cut
    assert check_sample(r, scene) == ["target_cuts_intended"]


def test_parser_reads_phrases_and_rejects_unknown_words():
    assert parse_mentions("Find the second coin from the left in image 1, then stop.") == [
        (0, "the second coin from the left")
    ]
    assert parse_phrase("the second coin from the left", ["coin"]) == ("coin", [("rank", "left", 2)])
    assert parse_phrase("the coin at the top", ["coin"]) == ("coin", [("rank", "top", 1)])
    assert parse_phrase("the coin on the top", ["coin"]) is None
    assert parse_phrase("the red space shuttle", ["space shuttle", "shuttle"]) == (
        "space shuttle",
        [("color", "red")],
    )


def test_target_crop_keeps_the_intended_whole_and_leaves_the_others_out():
    keep = [(100, 100, 200, 300)]
    avoid = [(300, 100, 400, 300), (0, 350, 80, 470)]
    crop = layout.plan_target_crop(keep, avoid, (640, 480), 0.1, 64, 2.5)
    assert crop[0] <= 100 and crop[1] <= 100 and crop[2] >= 200 and crop[3] >= 300
    for b in avoid:
        assert layout.visible_fraction(b, crop) <= layout.TARGET_MAX_VISIBLE
    w, h = crop[2] - crop[0], crop[3] - crop[1]
    assert max(w, h) / min(w, h) <= 2.5
    assert layout.plan_target_crop(keep, [], (640, 480), 0.1, 64, 2.5) is None
    assert layout.plan_target_crop(keep, [(150, 150, 250, 250)], (640, 480), 0.1, 64, 2.5) == (
        "target_instance_overlaps"
    )
    # the only clean crop is a sliver: refused
    assert layout.plan_target_crop(
        keep, [(90, 0, 99, 480), (201, 0, 210, 480)], (640, 480), 0.5, 64, 2.5
    ) == ("target_crop_too_small")
