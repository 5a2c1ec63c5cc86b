"""Sampling as BAGEL does it for image-conditioned generation, and `scone-train sample CHECKPOINT`.

Euler steps of the flow x_t = (1 - t) x_0 + t eps from t = 1 to 0 over BAGEL's shifted schedule, with
classifier-free guidance on two conditions: text (the same sequence without the instruction) and image
(the instruction alone). Both unconditional sequences are built by the trainer's SequenceBuilder with
the condition dropped; as in BAGEL's inferencer, the image-free one starts the instruction at RoPE id
0 (training's CFG dropout instead keeps the dropped references' ids). All three are packed into one
sequence, so one forward pass per step gives the three velocities. No KV cache: the context is
recomputed every step (BAGEL caches it; the result is the same, the cost is higher). The Scone mask
is never applied: Scone's inference does not use it, whatever stage the checkpoint comes from.

Defaults are those of Scone's inference_single_case.py (BAGEL's image-conditioned recipe): 50
timesteps (49 model evaluations), shift 3.0, text scale 4.0, image scale 2.0, interval [0, 1],
renorm "text_channel" with renorm_min 0.0, a 1024x1024 output, and its transforms: each reference is
resized by the VAE transform (1024/512, stride 16) and that image by the ViT transform (980/224,
stride 14). A model whose position tables cannot hold that geometry (the tiny preset) falls back to
the checkpoint's training transforms and the target's size, with a warning.
"""

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from scone_train.data import _seed, decode_sample, iter_raw, list_shards
from scone_train.packing import SequenceBuilder, sequence_builder

log = logging.getLogger("scone_train")

CELL = 128  # contact-sheet cell height in pixels (each image is scaled to this height)
# Scone's (and BAGEL's) inference transforms and output size (inference_single_case.py, inferencer.py).
BAGEL_VAE_IMAGE = {"max_size": 1024, "min_size": 512, "stride": 16}
BAGEL_VIT_IMAGE = {"max_size": 980, "min_size": 224, "stride": 14}
SCONE_SIZE = (1024, 1024)  # (width, height)


@dataclass
class SamplerSettings:
    steps: int = 50  # BAGEL's num_timesteps: points of the schedule; steps - 1 Euler updates
    shift: float = 3.0
    text_scale: float = 4.0
    img_scale: float = 2.0
    interval: tuple = (0.0, 1.0)  # guidance on where interval[0] < t <= interval[1]
    renorm_type: str = "text_channel"  # "global" | "channel" | "text_channel"
    renorm_min: float = 0.0
    size: tuple | None = SCONE_SIZE  # output (width, height); None: the target's size after the VAE resize
    transforms: str = "scone"  # "scone": the inference transforms above; "checkpoint": its training ones


