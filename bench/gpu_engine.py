"""GPU benchmark: images/s of the data engine's two model stages at batch sizes 1..N.

* insertion: ``ImageEdit.insert`` (distractor insertion on a photo, scone_data/stages/edit.py) through
  FLUX.1 Kontext or Qwen-Image-Edit; batch size b = b photos per ``insert`` call = one pipeline call;
* verification: ``VlmVerifier.verify_many`` (SconeEval's judge questions, scone_data/stages/vlm.py)
  through Qwen2.5-VL or Qwen3-VL; each sample asks 3 questions (intended subject present, distractor
  absent, reference phrase unambiguous), each one image; batch size b = b prompts per ``generate``
  call (b samples per timed ``verify_many``), images/s = prompt images/s, samples/s = that / 3.

bf16 on a GPU (``--no-bf16``: fp32; CPUs run fp32). Each batch size is warmed up by one untimed call
(insertion: ``--warmup-steps`` denoising steps, the same shapes), then ``--iters`` calls are timed
with a device sync on either side. Peak memory per batch size: ``torch.cuda.max_memory_allocated``
(reset before each; the edit model is freed before the VLM loads), on a CPU the process's peak RSS so
far (it only grows). Prints a table, writes JSON (``--out``).

Weights: ``--edit-dir`` / ``--vlm-dir`` (a diffusers pipeline / transformers model directory, loaded as
``model: local``), else the first registered snapshot found under ``--assets`` (default $GPU_ASSETS or
.whl/assets, as bench/gpu_run.sh) by its cache name, e.g. ``black-forest-labs--FLUX.1-Kontext-dev``,
``Qwen--Qwen-Image-Edit``, ``Qwen--Qwen2.5-VL-7B-Instruct``, ``Qwen--Qwen3-VL-8B-Instruct``.
``--find-weights`` prints what would be used (exit 1 when either is missing). Photos: ``--image-dir``
(default $ASSETS/images when present), else synthetic. ``--smoke``: the stages' tiny presets (random
weights built in code), 64x64 images, 2 denoising steps, one torch thread; ~15 s on a CPU.

    python bench/gpu_engine.py --out bench/out/gpu/gpu_engine.json      # GPU, weights under .whl/assets
    python bench/gpu_engine.py --smoke --out /tmp/engine_smoke.json     # CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path
from gpu_common import sync  # noqa: E402

EDIT_SNAPSHOTS = ("flux1_kontext_dev", "qwen_image_edit")  # registry names, in order of preference
VLM_SNAPSHOTS = (
    "qwen2_5_vl_7b_instruct",
    "qwen3_vl_8b_instruct",
    "qwen2_5_vl_3b_instruct",
    "qwen3_vl_4b_instruct",
)
PROMPTS = ["add another red mug to the left of the mug", "add a second small dog next to the dog",
           "add another blue bicycle behind the bicycle", "add a green cup beside the cup"]  # fmt: skip
# What the judge reads of a sample record (sample_questions): one intended mug, a cup distractor
# among the reference's candidates -> 3 questions, each with one image.
RECORD = {"target": {"member": "target.jpg", "boxes": [{"label": "mug"}]},
          "references": [{"member": "ref0.jpg", "expression": "the red mug on the left",
                          "candidates": [{"label": "mug", "intended": True}, {"label": "cup", "intended": False}]}]}  # fmt: skip
QUESTIONS_PER_SAMPLE = 3


def batch_sizes(n: int) -> list[int]:
    """1, 2, 4, ... below ``n``, then ``n``."""
    out = [b for b in (2**k for k in range(n.bit_length())) if b < n]
    return out + [n]


def find_weights(assets: Path) -> tuple[str | None, str | None]:
    """(edit snapshot name, VLM snapshot name) of the first registered snapshot directories under ``assets``."""
    from scone_data.models import snapshots

    def first(names):
        return next((n for n in names if (assets / snapshots.SNAPSHOTS[n].dirname).is_dir()), None)

    return first(EDIT_SNAPSHOTS), first(VLM_SNAPSHOTS)


def images(n: int, h: int, w: int, image_dir: Path | None) -> list[np.ndarray]:
    """n (h, w, 3) uint8 RGB photos: the files of ``image_dir`` resized and cycled, else smooth synthetic ones."""
    from PIL import Image

    files = (
        sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if image_dir
        else []
    )
    if files:
        srcs = [np.asarray(Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC)) for f in files]
        return [srcs[i % len(srcs)] for i in range(n)]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    return [(255 * (0.5 + 0.5 * np.sin(6 * np.stack([xx, yy, xx + yy], -1) + rng.uniform(0, 6, 3)))).astype(np.uint8)
            for _ in range(n)]  # fmt: skip


def peak_mem_gib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # KiB on Linux


def sweep(name: str, call, sizes: list[int], iters: int, dev: torch.device, per_call: int = 1) -> list[dict]:
    """Rows of images/s for ``call(b)`` (which handles ``b * per_call`` images) at each batch size b."""
    rows = []
    for b in sizes:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        call(b, warm=True)  # warm-up: kernels, allocator and caches for this batch size
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            call(b)
        sync(dev)
        s = time.perf_counter() - t0
        n = b * per_call * iters
        rows.append({"stage": name, "batch_size": b, "calls": iters, "images": n, "seconds": s,
                     "images_per_s": n / s, "seconds_per_call": s / iters, "peak_mem_gib": peak_mem_gib(dev)})  # fmt: skip
        print(f"[{name}] batch {b}: {n / s:.3f} images/s", flush=True)
    return rows


def bench_insert(args, dev, photos, sizes) -> dict:
    from scone_data.models.edit import pipeline_name
    from scone_data.stages.edit import PIPELINES, ImageEdit

    if args.smoke:
        kw = {"model": "tiny", "num_inference_steps": args.steps or 2}
    else:
        kw = {"model": args.edit_model, "weights_dir": str(args.edit_dir), "num_inference_steps": args.steps or 28,
              "call": json.loads(args.edit_call)}  # fmt: skip
        pipe = PIPELINES.get(args.edit_model) or pipeline_name(args.edit_dir)
        if pipe.startswith("QwenImageEdit"):  # the model card's settings: CFG 4.0 on a blank negative prompt
            kw.update(guidance_scale=None, true_cfg_scale=4.0, negative_prompt=" ")
    stage = ImageEdit(**kw, batch_size=max(sizes), bf16=args.bf16 and dev.type == "cuda", device=str(dev),
                      num_gpus=1 if dev.type == "cuda" else 0, verify_sha256=False)  # fmt: skip
    problems = stage.validate()
    if problems:
        raise SystemExit("bad edit settings: " + "; ".join(problems))
    t0 = time.perf_counter()
    stage.setup()
    stage._ready = True  # loaded outside the timed region, as a long-running worker would be
    setup_s = time.perf_counter() - t0
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(photos))]
    steps = stage.num_inference_steps

    def call(b, warm=False):
        # the warm-up call runs the same shapes with fewer denoising steps (each is the same work)
        stage._editor.num_inference_steps = min(steps, args.warmup_steps) if warm else steps
        out = stage.insert(photos[:b], prompts[:b], list(range(b)))
        assert len(out) == b and out[0][0].shape[2] == 3, (len(out), out[0][0].shape)

    rows = sweep("insert", call, sizes, args.iters, dev)
    info = {"model": stage.model, "weights_dir": kw.get("weights_dir"), "pipeline": stage._pipeline,
            "steps": steps, "warmup_steps": min(steps, args.warmup_steps), "call": stage._editor.call, "dtype": "bf16" if stage._bf16 else "fp32", "setup_s": setup_s,
            "image_hw": list(photos[0].shape[:2]), "rows": rows}  # fmt: skip
    return info


def bench_verify(args, dev, photos, sizes) -> dict:
    from scone_data.stages.vlm import VlmVerifier

    kw = {"model": "tiny"} if args.smoke else {"model": args.vlm_model, "weights_dir": str(args.vlm_dir)}
    bf16 = args.bf16 and dev.type == "cuda"
    stage = VlmVerifier(**kw, bf16=bf16, device=str(dev), num_gpus=1 if dev.type == "cuda" else 0,
                        verify_sha256=False)  # fmt: skip
    problems = stage.validate()
    if problems:
        raise SystemExit("bad VLM settings: " + "; ".join(problems))
    t0 = time.perf_counter()
    stage.setup()
    stage._ready = True
    setup_s = time.perf_counter() - t0
    h, w = photos[0].shape[:2]
    samples = [
        (RECORD, {"target.jpg": p, "ref0.jpg": p[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]}) for p in photos
    ]

    def call(b, warm=False):
        stage.batch_size = b  # prompts per generate call: the b samples' 3b prompts in 3 calls
        out = stage.verify_many(samples[:b])
        assert len(out) == b and all(len(r["answers"]) == QUESTIONS_PER_SAMPLE for r in out), out[0]

    rows = sweep("verify", call, sizes, args.iters, dev, QUESTIONS_PER_SAMPLE)
    for r in rows:
        r["samples_per_s"] = r["images_per_s"] / QUESTIONS_PER_SAMPLE
    info = {"model": stage.model, "weights_dir": kw.get("weights_dir"), "dtype": "bf16" if bf16 else "fp32",
            "max_new_tokens": stage.max_new_tokens, "questions_per_sample": QUESTIONS_PER_SAMPLE,
            "setup_s": setup_s, "image_hw": [h, w], "rows": rows}  # fmt: skip
    return info


def _resolve_weights(args, ap) -> None:
    """Fill edit_dir/edit_model and vlm_dir/vlm_model from the flags or the assets folder."""
    from scone_data.models import snapshots

    edit, vlm = find_weights(args.assets)
    for kind, name in (("edit", edit), ("vlm", vlm)):
        given = getattr(args, f"{kind}_dir")
        if given:
            setattr(args, f"{kind}_model", "local")
        elif name:
            s = snapshots.SNAPSHOTS[name]
            setattr(args, f"{kind}_dir", args.assets / s.dirname)
            setattr(args, f"{kind}_model", s.arch)
    if args.find_weights or not args.smoke:
        names = {"edit": [snapshots.SNAPSHOTS[n].dirname for n in EDIT_SNAPSHOTS],
                 "vlm": [snapshots.SNAPSHOTS[n].dirname for n in VLM_SNAPSHOTS]}  # fmt: skip
        missing = [f"--{k}-dir (or one of {', '.join(v)} under {args.assets})" for k, v in names.items()
                   if not getattr(args, f"{k}_dir")]  # fmt: skip
        if args.find_weights:
            print(f"edit: {args.edit_dir} ({args.edit_model})\nvlm: {args.vlm_dir} ({args.vlm_model})")
            sys.exit(1 if missing else 0)
        if missing:
            ap.error("no weights: give " + "; ".join(missing))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny presets, 64x64 images, CPU-friendly")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("GPU_ASSETS", ".whl/assets")))
    ap.add_argument("--edit-dir", type=Path, default=None, help="a diffusers image-edit pipeline directory")
    ap.add_argument("--vlm-dir", type=Path, default=None, help="a Qwen2.5-VL / Qwen3-VL model directory")
    ap.add_argument("--find-weights", action="store_true", help="print the weights that would be used, exit")
    ap.add_argument(
        "--image-dir", type=Path, default=None, help="photos (default: $ASSETS/images if present)"
    )
    ap.add_argument("--size", type=int, default=1024, help="photo height and width in pixels (smoke 64)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 28; smoke 2)")
    ap.add_argument("--edit-max-batch", type=int, default=None, help="insertion batch sizes 1, 2, 4.. up to "
                    "this (default 4; smoke 2)")  # fmt: skip
    ap.add_argument("--vlm-max-batch", type=int, default=None, help="verification batch sizes up to this "
                    "(default 32; smoke 4)")  # fmt: skip
    ap.add_argument("--iters", type=int, default=None, help="timed calls per batch size after one warm-up "
                    "(default 2; smoke 1)")  # fmt: skip
    ap.add_argument("--warmup-steps", type=int, default=2, help="denoising steps of the untimed warm-up call")
    ap.add_argument(
        "--edit-call", default="{}", help="JSON: further pipeline call arguments (ImageEdit.call)"
    )
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    args.edit_model = args.vlm_model = None
    args.iters = args.iters or (1 if args.smoke else 2)
    _resolve_weights(args, ap)

    from scone_data.models import registry

    dev = torch.device(registry.resolve_device(args.device))
    if args.smoke:  # the tiny presets' 32-token limits warn of truncation on every call
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        # one torch thread, as the edit stage's cpu_threads: on a shared 2-core CPU two spinning threads
        # made a tiny verify call take 10 s instead of 0.7 s
        torch.set_num_threads(1)
    size = 64 if args.smoke else args.size
    edit_sizes = batch_sizes(args.edit_max_batch or (2 if args.smoke else 4))
    vlm_sizes = batch_sizes(args.vlm_max_batch or (4 if args.smoke else 32))
    image_dir = args.image_dir or (args.assets / "images" if (args.assets / "images").is_dir() else None)
    photos = images(max(edit_sizes + vlm_sizes), size, size, image_dir)
    print(
        f"engine benchmark on {dev}: insertion batches {edit_sizes}, verification batches {vlm_sizes}",
        flush=True,
    )
    edit = bench_insert(args, dev, photos, edit_sizes)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    verify = bench_verify(args, dev, photos, vlm_sizes)
    import diffusers
    import transformers

    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "smoke": args.smoke,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "bf16": args.bf16 and dev.type == "cuda", "iters": args.iters, "photos": str(image_dir) if image_dir else "synthetic",
        "peak_mem": "torch.cuda.max_memory_allocated per batch size" if dev.type == "cuda" else "process peak RSS so far",
        "insert": edit, "verify": verify, "peak_mem_gib": max(r["peak_mem_gib"] for r in edit["rows"] + verify["rows"]),
    }  # fmt: skip
    print(f"\nInsertion: {edit['pipeline']} ({edit['model']}), {edit['steps']} steps, {size}x{size}, {edit['dtype']}; "
          f"verification: VLM {verify['model']}, {QUESTIONS_PER_SAMPLE} questions/sample, {verify['dtype']}; "
          f"on {res['device']}" + (" (smoke: tiny random-weight presets)" if args.smoke else ""))  # fmt: skip
    print(f"  {'stage':7} {'batch':>5} {'images/s':>10} {'s/call':>9} {'peak GiB':>9}")
    for r in edit["rows"] + verify["rows"]:
        print(f"  {r['stage']:7} {r['batch_size']:5d} {r['images_per_s']:10.3f} {r['seconds_per_call']:9.3f} "
              f"{r['peak_mem_gib']:9.2f}")  # fmt: skip
    print(
        f"  peak memory: {res['peak_mem']}; load s: insert {edit['setup_s']:.1f}, verify {verify['setup_s']:.1f}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
