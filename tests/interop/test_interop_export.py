"""export: Scone training parquet read back the way BAGEL's loader reads it, and SconeEval jsonl."""

from __future__ import annotations

import ast
import io
import json
import os

import pyarrow.parquet as pq
import pytest
import yaml
from interop_helpers import run_cli, tiny_output
from PIL import Image

from scone_data.interop.export import describe_candidates, export_scone_parquet, export_sconeeval_jsonl
from scone_data.interop.reader import InteropError, iter_samples
from scone_data.pairs import TASKS


def _scone_loader_rows(data_dir: str, parquet_info: dict):
    """BAGEL's ParquetStandardIterableDataset: files listed from data_dir, looked up in parquet_info by
    os.path.join(data_dir, name), read one row group at a time into pandas; S2I's parse_row then takes
    row["image"][:-1] as inputs and row["image"][-1] as the target."""
    for name in sorted(n for n in os.listdir(data_dir) if n.endswith(".parquet")):
        path = os.path.join(data_dir, name)
        local = path
        for rg in range(parquet_info[path]["num_row_groups"]):
            df = pq.ParquetFile(local).read_row_group(rg).to_pandas()
            for _, row in df.iterrows():
                yield row


def test_scone_parquet_matches_the_loader(demo_output, tmp_path):
    dest = tmp_path / "scone"
    counts = export_scone_parquet(
        demo_output, dest, split="all", rows_per_file=7, rows_per_row_group=3, world_size=1, workers=1
    )
    data_dir = str((dest / "parquet_data" / "scone_data").resolve())
    info = json.loads((dest / "parquet_info" / "scone_data.json").read_text())
    samples = list(iter_samples(demo_output))
    assert counts["samples"] == len(samples) > 12
    assert counts["files"] == 3 and sorted(info) == [
        os.path.join(data_dir, f"part-{i:05d}.parquet") for i in range(3)
    ]
    for path, meta in info.items():
        md = pq.ParquetFile(path).metadata
        assert (meta["num_row_groups"], meta["num_rows"]) == (md.num_row_groups, md.num_rows)
        assert all(md.row_group(i).num_rows <= 3 for i in range(md.num_row_groups))
    rows = list(_scone_loader_rows(data_dir, info))
    assert len(rows) == len(samples)
    for row, (rec, members) in zip(rows, samples, strict=True):
        imgs = list(row["image"])
        assert len(imgs) == len(rec["references"]) + 1
        assert imgs[-1] == members["target.jpg"]  # the target is last
        assert imgs[:-1] == [members[r["member"]] for r in rec["references"]]  # references in order
        assert row["instruction"] == rec["instruction"] and row["key"] == rec["key"]
        for b in imgs:
            Image.open(io.BytesIO(b)).convert("RGB")  # what parse_row does with each entry
    ds_info = json.loads((dest / "dataset_info.json").read_text())["s2i"]["scone_data"]
    assert (
        ds_info["num_total_samples"] == len(samples)
        and ds_info["num_files"] == 3
        and ds_info["data_dir"] == data_dir
    )
    assert ds_info["parquet_info_path"] == str((dest / "parquet_info" / "scone_data.json").resolve())


