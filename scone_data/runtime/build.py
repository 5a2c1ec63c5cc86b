"""``build`` and ``regen``: the two jobs, top to bottom.

build = validate every setting -> bank phase (units: read, decode, detect, segment, filter; one
ledger marker per unit) -> shard phase (plan all samples from the bank, render and write shards;
one marker per shard) -> finalize (merged rejects table, manifest). regen = the shard phase and
finalize on an existing bank, with new pair/shard settings: no source is read, no model runs.

Both phases are resumable: a rerun skips what its ledger marks done and redoes the rest from
scratch. The final bytes never depend on how many workers ran or in what order units finished. A
bank unit's marker records its inputs' identities; a rerun whose inputs changed, and an output
inside a folder a source reads, are refused (see :mod:`.inputs`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from scone_data import SCHEMA_VERSION, __version__, schemas
from scone_data.bank import partition
from scone_data.bank.store import (
    BankDamaged,
    ImageLoader,
    check_bank,
    part_paths,
    read_part,
    write_extra_rejects,
)
from scone_data.models import registry
from scone_data.pairs.card import dataset_card
from scone_data.runtime import config as C
from scone_data.runtime import inputs, outdir, storage
from scone_data.runtime.executor import Executor, open_executor
from scone_data.runtime.progress import progress
from scone_data.runtime.verify import CHUNK, ShardVerification
from scone_data.runtime.verify import summary as verify_summary
from scone_data.shards.files import atomic_open, write_bytes
from scone_data.shards.ledger import Ledger
from scone_data.shards.output import ManifestError, Output
from scone_data.shards.writer import ShardWriter

log = logging.getLogger("scone_data")


# -- settings ------------------------------------------------------------------------------------
def make_stages(cfg: dict[str, Any], problems: list[str]) -> list:
    """The bank phase's stages, in the order of the pipeline's steps (problems appended, not raised)."""
    from scone_data.runtime import steps

    return steps.make_stages(steps.steps_of(cfg), problems)


def make_sources(cfg: dict[str, Any], problems: list[str]) -> list:
    from scone_data.sources import make_source

    out = []
    for i, sc in enumerate(cfg["sources"]):
        if not isinstance(sc, dict):
            problems.append(f"sources[{i}]: must be a mapping with a type")
            continue
        sc = {"name": f"{sc.get('type', 'source')}{i}", **sc}
        try:
            src = make_source(sc)
        except (ValueError, TypeError) as e:
            problems.append(f"sources[{i}]: {e}")
            continue
        problems.extend(f"sources[{i}]: {p}" for p in src.validate())
        out.append(src)
    return out


def make_shard_settings(cfg: dict[str, Any], problems: list[str]):
    from scone_data.pairs import PairConfig

    pairs = C.build_dataclass(
        PairConfig, "pairs", {**(cfg.get("pairs") or {}), "seed": cfg["seed"]}, problems
    )
    shards = C.build_dataclass(C.ShardSettings, "shards", cfg.get("shards"), problems)
    return pairs, shards


def check(problems: list[str]) -> None:
    if problems:
        raise C.ConfigError(problems)


# -- bank phase ----------------------------------------------------------------------------------
def plan_units(sources: list, unit_size: int) -> list[tuple[int, list[tuple[int, str]]]]:
    refs = [(si, r) for si, s in enumerate(sources) for r in s.list_refs()]
    return [(u, refs[i : i + unit_size]) for u, i in enumerate(range(0, len(refs), unit_size))]


def run_bank_phase(
    cfg: dict[str, Any],
    sources: list,
    stages: list,
    rt: C.RuntimeSettings,
    bank_hash: str,
    ex: Executor | None = None,
) -> None:
    """The bank phase on ``ex`` (None: the executor ``rt`` names, for this call only)."""
    if ex is None:
        with open_executor(rt) as ex:
            return run_bank_phase(cfg, sources, stages, rt, bank_hash, ex)
    out = storage.path(cfg["output"])
    ledger = Ledger(out, "bank", bank_hash)
    units = plan_units(sources, rt.unit_size)
    # each marker records the identities of its unit's inputs: a resume whose inputs changed is
    # refused before anything is written (see runtime/inputs.py for why refuse, not redo)
    unit_ids = inputs.unit_inputs(sources, units)
    done = {uid: ledger.done(inputs.UNIT_NAME.format(uid)) for uid, _ in units}
    src_done = {i: ledger.done(f"source-{i:03d}") for i in range(len(sources))}
    src_ids = {i: src.source_inputs() for i, src in enumerate(sources)}
    changed = [
        line
        for i, src in enumerate(sources)
        for line in inputs.source_changed(src.name, src_done[i], src_ids[i])
    ]
    inputs.check_resume(out, ledger.dir, done, unit_ids, changed)
    todo = [u for u in units if not done[u[0]]]
    for i, src in enumerate(sources):  # source-level rejects (e.g. COCO annotations of unknown images)
        recs = src.source_rejects()  # complete reject records (Source.source_rejects' contract)
        if recs and not src_done[i]:
            write_extra_rejects(out, f"source-{i:03d}", recs)
            ledger.mark(f"source-{i:03d}", {"rejects": len(recs), "inputs": src_ids[i]})
    log.info(
        "bank phase: %d units (%d done before), %d images",
        len(units),
        len(units) - len(todo),
        sum(len(r) for _, r in units),
    )
    bar = progress(total=len(units), initial=len(units) - len(todo), desc="bank units", enabled=rt.progress)

    # the worker that finished a unit has written its parts; its record arrives only after that, so a
    # marker never names a part that is not on disk
    for rec in ex.run_units(out, sources, stages, todo):
        ledger.mark(inputs.UNIT_NAME.format(rec.unit), {**rec.counts(), "inputs": unit_ids[rec.unit]})
        bar.update(1)
    bar.close()


# -- shard phase ---------------------------------------------------------------------------------
def _max_pixels(cfg: dict[str, Any]) -> int:
    """The decode cap the bank was built with (the stage's own default when the config sets none)."""
    from scone_data.runtime.steps import steps_of
    from scone_data.stages import stage_types
    from scone_data.stages.decode import DecodeImages

    for st in steps_of(cfg):
        cls = stage_types().get(st.get("type"))
        if cls is not None and issubclass(cls, DecodeImages):
            return st.get("max_pixels", DecodeImages.max_pixels)
    return DecodeImages.max_pixels


def render_shard(
    out: str, name: str, slices: list, pairs, provenance: dict, max_pixels: int, verifier=None
) -> dict[str, Any]:
    """Render the plans of ``slices`` (see :func:`~scone_data.bank.partition.read_plans`) into shard
    ``name`` (runs in a worker); returns the shard's stats. ``verifier`` (a
    :class:`~scone_data.runtime.verify.ShardVerifier`, or None): judges each sample before it is
    written (see :mod:`.verify`)."""
    from scone_data.pairs import render_sample
    from scone_data.pairs.truth import check_sample

    plans, image_part = partition.read_plans(slices)
    loader = ImageLoader(image_part, max_pixels)
    writer = ShardWriter(Output(out).shard_dir, name)
    failed: Counter = Counter()
    judge = ShardVerification(verifier) if verifier is not None else None
    waiting: list = []  # samples that passed the truth check, waiting for the verifier (in plan order)

    def flush() -> None:
        for rec, mem in judge.run(waiting, failed):
            writer.write(rec, mem)
        waiting.clear()

    for plan in plans:
        try:
            record, members = render_sample(plan, loader, pairs, provenance)
        except Exception as e:  # a sample that cannot be drawn is counted, the shard goes on
            failed[f"render_error: {type(e).__name__}"] += 1
            log.warning("sample %s failed to render: %s", getattr(plan, "key", "?"), e)
            continue
        # the text checker reads the instruction back against what was drawn; a sample a person would
        # read as false is not written, and each of its reasons is counted
        reasons = check_sample(record, plan.scene, pairs.max_copy_paste)
        if reasons:
            failed.update(f"truth_{r}" for r in reasons)
            continue
        if judge is None:
            writer.write(record, members)
            continue
        waiting.append((record, members))
        if len(waiting) >= CHUNK:
            flush()
    if judge is not None:
        flush()
    stats = writer.close()
    stats["render_rejects"] = dict(failed)
    if judge is not None:
        stats["verify"] = judge.stats()
    return stats


def plan_bank(
    out: Path, pairs, ex: Executor, max_pixels: int, bank_root: Path
) -> tuple[list[dict], Counter, dict, list]:
    """Plan the bank of the build in ``bank_root`` into ``out`` by partition (see :mod:`scone_data.bank.partition`) on ``ex``:
    ``(plans per split of each partition, plan rejects, bank figures, duplicate_image rejects)``. The
    plans are in ``out/ledger/plan/``; the driver holds counts, never a per-subject list."""
    partition.remove(out)
    names, n_images = partition.count_images(bank_root)
    n_parts = partition.partition_count(n_images, pairs.plan_partition_images)
    step = partition.PARTS_PER_INDEX_TASK
    chunks = [(c, names[i : i + step]) for c, i in enumerate(range(0, len(names), step))]
    tasks = ((c, {"chunk": c, "parts": ps}) for c, ps in chunks)
    shared = {"out": str(out), "bank_root": str(bank_root), "n_parts": n_parts, "cfg": pairs}
    usable: Counter = Counter()
    pool: list = []
    val_seen: set[str] = set()
    for _, got in ex.map_tasks(partition.index_chunk, tasks, shared):
        usable.update({int(p): n for p, n in got["usable"].items()})
        pool = partition.merge_pool(pool, got["pool"])
        val_seen |= set(got["val_seen"])
    missing = sorted(set(pairs.val_images) - val_seen)
    if missing:
        raise C.ConfigError(
            [f"pairs.val_images: no image or group of this id in the bank: {', '.join(missing)}"]
        )
    if n_parts > 1:
        partition.write_pool(out, partition.pool_entries(pool))
    del pool
    weights = [usable[p] for p in range(n_parts)]
    shares = partition.apportion(pairs.num_samples, weights) if pairs.num_samples else [None] * n_parts
    cap = pairs.max_samples_per_label  # 0: no cap; a share is at least 1, never "no cap"
    caps = [max(1, c) for c in partition.apportion(cap, weights)] if cap and n_parts > 1 else [cap] * n_parts
    tasks = ((p, {"p": p, "num_samples": shares[p], "label_cap": caps[p]}) for p in range(n_parts))
    shared = {"out": str(out), "n_parts": n_parts, "cfg": pairs, "max_pixels": max_pixels}
    results = dict(ex.map_tasks(partition.plan_partition, tasks, shared))
    counts, rejects, figures, duplicates = [], Counter(), {}, []
    for p in range(n_parts):
        got = results[p]
        counts.append(got["splits"])
        rejects.update(got["rejects"])
        duplicates += got["duplicates"]
        for k, v in got["bank"].items():
            if isinstance(v, dict):
                figures.setdefault(k, Counter()).update(v)
            else:
                figures[k] = figures.get(k, 0) + v
    log.info("planned %d samples in %d partition(s) of %d images", sum(sum(c.values()) for c in counts),
             n_parts, n_images)  # fmt: skip
    return counts, rejects, figures, duplicates


def run_shard_phase(
    cfg: dict[str, Any],
    pairs,
    shards,
    rt: C.RuntimeSettings,
    provenance: dict,
    ex: Executor | None = None,
    bank_root: str | Path | None = None,
) -> tuple[dict[str, dict], Counter, dict, list]:
    """The shard phase on ``ex`` (None: the executor ``rt`` names, for this call only), from the bank
    under ``bank_root`` (None: the output's own): ``(shard stats, plan rejects, bank figures,
    duplicate_image rejects)``."""
    if ex is None:
        with open_executor(rt) as ex:
            return run_shard_phase(cfg, pairs, shards, rt, provenance, ex, bank_root)

    out = storage.path(cfg["output"])
    ledger = Ledger(out, "shards", provenance["config_hash"])
    t0 = time.perf_counter()
    # pixels for colour-histogram matching (intra look-alikes, subjects across a group's images)
    max_pixels = _max_pixels(cfg)
    bank_root = storage.path(bank_root) if bank_root is not None else out  # regen reads another build's bank
    counts, plan_rejects, figures, duplicates = plan_bank(out, pairs, ex, max_pixels, bank_root)
    log.info("planned in %.1fs", time.perf_counter() - t0)
    jobs = partition.shard_slices(out, counts, shards.samples_per_shard, Output.shard_name)
    done = {name: ledger.done(name) for name, _ in jobs}
    todo = [(n, sl) for n, sl in jobs if not done[n]]
    bar = progress(total=len(jobs), initial=len(jobs) - len(todo), desc="shards", enabled=rt.progress)

    # each task writes its own shard and returns its stats; the driver marks the ledger
    shared = {"out": str(out), "pairs": pairs, "provenance": provenance, "max_pixels": max_pixels}
    resources = None
    if shards.verifier is not None:
        shared["verifier"] = shards.verifier
        resources = {"num_gpus": registry.gpu_request(shards.verifier.num_gpus)}
    tasks = ((n, {"name": n, "slices": sl}) for n, sl in todo)
    for name, stats in ex.map_tasks(render_shard, tasks, shared, resources):
        done[name] = _finish_shard(ledger, name, stats)
        bar.update(1)
    bar.close()
    return {n: done[n] for n, _ in jobs}, plan_rejects, figures, duplicates


def _finish_shard(ledger: Ledger, name: str, stats: dict) -> dict:
    ledger.mark(name, stats)
    return ledger.done(name)


# -- finalize ------------------------------------------------------------------------------------
def finalize(
    cfg: dict[str, Any],
    kind: str,
    bank_root: str | Path,
    figures: dict[str, Any],
    duplicates: list[dict[str, Any]],
    shard_stats: dict[str, dict],
    plan_rejects: Counter,
    provenance: dict,
    verifier=None,
) -> dict[str, Any]:
    """Rejects table, manifest and dataset card of a finished shard phase. ``bank_root``: the build
    whose bank was planned; ``figures`` and ``duplicates``: what :func:`plan_bank` returned;
    ``verifier``: the :class:`~scone_data.runtime.verify.ShardVerifier` the shards ran, or None."""
    out = Output(cfg["output"])
    partition.remove(out.root)  # the plans are rendered; a rerun from here plans afresh
    reject_reasons, generated = write_rejects(out.rejects, bank_root, duplicates, generating_uses(cfg))
    tasks: Counter = Counter()
    splits: Counter = Counter()
    pair_rejects = Counter(plan_rejects)
    for name, st in shard_stats.items():
        tasks.update(st["tasks"])
        if st["samples"]:  # a shard whose samples were all rejected lists no split (as validate counts)
            splits[Output.split_of(name)] += st["samples"]
        pair_rejects.update(st.get("render_rejects", {}))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "scone_data_version": __version__,
        "kind": kind,
        # runtime settings never change the bytes, so they are not part of the recorded config
        "config": {**{k: v for k, v in cfg.items() if k != "runtime"}, "models": provenance["models"]},
        "config_hash": provenance["config_hash"],
        "seed": cfg["seed"],
        "images": figures["images"],
        "subjects": figures["subjects"],
        "samples": sum(tasks.values()),
        "tasks": dict(sorted(tasks.items())),
        "splits": dict(sorted(splits.items())),
        "rejects": dict(sorted(reject_reasons.items())),
        "pair_rejects": dict(sorted(pair_rejects.items())),
        "shards": [
            {"name": n, "samples": s["samples"], "bytes": s["bytes"], "sha256": s["sha256"]}
            for n, s in sorted(shard_stats.items())
        ],
    }
    if verifier is not None:  # absent without a verifier: the manifest of such a build is unchanged
        manifest["verify"] = verify_summary(verifier.info(), list(shard_stats.values()))
    if generated:  # absent without generated images, likewise
        manifest["generated"] = generated
    schemas.validate("manifest", manifest)
    # the shards in the manifest's order (sorted by name), records as written
    samples = out.iter_samples(want_images=False, manifest=manifest, upgrade=False)
    records = (rec for rec, _ in samples)
    reasons = Counter(manifest["rejects"]) + pair_rejects
    bank_info = {k: figures[k] for k in ("mask_sources", "images", "captioned", "licenses")}
    card = dataset_card(records, reasons, bank_info, manifest.get("verify"), manifest.get("generated"))
    write_bytes(out.card, card.encode())
    # the manifest is written last: its presence means the whole output is complete
    out.write_manifest(manifest)
    return manifest


