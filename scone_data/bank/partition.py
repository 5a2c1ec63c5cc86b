"""Planning by partition: the driver plans a bank of any size holding no per-subject list.

Three steps, each a set of executor tasks (in-process or on Ray, see ``runtime.executor``):

1. **Index** (:func:`index_chunk`, one task per :data:`PARTS_PER_INDEX_TASK` bank parts): every image
   is routed to one of ``P`` partitions by a hash of its group id (frames of one video stay together)
   or image id, and its rows (image record, subjects, boxed subject rejects) are written to
   ``ledger/plan/index/`` under its partition. ``P = ceil(images / pairs.plan_partition_images)``: it
   depends on the bank, never on the number of workers, so the samples do not either. Each task also
   returns its share of the **distractor pool**: per (split, label), the :data:`POOL_IMAGES` images with
   the smallest seeded hash among those with a usable subject of that label, with their rows.
2. **Plan** (:func:`plan_partition`, one task per partition): the partition's rows, with duplicated
   images resolved as the whole bank resolves them (:class:`~scone_data.bank.store.BankRows`), plus
   the pool's images from other partitions as distractors only, are planned by
   :func:`~scone_data.pairs.plan.plan_from_index`; the plans go to ``ledger/plan/plans/`` (one JSON line
   per plan, with the bank part of every image it uses), and the task returns counts only.
3. **Render**: shard jobs are slices of those plan files (:func:`shard_slices`), read one row group
   at a time by the shard workers (:func:`read_plans`).

What the driver holds: per-part row counts, the merged pool (at most ``POOL_IMAGES`` images per
split and label: bounded by the vocabulary, not the corpus) and per-partition counters.

With one partition (every bank up to ``plan_partition_images`` images) the plans are those of
:func:`~scone_data.pairs.plan.plan_samples` on the whole bank, sample for sample. With more, each
partition plans its share of the samples (split by usable images, largest remainder) with its own
random stream, and the caps that count over the whole bank are split the same way:
``num_samples`` and ``max_samples_per_label``; ``val_min_per_task`` holds in each partition that
has validation images (so the build has at least that many). Look-alike distractors come from the partition's own images and
the pool. Limit: two copies of one image id with different group ids can land in two partitions and
are then both kept (copies of one image from one source share their group).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import shutil
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scone_data.bank.index import BankIndex
from scone_data.bank.records import split_of
from scone_data.bank.store import BankRows, ImageLoader, boxed_other, part_paths, read_part
from scone_data.pairs.quota import largest_remainder
from scone_data.pairs.sample_plan import plan_from_json, plan_to_json
from scone_data.runtime import storage
from scone_data.shards.files import write_bytes, write_parquet

# under the output, beside the ledger's markers: the run's own bookkeeping, remade on every run and
# removed before the manifest is written (a finished output holds none)
PLAN_DIR = "ledger/plan"
PARTS_PER_INDEX_TASK = 64  # bank parts per index task (64 x 16 images at the default unit size)
POOL_IMAGES = 16  # distractor pool: images per (split, label) lent to every partition
PLAN_ROWS_PER_GROUP = 32  # plans per row group of a plan file: what a shard worker reads at least
ROUTE_SALT = "scone-data/plan/partition/v1"
ROWS_SCHEMA = pa.schema([("part", pa.string()), ("kind", pa.string()), ("json", pa.string())])
PLANS_SCHEMA = pa.schema([("json", pa.string()), ("parts", pa.string())])


def partition_count(n_images: int, per_partition: int) -> int:
    return max(1, math.ceil(n_images / max(1, per_partition)))


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def route(image: dict[str, Any], n: int) -> int:
    """The partition of ``image``: by its group id, else its image id (seed-independent)."""
    return 0 if n == 1 else _hash(f"{ROUTE_SALT}|{image.get('group_id') or image['image_id']}") % n


def _dir(out: str | Path) -> Path:
    return storage.path(out) / PLAN_DIR


def index_file(out: str | Path, p: int, chunk: int) -> Path:
    return _dir(out) / "index" / f"p{p:05d}-c{chunk:05d}.parquet"


def plans_file(out: str | Path, p: int, split: str) -> Path:
    return _dir(out) / "plans" / f"p{p:05d}-{split}.parquet"


def remove(out: str | Path) -> None:
    """Remove the planning files: before planning (plans are recomputed on every run, cheap next to
    rendering) and once the shards are written."""
    d = _dir(out)
    if isinstance(d, storage.StorePath):
        d.delete_tree()
    else:
        shutil.rmtree(d, ignore_errors=True)


def count_images(bank_root: str | Path) -> tuple[list[str], int]:
    """The bank's images part names and their rows, from the parts' footers only."""
    parts = part_paths(bank_root, "images")
    return [p.name for p in parts], sum(pq.read_metadata(storage.parquet_source(p)).num_rows for p in parts)


# -- 1. index ------------------------------------------------------------------------------------
def index_chunk(out: str, bank_root: str, chunk: int, parts: list[str], n_parts: int, cfg) -> dict[str, Any]:
    """Route the rows of the bank parts ``parts`` (names under ``bank_root/bank/images/``) to
    ``n_parts`` partitions, written under ``out`` (runs in a worker). Returns usable images per
    partition, the chunk's pool candidates and which ``cfg.val_images`` ids it saw."""
    bank = storage.path(bank_root) / "bank"
    rows: dict[int, list[dict[str, str]]] = defaultdict(list)
    usable: Counter = Counter()
    pool: dict[tuple[str, str], list] = defaultdict(list)  # max-heaps (negated) of the smallest hashes
    val_set = frozenset(cfg.val_images)
    val_seen: set[str] = set()
    entries: dict[str, dict] = {}
    for name in parts:
        path = str(bank / "images" / name)
        images = read_part(storage.path(path), "images")
        subjects = (
            read_part(bank / "subjects" / name, "subjects") if (bank / "subjects" / name).is_file() else []
        )
        rejects = read_part(bank / "rejects" / name, "rejects") if (bank / "rejects" / name).is_file() else []
        subs_of: dict[str, list] = defaultdict(list)
        for s in subjects:
            subs_of[s["image_id"]].append(s)
        others_of: dict[str, list] = defaultdict(list)
        for r in rejects:
            if boxed_other(r) is not None:
                others_of[r["image_id"]].append(r)
        by_id = {im["image_id"]: im for im in images}
        dest = [route(im, n_parts) for im in images]
        for im, p in zip(images, dest):
            iid = im["image_id"]
            val_seen |= {v for v in (iid, im.get("group_id")) if v in val_set}
            rows[p].append({"part": path, "kind": "image", "json": json.dumps(im, sort_keys=True)})
            labels = {s["label"] for s in subs_of.get(iid, ()) if BankIndex._check(s, by_id, cfg)[0] is None}
            usable[p] += bool(labels)
            if n_parts == 1 or not labels:
                continue
            split = split_of(im, cfg.val_fraction, val_set)
            h = _hash(f"{ROUTE_SALT}|pool|{cfg.seed}|{iid}")
            entry = {"image_id": iid, "p": p, "part": path, "image": im,
                     "subjects": subs_of.get(iid, []),
                     "others": [boxed_other(r) for r in others_of.get(iid, [])]}  # fmt: skip
            entries.setdefault(iid, entry)  # a later copy of an image lends nothing more
            for label in sorted(labels):
                heap = pool[(split, label)]
                item = (-h, iid)
                if item in heap:
                    continue
                if len(heap) < POOL_IMAGES:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        # subjects and rejects after every image of the part, as BankRows wants them
        for im, p in zip(images, dest):
            for s in subs_of.pop(im["image_id"], []):
                rows[p].append({"part": path, "kind": "subject", "json": json.dumps(s)})
            for r in others_of.pop(im["image_id"], []):
                rows[p].append({"part": path, "kind": "reject", "json": json.dumps(r)})
    for p, rs in rows.items():
        write_parquet(index_file(out, p, chunk), pa.Table.from_pylist(rs, schema=ROWS_SCHEMA))
    return {
        "usable": dict(usable),
        "pool": [(s, lb, -nh, iid, entries[iid]) for (s, lb), heap in pool.items() for nh, iid in heap],
        "val_seen": sorted(val_seen),
    }


