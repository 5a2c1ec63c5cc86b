"""Images in a folder tree.

Every regular file under ``root`` (recursively) is listed, except hidden files and folders (names
starting with ``.``, e.g. ``.DS_Store``, ``.git``), which are skipped without a row. Image files
are those with the extensions in :data:`IMAGE_EXTENSIONS` (any case); their bytes are decoded by
content later, so a PNG named ``.jpg`` is fine. A ``.txt`` file with the same stem beside an image
is that image's caption and gets no row of its own. Refs are paths relative to ``root`` (POSIX
separators), sorted. ``uri`` is the absolute path; ``image_id`` is left ``None`` (content hash).
Names that are not valid UTF-8 are kept: refs and ``uri`` spell them with ``\\xNN`` escapes (and
``\\\\`` for a backslash), see :func:`scone_data.sources.base.name_text`.

Symlinks: a file symlink is read when its target lies inside ``root``; symlinked folders are not
descended (that could loop or list files twice) but get a reject row.

Reject reasons (beside those of :mod:`scone_data.sources.base`):

- ``unsupported_extension``: not an image extension and not a caption sidecar.
- ``symlink_outside_root``: a symlink whose target is outside ``root`` (not followed).
- ``symlinked_dir``: a symlink to a folder (not descended).
- ``bad_caption: <reason>``: the caption sidecar could not be read (reason as for files).

``root`` may be an object-store prefix (``s3://bucket/photos``, :mod:`scone_data.runtime.storage`):
the objects under it are listed and read the same way (hidden names skipped, sidecar captions,
extensions), ``uri`` is the object's URI, and an input's identity for resume is
``<size>:<mtime_ns>`` from the store's listing (its Last-Modified, to the second: an object
rewritten within the same second with the same size is not seen as changed). A store has no
symlinks, so their reasons never occur there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from scone_data.runtime import storage
from scone_data.sources.base import (
    MAX_FILE_BYTES,
    Source,
    check_positive_int,
    decode_text,
    file_identity,
    is_within,
    make_row,
    name_from_text,
    name_text,
    read_file_capped,
    rejected_row,
    to_batch,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
CAPTION_EXTENSION = ".txt"
# Captions are a sentence or a paragraph; a bigger .txt is not a caption.
MAX_CAPTION_BYTES = 1024 * 1024


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


@dataclass(kw_only=True)
class FolderSource(Source):
    """``root``: a folder (plain path or ``pkg://``); ``max_file_bytes``: per-file read cap."""

    type: ClassVar[str] = "folder"
    root: str
    max_file_bytes: int = MAX_FILE_BYTES

    def validate(self) -> list[str]:
        problems = super().validate()
        check_positive_int(problems, "max_file_bytes", self.max_file_bytes)
        if not isinstance(self.root, str) or not self.root:
            problems.append(f"root: must be a non-empty string, got {self.root!r}")
            return problems
        if storage.is_uri(self.root):
            try:
                if not storage.path(self.root).is_dir():
                    problems.append(f"root: {self.root!r} holds no objects")
            except OSError as e:
                problems.append(f"root: {self.root!r} cannot be listed ({' '.join(str(e).split())[:200]})")
            return problems
        try:
            root = self.local_path(self.root)
        except ValueError as e:
            problems.append(f"root: {e}")
            return problems
        if not os.path.isdir(root):
            problems.append(f"root: {root!r} is not a folder")
        return problems

    @property
    def _root(self) -> str:
        if storage.is_uri(self.root):
            return str(storage.path(self.root))
        return os.path.abspath(self.local_path(self.root))

    def list_refs(self) -> list[str]:
        if storage.is_uri(self.root):
            return self._store_refs()
        root = self._root
        refs: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            keep = []
            for d in sorted(dirnames):
                if _hidden(d):
                    continue
                if os.path.islink(os.path.join(dirpath, d)):
                    refs.append(rel_dir + d)  # listed so it is rejected, never descended
                else:
                    keep.append(d)
            dirnames[:] = keep
            visible = [f for f in filenames if not _hidden(f)]
            image_stems = {os.path.splitext(f)[0] for f in visible if _ext(f) in IMAGE_EXTENSIONS}
            for f in visible:
                if _ext(f) == CAPTION_EXTENSION and os.path.splitext(f)[0] in image_stems:
                    continue  # a caption sidecar, read with its image
                refs.append(rel_dir + f)
        return sorted(name_text(r) for r in refs)

    def inputs(self, refs: list[str]) -> list[dict[str, str]]:
        if storage.is_uri(self.root):
            return self._store_inputs(refs)
        root = self._root
        sidecars: dict[str, dict[str, str]] = {}
        out = []
        for ref in refs:
            path = os.path.join(root, *name_from_text(ref).split("/"))
            ids = {name_text(path): file_identity(path)}
            cap = self._caption_path(path, sidecars)
            if cap is not None:
                ids[name_text(cap)] = file_identity(cap)
            out.append(ids)
        return out

    def input_folders(self) -> list[str]:
        return [self._root]

    def read(self, refs: list[str]) -> dict[str, list]:
        root = self._root
        if storage.is_uri(self.root):
            folders: dict[str, dict[str, object]] = {}
            return to_batch([self._store_read_one(root, ref, folders) for ref in refs])
        sidecars: dict[str, dict[str, str]] = {}  # folder -> stem -> caption file name
        return to_batch([self._read_one(root, ref, sidecars) for ref in refs])

    def _read_one(self, root: str, ref: str, sidecars: dict[str, dict[str, str]]) -> dict:
        path = os.path.join(root, *name_from_text(ref).split("/"))
        uri = name_text(path)
        if os.path.isabs(ref) or ".." in ref.split("/"):
            return rejected_row(uri, self.name, "path_outside_root")
        if os.path.islink(path):
            if not is_within(path, root):
                return rejected_row(uri, self.name, "symlink_outside_root")
            if os.path.isdir(path):
                return rejected_row(uri, self.name, "symlinked_dir")
        if _ext(path) not in IMAGE_EXTENSIONS:
            return rejected_row(uri, self.name, "unsupported_extension")
        data, reason = read_file_capped(path, self.max_file_bytes)
        if data is None:
            return rejected_row(uri, self.name, reason)
        caption, reason = self._caption(root, path, sidecars)
        if reason:
            return rejected_row(uri, self.name, f"bad_caption: {reason}")
        return make_row(uri, self.name, image_bytes=data, caption=caption, annotations=None)

    def _caption_path(self, path: str, sidecars: dict[str, dict[str, str]]) -> str | None:
        """The caption sidecar of the image at ``path``, if there is one (``sidecars`` caches listings)."""
        folder, name = os.path.split(path)
        if folder not in sidecars:
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            # Sorted so that, of a.txt and a.TXT, the same one always wins.
            sidecars[folder] = {}
            for n in sorted(names, reverse=True):
                if _ext(n) == CAPTION_EXTENSION and not _hidden(n):
                    sidecars[folder][os.path.splitext(n)[0]] = n
        cap_name = sidecars[folder].get(os.path.splitext(name)[0])
        return None if cap_name is None else os.path.join(folder, cap_name)

    def _caption(self, root: str, path: str, sidecars: dict[str, dict[str, str]]) -> tuple[str | None, str]:
        cap_path = self._caption_path(path, sidecars)
        if cap_path is None:
            return None, ""
        if not is_within(cap_path, root):
            return None, "symlink_outside_root"
        data, reason = read_file_capped(cap_path, MAX_CAPTION_BYTES)
        if data is None:
            return None, reason
        return decode_text(data), ""

    # -- an object-store prefix ------------------------------------------------------------------
    def _store_listing(self, folder: str, cache: dict[str, dict[str, object]]) -> dict[str, object]:
        """Visible objects directly in ``folder`` (a URI): name -> FileInfo (cached per folder)."""
        if folder not in cache:
            cache[folder] = {p.name: p.info() for p in storage.path(folder).iterdir() if not _hidden(p.name)}
        return cache[folder]

    def _store_refs(self) -> list[str]:
        root = storage.path(self.root)
        rels = [str(p.relative_to(root)) for p, _ in root.walk_files()]
        rels = [r for r in rels if not any(_hidden(part) for part in r.split("/"))]
        stems = {os.path.splitext(r)[0] for r in rels if _ext(r) in IMAGE_EXTENSIONS}
        return sorted(
            r for r in rels if not (_ext(r) == CAPTION_EXTENSION and os.path.splitext(r)[0] in stems)
        )

    def _store_caption(self, uri: str, cache: dict[str, dict[str, object]]) -> str | None:
        """The URI of the caption sidecar of the image at ``uri`` (as :meth:`_caption_path`)."""
        folder, _, name = uri.rpartition("/")
        listing = self._store_listing(folder, cache)
        stem = os.path.splitext(name)[0]
        caps = sorted((n for n in listing if _ext(n) == CAPTION_EXTENSION), reverse=True)
        cap = {os.path.splitext(n)[0]: n for n in caps}.get(stem)
        return None if cap is None else f"{folder}/{cap}"

    def _store_inputs(self, refs: list[str]) -> list[dict[str, str]]:
        root, cache, out = self._root, {}, []
        for ref in refs:
            uri = f"{root}/{ref}"
            ids = {uri: self._store_identity(uri, cache)}
            cap = self._store_caption(uri, cache)
            if cap is not None:
                ids[cap] = self._store_identity(cap, cache)
            out.append(ids)
        return out

    def _store_identity(self, uri: str, cache: dict[str, dict[str, object]]) -> str:
        """``<size>:<mtime_ns>`` from the folder's listing (no object is opened), or ``missing``."""
        folder, _, name = uri.rpartition("/")
        info = self._store_listing(folder, cache).get(name)
        return "missing" if info is None else f"{info.size}:{info.mtime_ns or 0}"

    def _store_read_one(self, root: str, ref: str, cache: dict[str, dict[str, object]]) -> dict:
        uri = f"{root}/{ref}"
        if ref.startswith("/") or ".." in ref.split("/"):
            return rejected_row(uri, self.name, "path_outside_root")
        if _ext(ref) not in IMAGE_EXTENSIONS:
            return rejected_row(uri, self.name, "unsupported_extension")
        data, reason = read_file_capped(uri, self.max_file_bytes)
        if data is None:
            return rejected_row(uri, self.name, reason)
        caption = None
        cap = self._store_caption(uri, cache)
        if cap is not None:
            cdata, reason = read_file_capped(cap, MAX_CAPTION_BYTES)
            if cdata is None:
                return rejected_row(uri, self.name, f"bad_caption: {reason}")
            caption = decode_text(cdata)
        return make_row(uri, self.name, image_bytes=data, caption=caption, annotations=None)
