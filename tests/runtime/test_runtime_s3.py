"""Object storage against a real S3 API: moto's standalone server, started here on a loopback port.

The demo is built once into a bucket and once into a local folder with the same settings (in-process
executor): every object must equal the local file of the same name, byte for byte (the manifest less
its ``output``, which names where it was written). On that output: validate, regen, both exports and
the trainer's shard reader; a build interrupted in its shard phase resumed from the bucket's ledger;
a folder source listed and read from the bucket.
"""

import json
import os
from pathlib import Path

import pytest

moto_server = pytest.importorskip(
    "moto.server",
    reason="moto[server] is not installed (requirements.txt, dev part): no S3 API to test against",
)

from scone_data.runtime import faults, storage  # noqa: E402

BUCKET = "scone"
# the demo with cheaper masks and pictures, small shards and planning partitions: several shards and
# plan files (and the distractor pool) in the bucket, a few seconds a build
ARGS = [
    "shards.samples_per_shard=4",
    "pairs.plan_partition_images=4",
    "pairs.distractor_strategy=random",
    "pairs.ref_size=256",
    "pairs.target_max_side=512",
    "segment.max_side=128",
    "segment.iterations=2",
]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port) with one bucket; the AWS_* variables point at it."""
    import logging

    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            mp.delenv(k, raising=False)
        for k, v in env.items():
            mp.setenv(k, v)
        storage.reset()
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        try:
            yield f"s3://{BUCKET}"
        finally:
            storage.reset()
            server.stop()


def _build(repo_root: Path, out, extra=()) -> dict:
    from scone_data.runtime.build import build
    from scone_data.runtime.config import load_config

    over = [f"output={out}", "runtime.executor=local", "runtime.progress=false", *ARGS, *extra]
    return build(load_config(repo_root / "pipelines/demo.yaml", over))


@pytest.fixture(scope="module")
def local_build(repo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    _build(repo_root, out)
    return out


@pytest.fixture(scope="module")
def s3_build(s3, repo_root) -> str:
    _build(repo_root, f"{s3}/build")
    return f"{s3}/build"


def objects(uri: str) -> dict[str, bytes]:
    root = storage.path(uri)
    return {str(p.relative_to(root)): p.read_bytes() for p, _ in root.walk_files()}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same(remote: dict[str, bytes], local: dict[str, bytes], paths=("output",)) -> None:
    """Every object equals the local file; the manifest's config less ``paths`` (where each was written)."""
    assert sorted(remote) == sorted(local)
    for name in local:
        if name == "manifest.json":
            a, b = json.loads(remote[name]), json.loads(local[name])
            for k in paths:
                assert (a["config"].pop(k), b["config"].pop(k)) != (None, None)
            assert a == b
        else:
            assert remote[name] == local[name], name


def test_build_to_s3_equals_local(s3_build, local_build):
    remote, local = objects(s3_build), files(local_build)
    assert (
        any(n.startswith("bank/images/part-") for n in local) and sum(n.endswith(".tar") for n in local) > 2
    )
    assert_same(remote, local)
    assert json.loads(remote["manifest.json"])["config"]["output"] == s3_build


def test_validate_s3_output(s3_build, capsys):
    from scone_data.cli import main
    from scone_data.shards.validate import validate_output

    assert validate_output(s3_build) == []
    assert main(["validate", s3_build]) == 0
    # a stray object the manifest does not list is found there as on a disk
    stray = storage.path(s3_build) / "shards" / "train-00099.tar"
    stray.write_bytes(b"not a shard")
    try:
        assert validate_output(s3_build) == ["shards/train-00099.tar: a shard the manifest does not list"]
    finally:
        stray.unlink()


def test_regen_from_and_to_s3(s3, s3_build, local_build, tmp_path):
    from scone_data.runtime.build import regen

    over = ["seed=3", "shards.samples_per_shard=5", "runtime.executor=local", "runtime.progress=false"]
    regen(s3_build, f"{s3}/regen", over)
    regen(local_build, tmp_path / "regen", over)
    assert_same(objects(f"{s3}/regen"), files(tmp_path / "regen"), paths=("output", "bank"))


def test_exports_from_s3(s3, s3_build, local_build, tmp_path):
    from scone_data.interop.export import export_scone_parquet, export_sconeeval_jsonl

    export_scone_parquet(s3_build, f"{s3}/export", split="all")
    export_scone_parquet(local_build, tmp_path / "export", split="all")
    remote, local = objects(f"{s3}/export"), files(tmp_path / "export")
    assert sorted(remote) == sorted(local)
    parts = [n for n in local if n.startswith("parquet_data/")]
    assert parts and all(remote[n] == local[n] for n in parts)
    export_sconeeval_jsonl(s3_build, tmp_path / "eval_s3", split="val", allow_missing=True)
    export_sconeeval_jsonl(local_build, tmp_path / "eval_local", split="val", allow_missing=True)
    a, b = files(tmp_path / "eval_s3"), files(tmp_path / "eval_local")
    a.pop(".scone-data-export.json"), b.pop(".scone-data-export.json")  # names the output it read
    a.pop(".scone-data.lock"), b.pop(".scone-data.lock")
    assert a == b and "data.jsonl" in a