def merge_pool(best: list[tuple], found: list[tuple]) -> list[tuple]:
    """``best`` and an index task's pool candidates ``found`` (``(split, label, hash, image_id,
    entry)``), cut to the :data:`POOL_IMAGES` smallest hashes per (split, label), each image once per
    key. The driver folds every task's answer in as it arrives, so it never holds more than that."""
    by_key: dict[tuple[str, str], list] = defaultdict(list)
    for t in best + found:
        by_key[(t[0], t[1])].append(t)
    out = []
    for key in sorted(by_key):
        seen: set[str] = set()
        for t in sorted(by_key[key], key=lambda t: (t[2], t[3])):
            if t[3] not in seen and len(seen) < POOL_IMAGES:
                seen.add(t[3])
                out.append(t)
    return out


def pool_entries(best: list[tuple]) -> list[dict[str, Any]]:
    """The merged pool as one entry per image (image record, part, partition, rows), by image id."""
    keep: dict[str, dict] = {}
    for t in best:
        keep.setdefault(t[3], t[4])
    return [keep[i] for i in sorted(keep)]


# -- 2. plan -------------------------------------------------------------------------------------
def _read_rows(out: str | Path, p: int) -> BankRows:
    files = sorted((_dir(out) / "index").glob(f"p{p:05d}-c*.parquet"))
    tables = [pq.read_table(storage.parquet_source(f)) for f in files]
    table = pa.concat_tables(tables) if files else ROWS_SCHEMA.empty_table()
    parts, kinds, blobs = (table.column(c).to_pylist() for c in ("part", "kind", "json"))
    rows = BankRows()
    for want in ("image", "subject", "reject"):  # images of every part first (see BankRows)
        for part, kind, blob in zip(parts, kinds, blobs):
            if kind != want:
                continue
            rec = json.loads(blob)
            if kind == "image":
                rows.add_images(part, [rec])
            elif kind == "subject":
                rows.add_subjects(Path(part).name, [rec])
            else:
                rows.add_rejects(Path(part).name, [rec])
    return rows


