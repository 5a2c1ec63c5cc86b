"""The bank's image loader reads one image per use, not its whole part."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scone_data import SCHEMA_VERSION
from scone_data.bank.store import ImageLoader, images_schema
from scone_data.imageio import encode_jpeg
from scone_data.shards.files import write_parquet


def _part(path, n: int, row_group_size):
    rng = np.random.default_rng(0)
    # smooth random pictures (JPEG keeps them within a few levels), each different
    pixels = {
        f"img{i}": np.repeat(np.repeat(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), 8, 0), 8, 1)
        for i in range(n)
    }
    recs = [
        {"schema_version": SCHEMA_VERSION, "image_id": iid, "uri": iid, "width": 128, "height": 96,
         "caption": None, "group_id": None, "source": "t", "license": None, "image_bytes": encode_jpeg(img, 95)}
        for iid, img in pixels.items()
    ]  # fmt: skip
    write_parquet(path, pa.Table.from_pylist(recs, schema=images_schema()), row_group_size=row_group_size)
    return pixels


def test_one_image_is_read_from_a_part_written_one_row_group_per_image(tmp_path):
    part = tmp_path / "part-00000.parquet"
    pixels = _part(part, 16, 1)
    assert pq.ParquetFile(part).metadata.num_row_groups == 16
    loader = ImageLoader({iid: str(part) for iid in pixels}, 10**8)
    img = loader("img7")
    assert img.shape == (96, 128, 3) and np.abs(img.astype(int) - pixels["img7"]).mean() < 12  # JPEG
    # one image's bytes and the id column, far from the part's 16 images
    assert loader.bytes_read < os.path.getsize(part) / 8
    before = loader.bytes_read
    loader("img7")  # decoded images are cached
    assert loader.bytes_read == before


def test_a_part_of_an_older_bank_with_one_row_group_still_loads(tmp_path):
    part = tmp_path / "part-00000.parquet"
    pixels = _part(part, 4, None)
    assert pq.ParquetFile(part).metadata.num_row_groups == 1
    loader = ImageLoader({iid: str(part) for iid in pixels}, 10**8)
    for iid in ("img3", "img0"):
        assert np.abs(loader(iid).astype(int) - pixels[iid]).mean() < 12
