"""bench/gpu_train.py --smoke runs on the CPU and writes the JSON the GPU run will write."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_train_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    for k in ("device", "params_total", "params_active_matmul_per_token", "peak_matmul_flops_per_s",
              "packed", "padded", "packing_speedup_useful_tokens", "targets"):  # fmt: skip
        assert k in rep, k
    for mode in ("packed", "padded"):
        m = rep[mode]
        for k in ("useful_tokens_per_s", "mfu", "pad_fraction", "step_s", "attention_flop_share"):
            assert m[k] >= 0, (mode, k)
        assert m["mfu"] > 0 and m["useful_tokens"] > 0  # CPU numbers are noise; only the plumbing is checked
    assert rep["packed"]["pad_fraction"] == 0 and rep["padded"]["pad_fraction"] > 0
    assert "packing speedup" in r.stdout


def test_attention_flop_count_matches_the_trainer_mask():
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_train import TINY_SHAPES, make_samples, visible_pairs, visible_pairs_by_mask

    samples = make_samples(TINY_SHAPES, 4, seed=1)
    assert visible_pairs(samples) == visible_pairs_by_mask(samples)
