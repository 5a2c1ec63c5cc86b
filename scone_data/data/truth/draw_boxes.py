"""Draw the truth set's hand-made COCO boxes onto copies of its images, to check them by eye.

    python -m scone_data.data.truth.draw_boxes --out /tmp/truth_check

Same output as the demo's script (one PNG per image, boxes labelled ``{annotation_id}:{label}``):
it is that script with this folder's ``coco.json``.
"""

from __future__ import annotations

from pathlib import Path

from scone_data.data.demo import draw_boxes as _demo

COCO_PATH = Path(__file__).with_name("coco.json")


def draw_all(out: Path, coco_path: Path = COCO_PATH) -> list[Path]:
    return _demo.draw_all(out, coco_path)


def main(argv: list[str] | None = None) -> None:
    _demo.main(argv, coco_path=COCO_PATH, doc=__doc__)


if __name__ == "__main__":
    main()
