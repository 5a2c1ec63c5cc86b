"""Moving stage batches through Ray Data.

Stages work on ``dict[str, list]`` of Python values; Ray Data moves Arrow blocks. Values that do
not map cleanly onto Arrow travel encoded, and are decoded on the other side, each column as the
step that adds it declares (``Stage.adds``, see :mod:`scone_data.stages.base`):

- ``array`` (HxWx3 uint8 arrays of varying shapes, or None, e.g. ``image``): a 12-byte shape header
  + raw bytes (raw, not PNG: encoding would cost more than the copy it saves inside one machine).
- ``json`` (nested lists of dicts, ragged polygons, e.g. ``subjects``): JSON strings.

Every other column must hold scalars, strings or bytes; anything else is a programming error and
fails loudly, naming the column. Nulls in object columns come back from Ray as NaN and are turned
back into None. A worker that has not imported the module of a step registered outside this
package passes that step's encoded column on as it is; the driver, which built the step, decodes it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

# the columns no step adds: the sources' annotations and the executor's unit refs
OTHER_CODECS = {"annotations": "json", "refs": "json"}
_HDR = struct.Struct("<III")


def codecs() -> dict[str, str]:
    """Column -> ``array`` | ``json``: :data:`OTHER_CODECS` and every registered step's ``adds``
    (register_stage refuses two codecs for one column)."""
    from scone_data.stages import stage_types

    out = dict(OTHER_CODECS)
    for cls in stage_types().values():
        out.update({col: c for col, c in cls.adds.items() if c != "value"})
    return out


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
    how = codecs()
    out: dict[str, np.ndarray] = {}
    for k, col in batch.items():
        if how.get(k) == "array":
            vals = [_pack_array(v) for v in col]
        elif how.get(k) == "json":
            vals = [json.dumps(v) for v in col]
        else:
            for v in col:
                if isinstance(v, (list, dict, tuple, np.ndarray)):
                    raise TypeError(
                        f"column {k!r} holds {type(v).__name__}: declare it in its step's adds "
                        "(array or json)"
                    )
            vals = list(col)
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        out[k] = arr
    return out


def decode(batch: dict[str, Any]) -> dict[str, list]:
    how = codecs()
    out: dict[str, list] = {}
    for k, col in batch.items():
        vals = col.tolist() if isinstance(col, np.ndarray) else list(col)
        # Arrow nulls come back from Ray as float NaN (an all-null column even as a float array);
        # no row-level column holds a real NaN, so NaN always means None here.
        vals = [None if isinstance(v, float) and v != v else v for v in vals]
        if how.get(k) == "array":
            vals = [_unpack_array(v) for v in vals]
        elif how.get(k) == "json":
            vals = [json.loads(v) if v is not None else None for v in vals]
        out[k] = vals
    return out
