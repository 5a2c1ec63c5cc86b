"""A compact, read-only index over the subject bank for planning: subjects by split, image and label.

It holds only what planning needs (ids, labels, mask boxes and areas read from the RLE without
decoding it, colour attribute); the mask RLE rides along so a plan carries it to the renderer.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from scone_data.bank.records import BankSubject, color_shares, mask_box, scene_index, split_of

# Random draws per wanted distractor before falling back to a scan of the label's whole list.
DRAW_TRIES_PER_ITEM = 8


class BankIndex:
    """Subjects grouped by split, image and label, in a deterministic order (sorted by subject id)."""

    def __init__(
        self, subjects: list[dict], images: dict[str, dict], cfg, others=(), anchors=None, check_val=True
    ) -> None:
        """``anchors``: the images samples may be anchored on (target photos), None for all; the others
        only lend distractors (a planning partition's pool from other partitions). ``check_val``: refuse
        a ``cfg.val_images`` id that no image has (off where the index holds part of the bank)."""
        self.rejects: Counter = Counter()
        self.images = images
        # Every instance known in an image, usable or not: (subject_id or "", label, box). A target must
        # not show an instance of a label its instruction names beyond the intended ones, and a subject
        # the filters dropped (too small, bad mask) is still in the photo. ``others``: subject rejects
        # that kept their box ({"image_id", "label", "box_xyxy"}).
        self.scene = scene_index(subjects, others)
        self.by_id: dict[str, BankSubject] = {}
        self.by_image: dict[str, list[BankSubject]] = defaultdict(list)
        # split -> label -> subjects of that label in that split
        self.by_label: dict[str, dict[str, list[BankSubject]]] = {
            "train": defaultdict(list),
            "val": defaultdict(list),
        }
        val_set = frozenset(cfg.val_images)
        known = {v for im in images.values() for v in (im["image_id"], im.get("group_id")) if v}
        if check_val and val_set - known:
            from scone_data.runtime.overrides import ConfigError

            missing = ", ".join(sorted(val_set - known))
            raise ConfigError([f"pairs.val_images: no image or group of this id in the bank: {missing}"])
        for s in sorted(subjects, key=lambda s: s["subject_id"]):
            reason, box = self._check(s, images, cfg)
            if reason:
                if anchors is None or s["image_id"] in anchors:  # a pool subject counts in its own partition
                    self.rejects[reason] += 1
                continue
            img = images[s["image_id"]]
            mbox, area = box
            b = BankSubject(
                subject_id=s["subject_id"],
                image_id=s["image_id"],
                label=s["label"],
                mask_rle={"size": list(s["mask_rle"]["size"]), "counts": s["mask_rle"]["counts"]},
                mbox=mbox,
                area=area,
                color=str(s.get("attributes", {}).get("color", "")),
                split=split_of(img, cfg.val_fraction, val_set),
                colors=color_shares(s.get("attributes", {})),
            )
            self.by_id[b.subject_id] = b
            self.by_image[b.image_id].append(b)
            self.by_label[b.split][b.label].append(b)
        self.image_ids = sorted(self.by_image)
        # A generated image anchors a sample only when it is a re-posed target (a repose step's, kept by
        # repose_check): its one subject of ``label``, referenced from the photo's ``parent_subject_id``.
        # An insert step's edit never does (targets are real photos or re-posed ones); it serves as a
        # group mate's reference and as a distractor source.
        self.reposed: dict[str, tuple[str, str]] = {}
        for i in self.image_ids:
            g = images[i].get("generation")
            if isinstance(g, dict) and g.get("use") == "repose":
                self.reposed[i] = (str(g["label"]), str(g["parent_subject_id"]))
        self.anchor_ids = [
            i
            for i in self.image_ids
            if (anchors is None or i in anchors) and (not images[i].get("generation") or i in self.reposed)
        ]
        # Group sources: an image without a group_id is a group of its own. Frames of one video show
        # the same objects, so "elsewhere" (distractor look-alikes) means outside the whole group.
        self.group_of = {i: str(images[i].get("group_id") or f"image:{i}") for i in self.image_ids}
        self.group_images: dict[str, list[str]] = defaultdict(list)
        for i in self.image_ids:
            self.group_images[self.group_of[i]].append(i)
        self._group_label: dict[tuple[str, str], list[BankSubject]] = defaultdict(list)
        for i in self.image_ids:
            for b in self.by_image[i]:
                self._group_label[(self.group_of[i], b.label)].append(b)

    @staticmethod
    def _check(s: dict, images: dict[str, dict], cfg) -> tuple[str | None, tuple | None]:
        """(reject reason or None, the mask's (box, area) once computed)."""
        img = images.get(s["image_id"])
        if img is None:
            return "subject_image_missing", None
        h, w = s["mask_rle"]["size"]
        if (h, w) != (img["height"], img["width"]):
            return "subject_mask_size_mismatch", None
        box = mask_box(s["mask_rle"])
        (x0, y0, x1, y1), area = box
        if min(x1 - x0, y1 - y0) < cfg.min_subject_side_px or area < cfg.min_subject_area_frac * h * w:
            return "subject_too_small", box
        return None, box

    def split_of_image(self, image_id: str) -> str:
        return self.by_image[image_id][0].split

    def count_elsewhere(self, b: BankSubject) -> int:
        """Subjects of ``b``'s label in ``b``'s split but outside ``b``'s group (O(1))."""
        here = len(self._group_label[(self.group_of[b.image_id], b.label)])
        return len(self.by_label[b.split][b.label]) - here

    def group_mates(self, b: BankSubject) -> list[BankSubject]:
        """Subjects of ``b``'s label in the other images of ``b``'s group, by subject id."""
        return [
            o for o in self._group_label[(self.group_of[b.image_id], b.label)] if o.image_id != b.image_id
        ]

    def in_group(self, image_id: str) -> bool:
        """Whether ``image_id`` shares its group with another usable image."""
        return len(self.group_images[self.group_of[image_id]]) > 1

    def draw_elsewhere(self, b: BankSubject, k: int, rng) -> list[BankSubject]:
        """Up to ``k`` distinct random subjects of ``b``'s label and split from outside ``b``'s group.

        Rejection sampling over the label's list, so a draw costs O(k), not O(label size), on big banks.
        """
        pool = self.by_label[b.split][b.label]
        group = self.group_of[b.image_id]
        want = min(k, self.count_elsewhere(b))
        got: dict[str, BankSubject] = {}
        for _ in range(DRAW_TRIES_PER_ITEM * max(want, 1)):
            if len(got) >= want:
                break
            o = pool[rng.randrange(len(pool))]
            if self.group_of[o.image_id] != group:
                got.setdefault(o.subject_id, o)
        if len(got) < want:  # a label crowded into b's own group: fall back to a full scan
            rest = [o for o in pool if self.group_of[o.image_id] != group and o.subject_id not in got]
            for o in rng.sample(rest, want - len(got)):
                got[o.subject_id] = o
        return list(got.values())

    def labels(self, split: str) -> list[str]:
        return sorted(self.by_label[split])
