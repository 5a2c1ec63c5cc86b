"""Model layout: BAGEL key names and shapes, strict round trip, a tiny forward."""

import json

import torch
from safetensors.torch import load_file, save_file
from scone_train.checkpoint import build_model, load_pretrained, model_skeleton, save_model_dir
from scone_train.config import load_config
from scone_train.layers import sincos_2d

# BAGEL's checkpoint layout, written from the public code (ByteDance-Seed/Bagel), not from ours:
#   modeling/bagel/qwen2_navit.py  PackedAttentionMoT (q/k/v/o_proj + *_moe_gen, q/k_norm + *_moe_gen over
#       head_dim), Qwen2MoTDecoderLayer (mlp, mlp_moe_gen, input/post_attention_layernorm + *_moe_gen),
#       Qwen2Model (embed_tokens, layers, norm, norm_moe_gen; rotary inv_freq is a non-persistent buffer),
#       Qwen2ForCausalLM (model, untied lm_head).
#   modeling/bagel/siglip_navit.py  SiglipVisionEmbeddings (patch conv -> Linear(C*p*p, D) by
#       convert_conv2d_to_linear; position_embedding only when rope=False), encoder layers, post_layernorm.
#   modeling/bagel/bagel.py + modeling_utils.py  connector (MLPconnector fc1/fc2), vit_pos_embed /
#       latent_pos_embed (PositionEmbedding: frozen Parameter (side**2, H)), time_embedder (mlp.0/mlp.2
#       from 256 frequencies), vae2llm / llm2vae (p*p*z_channels <-> H). No VAE inside: ae.safetensors.
#   app.py / train/pretrain_unified_navit.py  vit num_hidden_layers - 1 (vit_select_layer=-2),
#       rope=False, max_latent_size=64, vit_max_num_patch_per_side=70, latent_patch_size=2.
#   modeling/autoencoder.py  FLUX AutoEncoder (encoder.down.*, mid, decoder.up.*, conv_out 2*z_channels).
# A third-party converter of the real ema.safetensors (TTFHW-MindSpeed-MM checkpoint/sora_model/
# bagel_converter.py) maps exactly these 1223 names for 28 LLM layers and 26 ViT layers.

# BAGEL-7B-MoT's llm_config.json (Qwen2.5-7B) and vit_config.json (SigLIP so400m-14-980) values.
BAGEL_7B_LLM = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "model_type": "qwen2",
}
BAGEL_7B_VIT = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 980,
    "patch_size": 14,
    "model_type": "siglip_vision_model",
}


