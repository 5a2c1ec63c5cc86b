"""Settings of the pair builder: one dataclass of plain values, validated all at once before any work.

Every limit the builder applies is either a field here (a corpus control a user may want to change) or
a named module constant next to the code that uses it (an engineering limit with its reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scone_data import schemas

TASKS = schemas.tasks()  # the Sample schema is the one list of task types

DISTRACTOR_STRATEGIES = ("semantic", "random")
DIFFICULTIES = ("near", "far", "any")
# "embedding" needs ``embedding_model``: a local transformers vision model directory (CLIP, SigLIP,
# DINOv2, ...); see pairs/embeddings.py.
INTRA_STRATEGIES = ("random", "histogram", "embedding")
BACKGROUNDS = ("plain", "texture")

# Above this many references a sample no longer fits the trainer's packed sequence budget (SconeEval's
# multi-subject tasks use 2-3 references).
MAX_REFERENCES = 3
# An instruction is a sentence or two; longer generations are the model rambling.
MAX_REWRITE_TOKENS = 256
# A canvas with more candidates than this makes each one too small to recognise at 512 px.
MAX_CANDIDATES = 4


def _equal_mix() -> dict[str, float]:
    return {t: 1.0 for t in TASKS}


@dataclass
class PairConfig:
    """Settings of :func:`scone_data.pairs.plan_samples` and :func:`scone_data.pairs.render_sample`.

    Sizes are pixels; fractions are of the reference or source image side/area as named.
    """

    seed: int = 0
    # Relative weights of the six task types; normalised, zero drops a task.
    task_mix: dict[str, float] = field(default_factory=_equal_mix)
    # Number of samples to plan; 0 means ``samples_per_image`` times the number of usable source images.
    num_samples: int = 0
    samples_per_image: float = 2.0
    # Corpus controls. 0 disables a cap.
    max_samples_per_image: int = 8
    max_samples_per_label: int = 0
    min_subject_side_px: int = 24
    min_subject_area_frac: float = 0.001
    val_fraction: float = 0.05
    # Source images (image ids, or group ids: the whole group) held in the validation split on top of
    # the hashed ``val_fraction``: a fixed evaluation set, e.g. one chosen so that it holds every task
    # type (the demo's). Every listed id must be in the bank.
    val_images: list[str] = field(default_factory=list)
    # Samples of each task type planned first from validation images alone (part of the task's quota),
    # so that a small val split still holds every task type; a slot that no val image can fill is
    # counted as ``unfilled_val:<task>``. 0: the split follows the images drawn.
    val_min_per_task: int = 0
    # Planning by partition (scone_data/bank/partition.py): a bank of more images than this is planned
    # in ceil(images / this) partitions, each a task holding only its images and a bounded distractor
    # pool; up to this many images the plan is the whole bank's. Depends on the bank, not the workers.
    plan_partition_images: int = 10_000
    # References: square canvases of this side; the target keeps its aspect, its long side capped.
    ref_size: int = 512
    target_max_side: int = 1024
    jpeg_quality: int = 95
    min_references: int = 2  # for *_multi tasks
    max_references: int = 3
    min_distractors: int = 1
    max_distractors: int = 3
    # Distractor mining.
    distractor_strategy: str = "semantic"
    distractor_difficulty: str = "any"
    intra_strategy: str = "random"
    embedding_model: str | None = None  # for intra_strategy "embedding"
    # Probability that an intra reference is a natural crop when the source holds several instances (always
    # tried when the label occurs in no other image; 0 turns natural crops off). The target is then a crop
    # of the same photo that holds the intended instance and none of the others.
    crop_prob: float = 0.5
    # Targets: a photo showing another instance of a label the instruction names is cropped to leave it
    # out; the crop keeps at least this share of the photo's area, sides of at least this many source
    # pixels, and an aspect ratio (long side / short side) of at most target_max_aspect, or the draw fails.
    target_min_area_frac: float = 0.15
    target_min_side_px: int = 96
    target_max_aspect: float = 2.5
    # A reference whose intended subject aligns with the target better than this (best normalised
    # cross-correlation of the two patches, flipped or not; 1.0 = a pixel copy) is not written. 1.0 keeps
    # everything; the score is recorded per reference either way (``references[i].copy_paste``).
    max_copy_paste: float = 1.0
    # Anti-copy-paste augmentations on references (probabilities and magnitudes).
    flip_prob: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.2)
    rotate_max_deg: float = 20.0
    perspective_max: float = 0.1  # corner displacement, fraction of the patch side
    jitter: float = 0.15  # brightness/contrast/saturation, relative
    erode_max_px: int = 2
    feather_max_px: float = 2.0
    backgrounds: tuple[str, ...] = ("plain", "texture")
    # Instructions: use the source caption in some phrasings when the source has one.
    use_caption_prob: float = 0.5
    # Optional rewriting of every instruction by a local transformers causal LM (a directory); greedy,
    # so deterministic. A rewrite that drops a reference mention or a referring phrase is not used.
    rewrite_model: str | None = None
    rewrite_max_new_tokens: int = 64
    rewrite_batch_size: int = 16
    # Group sources (images sharing a group_id): probability that an intended subject's reference is cut
    # from a matched subject (same label, most similar colour inside the mask, at least
    # ``group_min_similarity`` histogram intersection) in another image of the target's group.
    group_reference_prob: float = 1.0
    group_min_similarity: float = 0.5

    def validate(self) -> list[str]:
        """Every problem with these settings, each naming its field; empty when all is well."""
        p: list[str] = []
        if not isinstance(self.seed, int) or self.seed < 0:
            p.append(f"seed: must be a non-negative int, got {self.seed!r}")
        unknown = sorted(set(self.task_mix) - set(TASKS))
        if unknown:
            p.append(f"task_mix: unknown tasks {unknown}; known: {list(TASKS)}")
        if any((not isinstance(v, int | float)) or v < 0 for v in self.task_mix.values()):
            p.append("task_mix: weights must be non-negative numbers")
        elif sum(self.task_mix.values()) <= 0:
            p.append("task_mix: at least one weight must be positive")
        if self.num_samples < 0:
            p.append(f"num_samples: must be >= 0, got {self.num_samples}")
        if self.samples_per_image <= 0:
            p.append(f"samples_per_image: must be > 0, got {self.samples_per_image}")
        for name in ("max_samples_per_image", "max_samples_per_label", "min_subject_side_px", "erode_max_px"):
            if getattr(self, name) < 0:
                p.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in (
            "min_subject_area_frac",
            "crop_prob",
            "flip_prob",
            "use_caption_prob",
            "jitter",
            "group_reference_prob",
            "group_min_similarity",
            "target_min_area_frac",
            "max_copy_paste",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                p.append(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            p.append(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.plan_partition_images < 1:
            p.append(f"plan_partition_images: must be >= 1, got {self.plan_partition_images}")
        if self.val_min_per_task < 0:
            p.append(f"val_min_per_task: must be >= 0, got {self.val_min_per_task}")
        if not isinstance(self.val_images, list) or not all(
            isinstance(v, str) and v for v in self.val_images
        ):
            p.append(f"val_images: must be a list of image or group ids, got {self.val_images!r}")
        # below 64 px a reference or target no longer shows a recognisable subject
        if self.ref_size < 64:
            p.append(f"ref_size: must be >= 64, got {self.ref_size}")
        if self.target_max_side < 64:
            p.append(f"target_max_side: must be >= 64, got {self.target_max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            p.append(f"jpeg_quality: must be in [1, 100], got {self.jpeg_quality}")
        if not 2 <= self.min_references <= self.max_references <= MAX_REFERENCES:
            p.append(
                f"min_references/max_references: need 2 <= min <= max <= {MAX_REFERENCES}, "
                f"got {self.min_references}/{self.max_references}"
            )
        if not 1 <= self.min_distractors <= self.max_distractors <= MAX_CANDIDATES - 1:
            p.append(
                f"min_distractors/max_distractors: need 1 <= min <= max <= {MAX_CANDIDATES - 1}, "
                f"got {self.min_distractors}/{self.max_distractors}"
            )
        if self.distractor_strategy not in DISTRACTOR_STRATEGIES:
            p.append(f"distractor_strategy: {self.distractor_strategy!r} not in {DISTRACTOR_STRATEGIES}")
        if self.distractor_difficulty not in DIFFICULTIES:
            p.append(f"distractor_difficulty: {self.distractor_difficulty!r} not in {DIFFICULTIES}")
        if self.intra_strategy not in INTRA_STRATEGIES:
            p.append(f"intra_strategy: {self.intra_strategy!r} not in {INTRA_STRATEGIES}")
        if self.intra_strategy == "embedding" and not (
            self.embedding_model and Path(self.embedding_model).is_dir()
        ):
            p.append(
                f"embedding_model: {self.embedding_model!r} must be a local transformers vision model directory "
                "(CLIP, SigLIP, DINOv2...) when intra_strategy is 'embedding'"
            )
        if self.rewrite_model is not None and not Path(self.rewrite_model).is_dir():
            p.append(f"rewrite_model: {self.rewrite_model!r} is not a directory holding a causal LM")
        if not 1 <= self.rewrite_max_new_tokens <= MAX_REWRITE_TOKENS:
            p.append(
                f"rewrite_max_new_tokens: must be in [1, {MAX_REWRITE_TOKENS}], got {self.rewrite_max_new_tokens}"
            )
        if self.rewrite_batch_size < 1:
            p.append(f"rewrite_batch_size: must be >= 1, got {self.rewrite_batch_size}")
        # Augmentation bounds: past 4x a cutout is mostly interpolation, past 45 degrees or a quarter
        # of the side in perspective the subject stops looking like a photo of itself.
        lo, hi = self.scale_range
        if not 0.25 <= lo <= hi <= 4.0:
            p.append(f"scale_range: need 0.25 <= lo <= hi <= 4, got {self.scale_range}")
        if not 0.0 <= self.rotate_max_deg <= 45.0:
            p.append(f"rotate_max_deg: must be in [0, 45], got {self.rotate_max_deg}")
        if not 0.0 <= self.perspective_max <= 0.25:
            p.append(f"perspective_max: must be in [0, 0.25], got {self.perspective_max}")
        if self.target_min_side_px < 16:
            p.append(f"target_min_side_px: must be >= 16, got {self.target_min_side_px}")
        if not 1.0 <= self.target_max_aspect <= 10.0:
            p.append(f"target_max_aspect: must be in [1, 10], got {self.target_max_aspect}")
        if self.feather_max_px < 0:
            p.append(f"feather_max_px: must be >= 0, got {self.feather_max_px}")
        bad = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if bad or not self.backgrounds:
            p.append(f"backgrounds: need a non-empty subset of {BACKGROUNDS}, got {self.backgrounds}")
        return p

    def normalised_mix(self) -> dict[str, float]:
        """Task weights summing to 1, in :data:`TASKS` order, zero-weight tasks left out."""
        total = float(sum(self.task_mix.values()))
        return {t: self.task_mix[t] / total for t in TASKS if self.task_mix.get(t, 0) > 0}
