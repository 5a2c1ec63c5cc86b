"""FolderSource: a hostile folder builds to completion, every bad file rejected with its reason."""

import io
import os

import numpy as np
import pytest
from PIL import Image
from tests_helpers import png_header

from scone_data.sources.base import COLUMNS, resolve_path
from scone_data.sources.folder import FolderSource
from scone_data.stages.decode import DecodeImages


def pil_bytes(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    jpeg = pil_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "good.jpg": jpeg,
        "good.txt": b"  a red ball \n",
        "orphan.txt": b"no image has this stem",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero.jpg": b"",
        "text.jpg": b"this is not an image",
        "png_named.JPG": pil_bytes(Image.new("RGB", (40, 40), (0, 200, 0)), "PNG"),
        "bomb.png": png_header(9000, 9000),
        "cmyk.jpeg": pil_bytes(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"),
        "gray16.png": pil_bytes(Image.fromarray(np.full((40, 40), 65535, np.uint16)), "PNG"),
        "pal.png": pil_bytes(Image.new("P", (40, 40), 0), "PNG", transparency=0),
        "rotated.jpg": pil_bytes(Image.new("RGB", (64, 96)), "JPEG", exif=exif.tobytes()),
        "notes.md": b"# notes",
        ".DS_Store": b"\0\0",
        "sub/deeper/nested.WEBP": pil_bytes(Image.new("RGB", (40, 40)), "WEBP"),
        "sub/gray.tif": pil_bytes(Image.new("L", (40, 40), 9), "TIFF"),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root / ".hidden_dir").mkdir()
    (root / ".hidden_dir" / "x.jpg").write_bytes(jpeg)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg)
    os.symlink(outside, root / "escape.jpg")
    os.symlink(root / "good.jpg", root / "sub" / "link_inside.jpg")
    os.symlink(root / "sub", root / "dirlink")
    os.symlink(root / "gone.jpg", root / "broken.jpg")
    return root


def test_list_refs_sorted_relative_and_complete(hostile):
    src = FolderSource(name="f", root=str(hostile))
    assert src.validate() == []
    refs = src.list_refs()
    assert refs == sorted(refs) and refs == src.list_refs()
    assert "good.txt" not in refs  # caption sidecar
    assert "orphan.txt" in refs and "notes.md" in refs and "dirlink" in refs
    assert "sub/deeper/nested.WEBP" in refs
    assert not any(r.startswith(".") or "/." in r for r in refs)


def test_hostile_folder_builds_to_completion(hostile):
    src = FolderSource(name="f", root=str(hostile))
    batch = src.read(src.list_refs())
    assert list(batch) == list(COLUMNS)
    out = DecodeImages()(batch)
    got = {
        os.path.relpath(u, hostile): (s, r.split(":")[0])
        for u, s, r in zip(out["uri"], out["status"], out["reason"])
    }
    assert got == {
        "good.jpg": ("ok", ""),
        "orphan.txt": ("rejected", "unsupported_extension"),
        "truncated.jpg": ("rejected", "truncated"),
        "zero.jpg": ("rejected", "empty_file"),
        "text.jpg": ("rejected", "not_an_image"),
        "png_named.JPG": ("ok", ""),
        "bomb.png": ("rejected", "too_many_pixels"),
        "cmyk.jpeg": ("ok", ""),
        "gray16.png": ("ok", ""),
        "pal.png": ("ok", ""),
        "rotated.jpg": ("ok", ""),
        "notes.md": ("rejected", "unsupported_extension"),
        "sub/deeper/nested.WEBP": ("ok", ""),
        "sub/gray.tif": ("ok", ""),
        "escape.jpg": ("rejected", "symlink_outside_root"),
        "sub/link_inside.jpg": ("ok", ""),
        "dirlink": ("rejected", "symlinked_dir"),
        "broken.jpg": ("rejected", "missing_file"),
    }
    i = out["uri"].index(str(hostile / "good.jpg"))
    assert out["caption"][i] == "a red ball" and out["source"][i] == "f"
    j = out["uri"].index(str(hostile / "rotated.jpg"))
    assert (out["width"][j], out["height"][j]) == (96, 64)
    k = out["uri"].index(str(hostile / "png_named.JPG"))
    assert tuple(out["image"][k][5, 5]) == (0, 200, 0)
    assert all(c is None for c in out["caption"][:i] + out["caption"][i + 1 :])