def timestep_schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BAGEL's schedule: linspace(1, 0, steps) shifted by t' = s t / (1 + (s - 1) t).

    Returns (t (steps - 1,) the times the model is evaluated at, dt (steps - 1,) > 0 the step sizes).
    """
    t = torch.linspace(1, 0, steps)
    t = shift * t / (1 + (shift - 1) * t)
    return t[:-1], t[:-1] - t[1:]


def combine_cfg(v, v_no_text, v_no_img, text_scale: float, img_scale: float, renorm_type: str, renorm_min):
    """BAGEL's guidance of one sample's target tokens (N, D); every argument v* is (N, D).

    Text guidance first, then image guidance; the result is rescaled so that its norm (whole sample for
    "global", per token for "channel") does not exceed the conditional one's; "text_channel" rescales
    the text-guided velocity per token before image guidance. As in BAGEL, nothing is applied unless
    text_scale > 1.
    """
    if text_scale <= 1.0:
        return v
    v_text = v_no_text + text_scale * (v - v_no_text)
    if renorm_type == "text_channel":
        scale = v.norm(dim=-1, keepdim=True) / (v_text.norm(dim=-1, keepdim=True) + 1e-8)
        v_text = v_text * scale.clamp(min=renorm_min, max=1.0)
        return v_no_img + img_scale * (v_text - v_no_img) if img_scale > 1.0 else v_text
    out = v_no_img + img_scale * (v_text - v_no_img) if img_scale > 1.0 else v_text
    if renorm_type == "global":
        scale = v.norm() / (out.norm() + 1e-8)
    elif renorm_type == "channel":
        scale = v.norm(dim=-1, keepdim=True) / (out.norm(dim=-1, keepdim=True) + 1e-8)
    else:
        raise ValueError(f"unknown renorm_type {renorm_type!r}")
    return out * scale.clamp(min=renorm_min, max=1.0)


def guidance_items(builder: SequenceBuilder, sample: dict, s: SamplerSettings) -> list[dict]:
    """The items packed for one sample: conditional, then (when text_scale > 1) text-free, then (when
    img_scale > 1 too) image-free, the last starting its instruction at RoPE id 0 as BAGEL's
    inferencer does. As there, each reference is first resized by the VAE transform and the ViT
    input is made from that image; the target's pixels are never used (only its size when s.size is
    None)."""
    refs = [im.resize(builder.vae_resize.size(*im.size), Image.BICUBIC) for im in sample["refs"]]
    target = sample["target"] if s.size is None else Image.new("RGB", tuple(s.size))
    cond = builder.item({**sample, "refs": refs, "target": target}, 0, train=False)
    items = [cond]
    if s.text_scale > 1.0:
        items.append({**cond, "drop": {"text": True, "vit": False, "vae": False}})
        if s.img_scale > 1.0:
            items.append(
                {**cond, "drop": {"text": False, "vit": True, "vae": True}, "drop_advances_rope": False}
            )
    return items


@torch.no_grad()
def generate(
    model, vae, builder: SequenceBuilder, sample: dict, s: SamplerSettings, generator, mask_cfg=None
):
    """One decoded sample (references + instruction) -> image (see guidance_items for the sequences).

    Returns (3, H, W) float in [-1, 1]: (W, H) = s.size, or when that is None the target's size after
    the builder's VAE resize. `generator` draws the initial noise (same device as the model).
    `mask_cfg` is for experiments only: Scone's inference never masks, and render_split passes None.
    """
    dev = next(model.parameters()).device
    items = guidance_items(builder, sample, s)
    from scone_train.packing import move_batch

    batch = move_batch(builder.pack(items), dev)
    shapes, per_token_target = batch["vae_shapes"], batch["vae_is_target"]
    # Reference latents: the posterior mean (deterministic; BAGEL samples the posterior here too).
    lat, first = [], 0
    for img, (h, w) in zip(batch["vae_images"], shapes):
        if per_token_target[first]:
            lat.append(None)
        else:
            z = vae.encode(img[None].to(dev), sample=False)[0].float()
            lat.append(model.patchify_latents([z], [(h, w)]))
        first += h * w
    th, tw = next(shape for shape, z in zip(shapes, lat) if z is None)
    n = th * tw
    x = torch.randn((n, model.patch_latent_dim), generator=generator, device=dev)
    ts, dts = timestep_schedule(s.steps, s.shift)
    for t, dt in zip(ts.tolist(), dts.tolist()):
        latents = torch.cat([x if z is None else z for z in lat])
        t_vec = per_token_target.float() * t  # t on the target's tokens, 0 on the references' (clean)
        v_all, _ = model.predict_velocity(batch, latents, t_vec, mask_cfg)
        vs = list(v_all.split(n))  # one block of n target tokens per packed sequence, in item order
        on = s.interval[0] < t <= s.interval[1]
        v = vs[0]
        if len(vs) > 1 and on:
            v_no_img = vs[2] if len(vs) > 2 else vs[0]
            v = combine_cfg(
                vs[0], vs[1], v_no_img, s.text_scale, s.img_scale if len(vs) > 2 else 1.0,
                s.renorm_type, s.renorm_min,
            )  # fmt: skip
        x = x - v * dt  # v points from data to noise
    z = model.unpatchify_latents(x, th, tw)
    return vae.decode(z[None].to(next(vae.parameters()).dtype))[0].float().clamp(-1, 1)


def inference_geometry(model, s: SamplerSettings) -> SamplerSettings:
    """`s`, or when the model's position tables cannot hold Scone's inference geometry (a 1024-pixel
    side is 64 latent patches, a 980-pixel ViT side 70 patches; the tiny preset holds 8) the settings
    with the checkpoint's training transforms and the target's size, with a warning."""
    mc, p = model.cfg, model.vit_cfg.patch_size
    stride = mc.vae_downsample * mc.latent_patch_size
    size_ok = s.size is None or max(s.size) // stride <= mc.max_latent_size
    tf_ok = s.transforms != "scone" or (
        BAGEL_VAE_IMAGE["max_size"] // stride <= mc.max_latent_size
        and BAGEL_VIT_IMAGE["max_size"] // p <= mc.vit_max_num_patch_per_side
    )
    if not (size_ok and tf_ok):
        log.warning(
            "this model's position tables (%d latent, %d ViT patches per side) cannot hold Scone's "
            "inference sizes: sampling with the checkpoint's training transforms at the target's size",
            mc.max_latent_size,
            mc.vit_max_num_patch_per_side,
        )
        return replace(s, transforms="checkpoint", size=None)
    return s


def to_pil(img: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL."""
    arr = ((img.cpu() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr))


def contact_sheet(rows: list[list[Image.Image]], cell: int = CELL) -> Image.Image:
    """Rows of images (references..., output, target) scaled to height `cell`, left-aligned, white."""
    scaled = [[im.resize((max(1, round(im.width * cell / im.height)), cell)) for im in r] for r in rows]
    width = max(sum(im.width for im in r) for r in scaled)
    sheet = Image.new("RGB", (width, cell * len(scaled)), "white")
    for y, r in enumerate(scaled):
        x = 0
        for im in r:
            sheet.paste(im, (x, y * cell))
            x += im.width
    return sheet


