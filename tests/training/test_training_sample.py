"""The sampler: BAGEL's shifted schedule and guidance against direct formulas; the CLI renders a split."""

import torch
from PIL import Image
from scone_train.checkpoint import build_model, save_model_dir
from scone_train.cli import main
from scone_train.config import load_config
from scone_train.sample import combine_cfg, timestep_schedule


def test_timestep_schedule_is_shifted_linspace():
    steps, shift = 50, 3.0
    t, dt = timestep_schedule(steps, shift)
    assert t.shape == dt.shape == (steps - 1,)
    for i in range(steps - 1):
        u0, u1 = 1 - i / (steps - 1), 1 - (i + 1) / (steps - 1)
        s0, s1 = shift * u0 / (1 + (shift - 1) * u0), shift * u1 / (1 + (shift - 1) * u1)
        assert abs(float(t[i]) - s0) < 1e-6 and abs(float(dt[i]) - (s0 - s1)) < 1e-6
    assert float(t[0]) == 1.0 and abs(float(dt.sum()) - 1.0) < 1e-5  # from pure noise down to t = 0
    assert float(dt[0]) < float(dt[-1])  # shift > 1 spends more steps near the noise end
    t1, _ = timestep_schedule(5, 1.0)
    assert torch.allclose(t1, torch.tensor([1.0, 0.75, 0.5, 0.25]))


