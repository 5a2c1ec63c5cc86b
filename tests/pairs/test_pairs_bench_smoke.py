"""The CPU pair benchmark's smoke mode: both paths write the same samples, and the JSON is complete."""

import importlib.util
import json
import tarfile
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cpu_pairs.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("cpu_pairs", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def keys_of(tars) -> list[str]:
    keys = set()
    for t in tars:
        with tarfile.open(t) as tf:
            keys |= {m.name.split(".", 1)[0] for m in tf.getmembers()}
    return sorted(keys)


def test_smoke_writes_the_same_samples_both_ways(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "r.json"
    result = bench.main(["--smoke", "--out", str(out), "--keep", str(tmp_path / "shards")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    n = result["samples"]
    assert n == bench.SMOKE["samples"]
    ours = sorted((tmp_path / "shards" / "ours0").glob("*.tar"))
    plain = sorted((tmp_path / "shards" / "plain0").glob("*.tar"))
    assert ours and plain
    assert len(keys_of(ours)) == n and keys_of(ours) == keys_of(plain)
    # Ours publishes an index and stats beside every tar; the plain loop does not.
    assert all(t.with_suffix(".parquet").exists() and t.with_suffix(".stats.json").exists() for t in ours)
    for path in ("ours", "plain"):
        assert result[path]["total_s"] > 0
        assert result[f"{path}_samples_per_s_per_core"] > 0
    # the JSON rounds times and ratios to 4 decimals: allow exactly that rounding, no more
    o, p = result["ours"]["total_s"], result["plain"]["total_s"]
    assert abs(result["ratio"] - o / p) <= (o / p) * (5e-5 / o + 5e-5 / p) + 5e-5 + 1e-12
    assert result["ratio_same_render"] > 0
    assert "ratio ours/plain" in capsys.readouterr().out
