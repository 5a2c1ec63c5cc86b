"""Paths that may be URIs: a local path stays a :class:`pathlib.Path`; ``s3://``, ``gs://`` (any
scheme pyarrow.fs opens) becomes a :class:`StorePath`, which offers the few pathlib operations the
project uses (``/``, ``name``, ``parent``, ``exists``, ``is_dir``, ``iterdir``, ``glob``,
``read_bytes``, ``write_bytes``, ``unlink``, ``stat``) on a :class:`pyarrow.fs.FileSystem`.

So on a local disk nothing changes (the same Path objects, temp + ``os.replace`` publishing, fsync,
locks); on an object store a writer PUTs the final object name directly (a PUT is atomic: the object
appears whole or not at all), the ledger marker is written after its part or shard and the manifest
last, and readers go by the ledger and the manifest.

S3 is configured from the standard environment variables, read when a bucket is first opened in a
process (Ray workers inherit the driver's environment): ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:9000`` for MinIO or moto; the scheme picks http or
https), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``
(or ``AWS_DEFAULT_REGION``). Other schemes (``gs://``, ``hdfs://``) are opened with
:meth:`pyarrow.fs.FileSystem.from_uri` and its own defaults.
"""

from __future__ import annotations

import fnmatch
import io
import os
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pyarrow.fs as pafs

FILE_SCHEME = "file://"
# what configures S3 here: forwarded to Ray's workers (runtime/executor.py), which on other nodes do
# not inherit the driver's environment
ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
READ_BUFFER = 4 << 20  # bytes per ranged GET when a file is read sequentially (tars)
_FS: dict[tuple[str, int], pafs.FileSystem] = {}  # (scheme, pid) -> filesystem, one per process


def is_uri(p: object) -> bool:
    """True for ``scheme://...`` other than ``file://`` and ``pkg://`` (those are local paths)."""
    s = str(p)
    scheme, sep, _ = s.partition("://")
    return bool(sep) and scheme.isalnum() and scheme not in ("file", "pkg") and len(scheme) > 1


def is_remote(p: object) -> bool:
    return isinstance(p, StorePath) or (isinstance(p, str) and is_uri(p))


def path(p: str | os.PathLike | StorePath) -> Path | StorePath:
    """``p`` as a :class:`Path` (plain paths and ``file://``) or a :class:`StorePath` (other URIs)."""
    if isinstance(p, StorePath | Path):
        return p
    s = os.fspath(p) if not isinstance(p, str) else p
    if is_uri(s):
        scheme, _, rest = s.partition("://")
        return StorePath(scheme, rest.strip("/"))
    return Path(s.removeprefix(FILE_SCHEME))