def render_split(ckpt, shards, out, s: SamplerSettings, split: str = "val", limit=None, seed=0,
                 dtype: str = "auto") -> list:  # fmt: skip
    """Render `split` of the corpora `shards` with checkpoint `ckpt` into `out`: {key}.png per sample,
    contact_sheet.png (rows: references | output | target) and samples.jsonl. Returns the records.
    The noise of each sample is keyed by (seed, key), so an image does not depend on `limit` or order.
    dtype: weights as `fp32` or `bf16` (half the memory: BAGEL-7B-MoT's ~14B parameters take ~29 GB
    in bf16, ~58 GB in fp32); `auto` = bf16 on a GPU, fp32 on the CPU. Compute runs under bf16
    autocast whenever the weights are bf16 or the device is a GPU.
    """
    from scone_train.checkpoint import load_pretrained

    ckpt, out = Path(ckpt), Path(out)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" else "fp32"
    wdtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model, vae, tok = load_pretrained(ckpt, dtype=wdtype)
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text()) if (ckpt / "config.yaml").exists() else {}
    data = cfg.get("data", {})
    model.to(dev).eval()
    vae.to(dev).eval()
    s = inference_geometry(model, s)
    sizes = {"vae_image": BAGEL_VAE_IMAGE, "vit_image": BAGEL_VIT_IMAGE}
    if s.transforms == "checkpoint":
        sizes = {k: data.get(k, v) for k, v in sizes.items()}
    builder = sequence_builder(model, tok, sizes, seed)  # no token dropout when sampling
    out.mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for raw in iter_raw(list_shards([str(d) for d in shards], split)):
        if limit is not None and len(records) >= limit:
            break
        sample = decode_sample(raw)
        g = torch.Generator(device=dev).manual_seed(_seed(seed, "sample", sample["key"]))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" or dtype == "bf16"):
            img = to_pil(generate(model, vae, builder, sample, s, g))
        name = f"{sample['key']}.png"
        img.save(out / name)
        target = to_pil(builder.vae_resize(sample["target"]))
        rows.append([*sample["refs"], img, target])
        rec = {"key": sample["key"], "image": name, "instruction": sample["record"]["instruction"]}
        records.append(rec)
        log.info("sampled %s (%dx%d)", name, img.width, img.height)
    if rows:
        contact_sheet(rows).save(out / "contact_sheet.png")
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="scone-train sample", description="Render a corpus split with a checkpoint (BAGEL's sampler)."
    )
    d = SamplerSettings()
    p.add_argument("checkpoint")
    p.add_argument("--shards", nargs="+", required=True, help="dataset dirs (holding {split}-*.tar)")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--steps", type=int, default=d.steps, help="schedule points (BAGEL's num_timesteps)")
    p.add_argument("--limit", type=int, default=None, help="render at most this many samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="weights' dtype (auto: bf16 on a GPU, fp32 on the CPU)")  # fmt: skip
    p.add_argument("--shift", type=float, default=d.shift)
    p.add_argument("--text-scale", type=float, default=d.text_scale)
    p.add_argument("--img-scale", type=float, default=d.img_scale)
    p.add_argument("--renorm-type", default=d.renorm_type, choices=["global", "channel", "text_channel"])
    p.add_argument("--renorm-min", type=float, default=d.renorm_min)
    p.add_argument("--size", default="x".join(map(str, d.size)),
                   help="output WIDTHxHEIGHT (Scone's 1024x1024), or 'target'")  # fmt: skip
    p.add_argument("--transforms", default=d.transforms, choices=["scone", "checkpoint"],
                   help="scone: Scone's inference resize (VAE 1024/512, ViT 980/224); checkpoint: "
                   "the sizes it was trained with")  # fmt: skip
    a = p.parse_args(argv)
    if a.steps < 2:
        print("scone-train sample: --steps must be >= 2", file=sys.stderr)
        return 2
    try:
        size = None if a.size == "target" else tuple(int(v) for v in a.size.lower().split("x"))
    except ValueError:
        size = ()
    if size is not None and (len(size) != 2 or min(size) < 1):
        print(f"scone-train sample: --size must be WIDTHxHEIGHT or target, got {a.size!r}", file=sys.stderr)
        return 2
    s = SamplerSettings(
        a.steps,
        a.shift,
        a.text_scale,
        a.img_scale,
        d.interval,
        a.renorm_type,
        a.renorm_min,
        size,
        a.transforms,
    )
    recs = render_split(a.checkpoint, a.shards, a.out, s, a.split, a.limit, a.seed, a.dtype)
    log.info("wrote %d images and contact_sheet.png to %s", len(recs), a.out)
    return 0 if recs else 1
