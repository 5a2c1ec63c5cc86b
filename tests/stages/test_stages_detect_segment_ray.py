"""Detect then segment as Ray Data actor pools (tiny presets, CPU), as `scone-data build` runs them."""

import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("groundingdino")

from scone_data.stages.detect import GroundingDinoDetector  # noqa: E402
from scone_data.stages.segment import SamSegmenter  # noqa: E402


class _Adapter:
    """Ray numpy batches (object arrays) <-> the stages' dict[str, list]; the lead owns the real one."""

    def __init__(self, stage_cls, settings):
        self.stage = stage_cls(**settings)

    def __call__(self, batch):
        rows = {k: list(v) for k, v in batch.items()}
        rows["subjects"] = [[dict(s) for s in subs] for subs in rows["subjects"]]
        out = self.stage(rows)
        res = {}
        for k, v in out.items():
            arr = np.empty(len(v), dtype=object)
            arr[:] = v
            res[k] = arr
        return res


def test_detect_and_segment_as_actor_pools():
    rng = np.random.default_rng(0)
    items = [{"image": rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), "caption": c, "subjects": []}
             for c in ("a dog on a bench", "a cup", "nothing here")]  # fmt: skip
    det = dict(model="tiny", seed=1, image_size=64, max_size=96, device="cpu", box_threshold=0.3, num_gpus=0)
    seg = dict(model="tiny", seed=2, device="cpu", num_gpus=0)
    # Test modules are not importable on Ray workers: ship this one (the adapter) by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        ds = ray.data.from_items(items)
        for cls, settings in ((GroundingDinoDetector, det), (SamSegmenter, seg)):
            res = cls(**settings).resources()
            ds = ds.map_batches(
                _Adapter, fn_constructor_kwargs={"stage_cls": cls, "settings": settings},
                compute=ray.data.ActorPoolStrategy(size=1), batch_size=2, batch_format="numpy",
                num_gpus=res["num_gpus"], num_cpus=res["num_cpus"],
            )  # fmt: skip
        rows = ds.take_all()
    finally:
        ray.shutdown()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    by_caption = {r["caption"]: r for r in rows}
    assert list(by_caption["nothing here"]["subjects"]) == []
    found = [s for r in rows for s in r["subjects"]]
    assert found and all(s["mask_source"] == "sam" and s["mask_rle"]["size"] == [60, 80] for s in found)
    assert {s["label"] for s in found} <= {"dog", "bench", "cup"}
