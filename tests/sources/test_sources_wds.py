"""WebDatasetSource: good samples, hostile members, truncated and unreadable tars."""

import io
import json
import tarfile

import pytest
from PIL import Image

from scone_data.sources import make_source
from scone_data.sources.wds import WebDatasetSource
from scone_data.stages.decode import DecodeImages


def img(fmt, color=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, format=fmt)
    return buf.getvalue()


def add(tf, name, data=b"", kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.size, ti.mtime = kind, link, len(data) if kind == tarfile.REGTYPE else 0, 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_tar(path, members, mode="w"):
    with tarfile.open(path, mode) as tf:
        for m in members:
            add(tf, *m)
    return path


GOOD = [
    ("000.jpg", img("JPEG")),
    ("000.txt", b" a red square "),
    ("000.json", json.dumps({"caption": "ignored, txt wins", "group_id": 7, "license": "cc0"}).encode()),
    ("001.png", img("PNG", (0, 0, 200))),
    ("001.json", json.dumps({"caption": "a blue square"}).encode()),
    ("d/002.webp", img("WEBP")),
    ("d/002.seg.png", img("PNG")),
]


def test_good_tar(tmp_path):
    path = write_tar(tmp_path / "good.tar", GOOD)
    src = WebDatasetSource(name="w", paths=str(tmp_path / "*.tar"))
    assert src.validate() == []
    refs = src.list_refs()
    assert refs == [f"{path}#000", f"{path}#001", f"{path}#d/002"]
    out = DecodeImages()(src.read(refs))
    assert out["status"] == ["ok"] * 3 and out["uri"] == refs
    assert out["caption"] == ["a red square", "a blue square", None]
    assert out["group_id"][0] == "7" and out["license"][0] == "cc0" and len(out["image_id"][0]) == 16
    assert tuple(out["image"][1][5, 5]) == (0, 0, 200)
    assert out["image"][2].shape == (40, 40, 3)  # the webp, not the seg.png member


def test_hostile_members(tmp_path):
    members = [
        ("ok.jpg", img("JPEG")),
        ("../evil.jpg", img("JPEG")),
        ("/abs.jpg", img("JPEG")),
        ("sym.jpg", b"", tarfile.SYMTYPE, "/etc/passwd"),
        ("hard.jpg", b"", tarfile.LNKTYPE, "ok.jpg"),
        ("fifo.jpg", b"", tarfile.FIFOTYPE),
        ("big.png", img("PNG") + b"\0" * 5000),
        ("dup.jpg", img("JPEG")),
        ("dup.jpg", img("JPEG")),
        ("noimg.txt", b"just a caption"),
        ("README", b"no extension"),
        ("badjson.jpg", img("JPEG")),
        ("badjson.json", b"[1, 2]"),
    ]
    path = write_tar(tmp_path / "hostile.tar", members)
    src = WebDatasetSource(name="w", paths=[str(path)], max_member_bytes=4000)
    batch = src.read(src.list_refs() + [f"{path}#not-there"])
    got = dict(zip([u.split("#", 1)[1] for u in batch["uri"]], [r.split(":")[0] for r in batch["reason"]]))
    assert got == {
        "ok": "",
        "../evil": "unsafe_path",
        "/abs": "unsafe_path",
        "sym": "link_member",
        "hard": "link_member",
        "fifo": "special_member",
        "big": "member_too_large",
        "dup": "duplicate_member",
        "noimg": "no_image",
        "README": "no_image",
        "badjson": "bad_json",
        "not-there": "bad_ref",
    }
    assert batch["image_bytes"][0] is not None and all(b is None for b in batch["image_bytes"][1:])


@pytest.mark.parametrize("cut", ["data", "header"])
def test_truncated_tar_keeps_readable_samples(tmp_path, cut):
    full = write_tar(tmp_path / "full.tar", GOOD).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tf:
        last = tf.getmembers()[-1]
    n = last.offset_data + 100 if cut == "data" else last.offset + 200
    (tmp_path / "cut.tar").write_bytes(full[:n])
    src = WebDatasetSource(name="w", paths=str(tmp_path / "cut.tar"))
    refs = src.list_refs()
    out = DecodeImages()(src.read(refs))
    keys = [r.split("#", 1)[1] for r in refs]
    if cut == "data":  # the last member's data is cut: its sample is lost, the others come through
        assert keys == ["000", "001", "d/002"]
        assert out["reason"] == ["", "", "truncated_tar"]
    else:  # the last header is cut: that member is unknown, the rest of the tar is one reject row
        assert keys == ["000", "001", "d/002", "!truncated"]
        assert out["reason"] == ["", "", "", "truncated_tar"]


def test_unreadable_and_compressed_tars_and_factory(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"this is not a tar file at all" * 40)
    write_tar(tmp_path / "b.tar.gz", GOOD[:3], mode="w:gz")
    src = make_source(
        {"type": "webdataset", "name": "w", "paths": [str(tmp_path / "a.tar"), str(tmp_path / "b.tar.gz")]}
    )
    refs = src.list_refs()
    assert [r.rsplit("/", 1)[1] for r in refs] == ["a.tar#!unreadable", "b.tar.gz#000"]
    out = src.read(refs)
    assert out["reason"][0].startswith("unreadable_tar") and out["status"][1] == "ok"
    assert out["caption"][1] == "a red square"
    assert [p.split(":")[0] for p in WebDatasetSource(name="w", paths=[], max_member_bytes=0).validate()] == [
        "max_member_bytes", "paths",
    ]  # fmt: skip


@pytest.mark.parametrize("mode,suffix", [("w", "tar"), ("w:gz", "tar.gz")])
def test_header_pass_is_kept_per_file_and_redone_when_the_file_changes(tmp_path, mode, suffix):
    import os

    from scone_data.sources import wds

    path = write_tar(tmp_path / f"s.{suffix}", GOOD, mode)
    src = WebDatasetSource(name="w", paths=str(path))
    refs = src.list_refs()
    cold = src.read(refs)
    key = [k for k in wds._SCANS if k[0] == str(path)]
    assert len(key) == 1 and wds._SCANS[key[0]].tar is None  # kept without an open file
    # reads unit by unit (one ref each) reuse that pass and give the same rows as one cold read
    warm = [src.read([r]) for r in refs]
    assert [w["image_bytes"][0] for w in warm] == cold["image_bytes"]
    assert [w["caption"][0] for w in warm] == cold["caption"]
    # a rewritten file (other size and mtime) is scanned again, not served from the old pass
    write_tar(path, GOOD[:2], mode)
    os.utime(path, ns=(1, 1))
    assert src.list_refs() == [f"{path}#000"]
    assert src.read([f"{path}#001"])["reason"] == ["bad_ref"]
