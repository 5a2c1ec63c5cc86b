"""Qwen2 decoder with Mixture-of-Transformers layers in BAGEL's key layout.

Every decoder layer holds two experts with identical shapes: the understanding expert (plain Qwen2
names: q_proj, mlp, input_layernorm, ...) for text and ViT tokens, and the generation expert (the same
names with `_moe_gen`) for VAE tokens. Attention is one joint attention over the packed sequence.
"""

from dataclasses import dataclass

import torch
from scone_train.layers import RMSNorm, SwiGLU, apply_rope, rope_cos_sin
from torch import nn


@dataclass
class LLMConfig:
    """The fields of BAGEL's llm_config.json this model reads (Qwen2 names)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _route(x: torch.Tensor, und: torch.Tensor, gen: torch.Tensor, f_und, f_gen) -> torch.Tensor:
    """Apply f_und to rows `und` and f_gen to rows `gen` of x (L, *) -> (L, *out)."""
    return _scatter(f_und(x[und]), f_gen(x[gen]), und, gen, x.shape[0])


def _scatter(a: torch.Tensor, b: torch.Tensor, und: torch.Tensor, gen: torch.Tensor, n: int) -> torch.Tensor:
    """Rows a (for `und`) and b (for `gen`) back into one (n, *) tensor in sequence order, a's dtype."""
    out = a.new_zeros((n, *a.shape[1:]))
    out[und] = a
    out[gen] = b.to(a.dtype)
    return out


class MoTAttention(nn.Module):
    """Joint attention with per-expert q/k/v/o projections and QK-norm (PackedAttentionMoT names)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(h, nq * d, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(h, nkv * d, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(h, nkv * d, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(nq * d, h, bias=False))
            setattr(self, f"q_norm{suffix}", RMSNorm(d, cfg.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", RMSNorm(d, cfg.rms_norm_eps))

    def qkv(self, y: torch.Tensor, suffix: str) -> tuple[torch.Tensor, torch.dtype]:
        """One expert's q, k (QK-normed) and v of rows y (n, H) -> ((n, nq + 2 nkv, D), v's dtype).

        With fp32 weights under autocast the projections give bf16 and QK-norm (fp32 maths, fp32
        weight) gives fp32, so the result is fp32 here; v's round trip through fp32 is exact."""
        c = self.cfg
        nq, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        v = getattr(self, f"v_proj{suffix}")(y).view(-1, nkv, d)
        q = getattr(self, f"q_norm{suffix}")(getattr(self, f"q_proj{suffix}")(y).view(-1, nq, d))
        k = getattr(self, f"k_norm{suffix}")(getattr(self, f"k_proj{suffix}")(y).view(-1, nkv, d))
        return torch.cat([q, k, v.to(q.dtype)], dim=1), v.dtype


class MoTDecoderLayer(nn.Module):
    """Qwen2MoTDecoderLayer: pre-norm attention and MLP, each with an und and a gen copy.

    Each expert's rows are gathered once per layer and stay gathered through the norms, the
    projections and the MLP; the sequence is put back together only where tokens meet (q/k/v for the
    joint attention, and the layer's output). Per layer: 4 gathers and 2 scatters, whatever the depth
    of the expert blocks.
    """

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        h = cfg.hidden_size
        self.cfg = cfg
        self.self_attn = MoTAttention(cfg)
        self.mlp = SwiGLU(h, cfg.intermediate_size)
        self.mlp_moe_gen = SwiGLU(h, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.input_layernorm_moe_gen = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = RMSNorm(h, cfg.rms_norm_eps)

    def forward(self, x, und, gen, cos, sin, attn) -> torch.Tensor:
        c, a, n = self.cfg, self.self_attn, x.shape[0]
        nq, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        xu, xg = x[und], x[gen]
        (qkv_u, dt), (qkv_g, _) = (
            a.qkv(self.input_layernorm(xu), ""),
            a.qkv(self.input_layernorm_moe_gen(xg), "_moe_gen"),
        )
        q, k, v = _scatter(qkv_u, qkv_g, und, gen, n).split([nq, nkv, nkv], dim=1)
        # RoPE on the fp32 q/k, then everything in the projections' dtype (bf16 under autocast): the
        # cast autocast would make at the attention call, made once here for every backend.
        q, k, v = apply_rope(q, cos, sin).to(dt), apply_rope(k, cos, sin).to(dt), v.to(dt)
        o = attn(q, k, v).reshape(n, nq * d)
        xu = xu + a.o_proj(o[und])
        xg = xg + a.o_proj_moe_gen(o[gen])
        xu = xu + self.mlp(self.post_attention_layernorm(xu))
        xg = xg + self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(xg))
        return _scatter(xu, xg, und, gen, n)


class Qwen2MoTModel(nn.Module):
    """`language_model.model`: embed_tokens, layers, norm, norm_moe_gen."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2MoTForCausalLM(nn.Module):
    """`language_model`: the decoder plus an (untied) lm_head, as in BAGEL checkpoints."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, x, position_ids, und, gen, attn_for_layer, after_layer=None, checkpoint=False):
        """Run the decoder over a packed sequence.

        x: (L, H) input embeddings; position_ids: (L,) int64 RoPE ids; und/gen: int64 row indexes.
        attn_for_layer(i) -> callable(q (L,Hq,D), k (L,Hkv,D), v) -> (L,Hq,D): the attention of layer i
        (lets the caller switch masks between layers). after_layer(i, hidden) is called after each layer
        (the Scone mask reads layer 8's output). Returns final hidden states (L, H), expert-normed.
        """
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            attn = attn_for_layer(i)
            if checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, und, gen, cos, sin, attn, use_reentrant=False)
            else:
                x = layer(x, und, gen, cos, sin, attn)
            if after_layer is not None:
                after_layer(i, x)
        return _route(x, und, gen, self.model.norm, self.model.norm_moe_gen)