def bagel_shapes(llm: dict, vit: dict, max_latent: int, vit_side: int, z: int = 16, p: int = 2) -> dict:
    """{key: shape} of BAGEL's ema.safetensors from llm_config.json / vit_config.json values."""
    H, ffn, V = llm["hidden_size"], llm["intermediate_size"], llm["vocab_size"]
    nq, nkv = llm["num_attention_heads"], llm["num_key_value_heads"]
    d = H // nq
    out = {
        "language_model.model.embed_tokens.weight": (V, H),
        "language_model.model.norm.weight": (H,),
        "language_model.model.norm_moe_gen.weight": (H,),
        "language_model.lm_head.weight": (V, H),
    }
    for i in range(llm["num_hidden_layers"]):
        pre = f"language_model.model.layers.{i}."
        for s in ("", "_moe_gen"):
            for proj, rows in (("q_proj", nq * d), ("k_proj", nkv * d), ("v_proj", nkv * d)):
                out[f"{pre}self_attn.{proj}{s}.weight"] = (rows, H)
                out[f"{pre}self_attn.{proj}{s}.bias"] = (rows,)
            out[f"{pre}self_attn.o_proj{s}.weight"] = (H, nq * d)
            out[f"{pre}self_attn.q_norm{s}.weight"] = (d,)
            out[f"{pre}self_attn.k_norm{s}.weight"] = (d,)
            out[f"{pre}mlp{s}.gate_proj.weight"] = (ffn, H)
            out[f"{pre}mlp{s}.up_proj.weight"] = (ffn, H)
            out[f"{pre}mlp{s}.down_proj.weight"] = (H, ffn)
            out[f"{pre}input_layernorm{s}.weight"] = (H,)
            out[f"{pre}post_attention_layernorm{s}.weight"] = (H,)
    D, vffn, ps = vit["hidden_size"], vit["intermediate_size"], vit["patch_size"]
    vm = "vit_model.vision_model."
    out[vm + "embeddings.patch_embedding.weight"] = (D, vit.get("num_channels", 3) * ps * ps)
    out[vm + "embeddings.patch_embedding.bias"] = (D,)
    out[vm + "embeddings.position_embedding.weight"] = ((vit["image_size"] // ps) ** 2, D)
    for i in range(vit["num_hidden_layers"] - 1):  # the last SigLIP layer is not part of BAGEL
        pre = f"{vm}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{pre}self_attn.{proj}.weight"] = (D, D)
            out[f"{pre}self_attn.{proj}.bias"] = (D,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[f"{pre}{norm}.weight"] = out[f"{pre}{norm}.bias"] = (D,)
        out[f"{pre}mlp.fc1.weight"], out[f"{pre}mlp.fc1.bias"] = (vffn, D), (vffn,)
        out[f"{pre}mlp.fc2.weight"], out[f"{pre}mlp.fc2.bias"] = (D, vffn), (D,)
    out[vm + "post_layernorm.weight"] = out[vm + "post_layernorm.bias"] = (D,)
    out |= {
        "connector.fc1.weight": (H, D),
        "connector.fc1.bias": (H,),
        "connector.fc2.weight": (H, H),
        "connector.fc2.bias": (H,),
        "vit_pos_embed.pos_embed": (vit_side**2, H),
        "time_embedder.mlp.0.weight": (H, 256),
        "time_embedder.mlp.0.bias": (H,),
        "time_embedder.mlp.2.weight": (H, H),
        "time_embedder.mlp.2.bias": (H,),
        "vae2llm.weight": (H, p * p * z),
        "vae2llm.bias": (H,),
        "llm2vae.weight": (p * p * z, H),
        "llm2vae.bias": (p * p * z,),
        "latent_pos_embed.pos_embed": (max_latent**2, H),
    }
    return out


def flux_ae_shapes(ch: int, ch_mult: list, n_res: int, z: int = 16, cin: int = 3, cout: int = 3) -> dict:
    """{key: shape} of a FLUX ae.safetensors (black-forest-labs flux / BAGEL modeling/autoencoder.py)."""
    out = {}

    def conv(name, o, i, k):
        out[f"{name}.weight"], out[f"{name}.bias"] = (o, i, k, k), (o,)

    def norm(name, c):
        out[f"{name}.weight"] = out[f"{name}.bias"] = (c,)

    def resnet(name, i, o):
        norm(f"{name}.norm1", i)
        conv(f"{name}.conv1", o, i, 3)
        norm(f"{name}.norm2", o)
        conv(f"{name}.conv2", o, o, 3)
        if i != o:
            conv(f"{name}.nin_shortcut", o, i, 1)

    def mid(name, c):
        resnet(f"{name}.block_1", c, c)
        norm(f"{name}.attn_1.norm", c)
        for q in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{q}", c, c, 1)
        resnet(f"{name}.block_2", c, c)

    conv("encoder.conv_in", ch, cin, 3)
    block_in = ch
    for i, m in enumerate(ch_mult):
        for j in range(n_res):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(ch_mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    mid("encoder.mid", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", 2 * z, block_in, 3)
    conv("decoder.conv_in", block_in, z, 3)
    mid("decoder.mid", block_in)
    for i in reversed(range(len(ch_mult))):
        for j in range(n_res + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", cout, block_in, 3)
    return out


def shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def assert_same_layout(got: dict, want: dict) -> None:
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"shape (ours, BAGEL's): {dict(list(wrong.items())[:5])}"


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


def test_state_dict_has_exactly_bagel_keys_and_shapes(tmp_path):
    cfg = tiny_cfg(tmp_path)
    model, vae, tok = build_model(cfg)
    size = cfg["model"]["size"]
    llm = {**size["llm"], "vocab_size": len(tok)}
    vit = {**size["vit"], "num_hidden_layers": size["vit"]["num_hidden_layers"] + 1}  # as in vit_config.json
    bagel = size["bagel"]
    got = shapes(model)
    assert_same_layout(
        got, bagel_shapes(llm, vit, bagel["max_latent_size"], bagel["vit_max_num_patch_per_side"])
    )
    # The generation expert is a copy of the understanding expert, shape for shape.
    gen = [k for k in got if "_moe_gen" in k]
    assert len(gen) == 14 * llm["num_hidden_layers"] + 1
    assert all(got[k] == got[k.replace("_moe_gen", "")] for k in gen)
    assert not dict(model.named_buffers())  # BAGEL keeps no persistent buffers in ema.safetensors
    v = size["vae"]
    assert_same_layout(shapes(vae), flux_ae_shapes(v["ch"], v["ch_mult"], v["num_res_blocks"]))


def test_official_bagel_7b_directory_builds_bagel_layout(tmp_path):
    """BAGEL-7B-MoT's own config files (no bagel_config.json / vae_config.json) -> its exact layout."""
    (tmp_path / "llm_config.json").write_text(json.dumps(BAGEL_7B_LLM))
    (tmp_path / "vit_config.json").write_text(json.dumps(BAGEL_7B_VIT))
    model, vae = model_skeleton(tmp_path)  # meta device: no memory
    got = shapes(model)
    assert_same_layout(got, bagel_shapes(BAGEL_7B_LLM, BAGEL_7B_VIT, max_latent=64, vit_side=70))
    assert len(got) == 1223
    assert got["vit_model.vision_model.embeddings.patch_embedding.weight"] == (1152, 588)
    assert got["latent_pos_embed.pos_embed"] == (4096, 3584)
    assert got["vit_pos_embed.pos_embed"] == (4900, 3584)
    assert model.vit_cfg.num_hidden_layers == 26
    assert_same_layout(shapes(vae), flux_ae_shapes(128, [1, 2, 4, 4], 2))
    assert (model.cfg.latent_patch_size, model.cfg.z_channels, model.cfg.vae_downsample) == (2, 16, 8)


def test_checkpoint_dir_round_trips_strictly(tmp_path):
    cfg = tiny_cfg(tmp_path)
    model, vae, tok = build_model(cfg)
    save_model_dir(tmp_path / "ck", model.state_dict(), model, vae, tok, cfg)
    sd = load_file(str(tmp_path / "ck" / "model.safetensors"))
    model2, vae2, tok2 = load_pretrained(tmp_path / "ck")  # strict=True inside
    ref = model.state_dict()  # what was saved, not what was read back
    assert sd.keys() == ref.keys()
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref[k]), k
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


def test_bf16_ema_checkpoint_loads_as_fp32_master_weights(tmp_path):
    """An official ema.safetensors is bf16 (BAGEL's trainer saves the EMA so): we train from fp32."""
    cfg = tiny_cfg(tmp_path)
    model, vae, tok = build_model(cfg)
    ck = tmp_path / "ck"
    save_model_dir(ck, model.state_dict(), model, vae, tok, cfg)
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(str(ck / "model.safetensors")).items()}
    (ck / "model.safetensors").unlink()
    save_file(sd, str(ck / "ema.safetensors"))
    model2, vae2, _ = load_pretrained(ck)
    assert {p.dtype for p in model2.parameters()} == {torch.float32}
    assert {p.dtype for p in vae2.parameters()} == {torch.float32}
    w = "language_model.model.layers.3.mlp_moe_gen.up_proj.weight"
    assert torch.equal(model2.state_dict()[w], sd[w].float())
    # The frozen sin-cos tables come back exact, not bf16-rounded.
    for emb in (model2.vit_pos_embed, model2.latent_pos_embed):
        assert torch.equal(emb.pos_embed, sincos_2d(emb.pos_embed.shape[1], emb.max_side))
        assert not emb.pos_embed.requires_grad
    # A table that is not the sin-cos one is kept as it was stored.
    sd["latent_pos_embed.pos_embed"] = sd["latent_pos_embed.pos_embed"] + 0.5
    save_file(sd, str(ck / "ema.safetensors"))
    model3, _, _ = load_pretrained(ck)
    assert torch.equal(model3.latent_pos_embed.pos_embed, sd["latent_pos_embed.pos_embed"].float())


def test_position_tables_follow_bagel_sincos_convention():
    """BAGEL's get_2d_sincos_pos_embed (modeling/bagel/modeling_utils.py, from MAE/DiT): the meshgrid puts
    the column index first, so for id = row * side + col the first D/2 channels encode col and the last
    D/2 encode row; each half is [sin(x * w_j), cos(x * w_j)] with w_j = 10000 ** (-j / (D / 4))."""
    side, dim = 5, 16
    table = sincos_2d(dim, side)
    assert table.shape == (side * side, dim)
    q = dim // 4
    w = [10000.0 ** (-j / q) for j in range(q)]
    for row in range(side):
        for col in range(side):
            want = [
                *(torch.tensor(col * wj).sin() for wj in w),
                *(torch.tensor(col * wj).cos() for wj in w),
                *(torch.tensor(row * wj).sin() for wj in w),
                *(torch.tensor(row * wj).cos() for wj in w),
            ]
            torch.testing.assert_close(table[row * side + col], torch.stack(want).float())
