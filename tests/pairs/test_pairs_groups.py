"""Group sources: references cut from a matched subject in another frame of the target's group."""

from collections import Counter

import numpy as np
import pytest
from pairs_bank import SHAPE_RGB, image_record, make_bank, shape_mask, subject_record

from scone_data.pairs import PairConfig, plan_samples, render_sample

PROV = {"builder_version": "test", "config_hash": "0" * 16, "seed": 0, "source": "test", "models": []}
# One "video": the same four objects in three frames, shifted a little from frame to frame.
OBJECTS = [
    ("ball", "red", (30, 30, 90, 90)),
    ("ball", "blue", (170, 40, 230, 100)),
    ("box", "green", (40, 140, 110, 200)),
    ("ring", "yellow", (200, 140, 260, 200)),
]
SHIFTS = [(0, 0), (18, 9), (36, 18)]


def frame(objects, shift, h=240, w=320):
    img = np.full((h, w, 3), 128, np.uint8)
    out = []
    for label, color, (x0, y0, x1, y1) in objects:
        b = (x0 + shift[0], y0 + shift[1], x1 + shift[0], y1 + shift[1])
        img[shape_mask(h, w, b, "ellipse") > 0] = SHAPE_RGB[color]
        out.append((label, b))
    return img, out


def add_group(subjects, images, pixels, group, frames):
    """Append the frames ``[(objects, (dx, dy)), ...]`` of ``group`` to a bank (in place)."""
    for f, (objects, shift) in enumerate(frames):
        iid = f"{group}f{f}"
        pixels[iid], objs = frame(objects, shift)
        images[iid] = image_record(iid, pixels[iid], group_id=group)
        subjects += [subject_record(iid, n, lb, b, pixels[iid], "ellipse") for n, (lb, b) in enumerate(objs)]


@pytest.fixture(scope="module")
def grouped():
    subjects, images, pixels = make_bank(n_synthetic=16, labels=("ball", "box", "ring", "star"))
    add_group(subjects, images, pixels, "video1", [(OBJECTS, s) for s in SHIFTS])
    return subjects, images, pixels


def cfg(**kw):
    return PairConfig(**{"distractor_strategy": "random", "val_fraction": 0.0, "ref_size": 256, **kw})


def group_refs(plans, images):
    out = []
    for p in plans:
        for r, t in zip(p.references, p.target_boxes):
            if r.source == "group":
                out.append((p, r, t))
    return out


@pytest.mark.parametrize("with_pixels", [True, False])
def test_references_come_from_the_matched_subject_of_another_frame(grouped, with_pixels):
    subjects, images, pixels = grouped
    c = cfg(num_samples=160, group_reference_prob=1.0, max_samples_per_image=0)
    plans, notes = plan_samples(subjects, images, c, load_image=pixels.__getitem__ if with_pixels else None)
    group = {i for i, im in images.items() if im.get("group_id") == "video1"}
    got = group_refs(plans, images)
    kinds = Counter(r.kind for _, r, _ in got)
    assert kinds["cutout"] and kinds["canvas"], kinds  # composition and distinction both take the path
    for p, r, t in got:
        assert p.image_id in group
        (mate,) = [x for x in r.candidates if x.intended]
        assert mate.image_id in group and mate.image_id != p.image_id
        assert mate.label == t.label
        # The same object in the other frame: same index in the frame, so the blue ball never stands
        # in for the red one.
        assert mate.subject_id.rsplit("-", 1)[1] == t.subject_id.rsplit("-", 1)[1]
        if r.kind == "canvas":  # look-alikes never come from the group (they could be the same object)
            assert all(x.image_id not in group for x in r.candidates if not x.intended)
    # With a probability of 1 every reference of a group target takes the path unless it had to fall back.
    in_group = sum(len(p.references) for p in plans if p.image_id in group)
    assert len(got) == in_group - notes["group_reference_fallback"]


def test_rendered_record_names_the_other_frame(grouped):
    subjects, images, pixels = grouped
    c = cfg(num_samples=60, group_reference_prob=1.0, max_samples_per_image=0)
    plans, _ = plan_samples(subjects, images, c, load_image=pixels.__getitem__)
    seen = 0
    for p, _, _ in group_refs(plans, images)[:10]:
        rec, members = render_sample(p, pixels.__getitem__, c, PROV)
        assert rec["target"]["image_id"] == p.image_id
        for ref in rec["references"]:
            if ref["augment"]["source"] != "group":
                continue
            (cand,) = [x for x in ref["candidates"] if x["intended"]]
            assert cand["source_image_id"] != p.image_id
            assert images[cand["source_image_id"]]["group_id"] == "video1"
            seen += 1
        again = render_sample(p, pixels.__getitem__, c, PROV)
        assert again == (rec, members)
    assert seen >= 5


def test_no_match_below_the_threshold_falls_back_to_the_target(grouped):
    subjects, images, pixels = list(grouped[0]), dict(grouped[1]), dict(grouped[2])
    # A second group whose two frames disagree on the ball's colour: the ball has no match, the kite has.
    kite = ("kite", "green", (150, 100, 220, 170))
    frames = [
        ([("ball", "red", (30, 30, 90, 90)), kite], (0, 0)),
        ([("ball", "blue", (30, 30, 90, 90)), kite], (12, 6)),
    ]
    add_group(subjects, images, pixels, "video2", frames)
    c = cfg(num_samples=150, group_reference_prob=1.0, max_samples_per_image=0,
            task_mix={"composition_single": 1.0})  # fmt: skip
    plans, notes = plan_samples(subjects, images, c, load_image=pixels.__getitem__)
    v2 = [
        (r, t) for p in plans if p.image_id.startswith("video2") for r, t in zip(p.references, p.target_boxes)
    ]
    assert {t.label for _, t in v2} == {"ball", "kite"}
    for r, t in v2:
        assert r.source == ("group" if t.label == "kite" else "self"), (t.label, r.source)
    assert notes["group_no_match"] == sum(1 for _, t in v2 if t.label == "ball")


def test_probability_zero_never_uses_the_group(grouped):
    subjects, images, pixels = grouped
    plans, notes = plan_samples(subjects, images, cfg(num_samples=80, group_reference_prob=0.0))
    assert plans and not group_refs(plans, images)
    assert not any(k.startswith("group_") for k in notes)
