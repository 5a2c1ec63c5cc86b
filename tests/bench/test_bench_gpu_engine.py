"""bench/gpu_engine.py on the CPU: the smoke mode as `make bench` runs it, and the GPU path (weights
found under the assets folder by their registry names) on tiny presets saved as model directories."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = (
    "stage",
    "batch_size",
    "calls",
    "images",
    "seconds",
    "images_per_s",
    "seconds_per_call",
    "peak_mem_gib",
)


def _engine():
    spec = importlib.util.spec_from_file_location("gpu_engine", ROOT / "bench" / "gpu_engine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_rows(part: dict, stage: str, sizes: list[int], iters: int, per_call: int) -> None:
    assert [r["batch_size"] for r in part["rows"]] == sizes  # every batch size, in order
    for r in part["rows"]:
        assert all(k in r for k in ROW_KEYS), r
        assert (
            r["stage"] == stage and r["calls"] == iters and r["images"] == r["batch_size"] * per_call * iters
        )
        assert r["seconds"] > 0 and r["images_per_s"] == pytest.approx(r["images"] / r["seconds"])
        assert r["peak_mem_gib"] > 0


def test_batch_sizes():
    bs = _engine().batch_sizes
    assert bs(1) == [1] and bs(2) == [1, 2] and bs(4) == [1, 2, 4] and bs(6) == [1, 2, 4, 6]


def test_smoke_run_writes_every_batch_size_row(tmp_path):
    out = tmp_path / "engine.json"
    r = subprocess.run([sys.executable, "bench/gpu_engine.py", "--smoke", "--out", str(out), "--assets", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    for k in (
        "device",
        "smoke",
        "torch",
        "diffusers",
        "transformers",
        "bf16",
        "iters",
        "peak_mem",
        "peak_mem_gib",
    ):
        assert k in res, k
    assert res["smoke"] is True and res["device"] == "cpu" and res["bf16"] is False
    assert res["peak_mem"] == "process peak RSS so far" and res["peak_mem_gib"] > 0
    ins, ver = res["insert"], res["verify"]
    assert ins["model"] == "tiny" and ins["pipeline"] == "FluxKontextPipeline" and ins["dtype"] == "fp32"
    assert ver["model"] == "tiny" and ver["dtype"] == "fp32" and ver["questions_per_sample"] == 3
    _check_rows(ins, "insert", [1, 2], res["iters"], 1)
    _check_rows(ver, "verify", [1, 2, 4], res["iters"], 3)
    assert all(r["samples_per_s"] == pytest.approx(r["images_per_s"] / 3) for r in ver["rows"])
    rows = [ln.split()[:2] for ln in r.stdout.splitlines() if ln.startswith(("  insert ", "  verify "))]
    assert rows == [
        ["insert", "1"],
        ["insert", "2"],
        ["verify", "1"],
        ["verify", "2"],
        ["verify", "4"],
    ]  # the table


@pytest.fixture
def one_thread():
    """One torch thread, as the smoke mode sets: two threads spin against each other on a busy 2-core CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_gpu_path_finds_registered_weights_under_the_assets_folder(tmp_path, one_thread):
    """The non-smoke path, on CPU: weights looked up by registry name, loaded from directories."""
    from scone_data.models import edit, vlm

    eng = _engine()
    with pytest.raises(SystemExit) as e:
        eng.main(["--assets", str(tmp_path), "--find-weights"])
    assert e.value.code == 1
    edit.save_tiny(tmp_path / "black-forest-labs--FLUX.1-Kontext-dev")
    vlm.save_tiny(tmp_path / "Qwen--Qwen3-VL-8B-Instruct", arch="qwen3_vl")
    with pytest.raises(SystemExit) as e:
        eng.main(["--assets", str(tmp_path), "--find-weights"])
    assert e.value.code == 0
    # the tiny pipeline's call arguments: Kontext would otherwise resize the photos to ~1 MP
    res = eng.main(["--assets", str(tmp_path), "--size", "32", "--steps", "1", "--edit-max-batch", "1",
                    "--vlm-max-batch", "2", "--iters", "1", "--device", "cpu",
                    "--edit-call", json.dumps({"_auto_resize": False, "max_sequence_length": 32})])  # fmt: skip
    assert res["smoke"] is False and res["bf16"] is False  # bf16 only on a GPU
    ins, ver = res["insert"], res["verify"]
    assert (ins["model"], ins["pipeline"], ins["steps"]) == ("flux1_kontext_dev", "FluxKontextPipeline", 1)
    assert ins["weights_dir"].endswith("black-forest-labs--FLUX.1-Kontext-dev") and ins["image_hw"] == [
        32,
        32,
    ]
    assert ver["model"] == "qwen3_vl_8b" and ver["weights_dir"].endswith("Qwen--Qwen3-VL-8B-Instruct")
    _check_rows(ins, "insert", [1], 1, 1)
    _check_rows(ver, "verify", [1, 2], 1, 3)
