"""Hostile inputs the sources must survive: each comes out as a reject with a reason (or a settings
error naming it), never a hang, a crash, or a record that cannot be written as UTF-8."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading

import numpy as np
import pytest
from tests_helpers import write_tar

from scone_data.imageio import encode_png
from scone_data.sources import make_source
from scone_data.sources.folder import FolderSource


def _png(w=48, h=48, seed=1) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _rows(batch: dict) -> list[dict]:
    return [dict(zip(batch, vals)) for vals in zip(*batch.values())]


def _in_thread(fn, timeout=20):
    """``fn()`` on a daemon thread; fails the test instead of hanging when it blocks."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"blocked for more than {timeout} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_hostile_fifo_in_folder_is_rejected_not_waited_on(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "good.png").write_bytes(_png())
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "good.txt")  # a FIFO caption sidecar must not block either
    src = FolderSource(name="photos", root=str(root))
    rows = {os.path.basename(r["uri"]): r for r in _rows(_in_thread(src.read_all))}
    assert rows["pipe.jpg"]["status"] == "rejected"
    assert rows["pipe.jpg"]["reason"] == "not_a_regular_file"
    assert rows["good.png"]["reason"] == "bad_caption: not_a_regular_file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_hostile_fifo_matched_by_a_tar_glob_is_a_settings_error(tmp_path):
    good = write_tar(tmp_path / "a.tar", [("000.png", _png())])
    os.mkfifo(tmp_path / "b.tar")
    cfg = {"type": "webdataset", "name": "shards", "paths": str(tmp_path / "*.tar")}
    with pytest.raises(ValueError, match="not_a_regular_file"):
        _in_thread(lambda: make_source(cfg))
    src = make_source(cfg, check=False)
    refs = _in_thread(src.list_refs)
    assert refs == [f"{good}#000"]


def _assert_writable(rows: list[dict]) -> None:
    """Every text value (labels included) is valid UTF-8, and the rows make an arrow table."""
    import pyarrow as pa

    for r in rows:
        json.dumps({k: v for k, v in r.items() if k != "image_bytes"}, ensure_ascii=False).encode("utf-8")
    pa.Table.from_pylist([{k: r[k] for k in ("uri", "reason", "caption", "license")} for r in rows])


def test_hostile_non_utf8_names_are_kept_and_written_as_utf8(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    bad = os.fsdecode(b"caf\xe9 \\ photo.png")  # latin-1 bytes, and a backslash
    (root / bad).write_bytes(_png())
    (root / os.fsdecode(b"caf\xe9 \\ photo.txt")).write_bytes(b"a caption")
    (root / "plain.png").write_bytes(_png(seed=2))
    src = FolderSource(name="photos", root=str(root))
    refs = src.list_refs()
    assert refs == ["caf\\xe9 \\\\ photo.png", "plain.png"]
    rows = _rows(src.read(refs))
    _assert_writable(rows)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["caption"] == "a caption"

    names = (os.fsdecode(b"x\xff.png"), os.fsdecode(b"..\xff/y.png"))
    tar = write_tar(tmp_path / "s.tar", [(n, _png()) for n in names], format=tarfile.GNU_FORMAT)
    wsrc = make_source({"type": "webdataset", "name": "w", "paths": str(tar)})
    wrows = _rows(wsrc.read_all())
    _assert_writable(wrows)
    assert [(r["uri"], r["status"], r["reason"]) for r in wrows] == [
        (f"{tar}#x\\xff", "ok", ""),
        (f"{tar}#..\\xff/y", "ok", ""),
    ]

    images = tmp_path / "coco"
    images.mkdir()
    (images / os.fsdecode(b"\xff.png")).write_bytes(_png())
    doc = {
        "images": [
            {"id": 1, "file_name": "\udcff.png"},  # the json spelling of the byte 0xff in a name
            {"id": 2, "file_name": "\ud800.png"},  # a lone surrogate: no file can have this name
            {"id": 3, "file_name": "a\x00.png"},
        ],
        "categories": [{"id": 1, "name": "bad \ud800 label"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20]}],
    }
    ann = images / "ann.json"
    ann.write_text(json.dumps(doc))  # ensure_ascii: lone surrogates become \\u escapes
    csrc = make_source({"type": "coco", "name": "c", "annotations": str(ann)})
    crows = _rows(csrc.read_all())
    _assert_writable(crows)
    json.dumps([a["label"] for r in crows for a in r["annotations"] or []]).encode("utf-8")
    assert crows[0]["status"] == "ok" and crows[0]["uri"] == str(images / "\\xff.png")
    assert [r["reason"].split(":")[0] for r in crows[1:]] == ["bad_image_entry"] * 2


