"""``regen`` on a damaged bank: a missing or garbage part, or a garbage manifest, is refused with the list
of findings (exit 2, nothing written); a stale temporary beside the parts is never read as data."""

import json
import shutil

import pytest
from tests_helpers import build_demo

from scone_data.bank.store import Bank, check_bank
from scone_data.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("bank") / "out"
    return out, build_demo(repo_root, out)


@pytest.fixture
def out(built, tmp_path):
    dst = tmp_path / "build"
    shutil.copytree(built[0], dst)
    return dst


def _regen(out, new, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["regen", str(out), str(new), "runtime.progress=false", "--executor", "local"])
    return code, capsys.readouterr().err


def test_regen_hostile_deleted_subjects_part_is_refused(out, tmp_path, capsys):
    (out / "bank/subjects/part-00001.parquet").unlink()
    code, err = _regen(out, tmp_path / "new", capsys)
    assert code == 2
    assert "bank/subjects/part-00001.parquet: missing" in err
    assert "subjects, the manifest says" in err
    assert "Traceback" not in err and not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["images", "subjects", "rejects"])
def test_regen_hostile_garbage_part_is_refused(out, tmp_path, capsys, kind):
    (out / f"bank/{kind}/part-00000.parquet").write_bytes(b"PAR1 not really")
    code, err = _regen(out, tmp_path / "new", capsys)
    assert code == 2
    assert f"bank/{kind}/part-00000.parquet: unreadable" in err
    assert "Traceback" not in err and not (tmp_path / "new").exists()


def test_regen_hostile_garbage_manifest_is_refused(out, tmp_path, capsys):
    (out / "manifest.json").write_bytes(b"\xff\xfe not json")
    code, err = _regen(out, tmp_path / "new", capsys)
    assert code == 2 and "manifest.json" in err
    assert not (tmp_path / "new").exists()


def test_regen_hostile_stale_temporary_part_is_not_read(out, built, tmp_path, capsys):
    manifest = built[1]
    for d in ("images", "subjects", "rejects"):
        for name in (".tmp-part-00007.parquet", ".tmp-scone.4242.part-00007.parquet"):
            shutil.copy(out / f"bank/{d}/part-00000.parquet", out / f"bank/{d}/{name}")
    bank = Bank(out)
    assert bank.duplicates == [] and len(bank.images) == manifest["images"]
    assert len(bank.subjects) == manifest["subjects"]
    assert check_bank(out, manifest)[1] == []
    code, err = _regen(out, tmp_path / "new", capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "new/manifest.json").read_text())
    assert (m["images"], m["subjects"], m["rejects"]) == (
        manifest["images"],
        manifest["subjects"],
        manifest["rejects"],
    )
