"""The subject bank on disk: writing one work unit's outputs, and reading the whole bank back.

Layout under the run's output directory (one part file per work unit, zero-padded)::

  bank/images/part-00003.parquet    SourceImage records + the encoded bytes (``image_bytes``)
  bank/subjects/part-00003.parquet  Subject records (mask as compressed COCO RLE)
  bank/rejects/part-00003.parquet   reject records of that unit (rows and single subjects)

The images table keeps the source's encoded bytes so that ``regen`` needs neither the sources
nor a model: it decodes them again with the same function the build used. Rows inside a part
are in the unit's input order, whatever order a worker finished them in, so the bytes are
deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data import SCHEMA_VERSION, schemas
from scone_data.shards.files import write_parquet
from scone_data.stages.base import OK, Batch

UNIT_FMT = "part-{:05d}"


def images_schema() -> pa.Schema:
    return schemas.arrow_schema("source_image").append(pa.field("image_bytes", pa.binary(), nullable=False))


def _split_reason(reason: str) -> tuple[str, str]:
    code, _, detail = (reason or "unknown").partition(":")
    return code.strip() or "unknown", detail.strip()


def unit_tables(batch: Batch) -> dict[str, pa.Table]:
    """Split a processed unit batch into its three bank tables."""
    n = len(batch["status"])
    order = sorted(range(n), key=lambda i: batch["pos"][i])
    images, subjects, rejects = [], [], []
    for i in order:
        uri, image_id = batch["uri"][i], batch.get("image_id", [None] * n)[i]
        for sr in batch.get("subject_rejects", [None] * n)[i] or []:
            detail = f"{sr.get('label', '')} {sr.get('detail', '')}".strip()
            rejects.append(
                schemas.reject_record("subjects", uri, image_id, f"subject_{sr['reason']}", detail)
            )
        if batch["status"][i] != OK:
            code, detail = _split_reason(batch["reason"][i])
            rejects.append(
                schemas.reject_record(batch["rejected_by"][i] or "source", uri, image_id, code, detail)
            )
            continue
        rec = {
            "schema_version": SCHEMA_VERSION,
            "image_id": image_id,
            "uri": uri,
            "width": int(batch["width"][i]),
            "height": int(batch["height"][i]),
            "caption": batch.get("caption", [None] * n)[i],
            "group_id": batch.get("group_id", [None] * n)[i],
            "source": batch["source"][i],
            "license": batch.get("license", [None] * n)[i],
        }
        schemas.validate("source_image", rec)
        images.append({**rec, "image_bytes": batch["image_bytes"][i]})
        subjects.extend(batch["subjects"][i])
    return {
        "images": pa.Table.from_pylist(images, schema=images_schema()),
        "subjects": schemas.to_table("subject", subjects),
        "rejects": schemas.to_table("reject", rejects),
    }


def write_unit(root: str | Path, unit: int, batch: Batch) -> dict[str, int]:
    """Publish a unit's three part files (each atomically); returns their row counts."""
    tables = unit_tables(batch)
    name = UNIT_FMT.format(unit) + ".parquet"
    for kind, table in tables.items():
        write_parquet(Path(root) / "bank" / kind / name, table)
    return {k: t.num_rows for k, t in tables.items()}


def write_extra_rejects(root: str | Path, name: str, rejects: list[dict[str, Any]]) -> None:
    """Rejects found outside any unit (e.g. COCO annotations pointing at unknown images)."""
    write_parquet(Path(root) / "bank" / "rejects" / f"{name}.parquet", schemas.to_table("reject", rejects))


def _parts(root: str | Path, kind: str) -> list[Path]:
    return sorted((Path(root) / "bank" / kind).glob("*.parquet"))


class Bank:
    """The whole bank, loaded for pair planning: subjects, image records, and where each image's bytes are.

    Duplicated images (the same ``image_id`` from two inputs) keep their first occurrence in unit
    order; the later ones are listed in :attr:`duplicates` and become ``duplicate_image`` rejects.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.images: dict[str, dict[str, Any]] = {}
        self.image_part: dict[str, str] = {}
        self.duplicates: list[dict[str, Any]] = []
        dup_keys: set[tuple[str, str]] = set()
        for part in _parts(root, "images"):
            cols = [f.name for f in schemas.arrow_schema("source_image")]
            for rec in pq.read_table(part, columns=cols).to_pylist():
                if rec["image_id"] in self.images:
                    self.duplicates.append(rec)
                    dup_keys.add((part.name, rec["image_id"]))
                    continue
                self.images[rec["image_id"]] = rec
                self.image_part[rec["image_id"]] = str(part)
        self.subjects: list[dict[str, Any]] = []
        for part in _parts(root, "subjects"):
            for rec in schemas.from_table("subject", pq.read_table(part)):
                if (part.name, rec["image_id"]) not in dup_keys:
                    self.subjects.append(rec)

    def rejects(self) -> list[dict[str, Any]]:
        out = []
        for part in _parts(self.root, "rejects"):
            out.extend(schemas.from_table("reject", pq.read_table(part)))
        for rec in self.duplicates:
            detail = f"same bytes/id as {self.images[rec['image_id']]['uri']}"
            out.append(schemas.reject_record("bank", rec["uri"], rec["image_id"], "duplicate_image", detail))
        return out


class ImageLoader:
    """``load(image_id) -> HxWx3 uint8 RGB`` from the bank's stored bytes.

    A miss reads the whole part file that holds the image (one parquet read serves the unit's
    other images, which the same shard usually needs too); at most ``PARTS`` parts stay in memory
    and ``CACHE`` decoded images.
    """

    PARTS = 4
    CACHE = 16

    def __init__(self, image_part: dict[str, str], max_pixels: int):
        self.image_part = image_part
        self.max_pixels = max_pixels
        self._parts: dict[str, dict[str, bytes]] = {}
        self._cache: dict[str, Any] = {}

    def _bytes(self, image_id: str) -> bytes:
        part = self.image_part[image_id]
        if part not in self._parts:
            if len(self._parts) >= self.PARTS:
                self._parts.pop(next(iter(self._parts)))
            t = pq.read_table(part, columns=["image_id", "image_bytes"])
            self._parts[part] = dict(
                zip(t.column("image_id").to_pylist(), t.column("image_bytes").to_pylist())
            )
        return self._parts[part][image_id]

    def __call__(self, image_id: str):
        from scone_data.imageio import decode_image

        if image_id not in self._cache:
            if len(self._cache) >= self.CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[image_id] = decode_image(self._bytes(image_id), self.max_pixels)
        return self._cache[image_id]