def test_hostile_deep_json_is_rejected_not_a_recursion_error(tmp_path):
    deep = b"[" * 200_000 + b"]" * 200_000
    tar = write_tar(
        tmp_path / "s.tar", [("a.png", _png()), ("a.json", b'{"caption": ' + deep + b"}"), ("b.png", _png())]
    )
    rows = _rows(make_source({"type": "webdataset", "name": "w", "paths": str(tar)}).read_all())
    assert [r["status"] for r in rows] == ["rejected", "ok"]
    assert rows[0]["reason"].startswith("bad_json: json nested 200001 levels deep (limit 64)")

    ann = tmp_path / "ann.json"
    ann.write_bytes(b'{"images": [], "annotations": [{"segmentation": ' + deep + b"}]}")
    with pytest.raises(ValueError) as e:
        make_source({"type": "coco", "name": "c", "annotations": str(ann)})
    msg = str(e.value)
    assert "nested 200003 levels deep (limit 64)" in msg and "\n" not in msg


def test_hostile_hash_in_tar_path_and_member_name(tmp_path):
    folder = tmp_path / "run#2"
    folder.mkdir()
    tar = write_tar(folder / "shard#1.tar", [("a#1.png", _png()), ("b.png", _png())])
    src = make_source({"type": "webdataset", "name": "w", "paths": str(folder / "*.tar")})
    rows = _rows(src.read_all())
    assert [(r["uri"], r["status"]) for r in rows] == [(f"{tar}#a#1", "ok"), (f"{tar}#b", "ok")]
    gone = _rows(src.read([f"{folder}/gone#x.tar#k"]))
    assert gone[0]["reason"] == "missing_file"


def test_hostile_coco_category_id_with_two_names_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    doc = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 1, "name": "car"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20]}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"two names for one id: 1 \('cat' and 'car'\)"):
        make_source({"type": "coco", "name": "c", "annotations": str(ann)})
    doc["categories"][2]["name"] = "cat"  # the same category listed twice is harmless
    ann.write_text(json.dumps(doc))
    rows = _rows(make_source({"type": "coco", "name": "c", "annotations": str(ann)}).read_all())
    assert [a["label"] for a in rows[0]["annotations"]] == ["cat"]


def test_hostile_coco_box_beside_its_polygon_rejects_the_subject(tmp_path):
    from scone_data.stages.decode import DecodeImages

    (tmp_path / "a.png").write_bytes(_png(96, 96))
    poly = [[10, 10, 40, 10, 40, 40, 10, 40]]
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 96}],
        "categories": [{"id": 1, "name": "ball"}, {"id": 2, "name": "cup"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "segmentation": poly},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "segmentation": poly},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    batch = DecodeImages().process(
        make_source({"type": "coco", "name": "c", "annotations": str(ann)}).read_all()
    )
    assert batch["status"] == ["ok"]
    assert [s["label"] for s in batch["subjects"][0]] == ["ball"]
    (rej,) = batch["subject_rejects"][0]
    assert rej["label"] == "cup" and rej["reason"] == "box_mask_mismatch"


def test_hostile_duplicate_source_names_refused_when_the_config_is_read(tmp_path):
    from test_reliability_support import make_toy_coco, toy_settings

    from scone_data.runtime.config import ConfigError, load_config

    coco = make_toy_coco(tmp_path / "toy", n=2)
    settings = toy_settings(coco, tmp_path / "out")
    settings["sources"] = [settings["sources"][0], dict(settings["sources"][0])]
    with pytest.raises(ConfigError, match=r"name 'toy' is used by sources \[0, 1\]"):
        load_config(None, base=settings)