def test_trainer_reads_s3_shards(s3_build, local_build):
    # the repo's training/ (installed as scone_train): imported from the tree so that a checkout's
    # own copy is the one tested
    from training.data import iter_raw, list_shards

    for split in ("train", "val"):
        remote, local = list_shards([s3_build], split), list_shards([str(local_build)], split)
        assert remote == [f"{s3_build}/shards/{Path(p).name}" for p in local]
        a, b = list(iter_raw(remote)), list(iter_raw(local))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):  # webdataset's own __url__, __local_path__ say where each was read
            assert {k: v for k, v in x.items() if k == "__key__" or not k.startswith("__")} == {
                k: v for k, v in y.items() if k == "__key__" or not k.startswith("__")
            }


def test_resume_reads_the_bucket_ledger(s3, repo_root, local_build, tmp_path):
    """A shard phase that fails at its second shard's marker, then a rerun: it skips the bank units and
    the shard the bucket's ledger marks done, and the output equals the uninterrupted local build."""
    out = f"{s3}/resume"
    faults.arm("before_publish@train-00001.done:1:eio")
    try:
        with pytest.raises(OSError):
            _build(repo_root, out)
    finally:
        faults.arm()
    left = objects(out)
    assert "manifest.json" not in left and "ledger/shards/train-00000.done" in left
    assert "shards/train-00001.tar" in left and "ledger/shards/train-00001.done" not in left
    assert sum(n.startswith("ledger/bank/") for n in left) == 3
    # the planning partitions' files and the distractor pool went to the bucket too
    assert "ledger/plan/pool.json" in left and sum(n.startswith("ledger/plan/plans/") for n in left) > 2
    trace = tmp_path / "trace.tsv"
    faults.arm(trace=trace)
    try:
        _build(repo_root, out)
    finally:
        faults.arm()
    written = {Path(line.split("\t")[1]).name for line in trace.read_text().splitlines()}
    assert not any(n.startswith(("part-", "unit-", "train-00000")) for n in written), written
    assert "train-00001.done" in written and "manifest.json" in written
    assert_same(objects(out), files(local_build))


def test_s3_output_refusals(s3, repo_root):
    from scone_data.runtime.outdir import OutputError

    (storage.path(s3) / "foreign" / "notes.txt").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="does not write"):
        _build(repo_root, f"{s3}/foreign")
    from scone_data.runtime.build import build
    from scone_data.runtime.config import load_config

    cfg = load_config(repo_root / "pipelines/demo.yaml", [f"output={s3}/x", "runtime.executor=local"])
    with pytest.raises(OutputError, match="not supported on an object store"):
        build(cfg, overwrite=True)


def test_s3_environment(s3):
    fs = storage.path(f"{s3}/k").fs
    assert fs.region == "us-east-1"
    assert storage.path("file:///tmp/x") == Path("/tmp/x") and storage.path("pkg://a/b") == Path("pkg://a/b")
    assert str(storage.path("s3://b/k/")) == "s3://b/k" and os.environ["AWS_ENDPOINT_URL"].startswith(
        "http://127."
    )


