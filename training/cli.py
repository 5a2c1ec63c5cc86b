"""`scone-train CONFIG [key=value ...]`: run one training stage (see recipe.py).
`scone-train sample CHECKPOINT --shards DIR --out DIR [--steps N] [--limit K]`: render a split (sample.py).

Several GPUs: `torchrun --nproc_per_node=8 -m scone_train.cli CONFIG [key=value ...]`.
"""

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(
            "\nexample: scone-train training/configs/stage1_step1.yaml preset=tiny model.path=null "
            "data.shards=[out/demo/shards] train.steps=5 train.warmup_steps=1"
        )
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if argv[0] == "sample":
        from scone_train.sample import main as sample_main

        return sample_main(argv[1:])
    from scone_train.config import load_config
    from scone_train.recipe import train

    try:
        cfg = load_config(argv[0], argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"scone-train: {e}", file=sys.stderr)
        return 2
    losses = train(cfg)
    if losses:
        logging.getLogger("scone_train").info("done: %d steps, last loss %.6f", len(losses), losses[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
