"""Samples from WebDataset tars.

``paths`` is one path or glob, or a list of them. Members are grouped into samples by key the way
WebDataset does (``dir/000123.jpg`` -> key ``dir/000123``, extension ``jpg``), but by key over
the whole tar rather than by adjacency, and with :mod:`tarfile` read defensively: member names
and types are checked from the headers and nothing is ever extracted to disk.

A sample's image is its first member with extension ``jpg``, ``jpeg``, ``png``, ``webp`` (in that
order); ``txt`` or ``caption`` is its caption; a ``json`` object may carry ``caption`` (used when
there is no text member), ``group_id`` and ``license``. ``image_id`` is left ``None`` (content
hash): keys are only unique within one shard. Refs and ``uri``: ``<tar>#<key>`` (either may hold a
``#``; the tar is the first prefix that is a file); two refs are
special: ``<tar>#!unreadable`` (the tar cannot be opened) and ``<tar>#!truncated`` (the tar ends
inside a header, so the rest of it is lost). Member names that are not valid UTF-8 are kept, spelt
with ``\\xNN`` escapes (see :func:`scone_data.sources.base.name_text`).

Reject reasons (beside ``missing_file`` of :mod:`scone_data.sources.base`), on the whole sample:

- ``unsafe_path: <member>``: absolute name or a ``..`` component.
- ``link_member: <member>``: a symlink or hardlink.  ``special_member: <member>``: a device, fifo...
- ``member_too_large: <member> (<n> bytes)``: above ``max_member_bytes``.
- ``duplicate_member: <member>``: the same key and extension twice.
- ``no_image``: no member with an image extension.  ``bad_json: <detail>``: json not an object,
  not json, or nested deeper than ``base.MAX_JSON_DEPTH``.
- ``truncated_tar``: a member's data is cut off, or (ref ``#!truncated``) the rest of the tar.
- ``unreadable_tar: <detail>``: not a tar.  ``bad_ref``: a key that is not in the tar.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field, replace
from typing import ClassVar

from webdataset.tariterators import base_plus_ext

from scone_data.sources.base import (
    Source,
    check_paths,
    check_positive_int,
    decode_text,
    dir_of,
    expand_paths,
    file_identity,
    loads_json,
    make_row,
    name_text,
    rejected_row,
    to_batch,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # priority order
CAPTION_EXTENSIONS = ("txt", "caption")
# Largest member read into memory: a 40 MP PNG is ~120 MB at worst but real shards hold JPEGs of
# a few MB; 64 MiB rejects junk without rejecting real images.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# Bytes after the last header that are checked to be the zero end-of-archive blocks.
TAIL_CHECK_BYTES = 64 * 1024
UNREADABLE, TRUNCATED = "!unreadable", "!truncated"
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


@dataclass
class _Scan:
    """One pass over a tar's headers."""

    tar: tarfile.TarFile | None = None
    error: str = ""
    samples: dict[str, dict[str, tarfile.TarInfo]] = field(default_factory=dict)  # key -> ext -> member
    problems: dict[str, str] = field(default_factory=dict)  # key -> first reject reason
    truncated_rest: bool = False

    def flag(self, key: str, reason: str) -> None:
        self.problems.setdefault(key, reason)


def _scan(path: str, max_member_bytes: int) -> _Scan:
    try:
        size = os.path.getsize(path)
        tar = tarfile.open(path, mode="r:*")
    except FileNotFoundError:
        return _Scan(error="missing_file")
    except (*_READ_ERRORS, ValueError) as e:
        return _Scan(error=f"unreadable_tar: {type(e).__name__}: {e}")
    s = _Scan(tar=tar)
    # A plain tar is read through a BufferedReader; offsets are then file offsets we can check.
    compressed = not isinstance(tar.fileobj, io.BufferedReader)
    any_member_cut = False
    while True:
        try:
            m = tar.next()
        except _READ_ERRORS:
            s.truncated_rest = True
            break
        if m is None:
            break
        if m.isdir():
            continue  # folders carry no data
        name = name_text(m.name)  # tarfile keeps undecodable bytes as surrogates; refs must be UTF-8
        key, ext = base_plus_ext(name)
        key, ext = (name, "") if key is None else (key, ext.lower())
        sample = s.samples.setdefault(key, {})
        if name.startswith("/") or ".." in name.split("/"):
            s.flag(key, f"unsafe_path: {name}")
        elif m.issym() or m.islnk():
            s.flag(key, f"link_member: {name}")
        elif not m.isfile():
            s.flag(key, f"special_member: {name}")
        elif m.size > max_member_bytes:
            s.flag(key, f"member_too_large: {name} ({m.size} bytes)")
        elif ext in sample:
            s.flag(key, f"duplicate_member: {name}")
        elif not compressed and m.offset_data + m.size > size:
            s.flag(key, "truncated_tar")
            any_member_cut = True
        sample.setdefault(ext, m)
    if not s.truncated_rest:
        # tarfile ends silently on a partial header; a cut tar leaves non-zero bytes (or none) here.
        try:
            tar.fileobj.seek(tar.offset)
            tail = tar.fileobj.read(TAIL_CHECK_BYTES)
            s.truncated_rest = len(tail) < 1024 or any(tail)
        except _READ_ERRORS:
            s.truncated_rest = True
    s.truncated_rest = s.truncated_rest and not any_member_cut  # that loss is already on its sample
    return s


# Header passes kept per process: a tar is listed once and then read unit by unit (16 refs each), and
# one pass over a 10,000-sample tar takes ~1.4 s. Keyed by (path, size, mtime) so a changed file is
# scanned again; a kept scan holds the member headers (a few MB per 10,000 samples), not the data.
SCAN_CACHE_SIZE = 8
_SCANS: OrderedDict[tuple, _Scan] = OrderedDict()


