"""Tiny WebDataset shards conforming to schemas/sample.v1.json, written inside the tests."""

import io
import json

import numpy as np
import pytest
from PIL import Image

TASKS = ["composition_single", "composition_multi", "distinction_single_cross", "distinction_multi_intra"]


def _jpeg(rng, w, h) -> bytes:
    base = rng.integers(0, 255, size=3)
    arr = np.clip(base + rng.integers(-40, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _record(key, task, split, n_refs, w, h):
    refs = []
    for i in range(n_refs):
        cand = {
            "subject_id": f"img{i}-000",
            "label": "dog",
            "box_xyxy": [1.0, 1.0, w - 1.0, h - 1.0],
            "intended": True,
            "source_image_id": f"img{i}",
        }
        refs.append(
            {
                "member": f"ref{i}.jpg",
                "width": w,
                "height": h,
                "kind": "cutout",
                "candidates": [cand],
                "subject_list": ["dog"],
                "subject_label": ["dog"],
                "expression": None,
                "augment": {},
            }
        )
    return {
        "schema_version": 1,
        "key": key,
        "task": task,
        "split": split,
        "instruction": f"put the dog from image 1 in a park ({key})",
        "references": refs,
        "target": {
            "member": "target.jpg",
            "image_id": "t0",
            "width": w,
            "height": h,
            "boxes": [{"subject_id": "img0-000", "label": "dog", "box_xyxy": [0, 0, 8, 8], "ref_index": 0}],
        },
        "provenance": {
            "builder_version": "test",
            "config_hash": "0",
            "seed": 0,
            "source": "test",
            "models": [],
        },
    }


def write_shards(root, n_shards=2, per_shard=4, split="train", seed=0, size=(32, 32)):
    """Write `{split}-0000k.tar` shards under root/shards; returns that dir."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    out = root / "shards"
    out.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(out / f"{split}-{s:05d}.tar")) as tw:
            for _ in range(per_shard):
                key = f"{split}{k:05d}"
                task = TASKS[k % len(TASKS)]
                n_refs = 2 if "multi" in task else 1
                w, h = size
                sample = {
                    "__key__": key,
                    "json": json.dumps(_record(key, task, split, n_refs, w, h)).encode(),
                }
                for i in range(n_refs):
                    sample[f"ref{i}.jpg"] = _jpeg(rng, w, h)
                sample["target.jpg"] = _jpeg(rng, w, h)
                tw.write(sample)
                k += 1
    return out


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_shards(root, n_shards=2, per_shard=4, split="train")
    write_shards(root, n_shards=1, per_shard=2, split="val", seed=1)
    return root / "shards"
