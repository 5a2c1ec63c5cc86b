"""Distractor mining: label similarity from the bundled MiniLM model, colour-histogram ordering."""

import random

import numpy as np
from pairs_bank import make_bank, shape_mask

from scone_data.pairs import PairConfig, plan_samples
from scone_data.pairs.distractors import NEAR_FAR_POOL, LabelSpace, color_histogram, embed_labels, order_intra


def test_semantic_ranking_puts_related_labels_first():
    space = LabelSpace(["cat", "dog", "rocket", "spoon", "cup", "mug", "tower", "coin"], "semantic", "near")
    assert space.ranked("cat", set())[0] == "dog"
    assert space.ranked("cup", set())[0] == "mug"
    assert "rocket" not in space.ranked("cat", {"rocket"})
    far = LabelSpace(space.labels, "semantic", "far")
    rng = random.Random(0)
    for _ in range(20):
        (lb,) = far.draw("cup", set(), 1, rng)
        assert lb in space.ranked("cup", set())[-NEAR_FAR_POOL:]
    v = embed_labels(["cat", "cat"])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_near_difficulty_in_planning():
    subjects, images, _ = make_bank(n_synthetic=4)
    c = PairConfig(distractor_difficulty="near", val_fraction=0.0, num_samples=30, max_samples_per_image=0,
                   task_mix={"distinction_single_cross": 1.0})  # fmt: skip
    assert c.distractor_strategy == "semantic"
    plans, _ = plan_samples(subjects, images, c)
    assert plans
    labels = sorted({s["label"] for s in subjects})
    space = LabelSpace(labels, "semantic", "near")
    for p in plans:
        (ref,) = p.references
        t = next(x for x in ref.candidates if x.intended)
        present = {s["label"] for s in subjects if s["image_id"] == p.image_id}
        near = space.ranked(t.label, present)[: max(NEAR_FAR_POOL, len(ref.candidates) - 1)]
        assert all(x.label in near for x in ref.candidates if not x.intended)


def test_color_histogram_orders_look_alikes_first():
    img = np.full((100, 300, 3), 128, np.uint8)
    boxes = {"a": (10, 10, 80, 80), "b": (110, 10, 180, 80), "c": (210, 10, 280, 80)}
    img[10:80, 10:80] = (220, 30, 30)
    img[10:80, 110:180] = (30, 40, 220)
    img[10:80, 210:280] = (200, 40, 35)
    hists = {k: color_histogram(img, shape_mask(100, 300, b, "ellipse")) for k, b in boxes.items()}
    assert np.isclose(hists["a"].sum(), 1.0)

    class S:
        def __init__(self, sid):
            self.subject_id = sid

    ordered = order_intra(hists["a"], [S("b"), S("c")], hists)
    assert [o.subject_id for o in ordered] == ["c", "b"]


def test_histogram_strategy_plans_with_pixels():
    subjects, images, pixels = make_bank(n_synthetic=8)
    c = PairConfig(distractor_strategy="random", intra_strategy="histogram", val_fraction=0.0, num_samples=12,
                   task_mix={"distinction_single_intra": 1.0})  # fmt: skip
    plans, rejects = plan_samples(subjects, images, c, load_image=pixels.__getitem__)
    assert plans, rejects
    try:
        plan_samples(subjects, images, c)
    except ValueError as e:
        assert "load_image" in str(e)
    else:
        raise AssertionError("histogram without load_image must fail before any work")
