"""The Scone attention-based mask against a direct computation on a hand-built example."""

import math

import pytest
import torch
from scone_train.attention import DenseAttention, dense_bias, token_layout
from scone_train.semantic_mask import semantic_key_mask


def bilinear_by_hand(grid, out_h, out_w):
    """align_corners=False bilinear resize of a list-of-lists grid, written out."""
    in_h, in_w = len(grid), len(grid[0])
    out = []
    for y in range(out_h):
        sy = max((y + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), in_h - 1)
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), in_w - 1)
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx
            bot = grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx
            out.append(top * (1 - fy) + bot * fy)
    return out


def test_mask_equals_direct_computation():
    torch.manual_seed(0)
    # Sequence: [0] vs, [1..16] VAE 4x4, [17] ve, [18] vs, [19..22] ViT 2x2, [23] ve, [24..27] text, [28..33] target
    hidden = torch.randn(34, 3)
    text = [24, 25, 26, 27]
    # Instruction tokens point roughly one way; ViT tokens range from aligned to orthogonal to it.
    base = torch.tensor([1.0, 0.0, 0.0])
    for t in text:
        hidden[t] = base + 0.1 * torch.randn(3)
    for j, angle in enumerate([0.1, 0.4, 0.6, 1.4]):
        hidden[19 + j] = torch.tensor([math.cos(angle), math.sin(angle), 0.0]) * (1 + j)
    refs = [[{"vae": (1, 4, 4), "vit": (19, 2, 2)}]]
    masked, frac = semantic_key_mask(hidden, refs, [torch.tensor(text)], threshold=0.88)

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    vit_scores = [sum(cos(hidden[19 + j], hidden[t]) for t in text) / len(text) for j in range(4)]
    vae_scores = bilinear_by_hand([vit_scores[:2], vit_scores[2:]], 4, 4)
    expected = torch.zeros(34, dtype=torch.bool)
    for j, s in enumerate(vit_scores):
        expected[19 + j] = s < 0.88
    for j, s in enumerate(vae_scores):
        expected[1 + j] = s < 0.88
    assert 0 < int(expected.sum()) < 20, "example should mask some reference tokens and keep others"
    assert torch.equal(masked, expected)
    assert abs(frac - int(expected.sum()) / 20) < 1e-9

    # In the attention: only target queries lose the masked keys; no other key is ever hidden.
    layout = token_layout([34], [18, 6, 4, 6], ["full", "full", "causal", "noise"], "cpu")
    base = dense_bias(layout)
    target_q = torch.zeros(34, dtype=torch.bool)
    target_q[28:34] = True
    after = DenseAttention(base).with_key_mask(masked, target_q).bias
    changed = (after != base).nonzero().tolist()
    assert {(q, k) for q, k in changed} == {
        (q, k) for q in range(28, 34) for k in masked.nonzero().flatten().tolist()
    }


def test_attention_pattern_text_causal_images_full_target_hidden():
    # One sample: ref VAE block (4), ref ViT block (3), text (3), target (4); then a second sample (3 text).
    layout = token_layout([14, 3], [4, 3, 3, 4, 3], ["full", "full", "causal", "noise", "causal"], "cpu")
    ok = dense_bias(layout) == 0
    assert (
        ok[0:4, 0:4].all() and ok[4:7, 0:7].all() and not ok[0:4, 4:7].any()
    )  # full blocks, see earlier only
    assert torch.equal(ok[7:10, 7:10], torch.ones(3, 3, dtype=torch.bool).tril())  # text causal
    assert ok[10:14, 0:14].all()  # target sees everything before it and itself
    assert not ok[0:10, 10:14].any()  # nothing else sees the target
    assert not ok[14:, :14].any() and not ok[:14, 14:].any()  # samples are separate


@pytest.mark.filterwarnings("ignore:.*flex_attention.*")
def test_flex_backend_equals_dense_with_and_without_the_semantic_mask():
    """The CUDA path (flex_attention block mask) computes what the dense bias computes. Run eagerly
    here (flex_attention's reference path on the CPU); on the GPU the same mask_mod is compiled."""
    import scone_train.attention as A
    from torch.nn.attention.flex_attention import flex_attention

    layout = token_layout([14, 10], [4, 3, 3, 4, 3, 4, 3], ["full"] * 2 + ["causal", "noise", "full", "causal", "noise"],
                          "cpu")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(24, 4, 8, generator=g),
        torch.randn(24, 2, 8, generator=g),
        torch.randn(24, 2, 8, generator=g),
    )
    masked = torch.zeros(24, dtype=torch.bool)
    masked[[1, 5, 17]] = True
    target = layout["noise"]
    saved, A._FLEX = A._FLEX, flex_attention  # eager: no compile on the CPU test machine
    try:
        for dense, flex in (
            (DenseAttention(dense_bias(layout)), A.FlexAttention(layout)),
            (DenseAttention(dense_bias(layout)).with_key_mask(masked, target),
             A.FlexAttention(layout).with_key_mask(masked, target)),
        ):  # fmt: skip
            torch.testing.assert_close(flex(q, k, v), dense(q, k, v), rtol=1e-5, atol=1e-5)
        # the semantic mask changes the target rows (so the second comparison is not the first again)
        plain = DenseAttention(dense_bias(layout))(q, k, v)
        assert not torch.allclose(
            plain[target], A.FlexAttention(layout).with_key_mask(masked, target)(q, k, v)[target]
        )
    finally:
        A._FLEX = saved