def _scanned(path: str, max_member_bytes: int) -> _Scan:
    """:func:`_scan`'s result with the tar open for reading, the header pass done once per file."""
    try:
        st = os.stat(path)
    except OSError:
        return _scan(path, max_member_bytes)  # reports the missing or unreadable file
    key = (path, st.st_size, st.st_mtime_ns, max_member_bytes)
    hit = _SCANS.get(key)
    if hit is None:
        s = _scan(path, max_member_bytes)
        if s.tar is not None:
            _SCANS[key] = replace(s, tar=None)
            if len(_SCANS) > SCAN_CACHE_SIZE:
                _SCANS.popitem(last=False)
        return s
    _SCANS.move_to_end(key)
    try:
        return replace(hit, tar=tarfile.open(path, mode="r:*"))  # members are read by their offsets
    except (*_READ_ERRORS, ValueError) as e:
        return _Scan(error=f"unreadable_tar: {type(e).__name__}: {e}")


def _split_ref(ref: str) -> tuple[str, str, str]:
    """``<tar>#<key>`` -> ``(tar, "#", key)``; both may hold ``#`` (``shards#2/a.tar``, member
    ``x#1.png``), so the tar is the shortest prefix before a ``#`` that is a file."""
    if ref.count("#") > 1:
        at = ref.find("#")
        while at != -1:
            if os.path.isfile(ref[:at]):
                return ref[:at], "#", ref[at + 1 :]
            at = ref.find("#", at + 1)
    return ref.partition("#")  # one '#', or no such file: reported as missing


@dataclass(kw_only=True)
class WebDatasetSource(Source):
    """WebDataset tars; see the module docstring. ``max_member_bytes`` caps each member read."""

    type: ClassVar[str] = "webdataset"
    paths: str | list[str]
    max_member_bytes: int = MAX_MEMBER_BYTES

    def validate(self) -> list[str]:
        problems = super().validate()
        check_positive_int(problems, "max_member_bytes", self.max_member_bytes)
        if check_paths(problems, self.paths):
            problems += expand_paths(self.paths, self.cwd)[1]
        return problems

    def list_refs(self) -> list[str]:
        refs = []
        for path in expand_paths(self.paths, self.cwd)[0]:
            s = _scanned(path, self.max_member_bytes)
            if s.tar is None:
                refs.append(f"{path}#{UNREADABLE}")
                continue
            s.tar.close()
            refs.extend(f"{path}#{key}" for key in s.samples)
            if s.truncated_rest:
                refs.append(f"{path}#{TRUNCATED}")
        return refs

    def inputs(self, refs: list[str]) -> list[dict[str, str]]:
        # the tar is the input of each of its samples (a member's own size or mtime would miss a
        # rewrite that keeps them)
        tars: dict[str, dict[str, str]] = {}
        out = []
        for ref in refs:
            path = _split_ref(ref)[0]
            if path not in tars:
                tars[path] = {name_text(os.path.abspath(path)): file_identity(path)}
            out.append(tars[path])
        return out

    def input_folders(self) -> list[str]:
        pats = [self.paths] if isinstance(self.paths, str) else list(self.paths)
        return [dir_of(self.local_path(p)) for p in pats]

    def read(self, refs: list[str]) -> dict[str, list]:
        rows: list[dict | None] = [None] * len(refs)
        by_tar: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for pos, ref in enumerate(refs):
            path, sep, key = _split_ref(ref)
            if not sep:
                rows[pos] = rejected_row(ref, self.name, "bad_ref")
            else:
                by_tar[path].append((pos, key))
        for path, wanted in by_tar.items():
            s = _scanned(path, self.max_member_bytes)  # one open per tar per call, one header pass per tar
            try:
                for pos, key in wanted:
                    rows[pos] = self._sample(s, path, key)
            finally:
                if s.tar is not None:
                    s.tar.close()
        return to_batch(rows)

    def _sample(self, s: _Scan, path: str, key: str) -> dict:
        uri = f"{path}#{key}"
        if s.tar is None:
            return rejected_row(uri, self.name, s.error)
        if key == TRUNCATED:
            return rejected_row(uri, self.name, "truncated_tar")
        members = s.samples.get(key)
        if members is None:
            return rejected_row(uri, self.name, "bad_ref")
        if key in s.problems:
            return rejected_row(uri, self.name, s.problems[key])
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        if image_ext is None:
            return rejected_row(uri, self.name, "no_image")
        try:
            image = s.tar.extractfile(members[image_ext]).read()
            texts = {
                e: s.tar.extractfile(members[e]).read() for e in (*CAPTION_EXTENSIONS, "json") if e in members
            }
        except _READ_ERRORS:
            return rejected_row(uri, self.name, "truncated_tar")
        meta: dict = {"caption": None, "group_id": None, "license": None}
        if "json" in texts:
            try:
                obj = loads_json(texts["json"])
            except (ValueError, UnicodeDecodeError) as e:
                return rejected_row(uri, self.name, f"bad_json: {e}")
            if not isinstance(obj, dict):
                return rejected_row(uri, self.name, f"bad_json: {type(obj).__name__}, not an object")
            for k in meta:
                v = obj.get(k)
                if isinstance(v, (str, int)) and not isinstance(v, bool) and v != "":
                    meta[k] = str(v).strip() if k == "caption" else str(v)
        for e in CAPTION_EXTENSIONS:
            if e in texts and decode_text(texts[e]):
                meta["caption"] = decode_text(texts[e])
                break
        return make_row(uri, self.name, image_bytes=image, annotations=None, **meta)
