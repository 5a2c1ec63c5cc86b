"""Our batched Grounding DINO against upstream ``groundingdino.util.inference.predict``, image by image.

Same random weights (tiny preset, fp32, CPU). The batch mixes captions of different token lengths
(so cached text features are padded) and one image has two prompts (backbone features shared).
Boxes after the same thresholds must be the same, logits equal to 1e-4 relative error.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("groundingdino")

from scone_data.models.grounding_dino import (  # noqa: E402
    GroundingDinoPredictor,
    build_grounding_dino,
    prepare_image,
    preprocess_caption,
)

SIZE, MAX = 96, 160  # tiny input sides: keeps the Swin windows and deformable levels non-trivial


@pytest.fixture(scope="module")
def model():
    return build_grounding_dino("tiny", seed=1)


def _image(seed, h=90, w=120):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_batched_forward_equals_upstream_predict(model):
    from groundingdino.util.inference import predict

    images = [prepare_image(_image(s), SIZE, MAX) for s in range(3)]
    captions = [["dog . red mug . teddy bear ."], ["a cat ."], ["chair . dining table .", "person ."]]
    pred = GroundingDinoPredictor(model)
    ours = pred.forward_torch(images, [[preprocess_caption(c) for c in cs] for cs in captions])
    box_t, text_t = 0.3, 0.25
    n_kept = 0
    for img, caps, outs in zip(images, captions, ours):
        for cap, o in zip(caps, outs):
            ref_boxes, ref_scores, ref_phrases = predict(model, img, cap, box_t, text_t, device="cpu")
            keep = o["logits"].max(1)[0] > box_t
            assert int(keep.sum()) == len(ref_boxes)
            n_kept += len(ref_boxes)
            if len(ref_boxes):
                assert _rel(o["boxes"][keep], ref_boxes) < 1e-4
                assert _rel(o["logits"].max(1)[0][keep], ref_scores) < 1e-4
            b, s, ph = pred.predict(img, cap, box_t, text_t)
            assert ph == ref_phrases and len(b) == len(ref_boxes)
            if len(ref_boxes):  # the upstream-style entry point the naive bench loop uses
                assert _rel(b, ref_boxes) < 1e-4 and _rel(s, ref_scores) < 1e-4
    assert n_kept > 0  # thresholds chosen so that the comparison is not vacuous


def test_raw_logits_match_upstream_forward(model):
    img = prepare_image(_image(7), SIZE, MAX)
    cap = preprocess_caption("a bicycle next to a fire hydrant")
    with torch.no_grad():
        ref = model(img[None], captions=[cap])
    ours = GroundingDinoPredictor(model).forward_torch([img], [[cap]])[0][0]
    n = ours["logits"].shape[1]
    assert _rel(ours["logits"], ref["pred_logits"][0, :, :n].sigmoid()) < 1e-4
    assert _rel(ours["boxes"], ref["pred_boxes"][0]) < 1e-4


def test_text_features_are_cached(model):
    pred = GroundingDinoPredictor(model)
    img = prepare_image(_image(3), SIZE, MAX)
    pred.forward_torch([img, img], [["dog ."], ["dog ."]])
    assert pred.text_cache_hits == 1


def test_real_models_need_a_checkpoint_and_checkpoints_load(tmp_path, model):
    with pytest.raises(ValueError, match="tiny"):
        build_grounding_dino("swint_ogc")
    path = tmp_path / "tiny.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    again = build_grounding_dino("tiny", checkpoint=path, seed=42)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
