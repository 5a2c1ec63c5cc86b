"""``--overwrite`` cannot destroy: hostile uses of build, regen and export through the CLI.

Each refused case must exit 2 with one ``error:`` line and leave every byte of the folder it was
pointed at (and of what it reads) as it was. A real replacement moves the old output aside, keeps
it when the new run dies, and deletes it once a run into the same folder completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_reliability_support import make_toy_coco, one_line_error, run_cli, toy_pipeline
from tests_helpers import reader_files

from scone_data.runtime import faults
from scone_data.shards.validate import validate_output


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (our lock file aside: a refused run may create it)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".scone-data.lock"
    }


@pytest.fixture
def built(tmp_path, capsys):
    """A finished toy build under ``tmp_path/work/out`` and its pipeline file (outside the output)."""
    coco = make_toy_coco(tmp_path / "in")
    out = tmp_path / "work" / "out"
    yml = toy_pipeline(tmp_path / "toy.yaml", coco, out)
    assert run_cli(["build", yml], capsys)[0] == 0
    return yml, out


def _asides(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.scone-old-"))


def test_hostile_regen_overwrite_into_the_builds_parent_is_refused(built, capsys):
    _, out = built
    parent = out.parent
    before = _tree(parent)
    code, err = run_cli(["regen", out, parent, "seed=3", "--overwrite"], capsys)
    assert code == 2 and "reads" in one_line_error(err)
    assert _tree(parent) == before and validate_output(out) == []
    code, err = run_cli(["regen", out, out, "--overwrite"], capsys)
    assert code == 2 and _tree(parent) == before


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_hostile_export_overwrite_onto_the_output_or_its_parent_is_refused(built, capsys, where):
    _, out = built
    dest = out if where == "itself" else out.parent
    before = _tree(out.parent)
    code, err = run_cli(
        ["export", out, dest, "--format", "scone-parquet", "--overwrite", "--no-progress"], capsys
    )
    line = one_line_error(err)
    assert code == 2 and "reads" in line and str(out) in line, line
    assert _tree(out.parent) == before and validate_output(out) == []


def test_hostile_build_overwrite_with_a_mistyped_setting_deletes_nothing(built, capsys):
    yml, out = built
    before = _tree(out)
    code, err = run_cli(["build", yml, "pairs.val_fracton=0.2", "--overwrite"], capsys)
    assert code == 2 and "val_fracton" in err
    assert _tree(out) == before and validate_output(out) == [] and _asides(out) == []


def test_hostile_build_overwrite_of_an_output_holding_its_sources_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    coco = make_toy_coco(out / "photos")  # the sources live inside the output folder
    yml = toy_pipeline(tmp_path / "toy.yaml", coco, out)
    assert run_cli(["build", yml], capsys)[0] == 0
    before = _tree(out)
    code, err = run_cli(["build", yml, "--overwrite"], capsys)
    assert code == 2 and "photos" in one_line_error(err)
    assert _tree(out) == before


def test_hostile_build_overwrite_of_a_folder_that_is_not_ours_is_refused(tmp_path, capsys):
    coco = make_toy_coco(tmp_path / "in")
    mine = tmp_path / "mine"  # a user's folder, mistyped as the output
    (mine / "thesis").mkdir(parents=True)
    (mine / "thesis" / "chapter1.tex").write_text("years of work\n")
    (mine / "notes.txt").write_text("keep\n")
    yml = toy_pipeline(tmp_path / "toy.yaml", coco, mine)
    before = _tree(mine)
    code, err = run_cli(["build", yml, "--overwrite"], capsys)
    assert code == 2 and "does not write" in one_line_error(err)
    assert _tree(mine) == before
    # a manifest of ours beside the user's files does not make them ours
    (mine / "manifest.json").write_text('{"scone_data_version": "0"}\n')
    assert run_cli(["build", yml, "--overwrite"], capsys)[0] == 2 and (mine / "notes.txt").exists()


def test_hostile_overwrite_keeps_the_old_output_until_the_new_one_is_complete(built, capsys, tmp_path):
    yml, out = built
    old = reader_files(out)
    env = {**os.environ, faults.ENV: "before_publish@manifest.json:1"}  # dies just before completing
    cmd = [sys.executable, "-m", "scone_data.cli", "build", str(yml), "seed=5", "--overwrite"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    (aside,) = _asides(out)
    assert reader_files(out.parent / aside) == old, "the old output must survive a failed overwrite"
    assert not (out / "manifest.json").exists()
    # the resumed run completes the new output, and only then is the old one deleted
    assert run_cli(["build", yml, "seed=5"], capsys)[0] == 0
    assert _asides(out) == [] and validate_output(out) == [] and reader_files(out) != old
    # a plain overwrite leaves exactly the new output and nothing aside
    assert run_cli(["build", yml, "--overwrite"], capsys)[0] == 0
    assert reader_files(out) == old and _asides(out) == [] and validate_output(out) == []
