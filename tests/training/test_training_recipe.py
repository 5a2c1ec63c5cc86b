"""Stages freeze what they should, the loss falls on a tiny overfit run, resume is exact, the CLI runs."""

import pytest
import torch
from safetensors.torch import load_file
from scone_train.checkpoint import build_model, save_model_dir
from scone_train.cli import main
from scone_train.config import load_config
from scone_train.recipe import train

STAGES = ["stage1_step1", "stage1_step2", "stage2_step1", "stage2_step2"]


def _cfg(stage, shards, out, *extra):
    return load_config(
        f"training/configs/{stage}.yaml",
        [
            "preset=tiny",
            f"data.shards=[{shards}]",
            f"train.output_dir={out}",
            "train.warmup_steps=1",
            "train.epochs=null",  # these runs are sized in steps (stage 1 ends after an epoch)
            "train.lr=1e-3",
            "data.dropout={text: 0.0}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def start_ckpt(tmp_path_factory, shards_dir):
    """A tiny checkpoint with a non-zero llm2vae (as after stage 1), so gradients reach every expert."""
    out = tmp_path_factory.mktemp("start") / "ck"
    cfg = _cfg("stage1_step1", shards_dir, out, "model.path=null", "train.steps=1")
    model, vae, tok = build_model(cfg)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02)
    save_model_dir(out, model.state_dict(), model, vae, tok, cfg)
    return out


def _last_layer_und(n):
    """Understanding-expert weights that cannot get a gradient without a text loss: the last layer's
    und query/output/MLP path and the und final norm only feed text/ViT outputs that nothing reads."""
    p = f"language_model.model.layers.{n - 1}."
    names = [
        p + "self_attn.q_proj.weight",
        p + "self_attn.q_proj.bias",
        p + "self_attn.q_norm.weight",
        p + "self_attn.o_proj.weight",
        p + "post_attention_layernorm.weight",
        p + "mlp.gate_proj.weight",
        p + "mlp.up_proj.weight",
        p + "mlp.down_proj.weight",
    ]
    return set(names) | {"language_model.model.norm.weight"}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_trains_exactly_its_parameters(stage, start_ckpt, shards_dir, tmp_path):
    cfg = _cfg(stage, shards_dir, tmp_path / "run", f"model.path={start_ckpt}", "train.steps=2")
    losses = train(cfg)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    before = load_file(str(start_ckpt / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    model, _, _ = build_model(cfg)  # to know which names the stage trains
    from scone_train.recipe import set_trainable

    trained = set(set_trainable(model, cfg["train"]["trainable"], cfg["train"]["frozen"]))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trained, f"frozen parameters changed: {sorted(changed - trained)[:5]}"
    assert trained - changed == _last_layer_und(model.llm_cfg.num_hidden_layers) & trained
    if stage == "stage2_step1":
        assert not any("moe_gen" in k or k.startswith(("vae2llm", "llm2vae")) for k in trained)
        assert any(k.startswith("language_model.model.layers.3.mlp.") for k in changed)
    else:
        assert "language_model.model.layers.0.mlp_moe_gen.up_proj.weight" in changed
    assert not any(k.startswith("vit_model.") or "pos_embed" in k for k in changed)


def _paired_loss(model, vae, tok, cfg, shards) -> float:
    """Mean flow-matching loss of the first sample of `shards` over fixed (timestep, noise) pairs, so that
    two models are compared on exactly the same draws (a single training loss is mostly noise)."""
    from scone_train.data import decode_sample, iter_raw, list_shards
    from scone_train.recipe import encode_latents, make_builder

    builder = make_builder(cfg, model, tok)
    sample = decode_sample(next(iter(iter_raw(list_shards([str(shards)], "train")))))
    batch = builder.pack([builder.item(sample, 0, train=False)])
    total, n = 0.0, 0
    with torch.no_grad():
        for seed, logit in enumerate([-1.5, -0.5, 0.5, 1.5] * 2):
            b = {**batch, "timesteps": torch.where(batch["vae_is_target"], logit, float("-inf"))}
            g = torch.Generator().manual_seed(seed)
            lat = encode_latents(vae, model, b, g)
            total += float(model(b, lat, cfg["train"]["timestep_shift"], None, generator=g)["mse"].mean())
            n += 1
    return total / n


def test_loss_falls_on_tiny_overfit(tmp_path):
    from conftest import write_shards
    from scone_train.checkpoint import load_pretrained

    one = write_shards(tmp_path / "one", n_shards=1, per_shard=1)  # a single sample, seen over and over
    cfg = _cfg(
        "stage1_step1",
        one,
        tmp_path / "run",
        "model.path=null",
        "train.steps=40",
        "train.lr=2e-3",
        "train.save_every=1000",
        "data.max_tokens=250",
    )
    losses = train(cfg)
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    before = _paired_loss(*build_model(cfg), cfg, one)
    after = _paired_loss(*load_pretrained(tmp_path / "run" / "final"), cfg, one)
    assert after < 0.99 * before, (before, after)  # measured here: 1.164 -> 1.138


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_reproduces_uninterrupted_losses(workers, start_ckpt, shards_dir, tmp_path):
    extra = [
        f"model.path={start_ckpt}",
        f"data.num_workers={workers}",
        "data.max_tokens=160",
        "train.save_every=1000",
        "data.dropout={text: 0.3}",
    ]
    full = train(_cfg("stage2_step1", shards_dir, tmp_path / "a", "train.steps=6", *extra))
    part = train(_cfg("stage2_step1", shards_dir, tmp_path / "b", "train.steps=3", *extra))
    rest = train(_cfg("stage2_step1", shards_dir, tmp_path / "b", "train.steps=6", *extra))
    assert len(part) == 3 and len(rest) == 3
    assert part + rest == full


def test_cli_runs_a_stage(shards_dir, tmp_path):
    rc = main(
        [
            "training/configs/stage1_step1.yaml",
            "preset=tiny",
            "model.path=null",
            f"data.shards=[{shards_dir}]",
            "train.steps=1",
            "train.warmup_steps=0",
            f"train.output_dir={tmp_path}/cli",
        ]
    )
    assert rc == 0 and (tmp_path / "cli" / "final" / "tokenizer.json").exists()
    assert (tmp_path / "cli" / "final" / "optimizer.safetensors").exists()
    assert main(["training/configs/stage1_step1.yaml", "train.steps=-1"]) == 2  # bad settings fail fast
