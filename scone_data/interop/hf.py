"""Hugging Face ``datasets`` reading our shards: ``load_dataset("webdataset", ..., features=hf_features())``.

``datasets``' WebDataset builder infers its schema from the first 5 samples of the first tar and
refuses samples whose member sets differ, so a plain ``load_dataset("webdataset", data_files=...)``
fails on our shards: a one-reference sample has no ``ref1.jpg``, and a composition sample's
``expression`` is null where a distinction sample's is a string. Passing explicit features fixes
both: missing members become ``None`` and every json field has one type. The features are derived
from ``schemas/sample.v1.json``; free-form objects (``references[].augment``) are left out, since
their keys vary per sample (read them from the tar's json if needed).

``datasets`` is optional: it is imported only here, with an actionable message when missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scone_data import schemas
from scone_data.interop.reader import shard_paths
from scone_data.pairs.config import MAX_REFERENCES

# Members ref0.jpg .. ref{N-1}.jpg get an Image column; as many as the pair builder makes at most.
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


def hf_features(max_references: int = DEFAULT_MAX_REFERENCES):
    """``datasets.Features`` of our WebDataset samples: ``__key__``, ``__url__``, ``json`` (a struct),
    ``target.jpg`` and ``ref0.jpg`` .. ``ref{max_references-1}.jpg`` (``datasets.Image``)."""
    ds = _datasets()
    feats = {
        "__key__": ds.Value("string"),
        "__url__": ds.Value("string"),
        "json": _feature(schemas.json_schema("sample")),
        "target.jpg": ds.Image(),
    }
    feats.update({f"ref{i}.jpg": ds.Image() for i in range(max_references)})
    return ds.Features(feats)


def load_hf(output: str | Path, max_references: int = DEFAULT_MAX_REFERENCES, **kwargs):
    """A ``DatasetDict`` with one split per shard-name prefix (``train``, ``val``) of ``output``."""
    ds = _datasets()
    files: dict[str, list[str]] = {}
    for tar in shard_paths(output):
        files.setdefault(tar.stem.rsplit("-", 1)[0], []).append(str(tar))
    return ds.load_dataset("webdataset", data_files=files, features=hf_features(max_references), **kwargs)