def test_guidance_matches_bagel_formulas():
    g = torch.Generator().manual_seed(0)
    v, vt, vi = (torch.randn(6, 8, generator=g) for _ in range(3))
    # text_channel: text guidance, per-token renorm to at most |v|, then image guidance.
    a = vt + 4.0 * (v - vt)
    a = a * (v.norm(dim=1, keepdim=True) / (a.norm(dim=1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
    assert torch.allclose(combine_cfg(v, vt, vi, 4.0, 2.0, "text_channel", 0.0), vi + 2.0 * (a - vi))
    # global: both guidances, then one renorm over the whole sample.
    b = vi + 2.0 * (vt + 4.0 * (v - vt) - vi)
    expect = b * (v.norm() / (b.norm() + 1e-8)).clamp(0.0, 1.0)
    assert torch.allclose(combine_cfg(v, vt, vi, 4.0, 2.0, "global", 0.0), expect)
    assert torch.equal(combine_cfg(v, vt, vi, 1.0, 2.0, "global", 0.0), v)  # BAGEL: no text CFG, no CFG


def _sample_args(shards_dir, tmp_path, stage="stage1_step1") -> list[str]:
    """A tiny-preset checkpoint (a visible llm2vae, so outputs differ per sample) and the CLI args.
    The tiny model cannot hold Scone's 1024x1024 / 980-pixel inference sizes: the target's size and
    the checkpoint's transforms are asked for explicitly."""
    cfg = load_config(
        f"training/configs/{stage}.yaml",
        ["preset=tiny", "model.path=null", f"data.shards=[{shards_dir}]"],
    )
    model, vae, tok = build_model(cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    save_model_dir(tmp_path / "ck", model.state_dict(), model, vae, tok, cfg)
    return ["sample", str(tmp_path / "ck"), "--shards", str(shards_dir), "--steps", "3", "--limit", "2",
            "--size", "target", "--transforms", "checkpoint"]  # fmt: skip


def test_sample_cli_renders_split_deterministically(shards_dir, tmp_path):
    args = _sample_args(shards_dir, tmp_path)
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    outs = sorted((tmp_path / "a").glob("val*.png"))
    assert [p.name for p in outs] == ["val00000.png", "val00001.png"]
    for p in outs:
        im = Image.open(p)
        assert im.size == (32, 32)  # the 32x32 target through the tiny preset's VAE resize
        assert (tmp_path / "b" / p.name).read_bytes() == p.read_bytes()  # fixed seed -> same image
    assert Image.open(outs[0]).tobytes() != Image.open(outs[1]).tobytes()
    sheet = Image.open(tmp_path / "a" / "contact_sheet.png")
    # Rows: references | output | target at 128 px height; val00000 has 1 reference, val00001 has 2.
    assert sheet.size == (4 * 128, 2 * 128)


def test_sample_with_bf16_weights_stays_close_to_fp32(shards_dir, tmp_path):
    """--dtype bf16 (the GPU default: half the memory) renders the same pictures up to bf16 rounding."""
    import numpy as np

    args = _sample_args(shards_dir, tmp_path)
    assert main([*args, "--out", str(tmp_path / "fp32"), "--dtype", "fp32"]) == 0
    assert main([*args, "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    diffs, spreads = [], []
    for name in ("val00000.png", "val00001.png"):
        a = np.asarray(Image.open(tmp_path / "fp32" / name), dtype=np.float32)
        b = np.asarray(Image.open(tmp_path / "bf16" / name), dtype=np.float32)
        diffs.append(np.abs(a - b).mean())
        spreads.append(np.abs(a - a.mean()).mean())
    # close (a few grey levels) next to how much the pictures vary, yet computed another way
    assert max(diffs) < 0.25 * min(spreads), (diffs, spreads)
    assert min(diffs) > 0  # the flag took effect


def _tiny_builder():
    from scone_train.packing import sequence_builder

    cfg = load_config("stage1_step1", ["preset=tiny", "model.path=null"])
    model, _, tok = build_model(cfg)
    return model, sequence_builder(model, tok, cfg["data"], 0)


def test_cfg_branch_rope_ids_follow_bagel_inferencer():
    """BAGEL's inferencer: every image (VAE, then ViT) takes one RoPE id, text one per token
    (<|im_start|> text <|im_end|>), the generated image the next id. Its text-free context holds the
    references only; its image-free context holds the instruction only, from id 0."""
    from scone_train.sample import SamplerSettings, guidance_items

    _, builder = _tiny_builder()
    refs = [Image.new("RGB", (32, 48), "red"), Image.new("RGB", (40, 32), "blue")]
    sample = {"key": "k", "refs": refs, "target": Image.new("RGB", (32, 32)),
              "record": {"instruction": "the dog from image 1 next to the cat from image 2"}}  # fmt: skip
    items = guidance_items(builder, sample, SamplerSettings(size=None))
    batch = builder.pack(items)
    pos = batch["position_ids"].split(batch["sample_lens"])
    n_text = len(items[0]["text_ids"]) + 2
    blocks = [(r["vae"].shape[1] // 16) * (r["vae"].shape[2] // 16) for r in items[0]["refs"]]
    vit = [(r["vit"].shape[1] // 8) * (r["vit"].shape[2] // 8) for r in items[0]["refs"]]
    target = (32 // 16) * (32 // 16) + 2

    def images(start):  # framed VAE block then framed ViT block per reference, one id each
        out = []
        for k, (a, b) in enumerate(zip(blocks, vit)):
            out += [start + 2 * k] * (a + 2) + [start + 2 * k + 1] * (b + 2)
        return out

    cond = images(0) + list(range(4, 4 + n_text)) + [4 + n_text] * target
    no_text = images(0) + [4] * target
    no_img = list(range(n_text)) + [n_text] * target
    assert [p.tolist() for p in pos] == [cond, no_text, no_img]
    # Training's CFG dropout keeps the dropped references' ids (BAGEL's packing): unchanged.
    dropped = builder.pack([{**items[0], "drop": {"text": False, "vit": True, "vae": True}}])
    assert dropped["position_ids"].tolist() == list(range(4, 4 + n_text)) + [4 + n_text] * target


def test_sampler_never_masks_and_defaults_to_scone_inference(shards_dir, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from scone_train.bagel import Bagel
    from scone_train.sample import BAGEL_VAE_IMAGE, BAGEL_VIT_IMAGE, SamplerSettings, inference_geometry

    d = SamplerSettings()
    assert (d.size, d.transforms) == ((1024, 1024), "scone")  # Scone's inference_single_case.py
    assert (BAGEL_VAE_IMAGE, BAGEL_VIT_IMAGE) == (
        {"max_size": 1024, "min_size": 512, "stride": 16},
        {"max_size": 980, "min_size": 224, "stride": 14},
    )
    full = SimpleNamespace(
        cfg=SimpleNamespace(
            vae_downsample=8, latent_patch_size=2, max_latent_size=64, vit_max_num_patch_per_side=70
        ),
        vit_cfg=SimpleNamespace(patch_size=14),
    )  # BAGEL-7B-MoT's geometry holds Scone's sizes; the tiny preset does not
    assert inference_geometry(full, d) == d
    model, _ = _tiny_builder()
    assert inference_geometry(model, d) == SamplerSettings(size=None, transforms="checkpoint")
    seen = []
    real = Bagel.predict_velocity

    def spy(self, batch, latents, t, mask_cfg=None, checkpoint=False):
        seen.append(mask_cfg)
        return real(self, batch, latents, t, mask_cfg, checkpoint)

    monkeypatch.setattr(Bagel, "predict_velocity", spy)
    args = _sample_args(shards_dir, tmp_path, "stage2_step1")  # a stage whose config turns the mask on
    assert main([*args, "--out", str(tmp_path / "m"), "--limit", "1"]) == 0
    assert seen and all(m is None for m in seen)
