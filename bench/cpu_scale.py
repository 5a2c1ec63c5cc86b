"""CPU benchmark of how the shard phase scales: bank bytes read per rendered sample, and the driver's
planning memory and time as the bank grows.

(a) Bank reads. A bank of real-size photos (skimage photos resized to ``--side`` pixels, JPEG, with
    coloured synthetic subjects, as in ``cpu_pairs.py``) is written as bank image parts of 16 images in
    two layouts: one row group per image (what ``bank.store.write_unit`` writes) and one row group per
    part (banks of earlier versions). The same planned samples are rendered through
    ``bank.store.ImageLoader`` from each; the table gives the compressed bytes the loader read per
    sample, against the bytes of the distinct images the sample uses (its target and the source photo of
    every candidate). Target: within 2x.
(b) Planning. A synthetic bank (3 subjects per image, 40 labels, parts of 16 images, one tiny JPEG
    per image) of 1k, 10k and 100k subjects is written to disk by one process; another, fresh process
    plans it as a build does (``runtime.build.plan_bank``: by partition, on the in-process executor,
    so the peak RSS holds the driver and each task in turn), then again on an embedded Ray instance
    (the driver's own RSS: what it holds while workers plan): planning time and peak RSS. For
    comparison, the whole-bank planner (``plan_samples`` on every subject in one list, what builds
    did before; its time leaves out reading the bank, which the others include) in a third process.

Prints tables; ``--out`` writes JSON; ``--smoke`` is a tiny size for tests.

    python bench/cpu_scale.py --out bench/out/cpu_scale.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

from scone_data import SCHEMA_VERSION, schemas
from scone_data.bank.store import ImageLoader, images_schema
from scone_data.imageio import encode_jpeg
from scone_data.pairs import PairConfig, plan_samples, render_sample
from scone_data.shards.files import write_parquet

HERE = Path(__file__).resolve().parent
PROVENANCE = {"builder_version": "bench", "config_hash": "0" * 16, "seed": 0, "source": "bench", "models": []}
FULL = dict(images=96, samples=96, side=1600, plan_sizes=(1_000, 10_000, 100_000), partition_images=10_000)
SMOKE = dict(images=16, samples=12, side=320, plan_sizes=(300, 900), partition_images=40)
UNIT = 16  # images per bank part, as runtime.unit_size's default


def _cpu_pairs():
    spec = importlib.util.spec_from_file_location("cpu_pairs", HERE / "cpu_pairs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bank_reads(n_images: int, n_samples: int, side: int, tmp: Path) -> list[dict]:
    cp = _cpu_pairs()
    subjects, images, pixels = cp.make_bank(n_images)
    # real-size photos: each bank image at ``side`` pixels on its long side, subjects scaled with it
    k = side / max(cp.IMAGE_WH)
    encoded = {}
    for iid, img in pixels.items():
        big = cv2.resize(
            img, (round(img.shape[1] * k), round(img.shape[0] * k)), interpolation=cv2.INTER_CUBIC
        )
        encoded[iid] = encode_jpeg(big, 92)
        pixels[iid] = big
        images[iid].update(width=big.shape[1], height=big.shape[0])
    for s in subjects:
        m = mask_utils.decode({"size": s["mask_rle"]["size"], "counts": s["mask_rle"]["counts"].encode()})
        big = cv2.resize(
            m, (pixels[s["image_id"]].shape[1], pixels[s["image_id"]].shape[0]), cv2.INTER_NEAREST
        )
        s["mask_rle"] = {
            "size": list(big.shape),
            "counts": mask_utils.encode(np.asfortranarray(big))["counts"].decode(),
        }
    cfg = PairConfig(num_samples=n_samples, seed=0, ref_size=512, target_max_side=1024)
    plans, _ = plan_samples(subjects, images, cfg)
    rows = []
    for layout, group in (("one row group per image", 1), ("one row group per part", None)):
        d = tmp / layout.replace(" ", "_")
        d.mkdir()
        image_part = {}
        ids = sorted(encoded)
        for u in range(0, len(ids), UNIT):
            part = d / f"part-{u // UNIT:05d}.parquet"
            recs = [
                {"schema_version": SCHEMA_VERSION, "image_id": i, "uri": i, "width": images[i]["width"],
                 "height": images[i]["height"], "caption": None, "group_id": None, "source": "bench",
                 "license": None, "image_bytes": encoded[i]}
                for i in ids[u : u + UNIT]
            ]  # fmt: skip
            write_parquet(part, pa.Table.from_pylist(recs, schema=images_schema()), row_group_size=group)
            image_part.update({i: str(part) for i in ids[u : u + UNIT]})
        loader = ImageLoader(image_part, 10**9)
        used = 0
        t0 = time.perf_counter()
        for p in plans:
            render_sample(p, loader, cfg, PROVENANCE)
            srcs = {p.image_id} | {c.image_id for r in p.references for c in r.candidates}
            used += sum(len(encoded[i]) for i in srcs)
        dt = time.perf_counter() - t0
        rows.append(
            {
                "layout": layout,
                "samples": len(plans),
                "read_mb_per_sample": loader.bytes_read / len(plans) / 1e6,
                "used_mb_per_sample": used / len(plans) / 1e6,
                "ratio": loader.bytes_read / max(1, used),
                "render_s": dt,
            }
        )
    return rows


def _synthetic(n_subjects: int) -> tuple[list[dict], dict]:
    rng = random.Random(0)
    h, w = 480, 640
    shapes = []
    for s in (40, 80, 120):
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, ((320, 240), (s, s * 0.8), 0), 1, -1)
        shapes.append(mask_utils.encode(np.asfortranarray(m))["counts"].decode())
    labels = [f"label{i}" for i in range(40)]
    subjects, images = [], {}
    for n in range(n_subjects):
        iid = f"img{n // 3:07d}"
        images.setdefault(iid, {"image_id": iid, "width": w, "height": h, "caption": None, "group_id": None})
        subjects.append(
            {"schema_version": SCHEMA_VERSION, "subject_id": f"{iid}-{n % 3:03d}", "image_id": iid,
             "label": rng.choice(labels), "mask_rle": {"size": [h, w], "counts": rng.choice(shapes)},
             "attributes": {"color": rng.choice(("red", "green", "blue"))}}
        )  # fmt: skip
    return subjects, images


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM): unlike getrusage's ru_maxrss, it starts afresh at exec,
    so a child does not report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PLAN_CFG = dict(samples_per_image=1.0, seed=0, crop_prob=0.0)


def plan_one(n_subjects: int) -> dict:
    """In this process: the whole-bank planner, about one sample per image of ``n_subjects``."""
    subjects, images = _synthetic(n_subjects)
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    plans, _ = plan_samples(subjects, images, PairConfig(**PLAN_CFG))
    dt = time.perf_counter() - t0
    peak = _peak_rss_mb()
    return {"subjects": n_subjects, "samples": len(plans), "plan_s": dt, "peak_rss_mb": peak,
            "rss_before_plan_mb": base}  # fmt: skip


# the Subject fields planning does not read, as an annotation source gives them
SUBJECT_DEFAULTS = {"box_xyxy": [280.0, 208.0, 360.0, 272.0], "det_score": 1.0, "det_source": "annotation",
                    "mask_score": 1.0, "mask_source": "annotation", "stability": 1.0, "area_frac": 0.01}  # fmt: skip


def write_bank(n_subjects: int, root: Path) -> None:
    """The synthetic bank of ``n_subjects`` as bank parts under ``root/bank`` (one process)."""
    subjects, images = _synthetic(n_subjects)
    jpg = encode_jpeg(np.full((48, 64, 3), 128, np.uint8), 80)
    ids = sorted(images)
    subs_of: dict[str, list] = {}
    for s in subjects:
        subs_of.setdefault(s["image_id"], []).append(s)
    for u in range(0, len(ids), UNIT):
        name = f"part-{u // UNIT:05d}.parquet"
        recs = [{"schema_version": SCHEMA_VERSION, "uri": i, "source": "bench", "license": None,
                 **images[i], "image_bytes": jpg} for i in ids[u : u + UNIT]]  # fmt: skip
        write_parquet(root / "bank/images" / name, pa.Table.from_pylist(recs, schema=images_schema()))
        subs = [
            {**SUBJECT_DEFAULTS, **x, "attributes": {"position": "center", "size_rank": 0, **x["attributes"]}}
            for i in ids[u : u + UNIT]
            for x in subs_of.get(i, [])
        ]
        write_parquet(root / "bank/subjects" / name, schemas.to_table("subject", subs, check=False))


def plan_partitioned(root: Path, partition_images: int, executor: str = "local") -> dict:
    """In this process: plan the bank under ``root`` as a build does (by partition) on ``executor``:
    ``local`` runs every task in this process, ``ray`` in an embedded Ray instance's workers (2 CPUs),
    so that this process's peak RSS is the driver's alone (Ray's start-up is not timed)."""
    from scone_data.bank import partition
    from scone_data.runtime.build import plan_bank
    from scone_data.runtime.config import RuntimeSettings
    from scone_data.runtime.executor import open_executor

    rt = RuntimeSettings(executor=executor, num_cpus=2, progress=False)
    with open_executor(rt) as ex:
        base = _peak_rss_mb()
        t0 = time.perf_counter()
        out = root / "out"
        partition.remove(out)
        out.mkdir(exist_ok=True)
        cfg = PairConfig(**PLAN_CFG, plan_partition_images=partition_images)
        counts, _, figures, _ = plan_bank(out, cfg, ex, 10**8, root)
        dt = time.perf_counter() - t0
    return {"subjects": figures["subjects"], "samples": sum(sum(c.values()) for c in counts),
            "executor": executor, "partitions": len(counts), "plan_s": dt, "peak_rss_mb": _peak_rss_mb(),
            "rss_before_plan_mb": base, "plan_mb_on_disk": sum(
                f.stat().st_size for f in (out / partition.PLAN_DIR).rglob("*") if f.is_file()) / 1e6}  # fmt: skip


def _child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--plan-one", type=int, help=argparse.SUPPRESS)  # the child processes of (b)
    ap.add_argument("--write-bank", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--plan-partitioned", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.plan_one:
        print(json.dumps(plan_one(a.plan_one)))
        return
    if a.write_bank:
        write_bank(int(a.write_bank[0]), Path(a.write_bank[1]))
        print("{}")
        return
    if a.plan_partitioned:
        root, per, executor = a.plan_partitioned
        print(json.dumps(plan_partitioned(Path(root), int(per), executor)))
        return
    cv2.setNumThreads(1)
    size = SMOKE if a.smoke else FULL
    with tempfile.TemporaryDirectory() as tmp:
        reads = bank_reads(size["images"], size["samples"], size["side"], Path(tmp))
    print(f"(a) bank bytes read per rendered sample ({size['images']} photos at {size['side']} px, JPEG q92)")
    print(f"{'layout':>26}  samples  read MB/sample  used MB/sample  read/used  render s")
    for r in reads:
        print(f"{r['layout']:>26}  {r['samples']:7d}  {r['read_mb_per_sample']:14.3f}  "
              f"{r['used_mb_per_sample']:14.3f}  {r['ratio']:9.2f}  {r['render_s']:8.2f}")  # fmt: skip
    plans, drivers, whole = [], [], []
    for n in size["plan_sizes"]:
        with tempfile.TemporaryDirectory() as tmp:
            _child("--write-bank", str(n), tmp)
            plans.append(_child("--plan-partitioned", tmp, str(size["partition_images"]), "local"))
            drivers.append(_child("--plan-partitioned", tmp, str(size["partition_images"]), "ray"))
        whole.append(_child("--plan-one", str(n)))
    print("\n(b) planning, 3 subjects per image, ~1 sample per image; peak RSS of the planning process")
    print(f"{'subjects':>9}  {'planner':>44}  partitions  samples  plan s  peak RSS MB  RSS before MB")
    names = ("by partition, tasks in this process", "by partition, Ray workers (driver's RSS)",
             "whole bank in memory (plan_samples)")  # fmt: skip
    for rows in zip(plans, drivers, whole):
        for name, x in zip(names, rows):
            print(f"{x['subjects']:9d}  {name:>44}  {x.get('partitions', 1):10d}  {x['samples']:7d}  "
                  f"{x['plan_s']:6.2f}  {x['peak_rss_mb']:11.0f}  {x['rss_before_plan_mb']:13.0f}")  # fmt: skip
    for name, rows in zip(names, (plans, drivers, whole)):
        lo, hi = rows[0], rows[-1]
        mid = rows[len(rows) // 2]
        per = [(b["plan_s"] - a_["plan_s"]) / (b["subjects"] - a_["subjects"]) * 1e3
               for a_, b in zip(rows, rows[1:])]  # fmt: skip
        print(f"{name}: peak RSS {hi['subjects']} vs {lo['subjects']} subjects x{hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}"
              f" (vs {mid['subjects']}: x{hi['peak_rss_mb'] / mid['peak_rss_mb']:.2f}); marginal plan time per 1k "
              f"subjects between sizes: {', '.join(f'{x:.2f} s' for x in per)}")  # fmt: skip
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(
            json.dumps(
                {
                    "bank_reads": reads,
                    "planning": plans,
                    "planning_ray_driver": drivers,
                    "planning_whole_bank": whole,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
