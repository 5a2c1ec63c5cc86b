"""``validate`` on a damaged output: every edit of a count, an index, a stats file or the bank is found,
each as one line, and the command exits non-zero; damaged files are findings, never tracebacks."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests_helpers import build_demo

from scone_data.cli import main
from scone_data.shards.validate import validate_output


@pytest.fixture(scope="module")
def built(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("built") / "out"
    build_demo(repo_root, out)
    assert validate_output(out) == []
    return out


@pytest.fixture
def out(built, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(built, dst)
    return dst


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _edit_index(out, column, fn):
    p = out / "shards/train-00000.parquet"
    t = pq.read_table(p)
    vals = t.column(column).to_pylist()
    vals[0] = fn(vals[0])
    t = t.set_column(t.schema.get_field_index(column), t.schema.field(column), pa.array(vals))
    pq.write_table(t, p)


def _write(rel, data):
    """An edit that overwrites the file ``rel`` of the output with ``data``."""
    return lambda o: (o / rel).write_bytes(data)


def _other_task(task):
    return "composition_single" if task != "composition_single" else "composition_multi"


def _other_reason(m):
    m["rejects"] = {"no_subjects": 1}


EDITS = {
    "index_task": (lambda o: _edit_index(o, "task", _other_task), "index task"),
    "index_split": (lambda o: _edit_index(o, "split", lambda s: "val"), "index split"),
    "manifest_images": (
        lambda o: _edit_json(o / "manifest.json", lambda m: m.update(images=m["images"] + 1)),
        "images, the manifest says",
    ),
    "manifest_subjects": (
        lambda o: _edit_json(o / "manifest.json", lambda m: m.update(subjects=m["subjects"] - 1)),
        "subjects, the manifest says",
    ),
    "manifest_rejects": (lambda o: _edit_json(o / "manifest.json", _other_reason), "rejects by reason"),
    "manifest_splits": (
        lambda o: _edit_json(o / "manifest.json", lambda m: m.update(splits={"test": m["samples"]})),
        "manifest: splits",
    ),
    "manifest_shard_bytes": (
        lambda o: _edit_json(o / "manifest.json", lambda m: m["shards"][0].update(bytes=1)),
        "bytes",
    ),
    "stats_sha256": (
        lambda o: _edit_json(o / "shards/train-00000.stats.json", lambda s: s.update(sha256="0" * 64)),
        "stats sha256",
    ),
    "stats_samples": (
        lambda o: _edit_json(o / "shards/train-00000.stats.json", lambda s: s.update(samples=1)),
        "stats samples",
    ),
    "stray_parquet": (
        lambda o: shutil.copy(o / "shards/train-00000.parquet", o / "shards/extra.parquet"),
        "shards/extra.parquet: a file the output does not account for",
    ),
    "stray_txt": (_write("notes.txt", b"hi"), "notes.txt: a file the output"),
    "stray_bank_file": (
        _write("bank/images/part-7.parquet", b"x"),
        "bank/images/part-7.parquet: not a part",
    ),
    "garbage_rejects": (
        _write("rejects.parquet", b"garbage"),
        "rejects.parquet is unreadable",
    ),
    "wrong_table_as_rejects": (
        lambda o: shutil.copy(o / "shards/train-00000.parquet", o / "rejects.parquet"),
        "not a rejects table",
    ),
    "bank_deleted": (lambda o: shutil.rmtree(o / "bank"), "bank/: missing"),
    "subjects_part_deleted": (
        lambda o: (o / "bank/subjects/part-00001.parquet").unlink(),
        "bank/subjects/part-00001.parquet: missing",
    ),
    "garbage_bank_part": (
        _write("bank/images/part-00000.parquet", b"\x00" * 64),
        "bank/images/part-00000.parquet: unreadable",
    ),
    "garbage_index": (
        _write("shards/train-00000.parquet", b"not parquet"),
        "index train-00000.parquet is unreadable",
    ),
    "garbage_stats": (
        _write("shards/train-00000.stats.json", b"\xff\xfe{"),
        "stats train-00000.stats.json is unreadable",
    ),
    "stats_not_an_object": (
        _write("shards/train-00000.stats.json", b"[1, 2]"),
        "not a json object",
    ),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_validate_hostile_edit_is_a_finding(out, case, capsys):
    edit, expect = EDITS[case]
    edit(out)
    problems = validate_output(out)
    assert any(expect in p for p in problems), problems
    assert all("\n" not in p for p in problems)
    capsys.readouterr()
    assert main(["validate", str(out), "--no-decode"]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if line.startswith("INVALID ")] == [f"INVALID {p}" for p in problems]