def _disc_coco(root, n=2):
    """``n`` 120x160 images of 2 coloured discs each (polygons) on noise, and their COCO json."""
    import cv2

    root.mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    colours, labels = [(220, 30, 30), (30, 60, 220)], ["ball", "plate"]
    for i in range(n):
        img = np.clip(rng.normal(128, 20, (120, 160, 3)), 0, 255).astype(np.uint8)
        for j in range(2):
            cx, cy, r = 40 + 75 * j, 55 + 5 * i, 25
            t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], colours[j])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": j + 1, "iscrowd": 0,
                         "bbox": [cx - r, cy - r, 2 * r, 2 * r], "segmentation": [pts.ravel().tolist()]})  # fmt: skip
        (root / f"d{i}.png").write_bytes(encode_png(img))
        images.append({"id": i + 1, "file_name": f"d{i}.png", "width": 160, "height": 120})
    cats = [{"id": j + 1, "name": labels[j]} for j in range(2)]
    (root / "coco.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root / "coco.json"


@pytest.mark.parametrize("unit_size", [1, 3, 4])
def test_hostile_same_photo_twice_keeps_one_copy_with_all_its_subjects(tmp_path, unit_size):
    """The same images twice (two copies of one source: what two sources of one name produced)
    keep one copy each with every subject, whether a copy shares a unit with its twin or not."""
    from test_reliability_support import toy_config

    from scone_data.bank.store import Bank
    from scone_data.runtime import config as C
    from scone_data.runtime.build import make_sources, make_stages, run_bank_phase

    coco = _disc_coco(tmp_path / "toy")

    def bank(out, copies):
        cfg = toy_config(coco, out, runtime={"unit_size": unit_size})
        problems: list[str] = []
        sources, stages = make_sources(cfg, problems) * copies, make_stages(cfg, problems)
        rt = C.build_dataclass(C.RuntimeSettings, "runtime", cfg.get("runtime"), problems)
        assert not problems
        out.mkdir()
        run_bank_phase(cfg, sources, stages, rt, "test")
        return Bank(out)

    once, twice = bank(tmp_path / "once", 1), bank(tmp_path / "twice", 2)
    assert sorted(twice.images) == sorted(once.images) and len(once.images) == 2
    assert len(twice.duplicates) == 2
    key = sorted((s["subject_id"], s["label"]) for s in once.subjects)
    assert len(key) == 4 and sorted((s["subject_id"], s["label"]) for s in twice.subjects) == key


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_hostile_exif_rotated_coco_photo_gets_its_annotations_rotated(tmp_path, orientation):
    """A red square drawn in the stored pixels, annotated there (box, polygon, RLE): after decoding
    with EXIF orientation applied, every subject must sit on the red square, not on background."""
    from PIL import Image

    from scone_data.imageio import mask_to_rle
    from scone_data.stages.decode import DecodeImages

    W0, H0 = 96, 64
    img = np.full((H0, W0, 3), 90, np.uint8)
    img[8:28, 10:40] = (230, 20, 20)  # red, in the stored grid: x 10-40, y 8-28
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", exif=exif)
    (tmp_path / "r.png").write_bytes(buf.getvalue())
    (tmp_path / "wrong.png").write_bytes(buf.getvalue())
    m = np.zeros((H0, W0), bool)
    m[8:28, 10:40] = True
    rle = mask_to_rle(m)
    poly = [10, 8, 40, 8, 40, 28, 10, 28]
    doc = {
        "images": [
            {"id": 1, "file_name": "r.png", "width": W0, "height": H0},
            {"id": 2, "file_name": "wrong.png", "width": 50, "height": 50},  # neither frame
        ],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "poly"}, {"id": 3, "name": "rle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 8, 30, 20]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [10, 8, 30, 20], "segmentation": [poly]},
            {
                "id": 3,
                "image_id": 1,
                "category_id": 3,
                "segmentation": {"size": [H0, W0], "counts": rle["counts"]},
            },
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [10, 8, 30, 20]},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(doc))
    batch = DecodeImages().process(
        make_source({"type": "coco", "name": "c", "annotations": str(ann)}).read_all()
    )
    assert batch["status"] == ["ok", "ok"]
    shown = batch["image"][0]
    red = (shown[..., 0] > 200) & (shown[..., 1] < 60)
    ys, xs = np.nonzero(red)
    red_box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    subjects = {s["label"]: s for s in batch["subjects"][0]}
    assert sorted(subjects) == ["box", "poly", "rle"] and batch["subject_rejects"][0] == []
    for s in subjects.values():
        assert s["box_xyxy"] == pytest.approx(red_box, abs=1)
        if "mask_rle" in s:
            from scone_data.imageio import rle_to_mask

            mask = rle_to_mask(s["mask_rle"])
            assert mask.shape == red.shape and (mask & red).sum() / red.sum() > 0.9
    assert batch["subjects"][1] == []
    assert [r["reason"] for r in batch["subject_rejects"][1]] == ["exif_frame_mismatch"]