def test_file_size_cap_and_bad_settings(hostile, tmp_path):
    src = FolderSource(name="f", root=str(hostile), max_file_bytes=100)
    row = src.read(["good.jpg"])
    assert row["status"] == ["rejected"] and row["reason"][0].startswith("file_too_large")
    assert src.read(["../outside.jpg"])["reason"] == ["path_outside_root"]
    problems = FolderSource(name="", root=str(tmp_path / "nope"), max_file_bytes=0).validate()
    assert [p.split(":")[0] for p in problems] == ["name", "max_file_bytes", "root"]


def test_pkg_uri_root():
    path = resolve_path("pkg://skimage/data/astronaut.png")
    assert os.path.isfile(path)
    src = FolderSource(name="sk", root="pkg://skimage/data")
    assert src.validate() == []
    out = DecodeImages()(src.read(["astronaut.png", "README.txt"]))
    assert out["status"] == ["ok", "rejected"] and out["image"][0].shape == (512, 512, 3)
    with pytest.raises(ValueError):
        resolve_path("pkg://no_such_package_xyz/a.png")


def test_relative_root_is_read_from_the_directory_the_source_was_made_in(hostile, tmp_path, monkeypatch):
    """A Ray worker on another node runs in the directory ``ray start`` ran in, not the driver's: a
    relative root must still name the driver's folder there (and stay out of the config hash)."""
    from scone_data.runtime.config import settings_hash

    monkeypatch.chdir(tmp_path)
    src = FolderSource(name="rel", root="root")
    elsewhere = tmp_path / "worker_cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # what a worker sees: the same pickled source, another directory
    twin = FolderSource(name="rel", root="root")  # the same settings, made in another directory
    assert src.validate() == [] and "good.jpg" in src.list_refs()
    out = DecodeImages()(src.read(["good.jpg"]))
    assert out["status"] == ["ok"] and out["caption"] == ["a red ball"]
    assert src.input_folders() == [str(hostile)]
    assert settings_hash("v", [src]) == settings_hash("v", [twin])  # cwd is not a setting
    assert twin.validate() != []  # made here, "root" is another (missing) folder


def test_make_source_lists_every_problem(hostile, tmp_path):
    import pickle

    from scone_data.sources import SOURCE_TYPES, make_source

    assert set(SOURCE_TYPES) == {"folder", "parquet", "coco", "webdataset"}
    src = make_source({"type": "folder", "name": "f", "root": str(hostile)})
    assert isinstance(src, FolderSource) and pickle.loads(pickle.dumps(src)) == src
    with pytest.raises(ValueError, match="type: must be one of folder, parquet, coco, webdataset"):
        make_source({"type": "s3", "name": "x"})
    with pytest.raises(ValueError) as e:
        make_source({"type": "parquet", "name": "p", "image_col": "img", "colour": 1})
    msg = str(e.value)
    assert (
        "image_col: unknown setting" in msg and "colour: unknown setting" in msg and "paths: required" in msg
    )
    with pytest.raises(ValueError) as e:
        make_source({"type": "folder", "name": "", "root": str(tmp_path / "nope"), "max_file_bytes": -1})
    assert all(f in str(e.value) for f in ("name:", "max_file_bytes:", "root:"))
    unchecked = make_source({"type": "folder", "name": "f", "root": str(tmp_path / "nope")}, check=False)
    assert unchecked.validate() == [f"root: {str(tmp_path / 'nope')!r} is not a folder"]


def test_rows_make_valid_records(hostile):
    """Ok rows become valid source_image records and rejected rows valid reject records."""
    from scone_data import schemas

    src = FolderSource(name="f", root=str(hostile))
    out = DecodeImages()(src.read_all())
    for i, status in enumerate(out["status"]):
        if status == "ok":
            rec = {
                k: out[k][i]
                for k in ("image_id", "uri", "width", "height", "caption", "group_id", "source", "license")
            }
            schemas.validate("source_image", {"schema_version": 1, **rec})
        else:
            code, _, detail = out["reason"][i].partition(": ")
            rec = {"stage": "decode", "uri": out["uri"][i], "image_id": out["image_id"][i], "reason": code}
            schemas.validate("reject", {"schema_version": 1, **rec, "detail": detail})
