"""Shared set-up of the interop tests: one real demo build per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory) -> Path:
    """The demo pipeline built in-process (~15 s), with enough val samples for the SconeEval export."""
    from scone_data.runtime.build import build
    from scone_data.runtime.config import load_config

    out = tmp_path_factory.mktemp("interop") / "demo"
    over = [
        f"output={out}",
        "runtime.executor=local",
        "runtime.progress=false",
        "pairs.distractor_strategy=random",
        "pairs.val_fraction=0.3",
    ]
    build(load_config(str(REPO / "pipelines" / "demo.yaml"), over))
    return out
