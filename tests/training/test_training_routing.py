"""The decoder layer's gathered-once expert routing computes what per-module routing computes.

The reference below is the layer as first written (every norm and projection routed on its own,
sequence order restored after each); the layer now gathers each expert's rows once per layer."""

import torch
from scone_train.attention import DenseAttention, dense_bias, token_layout
from scone_train.layers import apply_rope, rope_cos_sin
from scone_train.llm import LLMConfig, MoTDecoderLayer, _route

CFG = LLMConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=64)  # fmt: skip


def reference_layer(layer, x, und, gen, cos, sin, attn):
    a, c = layer.self_attn, CFG
    nq, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    y = _route(x, und, gen, layer.input_layernorm, layer.input_layernorm_moe_gen)
    q = _route(y, und, gen, a.q_proj, a.q_proj_moe_gen).view(-1, nq, d)
    k = _route(y, und, gen, a.k_proj, a.k_proj_moe_gen).view(-1, nkv, d)
    v = _route(y, und, gen, a.v_proj, a.v_proj_moe_gen).view(-1, nkv, d)
    q = _route(q, und, gen, a.q_norm, a.q_norm_moe_gen)
    k = _route(k, und, gen, a.k_norm, a.k_norm_moe_gen)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = attn(q, k, v).reshape(-1, nq * d)
    x = x + _route(out, und, gen, a.o_proj, a.o_proj_moe_gen)
    y = _route(x, und, gen, layer.post_attention_layernorm, layer.post_attention_layernorm_moe_gen)
    return x + _route(y, und, gen, layer.mlp, layer.mlp_moe_gen)


def _setup():
    torch.manual_seed(0)
    layer = MoTDecoderLayer(CFG)
    with torch.no_grad():  # non-trivial norm weights and biases, different per expert
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    # two samples: [vae ref (gen), vit ref (und), text (und), target (gen)] and a text-only one
    layout = token_layout([20, 6], [5, 4, 3, 8, 6], ["full", "full", "causal", "noise", "causal"], "cpu")
    gen = torch.tensor([*range(0, 5), *range(12, 20)])
    und = torch.tensor([i for i in range(26) if i not in set(gen.tolist())])
    cos, sin = rope_cos_sin(torch.arange(26), CFG.head_dim, CFG.rope_theta, torch.float32)
    x = torch.randn(26, CFG.hidden_size, requires_grad=True)
    return layer, x, und, gen, cos, sin, DenseAttention(dense_bias(layout))


def test_gathered_routing_equals_per_module_routing_fp32_with_gradients():
    layer, x, und, gen, cos, sin, attn = _setup()
    ref = reference_layer(layer, x, und, gen, cos, sin, attn)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    p_ref = torch.autograd.grad(reference_layer(layer, x, und, gen, cos, sin, attn).square().sum(),
                                list(layer.parameters()))  # fmt: skip
    out = layer(x, und, gen, cos, sin, attn)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    p = torch.autograd.grad(layer(x, und, gen, cos, sin, attn).square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(p, p_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_attention_gets_one_dtype_under_autocast():
    layer, x, und, gen, cos, sin, attn = _setup()
    seen = []

    def spy(q, k, v):
        seen.append((q.dtype, k.dtype, v.dtype))
        return attn(q, k, v)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, und, gen, cos, sin, spy)
        ref = reference_layer(layer, x, und, gen, cos, sin, attn)
    assert seen == [(torch.bfloat16,) * 3]  # per-module routing handed q/k in fp32 and v in bf16
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
