"""Image and mask bytes in and out, shared by every stage.

Images are ``np.ndarray`` of shape (H, W, 3), dtype uint8, **RGB** order. Masks are COCO RLE dicts
``{"size": [h, w], "counts": str}`` (compressed counts, decoded to ``str``).

:func:`decode_image` decodes by content (never by file extension), applies EXIF orientation,
converts every PIL mode to RGB and checks the pixel count from the header before any pixel is
decoded. It raises :class:`DecodeError` whose ``reason`` is one of:

- ``empty_file``: zero bytes.
- ``not_an_image``: no decoder recognises the content.
- ``too_many_pixels``: the header declares more than ``max_pixels`` (decompression-bomb guard).
- ``truncated``: the data ends early (PIL's ``LOAD_TRUNCATED_IMAGES`` is left False).
- ``decode_error``: anything else the decoder or the EXIF transpose raised (``detail`` says what).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Longest exception text kept in a reason's detail: enough to diagnose, short enough for a table.
MAX_DETAIL_CHARS = 200
# Images with transparency are composited on this background (RGB): white, like a browser would.
ALPHA_BACKGROUND = (255, 255, 255)

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_ID_CHARS = 64


class DecodeError(Exception):
    """A decode failure: ``reason`` is a snake_case code, ``detail`` a short free text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail[:MAX_DETAIL_CHARS]

    def as_reason(self) -> str:
        """``code`` or ``code: detail``, the form rows carry in their ``reason`` column."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def content_id(data: bytes) -> str:
    """First 16 hex digits of sha256(data): the image id of sources that give none."""
    return hashlib.sha256(data).hexdigest()[:16]


def sanitize_id(raw: object) -> str:
    """A given id made to match ``^[A-Za-z0-9_-]{1,64}$``.

    Ids that already match pass through unchanged. Otherwise every other character becomes ``_``
    and 8 hex of sha256(original) are appended, so ``a/b`` and ``a_b`` stay distinct.
    """
    s = str(raw)
    if _ID_RE.match(s):
        return s
    digest = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", s)[: _MAX_ID_CHARS - 9]
    return f"{clean}-{digest}" if clean else digest


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; alpha composited on :data:`ALPHA_BACKGROUND`, 16-bit/float scaled to 8-bit."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        im = Image.fromarray(_scale_to_uint8(np.asarray(im)), mode="L")
    if im.mode == "RGBA":
        bg = Image.new("RGB", im.size, ALPHA_BACKGROUND)
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    # L, 1, CMYK, YCbCr, LAB, HSV: PIL's own conversion (CMYK ignores any ICC profile).
    return im.convert("RGB")


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float pixels -> uint8.

    Integers are read as 16-bit (0..65535, clipped) and divided by 257, so 65535 -> 255 exactly.
    Floats whose finite maximum is <= 1 are read as 0..1; other floats are clipped to 0..255.
    """
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _detail(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:MAX_DETAIL_CHARS]


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 RGB with EXIF orientation applied.

    Multi-frame files (GIF, TIFF, animated WebP) give their first frame. Raises
    :class:`DecodeError` (reasons in the module docstring).
    """
    if not data:
        raise DecodeError("empty_file")
    with warnings.catch_warnings():
        # PIL warns (and above 2x its own cap raises) on big images; our cap is checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise DecodeError("too_many_pixels", str(e)) from None
        except UnidentifiedImageError:
            raise DecodeError("not_an_image") from None
        except Exception as e:  # noqa: BLE001 - a broken header is data, not a crash
            raise DecodeError("decode_error", _detail(e)) from None
        w, h = im.size
        if w * h > max_pixels:
            raise DecodeError("too_many_pixels", f"{w}x{h} > {max_pixels}")
        if w < 1 or h < 1:
            raise DecodeError("decode_error", f"header size {w}x{h}")
        try:
            im.load()
        except (OSError, EOFError, SyntaxError) as e:
            if _is_truncation(e):
                raise DecodeError("truncated", _detail(e)) from None
            return _cv2_fallback(data, e)
        except Exception as e:  # noqa: BLE001
            raise DecodeError("decode_error", _detail(e)) from None
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as e:  # noqa: BLE001 - unreadable EXIF: orientation unknown, so reject
            raise DecodeError("decode_error", "exif: " + _detail(e)) from None
        rgb = _to_rgb(im)
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - _to_rgb always gives RGB
        raise DecodeError("decode_error", f"unexpected array shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _is_truncation(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, EOFError) or "truncat" in msg or "broken data stream" in msg


def _cv2_fallback(data: bytes, err: BaseException) -> np.ndarray:
    """PIL read the header (so the pixel cap was checked) but not the pixels: let OpenCV try.

    Only reached after the header check: OpenCV cannot report a size before decoding, so it is
    never tried on content PIL could not identify.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # 8-bit BGR, EXIF orientation applied by OpenCV
    if img is None:
        raise DecodeError("decode_error", _detail(err))
    return np.ascontiguousarray(img[:, :, ::-1])


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> baseline JPEG bytes; deterministic for the same input and quality."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"encode_jpeg wants (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays, checked above
        raise ValueError("cv2.imencode failed")
    return buf.tobytes()


def encode_png(img: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB or (H, W) uint8 -> PNG bytes (lossless, deterministic)."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"encode_png wants uint8 (H, W[, 3]), got {img.shape} {img.dtype}")
    arr = img[:, :, ::-1] if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:  # pragma: no cover
        raise ValueError("cv2.imencode failed")
    return buf.tobytes()


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool/uint8 mask -> ``{"size": [H, W], "counts": str}`` (COCO compressed RLE)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _pycoco_rle(rle: dict) -> dict:
    """A compressed RLE with ``str`` or ``bytes`` counts -> pycocotools' own form (``bytes`` counts)."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def rle_counts_str(rle: dict) -> str:
    """The counts of a compressed RLE as ``str`` (how records store them)."""
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE (compressed ``str``/``bytes`` counts) -> (H, W) bool mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_pycoco_rle(rle)).astype(bool)


def rle_area(rle: dict) -> int:
    """Pixels set in a compressed RLE, counted on the runs (no decode)."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(_pycoco_rle(rle)))


def rle_counts_from_string(s: str | bytes) -> list[int]:
    """Parse COCO's compressed RLE string (pycocotools ``rleFrString``) into run lengths.

    Pure Python and bounds-checked: pycocotools' C decoder writes past its buffer when the runs of
    an untrusted RLE sum to more than h*w, so given masks are checked with this first.
    Raises ValueError on a malformed string or a negative run.
    """
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("RLE string ends inside a run length")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid RLE character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError("negative run length")
        counts.append(x)
    return counts
