"""Inputs that change under a build, and outputs placed where a source reads: hostile uses through
the CLI.

A resume (here: a rerun after an injected write error, as after a kill) whose inputs changed since
the done units were made must exit 2, name what changed, and write nothing: before units were keyed
by their inputs, such a rerun kept the old units, so one image ended in neither bank nor rejects,
another was processed twice, and ``validate`` passed. An output inside a folder a source reads must
be refused before the folder is created: a rerun read its own outputs as inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_reliability_support import make_toy_coco, one_line_error, run_cli, toy_pipeline
from tests_helpers import write_tar

from scone_data.imageio import encode_png
from scone_data.runtime import faults
from scone_data.shards.validate import validate_output

TOY = 4  # images (units of 1): two done before the injected error, two after


def _png(seed: int, w: int = 48, h: int = 40) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (our lock file aside: a refused run may rewrite it)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".scone-data.lock"
    }


def _interrupted(yml: Path, capsys, spec: str = "before_publish@part-00002.parquet:1:eio") -> None:
    """Run the build until a write fails (by default the third unit's first part: units 0, 1 done)."""
    faults.arm(spec)
    try:
        assert run_cli(["build", yml], capsys)[0] == 1
    finally:
        faults.arm()


def _refused(yml: Path, out: Path, capsys) -> str:
    """Resume; it must exit 2 and leave the output as it was. Returns stderr."""
    before = _tree(out)
    code, err = run_cli(["build", yml], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "the inputs changed since this output was started" in err, err
    assert _tree(out) == before
    return err


@pytest.fixture
def coco_build(tmp_path):
    """A toy COCO corpus and its pipeline file (output outside the images' folder)."""
    coco = make_toy_coco(tmp_path / "in", n=TOY)
    out = tmp_path / "out"
    return coco, out, toy_pipeline(tmp_path / "toy.yaml", coco, out)


def _pipeline(tmp_path: Path, out: Path, source: dict) -> Path:
    """The toy pipeline file with ``source`` as its only source."""
    import yaml

    yml = toy_pipeline(tmp_path / "pipeline.yaml", tmp_path / "unused.json", out)
    cfg = yaml.safe_load(yml.read_text())
    cfg["sources"] = [source]
    yml.write_text(yaml.safe_dump(cfg))
    return yml


@pytest.fixture
def folder_build(tmp_path):
    """A folder of 4 plain photos (no annotations, so no subjects: only the bank phase matters)."""
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(TOY):
        (root / f"p{i}.png").write_bytes(_png(i))
    out = tmp_path / "out"
    return root, out, _pipeline(tmp_path, out, {"type": "folder", "name": "photos", "root": str(root)})


def test_hostile_resume_after_an_image_is_appended_to_the_coco_json_is_refused(coco_build, capsys):
    coco, out, yml = coco_build
    _interrupted(yml, capsys)
    shutil.copy(coco.parent / "toy00.png", coco.parent / "extra.png")
    doc = json.loads(coco.read_text())
    doc["images"].append({"id": 99, "file_name": "extra.png", "width": 160, "height": 120})
    coco.write_text(json.dumps(doc))
    err = _refused(yml, out, capsys)
    assert f"changed: {coco} (size" in err and "unit-00000, unit-00001" in err, err


def test_hostile_resume_after_a_coco_image_file_is_replaced_is_refused(coco_build, capsys):
    coco, out, yml = coco_build
    _interrupted(yml, capsys)
    (coco.parent / "toy01.png").write_bytes((coco.parent / "toy03.png").read_bytes())
    err = _refused(yml, out, capsys)
    assert (
        f"changed: {coco.parent / 'toy01.png'}" in err and "units made from other inputs: unit-00001\n" in err
    )
    assert str(coco) not in err  # the json did not change


def test_hostile_resume_after_a_folder_image_is_removed_is_refused(folder_build, capsys):
    root, out, yml = folder_build
    _interrupted(yml, capsys)
    (root / "p0.png").unlink()  # every later photo moves up one unit
    err = _refused(yml, out, capsys)
    assert f"gone: {root / 'p0.png'}" in err and "unit-00000, unit-00001" in err, err


def test_hostile_resume_after_a_folder_image_is_replaced_is_refused(folder_build, capsys):
    root, out, yml = folder_build
    _interrupted(yml, capsys)
    (root / "p1.png").write_bytes(_png(7, 40, 40))
    err = _refused(yml, out, capsys)
    assert f"changed: {root / 'p1.png'} (size" in err and "unit-00001\n" in err, err


def test_hostile_rerun_after_an_image_is_added_to_a_finished_build_is_refused(folder_build, capsys):
    root, out, yml = folder_build
    assert run_cli(["build", yml], capsys)[0] == 0
    (root / "p9.png").write_bytes(_png(9))  # sorts last: a new unit, every done unit unchanged
    err = _refused(yml, out, capsys)
    assert f"added: {root / 'p9.png'}" in err and "new since the bank was complete: unit-00004" in err, err
    assert validate_output(out) == []


def test_hostile_rerun_after_the_last_image_is_removed_is_refused(folder_build, capsys):
    root, out, yml = folder_build
    assert run_cli(["build", yml], capsys)[0] == 0
    (root / "p3.png").unlink()  # no unit moves: the last one is gone, with its bank parts
    err = _refused(yml, out, capsys)
    assert f"gone: {root / 'p3.png'}" in err and "no longer make: unit-00003" in err, err


def test_hostile_resume_after_removing_the_image_of_a_unit_killed_before_its_marker_is_refused(
    folder_build, capsys
):
    root, out, yml = folder_build
    _interrupted(yml, capsys, "before_publish@unit-00003.done:1:eio")  # its parts written, not marked
    (root / "p3.png").unlink()
    err = _refused(yml, out, capsys)  # else the bank would read the removed photo's parts
    assert "bank/images/part-00003.parquet: written for a unit the inputs no longer make" in err, err


def test_resume_with_unchanged_inputs_is_not_refused(coco_build, capsys):
    coco, out, yml = coco_build
    _interrupted(yml, capsys)
    assert run_cli(["build", yml], capsys)[0] == 0
    assert validate_output(out) == []
    [(source, ref, ids)] = json.loads((out / "ledger" / "bank" / "unit-00001.done").read_text())["inputs"]
    assert (source, ref, sorted(ids)) == (0, "images[1]", sorted([str(coco), str(coco.parent / "toy01.png")]))


# -- outputs inside what a source reads ---------------------------------------------------------------
def _sources(tmp_path: Path, kind: str) -> tuple[dict, Path]:
    """A source of ``kind`` and the folder it reads images from."""
    d = tmp_path / "data"
    d.mkdir()
    if kind == "folder":
        (d / "a.png").write_bytes(_png(1))
        return {"type": "folder", "name": "f", "root": str(d)}, d
    if kind == "coco":
        coco = make_toy_coco(d, n=1)
        return {"type": "coco", "name": "c", "annotations": str(coco)}, d
    if kind == "parquet":
        pq.write_table(pa.table({"img": pa.array([_png(1)], pa.binary())}), d / "t.parquet")
        return {"type": "parquet", "name": "p", "paths": str(d / "*.parquet"), "image_column": "img"}, d
    write_tar(d / "a.tar", [("000.png", _png(1))])
    return {"type": "webdataset", "name": "w", "paths": str(d / "a.tar")}, d


@pytest.mark.parametrize("kind", ["folder", "coco", "parquet", "webdataset"])
def test_hostile_output_inside_a_source_folder_is_refused(tmp_path, capsys, kind):
    src, folder = _sources(tmp_path, kind)
    out = folder / "out"
    yml = _pipeline(tmp_path, out, src)
    before = _tree(folder)
    code, err = run_cli(["build", yml], capsys)
    line = one_line_error(err)
    assert code == 2 and f"lies inside {folder}" in line and "reads" in line, err
    assert not out.exists() and _tree(folder) == before
