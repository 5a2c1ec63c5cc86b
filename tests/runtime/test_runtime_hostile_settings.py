"""Settings of the wrong type, duplicate YAML keys and non-UTF-8 files: a list of problems and exit 2,
before anything is created on disk; numbers in exponent form are accepted where they fit the type."""

import pytest

from scone_data.cli import main
from scone_data.runtime.build import make_shard_settings
from scone_data.runtime.config import (
    ConfigError,
    RuntimeSettings,
    build_dataclass,
    load_config,
    parse_overrides,
)


def _build(repo_root, out, *over, executor="local") -> int:
    return main(
        ["build", str(repo_root / "pipelines/demo.yaml"), f"output={out}", *over, "--executor", executor]
    )


def _refused(repo_root, tmp_path, capsys, *over, executor="local") -> str:
    out = tmp_path / "out"
    capsys.readouterr()
    assert _build(repo_root, out, *over, executor=executor) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists(), err
    return err


@pytest.mark.parametrize(
    "override, expect",
    [
        ("runtime.unit_size=abc", "runtime.unit_size: must be an integer, got 'abc'"),
        ("runtime.unit_size=2.5", "runtime.unit_size: must be an integer, got 2.5"),
        ("pairs.task_mix=abc", "pairs.task_mix: must be a mapping of strings to numbers"),
        ("pairs.task_mix={composition_single: x}", "pairs.task_mix: must be a mapping"),
        ("runtime.progress=maybe", "runtime.progress: must be true or false, got 'maybe'"),
        ("seed=true", "seed: must be an integer, got True"),
        ("pairs.scale_range=[1, 2, 3]", "pairs.scale_range: must be a list of 2 numbers"),
        ("pairs.backgrounds=plain", "pairs.backgrounds: must be a list of strings"),
        ("decode.max_pixels=abc", "decode.max_pixels: must be an integer, got 'abc'"),
    ],
)
def test_hostile_setting_of_the_wrong_type_is_listed(repo_root, tmp_path, capsys, override, expect):
    assert expect in _refused(repo_root, tmp_path, capsys, override)


def test_hostile_num_cpus_under_ray_is_refused_before_the_output_exists(repo_root, tmp_path, capsys):
    err = _refused(repo_root, tmp_path, capsys, "runtime.num_cpus=abc", executor="ray")
    assert "runtime.num_cpus: must be an integer or null, got 'abc'" in err


def test_hostile_every_wrong_type_is_listed_at_once(repo_root, tmp_path, capsys):
    err = _refused(
        repo_root,
        tmp_path,
        capsys,
        "runtime.unit_size=abc",
        "pairs.task_mix=abc",
        "seed=yes",
        "shards.samples_per_shard=x",
    )
    for key in ("runtime.unit_size", "pairs.task_mix", "seed", "shards.samples_per_shard"):
        assert f"  - {key}: must be" in err


def test_hostile_exponent_numbers_are_accepted_where_they_fit(repo_root, tmp_path):
    over = [
        f"output={tmp_path}",
        "shards.samples_per_shard=1e3",
        "pairs.min_subject_area_frac=1e-3",
        "seed=2e1",
    ]
    cfg = load_config(repo_root / "pipelines/demo.yaml", over)
    problems: list[str] = []
    pairs, shards = make_shard_settings(cfg, problems)
    assert problems == []
    assert shards.samples_per_shard == 1000 and type(shards.samples_per_shard) is int
    assert pairs.min_subject_area_frac == 0.001 and pairs.seed == 20 and type(pairs.seed) is int
    p = tmp_path / "c.yaml"
    p.write_text(
        f"output: {tmp_path}\nsources: [{{type: folder, root: .}}]\npairs: {{min_subject_area_frac: 1e-3}}\n"
    )
    assert load_config(p)["pairs"]["min_subject_area_frac"] == 0.001


def test_hostile_bool_is_not_an_int():
    problems: list[str] = []
    assert (
        build_dataclass(RuntimeSettings, "runtime", {"unit_size": True, "cpu_workers": 1.0}, problems) is None
    )
    assert problems == ["runtime.unit_size: must be an integer, got True"]


def test_hostile_duplicate_yaml_keys_are_refused(repo_root, tmp_path, capsys):
    p = tmp_path / "dup.yaml"
    p.write_text((repo_root / "pipelines/demo.yaml").read_text() + "\nseed: 7\n")
    capsys.readouterr()
    assert main(["build", str(p), f"output={tmp_path / 'out'}", "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'seed'" in err and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_overrides(["pairs.task_mix={a: 1, a: 2}"])


def test_hostile_non_utf8_yaml_is_a_clear_error(repo_root, tmp_path, capsys):
    p = tmp_path / "latin1.yaml"
    p.write_bytes((repo_root / "pipelines/demo.yaml").read_bytes() + "\n# caf\u00e9\n".encode("latin-1"))
    capsys.readouterr()
    assert main(["build", str(p), f"output={tmp_path / 'out'}", "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text (byte 0xe9" in err and "Traceback" not in err


def test_hostile_regen_override_of_the_wrong_type_is_refused(tmp_path, capsys):
    # regen reads its settings through the same check (the bank is never opened for a bad setting)
    (tmp_path / "b/bank").mkdir(parents=True)
    (tmp_path / "b/manifest.json").write_text(
        '{"config": {"output": "x", "seed": 0, "sources": [{"type": "folder", "root": "."}]}, "config_hash": "h"}'
    )
    capsys.readouterr()
    code = main(
        ["regen", str(tmp_path / "b"), str(tmp_path / "new"), "pairs.task_mix=abc", "--executor", "local"]
    )
    assert code == 2 and "pairs.task_mix: must be a mapping" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
