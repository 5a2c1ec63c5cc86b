"""The shard writer: atomic publication, index byte ranges, determinism, validation, plain-webdataset reads."""

import json
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from tests_helpers import make_sample

from scone_data import schemas
from scone_data.shards.files import atomic_open
from scone_data.shards.validate import validate_output
from scone_data.shards.writer import ShardWriter


def _write(tmp_path, name="train-00000", n=5):
    w = ShardWriter(tmp_path / "shards", name)
    for i in range(n):
        rec, members = make_sample(f"k{i:03d}", n_refs=1 + i % 3)
        w.write(rec, members)
    return w.close()


def _manifest(tmp_path, stats):
    m = {
        "schema_version": 1,
        "scone_data_version": "test",
        "kind": "import",  # no bank: images and subjects are counted from the records
        "config": {},
        "config_hash": "x",
        "seed": 0,
        "images": 3,  # img0..img2 (the samples have 1-3 references)
        "subjects": 9,  # references: 1 + 2 + 3 + 1 + 2
        "samples": stats["samples"],
        "tasks": stats["tasks"],
        "splits": {"train": stats["samples"]},
        "rejects": {},
        "pair_rejects": {},
        "shards": [{k: stats[k] for k in ("name", "samples", "bytes", "sha256")}],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    pq.write_table(schemas.to_table("reject", []), tmp_path / "rejects.parquet")


def test_index_byte_ranges_match_the_tar(tmp_path):
    _write(tmp_path)
    rows = pq.read_table(tmp_path / "shards/train-00000.parquet").to_pylist()
    with tarfile.open(tmp_path / "shards/train-00000.tar") as tf:
        first = {}
        for m in tf.getmembers():
            first.setdefault(m.name.split(".")[0], m.offset)
            assert m.mtime == 0 and m.uname == "scone"
    assert [r["key"] for r in rows] == list(first)
    for r in rows:
        assert r["offset"] == first[r["key"]]
    data = (tmp_path / "shards/train-00000.tar").read_bytes()
    last = rows[-1]
    assert data[last["offset"] : last["offset"] + 100].startswith(b"k004.json")


def test_same_samples_same_bytes(tmp_path):
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b")
    assert a["sha256"] == b["sha256"]
    for ext in (".tar", ".parquet", ".stats.json"):
        assert (tmp_path / "a/shards" / f"train-00000{ext}").read_bytes() == (
            tmp_path / "b/shards" / f"train-00000{ext}"
        ).read_bytes()


def test_plain_webdataset_reads_it_and_validate_passes(tmp_path):
    stats = _write(tmp_path)
    _manifest(tmp_path, stats)
    assert validate_output(tmp_path) == []
    got = list(wds.WebDataset(str(tmp_path / "shards/train-00000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in got] == [f"k{i:03d}" for i in range(5)]
    assert json.loads(got[1]["json"])["key"] == "k001" and "ref1.jpg" in got[1]


def test_validate_catches_a_corrupted_tar_and_a_wrong_index(tmp_path):
    stats = _write(tmp_path)
    _manifest(tmp_path, stats)
    p = tmp_path / "shards/train-00000.tar"
    data = bytearray(p.read_bytes())
    data[700] ^= 0xFF  # inside the first sample's json payload
    p.write_bytes(bytes(data))
    problems = validate_output(tmp_path)
    assert any("sha256" in x for x in problems)
    assert any("k000" in x for x in problems)


def test_malformed_record_is_refused_before_anything_is_written(tmp_path):
    w = ShardWriter(tmp_path, "train-00000")
    rec, members = make_sample("k0")
    rec["references"][0]["candidates"][0]["box_xyxy"] = [1, 2, 3]
    with pytest.raises(schemas.SchemaError, match=r"references\[0\]\.candidates\[0\]\.box_xyxy"):
        w.write(rec, members)
    rec, members = make_sample("k0")
    del members["ref0.jpg"]
    with pytest.raises(ValueError, match="members"):
        w.write(rec, members)
    assert not list(tmp_path.iterdir())


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "x.tar") as f:
            f.write(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
