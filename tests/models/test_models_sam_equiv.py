"""Our batched SAM box predictor against upstream ``SamPredictor.predict_torch``, image by image.

Same random weights (tiny preset, fp32, CPU); images of different sizes in one batch; several boxes
per image. Logits must agree to 1e-4 relative error, the chosen masks exactly.
"""

import numpy as np
import pytest
import torch

from scone_data.models.sam import SamBoxPredictor, build_sam, use_sdpa_

pytest.importorskip("segment_anything")


def _images(rng):
    sizes = [(96, 128), (128, 80), (60, 60)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _boxes(rng, image, n):
    h, w = image.shape[:2]
    x0 = rng.uniform(0, w / 2, n)
    y0 = rng.uniform(0, h / 2, n)
    return np.stack([x0, y0, x0 + rng.uniform(5, w / 2, n), y0 + rng.uniform(5, h / 2, n)], 1).astype(
        np.float32
    )


def _reference(model, image, boxes):
    from segment_anything import SamPredictor

    pred = SamPredictor(model)
    pred.set_image(image)
    tb = pred.transform.apply_boxes_torch(torch.as_tensor(boxes), image.shape[:2])
    masks, iou, low = pred.predict_torch(None, None, boxes=tb, multimask_output=True, return_logits=True)
    best = iou.argmax(1)
    ar = torch.arange(len(best))
    return masks[ar, best], iou[ar, best], low[ar, best]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("attention", ["upstream", "bias", "flash"])
def test_batched_predictor_equals_upstream(attention):
    rng = np.random.default_rng(0)
    model = build_sam("tiny", seed=3)
    images = _images(rng)
    boxes = [_boxes(rng, images[0], 3), _boxes(rng, images[1], 1), _boxes(rng, images[2], 2)]
    refs = [_reference(model, im, b) for im, b in zip(images, boxes)]
    if attention != "upstream":
        assert use_sdpa_(model, mode=attention) == 2
    out = SamBoxPredictor(model).predict(images, boxes)
    for (rmask_logits, riou, rlow), o, im in zip(refs, out, images):
        assert o["masks"].shape == (len(riou), *im.shape[:2])
        assert _rel(torch.from_numpy(o["logits"]), rlow) < 1e-4
        assert _rel(torch.from_numpy(o["iou"]), riou) < 1e-4
        ref_mask = (rmask_logits > 0).numpy()
        # Only pixels whose logit sits within float noise of the threshold may flip.
        flips = o["masks"] != ref_mask
        assert not flips.any() or (rmask_logits.numpy()[flips].__abs__() < 1e-4).all()
        assert ((o["stability"] >= 0) & (o["stability"] <= 1)).all()


def test_image_without_boxes_gives_empty_outputs():
    rng = np.random.default_rng(1)
    model = build_sam("tiny", seed=0)
    images = _images(rng)[:2]
    out = SamBoxPredictor(model).predict(images, [np.zeros((0, 4)), _boxes(rng, images[1], 2)])
    assert out[0]["masks"].shape == (0, 96, 128) and out[0]["iou"].shape == (0,)
    assert out[1]["masks"].shape == (2, 128, 80)


def test_real_models_need_a_checkpoint_and_load_one(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        build_sam("vit_b")
    model = build_sam("tiny", seed=5)
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    again = build_sam("tiny", checkpoint=path, seed=99)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
