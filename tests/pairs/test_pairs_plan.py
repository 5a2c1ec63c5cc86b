"""Planning on small real data: the six tasks, the split, the task mix, caps, determinism, rejects."""

import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pairs_bank import SHAPE_LABELS, image_record, make_bank, subject_record
from pycocotools import mask as mask_utils

from scone_data.bank.records import split_of
from scone_data.pairs import TASKS, PairConfig, plan_samples
from scone_data.pairs.expressions import COLOR_DOMINANT, COLOR_OTHER_MAX, POS_MARGIN_FRAC, SIZE_RATIO

KEY_OK = __import__("re").compile(r"^[A-Za-z0-9_-]+$")


@pytest.fixture(scope="module")
def bank():
    return make_bank(n_synthetic=8)


def cfg(**kw):
    return PairConfig(**{"distractor_strategy": "random", "val_fraction": 0.0, **kw})


def test_all_six_tasks_have_the_right_shape(bank):
    subjects, images, _ = bank
    plans, rejects = plan_samples(
        subjects, images, cfg(num_samples=90, max_samples_per_image=0, crop_prob=0.5)
    )
    by_task = Counter(p.task for p in plans)
    assert set(by_task) == set(TASKS), (by_task, rejects)
    labels_in = {iid: {s["label"] for s in subjects if s["image_id"] == iid} for iid in images}
    kinds = Counter()
    for p in plans:
        assert KEY_OK.match(p.key) and "." not in p.key
        multi = "multi" in p.task
        assert (2 <= len(p.references) <= 3) if multi else len(p.references) == 1
        assert [t.ref_index for t in p.target_boxes] == list(range(len(p.references)))
        for r, t in zip(p.references, p.target_boxes):
            kinds[r.kind] += 1
            intended = [c for c in r.candidates if c.intended]
            assert len(intended) == 1 and intended[0].subject_id == t.subject_id
            assert intended[0].image_id == p.image_id  # every intended subject comes from the target
            others = [c for c in r.candidates if not c.intended]
            if p.task.startswith("composition"):
                assert r.kind == "cutout" and not others and r.expression is None
            elif p.task.endswith("cross"):
                assert r.kind == "canvas" and 1 <= len(others) <= 3
                # Distractor labels are absent from the target image, so the label alone decides.
                assert not {c.label for c in others} & labels_in[p.image_id]
                assert r.expression.endswith(t.label)
            else:
                assert r.kind in ("canvas", "crop")
                assert any(c.label == t.label for c in others)
                assert t.label in r.expression
                _check_expression_independently(r, intended[0])
        if multi and p.task.startswith("distinction"):
            assert len({t.label for t in p.target_boxes}) == len(p.target_boxes)
    assert kinds["crop"] > 0 and kinds["canvas"] > 0  # both kinds of intra reference are exercised


def _check_expression_independently(ref, target):
    """Re-derive single-predicate expressions from the boxes, without the library's selector."""
    spec = ref.expression_spec
    if len(spec) != 1:
        return
    same = [c for c in ref.candidates if c.label == target.label and c is not target]
    m = POS_MARGIN_FRAC * max(ref.width, ref.height)
    cx = lambda c: (c.box[0] + c.box[2]) / 2  # noqa: E731
    cy = lambda c: (c.box[1] + c.box[3]) / 2  # noqa: E731
    kind = spec[0]
    if kind[:3] == ("rank", "left", 1):
        assert all(cx(target) < cx(o) - m for o in same)
    elif kind[:3] == ("rank", "right", 1):
        assert all(cx(target) > cx(o) + m for o in same)
    elif kind[:3] == ("rank", "top", 1):
        assert all(cy(target) < cy(o) - m for o in same)
    elif kind[:3] == ("rank", "bottom", 1):
        assert all(cy(target) > cy(o) + m for o in same)
    elif kind == ("size", "largest"):
        assert all(target.area >= SIZE_RATIO * o.area for o in same)
    elif kind == ("size", "smallest"):
        assert all(target.area * SIZE_RATIO <= o.area for o in same)
    elif kind[0] == "color":
        share = lambda c: dict(c.colors).get(kind[1], 0.0)  # noqa: E731
        assert share(target) >= COLOR_DOMINANT and all(share(o) < COLOR_OTHER_MAX for o in same)


