"""The Scone training recipe for one stage, top to bottom: validate -> setup -> train -> cleanup.

    scone-train training/configs/stage1_step1.yaml data.shards=[out/demo/shards] [key=value ...]

Single process or `torchrun --nproc_per_node=N -m scone_train.cli ...` (FSDP2). Resumes by itself
from `train.output_dir/latest` when that exists (exactly: weights, AdamW state, step, stream
positions per rank and RNG states), and stops after `train.steps` optimizer steps or, when
`train.epochs` is set, as soon as one stream of one rank has completed that many epochs. The noise
of a step comes from a generator keyed by (seed, rank, step) (see step_generator), so a resumed run
draws the same noise as an uninterrupted one. `train.log_keys=true` adds each rank's sample keys to
log.jsonl.
"""

import fnmatch
import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as tdist
from safetensors.torch import load_file, save_file
from scone_train import dist
from scone_train.checkpoint import build_model, load_optimizer, save_model_dir, save_optimizer
from scone_train.data import _seed, list_shards
from scone_train.loader import LoaderState, PackedStream, make_loader
from scone_train.packing import SequenceBuilder, move_batch, sequence_builder

log = logging.getLogger("scone_train")


def set_trainable(model, trainable: list[str], frozen: list[str]) -> list[str]:
    """requires_grad = matches a `trainable` glob and no `frozen` glob. Returns the trained names."""
    names = []
    for name, p in model.named_parameters():
        on = any(fnmatch.fnmatch(name, g) for g in trainable) and not any(
            fnmatch.fnmatch(name, g) for g in frozen
        )
        p.requires_grad_(on)
        if on:
            names.append(name)
    return names


def make_builder(cfg: dict, model, tok) -> SequenceBuilder:
    return sequence_builder(model, tok, cfg["data"], cfg["train"]["seed"])


@torch.no_grad()
def encode_latents(
    vae, model, batch: dict, generator: torch.Generator | None = None, padded: bool = True
) -> torch.Tensor:
    """VAE-encode every image of the batch -> patchified latents (N_vae, p*p*16) fp32.

    padded=True (the default, as BAGEL's and Scone's trainers do): every image is zero-padded at the
    bottom and right to the batch's largest height and width, all are encoded in one call, and each
    latent is cropped back to its own size. Latents near the bottom/right edge then see the padding
    through the encoder's receptive field, so they depend on the other images of the packed batch.
    padded=False encodes the images grouped by size without padding: each image's latents are those
    of the image alone (what sampling uses for references), independent of how samples were packed,
    and no compute is spent on padding; choose it when packing-independent latents matter more than
    matching the upstream recipe (a model fine-tuned from BAGEL has only seen padded encodings).
    """
    imgs = batch["vae_images"]
    if padded:
        h = max(im.shape[1] for im in imgs)
        w = max(im.shape[2] for im in imgs)
        x = imgs[0].new_zeros(len(imgs), imgs[0].shape[0], h, w)
        for i, im in enumerate(imgs):
            x[i, :, : im.shape[1], : im.shape[2]] = im
        z = vae.encode(x, generator=generator).float()
        return model.patchify_latents(list(z), batch["vae_shapes"])  # crops each to its own size
    groups = {}
    for i, im in enumerate(imgs):
        groups.setdefault(tuple(im.shape), []).append(i)
    lat = [None] * len(imgs)
    for _, idx in sorted(groups.items()):
        z = vae.encode(torch.stack([imgs[i] for i in idx]), generator=generator)
        for j, i in enumerate(idx):
            lat[i] = z[j].float()
    return model.patchify_latents(lat, batch["vae_shapes"])


def warmup_factor(step: int, warmup: int) -> float:
    """Learning-rate factor of optimizer step `step` (0-based): linear warm-up from 0, then constant,
    as BAGEL's trainer default (transformers' get_constant_schedule_with_warmup): step / warmup
    while step < warmup, else 1. Scone's scripts keep BAGEL's default of 2,000 warm-up steps, so its
    1,000-step stage-2 runs end at half the peak learning rate."""
    return step / max(1, warmup) if step < warmup else 1.0


