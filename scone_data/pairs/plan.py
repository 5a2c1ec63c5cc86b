"""Planning: from the subject bank to a deterministic list of :class:`SamplePlan` (no pixels touched).

A plan holds everything a worker needs to render a sample (masks as RLE, every layout and augmentation
decision, the instruction), so rendering needs no bank lookups and no randomness of its own beyond the
plan's seed. The task mix is met by quotas: the number of samples of each task is fixed up front
(largest remainder), the slots are shuffled with the seeded RNG and then filled one by one.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter

from scone_data.bank.index import BankIndex
from scone_data.pairs.config import PairConfig
from scone_data.pairs.quota import largest_remainder
from scone_data.pairs.sample_plan import ReferencePlan, SamplePlan
from scone_data.pairs.tasks import TaskPlanner

# A slot whose draws keep failing (no distractor, ambiguous expression, caps) is given up after this
# many tries; each failed try is counted under its reason, the given-up slot as "unfilled:<task>".
MAX_ATTEMPTS_PER_SLOT = 12


def task_quotas(mix: dict[str, float], n: int) -> dict[str, int]:
    """Samples per task summing to ``n`` (largest remainder; ties by task order)."""
    return dict(zip(mix, largest_remainder([w * n for w in mix.values()], n)))


def sample_key(seed: int, task: str, refs: list[ReferencePlan], target: str | None = None) -> tuple[str, int]:
    """16-hex key over the seed, task and every candidate of every reference, and an integer plan seed.
    ``target``: a re-posed target's image id, which the key holds too (its references are those of a
    sample of its photo; a photo's own target is known from its references and is left out)."""
    parts = [str(seed), task] + [",".join(c.subject_id for c in r.candidates) + f"/{r.kind}" for r in refs]
    parts += [f"target={target}"] if target is not None else []
    h = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return h[:16], int(h[16:32], 16) & (2**63 - 1)


def plan_samples(
    subjects: list[dict], images: dict[str, dict], cfg: PairConfig, *, load_image=None, others=()
) -> tuple[list[SamplePlan], Counter]:
    """Plan up to ``cfg.num_samples`` samples from Subject records and their SourceImage records.

    ``load_image`` (image_id -> HxWx3 uint8 RGB) is needed for ``intra_strategy="histogram"``; with it,
    subjects of group sources are matched by colour histogram, without it by colour name and size.
    ``others``: subject rejects that kept their box (``{"image_id", "label", "box_xyxy"}``): still in the
    photo, so targets leave them out as they leave out usable subjects.
    Returns the plans in slot order and a Counter of reasons for everything not planned (subjects
    filtered out, failed draws, unfilled slots) and of notes (group references that found no match,
    rewrites that were not used). Raises ValueError listing every bad setting.
    """
    problems = cfg.validate()
    if cfg.intra_strategy in ("histogram", "embedding") and load_image is None:
        problems.append(f"intra_strategy: {cfg.intra_strategy!r} needs plan_samples(..., load_image=...)")
    if problems:
        raise ValueError("invalid PairConfig: " + "; ".join(problems))
    bank = BankIndex(subjects, images, cfg, others)
    return plan_from_index(bank, cfg, load_image)


def plan_from_index(
    bank: BankIndex, cfg: PairConfig, load_image=None, rng_name: str | None = None
) -> tuple[list[SamplePlan], Counter]:
    """:func:`plan_samples` on a built index: samples anchored on ``bank.anchor_ids``, drawn with
    ``random.Random(rng_name)`` (None: the seed's own name, as a whole-bank plan). Planning by
    partition (:mod:`scone_data.bank.partition`) calls it once per partition."""
    rejects: Counter = Counter(bank.rejects)
    rng = random.Random(rng_name or f"scone-data/pairs/{cfg.seed}")
    planner = TaskPlanner(bank, cfg, load_image)
    n = cfg.num_samples or round(cfg.samples_per_image * len(bank.anchor_ids))
    quotas = task_quotas(cfg.normalised_mix(), n)
    slots = [t for t, q in quotas.items() for _ in range(q)]
    rng.shuffle(slots)
    pools = {t: planner.eligible_images(t) for t in set(slots)}
    # ``val_min_per_task`` slots of each task are filled first and only from validation images, so
    # the (small) val split holds every task type; they are part of the task's quota, not extra
    val_slots = [t for t, q in quotas.items() for _ in range(min(q, cfg.val_min_per_task))]
    for t in val_slots:
        slots.remove(t)
    val_pools = {t: [i for i in pools[t] if bank.split_of_image(i) == "val"] for t in set(val_slots)}
    image_uses: Counter = Counter()
    label_uses: Counter = Counter()
    keys: set[str] = set()
    plans: list[SamplePlan] = []
    for val_only, task in [(True, t) for t in val_slots] + [(False, t) for t in slots]:
        pool = val_pools[task] if val_only else pools[task]
        for _ in range(MAX_ATTEMPTS_PER_SLOT):
            image_id = _draw_image(pool, image_uses, cfg.max_samples_per_image, rng)
            if image_id is None:
                rejects[f"no_eligible_{'val_' if val_only else ''}image:{task}"] += 1
                break
            out = planner.plan(task, image_id, rng, label_uses)
            if isinstance(out, str):
                rejects[out] += 1
                continue
            refs, targets, names, (tw, th), crop, scene = out
            key, seed = sample_key(cfg.seed, task, refs, image_id if image_id in bank.reposed else None)
            if key in keys:
                rejects["duplicate_sample"] += 1
                continue
            keys.add(key)
            labels = [t.label for t in targets]
            text, caption = planner.instruction(
                task, names, labels, image_id, refs, crop is not None, random.Random(seed)
            )
            split = bank.split_of_image(image_id)
            plans.append(
                SamplePlan(
                    key, task, split, image_id, tw, th, refs, targets, text, seed, crop, scene, caption
                )
            )
            image_uses[image_id] += 1
            rejects.update(planner.notes)
            label_uses.update({t.label for t in targets})
            break
        else:
            rejects[f"unfilled{'_val' if val_only else ''}:{task}"] += 1
    if cfg.rewrite_model:
        from scone_data.pairs.rewrite import load_generator, rewrite_plans

        generate = load_generator(cfg.rewrite_model, cfg.rewrite_max_new_tokens)
        plans = rewrite_plans(plans, generate, cfg.rewrite_batch_size, rejects)
    return plans, rejects


def _draw_image(pool: list[str], uses: Counter, cap: int, rng: random.Random) -> str | None:
    """A random image of ``pool`` under ``cap`` samples; capped images leave the pool for good
    (swap-remove, so a draw stays O(1) on large banks). None when the pool is exhausted."""
    while pool:
        i = rng.randrange(len(pool))
        if not cap or uses[pool[i]] < cap:
            return pool[i]
        pool[i] = pool[-1]
        pool.pop()
    return None