def write_rejects(
    path: Path, bank_root: str | Path, duplicates: list[dict[str, Any]], uses: set[str] = frozenset()
) -> tuple[Counter, dict[str, dict[str, int]]]:
    """The merged rejects table at ``path``: every bank rejects part in order, one row group each, then
    the ``duplicate_image`` rejects; streamed, never the whole table in memory. Returns its reasons and
    the generated images' account (:func:`generated_account`), read on the way, of the ``uses`` the
    pipeline's steps generate and of any other the bank holds."""
    schema = schemas.arrow_schema("reject")
    reasons: Counter = Counter()
    account: dict[str, Counter] = {}
    images_of = {p.name: p for p in part_paths(bank_root, "images")}
    with atomic_open(path, "wb") as f:
        with pq.ParquetWriter(f, schema, compression="zstd", write_statistics=True, store_schema=True) as w:
            # every rejects part, in name order (units' parts, then those found outside any unit)
            for part in part_paths(bank_root, "rejects"):
                recs = read_part(part, "rejects")
                if part.name in images_of:
                    generated_account(account, images_of.pop(part.name), recs)
                if recs:
                    w.write_table(schemas.to_table("reject", recs))
                    reasons.update(r["reason"] for r in recs)
            if duplicates:
                w.write_table(schemas.to_table("reject", duplicates))
                reasons.update(r["reason"] for r in duplicates)
    for part in images_of.values():  # a unit's images part without its rejects part: nothing rejected
        generated_account(account, part, [])
    out = {}
    for use, c in sorted(account.items()):
        if use in uses or c["kept"] or c["rejected"]:  # a build that generates nothing has no account
            out[use] = {"photos": c["photos"], "kept": c["kept"], "rejected": c["rejected"],
                        "not_edited": c["photos"] - c["kept"] - c["rejected"]}  # fmt: skip
    return reasons, out


