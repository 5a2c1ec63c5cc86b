"""export: Scone training parquet read back the way BAGEL's loader reads it, and SconeEval jsonl."""

from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest
from interop_helpers import run_cli
from PIL import Image

from scone_data.interop.export import describe_candidates, export_scone_parquet
from scone_data.interop.reader import InteropError, iter_samples


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
    counts = export_scone_parquet(demo_output, dest, split="all", rows_per_file=7, rows_per_row_group=3)
    data_dir = str((dest / "parquet_data" / "scone_data").resolve())
    info = json.loads((dest / "parquet_info" / "scone_data.json").read_text())
    samples = list(iter_samples(demo_output))
    assert counts["samples"] == len(samples) == 18
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
        ds_info["num_total_samples"] == 18 and ds_info["num_files"] == 3 and ds_info["data_dir"] == data_dir
    )


def test_scone_parquet_data_dir_and_settings(demo_output, tmp_path):
    counts = export_scone_parquet(
        demo_output, tmp_path / "a", data_dir="/cluster/sets/mine", dataset_name="mine"
    )
    info = json.loads((tmp_path / "a" / "parquet_info" / "mine.json").read_text())
    assert list(info) == ["/cluster/sets/mine/part-00000.parquet"]
    assert counts["samples"] == sum(v["num_rows"] for v in info.values()) < 18  # train split only
    with pytest.raises(InteropError) as e:
        export_scone_parquet(demo_output, tmp_path / "b", rows_per_file=4, rows_per_row_group=5)
    assert e.value.code == 2 and not (tmp_path / "b").exists()
    with pytest.raises(InteropError) as e:
        export_scone_parquet(demo_output, tmp_path / "a")  # not empty, no overwrite
    assert e.value.code == 2
    assert run_cli(["export", str(demo_output), str(tmp_path / "a"), "--format", "scone-parquet"]) == 2
    assert (
        run_cli(["export", str(tmp_path / "nothing"), str(tmp_path / "c"), "--format", "scone-parquet"]) == 1
    )


def test_sconeeval_jsonl(demo_output, tmp_path, capsys):
    dest = tmp_path / "eval"
    assert (
        run_cli(["export", str(demo_output), str(dest), "--format", "sconeeval-jsonl", "--no-progress"]) == 0
    )
    lines = [json.loads(x) for x in (dest / "data.jsonl").read_text().splitlines()]
    val = [rec for rec, _ in iter_samples(demo_output, "val", want_images=False)]
    assert len(lines) == len(val) > 0
    assert "samples" in capsys.readouterr().out
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
