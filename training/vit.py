"""SigLIP NaViT vision encoder in BAGEL's layout (`vit_model.vision_model.*`).

BAGEL loads SigLIP-so400m with rope=False, drops the last layer (num_hidden_layers - 1) and stores the
patch embedding as a Linear over patchified pixels, so that is the layout here. Images of any size
are packed into one sequence; attention stays inside each image.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ViTConfig:
    """Fields of BAGEL's vit_config.json (after BAGEL's `num_hidden_layers - 1`)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 26
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 980
    patch_size: int = 14
    layer_norm_eps: float = 1e-6


class SiglipAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, h = x.shape
        q, k, v = (
            p(x).view(n, self.heads, -1).transpose(0, 1)[None]
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.out_proj(out[0].transpose(0, 1).reshape(n, h))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), bias)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        p = cfg.patch_size
        self.patch_embedding = nn.Linear(cfg.num_channels * p * p, cfg.hidden_size)
        self.position_embedding = nn.Embedding((cfg.image_size // p) ** 2, cfg.hidden_size)


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class SiglipNaViT(nn.Module):
    """`vit_model`. forward(pixels (N, p*p*3) in [-1, 1], position_ids (N,), seqlens [n_i]) -> (N, C)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_model = SiglipVisionTransformer(cfg)

    def forward(self, pixels: torch.Tensor, position_ids: torch.Tensor, seqlens: list[int]) -> torch.Tensor:
        vm = self.vision_model
        x = vm.embeddings.patch_embedding(pixels) + vm.embeddings.position_embedding(position_ids)
        doc = torch.repeat_interleave(
            torch.arange(len(seqlens), device=x.device), torch.tensor(seqlens, device=x.device)
        )
        # Block-diagonal: each image attends only to itself (BAGEL uses varlen flash attention for this).
        bias = torch.zeros(len(doc), len(doc), device=x.device)
        bias.masked_fill_(doc[:, None] != doc[None, :], float("-inf"))
        for layer in vm.encoder.layers:
            x = layer(x, bias)
        return vm.post_layernorm(x)


def patchify(image: torch.Tensor, p: int) -> torch.Tensor:
    """(C, H, W) with H, W multiples of p -> (H/p * W/p, p*p*C), pixel order (row, col, channel).

    This order matches BAGEL's conv->linear conversion (weight.permute(0, 2, 3, 1)).
    """
    c, h, w = image.shape
    x = image.reshape(c, h // p, p, w // p, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c)
