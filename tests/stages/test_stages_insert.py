"""The insert and insert_check bank steps: the tiny random-weight FLUX.1 Kontext edits real rows, the
edited photo becomes a generated row stored with its provenance, and insert_check judges it by the
subjects (hand-made here, so that both outcomes are exercised)."""

import numpy as np
import pytest

from scone_data.bank.records import split_of
from scone_data.bank.store import Bank, write_unit
from scone_data.imageio import decode_image, encode_png
from scone_data.stages.base import ADDED_BY
from scone_data.stages.insert import CROSS_LABELS, InsertCheck, InsertDistractors, check_insertion, child_id

TINY = dict(model="tiny", device="cpu", num_gpus=0, num_inference_steps=2, max_side=64, seed=3)


def _img(seed, h=60, w=80):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _batch():
    imgs = [_img(0), _img(1), _img(2)]
    return {
        "uri": ["mem://a", "mem://b", "mem://c"],
        "source": ["t"] * 3,
        "license": [None] * 3,
        "image_bytes": [encode_png(im) for im in imgs],
        "image": imgs,
        "image_id": ["a", "b", "c"],
        "width": [80] * 3,
        "height": [60] * 3,
        "group_id": [None, "g", None],
        # a: a caption label; b: a given subject's label the caption names; c: nothing to insert
        "caption": ["a dog on grass", "two coins on a table", "a blurry photo"],
        "subject_tags": [None, None, None],
        "subjects": [[], [{"label": "coin", "box_xyxy": [1, 1, 9, 9], "det_source": "annotation"}], []],
        "subject_rejects": [[], [], []],
        "pos": [0, 1, 2],
        "unit": [0, 0, 0],
    }


@pytest.fixture(scope="module")
def inserted():
    return InsertDistractors(**TINY)(_batch())


def test_insert_appends_one_generated_group_mate_per_labelled_photo(inserted):
    out = inserted
    assert out["image_id"] == ["a", "b", "c", "a-ins", "b-ins"]  # c names no label: left alone
    assert out[ADDED_BY] == [None, None, None, "insert", "insert"]
    assert out["status"] == ["ok"] * 5
    # the photo joins its own group (or keeps its own), so its split does not change
    assert out["group_id"] == ["a", "g", None, "a", "g"]
    for cfg in (0.5, 0.3):
        assert split_of({"image_id": "a", "group_id": "a"}, cfg) == split_of({"image_id": "a"}, cfg)
    for k, parent in ((3, 0), (4, 1)):
        g = out["generation"][k]
        assert g["use"] == "insertion" and g["parent_image_id"] == out["image_id"][parent]
        assert g["prompt"] == f"add another {g['label']} to the {g['side']} of the {g['label']}"
        assert g["model"] == "edit_tiny" and g["steps"] == 2 and isinstance(g["seed"], int)
        assert out["uri"][k] == out["uri"][parent] + "#insert" and out["pos"][k] == out["pos"][parent]
        assert out["caption"][k] == out["caption"][parent] and out["subjects"][k] == []
        assert g["label"] in out["subject_tags"][k]  # the detector looks for the inserted label
        # lossless: the stored bytes are the edited pixels; the photo was shrunk to max_side first
        assert np.array_equal(decode_image(out["image_bytes"][k], 10**8), out["image"][k])
        assert out["image"][k].shape == (48, 64, 3) and g["input_size"] == [48, 64]
    assert [out["generation"][k]["label"] for k in (3, 4)] == ["dog", "coin"]
    assert out["generation"][:3] == [None] * 3


def test_same_seed_same_edit_whatever_the_batch(inserted):
    alone = _batch()
    alone = {k: v[1:2] for k, v in alone.items()}
    out = InsertDistractors(**TINY)(alone)
    assert out["image_id"] == ["b", "b-ins"]
    assert out["image_bytes"][1] == inserted["image_bytes"][4]
    assert out["generation"][1] == inserted["generation"][4]
    other = InsertDistractors(**{**TINY, "seed": 4})(alone)["generation"][1]
    assert other["seed"] != inserted["generation"][4]["seed"]