def test_split_by_image_without_leakage():
    subjects, images, _ = make_bank(n_synthetic=40, seed=1, labels=SHAPE_LABELS[:3])
    plans, _ = plan_samples(subjects, images, cfg(num_samples=200, val_fraction=0.4))
    used = {"train": set(), "val": set()}
    for p in plans:
        assert split_of(images[p.image_id], 0.4) == p.split
        for r in p.references:
            for c in r.candidates:
                assert split_of(images[c.image_id], 0.4) == p.split
                used[p.split].add(c.image_id)
        used[p.split].add(p.image_id)
    assert used["train"] and used["val"]
    assert not used["train"] & used["val"]


def test_group_id_keeps_a_group_on_one_side():
    sides = {split_of({"image_id": f"img{i}", "group_id": "video7"}, 0.5) for i in range(50)}
    assert len(sides) == 1
    assert len({split_of({"image_id": f"img{i}"}, 0.5) for i in range(50)}) == 2


def test_val_images_and_a_val_quota_per_task():
    """Named images are held in val (on top of the hashed fraction, never leaking into train), and
    ``val_min_per_task`` fills one slot of every task from val images first: a val split of four of 40
    images holds all six task types, where the plain draw leaves most of them out."""
    subjects, images, _ = make_bank(n_synthetic=40, seed=1, labels=SHAPE_LABELS[:3])
    labels = {i: {s["label"] for s in subjects if s["image_id"] == i} for i in images}
    ids = sorted(images, key=lambda i: (-len(labels[i]), i))  # multi tasks need several labels
    held = ids[:4]
    assert split_of(images[ids[0]], 0.0, held) == "val" and split_of(images[ids[-1]], 0.0, held) == "train"
    base = dict(num_samples=60, max_samples_per_image=0, crop_prob=0.5, val_images=held)
    plain, plain_rejects = plan_samples(subjects, images, cfg(**base))
    quota, rejects = plan_samples(subjects, images, cfg(**base, val_min_per_task=1))
    for plans, rej in ((plain, plain_rejects), (quota, rejects)):
        # the quota takes slots of each task's share, it adds none: every slot is planned or counted
        unfilled = sum(v for k, v in rej.items() if k.startswith(("unfilled", "no_eligible")))
        assert len(plans) + unfilled == 60, rej
        for p in plans:
            used = {p.image_id} | {c.image_id for r in p.references for c in r.candidates}
            assert {images[i]["image_id"] in held for i in used} == {p.split == "val"}, p
    val_tasks = Counter(p.task for p in quota if p.split == "val")
    assert set(val_tasks) == set(TASKS), (val_tasks, rejects)
    assert len({p.task for p in plain if p.split == "val"}) < len(TASKS)
    with pytest.raises(ValueError, match="no image or group of this id in the bank: nope"):
        plan_samples(subjects, images, cfg(val_images=["nope"]))
    with pytest.raises(ValueError, match="val_min_per_task"):
        plan_samples(subjects, images, cfg(val_min_per_task=-1))


def test_task_mix_within_two_percent_over_1000_samples():
    subjects, images, _ = make_bank(n_synthetic=300, seed=2, labels=SHAPE_LABELS)
    mix = {"composition_single": 3, "composition_multi": 2, "distinction_single_cross": 2,
           "distinction_single_intra": 1.5, "distinction_multi_cross": 1, "distinction_multi_intra": 0.5}  # fmt: skip
    plans, rejects = plan_samples(subjects, images, cfg(num_samples=1000, task_mix=mix, val_fraction=0.1))
    assert len(plans) == 1000, rejects
    got = Counter(p.task for p in plans)
    total = sum(mix.values())
    for t, w in mix.items():
        assert abs(got[t] / 1000 - w / total) <= 0.02, (t, got[t])
    assert len({p.key for p in plans}) == 1000


def test_same_inputs_same_plans_and_seed_matters(bank):
    subjects, images, _ = bank
    a, ra = plan_samples(subjects, images, cfg(num_samples=40, seed=5))
    b, rb = plan_samples(
        list(reversed(subjects)), dict(reversed(images.items())), cfg(num_samples=40, seed=5)
    )
    assert a == b and ra == rb  # input order does not matter either
    assert pickle.loads(pickle.dumps(a)) == a
    c, _ = plan_samples(subjects, images, cfg(num_samples=40, seed=6))
    assert [p.key for p in a] != [p.key for p in c]


