"""The GPU benchmark's --smoke mode runs on the CPU end to end and writes its JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("groundingdino")
pytest.importorskip("segment_anything")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_detect_segment.py"


def test_smoke_run_writes_results(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_detect_segment", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "res.json"
    res = mod.main(["--smoke", "--out", str(out), "--device", "cpu"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["naive_images_per_s"] > 0 and res["ours_images_per_s"] > 0 and res["speedup"] > 0
    assert res["sam_encoder_tflops"] > 0 and 0 < res["sam_encoder_share_of_peak"]
    # Same random weights and boxes: our segmenter (bf16, SDPA, batched) reproduces the fp32 masks.
    assert res["mask_iou_same_boxes_median"] > 0.9
    assert 0.0 <= res["box_match_rate"] <= 1.0
    assert "speed-up" in capsys.readouterr().out
