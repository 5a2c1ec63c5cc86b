"""Damaged inputs through the CLI: one ``error:`` line naming the file and exit 2, never a
traceback; a corrupt ledger marker is redone (with a warning), not trusted and not fatal."""

from __future__ import annotations

import pytest
from test_reliability_support import make_toy_coco, one_line_error, run_cli, toy_pipeline
from tests_helpers import reader_files

from scone_data.shards.validate import validate_output


@pytest.fixture
def built(tmp_path, capsys):
    coco = make_toy_coco(tmp_path / "in")
    out = tmp_path / "out"
    yml = toy_pipeline(tmp_path / "toy.yaml", coco, out)
    assert run_cli(["build", yml], capsys)[0] == 0
    return yml, out


def test_hostile_truncated_shard_makes_export_and_inspect_fail_in_one_line(built, tmp_path, capsys):
    _, out = built
    tar = out / "shards" / "train-00001.tar"
    tar.write_bytes(tar.read_bytes()[:1500])  # cut inside the first sample's images
    for fmt in ("scone-parquet", "sconeeval-jsonl"):
        dest = tmp_path / f"export-{fmt}"
        code, err = run_cli(["export", out, dest, "--format", fmt, "--split", "all", "--no-progress"], capsys)
        line = one_line_error(err)
        assert code == 2 and "train-00001.tar" in line and "truncated" in line, line
    code, err = run_cli(["inspect", out, "--html", tmp_path / "r.html", "--no-progress"], capsys)
    assert code == 2 and "train-00001.tar" in one_line_error(err)


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"samples": "many"}'])
def test_hostile_garbage_manifest_makes_stats_fail_in_one_line(built, capsys, garbage):
    _, out = built
    (out / "manifest.json").write_bytes(garbage)
    for argv in (["stats", out], ["stats", out, "--json"]):
        code, err = run_cli(argv, capsys)
        line = one_line_error(err)
        assert code == 2 and "manifest.json" in line, line
    code, err = run_cli(["inspect", out, "--no-progress"], capsys)
    assert code == 2 and "manifest.json" in one_line_error(err)


def test_hostile_export_onto_its_own_output_names_the_problem(built, capsys):
    _, out = built
    before = reader_files(out)
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(
            ["export", out, out, "--format", "scone-parquet", "--no-progress", *extra], capsys
        )
        line = one_line_error(err)
        assert code == 2 and "reads" in line and line != f"error: {out}", line
    assert reader_files(out) == before


@pytest.mark.parametrize("marker", ["bank/unit-00002.done", "shards/train-00001.done"])
@pytest.mark.parametrize("damage", [b'{"config_ha', b"", b"\x00\x00\x00", b"[]"])
def test_hostile_corrupt_ledger_marker_is_redone_with_a_warning(built, capsys, marker, damage):
    yml, out = built
    want = reader_files(out)
    (out / "ledger" / marker).write_bytes(damage)
    (out / "manifest.json").unlink()  # the run is resumed
    code, err = run_cli(["build", yml], capsys)
    assert code == 0 and "Traceback" not in err
    warned = [ln for ln in err.splitlines() if "unreadable" in ln and marker.split("/")[1] in ln]
    assert len(warned) == 1, err
    assert reader_files(out) == want and validate_output(out) == []
