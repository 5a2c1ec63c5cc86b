"""GroundingDinoDetector on the tiny random-weight preset: row contract, prompts, equivalence, settings."""

import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("groundingdino")

from scone_data.models.grounding_dino import prepare_image  # noqa: E402
from scone_data.models.vocab import build_prompts, load_vocabulary  # noqa: E402
from scone_data.stages.detect import GroundingDinoDetector  # noqa: E402

SMALL = dict(
    model="tiny", seed=1, image_size=96, max_size=160, device="cpu", box_threshold=0.3, text_threshold=0.25
)


def _img(seed, h=90, w=120):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _batch(images, captions, subjects=None):
    n = len(images)
    return {"image": images, "width": [getattr(i, "shape", (0, 0))[1] for i in images],
            "height": [getattr(i, "shape", (0, 0))[0] for i in images], "caption": captions,
            "subjects": subjects or [[] for _ in range(n)]}  # fmt: skip


@pytest.fixture(scope="module")
def stage():
    return GroundingDinoDetector(labels=["dog", "red mug", "teddy bear"], **SMALL)


def test_rows_get_subjects_in_the_contract(stage):
    ann = {"label": "cat", "box_xyxy": [1, 2, 3, 4], "det_score": 1.0, "det_source": "annotation"}
    out = stage(_batch([_img(0), _img(1), "not an image", _img(2)], [None] * 4, [[], [], [], [ann]]))
    assert out["status"] == ["ok", "ok", "rejected", "ok"]
    assert out["reason"][2].startswith("bad_image")
    assert out["subjects"][3] == [ann]  # annotated rows are not detected
    dets = out["subjects"][0] + out["subjects"][1]
    assert dets, "thresholds are set so the random model finds something"
    for d in dets:
        assert set(d) == {"label", "box_xyxy", "det_score", "det_source", "phrase"}
        assert d["label"] in {"dog", "red mug", "teddy bear"} and d["det_source"] == "groundingdino"
        x0, y0, x1, y1 = d["box_xyxy"]
        assert 0 <= x0 <= x1 <= 120 and 0 <= y0 <= y1 <= 90 and 0.3 < d["det_score"] <= 1
    assert stage.stats.rejects["bad_image"] == 1


def test_same_boxes_as_upstream_predict_without_suppression():
    from groundingdino.util.inference import predict
    from torchvision.ops import box_convert

    st = GroundingDinoDetector(
        labels=["dog", "red mug"], nms_iou=1.0, dedup_iou=1.0, max_detections=10_000, **SMALL
    )
    img = _img(5)
    out = st(_batch([img], [None]))["subjects"][0]
    prepared = prepare_image(img, 96, 160)
    boxes, scores, _ = predict(st._pred.model, prepared, "dog . red mug .", 0.3, 0.25, device="cpu")
    ref = box_convert(boxes * torch.tensor([120, 90, 120, 90]), "cxcywh", "xyxy").clamp_min(0)
    ref = torch.minimum(ref, torch.tensor([120.0, 90, 120, 90]))
    # Ours additionally needs a label token above text_threshold; compare on the boxes both kept.
    ours = torch.tensor([d["box_xyxy"] for d in out])
    assert 0 < len(ours) <= len(ref)
    dist = torch.cdist(ours, ref, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)[0]
    assert float(dist.max()) < 1e-3


def test_caption_vocabulary_and_no_match():
    st = GroundingDinoDetector(labels=None, vocabularies=("coco",), **SMALL)
    out = st(_batch([_img(0), _img(1)], ["Two teddy bears next to a dog.", "an abstract painting"]))
    assert {d["label"] for d in out["subjects"][0]} <= {"teddy bear", "dog"}
    assert out["subjects"][1] == [] and out["status"] == ["ok", "ok"]


def test_long_prompts_are_chunked_and_merged():
    st = GroundingDinoDetector(labels=[c.label for c in load_vocabulary("lvis")[:150]], **SMALL)
    st.setup()
    prompts = build_prompts(st.labels, st._pred.tokenizer, 256)
    assert len(prompts) >= 2
    for p in prompts:
        ids = st._pred.tokenizer(p.caption)["input_ids"]
        assert len(ids) <= 256
        for label, a, b in p.spans:
            assert st._pred.tokenizer.decode(ids[a:b]).replace(" - ", "-").replace(" ' ", "'") == label
    out = st(_batch([_img(3)], [None]))
    assert all(d["label"] in st.labels for d in out["subjects"][0])
    assert len(out["subjects"][0]) <= st.max_detections


def test_validate_lists_every_problem_and_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SCONE_DATA_CACHE", str(tmp_path))
    msgs = GroundingDinoDetector(
        model="swint_ogc", box_threshold=2, batch_size=0, labels=[], device="tpu"
    ).validate()
    text = "\n".join(msgs)
    assert "scone-data weights fetch groundingdino_swint_ogc" in text
    for field in ("box_threshold", "batch_size", "labels", "device"):
        assert field in text
    assert GroundingDinoDetector(**SMALL).validate() == []


def test_picklable_resources_and_model_info(stage):
    again = pickle.loads(pickle.dumps(stage))
    assert again.settings() == stage.settings() and not again._ready
    assert again.resources()["num_gpus"] == (1.0 if torch.cuda.is_available() else 0.0)
    assert GroundingDinoDetector(num_gpus=0.5).resources()["num_gpus"] == 0.5
    assert stage.model_info() == {"name": "groundingdino_tiny", "weights_sha256": None}


def test_the_detector_looks_for_the_rows_vlm_tags():
    """Without fixed labels the prompts hold the caption's vocabulary labels, then the row's subject
    tags (a vlm_caption step's): a tag the vocabulary knows as its label, another as itself."""
    det = GroundingDinoDetector(**SMALL)
    det.setup()
    assert det.row_labels("a dog on the grass", None) == ["dog"]
    got = det.row_labels("a dog on the grass", ["dogs", "lamp shade", "Dog"])
    assert got == ["dog", "lamp shade"]
    off = GroundingDinoDetector(**SMALL, use_tags=False)
    off.setup()
    assert off.row_labels("a dog", ["lamp shade"]) == ["dog"]
    fixed = GroundingDinoDetector(labels=["cat"], **SMALL)
    fixed.setup()
    assert fixed.row_labels("a dog", ["lamp shade"]) == ["cat"]
    # through the stage: the prompt built for the row names the tag
    det(_batch([_img(5)], ["a photo"], None) | {"subject_tags": [["lamp shade"]]})
    assert ("lamp shade",) in det._prompt_cache
