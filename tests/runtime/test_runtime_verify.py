"""The VLM verifier in the shard phase (``shards.verify``) on the demo, with the tiny random-weight VLM.

The tiny model answers noise, so every sample it judges has an unclear answer: flagged (written with
``keep: false``) or dropped (a pair reject ``verify:unclear_answer``). A stub judge checks the counting
of kept, flagged and dropped samples on its own.
"""

from collections import Counter
from dataclasses import dataclass

import pytest
from tests_helpers import make_sample, reader_files

from scone_data import __version__, schemas
from scone_data.cli import main
from scone_data.runtime import verify as V
from scone_data.runtime.build import _provenance, build, make_shard_settings
from scone_data.runtime.config import ConfigError, load_config, settings_hash
from scone_data.shards.output import Output
from scone_data.shards.validate import validate_output
from scone_data.stages.vlm import decide, load_prompt, sample_questions

TINY = "{model: tiny, device: cpu, num_gpus: 0, batch_size: 16, on_reject: %s}"


def _cfg(repo_root, out, on_reject=None, executor="local", extra=()):
    over = [f"output={out}", f"runtime.executor={executor}", "runtime.progress=false", "runtime.num_cpus=2"]
    if on_reject:
        over.append(f"shards.verify={TINY % on_reject}")
    return load_config(repo_root / "pipelines/demo.yaml", [*over, *extra])


