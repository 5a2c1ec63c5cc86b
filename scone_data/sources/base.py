"""The base class of every source, the row it emits, and path helpers.

A source turns a configured location into rows (one per source image) with the columns in
:data:`COLUMNS`. :meth:`Source.list_refs` is cheap (no decoding) and deterministic; the runtime
splits the refs into fixed-size work units and calls :meth:`Source.read` on each. A source never
raises for bad data: an item it cannot read comes out as a row with ``status="rejected"`` and a
``reason``; only bad *settings* raise (listed by :meth:`Source.validate`).

Reject reasons shared by sources (each source's module lists its own):

- ``missing_file``: the file does not exist (or is a broken symlink).
- ``unreadable_file: <detail>``: the OS refused to read it.
- ``file_too_large: <n> bytes``: bigger than the source's ``max_file_bytes``.
- ``path_outside_root``: a relative path or symlink leads outside the configured root.
- ``not_a_regular_file``: a FIFO, device or socket (opening a FIFO would block the build forever).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from scone_data.imageio import MAX_DETAIL_CHARS
from scone_data.runtime import storage
from scone_data.stages.base import OK, REJECTED

# The columns of every source row, in this order (see the row contract in DESIGN.md / issue 2).
COLUMNS = (
    "uri",
    "source",
    "image_bytes",
    "image_id",
    "caption",
    "group_id",
    "license",
    "annotations",
    "status",
    "reason",
)

# Largest single file (image, caption, annotation member) a source reads into memory. A 40 MP
# image is well under 100 MiB even as TIFF; anything bigger is far more likely junk than data.
MAX_FILE_BYTES = 256 * 1024 * 1024

PKG_SCHEME = "pkg://"

# Deepest json nesting a source parses. COCO's deepest value (document > annotations > annotation >
# segmentation > polygon) is 5 levels; 64 is room for any real metadata and far below Python's
# recursion limit (1000), past which json.loads raises RecursionError and so would any code
# walking (pickling, copying, writing) the value.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[list(b"[{")], _BRACKET_STEP[list(b"]}")] = 1, -1


def resolve_path(p: str, base: str | None = None) -> str:
    """A config or data path -> a filesystem path.

    ``pkg://<package>/<relative path>`` resolves inside an importable package's directory
    (``pkg://skimage/data/astronaut.png``); anything else is a plain path (``~`` expanded), taken
    relative to ``base`` when given and relative (else to this process's directory).
    An object-store URI (``s3://bucket/key``, :mod:`scone_data.runtime.storage`) is returned as it is.
    Raises ValueError when the package cannot be found.
    """
    if storage.is_uri(p):
        return p
    if not p.startswith(PKG_SCHEME):
        q = os.path.expanduser(p)
        return os.path.join(base, q) if base and not os.path.isabs(q) else q
    rest = p[len(PKG_SCHEME) :]
    pkg, _, rel = rest.partition("/")
    if not pkg:
        raise ValueError(f"{p!r}: no package name after {PKG_SCHEME}")
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{p!r}: cannot import package {pkg!r} ({e})") from None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{p!r}: {pkg!r} is not an importable package")
    base = list(spec.submodule_search_locations)[0]
    return os.path.join(base, *rel.split("/")) if rel else base


def is_within(path: str, root: str) -> bool:
    """True when ``path`` (after resolving symlinks and ``..``) lies inside ``root``."""
    if storage.is_uri(path) or storage.is_uri(root):
        real, real_root = normpath(path), normpath(root).rstrip("/")
        return real == real_root or real.startswith(real_root + "/")
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def read_file_capped(path: str, max_bytes: int) -> tuple[bytes | None, str]:
    """Read a whole file: ``(data, "")`` or ``(None, reason)`` with a reason from the module docstring.
    ``path`` may be an object-store URI (an object is a regular file there)."""
    if storage.is_uri(path):
        return _read_object_capped(path, max_bytes)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer; the
        # type is then checked on the open descriptor, so a swap after a stat cannot slip through.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, "not_a_regular_file"
            if st.st_size > max_bytes:
                return None, f"file_too_large: {st.st_size} bytes"
            os.set_blocking(fd, True)
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None, "missing_file"
    except (OSError, ValueError) as e:  # ValueError: a NUL or lone surrogate in a json file_name
        return None, safe_text(f"unreadable_file: {type(e).__name__}: {e}"[:MAX_DETAIL_CHARS])
    if len(data) > max_bytes:  # grew while we read it
        return None, f"file_too_large: >{max_bytes} bytes"
    return data, ""


def file_identity(path: str) -> str:
    """``"<size>:<mtime_ns>"`` of the file at ``path`` (symlinks followed) or why there is none
    (``missing``, ``not_a_regular_file``): what the resume ledger compares to see that an input
    changed. Only a stat: the file is never opened. For an object-store URI: its size and
    Last-Modified from the store (to the second)."""
    if storage.is_uri(path):
        try:
            st = storage.path(path).stat()
        except OSError:
            return "missing"
        return f"{st.st_size}:{st.st_mtime_ns}"
    try:
        st = os.stat(path)
    except OSError:  # missing, a dangling symlink, a name the OS refuses
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}" if stat.S_ISREG(st.st_mode) else "not_a_regular_file"


def _read_object_capped(uri: str, max_bytes: int) -> tuple[bytes | None, str]:
    p = storage.path(uri)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            return None, f"file_too_large: {size} bytes"
        data = p.read_bytes()
    except FileNotFoundError:
        return None, "missing_file"
    except OSError as e:
        return None, safe_text(
            f"unreadable_file: {type(e).__name__}: {' '.join(str(e).split())}"[:MAX_DETAIL_CHARS]
        )
    if len(data) > max_bytes:  # grew while we read it
        return None, f"file_too_large: >{max_bytes} bytes"
    return data, ""


def abspath(p: str) -> str:
    """``os.path.abspath``, leaving an object-store URI as it is."""
    return p if storage.is_uri(p) else os.path.abspath(p)


def normpath(p: str) -> str:
    """``os.path.normpath``; on a URI only its key is normalised (``s3://b/a/../c`` -> ``s3://b/c``)."""
    if storage.is_uri(p):
        scheme, _, rest = p.partition("://")
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.normpath(p)


def isdir(p: str) -> bool:
    """``os.path.isdir``; for a URI, whether any object lies under that prefix."""
    return storage.path(p).is_dir() if storage.is_uri(p) else os.path.isdir(p)


def dir_of(pattern: str) -> str:
    """The folder a path or glob reads from: the part before its first wildcard, else the file's folder."""
    parts = pattern.split(os.sep)
    cut = next((i for i, p in enumerate(parts) if glob.has_magic(p)), None)
    folder = os.sep.join(parts[:cut]) if cut is not None else os.path.dirname(pattern)
    return os.path.abspath(folder or ".")


def safe_text(s: str) -> str:
    """``s`` as text that encodes to UTF-8: lone surrogates (undecodable name bytes, ``\\udXXX``
    json escapes) become backslash escapes. Records, parquet and json refuse them otherwise."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape" if _only_escaped(s) else "backslashreplace").decode(
            "utf-8", "backslashreplace"
        )
    return s


def _only_escaped(s: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in s)


def name_text(name: str) -> str:
    """A file or member name (undecodable bytes kept as surrogateescape, as ``os`` and ``tarfile``
    give them) -> valid UTF-8 text that :func:`name_from_text` maps back: such bytes become
    ``\\xNN`` and a literal backslash ``\\\\``. A name without either is itself."""
    if "\\" not in name and safe_text(name) is name:
        return name
    if not _only_escaped(name):  # not from the OS: no bytes to keep
        return safe_text(name)
    return os.fsencode(name).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_NAME_ESCAPE = re.compile(rb"\\\\|\\x([0-9a-f]{2})")


def name_from_text(text: str) -> str:
    """The OS name :func:`name_text` made ``text`` from."""
    if "\\" not in text:
        return text
    raw = _NAME_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]) if m[1] else b"\\", text.encode("utf-8"))
    return os.fsdecode(raw)


def json_depth(data: bytes) -> int:
    """How deep ``[`` and ``{`` nest in json text (brackets inside strings not counted).

    Linear and without recursion: strings dropped by one regex, every other byte but brackets by
    ``bytes.translate``, then a running sum (~1.5 s for 64 MB, a sixth of ``json.loads``)."""
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return data.count(b"[") + data.count(b"{")  # an upper bound, and small: nothing to scan
    brackets = _JSON_STRING.sub(b"", data).translate(None, delete=_NOT_BRACKETS)
    if not brackets:
        return 0
    return int(np.cumsum(_BRACKET_STEP[np.frombuffer(brackets, np.uint8)], dtype=np.int64).max())


def loads_json(data: bytes) -> Any:
    """``json.loads`` that refuses nesting deeper than :data:`MAX_JSON_DEPTH` with a ValueError
    (a one-line message) instead of a RecursionError; bad json and bad UTF-8 are ValueErrors too."""
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"json nested {depth} levels deep (limit {MAX_JSON_DEPTH})")
    try:
        return json.loads(data)
    except RecursionError:  # a deep stack at the caller; the check above makes this rare
        raise ValueError(f"json nested too deep to parse (limit {MAX_JSON_DEPTH})") from None


def make_row(uri: str, source: str, **values: Any) -> dict[str, Any]:
    """One row with every column of :data:`COLUMNS` (missing ones ``None``; status ok). Text
    values are made valid UTF-8 (:func:`safe_text`) so a hostile name never breaks a write."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown row columns: {sorted(unknown)}")
    row = dict.fromkeys(COLUMNS)
    row.update(uri=uri, source=source, status=OK, reason="")
    row.update(values)
    for k, v in row.items():
        if isinstance(v, str):
            row[k] = safe_text(v)
    return row


def rejected_row(uri: str, source: str, reason: str, **values: Any) -> dict[str, Any]:
    """A row that is already rejected with ``reason`` (``code`` or ``code: detail``), cut to
    ``imageio.MAX_DETAIL_CHARS`` (details quote file names and errors of any length)."""
    return make_row(uri, source, **values) | {"status": REJECTED, "reason": reason[:MAX_DETAIL_CHARS]}


def to_batch(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Rows -> a batch of equal-length columns, in :data:`COLUMNS` order."""
    return {c: [r[c] for r in rows] for c in COLUMNS}


def decode_text(data: bytes) -> str | None:
    """Caption bytes -> stripped text (UTF-8, BOM dropped, bad bytes replaced); ``None`` if empty."""
    text = data.decode("utf-8-sig", errors="replace").strip()
    return text or None


@dataclass(kw_only=True)
class Source:
    """Base class: subclasses add their settings as fields and implement the three methods."""

    type: ClassVar[str] = "source"
    name: str
    # The directory the source was made in (the driver's): relative paths in its settings are taken
    # relative to it wherever the source runs, since Ray workers on a cluster run in the directory
    # `ray start` ran in. Not a setting (init=False), so not part of the config hash either.
    cwd: str = field(default_factory=os.getcwd, init=False, repr=False, compare=False)

    def validate(self) -> list[str]:
        """Every problem with the settings, as messages naming the field; empty when fine."""
        problems = []
        if not isinstance(self.name, str) or not self.name.strip():
            problems.append(f"name: must be a non-empty string, got {self.name!r}")
        return problems

    def local_path(self, p: str) -> str:
        """A path setting of this source -> a filesystem path (see :func:`resolve_path`)."""
        return resolve_path(p, self.cwd)

    def list_refs(self) -> list[str]:
        """Every item of the source, in a deterministic order; no image is decoded."""
        raise NotImplementedError

    def read(self, refs: list[str]) -> dict[str, list]:
        """Rows for ``refs`` (in their order) as a batch with the columns of :data:`COLUMNS`."""
        raise NotImplementedError

    def inputs(self, refs: list[str]) -> list[dict[str, str]]:
        """Per ref, ``{path: identity}`` of every file its row is made from (the image, a caption
        sidecar, the annotation json, the parquet or tar holding it), identity as
        :func:`file_identity` gives it (a content hash instead where a source has one). The resume
        ledger records these with each unit, so a resume whose inputs changed is refused. No file
        is opened, so this stays cheap (one stat per file). Default: nothing known (never refused)."""
        return [{} for _ in refs]

    def input_folders(self) -> list[str]:
        """Absolute folders this source reads images from (a folder's root, a COCO ``image_root``,
        the folders of parquet files and tars): an output inside one would be read back as input
        by a rerun, so the build refuses it. Default: none."""
        return []

    def source_inputs(self) -> dict[str, str]:
        """``{path: identity}`` of the files :meth:`source_rejects` are made from. Default: none."""
        return {}

    def source_rejects(self) -> list[dict[str, Any]]:
        """Rejects tied to no ref (e.g. COCO annotations of unknown images), as reject records
        (``schemas/reject.v1.json``); the runtime writes them once per source. Default: none."""
        return []

    def read_all(self) -> dict[str, list]:
        """Every row of the source in one batch (small sources, tests)."""
        return self.read(self.list_refs())


def check_positive_int(problems: list[str], field: str, value: Any) -> None:
    """Append a message naming ``field`` unless ``value`` is an int >= 1 (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{field}: must be an integer >= 1, got {value!r}")


def check_optional_str(problems: list[str], field: str, value: Any) -> None:
    """Append a message naming ``field`` unless ``value`` is ``None`` or a non-empty string."""
    if value is not None and (not isinstance(value, str) or not value):
        problems.append(f"{field}: must be a non-empty string or null, got {value!r}")


def expand_paths(paths: str | list[str], base: str | None = None) -> tuple[list[str], list[str]]:
    """``(files, problems)``: the files one path/glob (or a list of them) names, sorted per pattern,
    without repeats; a pattern that matches nothing is a problem naming the ``paths`` setting.
    Relative patterns are taken relative to ``base`` (see :func:`resolve_path`)."""
    pats = [paths] if isinstance(paths, str) else list(paths)
    out: list[str] = []
    problems: list[str] = []
    for pat in pats:
        try:
            p = resolve_path(pat, base)
        except ValueError as e:
            problems.append(f"paths: {e}")
            continue
        found = (
            sorted(glob.glob(p))
            if glob.has_magic(p)
            else ([p] if os.path.isfile(p) or _is_special(p) else [])
        )
        if not found:
            problems.append(f"paths: {pat!r} matches no file")
        special = [f for f in found if _is_special(f)]
        if special:  # opening a FIFO would block the run forever; a device may never end
            problems.append(f"paths: {pat!r}: not_a_regular_file: {', '.join(special)}")
            found = [f for f in found if f not in special]
        out.extend(f for f in found if f not in out)
    return out, problems


def _is_special(path: str) -> bool:
    """True for a FIFO, device or socket (symlinks followed); False for files, folders, missing."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_paths(problems: list[str], paths: Any) -> bool:
    """Append a message unless ``paths`` is a non-empty string or list of them; True when fine."""
    ok = (isinstance(paths, str) and bool(paths)) or (
        isinstance(paths, list) and bool(paths) and all(isinstance(p, str) and p for p in paths)
    )
    if not ok:
        problems.append(f"paths: must be a path/glob or a non-empty list of them, got {paths!r}")
    return ok
