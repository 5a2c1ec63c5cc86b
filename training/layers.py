"""Small building blocks shared by the BAGEL-layout model (names follow BAGEL's state-dict keys)."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm; computes in fp32 and casts back (matches Qwen2RMSNorm numerics)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SwiGLU(nn.Module):
    """Qwen2MLP: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple:
    """1-D RoPE tables. position_ids (L,) int64 -> cos, sin (L, head_dim) in `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (L, H, D); cos/sin (L, D)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (not scaled by 1000, as in BAGEL). t (N,) -> (N, dim) fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device).float() / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """mlp.0 / mlp.2 as in BAGEL: Linear(256, H) -> SiLU -> Linear(H, H)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


class MLPConnector(nn.Module):
    """ViT width -> LLM width: fc1, gelu(tanh), fc2 (BAGEL's `connector`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def sincos_2d(embed_dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table (grid*grid, embed_dim), row-major over (h, w), MAE-style."""
    coords = torch.arange(grid, dtype=torch.float64)
    gh, gw = torch.meshgrid(coords, coords, indexing="ij")

    def one_axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    # MAE convention: first half encodes the w coordinate, second half h.
    return torch.cat([one_axis(embed_dim // 2, gw), one_axis(embed_dim // 2, gh)], dim=1).float()


class PositionEmbedding(nn.Module):
    """Frozen sin-cos table indexed by flattened (row * max_side + col) ids; key `pos_embed`."""

    def __init__(self, max_side: int, hidden: int):
        super().__init__()
        self.max_side = max_side
        self.pos_embed = nn.Parameter(sincos_2d(hidden, max_side), requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


def flattened_position_ids(h: int, w: int, max_side: int) -> torch.Tensor:
    """Extrapolating 2-D ids of an h x w grid: row * max_side + col, (h*w,) int64."""
    rows = torch.arange(h)[:, None] * max_side
    return (rows + torch.arange(w)[None, :]).flatten()
