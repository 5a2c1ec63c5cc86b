"""GrabCutSegmenter: masks for given boxes with OpenCV's GrabCut, for builds without SAM weights.

The demo and annotation-only builds use it: no model weights are needed. It is a classical
colour-model segmentation seeded by the box, so masks are rougher than SAM's; every mask it makes
says so (``mask_source="grabcut"``). When GrabCut finds no foreground (a box too thin, a flat
image) the box itself becomes the mask (``mask_source="box"``).
``mask_score`` is the fraction of the box the mask fills (there is no predicted IoU here) and
``stability`` is 1.0 (not measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from scone_data.imageio import mask_to_rle
from scone_data.stages.base import Batch, Stage, register_stage

GRABCUT_SEED = 12345


@register_stage
@dataclass
class GrabCutSegmenter(Stage):
    name = "segment"
    type: ClassVar[str] = "grabcut"
    needs: ClassVar[tuple[str, ...]] = ("image", "subjects")
    adds: ClassVar[dict[str, str]] = {"subjects": "json"}
    iterations: int = 4
    max_side: int = 256  # GrabCut runs on a crop downscaled to this longest side: its cost grows with pixels
    context: float = 0.25  # crop margin around the box, as a fraction of the box size (background samples)
    min_box_px: int = 4  # boxes thinner than this (at the working scale) skip GrabCut and use the box

    def validate(self) -> list[str]:
        errs = []
        if self.iterations < 1:
            errs.append("segment.iterations: must be >= 1")
        # below 64 px GrabCut's colour models have too few pixels; past 2x the box the crop is mostly
        # other objects, not the subject's own background
        if self.max_side < 64:
            errs.append("segment.max_side: must be >= 64")
        if not 0.05 <= self.context <= 2:
            errs.append("segment.context: must be in [0.05, 2]")
        return errs

    def model_info(self) -> dict:
        return {"name": "opencv-grabcut", "weights_sha256": None}

    def process(self, batch: Batch) -> Batch:
        for i, subjects in enumerate(batch["subjects"]):
            todo = [s for s in subjects or [] if not s.get("mask_rle")]
            if todo:
                self._segment(batch["image"][i], todo)
        return batch

    def _segment(self, image: np.ndarray, subjects: list[dict]) -> None:
        h, w = image.shape[:2]
        for s in subjects:
            x0, y0, x1, y1 = s["box_xyxy"]
            full_box = np.zeros((h, w), bool)
            full_box[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
            mask = self._grabcut(image, (x0, y0, x1, y1))
            s["mask_source"] = "grabcut" if mask is not None and mask.any() else "box"
            if s["mask_source"] == "box":
                mask = full_box
            mask &= full_box
            s["mask_rle"] = mask_to_rle(mask)
            s["mask_score"] = float(mask.sum()) / max(1, int(full_box.sum()))
            s["stability"] = 1.0

    def _grabcut(self, image: np.ndarray, box) -> np.ndarray | None:
        """GrabCut on a crop around the box (the box plus ``context`` of its size on each side, where
        the background model is learned), downscaled to ``max_side``; the mask comes back full size."""
        import cv2

        h, w = image.shape[:2]
        x0, y0, x1, y1 = box
        # at least 8 px of margin: GrabCut's background model needs some pixels even around tiny boxes
        mx, my = max(8.0, (x1 - x0) * self.context), max(8.0, (y1 - y0) * self.context)
        cx0, cy0 = max(0, int(x0 - mx)), max(0, int(y0 - my))
        cx1, cy1 = min(w, int(np.ceil(x1 + mx))), min(h, int(np.ceil(y1 + my)))
        crop = image[cy0:cy1, cx0:cx1]
        ch, cw = crop.shape[:2]
        scale = min(1.0, self.max_side / max(ch, cw))
        small = cv2.resize(
            crop, (max(1, round(cw * scale)), max(1, round(ch * scale))), interpolation=cv2.INTER_AREA
        )
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        sh, sw = bgr.shape[:2]
        rx0, ry0 = int((x0 - cx0) * scale), int((y0 - cy0) * scale)
        rx1, ry1 = min(sw, int(np.ceil((x1 - cx0) * scale))), min(sh, int(np.ceil((y1 - cy0) * scale)))
        if rx1 - rx0 < self.min_box_px or ry1 - ry0 < self.min_box_px:
            return None
        if rx0 == 0 and ry0 == 0 and rx1 == sw and ry1 == sh:
            rx0, ry0, rx1, ry1 = 1, 1, sw - 1, sh - 1  # GrabCut needs some background outside the rect
        gc = np.zeros((sh, sw), np.uint8)
        bg, fg = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        # GrabCut seeds its colour models with k-means on OpenCV's thread-global RNG, whose state
        # depends on every earlier call in the process: reseed so a box's mask never depends on
        # which worker ran it or what it ran before.
        cv2.setRNGSeed(GRABCUT_SEED)
        cv2.grabCut(bgr, gc, (rx0, ry0, rx1 - rx0, ry1 - ry0), bg, fg, self.iterations, cv2.GC_INIT_WITH_RECT)
        small_mask = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
        if not small_mask.any():
            return None
        mask = np.zeros((h, w), bool)
        mask[cy0:cy1, cx0:cx1] = cv2.resize(small_mask, (cw, ch), interpolation=cv2.INTER_NEAREST).astype(
            bool
        )
        return mask
