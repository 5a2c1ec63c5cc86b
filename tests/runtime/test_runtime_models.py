"""`scone-data build` with the model stages (tiny random-weight presets) under Ray.

Declaring one GPU on the embedded instance makes the executor give detect and segment their own
actor pools with ``num_gpus`` from the stages, as on a GPU machine; the stages themselves run on
the CPU (``device=cpu``).
"""

import pyarrow.parquet as pq

from scone_data.cli import main
from scone_data.runtime.executor import split_segments
from scone_data.shards.validate import validate_output


def test_model_build_runs_gpu_stages_as_their_own_actor_pools(tmp_path, repo_root):
    out = tmp_path / "out"
    over = [
        "runtime.num_cpus=2",
        "runtime.num_gpus=1",
        "runtime.progress=false",
        "detect.num_gpus=0.5",
        "segment.num_gpus=0.5",
        "detect.device=cpu",
        "segment.device=cpu",
        f"output={out}",
    ]
    from scone_data.runtime.build import make_stages
    from scone_data.runtime.config import load_config

    cfg = load_config(repo_root / "pipelines/tiny_models.yaml", over)
    stages = make_stages(cfg, problems := [])
    assert not problems
    assert [[s.name for s in seg] for seg in split_segments(stages)] == [
        ["decode"],
        ["detect"],
        ["segment"],
        ["subjects"],
    ]
    assert main(["build", str(repo_root / "pipelines/tiny_models.yaml"), *over]) == 0
    assert validate_output(out) == []
    subjects = pq.read_table(out / "bank/subjects").to_pylist()
    assert subjects and {s["det_source"] for s in subjects} == {"groundingdino"}
    assert {s["mask_source"] for s in subjects} == {"sam"}
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert {r["reason"] for r in rejects if r["stage"] == "source"} == {"unsupported_extension"}
