"""Batches through the Ray transport: exact round trips, and what the last segment leaves behind."""

import numpy as np
import pytest

from scone_data.runtime import transport
from scone_data.runtime.executor import DRIVER_UNUSED, _RaySegment
from scone_data.stages.grabcut import GrabCutSegmenter


def test_round_trip_is_exact():
    img = np.random.default_rng(0).integers(0, 255, (7, 5, 3), dtype=np.uint8)
    batch = {"image": [img, None], "subjects": [[{"label": "cup", "box_xyxy": [0.5, 1.0, 2.0, 3.25]}], []],
             "caption": ["a cup", None], "width": [5, 0], "image_bytes": [b"\x00\xff", b""]}  # fmt: skip
    back = transport.decode(transport.encode(batch))
    assert np.array_equal(back["image"][0], img) and back["image"][1] is None
    assert back["subjects"] == batch["subjects"] and back["caption"] == batch["caption"]
    assert back["image_bytes"] == batch["image_bytes"] and back["width"] == [5, 0]


def test_ray_nulls_come_back_as_none():
    # what Ray hands over for an all-null string column: a float array of NaN
    assert transport.decode({"caption": np.array([np.nan, np.nan])}) == {"caption": [None, None]}


def test_unknown_nested_column_fails_loudly():
    with pytest.raises(TypeError, match="'boxes'"):
        transport.encode({"boxes": [[1, 2, 3, 4]]})


def test_last_segment_drops_pixels_before_the_driver():
    img = np.full((40, 60, 3), 120, np.uint8)
    img[10:30, 20:40] = (200, 30, 30)
    batch = {"image": [img], "subjects": [[{"label": "box", "box_xyxy": [18.0, 8.0, 42.0, 32.0]}]],
             "annotations": [None], "uri": ["x"]}  # fmt: skip
    out = transport.decode(_RaySegment([GrabCutSegmenter()], drop=DRIVER_UNUSED)(transport.encode(batch)))
    assert "image" not in out and "annotations" not in out
    assert out["subjects"][0][0]["mask_rle"]["size"] == [40, 60]
