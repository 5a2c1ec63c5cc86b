"""Checkpoint registry and `weights` CLI: real downloads through urllib from file:// URLs."""

import hashlib

import pytest
from tests_helpers import weights_cli

from scone_data.models import registry
from scone_data.models.vocab import PhraseMatcher, load_vocabulary


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A registry entry whose 'server' is a local file, and an empty cache."""
    src = tmp_path / "server" / "toy.pth"
    src.parent.mkdir()
    src.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    ck = registry.Checkpoint("toy", "sam", "toy", "toy.pth", src.as_uri(), digest, src.stat().st_size)
    monkeypatch.setitem(registry.CHECKPOINTS, "toy", ck)
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path / "cache"))
    return ck


def test_official_entries_are_complete():
    names = {"sam_vit_b", "sam_vit_l", "sam_vit_h", "groundingdino_swint_ogc", "groundingdino_swinb_cogcoor"}
    assert names <= set(registry.CHECKPOINTS)
    for n in names:
        ck = registry.CHECKPOINTS[n]
        assert ck.url.startswith("https://") and ck.filename in ck.url and ck.size > 100_000_000
        assert ck.sha256 is None or len(ck.sha256) == 64


def test_fetch_verifies_and_renames(toy, capsys):
    assert "weights fetch toy" in registry.problems("toy")[0]
    path = registry.fetch("toy", log=lambda *_: None)
    assert path == registry.default_path("toy") and registry.problems("toy") == []
    assert not path.with_name("toy.pth.part").exists()
    assert weights_cli("verify", "toy") == 0 and toy.sha256 in capsys.readouterr().out


def test_fetch_rejects_a_wrong_hash_and_leaves_nothing(toy, monkeypatch):
    monkeypatch.setitem(
        registry.CHECKPOINTS, "toy", registry.Checkpoint(**{**toy.__dict__, "sha256": "0" * 64})
    )
    with pytest.raises(registry.CheckpointError, match="expected"):
        registry.fetch("toy", log=lambda *_: None)
    assert not registry.default_path("toy").exists()
    assert list(registry.default_path("toy").parent.glob("*.part")) == []


def test_corrupt_file_is_named_with_the_fix(toy):
    p = registry.default_path("toy")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"x" * toy.size)  # right size, wrong bytes
    (msg,) = registry.problems("toy")
    assert str(p) in msg and "sha256" in msg and "scone-data weights fetch toy" in msg
    with pytest.raises(registry.CheckpointError):
        registry.require("toy")


def test_cli_list_path_and_usage_errors(toy, capsys):
    assert weights_cli("list") == 0 and "sam_vit_h" in capsys.readouterr().out
    assert weights_cli("path", "toy") == 0 and capsys.readouterr().out.strip() == str(
        registry.default_path("toy")
    )
    assert weights_cli("fetch") == 2 and weights_cli("fetch", "nope") == 2
    assert weights_cli("verify") == 1  # nothing in the cache yet
    assert weights_cli("fetch", "toy") == 0 and weights_cli("verify") == 0


def test_vocabularies_and_caption_matching():
    assert [len(load_vocabulary(v)) for v in ("coco", "lvis", "objects365")] == [80, 1203, 365]
    m = PhraseMatcher.from_names(["coco"])
    assert m.match("Two teddy bears on a dining table, and a dog.") == ["teddy bear", "dining table", "dog"]
    assert m.match("people and mice") == ["person", "mouse"] and m.match(None) == []
    lv = PhraseMatcher.from_names(["lvis"])
    assert lv.match("a couch with a knapsack") == ["sofa", "backpack"]  # synonyms map to the canonical label
