"""Draw the demo's hand-made COCO boxes onto copies of its images, to check them by eye.

    python -m scone_data.data.demo.draw_boxes --out /tmp/demo_check

Writes one PNG per image (``{image_id:02d}_{name}.png``) with every box outlined and labelled
``{annotation_id}:{label}``. Images are referenced as ``pkg://<package>/<path inside it>`` and
resolved by ``scone_data.sources.base.resolve_path`` (without importing the package). The truth
set's script (``scone_data.data.truth.draw_boxes``) is this one with its own ``coco.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from scone_data.sources.base import resolve_path

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


def draw_all(out: Path, coco_path: Path = COCO_PATH) -> list[Path]:
    coco = json.loads(coco_path.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for img in coco["images"]:
        im = Image.open(resolve_path(img["file_name"])).convert("RGB")
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


def main(argv: list[str] | None = None, coco_path: Path = COCO_PATH, doc: str = __doc__) -> None:
    """The command line; ``coco_path`` and ``doc`` let another annotated set reuse it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the drawn copies")
    parser.add_argument(
        "--coco", type=Path, default=coco_path, help=f"COCO json (default: {coco_path.parent.name}'s)"
    )
    args = parser.parse_args(argv)
    for path in draw_all(args.out, args.coco):
        print(path)


if __name__ == "__main__":
    main()
