"""Referring expressions read as a person reads them: every word true of the intended candidate among all
candidates of its label, each word on its own, and the whole fitting no other candidate."""

import random

from scone_data.pairs import expressions as ex

WH = (500, 500)  # margin = POS_MARGIN_FRAC * 500 = 50 px


def cand(x, y, side=60, color="red", label="cup", share=0.9):
    colors = ((color, share), ("gray", round(1 - share, 3))) if color else ()
    return ex.Cand(
        label, (x - side / 2, y - side / 2, x + side / 2, y + side / 2), float(side * side), colors
    )


def ok(expr, cands, t):
    return ex.true_and_unique(expr, cands, t, WH)


def test_left_needs_a_margin():
    clear = [cand(100, 250), cand(300, 250)]
    assert ex.select((("rank", "left", 1),), clear, "cup", WH) == [0]
    assert ex.select((("rank", "right", 1),), clear, "cup", WH) == [1]
    level = [cand(100, 250), cand(130, 100)]  # 30 px apart in x: neither is "the left one"
    assert ex.select((("rank", "left", 1),), level, "cup", WH) == [0, 1]
    assert not ok((("rank", "left", 1),), level, 0)
    assert ex.select((("rank", "top", 1),), level, "cup", WH) == [1]


def test_other_labels_do_not_compete():
    cands = [cand(300, 250), cand(100, 250, label="plate")]
    assert ex.select((("rank", "left", 1),), cands, "cup", WH) == [0]
    assert ex.select((), cands, "cup", WH) == [0]


def test_largest_and_smallest_need_a_ratio():
    cands = [cand(100, 250, side=100), cand(300, 250, side=60), cand(420, 250, side=55)]
    assert ok((("size", "largest"),), cands, 0)
    # 60 px vs 55 px is an area ratio of 1.19 < SIZE_RATIO: "the smallest" is ambiguous.
    assert ex.select((("size", "smallest"),), cands, "cup", WH) == [1, 2]
    assert not ok((("size", "smallest"),), cands, 2)


def test_ordinal_and_middle():
    cands = [cand(60, 250), cand(250, 250), cand(440, 250)]
    assert ok((("rank", "left", 2),), cands, 1)
    assert ok((("rank", "middle", 0),), cands, 1)
    assert ok((("rank", "right", 3),), cands, 0)
    crowded = [cand(60, 250), cand(90, 100), cand(440, 250)]
    assert ex.select((("rank", "left", 2),), crowded, "cup", WH) == [0, 1]
    assert ex.select((("rank", "middle", 0),), cands[:2], "cup", WH) == []  # even count: no middle


def test_colour_is_never_a_hidden_filter():
    """The issue's cases: "the red cup on the left" must not mean the leftmost of the red cups."""
    cands = [cand(60, 250, color="blue"), cand(250, 250, color="red"), cand(440, 250, color="red")]
    assert not ok((("color", "red"), ("rank", "left", 1)), cands, 1)  # the blue cup is the leftmost
    assert not ok((("color", "red"),), cands, 1)  # two red cups
    assert ok((("color", "blue"),), cands, 0)
    assert ok((("rank", "left", 1),), cands, 0)
    # "the smallest red person": no colour on people at all, and "smallest" of all of them
    people = [cand(100, 250, 90, label="person"), cand(350, 250, 60, label="person")]
    assert not ok((("color", "red"),), people, 1)
    assert all(p[0] != "color" for e in ex.proposals(people, 1) for p in e)
    assert ok((("size", "smallest"),), people, 1)


def test_colour_needs_dominance_here_and_absence_elsewhere():
    # intended cup only 40% red: not dominant
    assert not ok((("color", "red"),), [cand(100, 250, share=0.4), cand(300, 250, color="blue")], 0)
    # the other cup is 25% red: a person could call it red too
    other = ex.Cand("cup", (270, 220, 330, 280), 3600.0, (("blue", 0.75), ("red", 0.25)))
    assert not ok((("color", "red"),), [cand(100, 250), other], 0)
    assert ok((("color", "red"),), [cand(100, 250), cand(300, 250, color="blue")], 0)
    assert ex.color_word((("red", 0.85),), "mug") == "red"
    assert ex.color_word((("red", 0.7),), "mug") is None
    assert ex.color_word((("red", 0.8),), "person") is None
    assert ex.color_word((("red", 0.45), ("blue", 0.4)), "mug") is None
    assert ex.color_word((), "mug") is None


def test_every_generated_expression_is_true_and_unique():
    rng = random.Random(3)
    for _ in range(300):
        n = rng.randint(2, 5)
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
        for e in ex.unique_expressions(cands, t, WH):
            assert len(e) == 1  # single predicates: the shortest expression always suffices
            assert ex.select(e, cands, "cup", WH) == [t]
            for p in e:  # each word on its own, among all cups
                assert ex.judge(p, cands, list(range(n)), t, 50.0) == "true"
    assert ex.phrase((("rank", "left", 2),), "cup") == "the second cup from the left"
    assert ex.phrase((("color", "red"),), "cup") == "the red cup"
    assert ex.phrase((("size", "largest"),), "coin") == "the largest coin"


def test_choose_prefers_plain_words_over_ordinals():
    stack = [cand(250, 60), cand(250, 250), cand(250, 440)]
    exprs = ex.unique_expressions(stack, 2, WH)
    assert (("rank", "bottom", 1),) in exprs and (("rank", "top", 3),) in exprs
    for s in range(20):
        e = ex.choose(exprs, random.Random(s))
        assert not (e[0][0] == "rank" and e[0][2] > 1)


def test_identical_candidates_have_no_unique_expression():
    cands = [cand(250, 250), cand(250, 250)]
    assert ex.unique_expressions(cands, 0, WH) == []
    assert ex.choose([], random.Random(0)) is None


def test_ordinals_from_top_and_bottom():
    # A vertical stack of three cups at one x: only vertical ranks can tell them apart.
    stack = [cand(250, 60), cand(250, 250), cand(250, 440)]
    assert ex.select((("rank", "top", 2),), stack, "cup", WH) == [1]
    assert ex.select((("rank", "bottom", 3),), stack, "cup", WH) == [0]
    assert ex.select((("rank", "left", 2),), stack, "cup", WH) == [0, 1, 2]  # level in x: ambiguous
    exprs = ex.unique_expressions(stack, 1, WH)
    assert (("rank", "top", 2),) in exprs and (("rank", "bottom", 2),) in exprs
    assert ex.phrase((("rank", "top", 2),), "cup") == "the second cup from the top"
    assert ex.phrase((("rank", "bottom", 3),), "cup") == "the third cup from the bottom"
    crowded = [cand(250, 60), cand(100, 90), cand(250, 440)]  # 30 px apart in y: no clear second
    assert ex.select((("rank", "top", 2),), crowded, "cup", WH) == [0, 1]