def _s3() -> pafs.S3FileSystem:
    env = os.environ.get
    kw: dict[str, Any] = {}
    endpoint = env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        kw["endpoint_override"] = host.rstrip("/") if sep else endpoint
        kw["scheme"] = scheme if sep else "https"
    if env("AWS_ACCESS_KEY_ID"):
        kw.update(access_key=env("AWS_ACCESS_KEY_ID"), secret_key=env("AWS_SECRET_ACCESS_KEY"))
        if env("AWS_SESSION_TOKEN"):
            kw["session_token"] = env("AWS_SESSION_TOKEN")
    region = env("AWS_REGION") or env("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def filesystem(scheme: str) -> pafs.FileSystem:
    """The filesystem for ``scheme`` (``s3``: from the environment, see the module docstring)."""
    key = (scheme, os.getpid())  # never share one across a fork
    if key not in _FS:
        _FS[key] = _s3() if scheme == "s3" else pafs.FileSystem.from_uri(f"{scheme}://")[0]
    return _FS[key]


def env_vars() -> dict[str, str]:
    """The :data:`ENV_VARS` set in this process."""
    return {k: os.environ[k] for k in ENV_VARS if os.environ.get(k)}


def reset() -> None:
    """Forget the opened filesystems (tests that change the environment between builds)."""
    _FS.clear()


class StorePath:
    """An object-store path ``scheme://bucket/key`` with a pathlib-like surface. Directories are key
    prefixes: ``mkdir`` does nothing, ``is_dir`` is true when any object lies under the prefix."""

    __slots__ = ("scheme", "key", "_listed")

    def __init__(self, scheme: str, key: str, listed: pafs.FileInfo | None = None):
        self.scheme, self.key = scheme, key.strip("/")
        # what the listing that found this path said of it (iterdir, walk_files): saves one request
        # per object when a caller asks is_file or stat of each object it just listed
        self._listed = listed

    # -- names ---------------------------------------------------------------------------------
    @property
    def fs(self) -> pafs.FileSystem:
        return filesystem(self.scheme)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and (self.scheme, self.key) == (other.scheme, other.key)

    def __hash__(self) -> int:
        return hash((self.scheme, self.key))

    def __lt__(self, other: StorePath) -> bool:
        return (self.scheme, self.key) < (other.scheme, other.key)

    def __truediv__(self, name: str) -> StorePath:
        return StorePath(self.scheme, f"{self.key}/{str(name).strip('/')}")

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def parent(self) -> StorePath:
        return StorePath(self.scheme, str(PurePosixPath(self.key).parent))

    @property
    def parents(self) -> list[StorePath]:
        return [StorePath(self.scheme, str(p)) for p in PurePosixPath(self.key).parents if str(p) != "."]

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.key).parts

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> StorePath:
        return StorePath(self.scheme, str(PurePosixPath(self.key).with_suffix(suffix)))

    def relative_to(self, other: StorePath) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(other.key)

    def absolute(self) -> StorePath:
        return self

    resolve = absolute

    def expanduser(self) -> StorePath:
        return self

    # -- queries -------------------------------------------------------------------------------
    def info(self) -> pafs.FileInfo:
        return self._listed if self._listed is not None else self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def is_symlink(self) -> bool:
        return False

    def stat(self) -> SimpleNamespace:
        """``st_size`` and ``st_mtime_ns`` (0 where the store gives no time); FileNotFoundError."""
        info = self.info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(2, "No such object", str(self))
        return SimpleNamespace(st_size=info.size or 0, st_mtime_ns=info.mtime_ns or 0)

    def _listing(self, recursive: bool = False) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(self.key, allow_not_found=True, recursive=recursive)
        return sorted(self.fs.get_file_info(sel), key=lambda i: i.path)

    def iterdir(self):
        for i in self._listing():
            yield StorePath(self.scheme, i.path, i)

    def walk_files(self) -> list[tuple[StorePath, pafs.FileInfo]]:
        """Every object under this prefix (recursively), sorted by key, with its FileInfo."""
        return [
            (StorePath(self.scheme, i.path, i), i)
            for i in self._listing(True)
            if i.type == pafs.FileType.File
        ]

    def glob(self, pattern: str):
        """Direct children whose name matches ``pattern`` (no ``/`` or ``**`` in it)."""
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    def rglob(self, pattern: str):
        return (p for p, _ in self.walk_files() if fnmatch.fnmatchcase(p.name, pattern))

    # -- reading and writing -------------------------------------------------------------------
    def open_input(self):
        """A seekable binary file (``pyarrow.NativeFile``): parquet, tarfile and ``read()`` take it."""
        try:
            return self.fs.open_input_file(self.key)
        except FileNotFoundError:
            raise
        except OSError as e:
            if "not exist" in str(e).lower() or "404" in str(e) or "nosuchkey" in str(e).lower():
                raise FileNotFoundError(2, "No such object", str(self)) from None
            raise

    def read_bytes(self) -> bytes:
        with self.open_input() as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """One PUT of the whole object: it appears whole or not at all."""
        self._listed = None
        with self.fs.open_output_stream(self.key) as f:
            f.write(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: an object store has no folders (a key's prefix is one)."""

    def unlink(self, missing_ok: bool = False) -> None:
        self._listed = None
        try:
            self.fs.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def delete_tree(self) -> None:
        """Delete every object under this prefix."""
        for p, _ in self.walk_files():
            p.unlink(missing_ok=True)


def open_input(p: str | os.PathLike | StorePath):
    """A readable, seekable binary file for ``p`` (local: ``open(p, "rb")``). On an object store it is
    buffered (:data:`READ_BUFFER` bytes per ranged GET): tarfile reads a member header at a time, and
    unbuffered each read would be one request."""
    q = path(p)
    if isinstance(q, StorePath):
        return io.BufferedReader(q.open_input(), READ_BUFFER)
    return open(q, "rb")  # noqa: SIM115 - the caller closes


def parquet_source(p: str | os.PathLike | StorePath):
    """What pyarrow.parquet's readers take for ``p``: the path itself on a local disk (unchanged
    behaviour), an opened input file on an object store."""
    q = path(p)
    return q.open_input() if isinstance(q, StorePath) else p
