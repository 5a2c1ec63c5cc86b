"""Training throughput of the trainer's decoder: packed sequences against padded, unpacked batches.

    python bench/gpu_train.py --out bench_train.json          # one GPU (bf16 autocast, flex attention)
    python bench/gpu_train.py --smoke --out /tmp/smoke.json   # tiny sizes, CPU, dense attention

What is timed: full training steps (forward, backward, AdamW with fp32 master weights) of the
trainer's Qwen2-MoT decoder (`scone_train.llm`) plus a velocity head on the target tokens, on synthetic
Scone-shaped samples (reference VAE block, reference ViT block, causal instruction, noised target;
MoT routing as in training). The frozen ViT and VAE are not timed (they run under no_grad and are
small next to the decoder). Inputs are random embeddings, so the embedding lookup is left out.

- packed: samples concatenated up to `budget` tokens per step, one sequence, attention from the
  trainer's own layout (flex_attention with a block mask on CUDA; building the block mask evaluates
  the rule over all L x L pairs once per step, and that time is inside the timed step).
- padded: the same samples in the same order, batched B at a time with B = budget // longest, each
  padded to the longest of its batch; SDPA over (B, L) with a per-sample boolean mask (also built
  inside the timed step).
Useful tokens = real sample tokens. Model FLOPs per useful token = 6 x active matmul parameters (one
expert per token, head included; embeddings and lm_head excluded, as the trainer never runs them) plus
attention: 4 x layers x heads x head_dim x visible (query, key) pairs, x3 for forward + backward.
MFU = model FLOPs of useful tokens per second / the bf16 matmul peak measured at the start of the run.
Targets (one H100): MFU >= 45 %, packed useful tokens/s >= 1.5 x padded.
"""

import argparse
import json
import platform
import random
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
try:
    import scone_train  # noqa: F401
except (
    ImportError
):  # a bare checkout (the GPU machine has no editable install): load training/ as scone_train
    import importlib.util

    sys.path.insert(0, str(ROOT))  # scone_data (the schemas the trainer reads) from the checkout too
    _spec = importlib.util.spec_from_file_location(
        "scone_train", ROOT / "training" / "__init__.py", submodule_search_locations=[str(ROOT / "training")]
    )
    sys.modules["scone_train"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["scone_train"])

sys.path.insert(0, str(ROOT / "bench"))
from gpu_common import matmul_peak, sync  # noqa: E402
from scone_train.attention import allowed, build_attention, token_layout  # noqa: E402
from scone_train.llm import LLMConfig, Qwen2MoTForCausalLM  # noqa: E402

# GPU presets, both ~1-1.5B parameters in the decoder with both experts (embeddings and lm_head
# excluded: the trainer never runs them for these samples):
# - wide: Qwen2-1.5B shapes per expert (hidden 1536), 12 layers: 1.12B, 0.56B active per token;
# - deep: Qwen2-0.5B shapes per expert (hidden 896), 24 layers: 0.72B, 0.36B active per token.
# Wider matmuls keep the GPU busier, so `wide` is the default; `deep` shows how MFU falls with width.
PRESETS = {
    "wide": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
    "deep": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
}  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=384)  # fmt: skip
# Sample shapes in tokens. GPU: Scone's sizes (VAE 512..1024 px at 16 px/token, ViT 224..518 px at 14).
FULL_SHAPES = dict(vae=[1024, 2304, 4096], vit=[256, 729, 1369], text=(16, 64), refs=(1, 2), budget=16384)
TINY_SHAPES = dict(vae=[16, 36, 64], vit=[16, 25], text=(4, 12), refs=(1, 2), budget=512)
LATENT_DIM = 64  # 2x2 patches of 16 latent channels


def make_samples(shapes: dict, n: int, seed: int) -> list[list[tuple]]:
    """n samples, each a list of splits (length, mode, expert) in the trainer's order."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        splits = []
        for _ in range(rng.randint(*shapes["refs"])):
            splits.append((rng.choice(shapes["vae"]) + 2, "full", "gen"))
            splits.append((rng.choice(shapes["vit"]) + 2, "full", "und"))
        splits.append((rng.randint(*shapes["text"]), "causal", "und"))
        splits.append((rng.choice(shapes["vae"]) + 2, "noise", "gen"))
        out.append(splits)
    return out


def _index(samples, device) -> dict:
    """und/gen/target row indexes and the attention layout of samples laid end to end."""
    modes, lens, sample_lens, gen, tgt, pos = [], [], [], [], [], 0
    for s in samples:
        sample_lens.append(sum(n for n, _, _ in s))
        for n, mode, expert in s:
            lens.append(n)
            modes.append(mode)
            if expert == "gen":  # framing tokens (first/last) are text tokens, as in training
                gen.extend(range(pos + 1, pos + n - 1))
                if mode == "noise":
                    tgt.extend(range(pos + 1, pos + n - 1))
            pos += n
    gen_t = torch.tensor(gen, dtype=torch.long)
    is_gen = torch.zeros(pos, dtype=torch.bool)
    is_gen[gen_t] = True
    return {
        "seq_len": pos,
        "sample_lens": sample_lens,
        "split_lens": lens,
        "attn_modes": modes,
        "und": torch.nonzero(~is_gen).flatten().to(device),
        "gen": gen_t.to(device),
        "target": torch.tensor(tgt, dtype=torch.long, device=device),
    }


def visible_pairs(samples) -> int:
    """(query, key) pairs the trainer's attention rule allows, summed over samples, in closed form:
    a split sees every earlier non-noise split in full, and itself fully (or causally)."""
    total = 0
    for s in samples:
        before = 0
        for n, mode, _ in s:
            total += n * before + (n * (n + 1) // 2 if mode == "causal" else n * n)
            before += 0 if mode == "noise" else n
    return total


def visible_pairs_by_mask(samples) -> int:
    """The same count from the trainer's mask (L x L per sample; for tests)."""
    total = 0
    for s in samples:
        t = token_layout([sum(n for n, _, _ in s)], [n for n, _, _ in s], [m for _, m, _ in s], "cpu")
        idx = t["pos"]
        total += int(allowed(t, idx[:, None], idx[None, :]).sum())
    return total


