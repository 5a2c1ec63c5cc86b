"""Image embeddings of subjects, for ``intra_strategy: embedding`` (visual look-alikes).

Any local transformers vision model directory works (``AutoModel`` + ``AutoImageProcessor``, read
with ``local_files_only``): CLIP or SigLIP (their ``get_image_features``), DINOv2 or a ViT (the
pooled output, else the mean of the last hidden state). A subject is embedded from its box crop
with everything outside its mask painted mid-gray, so the background does not count as
similarity. Embeddings are L2-normalised float32; similarity is their dot product (cosine).

No such weights ship in a package this project can install offline: the loading code is real and
is tested with a tiny random-weight CLIP saved to a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MASK_FILL = 127  # the gray behind the subject inside its crop (RGB)


def masked_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask's bounding box of ``image`` (H, W, 3 uint8 RGB), pixels outside ``mask`` set to gray."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.full((8, 8, 3), MASK_FILL, np.uint8)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = image[y0:y1, x0:x1].copy()
    crop[~mask[y0:y1, x0:x1].astype(bool)] = MASK_FILL
    return crop


class ImageEmbedder:
    """Loads the model lazily on first use (once per planning process); CPU, fp32, eval mode."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._model = None
        self._proc = None

    def _load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self._proc = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        self._model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()

    def embed(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(D,) float32, unit norm, of the subject ``mask`` (H, W bool) in ``image`` (H, W, 3 uint8 RGB)."""
        import torch

        if self._model is None:
            self._load()
        inputs = self._proc(images=[masked_crop(image, mask)], return_tensors="pt")
        with torch.inference_mode():
            if hasattr(self._model, "get_image_features"):
                feat = self._model.get_image_features(pixel_values=inputs["pixel_values"])
            else:
                out = self._model(pixel_values=inputs["pixel_values"])
                pooled = getattr(out, "pooler_output", None)
                feat = pooled if pooled is not None else out.last_hidden_state.mean(dim=1)
        v = feat[0].float().numpy()
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
