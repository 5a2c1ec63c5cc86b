"""`scone-data build` with the model stages (tiny random-weight presets) under Ray.

Declaring one GPU on the embedded instance makes the executor give detect and segment their own
actor pools, each with half of that GPU (``num_gpus: auto``), as on a one-GPU machine; the stages
themselves run on the CPU (``device=cpu``).
"""

import pyarrow.parquet as pq
import pytest

from scone_data.cli import main
from scone_data.runtime.config import ConfigError
from scone_data.runtime.executor import gpu_requests, split_segments
from scone_data.shards.validate import validate_output
from scone_data.stages.decode import DecodeImages
from scone_data.stages.detect import GroundingDinoDetector
from scone_data.stages.segment import SamSegmenter


def test_model_build_runs_gpu_stages_as_their_own_actor_pools(tmp_path, repo_root):
    out = tmp_path / "out"
    over = [
        "runtime.num_cpus=2",
        "runtime.num_gpus=1",
        "detect.num_gpus=auto",
        "segment.num_gpus=auto",
        "runtime.progress=false",
        "detect.device=cpu",
        "segment.device=cpu",
        f"output={out}",
    ]
    from scone_data.runtime.build import make_stages
    from scone_data.runtime.config import load_config

    cfg = load_config(repo_root / "pipelines/tiny_models.yaml", over)
    stages = make_stages(cfg, problems := [])
    assert not problems
    assert gpu_requests(stages, 1) == [0, 0.5, 0.5, 0]
    assert [[s.name for s in seg] for seg in split_segments(stages, gpu_requests(stages, 1))] == [
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


def test_auto_gpu_requests_share_the_cluster_and_impossible_ones_are_refused():
    def pipeline(det="auto", seg="auto"):
        return [
            DecodeImages(),
            GroundingDinoDetector(model="tiny", num_gpus=det),
            SamSegmenter(model="tiny", num_gpus=seg),
        ]

    assert gpu_requests(pipeline(), 0) == [0, 0, 0]  # no GPU in the cluster: auto -> CPU workers
    assert gpu_requests(pipeline(), 1) == [0, 0.5, 0.5]  # one GPU: detect and segment share it
    assert gpu_requests(pipeline(), 8) == [0, 0.5, 0.5]  # a share per actor; pools grow to 8 actors each
    assert gpu_requests(pipeline(det=1, seg=1), 2) == [0, 1, 1]  # explicit numbers are kept
    assert gpu_requests(pipeline(det=0.7, seg="auto"), 2) == [0, 0.7, 1.0]  # auto shares among auto stages
    with pytest.raises(
        ConfigError, match=r"detect.num_gpus=1, segment.num_gpus=1 cannot all run at once .* 1 GPU"
    ):
        gpu_requests(pipeline(det=1, seg=1), 1)  # the one-GPU hang this replaces
    with pytest.raises(ConfigError, match="0.7"):
        gpu_requests(pipeline(det=0.7, seg=0.7), 1)
    with pytest.raises(ConfigError, match="0 GPU"):
        gpu_requests(pipeline(det=1, seg=0), 0)
    assert gpu_requests(pipeline(det=2, seg=0.5), 3) == [0, 2, 0.5]
