"""Segment Anything (vit_b / vit_l / vit_h, plus a random-weight ``tiny`` preset) and a batched box predictor.

Builders follow segment-anything's own style: :data:`sam_builders` maps a name to a builder over one
private ``_build_sam``. Real names need a checkpoint (``torch.load(weights_only=True)`` or
safetensors); ``tiny`` is a random-weight model for tests and CPU smoke runs only, never a
fallback for a missing checkpoint.

:class:`SamBoxPredictor` differs from ``SamPredictor`` only in batching: the image encoder runs on a
batch of images, and all boxes of all images of a batch go through the mask decoder in one call
(each box reads its own image's embedding). Per box it returns the multimask output with the highest
predicted IoU, SAM's stability score and the binary mask at the original image size.
"""

from __future__ import annotations

from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scone_data.models.common import bf16_autocast, load_state_dict, randomize_

STABILITY_OFFSET = 1.0  # SAM's default stability_score_offset (automatic_mask_generator.py)
_TINY_IMG = 128  # tiny preset input side: 8x8 embedding grid, 32x32 low-res masks


def _build_sam(embed_dim, depth, heads, global_attn, img_size=1024, prompt_dim=256, window=14,
               dec_mlp=2048, dec_heads=8, iou_hidden=256):  # fmt: skip
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    patch = 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=window,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=dec_mlp, num_heads=dec_heads),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=iou_hidden,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()  # fmt: skip


sam_builders = {
    "vit_h": partial(_build_sam, 1280, 32, 16, [7, 15, 23, 31]),
    "vit_l": partial(_build_sam, 1024, 24, 16, [5, 11, 17, 23]),
    "vit_b": partial(_build_sam, 768, 12, 12, [2, 5, 8, 11]),
    # Random weights, for tests only: 2 blocks of width 32 (one windowed, one global) on 128x128
    # inputs and a 32-wide decoder; every code path of the real models, none of their quality.
    "tiny": partial(_build_sam, 32, 2, 2, [1], img_size=_TINY_IMG, prompt_dim=32, window=4,
                    dec_mlp=64, dec_heads=2, iou_hidden=32),
}  # fmt: skip
SAM_MODELS = tuple(sam_builders)


