"""Images and their annotations from a COCO-format json.

Settings: ``annotations`` (the json; ``pkg://`` allowed), ``captions`` (optional: a COCO captions json
such as ``captions_train2017.json``, whose ``annotations`` hold ``{"image_id", "caption"}`` for the same
ids; the first caption of an image is used, after any caption inside ``annotations``) and
``image_root`` (default: the json's folder; nested at most ``base.MAX_JSON_DEPTH`` deep, else a settings error, as are two
``categories`` with one id and different names). ``file_name`` is relative to ``image_root`` or itself a ``pkg://`` URI.
The json files and ``image_root`` may be object-store URIs (``s3://bucket/coco/instances.json``,
:mod:`scone_data.runtime.storage`); an image's identity for resume is then its size and Last-Modified.

Per image row: ``uri`` is the image file's path, ``image_id`` is ``<source name>-<COCO id>``
(sanitised, so two COCO sources with overlapping ids stay distinct), ``license`` is the name (else
url) of the entry in ``licenses`` the image points to, ``caption`` the first COCO-captions style
annotation (one with a ``caption`` string and no ``category_id``). ``annotations`` is a list
(``[]`` when none) of ``{"label": category name, "box_xyxy": [x, y, x + w, y + h] (None without a
bbox; malformed bboxes pass through raw for decode to reject), "segmentation": polygons | RLE
(list or str counts) | None, "ann_id", "iscrowd": 0 | 1, "image_wh"}``. Refs are ``images[<i>]``, the
position in the json's ``images`` list.

Image row reject reasons (beside those of :mod:`scone_data.sources.base`):

- ``bad_image_entry: <detail>``: not a dict, or no usable ``id`` / ``file_name`` (a ``file_name``
  with a NUL or a lone ``\\ud800``-style escape names no file; ``\\udc80``-``\\udcff`` escapes are
  the bytes of a non-UTF-8 name, which is read, its ``uri`` spelt with ``\\xNN``).
- ``duplicate_image_id: <detail>``: the id was used by an earlier entry (that one is kept).
- ``bad_ref``: a ref that is not ``images[<i>]`` of this json.

COCO coordinates are in the stored pixel grid; decoding applies EXIF orientation and rotates the
annotations with the image. Each annotation carries ``image_wh``, the entry's ``[width,
height]`` (None when missing), which says which frame it is in (see
:func:`scone_data.stages.decode.to_display_frame`).

Annotations that attach to no image are returned by :meth:`CocoSource.orphan_annotations` as
reject records (schemas/reject.v1.json) with reason ``unknown_image_id``, ``unknown_category``
or ``bad_annotation``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from scone_data import schemas
from scone_data.imageio import sanitize_id
from scone_data.sources.base import (
    MAX_FILE_BYTES,
    PKG_SCHEME,
    Source,
    abspath,
    check_optional_str,
    check_positive_int,
    file_identity,
    is_within,
    isdir,
    loads_json,
    make_row,
    name_text,
    normpath,
    read_file_capped,
    rejected_row,
    safe_text,
    to_batch,
)

# COCO 2017 train instances are ~450 MB of json; 2 GiB leaves room and still fits in memory.
MAX_JSON_BYTES = 2 * 1024**3
_REF_RE = re.compile(r"^images\[(\d+)\]$")


def _read_coco_json(path: str, images: bool = True) -> dict:
    """A COCO json document (instances, or captions with ``images=False``); ValueError if unusable."""
    data, reason = read_file_capped(path, MAX_JSON_BYTES)
    if data is None:
        raise ValueError(f"{path}: {reason}")
    try:
        doc = loads_json(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid json ({e})") from None
    if not isinstance(doc, dict) or (images and not isinstance(doc.get("images"), list)):
        raise ValueError(f"{path}: not a COCO json (needs an object with an 'images' list)")
    for key in ("annotations", "categories", "licenses"):
        if not isinstance(doc.get(key, []), list):
            raise ValueError(f"{path}: '{key}' must be a list")
    return doc


@dataclass
class _Index:
    images: list[Any]
    first_of: dict[Any, int]  # COCO image id -> position of its first entry
    anns: dict[Any, list[dict]]
    captions: dict[Any, str]
    licenses: dict[Any, str]
    orphans: list[dict]


@dataclass(kw_only=True)
class CocoSource(Source):
    """A COCO json and its image folder; see the module docstring."""

    type: ClassVar[str] = "coco"
    annotations: str
    image_root: str | None = None
    captions: str | None = None
    max_file_bytes: int = MAX_FILE_BYTES
    _index: _Index | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # Workers re-read the json rather than receive a pickled copy of a possibly huge index.
        return {k: v for k, v in self.__dict__.items() if k != "_index"} | {"_index": None}

    @property
    def _json_path(self) -> str:
        return self.local_path(self.annotations)

    @property
    def _root(self) -> str:
        return self.local_path(self.image_root) if self.image_root else os.path.dirname(self._json_path)

    def validate(self) -> list[str]:
        problems = super().validate()
        check_positive_int(problems, "max_file_bytes", self.max_file_bytes)
        check_optional_str(problems, "image_root", self.image_root)
        check_optional_str(problems, "captions", self.captions)
        if isinstance(self.image_root, str) and self.image_root:
            try:
                if not isdir(self.local_path(self.image_root)):
                    problems.append(f"image_root: {self.image_root!r} is not a folder")
            except ValueError as e:
                problems.append(f"image_root: {e}")
        if not isinstance(self.annotations, str) or not self.annotations:
            problems.append(f"annotations: must be a path to a COCO json, got {self.annotations!r}")
            return problems
        try:
            self._load()
        except ValueError as e:
            problems.append(f"annotations: {e}")
        return problems

    def _load(self) -> _Index:
        """Parse the json once (per process) into lookups; raises ValueError if it is unusable."""
        if self._index is not None:
            return self._index
        path = self._json_path
        doc = _read_coco_json(path)
        index = self._build_index(doc)
        if isinstance(self.captions, str) and self.captions:
            cpath = self.local_path(self.captions)
            for a in _read_coco_json(cpath, images=False).get("annotations", []):
                # COCO captions files hold several captions per image: the first one is used; captions of
                # images the instances json does not list describe no row of this source
                iid = a.get("image_id") if isinstance(a, dict) else None
                if _usable_id(iid) and iid in index.first_of and isinstance(a.get("caption"), str):
                    if a["caption"].strip():
                        index.captions.setdefault(iid, a["caption"].strip())
        self._index = index
        return self._index

    def _build_index(self, doc: dict) -> _Index:
        images = doc["images"]
        first_of: dict[Any, int] = {}
        for i, im in enumerate(images):
            iid = im.get("id") if isinstance(im, dict) else None
            if _usable_id(iid) and iid not in first_of:
                first_of[iid] = i
        cats: dict[Any, str] = {}
        clashes = []
        for c in doc.get("categories", []):
            if _is_cat(c):
                name = safe_text(c["name"])
                kept = cats.setdefault(c["id"], name)
                if kept != name:
                    clashes.append(f"{c['id']!r} ({kept!r} and {name!r})")
        if clashes:  # which name an annotation means is unknowable: every choice relabels some
            raise ValueError(
                f"{self._json_path}: categories: two names for one id: {', '.join(clashes[:10])}"
            )
        licenses = {}
        for lic in doc.get("licenses", []):
            if isinstance(lic, dict) and _usable_id(lic.get("id")):
                text = lic.get("name") or lic.get("url")
                if isinstance(text, str) and text:
                    licenses[lic["id"]] = text
        anns: dict[Any, list[dict]] = {}
        captions: dict[Any, str] = {}
        orphans: list[dict] = []
        json_path = self._json_path  # resolved once: COCO train has ~860k annotations
        for j, a in enumerate(doc.get("annotations", [])):
            iid = a.get("image_id") if isinstance(a, dict) else None
            if not isinstance(a, dict) or not _usable_id(iid):
                orphans.append(
                    self._orphan(
                        f"{json_path}#annotations[{j}]", None, "bad_annotation", "not a dict with an image_id"
                    )
                )
                continue
            if iid not in first_of:
                orphans.append(
                    self._orphan(
                        f"{json_path}#annotations[{j}]", None, "unknown_image_id", f"image_id={iid!r}"
                    )
                )
                continue
            if "category_id" not in a and isinstance(a.get("caption"), str):
                captions.setdefault(iid, a["caption"].strip())
                continue
            cid = a.get("category_id")
            if not _usable_id(cid) or cid not in cats:
                orphans.append(
                    self._orphan(
                        f"{json_path}#annotations[{j}]",
                        self._image_id(iid),
                        "unknown_category",
                        f"category_id={cid!r}",
                    )  # fmt: skip
                )
                continue
            anns.setdefault(iid, []).append(
                {
                    "label": cats[cid],
                    "box_xyxy": _xyxy(a.get("bbox")),
                    "segmentation": a.get("segmentation") or None,
                    "ann_id": a.get("id"),
                    "iscrowd": 1 if a.get("iscrowd") else 0,
                }
            )
        return _Index(images, first_of, anns, captions, licenses, orphans)

    def _image_id(self, coco_id: Any) -> str:
        return sanitize_id(f"{self.name}-{coco_id}")

    def _orphan(self, uri: str, image_id: str | None, reason: str, detail: str) -> dict:
        return schemas.reject_record("source", uri, image_id, reason, detail)

    def orphan_annotations(self) -> list[dict]:
        """Annotations that attach to no image, as reject records (reject.v1.json), in json order."""
        return list(self._load().orphans)

    def source_rejects(self) -> list[dict]:
        return self.orphan_annotations()

    def list_refs(self) -> list[str]:
        return [f"images[{i}]" for i in range(len(self._load().images))]

    def source_inputs(self) -> dict[str, str]:
        # the jsons: the annotations, and a captions json where one is set
        paths = [self._json_path]
        if isinstance(self.captions, str) and self.captions:
            paths.append(self.local_path(self.captions))
        return {name_text(abspath(p)): file_identity(p) for p in paths}

    def inputs(self, refs: list[str]) -> list[dict[str, str]]:
        # the json is an input of every image: its entry, annotations, caption and license come from it
        idx, shared, root = self._load(), self.source_inputs(), self._root
        out = []
        for ref in refs:
            m = _REF_RE.match(ref)
            im = idx.images[int(m.group(1))] if m and int(m.group(1)) < len(idx.images) else None
            path = self._file_path(im.get("file_name"), root) if isinstance(im, dict) else None
            out.append(shared | ({name_text(path): file_identity(path)} if path else {}))
        return out

    def input_folders(self) -> list[str]:
        return [abspath(self._root)]

    def _file_path(self, fname: Any, root: str) -> str | None:
        """The file an entry's ``file_name`` names (not checked to stay inside ``root``), or None."""
        if not isinstance(fname, str) or not fname or "\x00" in fname:
            return None
        try:
            os.fsencode(fname)
            if fname.startswith(PKG_SCHEME):
                return self.local_path(fname)
        except (UnicodeEncodeError, ValueError):
            return None
        return abspath(os.path.join(root, fname))

    def read(self, refs: list[str]) -> dict[str, list]:
        idx = self._load()
        return to_batch([self._read_one(idx, ref) for ref in refs])

    def _read_one(self, idx: _Index, ref: str) -> dict:
        m = _REF_RE.match(ref)
        where = f"{self._json_path}#{ref}"
        if not m or int(m.group(1)) >= len(idx.images):
            return rejected_row(where, self.name, "bad_ref")
        i = int(m.group(1))
        im = idx.images[i]
        if not isinstance(im, dict):
            return rejected_row(where, self.name, "bad_image_entry: not a dict")
        iid, fname = im.get("id"), im.get("file_name")
        if not _usable_id(iid):
            return rejected_row(where, self.name, f"bad_image_entry: id {iid!r}")
        image_id = self._image_id(iid)
        if idx.first_of[iid] != i:
            reason = f"duplicate_image_id: {iid!r} first at images[{idx.first_of[iid]}]"
            return rejected_row(where, self.name, reason, image_id=image_id)
        if not isinstance(fname, str) or not fname:
            return rejected_row(where, self.name, f"bad_image_entry: file_name {fname!r}", image_id=image_id)
        try:
            os.fsencode(fname)  # a json "\\ud800" escape has no bytes on disk; NUL ends a C string
            ok = "\x00" not in fname
        except UnicodeEncodeError:
            ok = False
        if not ok:
            return rejected_row(where, self.name, f"bad_image_entry: file_name {fname!r}", image_id=image_id)
        if fname.startswith(PKG_SCHEME):
            try:
                path = self.local_path(fname)
            except ValueError:
                return rejected_row(where, self.name, "missing_file", image_id=image_id)
        else:
            root = self._root
            path = normpath(os.path.join(root, fname))
            if not is_within(path, root):
                return rejected_row(name_text(path), self.name, "path_outside_root", image_id=image_id)
        license_ = idx.licenses.get(im.get("license")) if _usable_id(im.get("license")) else None
        meta = {"image_id": image_id, "caption": idx.captions.get(iid) or None, "license": license_}
        data, reason = read_file_capped(path, self.max_file_bytes)
        uri = name_text(path)  # json "\\udcXX" escapes name non-UTF-8 files: kept, spelt as \\xXX
        if data is None:
            return rejected_row(uri, self.name, reason, **meta)
        wh = [im.get("width"), im.get("height")]
        wh = wh if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in wh) else None
        anns = [a | {"image_wh": wh} for a in idx.anns.get(iid, [])]  # the frame, for EXIF rotation
        return make_row(uri, self.name, image_bytes=data, annotations=anns, **meta)


def _usable_id(v: Any) -> bool:
    """COCO ids are ints (strings are accepted too); anything else cannot key a lookup."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v != "")


def _is_cat(c: Any) -> bool:
    return (
        isinstance(c, dict) and _usable_id(c.get("id")) and isinstance(c.get("name"), str) and bool(c["name"])
    )


def _xyxy(bbox: Any) -> Any:
    """COCO [x, y, w, h] -> [x0, y0, x1, y1]; None stays None, anything malformed passes through raw."""
    if isinstance(bbox, list) and len(bbox) == 4:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            x, y, w, h = (float(v) for v in bbox)
            return [x, y, x + w, y + h]  # NaN/inf stay non-finite, for decode to reject
    return bbox