def test_keys_do_not_depend_on_the_process():
    """Planning in a fresh interpreter with another hash seed gives the same keys (no set-order leaks)."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from pairs_bank import make_bank;"
        "from scone_data.pairs import PairConfig, plan_samples;"
        "s, i, _ = make_bank(n_synthetic=8);"
        "p, _ = plan_samples(s, i, PairConfig(distractor_strategy='random', val_fraction=0.3, num_samples=40));"
        "print(','.join(x.key + x.instruction for x in p))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    subjects, images, _ = make_bank(n_synthetic=8)
    plans, _ = plan_samples(subjects, images, cfg(val_fraction=0.3, num_samples=40))
    assert out.stdout.strip() == ",".join(x.key + x.instruction for x in plans)


def test_caps_per_image_and_per_label(bank):
    subjects, images, _ = bank
    plans, rejects = plan_samples(subjects, images, cfg(num_samples=120, max_samples_per_image=3))
    assert max(Counter(p.image_id for p in plans).values()) <= 3
    assert sum(v for k, v in rejects.items() if k.startswith(("no_eligible_image", "unfilled"))) > 0
    plans, rejects = plan_samples(subjects, images, cfg(num_samples=120, max_samples_per_label=4))
    per_label = Counter(lb for p in plans for lb in {t.label for t in p.target_boxes})
    assert max(per_label.values()) <= 4
    assert rejects["label_cap_reached"] > 0


def test_small_subjects_are_counted_and_never_used(bank):
    subjects, images, _ = bank
    small = set()
    for s in subjects:
        m = mask_utils.decode({"size": s["mask_rle"]["size"], "counts": s["mask_rle"]["counts"].encode()})
        ys, xs = np.nonzero(m)
        if min(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) < 50:
            small.add(s["subject_id"])
    assert small
    plans, rejects = plan_samples(subjects, images, cfg(num_samples=40, min_subject_side_px=50))
    assert rejects["subject_too_small"] == len(small)
    shown = {c.subject_id for p in plans for r in p.references for c in r.candidates}
    assert shown and not shown & small


def test_ambiguous_instances_are_rejected_and_counted():
    # Two same-colour, same-size dots 10 px apart: no position, size or colour tells them apart.
    img = np.full((200, 300, 3), 90, np.uint8)
    img[60:140, 100:190] = (200, 30, 30)
    subjects = [
        subject_record("twins", 0, "dot", (100, 60, 180, 140), img, "ellipse"),
        subject_record("twins", 1, "dot", (110, 60, 190, 140), img, "ellipse"),
    ]
    images = {"twins": image_record("twins", img)}
    c = cfg(num_samples=5, task_mix={"distinction_single_intra": 1.0}, crop_prob=1.0)
    plans, rejects = plan_samples(subjects, images, c)
    assert plans == []
    # the overlapping twins also make a clean target impossible: either reason stops every draw
    assert rejects["expression_not_unique"] + rejects["target_instance_overlaps"] > 0
    assert rejects["unfilled:distinction_single_intra"] == 5


def test_validate_names_every_bad_field(bank):
    bad = PairConfig(seed=-1, task_mix={"bogus": 1.0}, val_fraction=1.5, ref_size=10, max_distractors=9,
                     distractor_strategy="magic", backgrounds=("lava",))  # fmt: skip
    problems = bad.validate()
    for field in (
        "seed",
        "task_mix",
        "val_fraction",
        "ref_size",
        "max_distractors",
        "distractor_strategy",
        "backgrounds",
    ):
        assert any(p.startswith(field) or f"/{field}" in p for p in problems), (field, problems)
    assert PairConfig().validate() == []
    with pytest.raises(ValueError, match="val_fraction"):
        plan_samples(bank[0], bank[1], bad)


def test_light_subjects_never_get_a_light_background():
    """A white napkin on a white canvas is no reference (seen on the truth photos)."""
    img = np.full((200, 300, 3), 60, np.uint8)
    img[40:160, 40:140] = (250, 250, 250)  # a white subject
    img[40:160, 180:280] = (30, 60, 220)  # a blue one
    subjects = [
        subject_record("lights", 0, "napkin", (40, 40, 140, 160), img, "ellipse"),
        subject_record("lights", 1, "cup", (180, 40, 280, 160), img, "ellipse"),
    ]
    assert subjects[0]["attributes"]["colors"][0]["name"] == "white"
    images = {"lights": image_record("lights", img)}
    plans, _ = plan_samples(subjects, images, cfg(num_samples=12, task_mix={"composition_single": 1.0},
                                                  max_samples_per_image=0))  # fmt: skip
    seen = {"napkin": set(), "cup": set()}
    for p in plans:
        for r in p.references:
            seen[r.candidates[0].label].add(sum(r.background[1]) / 3)
    assert seen["napkin"] and max(seen["napkin"]) <= 180
    assert max(seen["cup"]) > 180  # the others still get the whole palette
