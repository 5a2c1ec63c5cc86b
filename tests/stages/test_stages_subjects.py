"""SubjectFilter and GrabCutSegmenter on real photos with hand-picked boxes."""

import numpy as np
import pytest
import skimage.data
from pycocotools import mask as mask_utils

from scone_data import schemas
from scone_data.imageio import mask_to_rle, rle_to_mask
from scone_data.stages.colors import COLOR_NAMES, color_attributes, pixel_color_names
from scone_data.stages.grabcut import GrabCutSegmenter
from scone_data.stages.subjects import SubjectFilter, position_bucket


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
    assert color_attributes(img, mask)[0] == "red"
    assert color_attributes(img, ~mask)[0] == "blue"


@pytest.mark.parametrize("bad", [{"min_area_frac": 0.5, "max_area_frac": 0.1}, {"max_border_sides": 7}])
def test_bad_settings_are_named(bad):
    assert SubjectFilter(**bad).validate()


# -- the mask quality gate: tiny scenes drawn here, one test per reason --------------------------------

H, W = 120, 160


def _disc(cx, cy, r):
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _subject(label, mask, box=None, source="annotation"):
    ys, xs = np.nonzero(mask)
    box = box or [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return {"label": label, "box_xyxy": [float(v) for v in box], "mask_rle": mask_to_rle(mask),
            "mask_score": 1.0, "mask_source": source}  # fmt: skip


def _filter(subjects, **settings):
    img = np.full((H, W, 3), 200, np.uint8)
    out = SubjectFilter(**settings)(_row(img, subjects))
    return out["subjects"][0], out["subject_rejects"][0]


def _reasons(dropped):
    return {d["label"]: d["reason"] for d in dropped}


def test_a_box_fallback_or_a_rectangle_mask_is_never_kept():
    rect = np.zeros((H, W), bool)
    rect[20:60, 30:90] = True
    kept, dropped = _filter([_subject("sign", rect), _subject("cup", _disc(120, 80, 20), source="box")])
    assert kept == [] and _reasons(dropped) == {"sign": "mask_is_box", "cup": "mask_is_box"}
    kept, _ = _filter([_subject("ball", _disc(60, 60, 30))])  # a disc fills pi/4 of its square
    assert [s["label"] for s in kept] == ["ball"]


def test_a_mask_filling_little_of_its_box_is_rejected_but_a_diagonal_spoon_is_kept():
    blob = _disc(40, 90, 12)  # GrabCut found a corner of the box: 452 px of a 100 x 100 box
    kept, dropped = _filter([_subject("person", blob, box=[10, 10, 110, 110])])
    assert kept == [] and _reasons(dropped) == {"person": "mask_fill_low"}
    yy, xx = np.mgrid[:H, :W]
    spoon = (np.abs((yy - 10) - (xx - 20) * 0.8) <= 3) & (xx >= 20) & (xx < 140)  # thin, corner to corner
    spoon |= _disc(128, 96, 8)  # and its bowl, at the end of the handle
    kept, dropped = _filter([_subject("spoon", spoon)])
    assert dropped == [] and kept[0]["label"] == "spoon"
    assert kept[0]["area_frac"] * H * W < 0.25 * 120 * 100  # well under the box fill floor


def test_a_mask_that_lost_a_part_of_its_box_is_rejected():
    """A box is tight around what is visible: a mask that stops well short of one of its sides (a person
    whose head GrabCut left out) is a fragment; a few pixels short (rounding) is not."""
    yy, xx = np.mgrid[:H, :W]
    body = ((xx - 70) / 20) ** 2 + ((yy - 77.5) / 32.5) ** 2 <= 1  # rows 45-109, columns 50-89
    kept, dropped = _filter([_subject("person", body, box=[50, 20, 90, 110])])  # top 25 of 90 rows empty
    assert kept == [] and _reasons(dropped) == {"person": "mask_partial"}
    assert "0.2" in dropped[0]["detail"]
    kept, dropped = _filter([_subject("person", body, box=[50, 42, 90, 110])])  # 3 px short: rounding
    assert dropped == [] and kept[0]["label"] == "person"
    kept, _ = _filter([_subject("person", body, box=[50, 20, 90, 110])], max_side_gap=1.0)
    assert [s["label"] for s in kept] == ["person"]  # the gate's own setting turns it off


def test_a_mask_in_pieces_is_rejected():
    pieces = _disc(40, 60, 18) | _disc(110, 60, 18)  # two equal blobs: the largest holds half
    kept, dropped = _filter([_subject("dog", pieces)], min_box_fill=0.0)
    assert kept == [] and _reasons(dropped) == {"dog": "mask_in_pieces"}


def test_a_pixel_in_two_masks_belongs_to_the_smaller_one():
    person = _disc(80, 70, 45)
    cup = _disc(80, 30, 12) & person  # the person's mask covers the cup held up too
    kept, dropped = _filter([_subject("person", person), _subject("cup", cup)])
    assert dropped == []
    by = {s["label"]: s for s in kept}
    pm, hm = rle_to_mask(by["person"]["mask_rle"]), rle_to_mask(by["cup"]["mask_rle"])
    assert not (pm & hm).any() and (pm | hm).sum() == person.sum()  # the person lost exactly the cup
    assert by["person"]["area_frac"] == pm.sum() / (H * W)
    ys = np.nonzero(pm.any(1))[0]
    assert by["person"]["box_xyxy"][1] == ys.min() > 25  # its box follows its mask
    assert by["cup"]["box_xyxy"] == _subject("cup", cup)["box_xyxy"]  # an untouched mask keeps its box


def test_parts_and_worn_things_stay_in_their_owners_mask():
    """A cat's cut-out keeps its eyes and a person their hat (the demo's cat had white eye holes)."""
    cat = _disc(80, 70, 45)
    eye = _disc(65, 60, 6) & cat
    hat = _disc(80, 30, 12) & cat
    kept, dropped = _filter([_subject("cat", cat), _subject("eye", eye), _subject("hat", hat)])
    assert dropped == []
    by = {s["label"]: rle_to_mask(s["mask_rle"]) for s in kept}
    assert (
        np.array_equal(by["cat"], cat) and np.array_equal(by["eye"], eye) and np.array_equal(by["hat"], hat)
    )


def test_a_mask_bleeding_into_a_neighbour_gives_the_pixels_back_or_is_rejected():
    xx = np.mgrid[:H, :W][1]
    left, right = _disc(45, 60, 30), _disc(105, 60, 38)
    # the left subject's box reaches into its neighbour and its mask took a third of its pixels there
    bleed = left | (right & (xx < 95))
    kept, dropped = _filter([_subject("person", bleed, box=[15, 22, 95, 92]), _subject("person", right)])
    assert dropped == [] and len(kept) == 2
    assert np.array_equal(rle_to_mask(kept[0]["mask_rle"]), left & ~right)  # trimmed back to itself
    assert np.array_equal(rle_to_mask(kept[1]["mask_rle"]), right)  # and nothing carved out of the neighbour
    # a mask that is mostly its neighbour (a "person" that is mostly a bus wheel) is rejected
    wheel = _disc(50, 60, 8) | (right & (xx < 100))
    pair = [_subject("person", wheel, box=[40, 20, 100, 100]), _subject("bus", right)]
    # (the bus itself then carries the annotated person: see the mask_covers_subject test; off here)
    kept, dropped = _filter(pair, max_hidden_share=1.0)
    assert [(d["label"], d["reason"]) for d in dropped] == [("person", "mask_bleeds")]
    assert dropped[0]["box_xyxy"] == [40, 20, 100, 100]
    assert len(kept) == 1 and np.array_equal(rle_to_mask(kept[0]["mask_rle"]), right)
    # the same overlap inside its neighbour's box (a hat on a head) is a part, not a bleed
    kept, dropped = _filter([_subject("person", _disc(80, 70, 45)), _subject("hat", _disc(80, 40, 12))])
    assert dropped == [] and len(kept) == 2


def test_rejects_keep_label_and_box():
    speck = _disc(20, 20, 1)
    _, dropped = _filter([_subject("speck", speck)])
    assert dropped == [{"label": "speck", "reason": "too_small", "detail": f"area_frac {speck.sum() / (H * W):.4f}",
                        "box_xyxy": [19.0, 19.0, 22.0, 22.0]}]  # fmt: skip


def test_subject_rejects_reach_the_bank_with_their_boxes(tmp_path):
    import pyarrow.parquet as pq

    from scone_data.bank.store import Bank, write_unit
    from scone_data.imageio import encode_png

    img = np.full((H, W, 3), 200, np.uint8)
    batch = _row(
        img, [_subject("ball", _disc(50, 60, 25)), _subject("cup", _disc(120, 60, 20), source="box")]
    )
    batch.update(
        uri=["mem://img1"], pos=[0], width=[W], height=[H], source=["test"], image_bytes=[encode_png(img)]
    )
    batch = SubjectFilter()(batch)
    write_unit(tmp_path, 0, batch)
    bank = Bank(tmp_path)
    want = [
        {
            "image_id": "img1",
            "label": "cup",
            "box_xyxy": [100.0, 40.0, 141.0, 81.0],
            "reason": "subject_mask_is_box",
        }
    ]
    assert bank.rejected_subjects() == want
    (rec,) = bank.rejects()
    assert rec["detail"].startswith("cup segmenter fell back") and rec["box_xyxy"] == want[0]["box_xyxy"]
    # a rejects part written before rejects kept labels and boxes still reads, and adds no boxes
    part = tmp_path / "bank/rejects/part-00000.parquet"
    old = pq.read_table(part).drop_columns(["label", "box_xyxy"])
    pq.write_table(old, part)
    assert bank.rejected_subjects() == []
    assert schemas.from_table("reject", old)[0]["reason"] == "subject_mask_is_box"


def test_a_mask_carrying_unresolved_smaller_subjects_is_rejected():
    """The truth photos' bus cut-out carried the pedestrians in front of it: their masks were box
    fallbacks and took no pixels, so the bus mask kept them; it is rejected, the pedestrians' own
    reason stands, and a subject without such neighbours is kept."""
    yy, xx = np.mgrid[:H, :W]
    bus = ((xx - 80) / 70) ** 2 + ((yy - 65) / 45) ** 2 <= 1  # an oval: a shape, not a box
    walkers = [np.zeros((H, W), bool) for _ in range(2)]
    walkers[0][40:110, 30:60] = True  # box-shaped masks: rejected as boxes, they take no pixels
    walkers[1][40:110, 90:120] = True
    subjects = [_subject("bus", bus)] + [_subject("person", m) for m in walkers]
    kept, dropped = _filter(subjects)
    assert kept == []
    assert sorted(d["reason"] for d in dropped) == ["mask_covers_subject", "mask_is_box", "mask_is_box"]
    covers = next(d for d in dropped if d["reason"] == "mask_covers_subject")
    assert covers["label"] == "bus" and float(covers["detail"].split()[0]) > 0.15
    kept, dropped = _filter([_subject("bus", bus)])  # alone, the same bus is a subject
    assert len(kept) == 1 and dropped == []


def test_the_bank_keeps_a_vlm_steps_tags_and_caption_provenance(tmp_path):
    """``subject_tags`` and ``caption_provenance`` (a vlm_caption step's) are stored with the image and
    read back as written; an images part written before they existed still reads (both None)."""
    import pyarrow.parquet as pq

    from scone_data.bank.store import Bank, write_unit
    from scone_data.imageio import encode_png

    img = np.full((H, W, 3), 200, np.uint8)
    batch = _row(img, [_subject("ball", _disc(50, 60, 25))])
    prov = {"model": "vlm_tiny", "prompt": {"name": "vlm_caption", "version": "v1"}, "raw": "Caption: a ball"}
    batch.update(uri=["mem://img1"], pos=[0], width=[W], height=[H], source=["test"],
                 image_bytes=[encode_png(img)], caption=["a ball"], subject_tags=[["ball", "floor"]],
                 caption_provenance=[prov])  # fmt: skip
    write_unit(tmp_path, 0, SubjectFilter()(batch))
    rec = Bank(tmp_path).images["img1"]
    assert rec["subject_tags"] == ["ball", "floor"] and rec["caption_provenance"] == prov
    part = tmp_path / "bank/images/part-00000.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["subject_tags", "caption_provenance"]), part)
    rec = Bank(tmp_path).images["img1"]
    assert rec["caption"] == "a ball" and rec.get("subject_tags") is None