def test_child_ids_fit_the_schema():
    assert child_id("demo-1") == "demo-1-ins"
    long = child_id("x" * 64)
    assert len(long) == 64 and long.endswith("-ins") and long != child_id("x" * 63 + "y")


def _subj(label, box):
    return {"label": label, "box_xyxy": list(box)}


def test_check_insertion_counts_and_sides():
    parent = [_subj("dog", (40, 10, 60, 40)), _subj("cat", (0, 0, 5, 5))]
    left = [_subj("dog", (40, 10, 60, 40)), _subj("dog", (5, 10, 25, 40))]
    assert check_insertion(parent, left, "dog", "left", (1.0, 1.0)) == ""
    assert check_insertion(parent, left, "dog", "right", (1.0, 1.0)).startswith(
        "insert_side: the new dog at x=15"
    )
    assert check_insertion(parent, left[:1], "dog", "left", (1.0, 1.0)) == "insert_count: 1 != 2 dog"
    assert check_insertion(parent, left * 2, "dog", "left", (1.0, 1.0)) == "insert_count: 4 != 2 dog"
    assert check_insertion(parent, left, "bird", "left", (1.0, 1.0)).startswith("insert_no_original")
    # the photo's boxes are scaled to the generated image's size before matching
    half = [_subj("dog", (20, 5, 30, 20)), _subj("dog", (31, 5, 40, 20))]
    assert check_insertion(parent, half, "dog", "right", (0.5, 0.5)) == ""


def test_insert_check_rejects_generated_rows_only(inserted, tmp_path):
    batch = {k: list(v) for k, v in inserted.items()}
    a_box = [30, 10, 50, 40]
    batch["subjects"][0] = [_subj("dog", a_box)]
    g = batch["generation"][3]
    sx = 64 / 80
    new = [10, 10, 20, 30] if g["side"] == "left" else [55, 10, 63, 30]
    batch["subjects"][3] = [_subj("dog", [v * sx for v in a_box]), _subj("dog", new)]  # kept
    batch["subjects"][4] = [_subj("coin", [1, 1, 7, 7])]  # one coin, as in the photo: rejected
    out = InsertCheck()(batch)
    assert out["status"] == ["ok", "ok", "ok", "ok", "rejected"]
    assert out["reason"][4] == "insert_count: 1 != 2 coin" and out["rejected_by"][4] == "insert_check"
    # a generated row whose photo was rejected before is rejected with that reason
    batch["status"][1], batch["reason"][1] = "rejected", "no_subjects"
    assert InsertCheck()(batch)["reason"][4] == "insert_parent_rejected: b"


def test_the_bank_stores_generated_rows_with_their_provenance(inserted, tmp_path):
    batch = {k: list(v) for k, v in inserted.items()}
    batch["subjects"] = [[] for _ in batch["image_id"]]  # images are stored without subject records
    batch["rejected_by"] = [""] * 5
    write_unit(tmp_path, 0, batch)
    bank = Bank(tmp_path)
    assert list(bank.images) == ["a", "a-ins", "b", "b-ins", "c"]  # a generated row right after its photo
    assert bank.images["a-ins"]["generation"] == batch["generation"][3]
    assert bank.images["a"]["generation"] is None and bank.images["b-ins"]["group_id"] == "g"


# -- more than one look-alike, another category ------------------------------------------------------

# rows p0..p7 with a dog each; p1 names an apple, p2 a cat in its tags, p3 a given bowl
CAPTIONS = ["a dog on grass", "a dog beside an apple", *["a dog on grass"] * 6]


