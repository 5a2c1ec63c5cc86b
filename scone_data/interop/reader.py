"""Read an output directory's samples back, shard by shard in manifest order, without webdataset.

A sample is ``(record, members)``: the parsed ``{key}.json`` and a dict of its other members
(``ref0.jpg`` ... ``target.jpg`` -> encoded bytes). Members of a sample are sorted in the tar
(``json`` < ``ref*`` < ``target``), so the json is seen first and a caller can decide per record
whether the image bytes are read at all (``want_images``): statistics over a large output then only
read the small json members and seek past the JPEGs. The reading is
:class:`scone_data.shards.output.Output`'s; this module gives its errors the interop commands'
wording and exit codes (:class:`InteropError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data.runtime import storage
from scone_data.shards.output import ManifestError, Output, ShardError


class InteropError(Exception):
    """A command cannot run: ``code`` 1 (input missing or unusable) or 2 (bad settings, nothing run)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@contextmanager
def claim_folder(folder: Path, command: str, **kw: Any) -> Iterator[Path]:
    """:func:`scone_data.runtime.outdir.claim` (``kw`` passed on) for export and import, its
    refusals raised as :class:`InteropError` with the same exit code."""
    from scone_data.runtime.outdir import OutputError, claim

    try:
        with claim(folder, command, **kw) as d:
            yield d
    except OutputError as e:
        raise InteropError(str(e), code=e.code) from None


def load_manifest(output: str | Path) -> dict[str, Any]:
    """The manifest of ``output`` (:meth:`Output.read_manifest`, not schema-checked: a shard list is
    all the readers need); :class:`InteropError` 1 when missing, 2 when unusable."""
    try:
        manifest = Output(output).read_manifest(validate=False)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
            raise ManifestError(Output(output).manifest_path, "no shard list")
    except ManifestError as e:
        if e.missing:
            raise InteropError(
                f"{output}: no manifest.json (not a scone-data output, or the run did not finish)"
            ) from None
        raise InteropError(str(e), code=2) from None
    return manifest


def _corrupt(path: Path, e: Exception) -> InteropError:
    """A shard or index that cannot be read: one line naming it (exit code 2)."""
    why = " ".join(str(e).split())[:200] or type(e).__name__
    return InteropError(
        f"{path}: truncated or corrupt ({why}); `scone-data validate {path.parent.parent}` lists every problem",
        code=2,
    )


def shard_paths(output: str | Path, manifest: dict[str, Any] | None = None) -> list[Path]:
    """The tars the manifest lists, in its order."""
    return Output(output).shards(manifest=manifest or load_manifest(output))


def count_samples(
    output: str | Path, split: str | None = None, manifest: dict[str, Any] | None = None
) -> int:
    """Samples of ``split`` (None: all), from the shards' parquet indexes (no tar is read)."""
    n = 0
    for tar in shard_paths(output, manifest):
        idx = tar.with_suffix(".parquet")
        try:
            if split is None:
                n += pq.ParquetFile(storage.parquet_source(idx)).metadata.num_rows
            else:
                n += sum(
                    1
                    for s in pq.read_table(storage.parquet_source(idx), columns=["split"])
                    .column("split")
                    .to_pylist()
                    if s == split
                )
        except (pa.ArrowException, KeyError) as e:  # pyarrow's FileNotFoundError passes as an OSError
            raise _corrupt(idx, e) from None
    return n


def task_counts(
    output: str | Path, split: str | None = None, manifest: dict[str, Any] | None = None
) -> dict[str, int]:
    """Samples per task of ``split`` (None: all), from the shards' parquet indexes (no tar is read)."""
    out: dict[str, int] = {}
    for tar in shard_paths(output, manifest):
        idx = tar.with_suffix(".parquet")
        try:
            t = pq.read_table(storage.parquet_source(idx), columns=["task", "split"]).to_pydict()
        except (pa.ArrowException, KeyError) as e:
            raise _corrupt(idx, e) from None
        for task, s in zip(t["task"], t["split"]):
            if split is None or s == split:
                out[task] = out.get(task, 0) + 1
    return out


def iter_samples(
    output: str | Path,
    split: str | None = None,
    want_images: bool | Callable[[dict[str, Any]], bool] = True,
    manifest: dict[str, Any] | None = None,
    upgrade: bool = True,
) -> Iterator[tuple[dict[str, Any], dict[str, bytes]]]:
    """Yield ``(record, members)`` of every sample (of ``split``, if given) in manifest/tar order
    (:meth:`Output.iter_samples`; a shard that cannot be read is an :class:`InteropError` 2).

    ``members`` is empty for records where ``want_images`` is (or returns) False. Records of an older
    sample schema (v1 shards) come in the current version unless ``upgrade`` is False.
    """
    manifest = manifest or load_manifest(output)
    try:
        yield from Output(output).iter_samples(split, want_images, manifest=manifest, upgrade=upgrade)
    except ShardError as e:  # torn tar, bad member json
        raise _corrupt(e.path, e.error) from None
