"""CocoSource: boxes, polygons, RLE, categories as labels, broken and orphan annotations."""

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from scone_data import schemas
from scone_data.imageio import mask_to_rle, rle_counts_from_string, rle_to_mask
from scone_data.sources.coco import CocoSource
from scone_data.stages.decode import DecodeImages

H, W = 60, 80


def png(color):
    buf = io.BytesIO()
    Image.new("RGB", (W, H), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png", "dup.png"):
        (root / name).write_bytes(png((100, 0, 0)))
    m = np.zeros((H, W), bool)
    m[20:40, 30:50] = True
    rle = mask_to_rle(m)
    doc = {
        "licenses": [{"id": 3, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cup"}, {"id": 5}],
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H, "license": 3},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
            {"id": 1, "file_name": "dup.png", "width": W, "height": H},
            {"id": "x/7", "file_name": "c.png"},
            {"id": 9, "file_name": "missing.png"},
            {"id": 10, "file_name": "../../etc/passwd"},
            {"id": 11, "file_name": "pkg://skimage/data/astronaut.png"},
            {"file_name": "a.png"},
        ],
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 30], "iscrowd": 0,
             "segmentation": [[10, 5, 30, 5, 30, 35, 10, 35]]},
            {"id": 101, "image_id": 1, "category_id": 2, "bbox": [30, 20, 20, 20], "iscrowd": 0, "segmentation": rle},
            {"id": 102, "image_id": 1, "category_id": 2, "bbox": [0, 0, 80, 60], "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": rle_counts_from_string(rle["counts"])}},
            {"id": 103, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 0, 5, 5]},
            {"id": 104, "image_id": 1, "category_id": 1, "bbox": [10, 10, -5, 5]},
            {"id": 105, "image_id": 1, "category_id": 1, "bbox": [500, 500, 10, 10]},
            {"id": 106, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": {"size": [W, H], "counts": rle["counts"]}},
            {"id": 107, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": [[1, 2, 3]]},
            {"id": 200, "image_id": 42, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 201, "image_id": 2, "category_id": 77, "bbox": [1, 1, 5, 5]},
            {"id": 202, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5]},
            "junk",
            {"id": 300, "image_id": 2, "caption": "  a cup on a table "},
        ],
    }  # fmt: skip
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return CocoSource(name="coco", annotations=str(path), image_root=str(root)), root


def test_rows_labels_and_boxes(coco):
    src, root = coco
    assert src.validate() == []
    refs = src.list_refs()
    assert refs == [f"images[{i}]" for i in range(8)]
    batch = src.read(refs)
    assert batch["status"] == ["ok", "ok", "rejected", "ok", "rejected", "rejected", "ok", "rejected"]
    assert [r.split(":")[0] for r in batch["reason"]] == [
        "", "", "duplicate_image_id", "", "missing_file", "path_outside_root", "", "bad_image_entry",
    ]  # fmt: skip
    assert batch["image_id"][:4] == ["coco-1", "coco-2", "coco-1", batch["image_id"][3]]
    assert batch["image_id"][3].startswith("coco-x_7-")
    assert batch["uri"][0] == str(root / "a.png")
    assert batch["license"][0] == "CC BY 4.0" and batch["license"][1] is None
    assert batch["caption"][1] == "a cup on a table" and batch["caption"][0] is None
    anns = batch["annotations"][0]
    assert [a["label"] for a in anns] == ["dog", "cup", "cup", "dog", "dog", "dog", "dog", "dog"]
    assert anns[0]["box_xyxy"] == [10.0, 5.0, 30.0, 35.0] and anns[0]["ann_id"] == 100
    assert [a["iscrowd"] for a in anns[:3]] == [0, 0, 1]
    assert batch["annotations"][1] == [] and batch["annotations"][3] == []  # no annotations still comes


