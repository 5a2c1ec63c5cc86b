"""Re-posed targets in planning: a kept re-posed image (a repose step's, ``generation.use`` "repose")
anchors single-subject samples whose reference is always cut from the real photo's subject it was made
from; an inserted look-alike never anchors. The generated image here is drawn by hand (the subject's
shape and colour at another place, size and background), as an edit model would return it."""

from collections import Counter

import numpy as np
import pytest
from pairs_bank import SHAPE_RGB, image_record, make_bank, shape_mask, subject_record

from scone_data.pairs import PairConfig, plan_samples, render_sample
from scone_data.pairs.plan import sample_key
from scone_data.pairs.tasks import TaskPlanner
from scone_data.pairs.truth import check_sample

PROV = {"builder_version": "test", "config_hash": "0" * 16, "seed": 0, "source": "test", "models": []}
PARENT, REP, INS = "pet", "pet-rep", "pet-ins"
CAPTION = "The kite on a sandy beach."


def _drawn(objects, bg, h=240, w=320):
    img = np.full((h, w, 3), bg, np.uint8)
    for _, color, box in objects:
        img[shape_mask(h, w, box, "ellipse") > 0] = SHAPE_RGB[color]
    return img


@pytest.fixture(scope="module")
def reposed():
    subjects, images, pixels = make_bank(n_synthetic=12, labels=("ball", "box", "ring", "star"))
    # the photo: a green kite and a red ball; its re-posed target: the kite alone, larger, elsewhere,
    # on another background; its inserted look-alike: a second kite beside the first
    photo = [("kite", "green", (40, 60, 110, 130)), ("ball", "red", (200, 120, 250, 170))]
    rep = [("kite", "green", (150, 40, 280, 170))]
    ins = [*photo, ("kite", "green", (120, 60, 190, 130))]
    gen = {"parent_image_id": PARENT, "label": "kite", "model": "hand", "seed": 0}
    for iid, objs, bg, caption, extra in (
        (PARENT, photo, 128, "A kite and a ball.", None),
        (REP, rep, 200, CAPTION, {**gen, "use": "repose", "parent_subject_id": f"{PARENT}-000", "scene": "on a sandy beach"}),
        (INS, ins, 128, "A kite and a ball.", {**gen, "use": "insertion", "side": "right"}),
    ):  # fmt: skip
        pixels[iid] = _drawn(objs, bg)
        images[iid] = {**image_record(iid, pixels[iid], caption, group_id=PARENT), "generation": extra}
        subjects += [
            subject_record(iid, n, lb, b, pixels[iid], "ellipse") for n, (lb, _, b) in enumerate(objs)
        ]
    return subjects, images, pixels


def cfg(**kw):
    base = {"distractor_strategy": "random", "val_fraction": 0.0, "ref_size": 256, "use_caption_prob": 1.0}
    return PairConfig(**{**base, **kw})


def test_a_re_posed_target_is_referenced_from_its_photo(reposed):
    subjects, images, pixels = reposed
    c = cfg(num_samples=400, max_samples_per_image=0)
    plans, rejects = plan_samples(subjects, images, c, load_image=pixels.__getitem__)
    anchored = Counter(p.image_id for p in plans)
    assert anchored[INS] == 0  # an inserted look-alike is never a target
    mine = [p for p in plans if p.image_id == REP]
    assert {p.task for p in mine} >= {"composition_single", "distinction_single_cross"}, anchored
    for p in mine:
        assert "multi" not in p.task
        (t,) = p.target_boxes
        assert t.label == "kite" and t.subject_id == f"{REP}-000"
        (ref,) = p.references
        (cand,) = [x for x in ref.candidates if x.intended]
        # the reference is the real photo's kite, never the generated target's
        assert cand.subject_id == f"{PARENT}-000" and cand.image_id == PARENT and ref.source == "group"
        assert all(x.image_id != REP for x in ref.candidates)
        if p.caption is not None:  # woven from the generated image's caption: the scene is named
            assert p.caption["text"] == CAPTION and "on a sandy beach" in p.instruction
    assert any(p.caption is not None for p in mine)  # the scene-naming path above did run
    keys = [p.key for p in plans]
    assert len(keys) == len(set(keys))
    # rendered, the target is the generated image and the sample reads true
    for p in mine[:4]:
        rec, members = render_sample(p, pixels.__getitem__, c, PROV)
        assert rec["target"]["image_id"] == REP
        assert check_sample(rec, p.scene) == [], (rec["instruction"], check_sample(rec, p.scene))


def test_multi_tasks_and_a_missing_parent(reposed):
    subjects, images, pixels = reposed
    from scone_data.bank.index import BankIndex

    c = cfg()
    planner = TaskPlanner(BankIndex(subjects, images, c), c)
    assert REP in planner.eligible_images("composition_single")
    assert REP not in planner.eligible_images("composition_multi")
    assert INS not in planner.eligible_images("composition_single")
    # the photo's kite unusable (too small for the planner): the re-posed target plans nothing
    tiny = [s for s in subjects if s["subject_id"] != f"{PARENT}-000"]
    planner = TaskPlanner(BankIndex(tiny, images, c), c)
    import random

    assert planner.plan("composition_single", REP, random.Random(0), Counter()) == "repose_parent_unusable"


def test_the_key_holds_a_re_posed_target(reposed):
    subjects, images, pixels = reposed
    plans, _ = plan_samples(subjects, images, cfg(num_samples=60), load_image=pixels.__getitem__)
    p = plans[0]
    assert sample_key(0, p.task, p.references) != sample_key(0, p.task, p.references, target=REP)
    assert sample_key(0, p.task, p.references) == sample_key(0, p.task, p.references, target=None)
