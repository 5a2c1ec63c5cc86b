"""An image-edit model (diffusers) as a model stage: distractor insertion and re-posed targets.

:class:`ImageEdit` loads a diffusers edit pipeline (``QwenImageEditPipeline`` for
``qwen_image_edit``, ``FluxKontextPipeline`` for ``flux1_kontext_dev``, any pipeline class that takes
``image=`` and ``prompt=`` for ``local``, a random-weight Kontext for ``tiny``) from a local directory
and edits images with one seed per item (a ``torch.Generator`` each, so an output does not depend on
the other items of its batch). Two uses, each returning the image and a JSON provenance (model,
pipeline, weights digest, prompt, seed, steps, guidance):

- :meth:`ImageEdit.insert`: Scone's distractor insertion, on the *real* reference photo
  ("add another red mug to the left of the mug").
- :meth:`ImageEdit.repose`: a re-posed target from a reference subject's cut-out and a scene
  instruction (the cut-out is laid on a plain background first; the reference stays the cut-out).

As a row stage (``process``: columns ``image``, ``edit_prompt``, ``edit_seed`` -> ``edited_image``,
``edit_provenance``) it runs in the executor's actor pools with a GPU request like the detector. The
registered bank steps are its subclasses ``insert`` (:mod:`scone_data.stages.insert`) and ``repose``
(:mod:`scone_data.stages.repose`), through :class:`~scone_data.stages.generated.EditStep`. Weights are
checked before any work (a missing or corrupt file names itself and the fetch command); loading never
touches the network. bf16 on GPUs, fp32 on CPUs (``bf16: auto``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from scone_data.models import registry
from scone_data.stages.base import Batch, reject
from scone_data.stages.model_stage import BAD_IMAGE, SnapshotStage, is_rgb_uint8

EDIT_ARCHS = ("qwen_image_edit", "flux1_kontext_dev")
PIPELINES = {"qwen_image_edit": "QwenImageEditPipeline", "flux1_kontext_dev": "FluxKontextPipeline",
             "tiny": "FluxKontextPipeline"}  # fmt: skip
NO_PROMPT = "no_edit_prompt: empty instruction"
# Buildings, fixed structures and large vehicles: nothing small is inserted beside them (a teddy bear to
# the right of a pagoda) and a re-posed one goes outdoors (not a rocket in a kitchen). Matched by a
# label's last word ("clock tower").
LARGE_THINGS = frozenset(
    "building house tower pagoda temple church castle bridge lighthouse skyscraper windmill palace "
    "monument statue fountain rocket shuttle airplane ship boat train bus truck".split()
)


def is_large(label: str) -> bool:
    """Whether ``label`` names a building, a fixed structure or a large vehicle (:data:`LARGE_THINGS`)."""
    words = label.strip().lower().split()
    return bool(words) and words[-1] in LARGE_THINGS


@dataclass
class ImageEdit(SnapshotStage):
    """Settings, loading and the two uses of an image-edit model (see the module docstring)."""

    family: ClassVar[str] = "edit"
    archs: ClassVar[tuple[str, ...]] = EDIT_ARCHS
    layout: ClassVar[str | None] = "diffusers"
    local_needs: ClassVar[str] = "a diffusers pipeline directory"
    name: ClassVar[str] = "image_edit"
    type: ClassVar[str] = ""  # not a bank step itself: stages/insert.py's ``insert`` is
    needs: ClassVar[tuple[str, ...]] = ("image", "edit_prompt", "edit_seed")
    adds: ClassVar[dict[str, str]] = {"edited_image": "array", "edit_provenance": "json"}

    model: str = "qwen_image_edit"  # a registered arch (EDIT_ARCHS) | local | tiny (random weights, tests)
    pipeline: str | None = None  # diffusers class name; None: the model's (local: model_index.json's)
    weights_dir: str | None = None  # pipeline directory; None -> the registry's cache copy
    num_inference_steps: int = 28
    guidance_scale: float | None = 2.5  # Kontext's distilled guidance; None: not passed
    true_cfg_scale: float | None = None  # Qwen-Image-Edit's classifier-free guidance (its card: 4.0)
    negative_prompt: str | None = None  # with true_cfg_scale (Qwen-Image-Edit's card: " ")
    size: str = "input"  # input: the output has the input's size (multiple of 16) | default: the pipeline's
    call: dict[str, Any] = field(default_factory=dict)  # further pipeline call arguments
    batch_size: int = 4  # items per pipeline call
    bf16: bool | str = "auto"  # auto: bf16 on GPUs, fp32 on CPUs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_gpus: str | float = "auto"  # GPUs per Ray worker; auto: a share of each GPU
    verify_sha256: bool = True  # False: only check that the files exist
    seed: int = 0  # initialises the tiny preset
    # torch threads on a CPU: one fixed count gives the same bytes in a Ray actor and in-process
    cpu_threads: int | None = 1

    def validate(self) -> list[str]:
        out = self.snapshot_problems()
        name = self.pipeline or PIPELINES.get(self.model)
        if name:
            from scone_data.models.edit import pipeline_class

            try:
                pipeline_class(name)
            except ValueError as e:
                out.append(str(e))
        for f in ("num_inference_steps", "batch_size"):
            if int(getattr(self, f)) < 1:
                out.append(f"{f}: {getattr(self, f)} must be >= 1")
        if self.size not in ("input", "default"):
            out.append(f"size: {self.size!r} is not input or default")
        if self.cpu_threads is not None and int(self.cpu_threads) < 1:
            out.append(f"cpu_threads: {self.cpu_threads} must be >= 1 (or null: torch's default)")
        if self.bf16 not in ("auto", True, False):
            out.append(f"bf16: {self.bf16!r} is not auto, true or false")
        return out

    def setup(self) -> None:
        import torch

        from scone_data.models.edit import TINY_CALL, Editor, build_tiny, load_edit, pipeline_name

        path = self.model_dir()
        device = registry.resolve_device(self.device)
        self._bf16 = device.startswith("cuda") if self.bf16 == "auto" else bool(self.bf16)
        dtype = torch.bfloat16 if self._bf16 else torch.float32
        call = dict(self.call)
        if self.true_cfg_scale is not None:
            call.setdefault("true_cfg_scale", float(self.true_cfg_scale))
        if self.negative_prompt is not None:
            call.setdefault("negative_prompt", self.negative_prompt)
        if path is None:
            pipe = build_tiny(self.seed).to(device, dtype)
            call = {**TINY_CALL, **call}
            self._pipeline = "FluxKontextPipeline"
        else:
            self._pipeline = self.pipeline or PIPELINES.get(self.model) or pipeline_name(path)
            pipe = load_edit(path, self._pipeline, device, self._bf16)
            if self.model == "tiny":  # a saved tiny preset keeps the tiny call arguments
                call = {**TINY_CALL, **call}
        self._editor = Editor(pipe, self.num_inference_steps, self.guidance_scale, self.batch_size,
                              self.size, call, self.cpu_threads)  # fmt: skip
        self._info = self.info_for(path)  # path: checked by model_dir above

    def _ensure(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def provenance(self, use: str, prompt: str, seed: int, image: np.ndarray) -> dict[str, Any]:
        """What made an output, as plain JSON types."""
        import diffusers

        ed = self._editor
        return {
            "use": use,
            "model": self._info["name"],
            "pipeline": self._pipeline,
            "weights_sha256": self._info["weights_sha256"],
            "prompt": prompt,
            "seed": int(seed),
            "steps": int(ed.num_inference_steps),
            "guidance_scale": None if ed.guidance_scale is None else float(ed.guidance_scale),
            "call": {k: v for k, v in sorted(ed.call.items())},
            "size": [int(image.shape[0]), int(image.shape[1])],
            "dtype": "bf16" if self._bf16 else "fp32",
            "diffusers": diffusers.__version__,
        }

    def edit_many(self, use: str, images: list, prompts: list[str], seeds: list[int]):
        """[(edited (H, W, 3) uint8 image, provenance)] for each (image, prompt, seed)."""
        from scone_data.models.edit import EditItem

        self._ensure()
        items = [EditItem(im, p, int(s)) for im, p, s in zip(images, prompts, seeds, strict=True)]
        outs = self._editor.edit(items)
        return [(o, self.provenance(use, it.prompt, it.seed, o)) for o, it in zip(outs, items)]

    def insert(self, photos: list[np.ndarray], instructions: list[str], seeds: list[int]):
        """Distractor insertion: each real photo edited by its instruction ("add another red mug to the
        left of the mug"); [(image, provenance)], provenance ``use`` "insertion"."""
        return self.edit_many("insertion", photos, instructions, seeds)

    def repose(self, cutouts: list[np.ndarray], instructions: list[str], seeds: list[int],
               background: tuple[int, int, int] = (255, 255, 255)):  # fmt: skip
        """Re-posed targets: each reference cut-out (H, W, 4) RGBA, or (H, W, 3) already on its
        background, laid on ``background`` and generated into the scene its instruction names;
        [(image, provenance)], provenance ``use`` "repose"."""
        return self.edit_many("repose", [flatten(c, background) for c in cutouts], instructions, seeds)

    def process(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        out_img = list(batch.get("edited_image", [None] * n))
        prov = list(batch.get("edit_provenance", [None] * n))
        todo = []
        for i in range(n):
            if not is_rgb_uint8(batch["image"][i]):
                reject(batch, i, BAD_IMAGE)
            elif not str(batch["edit_prompt"][i] or "").strip():
                reject(batch, i, NO_PROMPT)
            else:
                todo.append(i)
        res = self.edit_many("edit", [batch["image"][i] for i in todo], [batch["edit_prompt"][i] for i in todo],
                             [int(batch["edit_seed"][i]) for i in todo])  # fmt: skip
        for i, (im, p) in zip(todo, res):
            out_img[i], prov[i] = im, p
        batch.update(edited_image=out_img, edit_provenance=prov)
        return batch


def flatten(cutout: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """An RGBA cut-out over a plain background as (H, W, 3) uint8; RGB passes through."""
    c = np.asarray(cutout)
    if c.ndim == 3 and c.shape[2] == 3:
        return c.astype(np.uint8)
    if c.ndim != 3 or c.shape[2] != 4:
        raise ValueError(f"cut-out must be (H, W, 4) RGBA or (H, W, 3) RGB, got {c.shape}")
    a = c[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32)
    return (c[..., :3].astype(np.float32) * a + bg * (1 - a)).round().astype(np.uint8)