@pytest.fixture(scope="module")
def flagged(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("verify_flag")
    return out, build(_cfg(repo_root, out, "flag"))


@pytest.fixture(scope="module")
def dropped(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("verify_drop")
    return out, build(_cfg(repo_root, out, "drop"))


def _records(out):
    return [rec for rec, _ in Output(out).iter_samples(want_images=False)]


def test_flagged_samples_carry_the_answers(flagged):
    out, manifest = flagged
    recs = _records(out)
    assert recs and manifest["samples"] == len(recs)
    prompt = load_prompt("vlm_verify", "v1")
    for rec in recs:
        schemas.validate("sample", rec)
        v = rec["verify"]
        assert v["model"] == "vlm_tiny" and v["weights_sha256"] is None
        assert (v["prompt"], v["prompt_version"], v["prompt_sha256"]) == (
            "vlm_verify",
            "v1",
            prompt.sha256[:16],
        )
        assert [a["question"] for a in v["answers"]] == [q.text for q in sample_questions(rec, prompt)]
        assert v["keep"] is False and v["reason"].startswith("unclear_answer: ")  # noise, never yes/no
    ver = manifest["verify"]
    assert ver["on_reject"] == "flag" and ver["kept"] == 0 and ver["dropped"] == {}
    assert ver["flagged"] == {"unclear_answer": len(recs)}
    assert not any(k.startswith("verify:") for k in manifest["pair_rejects"])  # flagged ones are written
    card = (out / "dataset_card.md").read_text()
    assert "## Verifier" in card and "model vlm_tiny" in card and "vlm_verify v1" in card
    assert f"| flagged (written, keep false): unclear_answer | {len(recs)} | 100.0% |" in card
    assert validate_output(out) == []


def test_dropped_samples_are_pair_rejects(dropped, capsys):
    out, manifest = dropped
    n = manifest["pair_rejects"]["verify:unclear_answer"]
    assert n > 0 and manifest["samples"] == 0 and _records(out) == []
    assert manifest["verify"]["dropped"] == {"unclear_answer": n} and manifest["verify"]["kept"] == 0
    card = (out / "dataset_card.md").read_text()
    assert f"| dropped (not written): unclear_answer | {n} | 100.0% |" in card
    assert f"| verify:unclear_answer | {n} |" in card  # in the reject reasons too
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verify:unclear_answer" in text and "dropped unclear_answer" in text
    assert validate_output(out) == []


def test_ray_and_in_process_give_the_same_bytes(flagged, tmp_path, repo_root):
    # the Ray shard tasks run the tiny VLM with one torch thread, as the in-process run does
    build(_cfg(repo_root, tmp_path, "flag", executor="ray"))
    a, b = reader_files(flagged[0]), reader_files(tmp_path)
    assert a.keys() == b.keys() and any(k.endswith(".tar") for k in a)
    assert [k for k in a if a[k] != b[k]] == []
    assert (tmp_path / "dataset_card.md").read_bytes() == (flagged[0] / "dataset_card.md").read_bytes()


def test_regen_adds_verification_to_an_earlier_build(flagged, tmp_path):
    from scone_data.runtime.build import regen

    manifest = regen(flagged[0], tmp_path, [f"shards.verify={TINY % 'drop'}", "runtime.executor=local",
                                            "runtime.progress=false"])  # fmt: skip
    assert manifest["verify"]["on_reject"] == "drop" and manifest["samples"] == 0
    assert manifest["pair_rejects"]["verify:unclear_answer"] == flagged[1]["samples"]


@dataclass
class ShardSettings:  # the class as it was before shards.verify: its hash must not have changed
    samples_per_shard: int = 256


def test_default_settings_keep_their_hash(repo_root, tmp_path):
    cfg = _cfg(repo_root, tmp_path)
    problems: list[str] = []
    pairs, shards = make_shard_settings(cfg, problems)
    assert not problems and shards.verify is None and shards.verifier is None
    old = settings_hash(__version__, "b", pairs, ShardSettings(shards.samples_per_shard))
    assert _provenance(cfg, [], "b", pairs, shards)["config_hash"] == old
    # a verifier changes it; its execution settings (batch size, device) do not
    cfg2 = _cfg(repo_root, tmp_path, "flag")
    p2, s2 = make_shard_settings(cfg2, problems)
    h2 = _provenance(cfg2, [], "b", p2, s2)["config_hash"]
    cfg3 = _cfg(repo_root, tmp_path, extra=["shards.verify={model: tiny, on_reject: flag, batch_size: 3}"])
    p3, s3 = make_shard_settings(cfg3, problems)
    assert not problems and h2 != old and _provenance(cfg3, [], "b", p3, s3)["config_hash"] == h2


def test_missing_weights_are_refused_before_any_work(repo_root, tmp_path):
    out = tmp_path / "out"
    bad = "shards.verify={model: qwen2_5_vl_7b, weights_dir: %s, on_reject: maybe}" % (tmp_path / "none")
    with pytest.raises(ConfigError) as e:
        build(_cfg(repo_root, out, extra=[bad]))
    text = str(e.value)
    assert "shards.verify" in text and "scone-data weights fetch qwen2_5_vl_7b_instruct" in text
    assert "on_reject: 'maybe'" in text  # every problem at once
    assert not out.exists()


class _Stub(V.ShardVerifier):
    """Answers from the record: a key ending in an even digit passes, others miss their subject."""

    def judge(self, samples):
        prompt = load_prompt("vlm_verify", "v1")
        out = []
        for rec, _ in samples:
            qs = sample_questions(rec, prompt)
            good = int(rec["key"][-1]) % 2 == 0
            ans = [("yes" if q.expected is True else "no" if q.expected is False else str(q.expected))
                   if good else "no" for q in qs]  # fmt: skip
            out.append({**decide(qs, ans), "model": "vlm_stub", "weights_sha256": None, **prompt.info()})
        return out


@pytest.mark.parametrize("on_reject", ["drop", "flag"])
def test_kept_flagged_and_dropped_are_counted(on_reject):
    samples = [make_sample(f"k{i}") for i in range(5)]
    job, rejects = V.ShardVerification(_Stub(on_reject=on_reject)), Counter()
    written = job.run(samples, rejects)
    keys = [r["key"] for r, _ in written]
    assert job.kept == 3 and [r["verify"]["keep"] for r, _ in written].count(True) == 3
    for rec, _ in written:
        schemas.validate("sample", rec)
    if on_reject == "drop":
        assert keys == ["k0", "k2", "k4"] and rejects == {"verify:intended_missing": 2}
        assert job.stats() == {"kept": 3, "flagged": {}, "dropped": {"intended_missing": 2}}
    else:
        assert keys == [f"k{i}" for i in range(5)] and not rejects
        assert job.stats() == {"kept": 3, "flagged": {"intended_missing": 2}, "dropped": {}}
        assert written[1][0]["verify"]["reason"] == "intended_missing: cup in target.jpg"
