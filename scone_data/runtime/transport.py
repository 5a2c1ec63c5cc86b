"""Moving stage batches through Ray Data.

Stages work on ``dict[str, list]`` of Python values; Ray Data moves Arrow blocks. Values that do
not map cleanly onto Arrow travel encoded, and are decoded on the other side:

- ``image`` (HxWx3 uint8 arrays of varying shapes, or None): a 12-byte shape header + raw bytes
  (raw, not PNG: encoding would cost more than the copy it saves inside one machine).
- ``annotations``, ``subjects``, ``subject_rejects`` (nested lists of dicts, ragged polygons):
  JSON strings.

Every other column must hold scalars, strings or bytes; anything else is a programming error and
fails loudly, naming the column. Nulls in object columns come back from Ray as NaN and are turned
back into None.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

ARRAY_COLUMNS = frozenset({"image"})
JSON_COLUMNS = frozenset({"annotations", "subjects", "subject_rejects", "refs"})
_HDR = struct.Struct("<III")


def _pack_array(a: np.ndarray | None) -> bytes:
    if a is None:
        return b""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    h, w = a.shape[:2]
    c = a.shape[2] if a.ndim == 3 else 0
    return _HDR.pack(h, w, c) + a.tobytes()


def _unpack_array(b: bytes | None) -> np.ndarray | None:
    if not b:
        return None
    h, w, c = _HDR.unpack_from(b)
    shape = (h, w, c) if c else (h, w)
    return np.frombuffer(b, np.uint8, offset=_HDR.size).reshape(shape).copy()


def encode(batch: dict[str, list]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, col in batch.items():
        if k in ARRAY_COLUMNS:
            vals = [_pack_array(v) for v in col]
        elif k in JSON_COLUMNS:
            vals = [json.dumps(v) for v in col]
        else:
            for v in col:
                if isinstance(v, (list, dict, tuple, np.ndarray)):
                    raise TypeError(f"column {k!r} holds {type(v).__name__}: add it to the transport codecs")
            vals = list(col)
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        out[k] = arr
    return out


def decode(batch: dict[str, Any]) -> dict[str, list]:
    out: dict[str, list] = {}
    for k, col in batch.items():
        vals = col.tolist() if isinstance(col, np.ndarray) else list(col)
        # Arrow nulls come back from Ray as float NaN (an all-null column even as a float array);
        # no row-level column holds a real NaN, so NaN always means None here.
        vals = [None if isinstance(v, float) and v != v else v for v in vals]
        if k in ARRAY_COLUMNS:
            vals = [_unpack_array(v) for v in vals]
        elif k in JSON_COLUMNS:
            vals = [json.loads(v) if v is not None else None for v in vals]
        out[k] = vals
    return out
