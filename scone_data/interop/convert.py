"""One source row -> one sample record: the field map, its presets, and the conversion rules.

The rules (what an imported sample is) are in :mod:`scone_data.interop.imports`' docstring.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from scone_data import __version__, schemas
from scone_data.imageio import DecodeError, content_id, decode_image, encode_jpeg
from scone_data.interop.reader import InteropError
from scone_data.pairs.config import MAX_REFERENCES, PairConfig
from scone_data.stages.decode import DecodeImages

FORMATS = ("scone-parquet", "jsonl", "json")  # jsonl and json both read JSON lines or one JSON array
# The build's own defaults, so imported shards look like built ones: at most as many references as
# the pair builder makes, the decode stage's decompression-bomb cap, the pair builder's JPEG quality.
DEFAULT_MAX_REFERENCES = MAX_REFERENCES
MAX_PIXELS = DecodeImages.max_pixels
JPEG_QUALITY = PairConfig.jpeg_quality
REASONS = (
    "missing_field",
    "no_references",
    "too_many_references",
    "empty_instruction",
    "image_missing",
    "duplicate_sample",
    "invalid_row",
)  # plus the decode reasons of scone_data.imageio (not_an_image, truncated, too_many_pixels, ...)

_PLACEHOLDER = re.compile(r"<img>\s*<\|image_(\d+)\|>\s*</img>")


@dataclass
class FieldMap:
    """Which source fields hold what. Dotted names reach into nested objects (``meta.prompt``);
    ``a|b`` takes the first of the two a row has (UNO rows hold ``image_paths`` or ``image_path``)."""

    images: str = ""  # one list: references first, target last (Scone parquet)
    references: str = ""  # a list field, or several single-image fields joined by commas
    target: str = ""
    instruction: str = "instruction"
    label: str = ""  # optional: a string, or a list with one label per reference
    placeholders: bool = False  # rewrite X2I's <img><|image_N|></img> to "image N"

    def validate(self) -> list[str]:
        p = []
        if bool(self.images) == bool(self.references or self.target):
            p.append("give either images=FIELD or references=FIELD(S) and target=FIELD, not both")
        if not self.images and not (self.references and self.target):
            p.append("references and target are both needed when images is not given")
        if not self.instruction:
            p.append("instruction=FIELD is required")
        return p

    def names(self) -> list[str]:
        """Every field this map needs a row to have (the optional label left out)."""
        refs = [self.images] if self.images else [n.strip() for n in self.references.split(",") if n.strip()]
        return refs + ([self.target] if self.target else []) + [self.instruction]


# In the order layout detection tries them (the first that fits the most rows wins).
PRESETS: dict[str, FieldMap] = {
    "scone-s2i": FieldMap(images="image", instruction="instruction"),
    "x2i": FieldMap(
        references="input_images", target="output_image", instruction="instruction", placeholders=True
    ),
    "uno": FieldMap(references="image_paths|image_path", target="image_tgt_path", instruction="prompt"),
    "generic": FieldMap(references="references", target="target", instruction="prompt"),
}


def field_map(fmt: str, preset: str | None = None, overrides: list[str] | None = None) -> FieldMap:
    """Preset ``preset`` (default: ``scone-s2i`` for parquet, else ``generic``) with ``key=value``
    overrides; raises InteropError (code 2). The CLI without ``--preset`` detects the layout from the
    rows instead (:func:`scone_data.interop.imports.detect_layout`)."""
    problems = []
    if fmt not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    name = preset or ("scone-s2i" if fmt == "scone-parquet" else "generic")
    if name not in PRESETS:
        problems.append(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
        name = "generic"
    fm = with_overrides(PRESETS[name], overrides or [], problems)
    problems += fm.validate()
    if problems:
        raise InteropError("bad import settings: " + "; ".join(problems), code=2)
    return fm


def with_overrides(base: FieldMap, overrides: list[str], problems: list[str]) -> FieldMap:
    """A copy of ``base`` with ``key=value`` overrides; a bad override is added to ``problems``."""
    fm = FieldMap(**asdict(base))
    known = {f.name for f in fields(FieldMap)}
    for item in overrides:
        k, eq, v = item.partition("=")
        if not eq or k not in known:
            problems.append(f"--field {item!r}: expected KEY=VALUE with KEY in {', '.join(sorted(known))}")
            continue
        setattr(fm, k, v.strip().lower() in ("1", "true", "yes") if k == "placeholders" else v.strip())
    return fm


def fits(fm: FieldMap, row: dict[str, Any]) -> bool:
    """Whether ``row`` has every field ``fm`` needs."""
    try:
        for name in fm.names():
            _get(row, name)
    except RowReject:
        return False
    return True


class RowReject(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _get(row: dict[str, Any], name: str) -> Any:
    for alt in name.split("|"):
        cur: Any = row
        for part in alt.strip().split("."):
            if not isinstance(cur, dict) or cur.get(part) is None:
                break
            cur = cur[part]
        else:
            return cur
    raise RowReject("missing_field", name)


def _image_bytes(value: Any, root: Path) -> bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise RowReject("image_missing", repr(value)[:80])
    p = Path(value) if Path(value).is_absolute() else root / value
    if not p.is_file():
        raise RowReject("image_missing", str(p))
    return p.read_bytes()


def _as_jpeg(data: bytes) -> tuple[bytes, int, int]:
    """``(jpeg_bytes, width, height)``; raises RowReject with a decode reason."""
    try:
        img = decode_image(data, MAX_PIXELS)
    except DecodeError as e:
        raise RowReject(e.reason, e.detail) from None
    h, w = img.shape[:2]
    if data[:3] == b"\xff\xd8\xff":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.getexif().get(0x0112, 1) == 1:  # no EXIF rotation: the bytes already show what we saw
                return data, w, h
    return encode_jpeg(img, JPEG_QUALITY), w, h


def _labels(row: dict[str, Any], fm: FieldMap, n: int, default: str) -> list[str]:
    if not fm.label:
        return [default] * n
    try:
        v = _get(row, fm.label)
    except RowReject:
        return [default] * n
    if isinstance(v, str):
        return [v or default] * n
    v = [str(x) if x else default for x in list(v)]
    return (v + [default] * n)[:n]


def convert_row(
    row: dict[str, Any],
    fm: FieldMap,
    root: Path,
    source: str,
    split: str,
    label: str,
    max_refs: int,
    cfg_hash: str,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One source row -> ``(sample record, members)``; raises RowReject."""
    if fm.images:
        imgs = list(_get(row, fm.images))
        if len(imgs) < 2:
            raise RowReject("no_references", f"{len(imgs)} image(s) in {fm.images}")
        ref_vals, tgt_val = imgs[:-1], imgs[-1]
    else:
        names = [s.strip() for s in fm.references.split(",") if s.strip()]
        if len(names) == 1:
            v = _get(row, names[0])
            ref_vals = [v] if isinstance(v, (str, dict, bytes)) else list(v)
        else:
            ref_vals = [_get(row, n) for n in names]
        tgt_val = _get(row, fm.target)
    if not ref_vals:
        raise RowReject("no_references")
    if len(ref_vals) > max_refs:
        raise RowReject("too_many_references", f"{len(ref_vals)} > {max_refs}")
    instruction = str(_get(row, fm.instruction))
    if fm.placeholders:
        instruction = _PLACEHOLDER.sub(lambda m: f"image {m.group(1)}", instruction)
    instruction = " ".join(instruction.split())
    if not instruction:
        raise RowReject("empty_instruction")
    refs = [_as_jpeg(_image_bytes(v, root)) for v in ref_vals]
    tgt, tw, th = _as_jpeg(_image_bytes(tgt_val, root))
    ids = [content_id(b) for b, _, _ in refs]
    tid = content_id(tgt)
    key = hashlib.sha256("\0".join([instruction, *ids, tid]).encode()).hexdigest()[:16]
    labels = _labels(row, fm, len(refs), label)
    references, target_boxes, members = [], [], {"target.jpg": tgt}
    for i, ((data, w, h), rid, lab) in enumerate(zip(refs, ids, labels)):
        sid = f"{key}-r{i}"
        references.append(
            {
                "member": f"ref{i}.jpg",
                "width": w,
                "height": h,
                "kind": "crop",
                "candidates": [
                    {
                        "subject_id": sid,
                        "label": lab,
                        "box_xyxy": [0.0, 0.0, float(w), float(h)],
                        "intended": True,
                        "source_image_id": rid,
                    }
                ],
                "expression": None,
                "augment": {},
            }
        )
        target_boxes.append(
            {"subject_id": sid, "label": lab, "box_xyxy": [0.0, 0.0, float(tw), float(th)], "ref_index": i}
        )
        members[f"ref{i}.jpg"] = data
    rec = {
        "schema_version": schemas.SAMPLE_VERSION,
        "key": key,
        "task": "composition_single" if len(refs) == 1 else "composition_multi",
        "split": split,
        "instruction": instruction,
        "references": references,
        "target": {"member": "target.jpg", "image_id": tid, "width": tw, "height": th, "boxes": target_boxes},
        "provenance": {
            "builder_version": __version__,
            "config_hash": cfg_hash,
            "seed": 0,
            "source": source,
            "models": [],
        },
    }
    return rec, members