def generating_uses(cfg: dict[str, Any]) -> set[str]:
    """The ``generation.use`` of each step of ``cfg`` that makes images (its class's ``generates``)."""
    from scone_data.runtime.steps import steps_of
    from scone_data.stages import stage_types

    kinds = [st.get("type") for st in steps_of(cfg) if isinstance(st, dict)]
    return {g for k in kinds if (g := getattr(stage_types().get(k), "generates", None))}


def generated_account(account: dict[str, Counter], images_part: Path, rejects: list[dict[str, Any]]) -> None:
    """Add one bank unit's generated images to ``account`` (use -> photos, kept, rejected): the photos
    of the part's images, the generated images it kept, and the row rejects of generated images whose
    photo it kept (a generated image and its photo share a unit). Each photo has at most one generated
    image per use, so ``photos - kept - rejected`` photos had none (``insert`` found no label to
    insert, ``repose`` no subject seen whole)."""
    from scone_data.stages.generated import GENERATED, generated_use

    uris = pq.read_table(storage.parquet_source(images_part), columns=["uri"]).column("uri").to_pylist()
    photos = {u for u in uris if generated_use(u) is None}
    for use, (_, suffix) in GENERATED.items():
        c = account.setdefault(use, Counter())
        c["photos"] += len(photos)
        c["kept"] += sum(1 for u in uris if u.endswith(suffix))
        c["rejected"] += sum(
            1
            for r in rejects
            if r["uri"].endswith(suffix)
            and not r["reason"].startswith("subject_")  # a subject's reject, not the image's
            and r["uri"][: -len(suffix)] in photos
        )


