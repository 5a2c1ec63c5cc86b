"""Sources: readers that turn image folders, parquet files, COCO jsons and WebDataset tars into rows.

Every source emits rows with the columns of :data:`scone_data.sources.base.COLUMNS` and never
raises for bad data (a reject row with a reason instead). Build one from a config dict with
:func:`make_source`, e.g. ``{"type": "folder", "name": "photos", "root": "data/photos"}``.

Every row reject reason a source can emit (details after ``: `` where the module says so):
all: ``missing_file``, ``unreadable_file``, ``file_too_large``, ``path_outside_root``,
``not_a_regular_file``;
folder: ``unsupported_extension``, ``symlink_outside_root``, ``symlinked_dir``, ``bad_caption``;
parquet: ``missing_image``, ``empty_file``, ``missing_path``, ``bad_ref``;
coco: ``bad_image_entry``, ``duplicate_image_id``, ``bad_ref`` (and, from
``CocoSource.orphan_annotations()``, ``unknown_image_id``, ``unknown_category``, ``bad_annotation``);
webdataset: ``unsafe_path``, ``link_member``, ``special_member``, ``member_too_large``,
``duplicate_member``, ``no_image``, ``bad_json``, ``truncated_tar``, ``unreadable_tar``, ``bad_ref``.
Decoding adds its own (see :mod:`scone_data.stages.decode`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scone_data.sources.base import COLUMNS, Source, resolve_path
from scone_data.sources.coco import CocoSource
from scone_data.sources.folder import FolderSource
from scone_data.sources.parquet import ParquetSource
from scone_data.sources.wds import WebDatasetSource

SOURCE_TYPES: dict[str, type[Source]] = {
    cls.type: cls for cls in (FolderSource, ParquetSource, CocoSource, WebDatasetSource)
}


def make_source(cfg: dict[str, Any], check: bool = True) -> Source:
    """A source from its config: ``type`` picks the class, the other keys are its settings.

    Raises ValueError listing every problem at once: not a dict, unknown or missing ``type``,
    unknown keys, missing required keys, and (with ``check``) everything ``validate()`` finds,
    which may touch the filesystem (folder exists, parquet columns and types, json parses).
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"source config must be a mapping, got {type(cfg).__name__}")
    label = f"source {cfg.get('name')!r}" if "name" in cfg else "source"
    kind = cfg.get("type")
    cls = SOURCE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"{label}: type: must be one of {', '.join(SOURCE_TYPES)}, got {kind!r}")
    settings = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems = [f"{k}: unknown setting for type {kind!r} (known: {', '.join(settings)})"
                for k in cfg if k != "type" and k not in settings]  # fmt: skip
    problems += [
        f"{name}: required for type {kind!r}"
        for name, f in settings.items()
        if name not in cfg and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if problems:
        raise ValueError(f"{label}: " + "; ".join(problems))
    src = cls(**{k: v for k, v in cfg.items() if k != "type"})
    if check:
        problems = src.validate()
        if problems:
            raise ValueError(f"{label}: " + "; ".join(problems))
    return src


__all__ = [
    "COLUMNS",
    "SOURCE_TYPES",
    "CocoSource",
    "FolderSource",
    "ParquetSource",
    "Source",
    "WebDatasetSource",
    "make_source",
    "resolve_path",
]