def plan_partition(
    out: str, p: int, n_parts: int, cfg, num_samples: int | None, label_cap: int, max_pixels: int
) -> dict[str, Any]:
    """Plan partition ``p`` of ``n_parts`` (runs in a worker) and write its plans; returns counts:
    plans per split, plan rejects, and the partition's bank figures for the manifest and card."""
    from scone_data.pairs.plan import plan_from_index

    rows = _read_rows(out, p)
    own = set(rows.images)
    images, image_part = dict(rows.images), dict(rows.image_part)
    subjects, others = list(rows.subjects), list(rows.others)
    if n_parts > 1:
        pool_path = _dir(out) / "pool.json"
        for e in json.loads(pool_path.read_bytes()) if pool_path.is_file() else []:
            if e["p"] == p or e["image_id"] in images:
                continue
            images[e["image_id"]], image_part[e["image_id"]] = e["image"], e["part"]
            subjects += e["subjects"]
            others += e["others"]
    pcfg = replace(cfg, max_samples_per_label=label_cap)
    if num_samples is not None:
        pcfg = replace(pcfg, num_samples=num_samples)
    index = BankIndex(subjects, images, pcfg, others, anchors=own if n_parts > 1 else None, check_val=False)
    if n_parts > 1 and not any(index.split_of_image(i) == "val" for i in index.anchor_ids):
        # val_min_per_task is met where the val images are; a partition without any plans train only
        pcfg = replace(pcfg, val_min_per_task=0)
    if num_samples == 0:  # a share of zero samples (num_samples=0 would mean "samples_per_image")
        plans, rejects = [], Counter(index.rejects)
    else:
        rng = None if n_parts == 1 else f"scone-data/pairs/{cfg.seed}/partition-{p}-of-{n_parts}"
        plans, rejects = plan_from_index(index, pcfg, ImageLoader(image_part, max_pixels), rng)
    by_split: dict[str, list] = defaultdict(list)
    for plan in plans:
        used = {plan.image_id} | {c.image_id for r in plan.references for c in r.candidates}
        used |= {r.crop_image_id for r in plan.references if r.crop_image_id}
        parts = json.dumps({i: image_part[i] for i in sorted(used)}, sort_keys=True)
        by_split[plan.split].append({"json": plan_to_json(plan), "parts": parts})
    for split, recs in by_split.items():
        table = pa.Table.from_pylist(recs, schema=PLANS_SCHEMA)
        write_parquet(plans_file(out, p, split), table, row_group_size=PLAN_ROWS_PER_GROUP)
    own_subjects = rows.subjects
    return {
        "splits": {s: len(v) for s, v in sorted(by_split.items())},
        "rejects": dict(rejects),
        "bank": {
            "images": len(rows.images),
            "subjects": len(own_subjects),
            "mask_sources": dict(Counter(str(s.get("mask_source", "annotation")) for s in own_subjects)),
            "captioned": sum(1 for r in rows.images.values() if r.get("caption")),
            "licenses": dict(Counter(str(r.get("license") or "not declared") for r in rows.images.values())),
        },
        "duplicates": rows.duplicate_rejects(),
    }


def apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` split by ``weights`` (largest remainder, ties by position); all zero weights: evenly."""
    w = weights if sum(weights) else [1] * len(weights)
    return largest_remainder([total * x / sum(w) for x in w], total)


# -- 3. render ------------------------------------------------------------------------------------
def shard_slices(
    out: str | Path, counts: list[dict[str, int]], per_shard: int, shard_name
) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Shard jobs ``(name, [(plan file, start, end), ...])``: each split's plans in partition order,
    ``per_shard`` to a shard (a shard may span two partitions' files); ``counts[p]``: plans per split of
    partition ``p``; ``shard_name(split, i)`` names the shards."""
    jobs = []
    for split in sorted({s for c in counts for s in c}):
        pieces = [(str(plans_file(out, p, split)), c[split]) for p, c in enumerate(counts) if c.get(split)]
        shards: list[list[tuple[str, int, int]]] = [[]]
        room = per_shard
        for path, n in pieces:
            start = 0
            while start < n:
                if room == 0:
                    shards.append([])
                    room = per_shard
                take = min(room, n - start)
                shards[-1].append((path, start, start + take))
                start, room = start + take, room - take
        jobs += [(shard_name(split, i), sl) for i, sl in enumerate(shards) if sl]
    return jobs


def read_plans(slices: list[tuple[str, int, int]]) -> tuple[list, dict[str, str]]:
    """The plans of ``slices`` in order and the bank part of every image they use; reads only the
    row groups the slices cover."""
    plans, image_part = [], {}
    for path, start, end in slices:
        f = pq.ParquetFile(storage.parquet_source(path))
        first, groups, row = 0, [], 0
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            if row + n > start and row < end:
                if not groups:
                    first = row
                groups.append(g)
            row += n
        table = f.read_row_groups(groups).slice(start - first, end - start)
        for blob, parts in zip(table.column("json").to_pylist(), table.column("parts").to_pylist()):
            plans.append(plan_from_json(blob))
            image_part.update(json.loads(parts))
    return plans, image_part


def write_pool(out: str | Path, pool: list[dict[str, Any]]) -> None:
    write_bytes(_dir(out) / "pool.json", json.dumps(pool, sort_keys=True).encode())