def _scone_units(snippet: str, world_size: int, workers: int) -> list[list[list[tuple[str, int]]]]:
    """What Scone does with the pasted text: the dataset_info.py entry and the YAML group loaded, the
    files of data_dir cycled to num_used_data (BAGEL's get_parquet_data_paths), one unit per row group
    found in parquet_info, ``units // world_size`` per rank, ``per_rank // workers`` per worker.
    Returns ``units[rank][worker]``."""
    py, yml = snippet.split("\ns2i:")
    (entry,) = ast.literal_eval("{\n" + py + "\n}").values()
    group = yaml.safe_load("s2i:" + yml)["s2i"]
    info = json.loads(open(entry["parquet_info_path"]).read())
    files = [
        os.path.join(entry["data_dir"], n) for n in os.listdir(entry["data_dir"]) if n.endswith(".parquet")
    ]
    (used,) = group["num_used_data"]
    paths = (files * (used // len(files) + 1))[:used]
    units = [(p, rg) for p in paths if p in info for rg in range(info[p]["num_row_groups"])]
    per_rank = len(units) // world_size
    per_worker = per_rank // workers
    ranks = [units[r * per_rank : (r + 1) * per_rank] for r in range(world_size)]
    return [[rank[w * per_worker : (w + 1) * per_worker] for w in range(workers)] for rank in ranks]


@pytest.mark.parametrize("n, world_size, workers", [(17, 8, 3), (61, 2, 3)])
def test_scone_parquet_every_rank_and_worker_gets_work(tmp_path, capsys, n, world_size, workers):
    out = tiny_output(tmp_path / "out", n)
    dest = tmp_path / "scone"
    argv = ["export", str(out), str(dest), "--format", "scone-parquet", "--no-progress"]
    argv += ["--world-size", str(world_size), "--workers", str(workers), "--rows-per-row-group", "4"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    snippet = printed[printed.index("# data/dataset_info.py") :]
    info = dest / "parquet_info"
    pasted = [(info / f"scone_data.{n}").read_text() for n in ("dataset_info.py", "config.yaml")]
    assert snippet == "\n".join(pasted)
    units = _scone_units(snippet, world_size, workers)
    assert sum(len(w) for r in units for w in r) >= world_size * workers
    assert all(w for rank in units for w in rank)  # no rank, no worker without work
    read = []
    for path, rg in {u for rank in units for w in rank for u in w}:
        read += pq.ParquetFile(path).read_row_group(rg, columns=["key"]).column("key").to_pylist()
    assert sorted(set(read)) == [f"s{i:03d}" for i in range(n)]  # every sample is read
    sizes = [pq.ParquetFile(p).metadata.row_group(rg).num_rows for rank in units for w in rank for p, rg in w]
    assert max(sizes) <= 4


def test_scone_parquet_data_dir_and_settings(tmp_path):
    out = tiny_output(tmp_path / "out", 5)
    for given in (
        "hdfs://cluster/sets",
        "hdfs://cluster/sets/parquet_data/mine/",
    ):  # DEST, or Scone's data_dir
        dest = tmp_path / given[-5:].strip("/")
        export_scone_parquet(out, dest, data_dir=given, dataset_name="mine", world_size=1, workers=1)
        info = json.loads((dest / "parquet_info" / "mine.json").read_text())
        assert list(info) == ["hdfs://cluster/sets/parquet_data/mine/part-00000.parquet"]
        entry = json.loads((dest / "dataset_info.json").read_text())["s2i"]["mine"]
        assert entry["data_dir"] == "hdfs://cluster/sets/parquet_data/mine"
        assert entry["parquet_info_path"] == "hdfs://cluster/sets/parquet_info/mine.json"
        assert (
            "'parquet_info_path': 'hdfs://cluster/sets/parquet_info/mine.json',"
            in (dest / "parquet_info" / "mine.dataset_info.py").read_text()
        )
    with pytest.raises(InteropError) as e:
        export_scone_parquet(out, tmp_path / "b", rows_per_file=4, rows_per_row_group=5)
    assert e.value.code == 2 and not (tmp_path / "b").exists()
    with pytest.raises(InteropError) as e:
        export_scone_parquet(out, tmp_path / "b", workers=0)
    assert e.value.code == 2 and "workers" in str(e.value)
    with pytest.raises(InteropError) as e:
        export_scone_parquet(out, dest)  # not empty, no overwrite
    assert e.value.code == 2
    assert export_scone_parquet(out, dest, overwrite=True)["samples"] == 5  # an export of ours is replaced
    assert run_cli(["export", str(out), str(dest), "--format", "scone-parquet"]) == 2
    assert (
        run_cli(["export", str(tmp_path / "nothing"), str(tmp_path / "c"), "--format", "scone-parquet"]) == 1
    )


def test_sconeeval_refuses_a_missing_task_type(tmp_path, capsys):
    out = tiny_output(tmp_path / "out", 5, split="val")  # distinction_multi_intra is missing
    argv = ["export", str(out), str(tmp_path / "eval"), "--format", "sconeeval-jsonl", "--no-progress"]
    assert run_cli(argv) == 1 and not (tmp_path / "eval").exists()
    assert "distinction_multi_intra" in capsys.readouterr().err
    counts = export_sconeeval_jsonl(tiny_output(tmp_path / "six", 6, split="val"), tmp_path / "e6")
    assert counts["samples"] == 6 and "missing tasks" not in counts


def test_sconeeval_jsonl(demo_output, tmp_path, capsys):
    dest = tmp_path / "eval"
    argv = ["export", str(demo_output), str(dest), "--format", "sconeeval-jsonl", "--no-progress"]
    assert run_cli(argv) == 0  # the demo's val split holds all six task types: nothing missing
    lines = [json.loads(x) for x in (dest / "data.jsonl").read_text().splitlines()]
    val = [rec for rec, _ in iter_samples(demo_output, "val", want_images=False)]
    assert len(lines) == len(val) > 0
    assert {row["task_type"] for row in lines} == set(TASKS)
    cap = capsys.readouterr()
    assert "samples" in cap.out and "missing tasks" not in cap.out
    assert "warning:" not in cap.err
    for row, rec in zip(lines, val, strict=True):
        assert set(row) == {
            "key",
            "task_type",
            "instruction",
            "input_images",
            "subject_list",
            "subject_label",
            "target_image",
        }
        assert row["key"] == rec["key"] and row["task_type"] == rec["task"]
        assert len(row["input_images"]) == len(rec["references"]) == len(row["subject_list"])
        for path in row["input_images"] + [row["target_image"]]:
            Image.open(dest / path).convert("RGB")  # test_score.py joins test_image_dir and the path
        for names, flags, ref in zip(
            row["subject_list"], row["subject_label"], rec["references"], strict=True
        ):
            assert len(names) == len(flags) == len(ref["candidates"])
            assert flags.count(1) == 1 and set(flags) <= {0, 1}
            assert len(set(names)) == len(names)  # the judge can tell every candidate apart


def test_describe_candidates_tells_look_alikes_apart():
    def cand(label, x, intended=False):
        return {"label": label, "box_xyxy": [x, 10, x + 20, 30], "intended": intended}

    ref = {
        "width": 300,
        "height": 300,
        "expression": "the largest dog",
        "candidates": [cand("dog", 10, True), cand("dog", 20), cand("dog", 250), cand("cat", 150)],
    }
    assert describe_candidates(ref) == [
        "the largest dog",
        "the dog at the top left",
        "the dog at the top right",
        "cat",
    ]
    ref["candidates"].append(cand("dog", 40))
    d = describe_candidates(ref)
    assert d[1] == "the dog at the top left (number 2 from the left)" and len(set(d)) == 5


def test_layout_gives_every_worker_work_and_drops_nothing():
    from scone_data.interop.scone_layout import plan_layout

    for world_size, workers in [(8, 3), (1, 1), (4, 2), (16, 8)]:
        slots = world_size * workers
        for total in [*range(1, 60), 127, 1000, 4099]:
            for per_group, per_file in [(1, 1), (3, 7), (64, 1000)]:
                lay = plan_layout(total, world_size, workers, per_group, per_file)
                sizes = [s for f in lay.files for s in f]
                assert sum(sizes) == total and 1 <= min(sizes) and max(sizes) <= per_group
                assert all(sum(f) <= per_file for f in lay.files)
                assert lay.units() % slots == 0 and lay.units() >= slots  # no unit dropped, none idle
                assert lay.num_used_data >= len(lay.files)  # every file is read
