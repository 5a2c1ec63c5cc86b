"""The copy-paste score: a rotated, flipped, rescaled pixel copy still scores as a copy; another view
of a subject does not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from scone_data.pairs.render import copy_paste_score


def _subject():
    """A real photo (the astronaut's face) as the target, its face box, and the face region."""
    target = np.ascontiguousarray(data.astronaut())
    box = (150, 20, 290, 200)
    return target, box, target[box[1] : box[3], box[0] : box[2]]


def _paste(patch: np.ndarray, angle: float, scale: float, flip: bool):
    """The patch rotated by ``angle`` degrees, rescaled and maybe mirrored, on a plain canvas, with its
    alpha mask and tight box (what a cut-out reference looks like)."""
    if flip:
        patch = patch[:, ::-1]
    h, w = patch.shape[:2]
    side = 400
    canvas = np.full((side, side, 3), 128, np.uint8)
    alpha = np.zeros((side, side), np.float32)
    mat = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    mat[:, 2] += (side / 2 - w / 2, side / 2 - h / 2)
    warped = cv2.warpAffine(np.ascontiguousarray(patch), mat, (side, side))
    m = cv2.warpAffine(np.ones((h, w), np.float32), mat, (side, side))
    canvas[m > 0.5] = warped[m > 0.5]
    alpha[m > 0.5] = 1.0
    ys, xs = np.nonzero(alpha)
    return canvas, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), alpha


@pytest.mark.parametrize("angle,scale,flip", [(0, 1.0, False), (15, 0.8, True), (-20, 1.2, False)])
def test_an_augmented_pixel_copy_scores_as_a_copy(angle, scale, flip):
    target, box, patch = _subject()
    ref, ref_box, alpha = _paste(patch, angle, scale, flip)
    assert copy_paste_score(ref, ref_box, target, box, alpha) >= 0.9


def test_another_subject_scores_low():
    target, box, _ = _subject()
    other = np.ascontiguousarray(data.chelsea())[60:240, 100:240]  # a cat's face, same size
    ref, ref_box, alpha = _paste(other, 10, 1.0, False)
    assert copy_paste_score(ref, ref_box, target, box, alpha) < 0.5