def build_sam(name: str, checkpoint: str | Path | None = None, seed: int = 0, random_init: bool = False):
    """A ``segment_anything.modeling.Sam`` in eval mode; ``checkpoint`` is required except for ``tiny``.

    ``random_init=True`` builds a real architecture with random weights (benchmarks only): asked for
    explicitly, never a fallback.
    """
    if name not in sam_builders:
        raise KeyError(f"unknown SAM model {name!r}; known: {', '.join(SAM_MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = sam_builders[name]()
    if name == "tiny":
        if checkpoint is not None:
            model.load_state_dict(load_state_dict(checkpoint))
        else:
            randomize_(model, seed)
        return model
    if checkpoint is None:
        if random_init:
            return randomize_(model, seed)
        raise ValueError(f"SAM {name} needs a checkpoint (random weights exist only as the 'tiny' preset)")
    model.load_state_dict(load_state_dict(checkpoint))
    return model


class _BiasAttention(torch.nn.Module):
    """SAM ViT attention through ``F.scaled_dot_product_attention`` with the rel-pos term as a mask.

    Same maths as ``segment_anything.modeling.image_encoder.Attention``: the decomposed relative
    position term is an additive float bias ``rel_h[..., :, None] + rel_w[..., None, :]`` of shape
    (B, heads, HW, HW). A float mask rules out the flash kernels on GPU and costs HW x HW memory per
    head (32 MiB per head in bf16, 512 MiB per image for vit_h's 64x64 global blocks). Kept as a
    reference for :class:`_FlashAttention`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        q, k, v = _qkv(self, x)
        bias = None
        if self.use_rel_pos:
            rel_h, rel_w = _rel_terms(self, q, H, W)
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, self.num_heads, H * W, H * W)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return _merge_heads(self, out, B, H, W)


class _FlashAttention(torch.nn.Module):
    """SAM ViT attention through ``F.scaled_dot_product_attention`` with no mask (flash-compatible).

    Upstream's logit between query q (at row qh, column qw) and key k (at kh, kw) is
    ``scale * q.k + rel_h[q, kh] + rel_w[q, kw]``, with ``rel_h[q, j] = q . Rh[qh, j]`` and
    ``rel_w[q, j] = q . Rw[qw, j]`` computed from the *unscaled* q. Both rel-pos terms are lookups by
    the key's row and column, i.e. dot products with one-hot vectors, so the whole logit is one dot
    product of augmented vectors::

        q' = [scale * q, rel_h[q, :], rel_w[q, :]]      (C + H + W)
        k' = [k,         onehot_H(kh), onehot_W(kw)]    (C + H + W)
        q' . k' = scale * q.k + rel_h[q, kh] + rel_w[q, kw]

    and SDPA runs with ``scale=1``. Flash kernels want q, k and v of one head dim, a multiple of 8:
    q' and k' are zero-padded to that width (zeros add nothing to q'.k'), v is zero-padded to the same
    width and the output sliced back to C. For vit_h (C = 80) that is 208 in the 64x64 global blocks
    and 112 in the 14x14 windows. Costs: the QK and PV matmuls grow with the head dim, but no
    (HW, HW) tensor is ever built and the fastest kernel applies.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        q, k, v = _qkv(self, x)
        if not self.use_rel_pos:
            return _merge_heads(self, F.scaled_dot_product_attention(q, k, v), B, H, W)
        C = q.shape[-1]
        rel_h, rel_w = _rel_terms(self, q, H, W)  # from the unscaled q, as upstream
        L = H * W
        rel_h, rel_w = rel_h.reshape(B, self.num_heads, L, H), rel_w.reshape(B, self.num_heads, L, W)
        # key l sits at row l // W, column l % W
        eye_h = torch.eye(H, dtype=k.dtype, device=k.device).repeat_interleave(W, dim=0)
        eye_w = torch.eye(W, dtype=k.dtype, device=k.device).repeat(H, 1)
        D = -(-(C + H + W) // 8) * 8
        pad = D - (C + H + W)
        qa = F.pad(torch.cat([q * self.scale, rel_h.to(q.dtype), rel_w.to(q.dtype)], -1), (0, pad))
        ka = torch.cat([k, eye_h.expand(B, self.num_heads, L, H), eye_w.expand(B, self.num_heads, L, W)], -1)
        ka = F.pad(ka, (0, pad))
        out = F.scaled_dot_product_attention(qa, ka, F.pad(v, (0, D - C)), scale=1.0)
        return _merge_heads(self, out[..., :C], B, H, W)


def _qkv(attn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, W, _ = x.shape
    qkv = attn.qkv(x).reshape(B, H * W, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)  # each (B, heads, HW, C)


def _rel_terms(attn, q: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``add_decomposed_rel_pos`` terms: rel_h (B, heads, H, W, H), rel_w (B, heads, H, W, W)."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    Rh = get_rel_pos(H, H, attn.rel_pos_h).to(q.dtype)
    Rw = get_rel_pos(W, W, attn.rel_pos_w).to(q.dtype)
    r_q = q.reshape(q.shape[0], attn.num_heads, H, W, -1)
    return torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh), torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw)


def _merge_heads(attn, out: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    x = out.reshape(B, attn.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return attn.proj(x)


ATTENTION_MODES = ("flash", "bias")  # use_sdpa_ modes; "upstream" (no swap) is the stage's third choice


@cache
def _attention_class(mode: str) -> type:
    from segment_anything.modeling.image_encoder import Attention

    impl = {"flash": _FlashAttention, "bias": _BiasAttention}[mode]
    return type(impl.__name__.lstrip("_"), (impl, Attention), {})


def use_sdpa_(model, mode: str = "flash") -> int:
    """Switch every attention block of ``model.image_encoder`` to SDPA in place; returns how many.

    ``mode``: ``flash`` folds the rel-pos term into q and k (no mask; :class:`_FlashAttention`),
    ``bias`` passes it as an additive mask (:class:`_BiasAttention`). Both are upstream's maths.
    Calling it again switches an already switched model to the other mode.
    """
    from segment_anything.modeling.image_encoder import Attention

    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r}; known: {', '.join(ATTENTION_MODES)}")
    n = 0
    for m in model.image_encoder.modules():
        if isinstance(m, Attention):
            # Same parameters and buffers, new forward: a class swap keeps state_dict keys unchanged.
            m.__class__ = _attention_class(mode)
            n += 1
    return n


class SamBoxPredictor:
    """Box-prompted SAM over batches of images. NumPy in/out (:meth:`predict`) or torch (`*_torch`).

    ``bf16`` runs the image encoder under bf16 autocast (the decoder stays fp32: it is cheap and
    its logits decide the mask boundary).
    """

    def __init__(self, model, device: str | torch.device = "cpu", bf16: bool = False):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.bf16 = bf16
        self.img_size = model.image_encoder.img_size
        self.transform = ResizeLongestSide(self.img_size)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> 3xhxw float tensor resized to long side ``img_size`` (as SamPredictor)."""
        resized = self.transform.apply_image(image)  # PIL bilinear on uint8, exactly as upstream
        return torch.from_numpy(resized).permute(2, 0, 1).contiguous().float()

    @torch.no_grad()
    def embed_torch(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        """Image embeddings (B, C, h, w) float32 of prepared images (:meth:`prepare`), one encoder call."""
        x = torch.stack([self.model.preprocess(p.to(self.device)[None])[0] for p in prepared])
        with bf16_autocast(self.device, self.bf16):
            emb = self.model.image_encoder(x)
        return emb.float()

    @torch.no_grad()
    def decode_torch(self, embeddings: torch.Tensor, boxes: torch.Tensor, image_idx: torch.Tensor,
                     multimask: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """All boxes of a batch in one mask-decoder call.

        embeddings (B, C, h, w); boxes (N, 4) float xyxy in the *model input* frame (after resize);
        image_idx (N,) long, which embedding each box reads. Returns low-res logits (N, M, 4h, 4w)
        and predicted IoU (N, M) with M = 3 (multimask) or 1.
        """
        dec = self.model.mask_decoder
        sparse, dense = self.model.prompt_encoder(points=None, boxes=boxes, masks=None)
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((out_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
        # Upstream repeats one image's embedding per box; indexing does the same for many images.
        src = embeddings[image_idx] + dense
        pos_src = self.model.prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos_src, tokens)
        iou_token_out, mask_tokens_out = hs[:, 0, :], hs[:, 1 : 1 + dec.num_mask_tokens, :]
        up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1
        )
        b, c, h, w = up.shape
        masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)
        iou = dec.iou_prediction_head(iou_token_out)
        sl = slice(1, None) if multimask else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    @torch.no_grad()
    def predict_torch(self, prepared: list[torch.Tensor], original_sizes: list[tuple[int, int]],
                      boxes: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:  # fmt: skip
        """Per image: ``masks`` (N, H, W) bool, ``iou`` (N,), ``stability`` (N,), ``logits`` (N, 4h, 4w).

        boxes: per image (N_i, 4) float xyxy in original pixels (N_i may be 0). Masks are the
        multimask output with the highest predicted IoU, at the image's original (H, W).
        """
        out: list[dict[str, torch.Tensor]] = [{} for _ in prepared]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return [self._empty(s) for s in original_sizes]
        emb = self.embed_torch([prepared[i] for i in todo])
        tb, idx = [], []
        for j, i in enumerate(todo):
            b = self.transform.apply_boxes_torch(boxes[i].to(self.device, torch.float32), original_sizes[i])
            tb.append(b)
            idx.append(torch.full((len(b),), j, dtype=torch.long, device=self.device))
        low, iou = self.decode_torch(emb, torch.cat(tb), torch.cat(idx))
        best = iou.argmax(dim=1)
        ar = torch.arange(len(best), device=best.device)
        low, iou = low[ar, best], iou[ar, best]
        start = 0
        for j, i in enumerate(todo):
            n = len(tb[j])
            lo = low[start : start + n, None]
            start += n
            in_size = tuple(prepared[i].shape[-2:])
            logits = self.model.postprocess_masks(lo, in_size, original_sizes[i])[:, 0]
            out[i] = {
                "masks": logits > self.model.mask_threshold,
                "iou": iou[start - n : start],
                "stability": _stability(logits, self.model.mask_threshold),
                "logits": lo[:, 0],
            }
        return [o if o else self._empty(s) for o, s in zip(out, original_sizes)]

    def _empty(self, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        lr = self.img_size // 4
        z = torch.zeros(0, device=self.device)
        return {"masks": torch.zeros((0, *size), dtype=torch.bool, device=self.device), "iou": z,
                "stability": z, "logits": torch.zeros((0, lr, lr), device=self.device)}  # fmt: skip

    def predict(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """images: HxWx3 uint8 RGB; boxes: per image (N, 4) float xyxy pixels. NumPy version of
        :meth:`predict_torch` (masks bool (N, H, W), iou/stability float32 (N,), logits float32)."""
        prepared = [self.prepare(im) for im in images]
        sizes = [im.shape[:2] for im in images]
        tboxes = [torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4)) for b in boxes]
        res = self.predict_torch(prepared, sizes, tboxes)
        return [{k: v.cpu().numpy() for k, v in r.items()} for r in res]


def _stability(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    from segment_anything.utils.amg import calculate_stability_score

    if logits.shape[0] == 0:
        return logits.new_zeros(0)
    # int16 row sums in upstream's helper overflow above 32767 pixels per row; fine for W <= 32767.
    # A mask empty even at the low threshold has union 0: call it unstable (0), not NaN.
    return calculate_stability_score(logits, threshold, STABILITY_OFFSET).float().nan_to_num(0.0)
