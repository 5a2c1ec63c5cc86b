"""Pixel operations behind the anti-copy-paste options: backgrounds, warps, mask edges, colour jitter.

Every function is deterministic given its arguments (randomness comes in as a seeded numpy Generator),
so the same plan renders to the same bytes. Images are HxWx3 uint8 RGB; alphas HxW float32 in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

# Texture backgrounds: low-frequency noise at cells of this many pixels, plus fine grain; amplitudes in
# 0..255 grey levels. Strong enough to stop a model keying on a flat colour, weak enough not to look
# like an object.
TEXTURE_CELL_PX = 48
TEXTURE_AMPLITUDE = 50.0
GRAIN_AMPLITUDE = 12.0
# Erosion that would remove more than this fraction of a mask is skipped: thin subjects vanish otherwise.
MAX_ERODE_LOSS = 0.5


def background(kind: str, rgb, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) uint8 RGB background: ``"plain"`` fills ``rgb``; ``"texture"`` adds smooth
    coloured noise and grain around ``rgb``."""
    if kind != "texture":
        return np.full((height, width, 3), np.asarray(rgb, np.uint8), np.uint8)
    gh, gw = height // TEXTURE_CELL_PX + 2, width // TEXTURE_CELL_PX + 2
    low = rng.random((gh, gw, 3), dtype=np.float32) - 0.5
    low = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.random((height, width, 1), dtype=np.float32) - 0.5
    # In place, one full-size float buffer: this runs once per reference and dominated rendering.
    low *= TEXTURE_AMPLITUDE
    grain *= GRAIN_AMPLITUDE
    low += grain
    low += np.asarray(rgb, np.float32) + 0.5
    np.clip(low, 0, 255, out=low)
    return low.astype(np.uint8)


def warp(patch: np.ndarray, alpha: np.ndarray, rotate_deg: float, perspective) -> tuple:
    """Perspective-jitter then rotate ``patch`` (h, w, 3) and ``alpha`` (h, w) about their centre.

    ``perspective``: 8 corner offsets (x, y for TL, TR, BR, BL) as fractions of w and h.
    Returns ``(patch, alpha, (dx, dy))``: the warped arrays, grown to hold every corner, and the offset of
    their origin from the input's origin (so the centre stays where it was).
    """
    h, w = alpha.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    off = np.float32(perspective or [0] * 8).reshape(4, 2) * np.float32([w, h])
    persp = cv2.getPerspectiveTransform(src, src + off)
    rot = np.eye(3, dtype=np.float64)
    rot[:2] = cv2.getRotationMatrix2D((w / 2, h / 2), rotate_deg, 1.0)
    m = rot @ persp
    corners = cv2.perspectiveTransform(src[None], m)[0]
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    size = (int(x1 - x0), int(y1 - y0))
    out = cv2.warpPerspective(patch, shift @ m, size, flags=cv2.INTER_LINEAR, borderValue=0)
    a = cv2.warpPerspective(alpha, shift @ m, size, flags=cv2.INTER_LINEAR, borderValue=0)
    return out, a, (int(x0), int(y0))


def mask_edges(alpha: np.ndarray, erode_px: int, feather_px: float) -> tuple[np.ndarray, bool]:
    """Binarise ``alpha`` at 0.5, erode by ``erode_px`` (unless that removes more than
    :data:`MAX_ERODE_LOSS` of it) and blur by ``feather_px`` (Gaussian sigma). Returns (alpha, eroded)."""
    m = (alpha > 0.5).astype(np.uint8)
    eroded = False
    if erode_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1, 2 * erode_px + 1))
        e = cv2.erode(m, k)
        if e.sum() >= (1 - MAX_ERODE_LOSS) * m.sum() and e.any():
            m, eroded = e, True
    a = m.astype(np.float32)
    if feather_px > 0:
        a = cv2.GaussianBlur(a, (0, 0), sigmaX=feather_px)
    return a, eroded


def paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-composite ``patch`` onto ``canvas`` (in place) with its origin at (x, y); clipped."""
    H, W = canvas.shape[:2]
    h, w = alpha.shape
    cx0, cy0, cx1, cy1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    p = patch[cy0 - y : cy1 - y, cx0 - x : cx1 - x].astype(np.float32)
    a = alpha[cy0 - y : cy1 - y, cx0 - x : cx1 - x, None]
    region = canvas[cy0:cy1, cx0:cx1].astype(np.float32)
    canvas[cy0:cy1, cx0:cx1] = np.clip(region * (1 - a) + p * a + 0.5, 0, 255).astype(np.uint8)


def jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness offset (fraction of 255), contrast about the mean grey, saturation scale; no hue shift,
    so the colour names used by referring expressions stay true."""
    # Both steps map each uint8 value through a fixed function: a 256-entry table, not float images.
    mean = float(image.mean())
    lut = (np.arange(256, dtype=np.float32) - mean) * contrast + mean + brightness * 255.0
    f = cv2.LUT(image, np.clip(lut, 0, 255).astype(np.uint8))
    if saturation != 1.0:
        hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
        s_lut = np.clip(np.arange(256, dtype=np.float32) * saturation, 0, 255).astype(np.uint8)
        hsv[..., 1] = s_lut[hsv[..., 1]]
        f = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return f
