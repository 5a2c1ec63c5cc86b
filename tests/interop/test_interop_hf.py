"""Hugging Face datasets reads our shards with load_dataset("webdataset", ...) and our features."""

from __future__ import annotations

import json

import pytest

from scone_data.interop.hf import hf_features, load_hf
from scone_data.interop.reader import iter_samples, shard_paths

datasets = pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")


def test_load_dataset_webdataset(demo_output, tmp_path):
    tars = [str(p) for p in shard_paths(demo_output)]
    files = {"train": [t for t in tars if "/train-" in t], "validation": [t for t in tars if "/val-" in t]}
    ds = datasets.load_dataset(
        "webdataset", data_files=files, features=hf_features(), cache_dir=str(tmp_path)
    )
    manifest = json.loads((demo_output / "manifest.json").read_text())
    assert ds["train"].num_rows == manifest["splits"]["train"]
    assert ds["validation"].num_rows == manifest["splits"]["val"]
    ours = {rec["key"]: (rec, members) for rec, members in iter_samples(demo_output)}
    for row in ds["train"]:
        rec, members = ours[row["__key__"]]
        assert row["json"]["task"] == rec["task"] and row["json"]["instruction"] == rec["instruction"]
        assert row["json"]["references"][0]["expression"] == rec["references"][0]["expression"]
        n = len(rec["references"])
        for i in range(3):
            img = row[f"ref{i}.jpg"]
            if i < n:
                assert img.size == (rec["references"][i]["width"], rec["references"][i]["height"])
            else:
                assert img is None  # a member this sample does not have
        assert row["target.jpg"].size == (rec["target"]["width"], rec["target"]["height"])
    both = load_hf(demo_output, cache_dir=str(tmp_path / "c2"))
    assert set(both) == {"train", "val"} and both["val"].num_rows == manifest["splits"]["val"]


def test_features_sized_from_the_output(tmp_path):
    from interop_helpers import image_bytes

    from scone_data.interop.imports import import_dataset

    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(80 + i))
    row = {"prompt": "four things", "image_paths": [f"{i}.png" for i in range(4)], "image_tgt_path": "4.png"}
    (tmp_path / "uno.json").write_text(json.dumps([row]))
    out = tmp_path / "out"
    import_dataset([tmp_path / "uno.json"], out, "json", max_references=4)
    assert "ref3.jpg" in hf_features(out) and "ref3.jpg" not in hf_features()
    ds = load_hf(out, cache_dir=str(tmp_path / "c"))
    assert ds["train"][0]["ref3.jpg"].size == (48, 40)  # the 4th reference is there
    with pytest.raises(ValueError, match="4 references"):
        load_hf(out, max_references=3)
