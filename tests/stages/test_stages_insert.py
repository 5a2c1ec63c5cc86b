"""The insert and insert_check bank steps: the tiny random-weight FLUX.1 Kontext edits real rows, the
edited photo becomes a generated row stored with its provenance, and insert_check judges it by the
subjects (hand-made here, so that both outcomes are exercised)."""

import numpy as np
import pytest

from scone_data.bank.records import split_of
from scone_data.bank.store import Bank, write_unit
from scone_data.imageio import decode_image, encode_png
from scone_data.stages.base import ADDED_BY
from scone_data.stages.insert import InsertCheck, InsertDistractors, check_insertion, child_id

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
