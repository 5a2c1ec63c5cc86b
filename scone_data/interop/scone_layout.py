"""How a Scone parquet export is cut into files and row groups, and what a Scone user pastes in.

Scone trains through BAGEL's ``ParquetStandardIterableDataset``. Its work units are ``(file, row
group)`` pairs: the group's YAML ``num_used_data`` picks that many files from ``data_dir`` (cycling
through the listing when it is larger than the number of files), every row group of every picked
file becomes a unit, then each rank takes ``units // world_size`` consecutive units and each data
worker ``units_per_rank // num_workers`` of those. Units past those floors are never read, and a
worker with none loops forever printing "repeat" (a one-row-group export on 8 GPUs x 3 workers).

So :func:`plan_layout` makes the number of units an exact multiple of ``world_size x workers``:

- a corpus of at least that many samples gets ``k x world_size x workers`` row groups of nearly equal
  size (each at most ``max_rows_per_group``), packed in order into files of at most
  ``max_rows_per_file`` rows; ``num_used_data`` is the number of files;
- a smaller corpus (fewer samples than that multiple needs) gets one file per sample, one row group
  each, and ``num_used_data`` = the next multiple of ``world_size x workers``: the loader's own
  cycling repeats some files so that every worker of every rank has as many units and every sample is
  read.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass

# Scone's released scripts: 8 GPUs per node, 3 data workers per rank (``--num_workers``).
DEFAULT_WORLD_SIZE = 8
DEFAULT_WORKERS = 3
# The transforms of all three of Scone's data/configs/*.yaml (VAE side, then ViT side).
IMAGE_TRANSFORM = {"image_stride": 16, "max_image_size": 1024, "min_image_size": 512}
VIT_IMAGE_TRANSFORM = {"image_stride": 14, "max_image_size": 518, "min_image_size": 224}


@dataclass(frozen=True)
class Layout:
    """Row counts per row group, per file (``files[i][j]``), and the YAML's ``num_used_data``."""

    files: tuple[tuple[int, ...], ...]
    num_used_data: int

    @property
    def row_groups(self) -> int:
        return sum(len(f) for f in self.files)

    def units(self) -> int:
        """``(file, row group)`` units the Scone loader builds from ``num_used_data`` files."""
        n = len(self.files)
        return sum(len(self.files[i % n]) for i in range(self.num_used_data))


def plan_layout(
    total: int, world_size: int, workers: int, max_rows_per_group: int, max_rows_per_file: int
) -> Layout:
    """The files and row groups of ``total`` samples for ``world_size`` ranks x ``workers`` workers."""
    slots = world_size * workers
    groups = slots * math.ceil(total / (slots * max_rows_per_group))
    if groups > total:  # fewer samples than slots (or than a multiple of them at this group size)
        return Layout(tuple((1,) for _ in range(total)), slots * math.ceil(total / slots))
    sizes = [total // groups + (1 if i < total % groups else 0) for i in range(groups)]
    files: list[list[int]] = [[]]
    for s in sizes:
        if files[-1] and sum(files[-1]) + s > max_rows_per_file:
            files.append([])
        files[-1].append(s)
    return Layout(tuple(tuple(f) for f in files), len(files))


def scone_paths(root: str, name: str) -> tuple[str, str]:
    """``(data_dir, parquet_info_path)`` of export ``name`` when the training job sees the export
    folder at ``root`` (a local path or a URI such as ``hdfs://...``). ``root`` may also be given as
    the parquet folder itself (``.../parquet_data/NAME``), Scone's own ``data_dir``."""
    root = root.rstrip("/") or "/"
    if root.endswith(f"/parquet_data/{name}"):
        root = root[: -len(f"/parquet_data/{name}")] or "/"
    return posixpath.join(root, "parquet_data", name), posixpath.join(root, "parquet_info", f"{name}.json")


def dataset_info_entry(name: str, data_dir: str, num_files: int, samples: int, info_path: str) -> str:
    """The entry a Scone user adds under ``DATASET_INFO['s2i']`` in ``data/dataset_info.py``."""
    return "\n".join(
        [
            "# data/dataset_info.py: inside DATASET_INFO['s2i'] (next to Scone's own sets)",
            f"{name!r}: {{",
            f"    'data_dir': {data_dir!r},",
            f"    'num_files': {num_files},",
            f"    'num_total_samples': {samples},",
            f"    'parquet_info_path': {info_path!r},",
            "},",
        ]
    )


def yaml_group(name: str, layout: Layout, world_size: int, workers: int) -> str:
    """The ``s2i`` group of a Scone data config (``data/configs/*.yaml``) that trains on ``name``."""
    repeat = []
    if layout.num_used_data > len(layout.files):
        repeat = [
            f"# num_used_data {layout.num_used_data} > {len(layout.files)} files: the loader repeats "
            f"{layout.num_used_data - len(layout.files)} of them so that every worker reads as many"
        ]

    def mapping(d: dict[str, int]) -> list[str]:
        return [f"    {k}: {v}" for k, v in d.items()]

    return "\n".join(
        [
            f"# data/configs/<stage>.yaml: the s2i group (row groups sized for {world_size} GPUs x "
            f"{workers} workers)",
            "# with other sets in dataset_names, give each its own num_used_data, in the same order:",
            "# the loader zips the two lists, so a name without a number is silently left out",
            *repeat,
            "s2i:",
            "  dataset_names:",
            f"  - {name}",
            "  image_transform_args:",
            *mapping(IMAGE_TRANSFORM),
            "  vit_image_transform_args:",
            *mapping(VIT_IMAGE_TRANSFORM),
            "  is_mandatory: false",
            "  num_used_data:",
            f"  - {layout.num_used_data}",
            "  weight: 1",
        ]
    )
