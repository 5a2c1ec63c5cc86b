"""The shared part of the model stages (detector, segmenter): GPU request and provenance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from scone_data.models import registry
from scone_data.stages.base import Stage

BAD_IMAGE = "bad_image: expected HxWx3 uint8"  # the reject reason of a row whose image a model cannot take


def is_rgb_uint8(img) -> bool:
    """Whether ``img`` is what the model stages take: an (H, W, 3) uint8 array."""
    return isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


@dataclass
class ModelStage(Stage):
    """A stage whose settings include ``model``, ``checkpoint`` and ``num_gpus``; ``family`` names the
    registry family (``sam`` | ``groundingdino``)."""

    family: ClassVar[str] = ""

    def resources(self) -> dict[str, float]:
        return {"num_cpus": 1.0, "num_gpus": registry.gpu_request(self.num_gpus)}

    def threads(self):
        """A context with torch's threads set to the stage's ``cpu_threads`` while it runs on a CPU (one
        fixed count gives a Ray actor, one thread, and an in-process run, every core, the same bytes)."""
        from scone_data.models.common import cpu_threads

        return cpu_threads(getattr(self, "cpu_threads", None), registry.resolve_device(self.device) == "cpu")

    def model_problems(self, known: tuple[str, ...]) -> list[str]:
        """Problems with the settings every model stage has (``known``: the family's model names)."""
        out = registry.model_setting_problems(
            self.family, self.model, known, self.checkpoint, self.device, self.num_gpus, self.verify_sha256
        )
        n = getattr(self, "cpu_threads", None)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            out.append(f"cpu_threads: {n!r} must be an integer >= 1 (or null: torch's default)")
        return out

    def checkpoint_path(self) -> str | None:
        """The file to load: the configured or cached official checkpoint, verified (a missing or
        corrupt one raises ``CheckpointError`` with the fix); ``tiny`` loads ``checkpoint`` as given."""
        if self.model == "tiny":
            return self.checkpoint
        name = registry.for_model(self.family, self.model).name
        return str(registry.require(name, self.checkpoint, check_hash=self.verify_sha256))

    def model_info(self) -> dict:
        """Provenance of the outputs: the model's name and its checkpoint's sha256 (None for ``tiny``)."""
        return {
            "name": f"{self.family}_{self.model}",
            "weights_sha256": registry.weights_sha256(self.family, self.model, self.checkpoint),
        }


@dataclass
class SnapshotStage(ModelStage):
    """A model stage whose weights are a whole model directory (a registry snapshot: a VLM, a
    diffusers pipeline) instead of one checkpoint file. ``model`` is one of ``archs`` (registered,
    loaded from ``weights_dir`` or the cache), ``local`` (``weights_dir`` as given) or ``tiny``
    (random weights built in code). Subclasses set the class variables and the fields ``model``,
    ``weights_dir``, ``device``, ``num_gpus`` and ``verify_sha256``."""

    archs: ClassVar[tuple[str, ...]] = ()
    layout: ClassVar[str | None] = None  # snapshots.dir_problems' layout for a local directory
    local_needs: ClassVar[str] = "a model directory"  # what ``model: local`` needs in weights_dir

    def weights_problems(self) -> list[str]:
        from scone_data.models import snapshots

        if self.model in self.archs:
            name = snapshots.for_model(self.family, self.model).name
            return registry.problems(name, self.weights_dir, self.verify_sha256)
        if self.model == "local" and not self.weights_dir:
            return [f"weights_dir: model local needs {self.local_needs}"]
        if self.weights_dir:
            root = Path(self.weights_dir).expanduser()
            return [
                f"weights_dir: {m}"
                for m in snapshots.dir_problems(root, None, self.verify_sha256, self.layout)
            ]
        return []

    def snapshot_problems(self) -> list[str]:
        """The model name, its weights, and the device and GPU checks every model stage shares."""
        models = (*self.archs, "local", "tiny")
        if self.model not in models:
            out = [f"model: {self.model!r} is not one of {', '.join(models)}"]
        else:
            out = self.weights_problems()
        # no checkpoint file to check there: the weights are checked above
        out += registry.model_setting_problems(
            self.family, "tiny", ("tiny",), None, self.device, self.num_gpus, self.verify_sha256
        )
        return out

    def model_dir(self) -> Path | None:
        """The directory to load, checked (a missing or corrupt file raises ``CheckpointError`` naming
        it and the fetch command); None for the tiny preset built in code."""
        msgs = self.weights_problems()
        if msgs:
            raise registry.CheckpointError("; ".join(msgs))
        if self.model in self.archs:
            from scone_data.models import snapshots

            return registry.resolve(snapshots.for_model(self.family, self.model).name, self.weights_dir)
        return Path(self.weights_dir).expanduser() if self.weights_dir else None

    def model_info(self) -> dict:
        """Provenance: the model's name and its weights' digest (None for the tiny preset in code)."""
        return self.info_for(self.model_dir())

    def info_for(self, path: Path | None) -> dict:
        """:meth:`model_info` for a directory :meth:`model_dir` already checked (setup has one)."""
        from scone_data.models import snapshots

        return {
            "name": f"{self.family}_{self.model}",
            "weights_sha256": snapshots.digest(path) if path else None,
        }
