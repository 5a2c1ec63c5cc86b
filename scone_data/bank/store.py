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

import json
import math
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data import SCHEMA_VERSION, schemas
from scone_data.runtime import storage
from scone_data.runtime.config import ConfigError
from scone_data.shards.files import write_parquet
from scone_data.stages.base import ADDED_BY, OK, Batch

UNIT_FMT = "part-{:05d}"


def images_schema() -> pa.Schema:
    return schemas.arrow_schema("source_image").append(pa.field("image_bytes", pa.binary(), nullable=False))


def _split_reason(reason: str) -> tuple[str, str]:
    code, _, detail = (reason or "unknown").partition(":")
    return code.strip() or "unknown", detail.strip()


def unit_tables(batch: Batch) -> dict[str, pa.Table]:
    """Split a processed unit batch into its three bank tables."""
    n = len(batch["status"])
    # a unit's input order; a row a step added (a generated image) right after the row it came from
    added = batch.get(ADDED_BY, [None] * n)
    order = sorted(range(n), key=lambda i: (batch["pos"][i], added[i] is not None))
    images, subjects, rejects = [], [], []
    for i in order:
        uri, image_id = batch["uri"][i], batch.get("image_id", [None] * n)[i]
        for sr in batch.get("subject_rejects", [None] * n)[i] or []:
            detail = f"{sr.get('label', '')} {sr.get('detail', '')}".strip()
            rec = schemas.reject_record("subjects", uri, image_id, f"subject_{sr['reason']}", detail)
            # where the rejected subject was: the pair builder keeps targets free of such instances
            rec["label"] = str(sr["label"]) if sr.get("label") is not None else None
            box = sr.get("box_xyxy")
            ok = isinstance(box, (list, tuple)) and len(box) == 4
            rec["box_xyxy"] = [float(v) for v in box] if ok and all(math.isfinite(v) for v in box) else None
            rejects.append(rec)
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
            "subject_tags": batch.get("subject_tags", [None] * n)[i],
            "caption_provenance": batch.get("caption_provenance", [None] * n)[i],
            "generation": batch.get("generation", [None] * n)[i],
        }
        schemas.validate("source_image", rec)
        for k in ("caption_provenance", "generation"):  # free-form objects: JSON strings in the table
            rec[k] = None if rec[k] is None else json.dumps(rec[k], sort_keys=True)
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
        # one row group per image: rendering reads one image, not its whole part (see ImageLoader)
        write_parquet(
            storage.path(root) / "bank" / kind / name, table, row_group_size=1 if kind == "images" else None
        )
    return {k: t.num_rows for k, t in tables.items()}


def write_extra_rejects(root: str | Path, name: str, rejects: list[dict[str, Any]]) -> None:
    """Rejects found outside any unit (e.g. COCO annotations pointing at unknown images)."""
    write_parquet(
        storage.path(root) / "bank" / "rejects" / f"{name}.parquet", schemas.to_table("reject", rejects)
    )


KIND_SCHEMA = {"images": "source_image", "subjects": "subject", "rejects": "reject"}  # bank/{kind}/
KINDS = tuple(KIND_SCHEMA)
PART_NAME = re.compile(r"part-\d{5}\.parquet")  # UNIT_FMT's names: one part per work unit
# ``write_extra_rejects``' names (``source-000``: rejects found outside any unit)
EXTRA_REJECTS_NAME = re.compile(r"[a-z][a-z0-9_]*-\d+\.parquet")


def is_part_name(kind: str, name: str) -> bool:
    """True for the final names the writer publishes under ``bank/{kind}/`` (never a temporary)."""
    return bool(PART_NAME.fullmatch(name) or (kind == "rejects" and EXTRA_REJECTS_NAME.fullmatch(name)))


def part_paths(root: str | Path, kind: str) -> list[Path]:
    # an explicit name pattern, not ``*.parquet``: pathlib's glob also matches hidden temporaries
    d = storage.path(root) / "bank" / kind
    return sorted(p for p in d.iterdir() if is_part_name(kind, p.name) and p.is_file()) if d.is_dir() else []


