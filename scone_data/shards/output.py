"""One output folder of ours (a build, regen or import), in one place: its paths, its manifest, the
names of its shards and the samples in them.

Layout::

    OUTPUT/bank/              the subject bank (builds only)
    OUTPUT/shards/            {split}-{index:05d}.tar, .parquet (index), .stats.json
    OUTPUT/ledger/            completion markers (builds and regens)
    OUTPUT/rejects.parquet    every input, subject and row that was not used, and why
    OUTPUT/dataset_card.md
    OUTPUT/manifest.json      written last: its presence means the output is complete

The manifest's shard list is the output's list of shards: readers (export, inspect, the trainer) go
by it, never by a glob, so a stray tar in ``shards/`` is not read (``validate`` reports it).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scone_data import schemas
from scone_data.runtime import storage
from scone_data.shards.files import write_json

MANIFEST = "manifest.json"
REJECTS = "rejects.parquet"
CARD = "dataset_card.md"
SHARD_EXTS = (".tar", ".parquet", ".stats.json")  # a shard's three files


class ManifestError(ValueError):
    """``manifest.json`` is missing (``missing``) or not a scone-data manifest; ``str()`` is one line
    naming the file. ``error`` is what reading it raised (None when missing)."""

    def __init__(self, path: Path, why: str = "", missing: bool = False, error: Exception | None = None):
        self.path, self.why, self.missing, self.error = storage.path(path), why, missing, error
        if missing:
            text = f"{self.path.parent}: no {MANIFEST} (not a scone-data output, or the run did not finish)"
        else:
            text = f"{self.path} is not a scone-data manifest ({why})"
        super().__init__(text)


class ShardError(ValueError):
    """A shard tar that cannot be read (torn, corrupt, a bad member json): ``path`` and ``error``."""

    def __init__(self, path: Path, error: Exception):
        self.path, self.error = storage.path(path), error
        super().__init__(f"{path}: {' '.join(str(error).split())[:200] or type(error).__name__}")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


class Output:
    """The output folder ``root`` (a path or an object-store URI, see :mod:`scone_data.runtime.storage`);
    cheap to make (nothing is read until asked)."""

    def __init__(self, root: str | Path):
        self.root = storage.path(root)
        self.bank = self.root / "bank"
        self.shard_dir = self.root / "shards"
        self.ledger = self.root / "ledger"
        self.manifest_path = self.root / MANIFEST
        self.rejects = self.root / REJECTS
        self.card = self.root / CARD

    def __repr__(self) -> str:
        return f"Output({str(self.root)!r})"

    # -- shard names --------------------------------------------------------------------------
    @staticmethod
    def shard_name(split: str, index: int) -> str:
        """``train``, 3 -> ``train-00003``: zero-padded, so names sort in index order."""
        return f"{split}-{index:05d}"

    @staticmethod
    def parse_shard_name(name: str) -> tuple[str, int]:
        """``train-00003`` -> (``train``, 3); ValueError for a name :meth:`shard_name` does not make."""
        split, sep, index = name.rpartition("-")
        if not (split and sep and index.isdigit() and len(index) >= 5):
            raise ValueError(f"{name!r} is not a shard name (<split>-<index, 5 digits>)")
        return split, int(index)

    @staticmethod
    def split_of(name: str) -> str:
        """The split a shard name belongs to (the text before its first ``-``)."""
        return name.split("-")[0]

    def shard_path(self, name: str, ext: str = ".tar") -> Path:
        """``shards/{name}{ext}``, ``ext`` one of :data:`SHARD_EXTS`."""
        return self.shard_dir / f"{name}{ext}"

    # -- manifest -----------------------------------------------------------------------------
    def has_manifest(self) -> bool:
        return self.manifest_path.exists()

    def read_manifest(self, validate: bool = True) -> Any:
        """The parsed manifest. :class:`ManifestError` when it is missing, is not JSON, or (``validate``)
        does not match the manifest schema; without ``validate`` nothing is checked past the JSON
        (callers reading partial or older manifests check the keys they use)."""
        p = self.manifest_path
        if not p.exists():
            raise ManifestError(p, missing=True)
        try:
            manifest = json.loads(p.read_bytes())
            if validate:
                schemas.validate("manifest", manifest)
        except ValueError as e:  # bad JSON, bad UTF-8 and schemas.SchemaError are all ValueErrors
            raise ManifestError(p, _one_line(e), error=e) from None
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Check ``manifest`` against its schema and publish it atomically (temporary + os.replace).
        Write it last: its presence says the whole output is complete."""
        schemas.validate("manifest", manifest)
        write_json(self.manifest_path, manifest)

    # -- shards and samples -------------------------------------------------------------------
    def shard_names(self, split: str | None = None, manifest: dict[str, Any] | None = None) -> list[str]:
        """Names of the shards the manifest lists (of ``split``, if given), in its order."""
        manifest = manifest if manifest is not None else self.read_manifest()
        names = [e["name"] for e in manifest["shards"]]
        return [n for n in names if split is None or self.split_of(n) == split]

    def shards(self, split: str | None = None, manifest: dict[str, Any] | None = None) -> list[Path]:
        """The tars the manifest lists (of ``split``, if given), in its order; never a glob."""
        return [self.shard_path(n) for n in self.shard_names(split, manifest)]

    def iter_samples(
        self,
        split: str | None = None,
        want_images: bool | Callable[[dict[str, Any]], bool] = True,
        manifest: dict[str, Any] | None = None,
        upgrade: bool = True,
    ) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
        """``(record, members)`` of every sample (of ``split``, if given) in manifest and tar order.

        ``members`` maps ``ref0.jpg`` ... ``target.jpg`` to encoded bytes; it is empty where
        ``want_images`` is (or returns) False, and those images are seeked over, not read. Records
        of an older sample schema come in the current version unless ``upgrade`` is False. A tar
        that cannot be read raises :class:`ShardError`; a missing one, FileNotFoundError."""
        for tar in self.shards(split, manifest):
            try:
                for rec, members in iter_tar(tar, split, want_images):
                    yield (schemas.upgrade("sample", rec) if upgrade else rec), members
            except (tarfile.TarError, EOFError, ValueError, KeyError) as e:
                raise ShardError(tar, e) from None

    @classmethod
    def of_dataset(cls, path: str | Path) -> Output | None:
        """The output a dataset path names: the folder itself, or the folder above its ``shards/``;
        None for a plain folder of tars (no manifest, no ledger of ours)."""
        p = storage.path(path)
        for root in (p, p.parent) if p.name == "shards" else (p,):
            out = cls(root)
            if out.has_manifest() or out.ledger.is_dir():  # a ledger without a manifest: unfinished
                return out
        return None