def packing_settings(data: dict) -> dict:
    """Packer keyword arguments from a stage's ``data`` section (see packer.py; upstream's defaults)."""
    return {
        "rule": data.get("packing", "buffer"),
        "expected_tokens": data.get("expected_tokens"),
        "prefer_buffer_before": data.get("prefer_buffer_before", 16384),
        "max_buffer_size": data.get("max_buffer_size", 50),
    }


def step_generator(seed: int, rank: int, step: int, device) -> torch.Generator:
    """The RNG of one optimizer step on one rank (VAE posterior sample and flow-matching noise).

    Keyed by (seed, rank, step) rather than carried over from the global RNG: the DataLoader draws its
    base seed from the global RNG whenever an iterator is created (also with 0 workers), which a
    resumed run does at a different point of the stream than an uninterrupted one.
    """
    return torch.Generator(device=device).manual_seed(_seed(seed, "noise", rank, step))


def train(cfg: dict) -> list[float]:
    """Run one stage. Returns the loss of every step run by this call (global mean over ranks)."""
    # ---- validate / environment ------------------------------------------------------------------
    env = dist.init()
    tc, out = cfg["train"], Path(cfg["train"]["output_dir"])
    bf16 = tc["dtype"] == "bf16"
    resume = _latest(out) if tc.get("resume", "auto") == "auto" else None
    if resume is not None:
        cfg = {**cfg, "model": {**cfg["model"], "path": str(resume)}}
    torch.manual_seed(tc["seed"] + env.rank)
    if env.device.type == "cpu":
        torch.set_flush_denormal(
            True
        )  # Adam on near-zero (zero-initialised) heads makes denormals: 10x slower

    # ---- setup: model ----------------------------------------------------------------------------
    model, vae, tok = build_model(cfg)
    trained = set_trainable(model, tc["trainable"], tc["frozen"])
    vae.requires_grad_(False).eval()
    model.vit_model.eval()
    model.to(env.device)
    vae.to(env.device)
    if env.world > 1:
        dist.shard(model, bf16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=tc["lr"], betas=tuple(tc["betas"]), eps=tc["eps"], weight_decay=tc["weight_decay"]
    )

    # ---- setup: state to resume --------------------------------------------------------------------
    step, lstate = 0, LoaderState(cfg["data"]["num_workers"])
    if resume is not None:
        st = json.loads((resume / "trainer_state.json").read_text())
        step = st["step"]
        osd = load_optimizer(resume)
        for g in [*osd["param_groups"], *opt.param_groups]:  # the schedule's key is set again below
            g.pop("initial_lr", None)
        dist.load_optimizer_state(model, opt, osd)
        ls = st["loader"][env.rank]
        lstate = LoaderState(ls["num_workers"], ls["cursors"], ls["next_role"])
        rng = load_file(str(resume / f"rng_rank{env.rank}.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    for g in opt.param_groups:
        g["initial_lr"] = tc["lr"]
    warm = tc["warmup_steps"]
    # last_epoch puts a resumed schedule where it stopped.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_factor(s, warm), last_epoch=step - 1)

    # ---- setup: data -------------------------------------------------------------------------------
    shards = list_shards(_as_list(cfg["data"]["shards"]), cfg["data"].get("split", "train"))
    builder = make_builder(cfg, model, tok)
    stream = PackedStream(
        shards,
        builder,
        tc["seed"],
        env.rank,
        env.world,
        cfg["data"]["num_workers"],
        cfg["data"]["max_tokens"],
        cfg["data"]["max_tokens_per_sample"],
        cursors=lstate.cursors,
        next_role=lstate.next_role,
        tasks=cfg["data"]["tasks"],
        packing=packing_settings(cfg["data"]),
        epochs=tc.get("epochs"),
    )
    batches = iter(make_loader(stream, cfg["data"]["num_workers"]))
    if env.main:
        log.info(
            "stage %s (%s): %d shards, %d trained tensors, from step %d to %d",
            cfg["stage"],
            f"fsdp2 over {env.world} ranks, {env.device.type}" if env.world > 1 else "1 process",
            len(shards),
            len(trained),
            step,
            tc["steps"],
        )
        if tc.get("epochs") is not None:
            log.info("the stage also ends when a stream completes %d epoch(s)", tc["epochs"])

    # ---- train -----------------------------------------------------------------------------------
    losses, t0, tokens = [], time.perf_counter(), 0
    model.train()
    model.vit_model.eval()
    while step < tc["steps"]:
        batch, meta = next(batches)
        if tc.get("epochs") is not None and dist.all_sum(float(meta.get("end", False)), env) > 0:
            log.info("stage %s: epoch %d done after %d steps", cfg["stage"], tc["epochs"], step)
            break  # every rank stops together when any of its streams ran out
        batch = move_batch(batch, env.device)
        batch["attn_backend"] = cfg.get("attention", "dense")
        gen = step_generator(tc["seed"], env.rank, step, env.device)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
            latents = encode_latents(vae, model, batch, gen, tc.get("vae_padding", True))
            res = model(
                batch,
                latents,
                tc["timestep_shift"],
                cfg.get("mask"),
                checkpoint=tc["activation_checkpointing"],
                generator=gen,
            )
        n_target = dist.all_sum(res["mse"].numel(), env)
        # Normalise by the global count of target tokens; FSDP averages gradients over ranks, hence * world.
        loss = res["mse"].sum() * env.world / n_target
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        lstate.consumed(meta)
        step += 1
        global_loss = dist.all_sum(res["mse"].detach().sum(), env) / n_target
        losses.append(global_loss)
        tokens += batch["seq_len"]
        if tc.get("log_keys", False):  # debugging / tests: which samples each rank trained on
            keys = [meta["keys"]]
            if env.world > 1:
                keys = [None] * env.world
                tdist.all_gather_object(keys, meta["keys"])
        if env.main and (step % tc["log_every"] == 0 or step == tc["steps"]):
            dt = time.perf_counter() - t0
            rec = {
                "step": step,
                "loss": round(global_loss, 6),
                "lr": sched.get_last_lr()[0],
                "grad_norm": float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm),
                "tokens_per_s": round(tokens * env.world / dt, 1),
                "samples": meta["samples"],
                "mask_frac": res["mask_frac"],
            }
            if tc.get("log_keys", False):
                rec["keys_per_rank"] = keys
            log.info(json.dumps(rec))
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            t0, tokens = time.perf_counter(), 0
        if step % tc["save_every"] == 0 and step < tc["steps"]:
            save(out / f"step_{step:07d}", cfg, model, vae, tok, opt, step, lstate, env)

    # ---- cleanup ---------------------------------------------------------------------------------
    save(out / "final", cfg, model, vae, tok, opt, step, lstate, env)
    dist.cleanup()
    return losses


def save(path: Path, cfg, model, vae, tok, opt, step: int, lstate: LoaderState, env) -> None:
    """Self-contained checkpoint (see checkpoint.py); each rank adds its own RNG and stream state."""
    msd, osd = dist.full_state(model, opt)
    states = [lstate.to_dict()]
    if env.world > 1:
        states = [None] * env.world
        tdist.all_gather_object(states, lstate.to_dict())
    if env.main:
        save_model_dir(path, msd, model, vae, tok, cfg)
        save_optimizer(path, osd)
        (path / "trainer_state.json").write_text(
            json.dumps({"step": step, "stage": cfg["stage"], "loader": states})
        )
    dist.barrier(env)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(path / f"rng_rank{env.rank}.safetensors"))
    dist.barrier(env)
    if env.main:
        (path.parent / "latest").write_text(path.name)


def _latest(out: Path) -> Path | None:
    f = out / "latest"
    return out / f.read_text().strip() if f.exists() else None


def _as_list(x) -> list:
    return [x] if isinstance(x, str) else list(x)
