"""Draw the truth set's hand-made COCO boxes onto copies of its images, to check them by eye.

    python -m scone_data.data.truth.draw_boxes --out /tmp/truth_check

Same output as the demo's script (one PNG per image, boxes labelled ``{annotation_id}:{label}``);
it reuses that script with this folder's ``coco.json``. Images are resolved through
``scone_data.sources.base.resolve_path`` (``pkg://<package>/<path inside it>``), so the packages
need not be imported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scone_data.data.demo import draw_boxes as _demo
from scone_data.sources.base import resolve_path

COCO_PATH = Path(__file__).with_name("coco.json")


def draw_all(out: Path, coco_path: Path = COCO_PATH) -> list[Path]:
    original = _demo.resolve
    _demo.resolve = lambda uri: Path(resolve_path(uri))
    try:
        return _demo.draw_all(out, coco_path)
    finally:
        _demo.resolve = original


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the drawn copies")
    parser.add_argument("--coco", type=Path, default=COCO_PATH, help="COCO json (default: the truth set's)")
    args = parser.parse_args(argv)
    for path in draw_all(args.out, args.coco):
        print(path)


if __name__ == "__main__":
    main()
