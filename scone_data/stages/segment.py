"""Segment stage: a SAM mask for every subject that has a box and no mask yet.

For each such subject it sets ``mask_rle`` (COCO RLE with compressed counts as str, ``size`` =
[height, width]), ``mask_score`` (SAM's predicted IoU clipped to [0, 1]), ``stability`` (SAM's
stability score) and ``mask_source = "sam"``. Subjects that already carry ``mask_rle`` (annotations)
pass through untouched. An empty mask is kept (a later filter drops it by area); so is a subject
whose box has no area inside the image, which gets an empty mask and scores 0 without reaching SAM.

Images are embedded ``batch_size`` at a time; all boxes of those images go through the mask decoder
in one call (see :class:`~scone_data.models.sam.SamBoxPredictor`).

Overlap: while chunk k runs on the device, a small thread pool (made in ``setup``) resizes the
images of chunk k+1 (``SamBoxPredictor.prepare``, a PIL resize that releases the GIL). Only one chunk
is prepared ahead, and results are taken in submission order, so outputs are those of a sequential
run. Masks become RLE on their own device (segment-anything's ``mask_to_rle_pytorch``): only the run
lengths travel to the host, where pycocotools compresses them into the same strings as
:func:`~scone_data.imageio.mask_to_rle`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from scone_data.imageio import mask_to_rle
from scone_data.models import registry
from scone_data.stages.base import Batch, register_stage, reject
from scone_data.stages.model_stage import BAD_IMAGE, ModelStage, is_rgb_uint8


def encode_rle_torch(masks) -> list[dict]:
    """(N, H, W) bool tensor on any device -> per mask the same dict as :func:`~scone_data.imageio.mask_to_rle`.

    Run lengths are computed where the masks live (upstream ``mask_to_rle_pytorch``), so a GPU
    pipeline copies change positions to the host instead of full-size masks; pycocotools compresses.
    """
    from pycocotools import mask as mask_utils
    from segment_anything.utils.amg import mask_to_rle_pytorch

    out = []
    for rle in mask_to_rle_pytorch(masks):
        h, w = rle["size"]
        c = mask_utils.frPyObjects(rle, h, w)
        out.append({"size": [int(h), int(w)], "counts": c["counts"].decode("ascii")})
    return out


def _valid_box(box, w: int, h: int) -> list[float] | None:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    x0, x1 = max(0.0, min(x0, w)), max(0.0, min(x1, w))
    y0, y1 = max(0.0, min(y0, h)), max(0.0, min(y1, h))
    if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1, y1]


@register_stage
@dataclass
class SamSegmenter(ModelStage):
    name: ClassVar[str] = "segment"
    type: ClassVar[str] = "sam"
    needs: ClassVar[tuple[str, ...]] = ("image", "subjects")
    adds: ClassVar[dict[str, str]] = {"subjects": "json"}
    family = "sam"

    model: str = "vit_h"  # vit_b | vit_l | vit_h | tiny (random weights, tests only)
    checkpoint: str | None = None  # local file; None -> the registry's cache copy
    batch_size: int = 8  # images per image-encoder call
    bf16: bool = False  # image encoder under bf16 autocast; the decoder stays fp32
    attention: str = "flash"  # flash (rel-pos folded into q/k, no mask) | bias (additive mask) | upstream (segment-anything's own)
    compile: bool = False  # torch.compile the image encoder (GPU; first batch pays the compile)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_gpus: str | float = "auto"  # GPUs per Ray worker; auto: a share of each GPU (executor.gpu_requests)
    verify_sha256: bool = True
    seed: int = 0  # initialises the tiny preset
    # torch threads on a CPU (null: torch's default); 1 gives in-process runs a Ray actor's bytes. Added
    # after outputs were first hashed and only ordering fp32 sums: left out of the hash (old ones hold)
    cpu_threads: int | None = None
    execution_fields: ClassVar[tuple[str, ...]] = (*ModelStage.execution_fields, "cpu_threads")

    def validate(self) -> list[str]:
        from scone_data.models.sam import ATTENTION_MODES, SAM_MODELS

        out = self.model_problems(SAM_MODELS)
        if int(self.batch_size) < 1:
            out.append(f"batch_size: {self.batch_size} must be >= 1")
        choices = (*ATTENTION_MODES, "upstream")  # use_sdpa_'s modes, or segment-anything's own attention
        if self.attention not in choices:
            out.append(f"attention: {self.attention!r} is not one of {' | '.join(choices)}")
        return out

    def setup(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from scone_data.models.sam import SamBoxPredictor, build_sam, use_sdpa_

        model = build_sam(self.model, self.checkpoint_path(), seed=self.seed)
        if self.attention != "upstream":
            use_sdpa_(model, mode=self.attention)
        self._pred = SamBoxPredictor(model, registry.resolve_device(self.device), bf16=self.bf16)
        if self.compile:
            model.image_encoder = torch.compile(model.image_encoder, dynamic=False)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sam-prepare")

    def process(self, batch: Batch) -> Batch:
        with self.threads():
            return self._process(batch)

    def _process(self, batch: Batch) -> Batch:
        import torch

        n = len(batch["status"])
        subjects = [
            [] if subs is None else [dict(s) for s in subs] for subs in batch.get("subjects", [None] * n)
        ]
        todo: list[tuple[int, list[int], list[list[float]]]] = []  # row, subject indices, boxes
        for i in range(n):
            img = batch["image"][i]
            if not is_rgb_uint8(img):
                reject(batch, i, BAD_IMAGE)
                continue
            h, w = img.shape[:2]
            idx, boxes = [], []
            for k, s in enumerate(subjects[i]):
                if s.get("mask_rle") is not None:
                    continue
                box = _valid_box(s.get("box_xyxy"), w, h)
                if box is None:
                    s.update(
                        mask_rle=mask_to_rle(np.zeros((h, w), bool)),
                        mask_score=0.0,
                        stability=0.0,
                        mask_source="sam",
                    )
                else:
                    idx.append(k)
                    boxes.append(box)
            if idx:
                todo.append((i, idx, boxes))
        chunks = [todo[a : a + self.batch_size] for a in range(0, len(todo), self.batch_size)]

        def prepare(chunk):  # futures, one per image, in order
            return [self._pool.submit(self._pred.prepare, batch["image"][i]) for i, _, _ in chunk]

        ahead = prepare(chunks[0]) if chunks else []
        for c, chunk in enumerate(chunks):
            prepared = [f.result() for f in ahead]
            ahead = prepare(chunks[c + 1]) if c + 1 < len(chunks) else []  # runs while this chunk computes
            res = self._pred.predict_torch(
                prepared,
                [batch["image"][i].shape[:2] for i, _, _ in chunk],
                [torch.tensor(b, dtype=torch.float32) for _, _, b in chunk],
            )
            for (i, idx, _), r in zip(chunk, res):
                rles = encode_rle_torch(r["masks"])
                iou = r["iou"].clamp(0, 1).cpu().tolist()
                stab = r["stability"].clamp(0, 1).cpu().tolist()
                for j, k in enumerate(idx):
                    subjects[i][k].update(
                        mask_rle=rles[j],
                        mask_score=float(iou[j]),
                        stability=float(stab[j]),
                        mask_source="sam",
                    )
        batch["subjects"] = subjects
        return batch
