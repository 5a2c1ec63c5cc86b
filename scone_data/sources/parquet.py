"""Images stored in parquet files: a column of encoded bytes, or a column of paths.

``paths`` is one path or glob, or a list of them (``pkg://`` allowed); the files are sorted per
pattern. Exactly one of ``image_column`` (binary, or a struct with a binary ``bytes`` field such
as Hugging Face datasets' ``Image``) and ``path_column`` (strings, relative to ``root``, default
the parquet file's folder) must be set. Optional ``caption_column`` and ``license_column`` are
strings; ``id_column`` and ``group_column`` are strings or integers (made strings). Missing columns
or wrong types are settings errors from :meth:`ParquetSource.validate` (and raise in ``read``).

Refs and ``uri``: ``<file>#row=<n>`` (0-based row in the file), also for ``path_column`` rows so
a reject points at the row to fix. A file that cannot be opened gets the ref ``<file>#!unreadable``.

Reject reasons (beside those of :mod:`scone_data.sources.base`):

- ``missing_image``: null bytes (or a struct whose ``bytes`` is null).  ``empty_file``: zero bytes.
- ``missing_path``: null or empty path.  ``unreadable_file: <detail>``: not a parquet file.
- ``bad_ref``: a row number outside the file.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data.sources.base import (
    MAX_FILE_BYTES,
    PKG_SCHEME,
    Source,
    check_optional_str,
    check_paths,
    check_positive_int,
    dir_of,
    expand_paths,
    file_identity,
    is_within,
    make_row,
    read_file_capped,
    rejected_row,
    to_batch,
)

UNREADABLE = "!unreadable"
_META_COLUMNS = {"caption_column": "caption", "id_column": "image_id", "group_column": "group_id",
                 "license_column": "license"}  # fmt: skip


_EXPECTED = {
    "image_column": "binary or struct<bytes: binary>",
    "path_column": "string",
    "caption_column": "string",
    "license_column": "string",
    "id_column": "string or integer",
    "group_column": "string or integer",
}


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _type_ok(role: str, t: pa.DataType) -> bool:
    if role == "image_column":
        if pa.types.is_struct(t):
            idx = t.get_field_index("bytes")
            return idx >= 0 and _is_bytes(t.field(idx).type)
        return _is_bytes(t)
    if role in ("id_column", "group_column"):
        return _is_str(t) or pa.types.is_integer(t)
    return _is_str(t)


@dataclass(kw_only=True)
class ParquetSource(Source):
    """Rows of parquet files; see the module docstring for the settings."""

    type: ClassVar[str] = "parquet"
    paths: str | list[str]
    image_column: str | None = None
    path_column: str | None = None
    root: str | None = None
    caption_column: str | None = None
    id_column: str | None = None
    group_column: str | None = None
    license_column: str | None = None
    max_file_bytes: int = MAX_FILE_BYTES

    def _columns(self) -> dict[str, str]:
        """role -> column name, for every configured column."""
        roles = ["image_column", "path_column", *_META_COLUMNS]
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}

    def files(self) -> tuple[list[str], list[str]]:
        """``(files, problems)``: the parquet files ``paths`` names, in order."""
        return expand_paths(self.paths, self.cwd)

    def validate(self) -> list[str]:
        problems = super().validate()
        check_positive_int(problems, "max_file_bytes", self.max_file_bytes)
        if not check_paths(problems, self.paths):
            return problems
        for role in ("image_column", "path_column", "root", *_META_COLUMNS):
            check_optional_str(problems, role, getattr(self, role))
        if (self.image_column is None) == (self.path_column is None):
            problems.append("image_column/path_column: set exactly one of them")
        if self.root is not None and self.path_column is None:
            problems.append("root: only used with path_column")
        if isinstance(self.root, str) and self.root:
            try:
                if not os.path.isdir(self.local_path(self.root)):
                    problems.append(f"root: {self.root!r} is not a folder")
            except ValueError as e:
                problems.append(f"root: {e}")
        files, file_problems = self.files()
        problems += file_problems
        for f in files:
            try:
                schema = pq.read_schema(f)
            except Exception:  # noqa: BLE001 - a corrupt file is data: list_refs gives it a reject row
                continue
            problems += _schema_problems(f, schema, self._columns())
        return problems

    def list_refs(self) -> list[str]:
        refs = []
        for f in self.files()[0]:
            try:
                n = pq.ParquetFile(f).metadata.num_rows
            except Exception:  # noqa: BLE001
                refs.append(f"{f}#{UNREADABLE}")
                continue
            refs.extend(f"{f}#row={i}" for i in range(n))
        return refs

    def inputs(self, refs: list[str]) -> list[dict[str, str]]:
        files: dict[str, str] = {}  # parquet file -> identity
        paths: dict[str, list] = {}  # parquet file -> its path column (path_column only)
        out = []
        for ref in refs:
            path, _, frag = ref.rpartition("#")
            if path not in files:
                files[path] = file_identity(path)
            ids = {os.path.abspath(path): files[path]}
            if self.path_column is not None and frag.startswith("row=") and frag[4:].isdigit():
                if path not in paths:
                    paths[path] = self._path_values(path)
                rel = paths[path][int(frag[4:])] if int(frag[4:]) < len(paths[path]) else None
                full = self._image_path(path, rel) if isinstance(rel, str) and rel else None
                if full is not None:
                    ids[os.path.abspath(full)] = file_identity(full)
            out.append(ids)
        return out

    def input_folders(self) -> list[str]:
        pats = [self.paths] if isinstance(self.paths, str) else list(self.paths)
        folders = [dir_of(self.local_path(p)) for p in pats]
        if self.root is not None:
            folders.append(os.path.abspath(self.local_path(self.root)))
        return folders

    def _path_values(self, path: str) -> list:
        try:
            return pq.read_table(path, columns=[self.path_column]).column(0).to_pylist()
        except Exception:  # noqa: BLE001 - unreadable: read() rejects its rows; the file's identity covers it
            return []

    def _image_path(self, parquet_path: str, rel: str) -> str | None:
        """The file a ``path_column`` value names (not checked to stay inside the root), or None."""
        if rel.startswith(PKG_SCHEME):
            try:
                return self.local_path(rel)
            except ValueError:
                return None
        base = self.local_path(self.root) if self.root else os.path.dirname(parquet_path)
        return os.path.normpath(os.path.join(base, rel))

    def read(self, refs: list[str]) -> dict[str, list]:
        rows: list[dict | None] = [None] * len(refs)
        by_file: dict[str, list[tuple[int, int]]] = defaultdict(list)  # file -> (position, row)
        for pos, ref in enumerate(refs):
            path, _, frag = ref.rpartition("#")
            if frag.startswith("row=") and frag[4:].isdigit():
                by_file[path].append((pos, int(frag[4:])))
            else:
                rows[pos] = rejected_row(
                    ref, self.name, "bad_ref" if frag != UNREADABLE else "unreadable_file"
                )
        for path, wanted in by_file.items():
            for pos, row in self._read_file(path, wanted):
                rows[pos] = row
        return to_batch(rows)

    def _read_file(self, path: str, wanted: list[tuple[int, int]]) -> list[tuple[int, dict]]:
        """Rows ``wanted`` of one file, opening it once and reading only the row groups needed."""
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001
            reason = f"unreadable_file: {type(e).__name__}: {e}"
            return [(pos, rejected_row(f"{path}#row={r}", self.name, reason)) for pos, r in wanted]
        problems = _schema_problems(path, pf.schema_arrow, self._columns())
        if problems:  # settings error, not data: stop the run naming the column
            raise ValueError("; ".join(problems))
        starts, total = [], 0
        for g in range(pf.num_row_groups):
            starts.append(total)
            total += pf.metadata.row_group(g).num_rows
        need = sorted({r for _, r in wanted if r < total})
        groups = sorted({_group_of(starts, r) for r in need})
        cols = list(dict.fromkeys(self._columns().values()))
        # Row r of the file is row `local[r]` of the table made of just the groups read.
        local, offset = {}, 0
        for g in groups:
            for r in need:
                if _group_of(starts, r) == g:
                    local[r] = offset + r - starts[g]
            offset += pf.metadata.row_group(g).num_rows
        taken = {}
        if groups:
            table = pf.read_row_groups(groups, columns=cols)
            picked = table.take([local[r] for r in need]).to_pylist()
            taken = dict(zip(need, picked))
        out = []
        for pos, r in wanted:
            uri = f"{path}#row={r}"
            if r >= total:
                out.append((pos, rejected_row(uri, self.name, "bad_ref")))
            else:
                out.append((pos, self._row(uri, path, taken[r])))
        return out

    def _row(self, uri: str, parquet_path: str, values: dict[str, Any]) -> dict:
        meta = {}
        for role, key in _META_COLUMNS.items():
            col = getattr(self, role)
            v = values.get(col) if col else None
            meta[key] = None if v is None else str(v)
        if self.image_column is not None:
            data = values[self.image_column]
            if isinstance(data, dict):
                data = data.get("bytes")
            if data is None:
                return rejected_row(uri, self.name, "missing_image", **meta)
            if len(data) == 0:
                return rejected_row(uri, self.name, "empty_file", **meta)
            return make_row(uri, self.name, image_bytes=bytes(data), annotations=None, **meta)
        rel = values[self.path_column]
        if not rel:
            return rejected_row(uri, self.name, "missing_path", **meta)
        full = self._image_path(parquet_path, rel)
        if full is None:
            return rejected_row(uri, self.name, "missing_file", **meta)
        if not rel.startswith(PKG_SCHEME):
            base = self.local_path(self.root) if self.root else os.path.dirname(parquet_path)
            if not is_within(full, base):
                return rejected_row(uri, self.name, "path_outside_root", **meta)
        data, reason = read_file_capped(full, self.max_file_bytes)
        if data is None:
            return rejected_row(uri, self.name, reason, **meta)
        return make_row(uri, self.name, image_bytes=data, annotations=None, **meta)


def _group_of(starts: list[int], r: int) -> int:
    return bisect.bisect_right(starts, r) - 1


def _schema_problems(path: str, schema: pa.Schema, columns: dict[str, str]) -> list[str]:
    problems = []
    for role, col in columns.items():
        idx = schema.get_field_index(col)
        if idx < 0:
            problems.append(f"{role}: column {col!r} not in {path} (has {', '.join(schema.names)})")
        elif not _type_ok(role, schema.field(idx).type):
            got = schema.field(idx).type
            problems.append(f"{role}: column {col!r} in {path} has type {got}, expected {_EXPECTED[role]}")
    return problems
