"""The demo's hand-made COCO file (scone_data/data/demo/coco.json) is well formed and matches its images."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

import scone_data

COCO_PATH = Path(scone_data.__file__).parent / "data" / "demo" / "coco.json"


def resolve(uri: str) -> Path:
    assert uri.startswith("pkg://"), uri
    package, _, rel = uri.removeprefix("pkg://").partition("/")
    return Path(importlib.import_module(package).__file__).parent / rel


@pytest.fixture(scope="module")
def coco() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(COCO_PATH))


def _labels_per_image(coco: COCO) -> dict[int, Counter]:
    return {
        img_id: Counter(
            coco.cats[a["category_id"]]["name"] for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        )
        for img_id in coco.getImgIds()
    }


def test_loads_with_required_fields(coco: COCO) -> None:
    raw = json.loads(COCO_PATH.read_text())
    assert {"info", "licenses", "images", "annotations", "categories"} <= raw.keys()
    assert "by hand" in raw["info"]["description"]
    assert len(coco.imgs) == 9 and len(coco.anns) == 50  # as scone_data/data/demo/README.md lists them
    license_ids = {lic["id"] for lic in raw["licenses"]}
    assert all(img["license"] in license_ids for img in coco.imgs.values())
    names = [c["name"] for c in coco.cats.values()]
    assert len(names) == len(set(names))
    assert all(n == n.lower() and n.strip() == n and n for n in names)
    ann_ids = [a["id"] for a in raw["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    for ann in coco.anns.values():
        assert ann["image_id"] in coco.imgs and ann["category_id"] in coco.cats
        assert ann["iscrowd"] == 0


def test_files_resolve_and_sizes_match(coco: COCO) -> None:
    for img in coco.imgs.values():
        path = resolve(img["file_name"])
        assert path.is_file(), f"{img['file_name']} -> {path} is missing"
        with Image.open(path) as im:
            assert im.size == (img["width"], img["height"]), img["file_name"]


def test_boxes_inside_images(coco: COCO) -> None:
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0, ann
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"], (img["file_name"], ann)
        assert ann["area"] == pytest.approx(w * h), ann


def test_every_image_annotated(coco: COCO) -> None:
    per_image = _labels_per_image(coco)
    assert all(per_image.values()), [coco.imgs[i]["file_name"] for i, c in per_image.items() if not c]


def test_distinction_and_composition_coverage(coco: COCO) -> None:
    per_image = _labels_per_image(coco)
    repeated = [i for i, c in per_image.items() if c and max(c.values()) >= 2]
    multi_label = [i for i, c in per_image.items() if len(c) >= 2]
    assert len(repeated) >= 3, "need >=3 images with 2+ instances of one label (intra-category distinction)"
    assert len(multi_label) >= 3, "need >=3 images with 2+ distinct labels (composition)"