class BankDamaged(ConfigError):
    """The bank cannot be trusted (a part missing, unreadable, or counts off the manifest): one line each."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        self.args = ("the subject bank is damaged (nothing was written):\n  - " + "\n  - ".join(problems),)


# A finding quotes at most this much of an exception: pyarrow's can run to a whole schema dump.
MAX_WHY_CHARS = 300


def one_line(e: BaseException) -> str:
    """An exception as a short single line (pyarrow's messages span several)."""
    return " ".join(f"{type(e).__name__}: {e}".split())[:MAX_WHY_CHARS]


def read_part(part: Path, kind: str) -> list[dict[str, Any]]:
    """One part's rows as records (images: without the bytes); :class:`BankDamaged` if it cannot be read."""
    name = f"bank/{kind}/{part.name}"
    try:
        if kind == "images":
            have = pq.read_schema(storage.parquet_source(part)).names
            if "image_bytes" not in have:
                raise BankDamaged([f"{name}: no image_bytes column"])
            # the record's columns the part has: optional ones added later (subject_tags) may be absent
            cols = [f.name for f in schemas.arrow_schema("source_image") if f.name in have]
            return schemas.from_table(
                "source_image", pq.read_table(storage.parquet_source(part), columns=cols)
            )
        table = pq.read_table(storage.parquet_source(part))
        # only the required columns: optional ones added later (a reject's label and box) may be absent
        # from parts written before them
        want = schemas.json_schema(KIND_SCHEMA[kind])["required"]
        missing = [c for c in want if c not in table.schema.names]
        if missing:
            raise BankDamaged([f"{name}: not a {kind} part (missing columns {missing})"])
        return schemas.from_table(KIND_SCHEMA[kind], table)
    except BankDamaged:
        raise
    except (OSError, pa.ArrowException, ValueError, KeyError, TypeError) as e:
        raise BankDamaged([f"{name}: unreadable ({one_line(e)})"]) from None


def _kept_subjects(
    recs: list[dict[str, Any]], part: str, dup_keys: set[tuple[str, str]], shared: set[str]
) -> list[dict[str, Any]]:
    """A subjects part's rows, less those of duplicate copies. Copies in other parts go by part
    name; copies in the kept copy's own part (one unit) share its image id, so the kept copy's
    rows are those before its first repeated ``subject_id`` (rows follow image order)."""
    out: list[dict[str, Any]] = []
    seen: dict[str, set[str]] = {}
    ended: set[str] = set()
    for r in recs:
        iid = r["image_id"]
        if (part, iid) in dup_keys or iid in ended:
            continue
        if iid in shared:
            if r["subject_id"] in seen.setdefault(iid, set()):
                ended.add(iid)
                continue
            seen[iid].add(r["subject_id"])
        out.append(r)
    return out


def boxed_other(r: dict[str, Any]) -> dict[str, Any] | None:
    """A reject record of a subject that kept its box, as planning's scene takes it (``{"image_id",
    "label", "box_xyxy", "reason"}``); None for any other reject."""
    box = r.get("box_xyxy")
    if r["stage"] != "subjects" or box is None:
        return None
    return {
        "image_id": r["image_id"],
        "label": r.get("label") or "",
        "box_xyxy": list(box),
        "reason": r["reason"],
    }


class BankRows:
    """Rows of bank parts, added in part order, with duplicated images resolved as the whole bank does:
    an ``image_id`` keeps its first occurrence in unit order, later copies go to :attr:`duplicates` (and
    become ``duplicate_image`` rejects) and their subjects and boxed rejects are left out. Add every
    images part first, then subjects and rejects. The :class:`Bank` is this over all parts; a planning
    partition (:mod:`.partition`) is this over its own images' rows."""

    def __init__(self, keep_records: bool = True) -> None:
        # keep_records False: count only (a bank check): an image's uri, no subject record, is kept
        self.keep = keep_records
        self.n_subjects = 0
        self.images: dict[str, dict[str, Any]] = {}
        self.image_part: dict[str, str] = {}  # image_id -> path of its images part
        self.duplicates: list[dict[str, Any]] = []
        self.subjects: list[dict[str, Any]] = []
        self.others: list[dict[str, Any]] = []  # boxed subject rejects of kept images
        self._dup_keys: set[tuple[str, str]] = set()
        self._shared: set[str] = set()  # ids with a later copy in the kept copy's own part (one unit)

    def add_images(self, part: str, recs: list[dict[str, Any]]) -> None:
        name = Path(part).name
        for rec in recs:
            iid = rec["image_id"]
            if iid in self.images:
                self.duplicates.append(rec)
                if self.image_part[iid] == part:
                    self._shared.add(iid)
                else:
                    self._dup_keys.add((name, iid))
                continue
            self.images[iid] = rec if self.keep else {"uri": rec["uri"]}
            self.image_part[iid] = part

    def add_subjects(self, part_name: str, recs: list[dict[str, Any]]) -> None:
        kept = _kept_subjects(recs, part_name, self._dup_keys, self._shared)
        self.n_subjects += len(kept)
        if self.keep:
            self.subjects += kept

    def add_rejects(self, part_name: str, recs: list[dict[str, Any]]) -> None:
        """Keep the boxed subject rejects of ``recs`` (see :meth:`Bank.rejected_subjects`)."""
        for r in recs:
            other = boxed_other(r)
            # only the copy of a duplicated image that the bank kept (its part has the same name)
            if other is None or other["image_id"] not in self.images:
                continue
            if Path(self.image_part[other["image_id"]]).name != part_name:
                continue
            self.others.append(other)

    def duplicate_rejects(self) -> list[dict[str, Any]]:
        out = []
        for rec in self.duplicates:
            detail = f"same bytes/id as {self.images[rec['image_id']]['uri']}"
            out.append(schemas.reject_record("bank", rec["uri"], rec["image_id"], "duplicate_image", detail))
        return out


class Bank:
    """The whole bank, loaded for pair planning: subjects, image records, and where each image's bytes are.

    Duplicated images (the same ``image_id`` from two inputs) keep their first occurrence in unit
    order; the later ones are listed in :attr:`duplicates` and become ``duplicate_image`` rejects.
    """

    def __init__(self, root: str | Path, keep_records: bool = True):
        """``keep_records`` False: count the subjects without holding them (``subjects`` stays empty,
        ``images`` hold only each image's uri): what a check of a large bank needs."""
        self.root = storage.path(root)
        rows = BankRows(keep_records)
        problems: list[str] = []
        for part in part_paths(root, "images"):
            try:
                rows.add_images(str(part), read_part(part, "images"))
            except BankDamaged as e:
                problems += e.problems
        for part in part_paths(root, "subjects"):
            try:
                rows.add_subjects(part.name, read_part(part, "subjects"))
            except BankDamaged as e:
                problems += e.problems
        if problems:  # every unreadable part at once; reading on would plan from part of the bank
            raise BankDamaged(problems)
        self._rows = rows
        self.images, self.image_part = rows.images, rows.image_part
        self.duplicates, self.subjects, self.n_subjects = rows.duplicates, rows.subjects, rows.n_subjects

    def rejects(self) -> list[dict[str, Any]]:
        out = []
        for part in part_paths(self.root, "rejects"):
            out.extend(read_part(part, "rejects"))
        return out + self._rows.duplicate_rejects()

    def rejected_subjects(self) -> list[dict[str, Any]]:
        """Every subject reject of a bank image that kept its box, as ``{"image_id", "label",
        "box_xyxy", "reason"}`` (``box_xyxy``: x0, y0, x1, y1 float pixels of the image; ``reason``: as
        in :meth:`rejects`, e.g. ``"subject_mask_bleeds"``), in part and row order. The instances are
        still in the photos: the pair builder keeps them out of targets whose instruction names them.
        Reject parts written before rejects kept boxes add nothing."""
        self._rows.others = []
        for part in part_paths(self.root, "rejects"):
            if "box_xyxy" in pq.read_schema(storage.parquet_source(part)).names:
                self._rows.add_rejects(part.name, read_part(part, "rejects"))
        return self._rows.others


class ImageLoader:
    """``load(image_id) -> HxWx3 uint8 RGB`` from the bank's stored bytes, one image per read.

    Image parts are written with one row group per image (:func:`write_unit`), so a miss reads that
    image's row group only, not its whole part: distractors come from random images, and with real
    multi-megabyte photos a whole-part read per use costs hundreds of megabytes per sample. Each part's
    ``image_id`` column is read once (a few bytes per image) to find the row group. Parts written with
    larger row groups (banks of older versions) still load, a group at a time. ``CACHE`` decoded images
    stay in memory; ``bytes_read`` counts the compressed bytes read, for benchmarks.
    """

    CACHE = 16

    def __init__(self, image_part: dict[str, str], max_pixels: int):
        self.image_part = image_part
        self.max_pixels = max_pixels
        self._where: dict[str, dict[str, tuple[int, int]]] = {}  # part -> image_id -> (row group, row in it)
        self._meta: dict[str, Any] = {}  # part -> its parquet footer, parsed once
        self._cache: dict[str, Any] = {}
        self.bytes_read = 0

    def _locate(self, part: str) -> dict[str, tuple[int, int]]:
        if part not in self._where:
            f = pq.ParquetFile(storage.parquet_source(part))
            self._meta[part] = f.metadata
            ids = f.read(columns=["image_id"]).column("image_id").to_pylist()
            col = f.schema_arrow.get_field_index("image_id")
            where: dict[str, tuple[int, int]] = {}
            row = 0
            for g in range(f.metadata.num_row_groups):
                meta = f.metadata.row_group(g)
                self.bytes_read += meta.column(col).total_compressed_size
                for k in range(meta.num_rows):
                    where.setdefault(ids[row + k], (g, k))  # a duplicate id: the first copy, as the Bank
                row += meta.num_rows
            self._where[part] = where
        return self._where[part]

    def _bytes(self, image_id: str) -> bytes:
        part = self.image_part[image_id]
        group, k = self._locate(part)[image_id]
        f = pq.ParquetFile(storage.parquet_source(part), metadata=self._meta[part])
        col = f.schema_arrow.get_field_index("image_bytes")
        self.bytes_read += f.metadata.row_group(group).column(col).total_compressed_size
        return f.read_row_group(group, columns=["image_bytes"]).column("image_bytes")[k].as_py()

    def __call__(self, image_id: str):
        from scone_data.imageio import decode_image

        if image_id not in self._cache:
            if len(self._cache) >= self.CACHE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[image_id] = decode_image(self._bytes(image_id), self.max_pixels)
        return self._cache[image_id]


def _ledger_problems(root: Path) -> list[str]:
    """Each part the build's ledger marks as written is present with the row counts it recorded,
    and no part is present that the ledger does not know (no ledger: nothing to compare)."""
    ledger = root / "ledger" / "bank"
    if not ledger.is_dir():
        return []
    problems: list[str] = []
    expected: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    for marker in sorted(ledger.glob("*.done")):
        try:
            rec = json.loads(marker.read_bytes())
            counts = {k: int(rec[k]) for k in KINDS if k in rec}
        except (ValueError, KeyError, TypeError, OSError) as e:
            problems.append(f"ledger/bank/{marker.name}: unreadable ({one_line(e)})")
            continue
        for kind, n in counts.items():
            expected[kind][f"{marker.name[: -len('.done')]}.parquet".replace("unit-", "part-")] = n
    for kind in KINDS:
        present = {p.name: p for p in part_paths(root, kind)}
        for name, n in sorted(expected[kind].items()):
            if name not in present:
                problems.append(f"bank/{kind}/{name}: missing (the ledger records {n} rows)")
                continue
            try:
                rows = pq.read_metadata(storage.parquet_source(present[name])).num_rows
            except (OSError, pa.ArrowException, ValueError) as e:
                problems.append(f"bank/{kind}/{name}: unreadable ({one_line(e)})")
                continue
            if rows != n:
                problems.append(f"bank/{kind}/{name}: {rows} rows, the ledger records {n}")
        problems += [
            f"bank/{kind}/{n}: a part the ledger does not list"
            for n in sorted(set(present) - set(expected[kind]))
        ]
    return problems


def check_bank(root: str | Path, manifest: dict[str, Any]) -> tuple[Bank | None, list[str]]:
    """The bank of a finished build, read and checked against its ``manifest``: ``(bank, problems)``;
    ``bank`` counts its subjects without holding them (see :class:`Bank`'s ``keep_records``), so a
    check holds one part at a time and each image's id and uri, never a per-subject list.

    Problems (one line each): ``bank/`` or a kind's folder missing, a file there that is not a part
    (temporaries aside: they are never read), a part the ledger lists missing or with other row counts,
    a part that does not read back, and the images, subjects and reject reasons counted against the
    manifest. ``bank`` is None when a part does not read."""
    root = storage.path(root)
    if not (root / "bank").is_dir():
        return None, ["bank/: missing (the subject bank of this build is gone)"]
    problems: list[str] = []
    for kind in KINDS:
        d = root / "bank" / kind
        if not d.is_dir():
            problems.append(f"bank/{kind}/: missing")
            continue
        problems += [
            f"bank/{kind}/{p.name}: not a part of the bank (unknown file)"
            for p in sorted(d.iterdir())
            if not is_part_name(kind, p.name) and not p.name.startswith(".")  # hidden: never read
        ]
    problems += _ledger_problems(root)
    try:
        bank = Bank(root, keep_records=False)
    except BankDamaged as e:
        return None, problems + [p for p in e.problems if p not in problems]
    reasons: dict[str, int] = {}
    for part in part_paths(root, "rejects"):
        try:
            for r in read_part(part, "rejects"):
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        except BankDamaged as e:
            problems += [p for p in e.problems if p not in problems]
    if bank.duplicates:
        reasons["duplicate_image"] = reasons.get("duplicate_image", 0) + len(bank.duplicates)
    for what, have in (("images", len(bank.images)), ("subjects", bank.n_subjects)):
        if manifest.get(what) != have:
            problems.append(f"bank: {have} {what}, the manifest says {manifest.get(what)}")
    if manifest.get("rejects") != dict(sorted(reasons.items())):
        problems.append(
            f"bank: rejects by reason {dict(sorted(reasons.items()))}, the manifest says {manifest.get('rejects')}"
        )
    return bank, problems
