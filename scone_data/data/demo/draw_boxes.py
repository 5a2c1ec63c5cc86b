"""Draw the demo's hand-made COCO boxes onto copies of its images, to check them by eye.

    python -m scone_data.data.demo.draw_boxes --out /tmp/demo_check

Writes one PNG per image (``{image_id:02d}_{name}.png``) with every box outlined and labelled
``{annotation_id}:{label}``. Images are referenced as ``pkg://<package>/<path inside it>``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from PIL import Image, ImageDraw

COCO_PATH = Path(__file__).with_name("coco.json")
COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 128, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 128, 0),
]


def resolve(uri: str) -> Path:
    """``pkg://skimage/data/coffee.png`` -> the file inside the installed package."""
    package, _, rel = uri.removeprefix("pkg://").partition("/")
    return Path(importlib.import_module(package).__file__).parent / rel


def draw_all(out: Path, coco_path: Path = COCO_PATH) -> list[Path]:
    coco = json.loads(coco_path.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for img in coco["images"]:
        im = Image.open(resolve(img["file_name"])).convert("RGB")
        draw = ImageDraw.Draw(im)
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            colour = COLOURS[i % len(COLOURS)]
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=2)
            text = f"{ann['id']}:{names[ann['category_id']]}"
            tx, ty = x + 3, max(y + 3, 0)
            draw.rectangle(draw.textbbox((tx, ty), text), fill=(0, 0, 0))
            draw.text((tx, ty), text, fill=colour)
        path = out / f"{img['id']:02d}_{Path(img['file_name']).stem}.png"
        im.save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the drawn copies")
    parser.add_argument("--coco", type=Path, default=COCO_PATH, help="COCO json (default: the demo's)")
    args = parser.parse_args(argv)
    for path in draw_all(args.out, args.coco):
        print(path)


if __name__ == "__main__":
    main()
