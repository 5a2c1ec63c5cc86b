"""scone-train's settings: the override parser scone-data uses, every field checked against its type,
duplicate keys and non-UTF-8 files refused; a list of problems and exit 2, never a traceback."""

import pytest
from scone_train import config as train_config
from scone_train.cli import main
from scone_train.config import load_config

from scone_data.runtime import config as data_config
from scone_data.runtime import overrides

STAGE = "training/configs/stage1_step1.yaml"


@pytest.fixture
def stage(repo_root):
    return repo_root / STAGE


def test_hostile_one_override_parser_for_both_commands():
    assert train_config.parse_overrides is overrides.parse_overrides
    items = ["a.b=1e-3", "a.c=1e3", "a.d=[x, 2]", "a.e=", "a.f=yes", "a.g=1.5e-5"]
    nested = data_config.parse_overrides(items)
    assert dict(overrides.parse_overrides(items)) == {f"a.{k}": v for k, v in nested["a"].items()}
    assert nested["a"] == {"b": 0.001, "c": 1000.0, "d": ["x", 2], "e": None, "f": True, "g": 1.5e-5}


def test_hostile_exponent_numbers_are_coerced_to_the_field_type(stage):
    cfg = load_config(stage, ["train.steps=1e3", "train.lr=1e-4", "train.warmup_steps=1e2"])
    assert cfg["train"]["steps"] == 1000 and type(cfg["train"]["steps"]) is int
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["warmup_steps"] == 100


@pytest.mark.parametrize(
    "override, expect",
    [
        ("train.steps=true", "train.steps: must be an integer, got True"),
        ("train.steps=1.5", "train.steps: must be an integer, got 1.5"),
        ("train.activation_checkpointing=maybe", "train.activation_checkpointing: must be true or false"),
        ("train.lr=abc", "train.lr: must be a number, got 'abc'"),
        ("train.betas=[0.9]", "train.betas: must be a list of 2 numbers"),
        ("data.tasks=composition_single", "data.tasks: must be a list of strings"),
        ("data.shards.x=1", "data.shards is list, not a mapping"),
        ("preset=[tiny]", "preset: unknown preset"),
    ],
)
def test_hostile_training_setting_of_the_wrong_type(stage, capsys, override, expect):
    with pytest.raises(overrides.ConfigError, match=expect.replace("[", r"\[")):
        load_config(stage, [override])
    capsys.readouterr()
    assert main([str(stage), override]) == 2
    assert expect in capsys.readouterr().err


def test_hostile_training_problems_are_listed_at_once(stage):
    with pytest.raises(overrides.ConfigError) as e:
        load_config(stage, ["train.steps=x", "train.lr=y", "mask.enabled=maybe"])
    assert [p.split(":")[0] for p in e.value.problems] == ["train.steps", "train.lr", "mask.enabled"]


def test_hostile_training_duplicate_keys_are_refused(stage, tmp_path, capsys):
    p = tmp_path / "dup.yaml"
    p.write_text(stage.read_text() + "\nstage: again\n")
    capsys.readouterr()
    assert main([str(p)]) == 2
    assert "duplicate key 'stage'" in capsys.readouterr().err


def test_hostile_training_non_utf8_yaml_is_a_clear_error(stage, tmp_path, capsys):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(stage.read_bytes() + "\n# r\u00e9sum\u00e9\n".encode("latin-1"))
    capsys.readouterr()
    assert main([str(p)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text (byte 0xe9" in err and "Traceback" not in err