def iter_tar(
    tar_path: str | Path,
    split: str | None = None,
    want_images: bool | Callable[[dict[str, Any]], bool] = True,
) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
    """``(record, members)`` of each sample of one shard tar, in order (see :meth:`Output.iter_samples`).

    A sample's members are sorted in the tar (``json`` < ``ref*`` < ``target``), so its record is
    seen first and decides whether its images are read at all."""
    if storage.is_remote(tar_path):
        with storage.open_input(tar_path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            yield from _tar_samples(tf, split, want_images)
        return
    with tarfile.open(tar_path, "r:") as tf:
        yield from _tar_samples(tf, split, want_images)


def _tar_samples(tf: tarfile.TarFile, split: str | None, want_images) -> Iterator:
    rec: dict[str, Any] | None = None
    keep = False
    members: dict[str, bytes] = {}
    key = None
    for m in tf:
        k, _, ext = m.name.partition(".")
        if k != key:
            if rec is not None and (split is None or rec["split"] == split):
                yield rec, members
            key, rec, members, keep = k, None, {}, False
        if ext == "json":
            rec = json.loads(tf.extractfile(m).read())
            keep = split is None or rec["split"] == split
            keep = keep and (want_images(rec) if callable(want_images) else bool(want_images))
        elif keep:
            members[ext] = tf.extractfile(m).read()
    if rec is not None and (split is None or rec["split"] == split):
        yield rec, members
