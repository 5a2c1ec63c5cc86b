"""Pair builder: composition and distinction samples from the subject bank.

``plan_samples`` (bank -> deterministic list of :class:`SamplePlan`, driver side, no pixels) and
``render_sample`` (one plan -> Sample record + JPEG members, worker side). ``dataset_card`` summarises
a build as markdown.
"""

from scone_data.pairs.card import dataset_card
from scone_data.pairs.config import TASKS, PairConfig
from scone_data.pairs.plan import plan_samples
from scone_data.pairs.render import render_sample
from scone_data.pairs.sample_plan import PlacedCandidate, ReferencePlan, SamplePlan, TargetBox

__all__ = [
    "TASKS",
    "PairConfig",
    "PlacedCandidate",
    "ReferencePlan",
    "SamplePlan",
    "TargetBox",
    "dataset_card",
    "plan_samples",
    "render_sample",
]