class PaddedAttention:
    """SDPA over (B, L) padded samples with a boolean (B, 1, L, L) mask (pads see only themselves).

    k/v heads are repeated to the query heads (as transformers' SDPA path does): with a mask and GQA,
    SDPA would fall back to its math kernel; repeated, it can use the memory-efficient kernel."""

    def __init__(self, samples, L: int, device):
        masks = []
        for s in samples:
            n = sum(k for k, _, _ in s)
            t = token_layout([n], [k for k, _, _ in s], [m for _, m, _ in s], device)
            ok = torch.eye(L, dtype=torch.bool, device=device)
            idx = t["pos"]
            ok[:n, :n] = allowed(t, idx[:, None], idx[None, :])
            masks.append(ok)
        self.mask, self.B, self.L = torch.stack(masks)[:, None], len(samples), L

    def __call__(self, q, k, v):
        B, L = self.B, self.L
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        q, k, v = (x.view(B, L, x.shape[1], x.shape[2]).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return out.transpose(1, 2).reshape(B * L, out.shape[1], out.shape[3])


def packed_batches(samples, budget, device, backend):
    """[(index, attention, useful tokens)]: greedy packing in order under `budget` tokens."""
    out, cur, n = [], [], 0
    for s in samples:
        L = sum(k for k, _, _ in s)
        if cur and n + L > budget:
            out.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += L
    if cur:
        out.append(cur)
    res = []
    for group in out:
        ix = _index(group, device)
        # the attention is built inside the timed step, as the trainer builds it for every batch
        res.append((ix, partial(build_attention, ix, device, backend), ix["seq_len"], visible_pairs(group)))
    return res


def padded_batches(samples, budget, device):
    """Batches of B = budget // longest samples in order, each padded to the longest of its batch."""
    res, i = [], 0
    while i < len(samples):
        L = sum(k for k, _, _ in samples[i])
        B = max(1, budget // L)
        while True:  # shrink B until B x (longest of the B) fits the budget
            L = max(sum(k for k, _, _ in s) for s in samples[i : i + B])
            if B == 1 or B * L <= budget:
                break
            B -= 1
        group = samples[i : i + B]
        i += B
        padded = [s + [(L - sum(k for k, _, _ in s), "full", "und")] for s in group]
        padded = [[x for x in s if x[0] > 0] for s in padded]
        ix = _index(padded, device)
        useful = sum(sum(k for k, _, _ in s) for s in group)
        res.append((ix, partial(PaddedAttention, group, L, device), useful, visible_pairs(group)))
    return res


def run_mode(model, head, opt, batches, steps, warmup, device, bf16, cfg: LLMConfig) -> dict:
    H = cfg.hidden_size
    g = torch.Generator(device=device).manual_seed(0)
    times, useful, seen, pairs = [], 0, 0, 0
    for k in range(warmup + steps):
        ix, make_attn, n_useful, n_pairs = batches[k % len(batches)]
        L = ix["seq_len"]
        x = torch.randn(L, H, device=device, generator=g)
        target = torch.randn(len(ix["target"]), LATENT_DIM, device=device, generator=g)
        sync(device)
        t0 = time.perf_counter()
        attn = make_attn()  # the mask/block mask of this batch: part of every real step
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pos = torch.arange(L, device=device)
            h = model(x, pos, ix["und"], ix["gen"], lambda i, a=attn: a)
            loss = F.mse_loss(head(h[ix["target"]]).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
            useful += n_useful
            seen += L
            pairs += n_pairs
    dt = sum(times)
    return {"steps": steps, "seconds": dt, "useful_tokens": useful, "tokens": seen, "visible_pairs": pairs,
            "pad_fraction": 1 - useful / seen, "useful_tokens_per_s": useful / dt,
            "step_s": dt / steps, "loss": float(loss.detach())}  # fmt: skip


def active_matmul_params(cfg: LLMConfig) -> int:
    """Matmul parameters one token passes through: one expert's attention + MLP per layer, + the head."""
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    attn = h * cfg.num_attention_heads * d * 2 + h * cfg.num_key_value_heads * d * 2
    return cfg.num_hidden_layers * (attn + 3 * h * i) + h * LATENT_DIM


def measure(model, head, opt, samples, budget, steps, warmup, device, bf16, backend, cfg, n_active, peak):
    """Packed and padded runs over the same samples: ({mode: result}, seconds to build the batches)."""
    t0 = time.perf_counter()
    modes = {"packed": packed_batches(samples, budget, device, backend),
             "padded": padded_batches(samples, budget, device)}  # fmt: skip
    build_s = time.perf_counter() - t0
    results = {}
    for name, batches in modes.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = run_mode(model, head, opt, batches, steps, warmup, device, bf16, cfg)
        attn_flops = (
            3 * 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * r["visible_pairs"]
        )
        flops = 6 * n_active * r["useful_tokens"] + attn_flops
        r["model_flops_per_s"] = flops / r["seconds"]
        r["mfu"] = r["model_flops_per_s"] / peak
        r["attention_flop_share"] = attn_flops / flops
        r["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        results[name] = r
    return results, build_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (fp32, dense attention)")
    p.add_argument("--out", default="bench/out/gpu_train.json")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 20, smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per mode (default 5, smoke 1)")
    p.add_argument("--samples", type=int, default=None, help="distinct synthetic samples (cycled)")
    p.add_argument(
        "--budget", type=int, default=None, help="tokens per packed step (default 16384, smoke 512)"
    )
    p.add_argument("--preset", default="wide", choices=sorted(PRESETS), help="GPU model size (see PRESETS)")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.smoke
    device = torch.device("cuda" if cuda else "cpu")
    size, shapes = (TINY, TINY_SHAPES) if a.smoke else (PRESETS[a.preset], FULL_SHAPES)
    shapes = dict(shapes, budget=a.budget or shapes["budget"])
    steps, warmup = a.steps or (2 if a.smoke else 20), a.warmup or (1 if a.smoke else 5)
    bf16, backend = cuda, "flex" if cuda else "dense"
    torch.manual_seed(0)
    peak = matmul_peak(
        device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 256, 50 if cuda else 5
    )

    cfg = LLMConfig(**size)
    model = Qwen2MoTForCausalLM(cfg).to(device)
    head = torch.nn.Linear(cfg.hidden_size, LATENT_DIM).to(device)
    params = [*model.model.layers.parameters(), *model.model.norm_moe_gen.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), fused=cuda)
    n_total = sum(q.numel() for q in model.parameters()) + sum(q.numel() for q in head.parameters())
    n_active = active_matmul_params(cfg)

    samples = make_samples(shapes, a.samples or (16 if a.smoke else 64), seed=0)
    while True:  # on running out of GPU memory, halve the token budget and say so in the report
        try:
            results, build_s = measure(model, head, opt, samples, shapes["budget"], steps, warmup, device, bf16,
                                       backend, cfg, n_active, peak)  # fmt: skip
            break
        except torch.cuda.OutOfMemoryError:
            if shapes["budget"] <= 2048:
                raise
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            shapes = dict(shapes, budget=shapes["budget"] // 2)
            print(f"out of GPU memory: retrying with a budget of {shapes['budget']} tokens", flush=True)
    speedup = results["packed"]["useful_tokens_per_s"] / results["padded"]["useful_tokens_per_s"]
    report = {
        "smoke": a.smoke,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": "bf16 autocast, fp32 master weights" if bf16 else "fp32",
        "attention_packed": backend,
        "attention_padded": "sdpa + (B,1,L,L) bool mask",
        "preset": "tiny" if a.smoke else a.preset,
        "config": size,
        "shapes": shapes,
        "params_total": n_total,
        "params_active_matmul_per_token": n_active,
        "peak_matmul_flops_per_s": peak,
        "batch_build_seconds": build_s,
        "packed": results["packed"],
        "padded": results["padded"],
        "packing_speedup_useful_tokens": speedup,
        "targets": {
            "mfu_min": 0.45,
            "packing_speedup_min": 1.5,
            "mfu_met": results["packed"]["mfu"] >= 0.45,
            "packing_met": speedup >= 1.5,
        },  # fmt: skip
    }
    print(f"device {report['device']}  params {n_total / 1e6:.1f}M (active/token {n_active / 1e6:.1f}M)  "
          f"peak {peak / 1e12:.2f} TFLOP/s")  # fmt: skip
    print(f"{'mode':8} {'useful tok/s':>13} {'pad %':>6} {'step s':>8} {'MFU %':>6} {'attn %':>6}")
    for name, r in results.items():
        print(f"{name:8} {r['useful_tokens_per_s']:13.1f} {100 * r['pad_fraction']:6.1f} {r['step_s']:8.3f} "
              f"{100 * r['mfu']:6.1f} {100 * r['attention_flop_share']:6.1f}")  # fmt: skip
    print(f"packing speedup (useful tokens/s): {speedup:.2f}x  targets: MFU >= 45% "
          f"{'met' if report['targets']['mfu_met'] else 'NOT met'}, packing >= 1.5x "
          f"{'met' if report['targets']['packing_met'] else 'NOT met'}")  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
