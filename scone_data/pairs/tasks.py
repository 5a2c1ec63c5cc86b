"""The six task types as plans: which subjects are intended, which references show them, and how.

- composition_*: each reference is one intended subject cut out onto a plain or textured background.
- distinction_*_cross: each reference is a canvas of the intended subject and 1-3 distractors of labels
  absent from the target image (so the output can be checked by label), from other images of the split.
- distinction_*_intra: each reference holds same-label look-alikes: a natural crop of the source image
  when it has several instances, or a canvas with instances from other images of the split; a referring
  expression that selects exactly the intended one is required.

*_multi tasks use 2-3 intended subjects of one target image; distinction ones need distinct labels so
that "the cup from image 2" never also describes a subject of another reference.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import numpy as np

from scone_data.bank.index import BankIndex
from scone_data.bank.records import BankSubject, informative
from scone_data.imageio import rle_to_mask
from scone_data.pairs import expressions as ex
from scone_data.pairs import layout
from scone_data.pairs.distractors import INTRA_POOL, INTRA_SCAN, LabelSpace, color_histogram, order_intra
from scone_data.pairs.instructions import instruction, name_subject
from scone_data.pairs.sample_plan import PlacedCandidate, ReferencePlan, TargetBox

# Composition names a subject with its colour ("the red mug from image 2") this often, when known.
COLOR_IN_NAME_PROB = 0.5
# Plain backgrounds are drawn from light and mid greys and soft tints: saturated backgrounds would
# change the colour a model reads off a subject.
PLAIN_RGB = (
    (255, 255, 255),
    (235, 235, 235),
    (200, 200, 200),
    (128, 128, 128),
    (240, 232, 220),
    (220, 232, 240),
)


# A light subject (its top colour one of LIGHT_COLORS) is never put on a background whose mean grey is above
# LIGHT_BACKGROUND: it gets CONTRAST_RGB, a mid-dark grey (a neutral, so colour names still read true).
LIGHT_COLORS = frozenset({"white", "beige"})
LIGHT_BACKGROUND = 180
CONTRAST_RGB = (96, 96, 96)


# A group reference compares the target's subject with at most this many same-label subjects of its group
# (a random sample): it bounds the pixels loaded per draw when a group is a long video.
GROUP_SCAN = 16
# Besides erosion, a pasted subject's tight box may move this many pixels from its planned box
# (rounding of the resize, the anti-aliased mask edge thresholded at 0.5).
RENDER_SLACK_PX = 2


class TaskPlanner:
    def __init__(self, bank: BankIndex, cfg, load_image=None) -> None:
        self.bank, self.cfg, self.load_image = bank, cfg, load_image
        strategy = cfg.distractor_strategy
        self.spaces = {
            s: LabelSpace(bank.labels(s), strategy, cfg.distractor_difficulty) for s in ("train", "val")
        }
        self.subject_uses: Counter = Counter()
        # Not rejects: what happened on the way to the last plan (group references without a match, ...);
        # the caller adds them to its counts only when it keeps that plan.
        self.notes: Counter = Counter()
        self._hists: dict = {}  # per subject: colour histograms, and embeddings under ("embedding", id)
        self._embedder = None

    # ---- eligibility (static, from the bank) -------------------------------------------------------
    def eligible_images(self, task: str) -> list[str]:
        """Images that could anchor ``task`` (a fresh list, sorted; draws may still fail)."""
        need = self.cfg.min_references if "multi" in task else 1
        out = []
        for image_id in self.bank.anchor_ids:
            subs = self._anchor_subjects(image_id)
            if image_id in self.bank.reposed and "multi" in task:
                continue  # one re-posed subject per generated target
            if task.startswith("composition"):
                ok = len(subs) >= need
            elif task.endswith("cross"):
                ok = len({b.label for b in subs}) >= need and self._has_free_label(subs)
            else:
                ok = len({b.label for b in subs if self._intra_able(b, subs)}) >= need
            if ok:
                out.append(image_id)
        return out

    def _has_free_label(self, subs: list[BankSubject]) -> bool:
        """Whether the image's split has a label the image lacks (a cross distractor's label). An
        image's subjects share one split and their labels are among its labels: a count suffices."""
        return len(self.bank.by_label[subs[0].split]) > len({b.label for b in subs})

    def _intra_able(self, b: BankSubject, subs: list[BankSubject]) -> bool:
        in_image = self.cfg.crop_prob > 0 and sum(1 for o in subs if o.label == b.label) >= 2
        return in_image or self.bank.count_elsewhere(b) > 0

    def _anchor_subjects(self, image_id: str) -> list[BankSubject]:
        """The subjects a sample anchored on ``image_id`` may intend: all of a photo's; of a re-posed
        target, only its subjects of the re-posed label (repose_check kept exactly one)."""
        subs = self.bank.by_image[image_id]
        if image_id in self.bank.reposed:
            label = self.bank.reposed[image_id][0]
            subs = [b for b in subs if b.label == label]
        return subs

    # ---- one draw --------------------------------------------------------------------------------------
    def plan(self, task: str, image_id: str, rng: random.Random, label_uses: Counter):
        """``(references, target_boxes, names, (target_w, target_h))`` or a reject reason."""
        cfg, subs = self.cfg, self._anchor_subjects(image_id)
        self.notes = Counter()
        k = rng.randint(cfg.min_references, cfg.max_references) if "multi" in task else 1
        cap = cfg.max_samples_per_label
        pool = [b for b in subs if not cap or label_uses[b.label] < cap]
        if task.startswith("distinction"):
            pool = [b for b in pool if task.endswith("cross") or self._intra_able(b, subs)]
        # Least-used subjects first, ties broken at random, so a bank's subjects are covered evenly.
        pool.sort(key=lambda b: (self.subject_uses[b.subject_id], rng.random()))
        intended: list[BankSubject] = []
        for b in pool:
            if len(intended) == k:
                break
            if task.startswith("distinction") and any(o.label == b.label for o in intended):
                continue
            intended.append(b)
        if len(intended) < (cfg.min_references if "multi" in task else 1):
            return "label_cap_reached" if cap and len(pool) < len(subs) else "too_few_subjects"
        img = self.bank.images[image_id]
        crop, scene = self._target_crop(intended, image_id, (img["width"], img["height"]))
        if isinstance(crop, str):
            return crop
        refs, names = [], []
        for b in intended:
            if image_id in self.bank.reposed:
                out = self._reposed_reference(task, image_id, subs, rng)
            else:
                out = self._group_reference(task, b, subs, rng)
            if isinstance(out, str):
                return out
            ref, phrase = out
            refs.append(ref)
            names.append(name_subject(phrase, len(names)))
        for b in intended:
            self.subject_uses[b.subject_id] += 1
        ox, oy, cx1, cy1 = crop or (0, 0, img["width"], img["height"])
        cw, ch = cx1 - ox, cy1 - oy
        s = min(1.0, cfg.target_max_side / max(cw, ch))
        tw, th = max(1, round(cw * s)), max(1, round(ch * s))
        targets = tuple(
            TargetBox(
                b.subject_id,
                b.label,
                tuple(round((v - o) * s, 2) for v, o in zip(b.mbox, (ox, oy, ox, oy))),
                i,
            )
            for i, b in enumerate(intended)
        )
        return tuple(refs), targets, names, (tw, th), crop, scene

    def _target_crop(self, intended: list[BankSubject], image_id: str, wh: tuple[int, int]):
        """(crop box or None or a reject reason, the scene's instances of the named labels).

        The instruction names the intended subjects' labels; every other instance of those labels that the
        bank knows in this photo (usable subjects, filtered ones, rejects with a box) must stay out of the
        target."""
        named = {b.label for b in intended}
        ids = {b.subject_id for b in intended}
        scene = tuple(e for e in self.bank.scene[image_id] if e[1] in named)
        own = {sid: box for sid, _, box in scene if sid in ids}
        keep = [_union(b.mbox, own.get(b.subject_id, b.mbox)) for b in intended]
        avoid = [box for sid, _, box in scene if sid not in ids]
        if not avoid:
            return None, scene
        cfg = self.cfg
        crop = layout.plan_target_crop(
            keep, avoid, wh, cfg.target_min_area_frac, cfg.target_min_side_px, cfg.target_max_aspect
        )
        return crop, scene

    def _reference(self, task: str, b: BankSubject, target_subs: list[BankSubject], rng: random.Random):
        """The reference showing ``b`` (a subject of the target image, or its match in a group mate)."""
        if task.startswith("composition"):
            return self._cutout(b, rng)
        if task.endswith("cross"):
            return self._cross(b, target_subs, rng)  # distractor labels must be absent from the target
        return self._intra(b, self.bank.by_image[b.image_id], rng)

    # ---- group sources --------------------------------------------------------------------------------
    def _group_reference(self, task: str, b: BankSubject, subs: list[BankSubject], rng: random.Random):
        """The reference showing ``b``: cut from its match in another image of its group (``source``
        group) when :meth:`_group_mate` draws one and that reference can be made, else from ``b``."""
        mate = self._group_mate(b, rng)
        out = self._reference(task, mate, subs, rng) if mate is not None else "no_group_mate"
        if not isinstance(out, str):
            return replace(out[0], source="group"), out[1]
        if mate is not None:  # e.g. no unique expression in the other frame: use the target's own
            self.notes["group_reference_fallback"] += 1
        return self._reference(task, b, subs, rng)

    def _reposed_reference(self, task: str, image_id: str, subs: list[BankSubject], rng: random.Random):
        """A re-posed target's reference: always the real photo's subject it was made from (``source``
        group), never the generated target's own; ``repose_parent_unusable`` when the planner filtered
        that subject out."""
        parent = self.bank.by_id.get(self.bank.reposed[image_id][1])
        if parent is None:
            return "repose_parent_unusable"
        out = self._reference(task, parent, subs, rng)
        return out if isinstance(out, str) else (replace(out[0], source="group"), out[1])

    def _group_mate(self, b: BankSubject, rng: random.Random) -> BankSubject | None:
        """With ``group_reference_prob``, the subject in another image of ``b``'s group that matches it
        (same label, most similar colour inside the mask, at least ``group_min_similarity``); else None.

        Nothing is drawn for images without a group, so ungrouped banks plan exactly as before.
        """
        cfg = self.cfg
        if not cfg.group_reference_prob or not self.bank.in_group(b.image_id):
            return None
        if rng.random() >= cfg.group_reference_prob:
            return None
        mates = self.bank.group_mates(b)
        if len(mates) > GROUP_SCAN:
            mates = sorted(rng.sample(mates, GROUP_SCAN), key=lambda o: o.subject_id)
        if not mates:
            self.notes["group_no_mate"] += 1
            return None
        score = {o.subject_id: self._similarity(b, o) for o in mates}
        best = max(mates, key=lambda o: (score[o.subject_id], o.subject_id))
        if score[best.subject_id] < cfg.group_min_similarity:
            self.notes["group_no_match"] += 1
            return None
        return best

    def _similarity(self, a: BankSubject, o: BankSubject) -> float:
        """Histogram intersection of the colours inside the two masks (0..1) when pixels can be loaded;
        without pixels, the ratio of mask areas when the colour names agree (0 when they differ)."""
        if self.load_image is not None:
            return float(np.minimum(self._hist(a), self._hist(o)).sum())
        if informative(a.color) and informative(o.color) and a.color != o.color:
            return 0.0
        return min(a.area, o.area) / max(a.area, o.area, 1.0)

    def instruction(
        self,
        task: str,
        names: list[str],
        labels: list[str],
        image_id: str,
        refs,
        cropped: bool,
        rng: random.Random,
    ) -> tuple[str, dict | None]:
        """``(text, caption record or None)``; the record (``{"text", "source"}``: the caption and the
        source it came from) when the text is woven from the target photo's caption."""
        img = self.bank.images[image_id]
        # a caption describes the whole photo: a cropped target may no longer show what it says
        caption = None if cropped else img.get("caption")
        others = {c.label for r in refs for c in r.candidates if not c.intended}
        text, why = instruction(task, names, labels, caption, rng, self.cfg, others)
        if why:
            self.notes[f"caption_unused:{why}"] += 1
        if why == "":
            return text, {"text": caption.strip(), "source": img.get("source") or ""}
        return text, None

    # ---- references ------------------------------------------------------------------------------------
    def _finish(self, rng: random.Random) -> dict:
        """Per-reference augmentation draws shared by every kind."""
        cfg, j = self.cfg, self.cfg.jitter
        return dict(
            jitter=(
                round(rng.uniform(-j, j) * 0.5, 4),  # brightness shift: half the jitter (it shows most)
                round(rng.uniform(1 - j, 1 + j), 4),
                round(rng.uniform(1 - j, 1 + j), 4),
            ),
            erode_px=rng.randint(0, cfg.erode_max_px),
            feather_px=round(rng.uniform(0, cfg.feather_max_px), 3),
        )

    def _background(self, rng: random.Random, subs: list[BankSubject]) -> tuple:
        kind, rgb = rng.choice(self.cfg.backgrounds), rng.choice(PLAIN_RGB)
        # a white napkin on a white background is no reference at all (seen on the truth photos)
        if sum(rgb) / 3 > LIGHT_BACKGROUND and any(b.colors and b.colors[0][0] in LIGHT_COLORS for b in subs):
            rgb = CONTRAST_RGB
        return kind, rgb

    def _placed(
        self, b: BankSubject, box, scale: float, intended: bool, flip: bool, **warp
    ) -> PlacedCandidate:
        return PlacedCandidate(
            subject_id=b.subject_id,
            label=b.label,
            image_id=b.image_id,
            mask_size=tuple(b.mask_rle["size"]),
            mask_counts=b.mask_rle["counts"],
            src_box=layout.int_box(b.mbox),
            box=tuple(float(v) for v in box),
            area=round(b.area * scale * scale, 2),
            colors=b.colors,
            intended=intended,
            flip=flip,
            **warp,
        )

    def _cutout(self, b: BankSubject, rng: random.Random):
        side = self.cfg.ref_size
        box = layout.place_cutout(b, side, self.cfg, rng)
        flip = rng.random() < self.cfg.flip_prob
        rot, persp = layout.draw_warp(rng, self.cfg)
        scale = (box[2] - box[0]) / max(1, layout.int_box(b.mbox)[2] - layout.int_box(b.mbox)[0])
        cand = self._placed(b, box, scale, True, flip, rotate_deg=rot, perspective=persp)
        word = ex.color_word(b.colors, b.label)
        use_color = word is not None and rng.random() < COLOR_IN_NAME_PROB
        phrase = ex.phrase(((("color", word),) if use_color else ()), b.label)
        ref = ReferencePlan(
            "cutout", side, side, (cand,), None, (), self._background(rng, [b]), **self._finish(rng)
        )
        return ref, phrase

    def _canvas(self, intended: BankSubject, others: list[BankSubject], rng: random.Random):
        side = self.cfg.ref_size
        subs = [intended, *others]
        rng.shuffle(subs)
        boxes = layout.place_canvas(subs, side, rng)
        if boxes is None:
            return "layout_failed"
        cands = []
        for b, box in zip(subs, boxes):
            scale = (box[2] - box[0]) / max(1, layout.int_box(b.mbox)[2] - layout.int_box(b.mbox)[0])
            flip = rng.random() < self.cfg.flip_prob
            # the intended subject is warped like a cutout, so it is not a pixel copy of the target's
            rot, persp = layout.draw_warp(rng, self.cfg) if b is intended else (0.0, ())
            cands.append(self._placed(b, box, scale, b is intended, flip, rotate_deg=rot, perspective=persp))
        return cands, side, side, dict(background=self._background(rng, subs))

    def _cross(self, b: BankSubject, subs: list[BankSubject], rng: random.Random):
        cfg = self.cfg
        # labels anywhere in the target photo or in the photo the reference is cut from (filtered and
        # rejected subjects too) are never distractors; ``subs`` are the target photo's subjects, ``b``
        # may come from another photo of its group
        scene = self.bank.scene
        present = {e[1] for i in {subs[0].image_id, b.image_id} for e in scene[i]}
        k = rng.randint(cfg.min_distractors, cfg.max_distractors)
        labels = self.spaces[b.split].draw(b.label, present, k, rng)
        if len(labels) < cfg.min_distractors:
            return "no_distractor"
        others = [rng.choice(self.bank.by_label[b.split][lb]) for lb in labels]
        out = self._canvas(b, others, rng)
        return out if isinstance(out, str) else self._with_expression(b, "canvas", out, rng, cross=True)

    def _intra(self, b: BankSubject, subs: list[BankSubject], rng: random.Random):
        cfg = self.cfg
        elsewhere = self.bank.count_elsewhere(b) > 0
        in_image = sum(1 for o in subs if o.label == b.label) >= 2
        # A natural crop shows look-alikes from the target image itself; the target is then cropped to
        # leave them out (TaskPlanner._target_crop). Always tried when the label occurs nowhere else.
        if in_image and cfg.crop_prob > 0 and (not elsewhere or rng.random() < cfg.crop_prob):
            out = self._crop(b, subs, rng)
            if not isinstance(out, str):
                return self._with_expression(b, "crop", out, rng)
            if not elsewhere:
                return out
            # The crop cut an instance in half; fall back to a canvas of instances from other images.
        if not elsewhere:
            return "no_distractor"
        k = rng.randint(cfg.min_distractors, cfg.max_distractors)
        if cfg.intra_strategy in ("histogram", "embedding"):
            # Look-alikes first: the most similar of a random sample, then k of those at random.
            feat = self._hist if cfg.intra_strategy == "histogram" else self._embedding
            scan = self.bank.draw_elsewhere(b, INTRA_SCAN, rng)
            sim = np.minimum if cfg.intra_strategy == "histogram" else np.multiply
            scan = order_intra(feat(b), scan, {o.subject_id: feat(o) for o in scan}, sim)[:INTRA_POOL]
            others = rng.sample(scan, min(k, len(scan)))
        else:
            others = self.bank.draw_elsewhere(b, k, rng)
        out = self._canvas(b, others, rng)
        return out if isinstance(out, str) else self._with_expression(b, "canvas", out, rng)

    def _crop(self, b: BankSubject, subs: list[BankSubject], rng: random.Random):
        img = self.bank.images[b.image_id]
        got = layout.plan_crop(b, subs, (img["width"], img["height"]))
        if isinstance(got, str):
            return got
        crop, shown = got
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        s = min(self.cfg.ref_size / max(cw, ch), layout.MAX_UPSCALE)
        w, h = max(1, round(cw * s)), max(1, round(ch * s))
        flip = rng.random() < self.cfg.flip_prob
        cands = [
            self._placed(o, layout.crop_to_ref(o.mbox, crop, s, flip, w), s, o is b, flip)
            for o in sorted(shown, key=lambda o: o.subject_id)
        ]
        return (
            cands,
            w,
            h,
            dict(background=("crop",), crop_image_id=b.image_id, crop_box=crop, crop_flip=flip),
        )

    def _with_expression(self, b: BankSubject, kind: str, out, rng: random.Random, cross: bool = False):
        cands, w, h, extra = out
        seen = [ex.Cand(c.label, c.box, c.area, c.colors) for c in cands]
        t = next(i for i, c in enumerate(cands) if c.intended)
        if cross:
            # The label alone must select the intended candidate (distractors have other labels).
            exprs = [()] if ex.select((), seen, b.label, (w, h)) == [t] else []
        else:
            slack = 0 if kind == "crop" else self.cfg.erode_max_px + RENDER_SLACK_PX
            exprs = ex.unique_expressions(seen, t, (w, h), slack)
        spec = ex.choose(exprs, rng)
        if spec is None:
            return "expression_not_unique"
        phrase = ex.phrase(spec, b.label)
        ref = ReferencePlan(kind, w, h, tuple(cands), phrase, spec, **extra, **self._finish(rng))
        return ref, phrase

    def _hist(self, b: BankSubject):
        if b.subject_id not in self._hists:
            # only the mask's box holds counted pixels: convert and count there, not over the image
            x0, y0, x1, y1 = layout.int_box(b.mbox)
            crop = self.load_image(b.image_id)[y0:y1, x0:x1]
            self._hists[b.subject_id] = color_histogram(crop, rle_to_mask(b.mask_rle)[y0:y1, x0:x1])
        return self._hists[b.subject_id]

    def _embedding(self, b: BankSubject):
        key = ("embedding", b.subject_id)
        if key not in self._hists:
            if self._embedder is None:
                from scone_data.pairs.embeddings import ImageEmbedder

                self._embedder = ImageEmbedder(self.cfg.embedding_model)
            self._hists[key] = self._embedder.embed(self.load_image(b.image_id), rle_to_mask(b.mask_rle))
        return self._hists[key]


def _union(a, b) -> tuple[float, float, float, float]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
