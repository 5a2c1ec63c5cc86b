"""The output folder (``Output``): shard names, the manifest, the shard list and the samples, as
build, import, validate, the interop readers and the trainer's loader see them."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from tests_helpers import build_demo, make_sample

from scone_data import SCHEMA_VERSION, schemas
from scone_data.shards.output import ManifestError, Output, ShardError
from scone_data.shards.validate import validate_output
from scone_data.shards.writer import ShardWriter


def tiny_output(root, shards=(("train", 3), ("train", 2), ("val", 2))) -> Output:
    """A valid import-kind output: one shard per ``(split, samples)``, named as build names them,
    and a manifest written by :meth:`Output.write_manifest`."""
    out = Output(root)
    entries, tasks, splits, index, images, refs = [], Counter(), Counter(), Counter(), set(), 0
    for n, (split, count) in enumerate(shards):
        w = ShardWriter(out.shard_dir, Output.shard_name(split, index[split]))
        index[split] += 1
        for i in range(count):
            rec, members = make_sample(f"{n:02d}{i:02d}{split}", n_refs=1 + i % 2, split=split)
            w.write(rec, members)
            tasks[rec["task"]] += 1
            splits[split] += 1
            refs += len(rec["references"])
            images |= {rec["target"]["image_id"]} | {
                r["candidates"][0]["source_image_id"] for r in rec["references"]
            }
        st = w.close()
        entries.append({k: st[k] for k in ("name", "samples", "bytes", "sha256")})
    pq.write_table(schemas.to_table("reject", []), out.rejects)
    out.write_manifest(
        {
            "schema_version": SCHEMA_VERSION,
            "scone_data_version": "test",
            "kind": "import",
            "config": {},
            "config_hash": "x",
            "seed": 0,
            "images": len(images),
            "subjects": refs,
            "samples": sum(tasks.values()),
            "tasks": dict(sorted(tasks.items())),
            "splits": dict(sorted(splits.items())),
            "rejects": {},
            "pair_rejects": {},
            "shards": entries,
        }
    )
    return out


def _webdataset(tars) -> list[tuple[dict, dict[str, bytes]]]:
    """What plain webdataset reads from ``tars``: (record, image members) per sample."""
    got = []
    for raw in wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False):
        members = {k: v for k, v in raw.items() if not k.startswith("__") and k != "json"}
        got.append((json.loads(raw["json"]), members))
    return got


@pytest.fixture(scope="module")
def demo(repo_root, tmp_path_factory) -> Output:
    """The demo pipeline built in-process (a real build: bank, train and val shards, manifest)."""
    out = tmp_path_factory.mktemp("output") / "demo"
    build_demo(repo_root, out)
    return Output(out)


# -- shard names -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("split", "index"), [("train", 0), ("val", 7), ("train", 12345), ("val", 99999)])
def test_shard_name_round_trips(split, index):
    name = Output.shard_name(split, index)
    assert Output.parse_shard_name(name) == (split, index)
    assert Output.split_of(name) == split


def test_shard_names_sort_in_index_order_and_bad_names_are_refused():
    names = [Output.shard_name("train", i) for i in (0, 2, 10, 99, 100, 12345)]
    assert sorted(names) == names
    for bad in ("train-7", "train", "-00001", "train-0000a", "train00001"):
        with pytest.raises(ValueError, match="not a shard name"):
            Output.parse_shard_name(bad)


def test_a_build_names_its_shards_with_shard_name(demo):
    m = demo.read_manifest()
    per_split = Counter()
    for e in m["shards"]:
        split, index = Output.parse_shard_name(e["name"])
        assert index == per_split[split] and e["name"] == Output.shard_name(split, index)
        per_split[split] += 1
    assert set(per_split) == {"train", "val"}  # the demo has both, so the split filters are tested


# -- manifest --------------------------------------------------------------------------------------
def test_paths_are_the_output_layout(tmp_path):
    out = Output(tmp_path)
    assert (out.bank, out.shard_dir, out.ledger) == (
        tmp_path / "bank",
        tmp_path / "shards",
        tmp_path / "ledger",
    )
    assert out.manifest_path == tmp_path / "manifest.json" and out.rejects == tmp_path / "rejects.parquet"
    assert out.card == tmp_path / "dataset_card.md"
    assert out.shard_path("val-00001", ".stats.json") == tmp_path / "shards/val-00001.stats.json"


def test_a_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json") as e:
        Output(tmp_path).read_manifest()
    assert e.value.missing and str(tmp_path) in str(e.value)
    # each caller keeps its own wording and exit code
    from scone_data.interop.reader import InteropError, load_manifest

    with pytest.raises(InteropError, match="no manifest.json .not a scone-data output") as ie:
        load_manifest(tmp_path)
    assert ie.value.code == 1
    assert validate_output(tmp_path) == [f"{tmp_path}: no manifest.json (the run did not finish)"]


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"samples": "many"}'])
def test_a_garbage_manifest_is_a_clear_error(tmp_path, garbage):
    (tmp_path / "manifest.json").write_bytes(garbage)
    with pytest.raises(ManifestError, match="is not a scone-data manifest") as e:
        Output(tmp_path).read_manifest()
    assert not e.value.missing and str(tmp_path / "manifest.json") in str(e.value)
    assert "\n" not in str(e.value)
    from scone_data.cli import BadInput, load_manifest

    with pytest.raises(BadInput, match="manifest.json is not a scone-data manifest"):
        load_manifest(str(tmp_path))


def test_write_manifest_is_atomic_and_checked(tmp_path):
    out = tiny_output(tmp_path)
    m = out.read_manifest()
    assert out.manifest_path.read_bytes() == (json.dumps(m, indent=2, sort_keys=True) + "\n").encode()
    before = out.manifest_path.read_bytes()
    with pytest.raises(schemas.SchemaError):
        out.write_manifest({**m, "samples": "many"})
    assert out.manifest_path.read_bytes() == before  # the old manifest stays whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert validate_output(tmp_path) == []


# -- shards and samples ----------------------------------------------------------------------------
def test_shards_come_from_the_manifest_in_its_order(tmp_path):
    out = tiny_output(tmp_path)
    names = [e["name"] for e in out.read_manifest()["shards"]]
    assert names == ["train-00000", "train-00001", "val-00000"]
    assert out.shards() == [tmp_path / "shards" / f"{n}.tar" for n in names]
    assert out.shards("train") == out.shards()[:2] and out.shards("val") == out.shards()[2:]
    shutil.copy(out.shard_path("train-00001"), out.shard_path("train-00002"))  # a stray tar
    assert out.shards("train") == out.shards()[:2]


def test_iter_samples_equals_what_webdataset_reads(demo):
    for split in (None, "train", "val"):
        got = list(demo.iter_samples(split))
        want = [s for s in _webdataset(demo.shards()) if split is None or s[0]["split"] == split]
        assert got == want and got
    records = [rec for rec, members in demo.iter_samples(want_images=False) if not members]
    assert records == [rec for rec, _ in _webdataset(demo.shards())]


def test_iter_samples_reads_images_only_where_asked(tmp_path):
    out = tiny_output(tmp_path)
    got = list(out.iter_samples(want_images=lambda rec: len(rec["references"]) == 2))
    assert got and all(bool(m) == (len(r["references"]) == 2) for r, m in got)
    assert all(set(m) == {"ref0.jpg", "ref1.jpg", "target.jpg"} for _, m in got if m)


def test_a_torn_shard_is_a_shard_error_naming_it(tmp_path):
    out = tiny_output(tmp_path)
    tar = out.shard_path("train-00001")
    data = tar.read_bytes()
    tar.write_bytes(data[:700] + b"\x00garbage" + data[708:])  # inside the first sample's json
    with pytest.raises(ShardError) as e:
        list(out.iter_samples())
    assert e.value.path == tar and "train-00001.tar" in str(e.value)


# -- the trainer's loader --------------------------------------------------------------------------
def test_the_trainer_reads_only_the_manifest_shards(tmp_path):
    from scone_train.data import iter_raw, list_shards

    out = tiny_output(tmp_path / "out")
    listed = [str(p) for p in out.shards("train")]
    stray = tiny_output(tmp_path / "other", shards=(("train", 2),)).shard_path("train-00000")
    shutil.copy(stray, out.shard_path("train-00002"))  # a tar the manifest does not list
    assert any("does not list" in p for p in validate_output(out.root))
    for d in (out.root, out.shard_dir):
        assert list_shards([str(d)], "train") == listed
    assert list_shards([str(out.root)], "val") == [str(out.shard_path("val-00000"))]
    keys = [raw["__key__"] for raw in iter_raw(list_shards([str(out.root)], "train"))]
    assert keys == [rec["key"] for rec, _ in out.iter_samples("train")] and len(keys) == 5


def test_the_trainer_refuses_an_unfinished_output_and_still_reads_a_plain_folder(tmp_path):
    from scone_train.data import list_shards

    out = tiny_output(tmp_path / "out")
    out.ledger.mkdir()
    out.manifest_path.unlink()  # a run that did not finish: shards on disk, no manifest
    with pytest.raises(ManifestError, match="no manifest.json"):
        list_shards([str(out.root)], "train")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(out.shard_path("train-00000"), plain / "train-00000.tar")
    assert list_shards([str(plain)], "train") == [str(plain / "train-00000.tar")]
    with pytest.raises(FileNotFoundError, match="no val-"):
        list_shards([str(plain)], "val")
