"""FSDP2 (fully_shard) through torchrun on the CPU: 2 gloo processes train, save, and the checkpoint loads."""

import json
import math
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file
from scone_train.checkpoint import load_optimizer, load_pretrained


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(shards_dir, out, steps: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "scone_train.cli", "training/configs/stage1_step1.yaml", "preset=tiny", "model.path=null",
        f"data.shards=[{shards_dir}]", f"train.steps={steps}", "train.epochs=null", "train.warmup_steps=1",
        "train.lr=1e-3", "data.max_tokens=160", "train.log_keys=true", "train.save_every=1000",
        f"train.output_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_fsdp2_two_gloo_ranks_train_save_load_and_resume_exactly(shards_dir, tmp_path):
    out = tmp_path / "run"
    r = _torchrun(shards_dir, out, 2)
    assert "fsdp2 over 2 ranks, cpu" in r.stderr  # really sharded, not one process twice
    recs = _log(out)
    assert [x["step"] for x in recs] == [1, 2]
    assert all(math.isfinite(x["loss"]) and math.isfinite(x["grad_norm"]) for x in recs)
    for x in recs:
        k0, k1 = x["keys_per_rank"]
        assert k0 and k1 and not set(k0) & set(k1), x["keys_per_rank"]  # each rank its own samples
    final = out / "final"
    model, _, _ = load_pretrained(final)  # strict key matching, full (unsharded) shapes
    sd = load_file(str(final / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])
    assert sd["llm2vae.weight"].abs().sum() > 0  # trained away from its zero init
    osd = load_optimizer(final)
    name = "language_model.model.layers.0.mlp_moe_gen.up_proj.weight"
    assert osd["state"][name]["exp_avg"].shape == sd[name].shape  # optimizer state gathered in full
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == 2 and len(state["loader"]) == 2
    assert (final / "rng_rank0.safetensors").exists() and (final / "rng_rank1.safetensors").exists()

    # Resume the sharded run for one more step: the same as 3 uninterrupted steps (loss, grad norm).
    _torchrun(shards_dir, out, 3)
    _torchrun(shards_dir, tmp_path / "full", 3)
    resumed, full = _log(out), _log(tmp_path / "full")
    assert [x["step"] for x in resumed] == [1, 2, 3]
    for a, b in zip(resumed, full):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-6, (a, b)
        assert a["keys_per_rank"] == b["keys_per_rank"]