def _upload(folder: Path, uri: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            (storage.path(uri) / str(p.relative_to(folder))).write_bytes(p.read_bytes())


def _coco_copy(repo_root: Path, folder: Path) -> None:
    """The demo's COCO json and captions with its photos beside them (file_names made relative)."""
    from scone_data.sources.base import resolve_path

    doc = json.loads((repo_root / "scone_data/data/demo/coco.json").read_bytes())
    (folder / "images").mkdir(parents=True)
    for im in doc["images"]:
        name = f"images/{Path(im['file_name']).name}"
        (folder / name).write_bytes(Path(resolve_path(im["file_name"])).read_bytes())
        im["file_name"] = name
    (folder / "coco.json").write_text(json.dumps(doc))
    (folder / "captions.json").write_bytes((repo_root / "scone_data/data/demo/captions.json").read_bytes())


def _tables_less_uri(out) -> dict[str, list]:
    """Every bank part and the rejects table, rows without ``uri`` (where the input was), plus the
    uris' file names."""
    import pyarrow.parquet as pq

    root = storage.path(out)
    names = sorted(
        n for n in (objects(out) if storage.is_uri(out) else files(Path(out))) if n.endswith(".parquet")
    )
    got = {}
    for n in names:
        if n.startswith("shards/"):
            continue
        rows = pq.read_table(storage.parquet_source(root / n)).to_pylist()
        got[n] = [
            ({k: v for k, v in r.items() if k != "uri"}, r.get("uri", "").rpartition("/")[2]) for r in rows
        ]
    return got


def test_coco_source_on_s3(s3, repo_root, tmp_path):
    """The demo's COCO json, captions and photos in a bucket build the same bank and shards as the
    same files on a disk (less each input's uri)."""
    _coco_copy(repo_root, tmp_path / "coco")
    _upload(tmp_path / "coco", f"{s3}/coco")
    outs = {}
    for where, root in (("s3", f"{s3}/coco"), ("local", str(tmp_path / "coco"))):
        out = f"{s3}/coco-out" if where == "s3" else tmp_path / "coco-out"
        src = f"sources=[{{type: coco, name: demo, annotations: {root}/coco.json, captions: {root}/captions.json}}]"
        _build(repo_root, out, [src])
        outs[where] = out
    remote, local = objects(outs["s3"]), files(outs["local"])
    assert sorted(remote) == sorted(local)
    # the same samples and pictures; only the config hash in each record's provenance differs (the
    # source's settings, its paths among them, are hashed)
    from scone_data.shards.output import Output

    def samples(out):
        got = []
        for rec, members in Output(out).iter_samples():
            assert len(rec["provenance"].pop("config_hash")) > 0
            got.append((rec, members))
        return got

    assert samples(outs["s3"]) == samples(outs["local"]) != []
    assert _tables_less_uri(outs["s3"]) == _tables_less_uri(outs["local"])
    marker = json.loads(remote["ledger/bank/unit-00000.done"])
    assert any(k.startswith(f"{s3}/coco/images/") for _, _, ids in marker["inputs"] for k in ids)


def test_folder_source_on_s3(s3, repo_root, tmp_path):
    """Photos, a caption sidecar, a hidden file, a sub-folder and a file of another kind in a bucket:
    the same rows and bank as from the same folder on a disk; a changed object stops a resume."""
    from scone_data.runtime.inputs import InputsChanged
    from scone_data.sources import make_source

    _coco_copy(repo_root, tmp_path / "c")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, p in enumerate(sorted((tmp_path / "c/images").iterdir())[:4]):
        (photos / ("sub" if i % 2 else "") / p.name).write_bytes(p.read_bytes())
    first = sorted(p for p in photos.iterdir() if p.is_file())[0]
    first.with_suffix(".txt").write_text("a caption beside its photo")
    (photos / ".hidden.jpg").write_bytes(b"never listed")
    (photos / "notes.md").write_bytes(b"not an image")
    _upload(photos, f"{s3}/photos")
    srcs = {w: make_source({"type": "folder", "name": "f", "root": r}) for w, r in
            (("s3", f"{s3}/photos"), ("local", str(photos)))}  # fmt: skip
    assert srcs["s3"].validate() == [] and srcs["s3"].list_refs() == srcs["local"].list_refs()
    a, b = srcs["s3"].read_all(), srcs["local"].read_all()
    assert [u.rpartition("/")[2] for u in a["uri"]] == [u.rpartition("/")[2] for u in b["uri"]]
    assert (
        a["image_bytes"] == b["image_bytes"] and a["caption"] == b["caption"] and a["reason"] == b["reason"]
    )
    assert "a caption beside its photo" in a["caption"]
    outs = {}
    for where, root in (("s3", f"{s3}/photos"), ("local", str(photos))):
        out = f"{s3}/folder-out" if where == "s3" else tmp_path / "folder-out"
        _build(repo_root, out, [f"sources=[{{type: folder, name: f, root: {root}}}]", "pairs.val_images=[]"])
        outs[where] = out
    assert _tables_less_uri(outs["s3"]) == _tables_less_uri(outs["local"])
    # the bucket's ledger holds each object's identity: a rewritten photo stops the resume
    (storage.path(f"{s3}/photos") / first.name).write_bytes(first.read_bytes() + b"\0")
    with pytest.raises(InputsChanged, match=first.name):
        _build(
            repo_root,
            outs["s3"],
            [f"sources=[{{type: folder, name: f, root: {s3}/photos}}]", "pairs.val_images=[]"],
        )


def test_cli_reads_s3_output(s3_build, local_build, capsys):
    from scone_data.cli import main
    from scone_data.pairs.audit import audit

    assert main(["stats", s3_build, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] > 0
    a, b = audit(s3_build), audit(local_build)
    assert (a.pop("output"), b.pop("output")) == (s3_build, str(local_build)) and a == b
    assert main(["audit", s3_build]) == 0


def test_ray_workers_write_to_s3(s3, repo_root, local_build):
    """The embedded Ray executor: its actors write the bank parts and its tasks the shards into the
    bucket (the S3 settings reach them in the job's runtime_env); the same objects as the local build."""
    from scone_data.runtime.build import build
    from scone_data.runtime.config import load_config

    out = f"{s3}/ray"
    over = [f"output={out}", "runtime.executor=ray", "runtime.num_cpus=2", "runtime.progress=false", *ARGS]
    build(load_config(repo_root / "pipelines/demo.yaml", over))
    remote, local = objects(out), files(local_build)
    remote.pop(".scone-data.lock"), local.pop(".scone-data.lock")  # written by this process: its pid
    assert_same(remote, local)
