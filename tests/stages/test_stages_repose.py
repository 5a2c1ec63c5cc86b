"""The repose and repose_check bank steps, and ``only_added_by``: the tiny random-weight FLUX.1 Kontext
re-poses each photo's largest subject into a scene of the prompt file, the generated image becomes a
generated row stored with its provenance, a second pass of a step sees only those rows, and
repose_check judges them by subjects made by hand here (so that every outcome is exercised)."""

import numpy as np
import pytest

from scone_data.bank.store import Bank, write_unit
from scone_data.imageio import decode_image, encode_png, mask_to_rle, rle_to_mask
from scone_data.runtime.config import settings_hash
from scone_data.runtime.steps import make_stages
from scone_data.stages.base import ADDED_BY, Stage
from scone_data.stages.edit import flatten
from scone_data.stages.generated import generated_id
from scone_data.stages.repose import (
    ReposeCheck,
    ReposeTargets,
    cutout_canvas,
    load_repose_text,
    masked_similarity,
)
from scone_data.stages.subjects import SubjectFilter

TINY = dict(model="tiny", device="cpu", num_gpus=0, num_inference_steps=2, canvas_side=64, seed=3)
RED, BLUE = (200, 30, 30), (30, 60, 200)


def _subject(image_id, n, label, mask, image):
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return {
        "subject_id": f"{image_id}-{n:03d}", "image_id": image_id, "label": label,
        "box_xyxy": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
        "mask_rle": mask_to_rle(mask), "area_frac": float(mask.sum()) / (h * w),
    }  # fmt: skip


def _photo(seed, boxes_colors, h=60, w=80):
    """A grey noisy photo with filled rectangles; (image, [mask])."""
    img = np.random.default_rng(seed).integers(100, 140, (h, w, 3), dtype=np.uint8)
    masks = []
    for (x0, y0, x1, y1), rgb in boxes_colors:
        m = np.zeros((h, w), np.uint8)
        m[y0:y1, x0:x1] = 1
        img[m > 0] = rgb
        masks.append(m)
    return img, masks


def _batch():
    a, (ma_small, ma_big) = _photo(0, [((5, 5, 15, 15), BLUE), ((30, 10, 70, 50), RED)])
    b, (mb,) = _photo(1, [((10, 20, 30, 40), BLUE)])
    c, _ = _photo(2, [])
    subs = [
        [_subject("a", 0, "ball", ma_small, a), _subject("a", 1, "dog", ma_big, a)],
        [_subject("b", 0, "cup", mb, b)],
        [],
    ]
    return {
        "uri": ["mem://a", "mem://b", "mem://c"], "source": ["t"] * 3, "license": [None] * 3,
        "image_bytes": [encode_png(x) for x in (a, b, c)], "image": [a, b, c], "image_id": ["a", "b", "c"],
        "width": [80] * 3, "height": [60] * 3, "group_id": [None, "g", None],
        "caption": ["a dog and a ball", "a cup", None], "subject_tags": [None] * 3,
        "subjects": subs, "subject_rejects": [[], [], []], "pos": [0, 1, 2], "unit": [0, 0, 0],
        "status": ["ok", "ok", "rejected"], "reason": ["", "", "no_subjects"],
    }  # fmt: skip


@pytest.fixture(scope="module")
def reposed():
    return ReposeTargets(**TINY)(_batch())


def test_the_prompt_file_has_an_instruction_a_caption_and_scenes():
    text = load_repose_text("v1")
    assert len(text.scenes) >= 8 and len(set(text.scenes)) == len(text.scenes)
    assert text.prompt.format(label="glasses", scene="in a sunlit park").startswith(
        "Show the glasses of this picture in a sunlit park."
    )
    assert text.caption.format(label="person", scene="on a sandy beach") == "The person on a sandy beach."
    assert text.info["prompt"] == "repose" and len(text.info["prompt_sha256"]) == 16


def test_cutout_canvas_centres_the_masked_pixels_on_a_plain_canvas():
    img, (m,) = _photo(0, [((30, 10, 70, 50), RED)])
    rgba, box = cutout_canvas(img, m, 64, 0.5)
    canvas = flatten(rgba, (255, 255, 255))
    assert canvas.shape == (64, 64, 3) and box == (30, 10, 70, 50)
    red = np.all(canvas == RED, axis=-1)
    ys, xs = np.nonzero(red)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (16, 48, 16, 48)  # 40 px -> 32, centred
    assert np.all(canvas[:14] == 255) and np.all(canvas[:, :14] == 255)  # the photo's grey is gone
    with pytest.raises(ValueError, match="empty mask"):
        cutout_canvas(img, np.zeros_like(m), 64, 0.5)


