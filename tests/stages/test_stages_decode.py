"""DecodeImages: every PIL mode to RGB, EXIF orientation, hostile bytes, annotations -> subjects."""

import io

import numpy as np
import pytest
from PIL import Image
from tests_helpers import png_header

from scone_data.imageio import content_id, encode_jpeg, mask_to_rle, rle_counts_from_string, rle_to_mask
from scone_data.stages.decode import DecodeImages, annotations_to_subjects


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 64 wide x 96 high, top half red, bottom half blue, EXIF orientation 6 (rotate 90 CW)."""
    a = np.zeros((96, 64, 3), np.uint8)
    a[:48] = (255, 0, 0)
    a[48:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return pil_bytes(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())


def run(datas, annotations=None, ids=None, **settings):
    n = len(datas)
    batch = {
        "uri": [f"mem://{i}" for i in range(n)],
        "image_bytes": list(datas),
        "image_id": ids or [None] * n,
        "annotations": annotations or [None] * n,
    }
    stage = DecodeImages(**settings)
    assert stage.validate() == []
    return stage(batch), stage


def one(data, **settings):
    out, _ = run([data], **settings)
    return {k: v[0] for k, v in out.items()}


def test_rgb_jpeg_and_content_id():
    data = encode_jpeg(np.full((40, 50, 3), 128, np.uint8))
    row = one(data)
    assert row["status"] == "ok" and row["reason"] == ""
    assert row["image"].shape == (40, 50, 3) and row["image"].dtype == np.uint8
    assert (row["width"], row["height"]) == (50, 40)
    assert row["image_id"] == content_id(data) and len(row["image_id"]) == 16
    assert row["subjects"] == [] and row["subject_rejects"] == []


def test_exif_orientation_applied():
    row = one(exif_rotated_jpeg())
    img = row["image"]
    assert img.shape == (64, 96, 3)  # displayed 96 wide x 64 high
    # rotating 90 CW moves the stored top (red) to the right and the bottom (blue) to the left
    assert img[32, 80, 0] > 200 and img[32, 80, 2] < 60
    assert img[32, 15, 2] > 200 and img[32, 15, 0] < 60


@pytest.mark.parametrize(
    "make,expect",
    [
        (lambda: pil_bytes(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0)),
        (lambda: pil_bytes(Image.new("L", (40, 40), 77), "PNG"), (77, 77, 77)),
        (lambda: pil_bytes(Image.new("1", (40, 40), 1), "PNG"), (255, 255, 255)),
        (lambda: pil_bytes(Image.new("LA", (40, 40), (0, 0)), "PNG"), (255, 255, 255)),
        (lambda: pil_bytes(Image.new("RGBA", (40, 40), (10, 20, 30, 0)), "PNG"), (255, 255, 255)),
        (lambda: pil_bytes(Image.new("RGBA", (40, 40), (10, 20, 30, 255)), "PNG"), (10, 20, 30)),
        (lambda: pil_bytes(Image.fromarray(np.full((40, 40), 257 * 100, np.uint16)), "PNG"), (100, 100, 100)),
        (lambda: pil_bytes(Image.fromarray(np.full((40, 40), 0.5, np.float32)), "TIFF"), (128, 128, 128)),
        (lambda: pil_bytes(Image.new("RGB", (40, 40), (1, 2, 3)), "BMP"), (1, 2, 3)),
        (lambda: pil_bytes(Image.new("RGB", (40, 40), (9, 8, 7)), "WEBP", lossless=True), (9, 8, 7)),
        (lambda: pil_bytes(Image.new("RGB", (40, 40), (4, 5, 6)), "TIFF"), (4, 5, 6)),
    ],
    ids=[
        "cmyk_jpeg",
        "gray",
        "bilevel",
        "la_transparent",
        "rgba_transparent",
        "rgba_opaque",
        "gray16_png",
        "float_tiff",
        "bmp",
        "webp",
        "tiff",
    ],
)
def test_modes_become_rgb(make, expect):
    row = one(make())
    assert row["status"] == "ok", row["reason"]
    img = row["image"]
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8
    assert np.abs(img[20, 20].astype(int) - np.array(expect)).max() <= 3


def test_palette_with_transparency_composited_on_white():
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 20, 40))  # left half palette index 1 (red), right half index 0 (transparent)
    row = one(pil_bytes(im, "PNG", transparency=0))
    assert row["status"] == "ok"
    assert tuple(row["image"][10, 5]) == (200, 0, 0)
    assert tuple(row["image"][10, 35]) == (255, 255, 255)


def test_hostile_bytes_rejected_with_reasons():
    good_jpeg = encode_jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    good_png = pil_bytes(Image.new("RGB", (64, 64), (5, 5, 5)), "PNG")
    datas = [
        b"",
        b"hello, I am a text file\n",
        good_jpeg[: len(good_jpeg) // 2],
        good_png[: len(good_png) - 30],
        png_header(100_000, 100_000),  # above PIL's own bomb limit
        png_header(7000, 7000),  # 49 MP: above ours, below PIL's
        pil_bytes(Image.new("RGB", (100, 10)), "PNG"),
        None,
        good_jpeg,
    ]
    out, stage = run(datas)
    reasons = [r.split(":")[0] for r in out["reason"]]
    assert reasons == [
        "empty_file",
        "not_an_image",
        "truncated",
        "truncated",
        "too_many_pixels",
        "too_many_pixels",
        "too_small",
        "missing_image",
        "",
    ]
    assert out["status"][-1] == "ok" and out["image"][0] is None
    assert stage.stats.rows_in == 9 and stage.stats.rows_ok == 1 and stage.stats.rejects["truncated"] == 2


def test_pixel_cap_is_a_setting():
    data = pil_bytes(Image.new("RGB", (64, 64)), "PNG")
    assert one(data, max_pixels=4000)["reason"].startswith("too_many_pixels")
    assert one(data, max_pixels=4096)["status"] == "ok"


def test_validate_lists_every_problem():
    problems = DecodeImages(max_pixels=0, min_side="x", keep_crowd=3).validate()
    assert [p.split(":")[0] for p in problems] == ["max_pixels", "min_side", "keep_crowd"]
    assert DecodeImages(max_pixels=100, min_side=32).validate() == ["min_side: 32^2 exceeds max_pixels=100"]


def test_given_ids_sanitized_and_rejected_rows_untouched():
    data = pil_bytes(Image.new("RGB", (40, 40)), "PNG")
    batch = {
        "uri": ["a", "b", "c"],
        "image_bytes": [data, data, data],
        "image_id": ["ok_id-1", "a/b.jpg", None],
        "status": ["ok", "ok", "rejected"],
        "reason": ["", "", "missing_file"],
    }
    out = DecodeImages()(batch)
    assert out["image_id"][0] == "ok_id-1"
    assert out["image_id"][1].startswith("a_b_jpg-") and len(out["image_id"][1]) <= 64
    assert out["status"][2] == "rejected" and out["reason"][2] == "missing_file" and out["image"][2] is None


def test_rle_string_parser_matches_pycocotools():
    rng = np.random.default_rng(1)
    mask = rng.random((37, 41)) > 0.6
    rle = mask_to_rle(mask)
    runs = rle_counts_from_string(rle["counts"])
    assert sum(runs) == 37 * 41
    assert np.array_equal(rle_to_mask(rle), mask)
    with pytest.raises(ValueError):
        rle_counts_from_string("T8d0n0\x7f")


def test_annotations_to_subjects():
    h, w = 50, 60
    m = np.zeros((h, w), bool)
    m[10:30, 5:40] = True
    rle = mask_to_rle(m)
    runs = rle_counts_from_string(rle["counts"])
    anns = [
        {"label": "dog", "box_xyxy": [-5.0, 2.0, 70.0, 20.0], "segmentation": None},
        {"label": "cup", "box_xyxy": [1, 1, 20, 20], "segmentation": [[1, 1, 20, 1, 20, 20, 1, 20]]},
        {"label": "cat", "box_xyxy": None, "segmentation": rle},
        {"label": "car", "box_xyxy": [0, 0, 10, 10], "segmentation": {"size": [h, w], "counts": runs}},
        {"label": "nan", "box_xyxy": [float("nan"), 0, 10, 10], "segmentation": None},
        {"label": "neg", "box_xyxy": [10, 10, 5, 20], "segmentation": None},
        {"label": "out", "box_xyxy": [100, 100, 120, 130], "segmentation": None},
        {"label": "poly", "box_xyxy": [0, 0, 10, 10], "segmentation": [[1, 2, 3]]},
        {
            "label": "size",
            "box_xyxy": [0, 0, 10, 10],
            "segmentation": {"size": [w, h], "counts": rle["counts"]},
        },
        {"label": "sum", "box_xyxy": [0, 0, 10, 10], "segmentation": {"size": [h, w], "counts": [5, 5]}},
        {"label": "crowd", "box_xyxy": [0, 0, 10, 10], "segmentation": None, "iscrowd": 1},
        {"label": "", "box_xyxy": [0, 0, 10, 10]},
        {"label": "nobox"},
        {"label": "empty", "box_xyxy": [0, 0, 5, 5], "segmentation": [[100, 100, 120, 100, 120, 120]]},
        "not a dict",
        {"label": "str", "box_xyxy": ["0", 0, 1, 1]},
    ]
    subjects, rejects = annotations_to_subjects(anns, h, w)
    assert [s["label"] for s in subjects] == ["dog", "cup", "cat", "car"]
    assert subjects[0]["box_xyxy"] == [0.0, 2.0, 60.0, 20.0] and "mask_rle" not in subjects[0]
    assert subjects[2]["box_xyxy"] == [5.0, 10.0, 40.0, 30.0]  # taken from the mask
    assert subjects[2]["mask_rle"] == {"size": [h, w], "counts": rle["counts"]}
    assert subjects[3]["mask_rle"]["counts"] == rle["counts"]  # uncompressed counts -> same compressed RLE
    cup = rle_to_mask(subjects[1]["mask_rle"])
    assert cup.shape == (h, w) and cup[10, 10] and not cup[40, 50]
    for s in subjects:
        assert s["det_source"] == "annotation" and s["det_score"] == 1.0
        if "mask_rle" in s:
            assert isinstance(s["mask_rle"]["counts"], str) and s["mask_source"] == "annotation"
    assert [(r["label"], r["reason"]) for r in rejects] == [
        ("nan", "non_finite_box"),
        ("neg", "bad_box_size"),
        ("out", "outside_image"),
        ("poly", "bad_polygon"),
        ("size", "mask_size_mismatch"),
        ("sum", "bad_rle"),
        ("crowd", "crowd"),
        ("", "bad_label"),
        ("nobox", "missing_box"),
        ("empty", "empty_mask"),
        ("", "bad_annotation"),
        ("str", "bad_box"),
    ]
    kept, _ = annotations_to_subjects(anns[10:11], h, w, keep_crowd=True)
    assert [s["label"] for s in kept] == ["crowd"]


def test_stage_fills_subjects_and_keeps_image_on_bad_annotation():
    data = pil_bytes(Image.new("RGB", (60, 50)), "PNG")
    anns = [[{"label": "a", "box_xyxy": [1, 1, 9, 9]}, {"label": "b", "box_xyxy": [float("inf"), 0, 1, 1]}]]
    out, _ = run([data], annotations=anns)
    assert out["status"] == ["ok"]
    assert [s["label"] for s in out["subjects"][0]] == ["a"]
    assert out["subject_rejects"][0][0]["reason"] == "non_finite_box"