def test_decode_makes_subjects_and_subject_rejects(coco):
    src, _ = coco
    out = DecodeImages()(src.read(["images[0]", "images[6]"]))
    assert out["status"] == ["ok", "ok"] and out["image"][1].shape == (512, 512, 3)
    subj = out["subjects"][0]
    assert [(s["label"], s["box_xyxy"]) for s in subj] == [
        ("dog", [10.0, 5.0, 30.0, 35.0]),
        ("cup", [30.0, 20.0, 50.0, 40.0]),
    ]
    dog = rle_to_mask(subj[0]["mask_rle"])
    assert dog.shape == (H, W) and dog[20, 20] and not dog[50, 70]
    assert rle_to_mask(subj[1]["mask_rle"]).sum() == 400
    reasons = [r["reason"] for r in out["subject_rejects"][0]]
    assert reasons == [
        "crowd",
        "non_finite_box",
        "bad_box_size",
        "outside_image",
        "mask_size_mismatch",
        "bad_polygon",
    ]


def test_orphans_are_reject_records(coco):
    src, _ = coco
    orphans = src.orphan_annotations()
    assert [(o["reason"], o["detail"]) for o in orphans] == [
        ("unknown_image_id", "image_id=42"),
        ("unknown_category", "category_id=77"),
        ("unknown_category", "category_id=5"),  # a category without a name is no label
        ("bad_annotation", "not a dict with an image_id"),
    ]
    assert orphans[1]["image_id"] == "coco-2" and orphans[0]["uri"].endswith("instances.json#annotations[8]")
    for o in orphans:
        schemas.validate("reject", o)
    assert src.source_rejects() == orphans


def test_pickles_without_index_and_bad_settings(coco, tmp_path):
    src, _ = coco
    src.list_refs()
    clone = pickle.loads(pickle.dumps(src))
    assert clone._index is None and clone.read(["images[1]"])["image_id"] == ["coco-2"]
    assert clone.read(["images[99]", "nonsense"])["reason"] == ["bad_ref", "bad_ref"]
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[]")
    assert (
        CocoSource(name="c", annotations=str(tmp_path / "bad.json")).validate()[0].startswith("annotations:")
    )
    problems = CocoSource(
        name="c", annotations=str(tmp_path / "list.json"), image_root=str(tmp_path / "no")
    ).validate()
    assert [p.split(":")[0] for p in problems] == ["image_root", "annotations"]


def test_captions_file(coco, tmp_path):
    """A COCO captions json (captions_*.json) gives each image its first caption, after any caption
    inside the instances json; captions of unknown ids are not rows; a broken file is a settings error."""
    src, root = coco
    caps = tmp_path / "captions.json"
    caps.write_text(
        json.dumps(
            {
                "annotations": [
                    {"id": 1, "image_id": 1, "caption": " A dog next to a cup. "},
                    {"id": 2, "image_id": 1, "caption": "A second caption of the same photo."},
                    {"id": 3, "image_id": 2, "caption": "A cup on a wooden table."},
                    {"id": 4, "image_id": 42, "caption": "No such image."},
                    {"id": 5, "image_id": 11, "caption": "   "},
                    "junk",
                ]
            }
        )
    )
    with_caps = CocoSource(name="coco", annotations=src.annotations, image_root=str(root), captions=str(caps))
    assert with_caps.validate() == []
    batch = with_caps.read(with_caps.list_refs())
    assert batch["caption"][0] == "A dog next to a cup."
    assert batch["caption"][1] == "a cup on a table"  # the instances json's own caption comes first
    assert batch["caption"][6] is None  # a blank caption is no caption
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = CocoSource(name="c", annotations=src.annotations, captions=str(tmp_path / "bad.json"))
    assert any(p.startswith("annotations:") and "bad.json" in p for p in bad.validate())
    missing = CocoSource(name="c", annotations=src.annotations, captions=str(tmp_path / "nope.json"))
    assert any("nope.json" in p for p in missing.validate())
