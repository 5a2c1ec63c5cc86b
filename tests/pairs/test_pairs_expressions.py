"""The referring-expression checker: an expression is accepted only when it selects exactly one candidate."""

import random

from scone_data.pairs import expressions as ex
from scone_data.pairs.bank import informative

WH = (500, 500)  # margin = POS_MARGIN_FRAC * 500 = 50 px


def cand(x, y, side=60, color="red", label="cup"):
    return ex.Cand(label, (x - side / 2, y - side / 2, x + side / 2, y + side / 2), float(side * side), color)


def test_left_needs_a_margin():
    clear = [cand(100, 250), cand(300, 250)]
    assert ex.select((("rank", "left", 1),), clear, "cup", WH) == [0]
    assert ex.select((("rank", "right", 1),), clear, "cup", WH) == [1]
    level = [cand(100, 250), cand(130, 100)]  # 30 px apart in x: neither is "the left one"
    assert ex.select((("rank", "left", 1),), level, "cup", WH) == [0, 1]
    assert ex.select((("rank", "top", 1),), level, "cup", WH) == [1]


def test_other_labels_do_not_compete():
    cands = [cand(300, 250), cand(100, 250, label="plate")]
    assert ex.select((("rank", "left", 1),), cands, "cup", WH) == [0]
    assert ex.select((), cands, "cup", WH) == [0]


def test_largest_and_smallest_need_a_ratio():
    cands = [cand(100, 250, side=100), cand(300, 250, side=60), cand(420, 250, side=55)]
    assert ex.select((("size", "largest"),), cands, "cup", WH) == [0]
    # 60 px vs 55 px is an area ratio of 1.19 < SIZE_RATIO: "the smallest" is ambiguous.
    assert ex.select((("size", "smallest"),), cands, "cup", WH) == [1, 2]


def test_ordinal_and_middle():
    cands = [cand(60, 250), cand(250, 250), cand(440, 250)]
    assert ex.select((("rank", "left", 2),), cands, "cup", WH) == [1]
    assert ex.select((("rank", "middle", 0),), cands, "cup", WH) == [1]
    assert ex.select((("rank", "right", 3),), cands, "cup", WH) == [0]
    crowded = [cand(60, 250), cand(90, 100), cand(440, 250)]
    assert ex.select((("rank", "left", 2),), crowded, "cup", WH) == [0, 1]
    assert ex.select((("rank", "middle", 0),), cands[:2], "cup", WH) == [0, 1]  # even count: no middle


def test_color_filters_before_position():
    cands = [cand(60, 250, color="blue"), cand(250, 250, color="red"), cand(440, 250, color="red")]
    assert ex.select((("color", "red"),), cands, "cup", WH) == [1, 2]
    assert ex.select((("color", "red"), ("rank", "left", 1)), cands, "cup", WH) == [1]
    assert ex.select((("color", "blue"),), cands, "cup", WH) == [0]


def test_unique_expressions_all_check_out_and_phrases_read_well():
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(2, 4)
        cands = [
            cand(
                rng.uniform(40, 460),
                rng.uniform(40, 460),
                rng.uniform(30, 90),
                rng.choice(["red", "blue", "gray"]),
            )
            for _ in range(n)
        ]
        t = rng.randrange(n)
        for e in ex.unique_expressions(cands, t, WH, informative):
            assert ex.select(e, cands, "cup", WH) == [t]
            assert "cup" in ex.phrase(e, "cup")
    assert ex.phrase((("rank", "left", 2),), "cup") == "the second cup from the left"
    assert ex.phrase((("color", "red"), ("rank", "left", 1)), "cup") == "the red cup on the left"
    assert ex.phrase((("size", "largest"),), "coin") == "the largest coin"


def test_identical_candidates_have_no_unique_expression():
    cands = [cand(250, 250), cand(250, 250)]
    assert ex.unique_expressions(cands, 0, WH, informative) == []
    assert ex.choose([], random.Random(0)) is None


def test_ordinals_from_top_and_bottom():
    # A vertical stack of three cups at one x: only vertical ranks can tell them apart.
    stack = [cand(250, 60), cand(250, 250), cand(250, 440)]
    assert ex.select((("rank", "top", 2),), stack, "cup", WH) == [1]
    assert ex.select((("rank", "bottom", 3),), stack, "cup", WH) == [0]
    assert ex.select((("rank", "left", 2),), stack, "cup", WH) == [0, 1, 2]  # level in x: ambiguous
    exprs = ex.unique_expressions(stack, 1, WH, informative)
    assert (("rank", "top", 2),) in exprs and (("rank", "bottom", 2),) in exprs
    assert ex.phrase((("rank", "top", 2),), "cup") == "the second cup from the top"
    assert ex.phrase((("rank", "bottom", 3),), "cup") == "the third cup from the bottom"
    crowded = [cand(250, 60), cand(100, 90), cand(250, 440)]  # 30 px apart in y: no clear second
    assert ex.select((("rank", "top", 2),), crowded, "cup", WH) == [0, 1]
