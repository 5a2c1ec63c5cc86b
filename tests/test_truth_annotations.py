"""The hand-annotated truth set (scone_data/data/truth): package photos, boxes and truth tables.

The truth tables were written by looking at each photo; these tests check them against the boxes
wherever the table says an order is clear, so a slip in either shows up.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from scone_data.sources.base import resolve_path
from scone_data.stages.colors import COLOR_NAMES

TRUTH_DIR = Path(__file__).resolve().parents[1] / "scone_data" / "data" / "truth"
DEMO_COCO = TRUTH_DIR.parent / "demo" / "coco.json"
COLOURS = set(COLOR_NAMES)  # the truth tables speak the colour stage's vocabulary
PERSON_LIKE = {
    "person",
    "man",
    "woman",
    "child",
    "boy",
    "girl",
    "people",
    "face",
    "head",
    "hand",
    "arm",
    "leg",
    "eye",
    "body",
    "astronaut",
}
ORDER_KEYS = ("left_to_right", "top_to_bottom", "size_desc")


@pytest.fixture(scope="module")
def coco():
    return json.loads((TRUTH_DIR / "coco.json").read_text())


@pytest.fixture(scope="module")
def truth():
    return json.loads((TRUTH_DIR / "truth.json").read_text())


@pytest.fixture(scope="module")
def index(coco):
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = {a["id"]: dict(a, label=names[a["category_id"]]) for a in coco["annotations"]}
    return names, anns


def groups(order):
    """[3, [4, 5], 6] -> [[3], [4, 5], [6]]."""
    return [g if isinstance(g, list) else [g] for g in order]


def flat(order):
    return [i for g in groups(order) for i in g]


def centre(ann, axis):
    x, y, w, h = ann["bbox"]
    return x + w / 2 if axis == 0 else y + h / 2


def test_files_load_and_ids_unique(coco, truth):
    for key in ("images", "annotations", "categories", "licenses"):
        assert coco[key], key
    for key in ("images", "annotations", "categories"):
        ids = [x["id"] for x in coco[key]]
        assert len(ids) == len(set(ids)), key
    assert set(truth) == {"images"}
    lic = {x["id"] for x in coco["licenses"]}
    assert all(img["license"] in lic for img in coco["images"])
    assert all(c["name"] == c["name"].strip().lower() and c["name"] for c in coco["categories"])
    assert all(img["file_name"].startswith("pkg://") for img in coco["images"])


def test_images_resolve_and_decode(coco):
    for img in coco["images"]:
        path = resolve_path(img["file_name"])
        with Image.open(path) as im:
            im.load()
            assert im.size == (img["width"], img["height"]), img["file_name"]


def test_boxes_inside_image(coco):
    size = {i["id"]: (i["width"], i["height"]) for i in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert all(isinstance(v, int) for v in a["bbox"]), a["id"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0, a["id"]
        W, H = size[a["image_id"]]
        assert x + w <= W and y + h <= H, a["id"]
        assert a["area"] == w * h and a["iscrowd"] == 0, a["id"]


def test_demo_images_repeat_demo_boxes(coco):
    demo = json.loads(DEMO_COCO.read_text())
    dnames = {c["id"]: c["name"] for c in demo["categories"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    demo_ids = {i["id"] for i in coco["images"] if i.get("demo")}
    dfiles = {i["id"]: i["file_name"] for i in demo["images"]}
    for img in coco["images"]:
        if img.get("demo"):
            assert dfiles[img["id"]] == img["file_name"]
    mine = {
        a["id"]: (a["image_id"], names[a["category_id"]], a["bbox"])
        for a in coco["annotations"]
        if a["image_id"] in demo_ids
    }
    theirs = {
        a["id"]: (a["image_id"], dnames[a["category_id"]], a["bbox"])
        for a in demo["annotations"]
        if a["image_id"] in demo_ids
    }
    assert mine == theirs


def test_truth_tables_name_existing_annotations(coco, truth, index):
    _, anns = index
    images = {str(i["id"]) for i in coco["images"]}
    for img_id, entry in truth["images"].items():
        assert img_id in images, img_id
        for label, table in entry["labels"].items():
            assert set(table) == {*ORDER_KEYS, "colors"}, (img_id, label)
            expected = {
                a["id"] for a in anns.values() if a["image_id"] == int(img_id) and a["label"] == label
            }
            assert expected, (img_id, label)
            for key in ORDER_KEYS:
                ids = flat(table[key])
                assert len(ids) == len(set(ids)), (img_id, label, key)
                assert set(ids) == expected, (img_id, label, key)
            assert {int(k) for k in table["colors"]} == expected, (img_id, label)


def test_every_multi_instance_label_is_tabled(coco, truth, index):
    _, anns = index
    counts = Counter((a["image_id"], a["label"]) for a in anns.values())
    for (img_id, label), n in counts.items():
        if n >= 2:
            assert label in truth["images"].get(str(img_id), {}).get("labels", {}), (img_id, label)


@pytest.mark.parametrize("key,axis", [("left_to_right", 0), ("top_to_bottom", 1)])
def test_clear_orders_agree_with_box_centres(truth, index, key, axis):
    _, anns = index
    for img_id, entry in truth["images"].items():
        for label, table in entry["labels"].items():
            gs = groups(table[key])
            for before, after in zip(gs, gs[1:]):
                last = max(centre(anns[i], axis) for i in before)
                first = min(centre(anns[i], axis) for i in after)
                assert last < first, (img_id, label, key, before, after)


def test_colours(truth, index):
    _, anns = index
    for img_id, entry in truth["images"].items():
        for label, table in entry["labels"].items():
            for ann_id, colour in table["colors"].items():
                assert colour is None or colour in COLOURS, (img_id, label, ann_id, colour)
                if label in PERSON_LIKE:
                    assert colour is None, (img_id, label, ann_id)


def test_coverage_of_the_set(coco, index):
    _, anns = index
    outside_demo = [i for i in coco["images"] if not i.get("demo")]
    assert len(outside_demo) >= 12
    counts = Counter((a["image_id"], a["label"]) for a in anns.values())
    outside = {i["id"] for i in outside_demo}
    rows = {img for (img, _), n in counts.items() if n >= 3 and img in outside}
    assert len(rows) >= 3, rows
    groups_of_people = {
        img for (img, label), n in counts.items() if label == "person" and n >= 2 and img in outside
    }
    assert len(groups_of_people) >= 2, groups_of_people