def _labelled(n=8):
    imgs = [_img(10 + k) for k in range(n)]
    return {
        "uri": [f"mem://p{k}" for k in range(n)],
        "source": ["t"] * n,
        "license": [None] * n,
        "image_bytes": [encode_png(im) for im in imgs],
        "image": imgs,
        "image_id": [f"p{k}" for k in range(n)],
        "width": [80] * n,
        "height": [60] * n,
        "group_id": [None] * n,
        "caption": CAPTIONS[:n],
        "subject_tags": [None, None, ["cat"], *[None] * (n - 3)][:n],
        "subjects": [[], [], [], [_subj("bowl", (1, 1, 9, 9))], *[[] for _ in range(n - 4)]][:n],
        "subject_rejects": [[] for _ in range(n)],
        "pos": list(range(n)),
        "unit": [0] * n,
    }


def _generated(out):
    return [k for k, a in enumerate(out[ADDED_BY]) if a == "insert"]


@pytest.fixture(scope="module")
def many():
    return InsertDistractors(**{**TINY, "max_count": 3})(_labelled())


def test_max_count_draws_one_to_three_look_alikes(many):
    gen = [many["generation"][k] for k in _generated(many)]
    assert [g["parent_image_id"] for g in gen] == [f"p{k}" for k in range(8)]
    counts = [g["count"] for g in gen]
    assert set(counts) <= {1, 2, 3} and len(set(counts)) > 1
    words = {2: "two", 3: "three"}
    for g in gen:
        assert g["label"] == g["inserted_label"] == "dog"
        want = (
            f"add another dog to the {g['side']} of the dog"
            if g["count"] == 1
            else f"add {words[g['count']]} more dogs to the {g['side']} of the dog"
        )
        assert g["prompt"] == want
    assert "add two more dogs to the left of the dog" in [g["prompt"] for g in gen]
    # the draw of side and seed is the one max_count 1 makes: only the count is new
    one = InsertDistractors(**TINY)(_labelled())
    assert [(g["side"], g["seed"]) for g in gen] == [
        (one["generation"][k]["side"], one["generation"][k]["seed"]) for k in _generated(one)
    ]
    assert all(one["generation"][k]["count"] == 1 for k in _generated(one))


@pytest.fixture(scope="module")
def cross():
    return InsertDistractors(**{**TINY, "cross_prob": 1.0})(_labelled())


def test_cross_category_inserts_one_label_the_photo_does_not_show(cross):
    gen = {cross["generation"][k]["parent_image_id"]: (k, cross["generation"][k]) for k in _generated(cross)}
    assert len(gen) == 8
    shown = {"p1": {"dog", "apple"}, "p2": {"dog", "cat"}, "p3": {"dog", "bowl"}}
    others = set()
    for pid, (k, g) in gen.items():
        other = g["inserted_label"]
        assert g["label"] == "dog" and g["count"] == 1 and other not in shown.get(pid, {"dog"})
        assert other in CROSS_LABELS
        a = "an" if other[0] in "aeiou" else "a"
        assert g["prompt"] == f"add {a} {other} to the {g['side']} of the dog"
        assert {"dog", other} <= set(cross["subject_tags"][k])  # the detector looks for both
        others.add(other)
    assert len(others) > 1
    assert gen["p0"][1]["prompt"] == "add a bottle to the left of the dog"
    assert gen["p3"][1]["prompt"] == "add a cat to the left of the dog"  # p2 shows a cat, p3 does not
    apple = InsertDistractors(**{**TINY, "cross_prob": 1.0, "cross_labels": ["apple"]})
    assert apple.plan("p0", "dog", {"dog"})[1:] == (
        488029971,
        1,
        "apple",
        "add an apple to the left of the dog",
    )


def test_cross_prompt_reads_a_cat_and_falls_back_when_all_are_shown():
    one = {k: v[7:8] for k, v in _labelled().items()}  # p7: right
    out = InsertDistractors(**{**TINY, "cross_prob": 1.0, "cross_labels": ["cat"]})(one)
    g = out["generation"][1]
    assert g["prompt"] == "add a cat to the right of the dog"
    assert (g["inserted_label"], g["count"], out["subject_tags"][1]) == ("cat", 1, ["dog", "cat"])
    # every cross label already in the photo (caption, tags, given subjects, its label): look-alike
    one["caption"] = ["a dog and a cat"]
    one["subject_tags"] = [["apple"]]
    one["subjects"] = [[_subj("bowl", (1, 1, 9, 9))]]
    out = InsertDistractors(**{**TINY, "cross_prob": 1.0, "cross_labels": ["cat", "Apple", "bowl", "dog"]})(
        one
    )
    g = out["generation"][1]
    assert g["inserted_label"] == "dog" and g["prompt"] == "add another dog to the right of the dog"


