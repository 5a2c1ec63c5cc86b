"""Model layout: BAGEL key names, strict round trip, a tiny forward."""

import torch
from safetensors.torch import load_file
from scone_train.checkpoint import build_model, load_pretrained, save_model_dir
from scone_train.config import load_config

# Key templates of BAGEL-7B-MoT's ema.safetensors (modeling/bagel/{bagel,qwen2_navit,siglip_navit}.py).
LLM_LAYER = [
    f"self_attn.{p}{s}.{w}"
    for s in ("", "_moe_gen")
    for p in ("q_proj", "k_proj", "v_proj")
    for w in ("weight", "bias")
]
LLM_LAYER += [f"self_attn.o_proj{s}.weight" for s in ("", "_moe_gen")]
LLM_LAYER += [f"self_attn.{n}{s}.weight" for s in ("", "_moe_gen") for n in ("q_norm", "k_norm")]
LLM_LAYER += [
    f"{m}{s}.{p}.weight"
    for s in ("", "_moe_gen")
    for m in ("mlp",)
    for p in ("gate_proj", "up_proj", "down_proj")
]
LLM_LAYER += [
    f"{n}{s}.weight" for s in ("", "_moe_gen") for n in ("input_layernorm", "post_attention_layernorm")
]
VIT_LAYER = [
    f"self_attn.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w in ("weight", "bias")
]
VIT_LAYER += [
    f"{n}.{w}" for n in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")
]
TOP = [
    "language_model.model.embed_tokens.weight",
    "language_model.model.norm.weight",
    "language_model.model.norm_moe_gen.weight",
    "language_model.lm_head.weight",
    "vit_model.vision_model.embeddings.patch_embedding.weight",
    "vit_model.vision_model.embeddings.patch_embedding.bias",
    "vit_model.vision_model.embeddings.position_embedding.weight",
    "vit_model.vision_model.post_layernorm.weight",
    "vit_model.vision_model.post_layernorm.bias",
    "connector.fc1.weight",
    "connector.fc1.bias",
    "connector.fc2.weight",
    "connector.fc2.bias",
    "vit_pos_embed.pos_embed",
    "time_embedder.mlp.0.weight",
    "time_embedder.mlp.0.bias",
    "time_embedder.mlp.2.weight",
    "time_embedder.mlp.2.bias",
    "vae2llm.weight",
    "vae2llm.bias",
    "llm2vae.weight",
    "llm2vae.bias",
    "latent_pos_embed.pos_embed",
]


def tiny_cfg(tmp_path, *extra):
    return load_config(
        "training/configs/stage1_step1.yaml",
        [
            "preset=tiny",
            "model.path=null",
            f"data.shards=[{tmp_path}]",
            "train.steps=2",
            "train.warmup_steps=1",
            *extra,
        ],
    )


def test_state_dict_has_exactly_bagel_keys(tmp_path):
    model, vae, tok = build_model(tiny_cfg(tmp_path))
    n_llm, n_vit = model.llm_cfg.num_hidden_layers, model.vit_cfg.num_hidden_layers
    expected = set(TOP)
    expected |= {f"language_model.model.layers.{i}.{k}" for i in range(n_llm) for k in LLM_LAYER}
    expected |= {f"vit_model.vision_model.encoder.layers.{i}.{k}" for i in range(n_vit) for k in VIT_LAYER}
    assert set(model.state_dict()) == expected
    vae_keys = set(vae.state_dict())
    assert {
        "encoder.conv_in.weight",
        "encoder.mid.attn_1.q.weight",
        "decoder.up.0.block.0.conv1.weight",
        "decoder.up.1.upsample.conv.weight",
        "encoder.down.0.downsample.conv.weight",
        "decoder.conv_out.bias",
        "encoder.conv_out.weight",
    } <= vae_keys
    assert vae.encoder.conv_out.out_channels == 32  # 2 x 16 latent channels (mean, logvar)


def test_checkpoint_dir_round_trips_strictly(tmp_path):
    cfg = tiny_cfg(tmp_path)
    model, vae, tok = build_model(cfg)
    save_model_dir(tmp_path / "ck", model.state_dict(), model, vae, tok, cfg)
    sd = load_file(str(tmp_path / "ck" / "model.safetensors"))
    model2, vae2, tok2 = load_pretrained(tmp_path / "ck")  # strict=True inside
    for k, v in model2.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert model2.vit_cfg.num_hidden_layers == model.vit_cfg.num_hidden_layers  # BAGEL's -1 convention
    assert tok2.encode("the dog") == tok.encode("the dog")
    # Renamed ema.safetensors (the name in an official BAGEL directory) loads the same way.
    (tmp_path / "ck" / "model.safetensors").rename(tmp_path / "ck" / "ema.safetensors")
    load_pretrained(tmp_path / "ck")


def test_vae_shapes_and_latent_patchify_roundtrip(tmp_path):
    model, vae, _ = build_model(tiny_cfg(tmp_path))
    z = vae.encode(torch.zeros(1, 3, 32, 48), sample=False)
    assert z.shape == (1, 16, 4, 6)
    assert vae.decode(z).shape == (1, 3, 32, 48)
    tok = model.patchify_latents([z[0]], [(2, 3)])
    assert tok.shape == (6, 64)
    assert torch.equal(model.unpatchify_latents(tok, 2, 3), z[0])
