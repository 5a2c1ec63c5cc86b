"""SAM's fast paths against upstream, on CPU in fp32: mask-free (flash) attention, device RLE, prefetch.

The encoder check uses segment-anything's own ``ImageEncoderViT`` with vit_h's head dim (80), a
window that needs padding and a global block, and random rel-pos tables (zero tables would hide a
wrong rel-pos term). A bare ``Attention`` on a non-square grid pins the row/column order.
"""

from functools import partial

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from pycocotools import mask as mask_utils  # noqa: E402
from segment_anything.modeling import ImageEncoderViT  # noqa: E402
from segment_anything.modeling.image_encoder import Attention  # noqa: E402

from scone_data.imageio import mask_to_rle as encode_rle  # noqa: E402
from scone_data.imageio import rle_to_mask  # noqa: E402
from scone_data.models.sam import SamBoxPredictor, build_sam, randomize_, use_sdpa_  # noqa: E402
from scone_data.stages.segment import SamSegmenter, encode_rle_torch  # noqa: E402


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _encoder():
    torch.manual_seed(0)
    enc = ImageEncoderViT(
        img_size=128, patch_size=16, embed_dim=160, depth=3, num_heads=2, mlp_ratio=2, out_chans=32,
        qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=3, global_attn_indexes=(1,),
    ).eval()  # fmt: skip
    return randomize_(enc, 1)


class _Holder(torch.nn.Module):  # use_sdpa_ takes a Sam-like object with .image_encoder
    def __init__(self, enc):
        super().__init__()
        self.image_encoder = enc


@torch.no_grad()
def test_encoder_flash_and_bias_equal_upstream():
    enc = _encoder()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    keys = list(enc.state_dict())
    ref = enc(x)
    out = {}
    for mode in ("bias", "flash"):
        assert use_sdpa_(_Holder(enc), mode=mode) == 3
        assert list(enc.state_dict()) == keys
        out[mode] = enc(x)
    assert _rel(out["bias"], ref) < 1e-5
    assert _rel(out["flash"], ref) < 1e-5


@pytest.mark.parametrize("hw", [(6, 10), (7, 5), (1, 9)])
@torch.no_grad()
def test_attention_non_square_grid(hw):
    torch.manual_seed(3)
    attn = randomize_(Attention(160, num_heads=2, use_rel_pos=True, input_size=hw), 4)
    x = torch.randn(3, *hw, 160)
    ref = attn(x)
    for mode in ("bias", "flash"):
        use_sdpa_(_Holder(attn), mode=mode)
        assert _rel(attn(x), ref) < 1e-5, mode


@torch.no_grad()
def test_attention_without_rel_pos():
    attn = Attention(64, num_heads=4, use_rel_pos=False)
    x = torch.randn(2, 5, 6, 64)
    ref = attn(x)
    use_sdpa_(_Holder(attn), mode="flash")
    assert _rel(attn(x), ref) < 1e-5


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="flash"):
        use_sdpa_(build_sam("tiny"), mode="fast")


def test_predictor_flash_equals_upstream():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(96, 128), (128, 80)]]
    boxes = [
        np.array([[5, 5, 60, 50], [0, 0, 128, 96]], np.float32),
        np.array([[10, 20, 70, 110]], np.float32),
    ]
    model = build_sam("tiny", seed=0)
    ref = SamBoxPredictor(model).predict(images, boxes)
    use_sdpa_(model, mode="flash")
    out = SamBoxPredictor(model).predict(images, boxes)
    for r, o in zip(ref, out):
        assert _rel(torch.from_numpy(o["logits"]), torch.from_numpy(r["logits"])) < 1e-4
        assert (o["masks"] == r["masks"]).all()