def test_articles():
    from scone_data.stages.insert import article, with_article

    assert [article(w) for w in ("apple", "umbrella", "cup", "unicycle", "hour", "egg")] == [
        "an", "an", "a", "a", "an", "an"
    ]  # fmt: skip
    assert with_article("A {other} beside a {label}", "orange") == "An {other} beside a {label}"


def test_the_draws_do_not_depend_on_the_batch():
    cfg = {**TINY, "max_count": 3, "cross_prob": 0.5}
    whole = InsertDistractors(**cfg)(_labelled())
    parts = [{k: v[a:b] for k, v in _labelled().items()} for a, b in ((0, 3), (3, 8))]
    split = [InsertDistractors(**cfg)(p) for p in parts]
    key = ("prompt", "seed", "side", "count", "inserted_label")

    def drawn(out):
        return [tuple(out["generation"][k][x] for x in key) for k in _generated(out)]

    assert drawn(whole) == drawn(split[0]) + drawn(split[1])
    assert {g[4] for g in drawn(whole)} - {"dog"} and "dog" in {g[4] for g in drawn(whole)}  # both kinds
    assert whole["image_bytes"][8:] == split[0]["image_bytes"][3:] + split[1]["image_bytes"][5:]


def test_settings_are_validated():
    assert InsertDistractors(**{**TINY, "max_count": 3, "cross_prob": 1.0}).validate() == []
    bad = InsertDistractors(**{**TINY, "max_count": 4, "cross_prob": 1.5}).validate()
    assert any(m.startswith("max_count") for m in bad) and any(m.startswith("cross_prob") for m in bad)
    assert any(m.startswith("max_count") for m in InsertDistractors(**{**TINY, "max_count": 0}).validate())
    bad = InsertDistractors(
        **{**TINY, "cross_prob": 0.5, "cross_labels": [], "cross_prompt": "add x"}
    ).validate()
    assert any(m.startswith("cross_labels") for m in bad) and any(m.startswith("cross_prompt") for m in bad)


def test_check_insertion_several_look_alikes():
    dog = (40, 10, 60, 40)
    parent = [_subj("dog", dog)]
    two_left = [_subj("dog", dog), _subj("dog", (5, 10, 15, 40)), _subj("dog", (20, 10, 35, 40))]
    assert check_insertion(parent, two_left, "dog", "left", (1, 1), count=2) == ""
    one_wrong = [_subj("dog", dog), _subj("dog", (5, 10, 15, 40)), _subj("dog", (65, 10, 80, 40))]
    assert check_insertion(parent, one_wrong, "dog", "left", (1, 1), count=2) == (
        "insert_side: the new dog at x=72 is not left of the original at x=50"
    )
    assert check_insertion(parent, two_left, "dog", "left", (1, 1), count=3) == "insert_count: 3 != 4 dog"
    assert check_insertion(parent, two_left[:2], "dog", "left", (1, 1), count=2) == "insert_count: 2 != 3 dog"
    # two originals: each extra is judged against the original nearest it
    parent2 = [_subj("dog", (10, 10, 20, 40)), _subj("dog", (60, 10, 70, 40))]
    near = [*parent2, _subj("dog", (0, 10, 8, 40)), _subj("dog", (48, 10, 56, 40))]
    assert check_insertion(parent2, near, "dog", "left", (1, 1), count=2) == ""
    assert check_insertion(parent2, near, "dog", "right", (1, 1), count=2).startswith(
        "insert_side: the new dog at x=4 is not right of the original at x=15"
    )


