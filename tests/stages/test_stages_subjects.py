"""SubjectFilter and GrabCutSegmenter on real photos with hand-picked boxes."""

import numpy as np
import pytest
import skimage.data
from pycocotools import mask as mask_utils

from scone_data import schemas
from scone_data.imageio import mask_to_rle
from scone_data.stages.grabcut import GrabCutSegmenter
from scone_data.stages.subjects import SubjectFilter, dominant_color, pixel_color_names, position_bucket


def _row(image, subjects):
    return {"image": [image], "image_id": ["img1"], "subjects": [subjects], "subject_rejects": [[]]}


def test_colour_names_of_plain_colours():
    rgb = np.array(
        [
            [250, 10, 10],
            [10, 200, 10],
            [20, 20, 230],
            [250, 250, 250],
            [5, 5, 5],
            [128, 128, 128],
            [250, 230, 20],
        ],
        np.uint8,
    )
    from scone_data.stages.subjects import COLOR_NAMES

    names = [COLOR_NAMES[i] for i in pixel_color_names(rgb)]
    assert names == ["red", "green", "blue", "white", "black", "gray", "yellow"]


def test_position_buckets():
    assert position_bucket([0, 0, 10, 10], 300, 300) == "top-left"
    assert position_bucket([140, 140, 160, 160], 300, 300) == "middle-center"
    assert position_bucket([250, 250, 300, 300], 300, 300) == "bottom-right"


def test_grabcut_masks_the_cup_and_the_filter_describes_it():
    img = skimage.data.coffee()  # 400x600 RGB; the cup sits left of centre
    subjects = [
        {
            "label": "Cup",
            "box_xyxy": [80.0, 20.0, 450.0, 330.0],
            "det_score": 1.0,
            "det_source": "annotation",
        },
        {
            "label": "speck",
            "box_xyxy": [10.0, 10.0, 14.0, 14.0],
            "det_score": 1.0,
            "det_source": "annotation",
        },
    ]
    out = GrabCutSegmenter()(_row(img, subjects))
    segs = out["subjects"][0]
    assert segs[0]["mask_source"] == "grabcut"
    m = mask_utils.decode(segs[0]["mask_rle"]).astype(bool)
    assert m.shape == img.shape[:2]
    assert 0.3 < segs[0]["mask_score"] < 0.95  # a real segmentation, neither empty nor the whole box
    assert not m[:, :80].any()  # never outside its box
    out = SubjectFilter()(out)
    subs = out["subjects"][0]
    assert [s["subject_id"] for s in subs] == ["img1-000"]
    assert subs[0]["label"] == "cup" and subs[0]["attributes"]["size_rank"] == 0
    assert subs[0]["attributes"]["position"].endswith("center")
    for s in subs:
        schemas.validate("subject", s)
    assert [r["reason"] for r in out["subject_rejects"][0]] == ["too_small"]
    assert out["status"] == ["ok"]


def test_an_image_left_without_subjects_is_rejected_with_its_reason():
    img = np.zeros((64, 64, 3), np.uint8)
    full = np.ones((64, 64), bool)
    s = {
        "label": "wall",
        "box_xyxy": [0.0, 0.0, 64.0, 64.0],
        "mask_rle": mask_to_rle(full),
        "mask_score": 1.0,
    }
    out = SubjectFilter()(_row(img, [s]))
    assert out["status"] == ["rejected"] and out["reason"] == ["no_subjects"]
    assert out["rejected_by"] == ["subjects"]
    assert out["subject_rejects"][0][0]["reason"] == "too_large"


def test_dominant_colour_inside_a_mask():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :5] = (220, 30, 30)
    img[:, 5:] = (30, 30, 220)
    mask = np.zeros((10, 10), bool)
    mask[:, :4] = True
    assert dominant_color(img, mask) == "red"
    assert dominant_color(img, ~mask) == "blue"


@pytest.mark.parametrize("bad", [{"min_area_frac": 0.5, "max_area_frac": 0.1}, {"max_border_sides": 7}])
def test_bad_settings_are_named(bad):
    assert SubjectFilter(**bad).validate()