def _mask(box, h=60, w=80):
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


def test_the_subject_re_posed_is_the_largest_seen_whole():
    img = np.zeros((60, 80, 3), np.uint8)
    rep = ReposeTargets(**TINY)

    def pick(*specs):
        subs = [_subject("p", n, label, _mask(box), img) for n, (label, box) in enumerate(specs)]
        got = rep.pick(subs)
        return None if got is None else got[0]["label"]

    assert pick(("ball", (5, 5, 15, 15)), ("dog", (30, 10, 70, 50))) == "dog"  # the largest
    # a cat cut by the frame on two sides is no whole cat; its eye is a part of it
    assert pick(("cat", (0, 0, 50, 40)), ("eye", (10, 10, 16, 16))) is None
    assert pick(("cat", (0, 0, 50, 40)), ("eye", (10, 10, 16, 16)), ("cup", (60, 40, 70, 50))) == "cup"
    # a portrait cut by the bottom edge only is whole as people see it
    assert pick(("person", (20, 10, 60, 60)), ("cup", (65, 5, 75, 15))) == "person"
    # a saucer whose middle a cup covers: the cup is in front, the saucer is not seen whole
    saucer = _mask((10, 10, 70, 50)) - _mask((25, 15, 55, 45))
    subs = [_subject("p", 0, "saucer", saucer, img), _subject("p", 1, "cup", _mask((25, 15, 55, 45)), img)]
    assert rep.pick(subs)[0]["label"] == "cup"
    assert ReposeTargets(**{**TINY, "max_occluded": 1.0}).pick(subs)[0]["label"] == "saucer"
    assert "max_border_sides: 5 must be in 0..4" in " ".join(
        ReposeTargets(**{**TINY, "max_border_sides": 5}).validate()
    )


def test_repose_appends_one_generated_target_per_photo_with_subjects(reposed):
    out = reposed
    assert out["image_id"] == ["a", "b", "c", "a-rep", "b-rep"]  # c was rejected before: left alone
    assert out[ADDED_BY] == [None, None, None, "repose", "repose"]
    assert out["status"] == ["ok", "ok", "rejected", "ok", "ok"]
    assert out["group_id"] == ["a", "g", None, "a", "g"]
    scenes = load_repose_text("v1").scenes
    for k, parent, sid, label in ((3, 0, "a-001", "dog"), (4, 1, "b-000", "cup")):
        g = out["generation"][k]
        assert g["use"] == "repose" and g["parent_image_id"] == out["image_id"][parent]
        assert g["parent_subject_id"] == sid and g["label"] == label and g["scene"] in scenes
        assert g["prompt"].startswith(f"Show the {label} of this picture {g['scene']}.")
        assert g["model"] == "edit_tiny" and g["steps"] == 2 and g["repose_prompt_version"] == "v1"
        assert out["caption"][k] == f"The {label} {g['scene']}." and out["subject_tags"][k] == [label]
        assert out["uri"][k] == out["uri"][parent] + "#repose" and out["subjects"][k] == []
        assert out["image"][k].shape == (64, 64, 3) and g["size"] == [64, 64]
        assert np.array_equal(decode_image(out["image_bytes"][k], 10**8), out["image"][k])
    assert out["generation"][3]["cutout_box"] == [30, 10, 70, 50]


def test_same_seed_same_target_whatever_the_batch(reposed):
    alone = {k: v[1:2] for k, v in _batch().items()}
    out = ReposeTargets(**TINY)(alone)
    assert out["image_id"] == ["b", "b-rep"]
    assert (
        out["image_bytes"][1] == reposed["image_bytes"][4]
        and out["generation"][1] == reposed["generation"][4]
    )
    other = ReposeTargets(**{**TINY, "seed": 4})(alone)["generation"][1]
    assert other["seed"] != reposed["generation"][4]["seed"]


def test_generated_ids_fit_the_schema():
    assert generated_id("demo-1", "rep") == "demo-1-rep"
    long = generated_id("x" * 64, "rep")
    assert len(long) == 64 and long.endswith("-rep") and long != generated_id("x" * 63 + "y", "rep")


class _Seen(Stage):
    """A plain stage that records the image ids it was given."""

    def process(self, batch):
        self.seen = list(batch["image_id"])
        return batch


