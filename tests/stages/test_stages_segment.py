"""SamSegmenter on the tiny random-weight preset: row contract, RLE, pass-through, settings."""

import pickle

import numpy as np
import pytest

pytest.importorskip("segment_anything")

from pycocotools import mask as mask_utils  # noqa: E402

from scone_data.imageio import mask_to_rle as encode_rle  # noqa: E402
from scone_data.models.sam import SamBoxPredictor, build_sam, use_sdpa_  # noqa: E402
from scone_data.stages.segment import SamSegmenter  # noqa: E402

SMALL = dict(model="tiny", seed=2, device="cpu", batch_size=2)


def _img(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _subj(box, **kw):
    return {"label": "dog", "box_xyxy": box, "det_score": 0.9, "det_source": "groundingdino", **kw}


def test_masks_rle_scores_and_pass_through():
    given = encode_rle(np.eye(40, 50, dtype=bool))
    images = [_img(0, 40, 50), _img(1, 64, 48), _img(2, 30, 30)]
    subjects = [
        [
            _subj([5, 5, 30, 25]),
            _subj([0, 0, 10, 10], mask_rle=given, mask_score=1.0, mask_source="annotation"),
        ],
        [_subj([10, 10, 40, 60]), _subj([30, 30, 30, 50]), _subj([1, 2, 20, 30])],  # 2nd box has no area
        [],
    ]
    st = SamSegmenter(**SMALL)
    out = st({"image": images, "subjects": subjects, "caption": [None] * 3})
    assert out["status"] == ["ok"] * 3
    s0, s1 = out["subjects"][0], out["subjects"][1]
    assert s0[1] == subjects[0][1]  # annotation masks untouched
    assert out["subjects"][2] == []
    model = build_sam("tiny", seed=2)
    use_sdpa_(model)
    ref = SamBoxPredictor(model).predict(
        images[:2], [np.array([[5, 5, 30, 25]]), np.array([[10, 10, 40, 60], [1, 2, 20, 30]])]
    )
    for subj, m, iou in [(s0[0], ref[0]["masks"][0], ref[0]["iou"][0]), (s1[0], ref[1]["masks"][0], ref[1]["iou"][0]),
                         (s1[2], ref[1]["masks"][1], ref[1]["iou"][1])]:  # fmt: skip
        assert subj["mask_source"] == "sam" and isinstance(subj["mask_rle"]["counts"], str)
        dec = mask_utils.decode(
            {"size": subj["mask_rle"]["size"], "counts": subj["mask_rle"]["counts"].encode()}
        )
        assert dec.shape == m.shape and (dec.astype(bool) == m).all()
        assert subj["mask_score"] == pytest.approx(min(max(float(iou), 0.0), 1.0), abs=1e-5)
        assert 0.0 <= subj["stability"] <= 1.0
    empty = s1[1]
    assert (
        empty["mask_rle"]["size"] == [64, 48]
        and mask_utils.area(
            {"size": empty["mask_rle"]["size"], "counts": empty["mask_rle"]["counts"].encode()}
        )
        == 0
    )
    assert empty["mask_score"] == 0.0


def test_bad_image_is_a_reject_row():
    out = SamSegmenter(**SMALL)({"image": [None], "subjects": [[_subj([1, 1, 5, 5])]]})
    assert out["status"] == ["rejected"] and out["reason"][0].startswith("bad_image")


def test_validate_names_missing_and_corrupt_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("SCONE_DATA_CACHE", str(tmp_path))
    msgs = SamSegmenter(model="vit_h", batch_size=0, num_gpus="lots").validate()
    text = "\n".join(msgs)
    assert "scone-data weights fetch sam_vit_h" in text and "batch_size" in text and "num_gpus" in text
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    msgs = SamSegmenter(model="vit_b", checkpoint=str(bad)).validate()
    assert len(msgs) == 1 and "broken.pth" in msgs[0] and "expected 375042383" in msgs[0]
    assert SamSegmenter(**SMALL).validate() == []


def test_picklable_and_model_info():
    st = SamSegmenter(**SMALL)
    again = pickle.loads(pickle.dumps(st))
    assert again.settings() == st.settings()
    assert st.model_info() == {"name": "sam_tiny", "weights_sha256": None}
    assert set(st.resources()) == {"num_cpus", "num_gpus"}
