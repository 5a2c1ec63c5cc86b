"""Planning by partition (scone_data/bank/partition.py) on a real bank on disk: one partition plans
what the whole-bank planner plans, several partitions give the same samples whatever the number of
index tasks or the executor, and the corpus-wide rules hold across partitions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from pairs_bank import SHAPE_LABELS, make_bank

from scone_data import schemas
from scone_data.bank import partition
from scone_data.bank.store import Bank, images_schema
from scone_data.imageio import encode_jpeg
from scone_data.pairs import PairConfig, plan_samples
from scone_data.pairs.sample_plan import plan_from_json, plan_to_json
from scone_data.runtime.build import plan_bank
from scone_data.runtime.executor import LocalExecutor
from scone_data.shards.files import write_parquet
from scone_data.shards.output import Output

UNIT = 4  # images per bank part


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory) -> Path:
    """A bank on disk: the five real photos and 40 shape images (four labels), 4 images per part,
    with one image written twice (a duplicate the planner must drop as the whole bank does)."""
    root = tmp_path_factory.mktemp("bank")
    subjects, images, pixels = make_bank(40, seed=3, labels=SHAPE_LABELS[:4])
    ids = sorted(images)
    ids.insert(9, ids[2])  # a second copy of one image, in another part
    for u in range(0, len(ids), UNIT):
        name = f"part-{u // UNIT:05d}.parquet"
        chunk = ids[u : u + UNIT]
        recs = [{**images[i], "image_bytes": encode_jpeg(pixels[i], 80)} for i in chunk]
        write_parquet(root / "bank/images" / name, pa.Table.from_pylist(recs, schema=images_schema()))
        subs = [s for i in chunk for s in subjects if s["image_id"] == i]
        write_parquet(root / "bank/subjects" / name, schemas.to_table("subject", subs))
        write_parquet(root / "bank/rejects" / name, schemas.to_table("reject", []))
    return root


def _plans(out: Path, counts: list[dict]) -> list:
    jobs = partition.shard_slices(out, counts, 10**9, Output.shard_name)
    return [p for _, sl in jobs for p in partition.read_plans(sl)[0]]


def _plan(bank_dir: Path, out: Path, cfg: PairConfig, ex=None):
    out.mkdir(parents=True, exist_ok=True)
    counts, rejects, figures, dups = plan_bank(out, cfg, ex or LocalExecutor(), 10**8, bank_dir)
    return _plans(out, counts), counts, rejects, figures, dups


def test_plans_round_trip_through_json(bank_dir):
    bank = Bank(bank_dir)
    plans, _ = plan_samples(bank.subjects, bank.images, PairConfig(seed=1, samples_per_image=3))
    assert len(plans) > 50
    assert [plan_from_json(plan_to_json(p)) for p in plans] == plans


def test_one_partition_plans_what_the_whole_bank_planner_plans(bank_dir, tmp_path):
    cfg = PairConfig(seed=1, samples_per_image=3, val_fraction=0.2)
    bank = Bank(bank_dir)
    want, want_rejects = plan_samples(bank.subjects, bank.images, cfg, others=bank.rejected_subjects())
    got, counts, rejects, figures, dups = _plan(bank_dir, tmp_path / "out", cfg)
    assert len(counts) == 1
    # shards group plans by split, each split in plan order
    assert got == [p for s in ("train", "val") for p in want if p.split == s]
    assert rejects == want_rejects
    assert figures["images"] == len(bank.images) and figures["subjects"] == len(bank.subjects)
    assert [d["image_id"] for d in dups] == [d["image_id"] for d in bank.duplicates]


def _by_partition(plans, n_parts, images):
    return Counter(partition.route(images[p.image_id], n_parts) for p in plans)


def test_partitions_keep_the_corpus_rules(bank_dir, tmp_path):
    bank = Bank(bank_dir)
    cfg = PairConfig(seed=2, num_samples=120, max_samples_per_image=4, val_fraction=0.2,
                     plan_partition_images=12)  # fmt: skip
    plans, counts, _, figures, dups = _plan(bank_dir, tmp_path / "out", cfg)
    n_parts = len(counts)
    assert n_parts == 4  # 46 rows (45 images and a duplicate) at 12 per partition
    # every partition anchored samples on its own images, and the totals are the whole bank's
    assert len(_by_partition(plans, n_parts, bank.images)) == n_parts
    assert 100 <= len(plans) <= 120
    assert figures["images"] == len(bank.images) and figures["subjects"] == len(bank.subjects)
    assert len(dups) == 1
    assert len({p.key for p in plans}) == len(plans)
    assert max(Counter(p.image_id for p in plans).values()) <= 4
    labels = {s["subject_id"]: s["label"] for s in bank.subjects}
    for p in plans:  # every candidate is a subject of the bank, with its real label
        assert all(labels[c.subject_id] == c.label for r in p.references for c in r.candidates)
    # look-alike distractors from other partitions: a canvas reference mixes partitions
    mixed = [
        p for p in plans for r in p.references if r.kind == "canvas"
        and len({partition.route(bank.images[c.image_id], n_parts) for c in r.candidates}) > 1
    ]  # fmt: skip
    assert mixed


def test_the_same_samples_whatever_the_number_of_tasks(bank_dir, tmp_path, monkeypatch):
    cfg = PairConfig(seed=4, samples_per_image=2, val_fraction=0.2, plan_partition_images=10)
    a = _plan(bank_dir, tmp_path / "a", cfg)[0]
    monkeypatch.setattr(partition, "PARTS_PER_INDEX_TASK", 1)  # 12 index tasks instead of one
    b = _plan(bank_dir, tmp_path / "b", cfg)[0]
    assert a == b and len(a) > 40
    files = sorted((tmp_path / "a" / partition.PLAN_DIR / "plans").iterdir())
    for f in files:  # the plan files themselves, byte for byte
        assert f.read_bytes() == (tmp_path / "b" / partition.PLAN_DIR / "plans" / f.name).read_bytes()


def test_shard_slices_span_partitions_in_order(tmp_path):
    counts = [{"train": 5, "val": 1}, {}, {"train": 4}]
    jobs = partition.shard_slices(tmp_path, counts, 3, Output.shard_name)
    names = [n for n, _ in jobs]
    assert names == ["train-00000", "train-00001", "train-00002", "val-00000"]
    sizes = [sum(e - s for _, s, e in sl) for _, sl in jobs]
    assert sizes == [3, 3, 3, 1]
    p0, p2 = (str(partition.plans_file(tmp_path, p, "train")) for p in (0, 2))
    assert jobs[1][1] == [(p0, 3, 5), (p2, 0, 1)]


def test_apportion_is_exact_and_deterministic():
    assert partition.apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert partition.apportion(7, [0, 5, 2]) == [0, 5, 2]
    assert partition.apportion(5, [0, 0]) == [3, 2]
    assert sum(partition.apportion(1000, [3, 7, 11, 13])) == 1000


def test_the_driver_receives_counts_and_a_bounded_pool(bank_dir, tmp_path):
    """What crosses to the driver does not grow with the bank: per-partition counters and the pool
    (at most POOL_IMAGES images per split and label)."""
    cfg = PairConfig(seed=2, samples_per_image=2, val_fraction=0.2, plan_partition_images=8)
    out = tmp_path / "out"
    _plan(bank_dir, out, cfg)
    pool = json.loads((out / partition.PLAN_DIR / "pool.json").read_bytes())
    labels = {(s["label"]) for e in pool for s in e["subjects"]}
    assert len(pool) <= partition.POOL_IMAGES * 2 * len(labels)
    got = partition.index_chunk(str(out), str(bank_dir), 0, ["part-00000.parquet"], 3, cfg)
    assert set(got) == {"usable", "pool", "val_seen"}
    assert all(isinstance(v, int) for v in got["usable"].values())


def test_the_pool_keeps_the_smallest_hashes_per_key_as_answers_arrive():
    k = partition.POOL_IMAGES
    a = [("train", "cup", h, f"i{h}", {"image_id": f"i{h}"}) for h in range(0, 4 * k, 2)]
    b = [("train", "cup", h, f"i{h}", {"image_id": f"i{h}"}) for h in range(1, 4 * k, 2)]
    b += [("val", "dog", 7, "i7", {"image_id": "i7"}), ("train", "cup", 0, "i0", {"image_id": "i0"})]
    best = partition.merge_pool(partition.merge_pool([], a), b)
    cups = [t[2] for t in best if t[:2] == ("train", "cup")]
    assert cups == list(range(k))  # the k smallest of both answers, the repeated image once
    assert [t[3] for t in best if t[:2] == ("val", "dog")] == ["i7"]
    entries = partition.pool_entries(best)
    assert len(entries) == k and len({e["image_id"] for e in entries}) == k  # i7 is among the cups
