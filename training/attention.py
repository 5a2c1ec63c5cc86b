"""Attention patterns of a packed sequence: text causal, image blocks full, the noised target hidden.

Rule (BAGEL's prepare_attention_mask_per_sample, made per token): a query sees a key of the same
sample when the key's split comes earlier and is not a `noise` split, or when both are in the same
split (causal splits: key position <= query position). Samples never see each other.

Two backends compute the same rule:
- `dense`: an additive (L, L) bias and SDPA. Used on the CPU and in tests; memory grows as L^2.
- `flex`: torch's flex_attention with a block mask built from the same rule (CUDA; compiled).
The Scone mask adds one more rule: keys flagged by the semantic mask are hidden from target queries.
"""

import torch
import torch.nn.functional as F


def token_layout(sample_lens, split_lens, attn_modes, device) -> dict:
    """Per-token ids (L,) int64/bool: doc, split, is_noise, is_causal, pos."""
    n = torch.tensor(split_lens, device=device)
    split = torch.repeat_interleave(torch.arange(len(split_lens), device=device), n)
    doc = torch.repeat_interleave(
        torch.arange(len(sample_lens), device=device), torch.tensor(sample_lens, device=device)
    )
    noise = torch.tensor([m == "noise" for m in attn_modes], device=device)[split]
    causal = torch.tensor([m == "causal" for m in attn_modes], device=device)[split]
    return {
        "doc": doc,
        "split": split,
        "noise": noise,
        "causal": causal,
        "pos": torch.arange(len(split), device=device),
    }


def allowed(t: dict, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean visibility for query indexes q and key indexes k (broadcastable int64 tensors)."""
    same_doc = t["doc"][q] == t["doc"][k]
    earlier = (t["split"][k] < t["split"][q]) & ~t["noise"][k]
    same = (t["split"][k] == t["split"][q]) & (~t["causal"][q] | (k <= q))
    return same_doc & (earlier | same)


class DenseAttention:
    """Attention over the whole packed sequence with an additive (L, L) bias (0 or -inf), via SDPA.

    GQA is expanded by repeating k/v heads. The CPU / reference path: it materialises L x L. The
    bias is cast to the attention dtype once per dtype, not once per layer."""

    def __init__(self, bias: torch.Tensor):
        self.bias = bias
        self._cast: dict[torch.dtype, torch.Tensor] = {}

    def __call__(self, q, k, v):
        bias = self._cast.get(q.dtype)
        if bias is None:
            bias = self._cast[q.dtype] = self.bias.to(q.dtype)
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=bias
        )
        return out[0].transpose(0, 1)

    def with_key_mask(self, masked_keys: torch.Tensor, target_queries: torch.Tensor) -> "DenseAttention":
        """Hide keys `masked_keys` (L,) bool from queries `target_queries` (L,) bool."""
        hide = target_queries[:, None] & masked_keys[None, :]
        return DenseAttention(self.bias.masked_fill(hide, float("-inf")))


class FlexAttention:
    """flex_attention over the packed sequence (one batch row, GQA enabled)."""

    def __init__(self, layout: dict, extra=None):
        from torch.nn.attention.flex_attention import create_block_mask

        self.layout, self.extra = layout, extra
        n = len(layout["doc"])

        def mask_mod(b, h, q, k):
            ok = allowed(layout, q, k)
            if extra is not None:
                ok = ok & ~(extra[1][q] & extra[0][k])
            return ok

        self.block_mask = create_block_mask(mask_mod, None, None, n, n, device=layout["doc"].device)

    def __call__(self, q, k, v):
        fn = _compiled_flex()
        out = fn(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            block_mask=self.block_mask,
            enable_gqa=True,
        )
        return out[0].transpose(0, 1)

    def with_key_mask(self, masked_keys, target_queries) -> "FlexAttention":
        return FlexAttention(self.layout, (masked_keys, target_queries))


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention)
    return _FLEX


def dense_bias(layout: dict) -> torch.Tensor:
    """Additive bias (L, L) fp32: 0 where visible, -inf elsewhere."""
    idx = layout["pos"]
    ok = allowed(layout, idx[:, None], idx[None, :])
    return torch.zeros(ok.shape, device=idx.device).masked_fill(~ok, float("-inf"))


def build_attention(batch: dict, device, backend: str | None = None):
    """The attention callable for a packed batch; backend from batch['attn_backend'] ('dense'|'flex')."""
    layout = token_layout(batch["sample_lens"], batch["split_lens"], batch["attn_modes"], device)
    backend = backend or batch.get("attn_backend", "dense")
    if backend == "flex":
        return FlexAttention(layout)
    return DenseAttention(dense_bias(layout))
