"""ParquetSource: bytes column, HF-style struct column, path column, wrong types, bad rows."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from scone_data.sources.base import COLUMNS
from scone_data.sources.parquet import ParquetSource
from scone_data.stages.decode import DecodeImages


def png(color, size=(40, 40)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def bytes_parquet(tmp_path):
    table = pa.table(
        {
            "img": pa.array([png((255, 0, 0)), None, b"", b"garbage", png((0, 0, 255))], pa.binary()),
            "text": ["red", "none", "empty", "junk", None],
            "key": pa.array([10, 11, 12, 13, 14], pa.int64()),
            "vid": ["g1", "g1", None, "g2", "g2"],
            "lic": ["cc-by", None, None, None, "cc0"],
        }
    )
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=2)  # several row groups: reads must pick the right one
    return path


def test_bytes_column(bytes_parquet):
    src = ParquetSource(
        name="pq", paths=str(bytes_parquet), image_column="img", caption_column="text", id_column="key",
        group_column="vid", license_column="lic",
    )  # fmt: skip
    assert src.validate() == []
    refs = src.list_refs()
    assert refs == [f"{bytes_parquet}#row={i}" for i in range(5)]
    batch = src.read(refs[::-1])  # order of refs is kept, across row groups
    assert list(batch) == list(COLUMNS)
    assert batch["uri"] == refs[::-1]
    out = DecodeImages()(batch)
    assert out["status"] == ["ok", "rejected", "rejected", "rejected", "ok"]
    assert [r.split(":")[0] for r in out["reason"]] == ["", "not_an_image", "empty_file", "missing_image", ""]
    assert out["image_id"] == ["14", "13", "12", "11", "10"]
    assert out["caption"][4] == "red" and out["group_id"][4] == "g1" and out["license"][4] == "cc-by"
    assert tuple(out["image"][0][0, 0]) == (0, 0, 255) and tuple(out["image"][4][0, 0]) == (255, 0, 0)


def test_struct_column_glob_and_bad_refs(tmp_path):
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for i in range(2):
        rows = [{"bytes": png((i, 0, 0)), "path": "x.png"}, {"bytes": None, "path": "y.png"}]
        pq.write_table(pa.table({"image": pa.array(rows, struct)}), tmp_path / f"part-{i}.parquet")
    (tmp_path / "part-9.parquet").write_bytes(b"not parquet at all")
    src = ParquetSource(name="hf", paths=str(tmp_path / "part-*.parquet"), image_column="image")
    assert src.validate() == []
    refs = src.list_refs()
    assert [r.rsplit("/", 1)[1] for r in refs] == [
        "part-0.parquet#row=0", "part-0.parquet#row=1", "part-1.parquet#row=0", "part-1.parquet#row=1",
        "part-9.parquet#!unreadable",
    ]  # fmt: skip
    batch = src.read(refs + [str(tmp_path / "part-0.parquet#row=7")])
    assert batch["status"] == ["ok", "rejected", "ok", "rejected", "rejected", "rejected"]
    assert batch["reason"][1:] == ["missing_image", "", "missing_image", "unreadable_file", "bad_ref"]
    assert batch["image_id"] == [None] * 6


def test_path_column(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png((1, 2, 3)))
    (tmp_path / "secret.png").write_bytes(png((9, 9, 9)))
    table = pa.table(
        {"file": ["a.png", "missing.png", "../secret.png", None, "pkg://skimage/data/camera.png"]}
    )
    pq.write_table(table, tmp_path / "list.parquet")
    src = ParquetSource(
        name="p", paths=str(tmp_path / "list.parquet"), path_column="file", root=str(tmp_path / "imgs")
    )
    assert src.validate() == []
    out = DecodeImages()(src.read_all())
    assert out["reason"] == ["", "missing_file", "path_outside_root", "missing_path", ""]
    assert out["uri"][0].endswith("list.parquet#row=0")
    assert out["image"][4].shape == (512, 512, 3)  # grayscale camera -> RGB


def test_settings_errors_name_the_column(bytes_parquet, tmp_path):
    src = ParquetSource(
        name="pq", paths=str(bytes_parquet), image_column="text", caption_column="nope", id_column="lic"
    )
    problems = src.validate()
    assert len(problems) == 2
    assert problems[0].startswith("image_column: column 'text'") and "expected binary" in problems[0]
    assert problems[1].startswith("caption_column: column 'nope' not in")
    with pytest.raises(ValueError, match="caption_column"):
        src.read(src.list_refs())
    bad = ParquetSource(
        name="x", paths=str(tmp_path / "none-*.parquet"), image_column="a", path_column="b", root=3
    )
    assert [p.split(":")[0] for p in bad.validate()] == ["root", "image_column/path_column", "paths"]