def _provenance(cfg: dict[str, Any], models: list[dict], bank_hash: str, pairs, shards) -> dict:
    # the verifier's settings join the hash only when set: a build without one keeps its old hash
    judge = [shards.verifier] if shards.verifier is not None else []
    return {
        "builder_version": __version__,
        # the samples depend on the bank and on the pair/shard settings: one hash over all of them
        "config_hash": C.settings_hash(__version__, bank_hash, pairs, shards, *judge),
        "seed": cfg["seed"],
        "source": "scone-data",
        "models": models,
    }


def build(cfg: dict[str, Any], overwrite: bool = False, reads: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run a whole build described by a loaded config; returns the manifest.

    ``overwrite`` replaces an earlier output instead of resuming it (see :mod:`.outdir`: refused for
    anything that is not an output of ours or that holds a source or one of ``reads``, e.g. the
    pipeline file; the old output is deleted only once the new one is complete)."""
    problems: list[str] = []
    sources = make_sources(cfg, problems)
    stages = make_stages(cfg, problems)
    pairs, shards = make_shard_settings(cfg, problems)
    rt = C.build_dataclass(C.RuntimeSettings, "runtime", cfg.get("runtime"), problems)
    check(problems)  # every setting is checked before the output is touched
    out = storage.path(cfg["output"])
    inputs.check_outside_sources(out, sources)  # a rerun would read the output back as input
    read_paths = outdir.input_paths([cfg.get("sources"), list(reads)])
    with outdir.claim(out, "build", overwrite=overwrite, reads=read_paths):
        models = [st.model_info() for st in stages if hasattr(st, "model_info")]
        # unit_size decides which images share a part file, so it is part of the bank's identity
        bank_hash = C.settings_hash(__version__, sources, stages, {"unit_size": rt.unit_size})
        with open_executor(rt) as ex:
            run_bank_phase(cfg, sources, stages, rt, bank_hash, ex)
            prov = _provenance(cfg, models, bank_hash, pairs, shards)
            shard_stats, plan_rejects, figures, dups = run_shard_phase(cfg, pairs, shards, rt, prov, ex)
        return finalize(cfg, "build", out, figures, dups, shard_stats, plan_rejects, prov, shards.verifier)


def regen(
    bank_dir: str | Path, output: str | Path, overrides: list[str] | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """New shards in ``output`` from the bank of an earlier build, with ``overrides`` applied."""
    bank_dir, output = storage.path(bank_dir), storage.path(output)
    if not Output(bank_dir).bank.is_dir():
        raise C.ConfigError([f"{bank_dir}: no bank/ directory (not the output of a build)"])
    try:
        src_manifest = Output(bank_dir).read_manifest(validate=False)  # only config and its hash are used
        base = dict(src_manifest["config"])
        src_hash = src_manifest["config_hash"]
    except ManifestError as e:
        if e.missing:
            raise C.ConfigError(
                [f"{bank_dir}: no manifest.json (the build did not finish; rerun it first)"]
            ) from None
        why = f"{type(e.error).__name__}: {e.error}"
        raise C.ConfigError([f"{bank_dir}/manifest.json is not a scone-data manifest ({why})"]) from None
    except (ValueError, KeyError, TypeError) as e:
        why = f"{type(e).__name__}: {e}"
        raise C.ConfigError([f"{bank_dir}/manifest.json is not a scone-data manifest ({why})"]) from None
    models = base.pop("models", [])
    base.pop("bank", None)
    from scone_data.runtime.steps import step_names

    bank_keys = set(C.BANK_SECTIONS) | step_names()  # a step's name (segment.iterations=2) too
    bad = [k for k in C.parse_overrides(overrides or []) if k in bank_keys]
    if bad:
        raise C.ConfigError(
            [f"{k}: a bank setting; regen only changes pairs, shards, seed and runtime" for k in bad]
        )
    cfg = C.load_config(None, overrides, base={**base, "output": str(output)})
    problems: list[str] = []
    pairs, shards = make_shard_settings(cfg, problems)
    rt = C.build_dataclass(C.RuntimeSettings, "runtime", cfg.get("runtime"), problems)
    check(problems)  # every setting is checked before the output is touched
    if output.resolve() == bank_dir.resolve():
        raise C.ConfigError(["output: regen writes to a new directory, not into the build it reads"])
    _, damaged = check_bank(bank_dir, src_manifest)  # shards from a damaged bank would lose data
    if damaged:
        raise BankDamaged(damaged)
    with outdir.claim(output, "regen", overwrite=overwrite, reads=[bank_dir]):
        prov = _provenance(cfg, models, src_hash, pairs, shards)
        with open_executor(rt) as ex:
            stats, plan_rejects, figures, dups = run_shard_phase(cfg, pairs, shards, rt, prov, ex, bank_dir)
        cfg["bank"] = str(bank_dir)
        return finalize(cfg, "regen", bank_dir, figures, dups, stats, plan_rejects, prov, shards.verifier)