def test_check_insertion_another_category():
    dog = (40, 10, 60, 40)
    parent = [_subj("dog", dog)]
    cat_right = [_subj("dog", dog), _subj("cat", (65, 10, 80, 40))]
    assert check_insertion(parent, cat_right, "dog", "right", (1, 1), inserted="cat") == ""
    assert check_insertion(parent, cat_right, "dog", "left", (1, 1), inserted="cat") == (
        "insert_side: the new cat at x=72 is not left of the original dog at x=50"
    )
    assert check_insertion(parent, cat_right[:1], "dog", "right", (1, 1), inserted="cat") == (
        "insert_count: 0 != 1 cat"
    )
    two_cats = [*cat_right, _subj("cat", (70, 0, 80, 8))]
    assert (
        check_insertion(parent, two_cats, "dog", "right", (1, 1), inserted="cat")
        == "insert_count: 2 != 1 cat"
    )
    # the photo already holds a cat (left of the dog): it stays where it was, the new one is right
    parent_cat = [*parent, _subj("cat", (0, 10, 12, 40))]
    child = [_subj("dog", dog), _subj("cat", (1, 10, 12, 40)), _subj("cat", (65, 10, 80, 40))]
    assert check_insertion(parent_cat, child, "dog", "right", (1, 1), inserted="cat") == ""
    assert check_insertion(parent_cat, child[:2], "dog", "right", (1, 1), inserted="cat") == (
        "insert_count: 1 != 2 cat"
    )
    # were the photo's cat judged as the new one, it would fail the side: it is matched away
    assert check_insertion(parent_cat, child, "dog", "left", (1, 1), inserted="cat").startswith(
        "insert_side: the new cat at x=72"
    )
    # the photo must have kept its dog; the edit must have kept one to judge the side by
    assert check_insertion(parent_cat[1:], child, "dog", "right", (1, 1), inserted="cat").startswith(
        "insert_no_original: the photo kept no dog"
    )
    assert check_insertion(parent, cat_right[1:], "dog", "right", (1, 1), inserted="cat") == (
        "insert_no_original: the generated image kept no dog"
    )


def test_insert_check_reads_count_and_inserted_label_from_the_generation():
    gen = {"use": "insertion", "parent_image_id": "p", "label": "dog", "side": "right"}
    dog = [_subj("dog", (40, 10, 60, 40))]
    batch = {
        "image_id": ["p", "a", "b", "c"],
        "width": [80] * 4,
        "height": [60] * 4,
        "status": ["ok"] * 4,
        "reason": [""] * 4,
        "subjects": [
            dog,
            [*dog, _subj("cat", (65, 10, 80, 40))],
            [*dog, _subj("dog", (62, 10, 70, 40)), _subj("dog", (72, 10, 80, 40))],
            [*dog, _subj("dog", (62, 10, 70, 40))],
        ],
        "generation": [
            None,
            {**gen, "count": 1, "inserted_label": "cat"},
            {**gen, "count": 2, "inserted_label": "dog"},
            {**gen, "count": 2, "inserted_label": "dog"},
        ],
    }
    out = InsertCheck()(batch)
    assert out["status"] == ["ok", "ok", "ok", "rejected"] and out["reason"][3] == "insert_count: 2 != 3 dog"


def test_nothing_small_is_inserted_beside_a_large_thing():
    from scone_data.models.vocab import PhraseMatcher

    step = InsertDistractors(**{**TINY, "cross_prob": 1.0})
    step._matcher = PhraseMatcher.from_names(list(step.vocabularies))
    for iid in ("a", "b", "c", "d"):
        side, _, n, inserted, prompt = step.plan(iid, "pagoda", {"pagoda"})
        assert inserted == "pagoda" and prompt == f"add another pagoda to the {side} of the pagoda"
        assert step.plan(iid, "clock tower", {"clock tower"})[3] == "clock tower"
        assert step.plan(iid, "dog", {"dog"})[3] != "dog"  # a dog does get another category
