"""How full the packed batches are under each packing rule, on one fixed stream of sample lengths.

    python -m scone_train.packing_fill [--samples 20000] [--seed 0]

The stream: per sample 1 to 3 references (50 / 35 / 15 %) and a target, each image drawn from common
photo sizes and resized by the stage configs' transforms (VAE 1024/512 stride 16, ViT 518/224
stride 14), and an instruction of 15 to 60 tokens; lengths counted as SequenceBuilder.count does.
Budget 26,496 tokens (Scone's scripts), BAGEL's buffer defaults (prefer 16,384, 50 entries). Fill =
tokens in closed batches / (batches * budget); the batch left open when the stream ends is not counted.
"""

import argparse
import json
import random

from scone_train.data import Resize
from scone_train.packer import Packer

SIZES = [(1024, 1024), (768, 1024), (1024, 768), (512, 512), (1024, 576), (576, 1024), (800, 600), (640, 480),
         (1536, 1024), (1024, 1536), (900, 1200), (1280, 720), (600, 800), (400, 400)]  # fmt: skip
VAE, VIT = Resize(1024, 512, 16), Resize(518, 224, 14)


def sample_lengths(n: int, seed: int) -> list[int]:
    """Token counts of `n` samples (see the module doc)."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        refs = rng.choices([1, 2, 3], weights=[50, 35, 15])[0]
        tokens = 0
        for _ in range(refs):
            w, h = rng.choice(SIZES)
            (vw, vh), (tw, th) = VAE.size(w, h), VIT.size(w, h)
            tokens += (vw // 16) * (vh // 16) + 2 + (tw // 14) * (th // 14) + 2
        w, h = VAE.size(*rng.choice(SIZES))
        out.append(tokens + rng.randint(15, 60) + 2 + (w // 16) * (h // 16) + 2)
    return out


def fill(lengths: list[int], budget: int = 26496, **packer) -> dict:
    """Pack `lengths` with Packer(budget, **packer) -> {"fill", "batches", "samples_dropped"}."""
    p = Packer(budget, **packer)
    entries = [((0, i), {"num_tokens": n}) for i, n in enumerate(lengths)]
    batches = [b for b, _ in p.batches(entries)]
    packed = sum(len(b) for b in batches) + len(p.open) + len(p.buffer)
    used = sum(it["num_tokens"] for b in batches for _, it in b)
    return {
        "fill": round(used / (len(batches) * budget), 4),
        "batches": len(batches),
        "samples_dropped": len(lengths) - packed,
    }


def main(argv=None) -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--samples", type=int, default=20000)
    a.add_argument("--seed", type=int, default=0)
    args = a.parse_args(argv)
    lengths = sample_lengths(args.samples, args.seed)
    rules = {
        "flush": {"rule": "flush"},
        "buffer_upstream_drops": {"rule": "buffer", "keep_overflow": False},
        "buffer": {"rule": "buffer"},
        "buffer_fit": {"rule": "buffer_fit"},
    }
    res = {name: fill(lengths, **kw) for name, kw in rules.items()}
    print(
        json.dumps(
            {"samples": args.samples, "seed": args.seed, "mean_tokens": sum(lengths) / len(lengths), **res}
        )
    )


if __name__ == "__main__":
    main()
