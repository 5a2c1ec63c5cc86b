"""End to end on the demo: build (Ray and in-process), determinism, validate, plain-webdataset reads, regen."""

import json

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from tests_helpers import reader_files

from scone_data.cli import main
from scone_data.runtime.build import build, regen
from scone_data.runtime.config import ConfigError, load_config
from scone_data.shards.validate import validate_output

TASKS = {
    "composition_single",
    "composition_multi",
    "distinction_single_cross",
    "distinction_single_intra",
    "distinction_multi_cross",
    "distinction_multi_intra",
}


@pytest.fixture(scope="module")
def demo_ray(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("demo_ray")
    cfg = load_config(
        repo_root / "pipelines/demo.yaml", [f"output={out}", "runtime.num_cpus=2", "runtime.progress=false"]
    )
    return out, build(cfg)


@pytest.fixture(scope="module")
def demo_local(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("demo_local")
    cfg = load_config(
        repo_root / "pipelines/demo.yaml",
        [f"output={out}", "runtime.executor=local", "runtime.progress=false"],
    )
    return out, build(cfg)


def test_demo_makes_every_task_and_validates(demo_ray):
    out, manifest = demo_ray
    assert set(manifest["tasks"]) == TASKS, manifest["tasks"]
    assert manifest["samples"] == sum(manifest["tasks"].values()) > 0
    assert set(manifest["splits"]) <= {"train", "val"}
    assert validate_output(out) == []
    assert main(["validate", str(out)]) == 0
    # the demo's fixed val split (pairs.val_images + val_min_per_task) holds every task type, so its
    # SconeEval export is complete; no val photo is used by a train sample
    tasks = {s: set() for s in ("train", "val")}
    images = {s: set() for s in ("train", "val")}
    for sample in wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False):
        rec = json.loads(sample["json"])
        tasks[rec["split"]].add(rec["task"])
        images[rec["split"]] |= {c["source_image_id"] for r in rec["references"] for c in r["candidates"]}
    assert tasks["val"] == TASKS, tasks
    assert images["val"] <= {"demo-1", "demo-11"} and not images["val"] & images["train"]


def test_ray_and_in_process_builds_are_byte_identical(demo_ray, demo_local):
    a, b = reader_files(demo_ray[0]), reader_files(demo_local[0])
    assert a.keys() == b.keys() and any(k.endswith(".tar") for k in a)
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, diff


def test_building_twice_gives_the_same_bytes(demo_local, tmp_path, repo_root):
    cfg = load_config(
        repo_root / "pipelines/demo.yaml",
        [f"output={tmp_path}", "runtime.executor=local", "runtime.progress=false"],
    )
    build(cfg)
    a, b = reader_files(demo_local[0]), reader_files(tmp_path)
    assert a == b


def test_every_sample_reads_back_with_plain_webdataset(demo_ray):
    out, manifest = demo_ray
    tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    keys = []
    for s in wds.WebDataset(tars, shardshuffle=False):
        rec = json.loads(s["json"])
        keys.append(s["__key__"])
        assert rec["key"] == s["__key__"]
        for r in rec["references"]:
            assert r["member"] in s
        assert "target.jpg" in s
    assert len(keys) == len(set(keys)) == manifest["samples"]


def test_rejects_table_and_bank(demo_ray):
    out, manifest = demo_ray
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sum(manifest["rejects"].values()) == len(rejects)
    assert all(r["reason"] and r["stage"] for r in rejects)
    subjects = sum(pq.read_table(p).num_rows for p in (out / "bank/subjects").glob("*.parquet"))
    assert subjects == manifest["subjects"] > 0


def test_regen_changes_samples_without_touching_the_bank(demo_local, tmp_path):
    out, manifest = demo_local
    before = reader_files(out)
    m2 = regen(out, tmp_path / "regen", ["seed=7", "runtime.executor=local", "runtime.progress=false"])
    assert m2["kind"] == "regen" and m2["images"] == manifest["images"]
    assert validate_output(tmp_path / "regen") == []
    assert reader_files(out) == before
    k1 = {
        s["__key__"]
        for s in wds.WebDataset(sorted(map(str, (out / "shards").glob("*.tar"))), shardshuffle=False)
    }
    k2 = {
        s["__key__"]
        for s in wds.WebDataset(
            sorted(map(str, (tmp_path / "regen/shards").glob("*.tar"))), shardshuffle=False
        )
    }
    assert k1 != k2  # another seed, other samples
    with pytest.raises(ConfigError, match="decode"):
        regen(out, tmp_path / "regen2", ["decode.max_pixels=5"])


def test_resuming_with_other_settings_is_refused(demo_local, repo_root):
    out, _ = demo_local
    rc = main(
        [
            "build",
            str(repo_root / "pipelines/demo.yaml"),
            f"output={out}",
            "runtime.executor=local",
            "subjects.min_area_frac=0.01",
        ]
    )
    assert rc == 2


def test_bad_settings_are_all_reported_before_any_work(tmp_path, repo_root):
    cfg = load_config(
        repo_root / "pipelines/demo.yaml",
        [
            f"output={tmp_path / 'x'}",
            "subjects.max_border_sides=9",
            "runtime.unit_size=0",
            "shards.samples_per_shard=0",
            "decode.bogus=1",
        ],
    )
    with pytest.raises(ConfigError) as e:
        build(cfg)
    text = str(e.value)
    for field in (
        "subjects.max_border_sides",
        "runtime.unit_size",
        "shards.samples_per_shard",
        "decode.bogus",
    ):
        assert field in text
    assert not (tmp_path / "x").exists()


def test_stats_command(demo_local, capsys):
    out, manifest = demo_local
    assert main(["stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == manifest["samples"]


def test_log_json_is_one_event_per_line(tmp_path, repo_root):
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "scone_data.cli", "build", str(repo_root / "pipelines/demo.yaml"), f"output={out}",
           "runtime.executor=local", "pairs.distractor_strategy=random", "--log-json"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    events = [json.loads(line) for line in p.stderr.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "summary" and events[-1]["ok"]
    assert {"progress", "log"} <= {e["event"] for e in events}
    assert events[-1]["samples"] == json.loads((out / "manifest.json").read_text())["samples"]
    bad = subprocess.run([*cmd[:4], str(repo_root / "pipelines/demo.yaml"), "runtime.unit_size=0", "--log-json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2
    events = [json.loads(line) for line in bad.stderr.splitlines()]
    assert (
        events[-1]["event"] == "summary"
        and not events[-1]["ok"]
        and "runtime.unit_size" in events[-1]["error"]
    )


def test_demo_passes_the_audit(demo_local, capsys):
    out, manifest = demo_local
    assert main(["audit", str(out), "--strict", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == manifest["samples"] and report["failed"] == 0
    assert set(report["tasks"]) == TASKS


def test_audit_finds_a_sample_a_person_reads_as_false(demo_local, tmp_path, capsys):
    """One instruction rewritten by hand to say what its pictures do not show: audit --strict names it."""
    import io
    import shutil
    import tarfile

    out = tmp_path / "out"
    shutil.copytree(demo_local[0], out)
    tar_path = sorted((out / "shards").glob("*.tar"))[0]
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    key = None
    with tarfile.open(tar_path, "w") as tf:
        for m, data in members:
            if key is None and m.name.endswith(".json"):
                rec = json.loads(data)
                key = rec["key"]
                rec["instruction"] += " Show it in a new scene, with the red person from image 1."
                data = json.dumps(rec).encode()
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    assert main(["audit", str(out), "--strict", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    worst = [w for t in report["tasks"].values() for w in t["worst"]]
    assert [w["key"] for w in worst] == [key]
    assert {"mention_count", "promises_new_scene"} <= set(worst[0]["reasons"])
    assert main(["audit", str(out)]) == 0  # without --strict the report is informational