def _masks():
    rng = np.random.default_rng(5)
    out = []
    for h, w in [(1, 1), (1, 7), (9, 1), (13, 17), (64, 48), (31, 33)]:
        blob = np.zeros((h, w), bool)
        blob[h // 4 : h // 2 + 1, w // 3 : w - 1] = True
        pixel = np.zeros((h, w), bool)
        pixel[rng.integers(h), rng.integers(w)] = True
        border = np.zeros((h, w), bool)
        border[0, :] = border[:, -1] = True
        corner = np.zeros((h, w), bool)
        corner[-1, -1] = True
        first = np.zeros((h, w), bool)
        first[0, 0] = True
        out.append(np.stack([rng.random((h, w)) < 0.5, np.zeros((h, w), bool), np.ones((h, w), bool), blob,
                             pixel, border, corner, first, ~border]))  # fmt: skip
    return out


def test_device_rle_is_byte_identical_to_encode_rle():
    for masks in _masks():
        got = encode_rle_torch(torch.from_numpy(masks))
        assert got == [encode_rle(m) for m in masks]
        for g, m in zip(got, masks):
            assert (mask_utils.decode({"size": g["size"], "counts": g["counts"].encode()}) == m).all()
    assert encode_rle_torch(torch.zeros((0, 5, 4), dtype=torch.bool)) == []


def _rows(seed):
    rng = np.random.default_rng(seed)
    sizes = [(40, 50), (64, 48), (30, 30), (50, 70), (33, 21)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    subjects = [[{"label": "x", "box_xyxy": [1, 2, w - 3, h - 1]}, {"label": "y", "box_xyxy": [w / 3, 0, w, h / 2]}]
                for h, w in sizes]  # fmt: skip
    return images, subjects


def test_stage_with_prefetch_and_device_rle_equals_sequential():
    images, subjects = _rows(0)
    st = SamSegmenter(model="tiny", seed=2, device="cpu", batch_size=2)  # 3 chunks: prefetch is used
    out = st({"image": images, "subjects": subjects})
    model = build_sam("tiny", seed=2)
    use_sdpa_(model, mode="flash")
    pred = SamBoxPredictor(model)
    for a in range(0, 5, 2):
        res = pred.predict(
            images[a : a + 2], [np.array([s["box_xyxy"] for s in subs]) for subs in subjects[a : a + 2]]
        )
        for subs, r in zip(out["subjects"][a : a + 2], res):
            assert [s["mask_rle"] for s in subs] == [encode_rle(m) for m in r["masks"]]
            assert [s["mask_score"] for s in subs] == [float(v) for v in np.clip(r["iou"], 0, 1)]
            assert [s["stability"] for s in subs] == [float(v) for v in np.clip(r["stability"], 0, 1)]


def test_stage_attention_setting():
    assert "attention" in SamSegmenter(model="tiny", device="cpu", attention="fast").validate()[0]
    images, subjects = _rows(1)
    outs = {}
    for mode in ("flash", "bias", "upstream"):
        st = SamSegmenter(model="tiny", seed=2, device="cpu", batch_size=4, attention=mode)
        assert st.validate() == []
        outs[mode] = st({"image": images, "subjects": subjects})["subjects"]
    for mode in ("flash", "bias"):
        for a, b in zip(outs[mode], outs["upstream"], strict=True):
            for sa, sb in zip(a, b, strict=True):
                assert sa["mask_score"] == pytest.approx(sb["mask_score"], abs=1e-5)
                ma, mb = (rle_to_mask(s["mask_rle"]) for s in (sa, sb))
                assert ma.shape == mb.shape and (ma != mb).mean() < 1e-3


def test_stage_compiled_encoder_equals_eager():
    """`compile: true` (torch.compile of the image encoder, flash attention inside) gives the eager
    masks: the GPU setting's code path, compiled here by inductor for the CPU."""
    images, subjects = _rows(1)
    eager = SamSegmenter(model="tiny", seed=2, device="cpu", batch_size=4)(
        {"image": images, "subjects": subjects}
    )
    comp = SamSegmenter(model="tiny", seed=2, device="cpu", batch_size=4, compile=True)
    out = comp({"image": images, "subjects": subjects})
    assert type(comp._pred.model.image_encoder).__name__ == "OptimizedModule"
    for a, b in zip(out["subjects"], eager["subjects"]):
        for sa, sb in zip(a, b):
            assert sa["mask_score"] == pytest.approx(sb["mask_score"], abs=1e-5)
            ma, mb = (
                mask_utils.decode({**s["mask_rle"], "counts": s["mask_rle"]["counts"].encode()})
                for s in (sa, sb)
            )
            assert (ma != mb).mean() < 1e-3  # a boundary pixel may flip with fused kernels' rounding