def test_only_added_by_runs_a_step_on_those_rows_only(reposed):
    s = _Seen(only_added_by="repose")
    out = s({k: list(v) for k, v in reposed.items()})
    assert s.seen == ["a-rep", "b-rep"] and out["image_id"] == reposed["image_id"]
    everything = _Seen()
    everything({k: list(v) for k, v in reposed.items()})
    assert everything.seen == ["a", "b", "a-rep", "b-rep"]  # every ok row
    # unset, it is no setting at all: config hashes of existing pipelines are unchanged
    assert "only_added_by" not in SubjectFilter().settings()
    assert "only_added_by" in SubjectFilter(only_added_by="repose").settings()
    assert settings_hash(SubjectFilter()) != settings_hash(SubjectFilter(only_added_by="repose"))


def test_only_added_by_must_name_an_earlier_step_that_adds_rows():
    steps = [{"type": "decode"}, {"type": "grabcut"}, {"type": "subjects", "only_added_by": "repose"}]
    problems: list[str] = []
    make_stages(steps, problems)
    assert any("only_added_by: 'repose' is not an earlier step that adds rows" in p for p in problems), (
        problems
    )


def _judged(reposed, rgb=RED, extra=(), dropped=()):
    """repose_check on a copy of ``reposed`` whose first generated image holds a dog painted ``rgb``
    (plus ``extra`` subjects and ``dropped`` subject rejects) and whose second holds nothing."""
    batch = {k: list(v) for k, v in reposed.items()}
    batch["image"] = [x.copy() for x in batch["image"]]
    img = batch["image"][3]
    m = np.zeros(img.shape[:2], np.uint8)
    m[20:44, 8:40] = 1
    img[m > 0] = rgb
    batch["subjects"][3] = [_subject("a-rep", 0, "dog", m, img), *extra]
    batch["subject_rejects"][3] = list(dropped)
    batch["subjects"][4] = []
    return ReposeCheck()(batch)


def test_repose_check_keeps_one_instance_coloured_like_the_photo(reposed):
    ok = _judged(reposed)
    assert ok["status"][3] == "ok" and ok["status"][4] == "rejected"
    assert ok["reason"][4] == "repose_count: 0 != 1 cup" and ok["rejected_by"][4] == "repose_check"
    # the same shape painted blue: another dog, not the photo's red one
    why = _judged(reposed, BLUE)["reason"][3]
    assert why.startswith("repose_unlike: 0.") and why.endswith("< 0.50 dog"), why
    second = {**ok["subjects"][3][0], "subject_id": "a-rep-001"}
    assert _judged(reposed, extra=[second])["reason"][3] == "repose_count: 2 != 1 dog"
    drop = {"label": "dog", "reason": "too_small", "box_xyxy": [0, 0, 3, 3]}
    assert _judged(reposed, dropped=[drop])["reason"][3] == "repose_count: 2 != 1 dog (1 dropped by subjects)"
    gone = {k: list(v) for k, v in reposed.items()}
    gone["subjects"][0] = gone["subjects"][0][:1]  # the photo no longer has the re-posed subject
    assert _judged(gone)["reason"][3] == "repose_no_original: a-001"
    gone["status"][0], gone["reason"][0] = "rejected", "no_subjects"
    assert _judged(gone)["reason"][3] == "repose_parent_rejected: a"


def test_masked_similarity_reads_the_pixels_inside_the_masks():
    img, (m,) = _photo(0, [((30, 10, 70, 50), RED)])
    s = _subject("a", 0, "dog", m, img)
    assert masked_similarity(img, s, img, s) == pytest.approx(1.0)
    other = img.copy()
    other[rle_to_mask(s["mask_rle"]) > 0] = BLUE
    assert masked_similarity(img, s, other, s) < 0.1


def test_the_bank_stores_re_posed_targets_after_their_photo(reposed, tmp_path):
    batch = {k: list(v) for k, v in reposed.items()}
    batch["rejected_by"] = ["", "", "subjects", "", ""]
    batch["subjects"] = [[] for _ in batch["image_id"]]  # images are stored without subject records
    write_unit(tmp_path, 0, batch)
    bank = Bank(tmp_path)
    assert list(bank.images) == ["a", "a-rep", "b", "b-rep"]
    assert bank.images["a-rep"]["generation"] == batch["generation"][3]
    assert bank.images["a-rep"]["caption"] == batch["caption"][3]


def test_large_things_get_outdoor_scenes_of_their_own():
    text = load_repose_text("v1")
    assert text.scenes_for("pagoda") == text.large_scenes and "in a bright kitchen" in text.scenes_for("cup")
    assert text.scenes_for("clock tower") == text.large_scenes  # by its last word
    assert not set(text.large_scenes) & set(text.scenes)
    assert text.scenes_for("rocket") == text.large_scenes  # the truth photos' rocket, not in a kitchen
