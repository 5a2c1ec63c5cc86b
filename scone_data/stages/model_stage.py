"""The shared part of the model stages (detector, segmenter): GPU request and provenance."""

from __future__ import annotations

from dataclasses import dataclass
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

    def model_problems(self, known: tuple[str, ...]) -> list[str]:
        """Problems with the settings every model stage has (``known``: the family's model names)."""
        return registry.model_setting_problems(
            self.family, self.model, known, self.checkpoint, self.device, self.num_gpus, self.verify_sha256
        )

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
