"""Hugging Face ``datasets`` reading our shards: ``load_dataset("webdataset", ..., features=hf_features(OUT))``.

``datasets``' WebDataset builder infers its schema from the first 5 samples of the first tar and
refuses samples whose member sets differ, so a plain ``load_dataset("webdataset", data_files=...)``
fails on our shards: a one-reference sample has no ``ref1.jpg``, and a composition sample's
``expression`` is null where a distinction sample's is a string. Passing explicit features fixes
both: missing members become ``None`` and every json field has one type. The features are derived
from ``schemas/sample.v2.json`` (v1 for an output of v1 shards); free-form objects (``references[].augment``) are left out, since
their keys vary per sample (read them from the tar's json if needed). ``hf_features(OUT)`` has one
image column per reference of the output's largest sample: ``datasets`` drops a member without a
feature silently.

``datasets`` is optional: it is imported only here, with an actionable message when missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from scone_data import schemas
from scone_data.interop.reader import iter_samples, shard_paths
from scone_data.pairs.config import MAX_REFERENCES

# Members ref0.jpg .. ref{N-1}.jpg get an Image column; as many as the pair builder makes at most.
# An output's own count (hf_features(output)) is what to use: datasets silently drops a member that
# has no feature, so a 4th reference would vanish under the default.
DEFAULT_MAX_REFERENCES = MAX_REFERENCES


def _datasets():
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - exercised only without the optional package
        raise ImportError("install `datasets` to read scone-data shards with Hugging Face datasets") from e
    return datasets


def _feature(node: dict[str, Any]):
    ds = _datasets()
    t = node.get("type")
    if isinstance(t, list):
        t = next(x for x in t if x != "null")
    if t == "object":
        props = node.get("properties")
        if not props:
            return None
        out = {k: f for k, v in props.items() if (f := _feature(v)) is not None}
        return out
    if t == "array":
        return ds.List(_feature(node["items"]))
    return ds.Value({"string": "string", "number": "float64", "integer": "int64", "boolean": "bool"}[t])


def references_per_sample(output: str | Path) -> int:
    """The most references any sample of ``output`` has (from the shards' parquet indexes)."""
    return max(
        (max(pq.read_table(t.with_suffix(".parquet"), columns=["num_references"])[0].to_pylist(), default=0)
         for t in shard_paths(output)),
        default=0,
    )  # fmt: skip


def hf_features(source: int | str | Path = DEFAULT_MAX_REFERENCES):
    """``datasets.Features`` of our WebDataset samples: ``__key__``, ``__url__``, ``json`` (a struct),
    ``target.jpg`` and ``ref0.jpg`` .. ``ref{N-1}.jpg`` (``datasets.Image``), where N is ``source``
    when it is a number, else the most references a sample of output folder ``source`` has. The json
    struct follows the current sample schema, or an output's own (v1 shards read as they are)."""
    version = None
    if isinstance(source, int):
        n = source
    else:
        n = references_per_sample(source)
        first = next(iter_samples(source, want_images=False, upgrade=False), None)
        version = first[0]["schema_version"] if first else None
    ds = _datasets()
    feats = {
        "__key__": ds.Value("string"),
        "__url__": ds.Value("string"),
        "json": _feature(schemas.json_schema("sample", version)),
        "target.jpg": ds.Image(),
    }
    feats.update({f"ref{i}.jpg": ds.Image() for i in range(n)})
    return ds.Features(feats)


def load_hf(output: str | Path, max_references: int | None = None, **kwargs):
    """A ``DatasetDict`` with one split per shard-name prefix (``train``, ``val``) of ``output``.

    ``max_references`` (default: the output's own maximum) smaller than a sample's references is
    refused: ``datasets`` would drop the extra images without a word."""
    ds = _datasets()
    need = references_per_sample(output)
    if max_references is not None and max_references < need:
        raise ValueError(
            f"{output} has samples with {need} references; max_references={max_references} drops some"
        )
    files: dict[str, list[str]] = {}
    for tar in shard_paths(output):
        files.setdefault(tar.stem.rsplit("-", 1)[0], []).append(str(tar))
    features = hf_features(max_references or need)
    return ds.load_dataset("webdataset", data_files=files, features=features, **kwargs)
