"""Image-edit models (an image and an instruction in, an image out) through diffusers pipelines.

:func:`load_edit` reads a local diffusers pipeline directory (a Hugging Face snapshot with
``model_index.json``: Qwen-Image-Edit, FLUX.1 Kontext, or any pipeline whose ``__call__`` takes
``image=`` and ``prompt=``) with the pipeline class named, offline only. :class:`Editor` edits many
(image, prompt, seed) items: items are grouped by image size (a diffusers edit pipeline resizes every
image of a call to the first one's size), each group runs in calls of ``batch_size`` with one
``torch.Generator`` per item seeded by that item's seed, so an item's output does not depend on the
other items of its batch.

:func:`build_tiny` makes a random-weight :class:`~diffusers.FluxKontextPipeline` from code configs
(a one-double-block, one-single-block transformer, a two-level VAE, CLIP and T5 text encoders of
width 32) with byte-level tokenizers made in code: no file is read, so it works offline, and a step
at 64x64 pixels takes milliseconds on a CPU. It is FLUX.1 Kontext and not Qwen-Image-Edit because
``QwenImageEditPipeline`` always resizes the input image to about 1024x1024 pixels (its
``calculate_dimensions(1024 * 1024, ...)`` is not a parameter): a tiny Qwen-Image-Edit built the
same way took ~10 s per two-step call on this CPU. The tiny preset's outputs mean nothing; it
exists to run every code path in tests and smoke runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Pipelines this module is known to drive (any class exported by diffusers that takes image= and
# prompt= is accepted; these are the ones the registry has weights for, plus the tiny preset's).
KNOWN_PIPELINES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline", "FluxKontextPipeline")
# Call arguments of the tiny preset: Kontext would resize to its ~1 MP training resolutions and pad
# T5 prompts to 512 tokens; the tiny preset keeps the input size and 32 tokens.
TINY_CALL = {"_auto_resize": False, "max_sequence_length": 32}
_BYTES, _PAD, _EOS = 256, "<pad>", "</s>"


def pipeline_class(name: str):
    """The diffusers pipeline class ``name`` (ValueError when diffusers has no such pipeline)."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        raise ValueError(f"pipeline: diffusers {diffusers.__version__} has no pipeline {name!r}")
    return cls


def _tokenizer(max_length: int):
    """A byte-level BPE made in code (256 byte tokens, no merges, ``<pad>`` and ``</s>`` appended to
    every text), wrapped as transformers' fast tokenizer; any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab.update({_PAD: _BYTES, _EOS: _BYTES + 1})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(
        single=f"$A {_EOS}", special_tokens=[(_EOS, _BYTES + 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=_PAD, eos_token=_EOS, model_max_length=max_length
    )


def build_tiny(seed: int = 0):
    """A random-weight tiny :class:`~diffusers.FluxKontextPipeline`, the same for the same seed."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tok, tok2 = _tokenizer(77), _tokenizer(TINY_CALL["max_sequence_length"])
    vocab, pad, eos = _BYTES + 2, _BYTES, _BYTES + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
                                            bos_token_id=pad, pad_token_id=pad, eos_token_id=eos)).eval()  # fmt: skip
        t5 = T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8, pad_token_id=pad, eos_token_id=eos)).eval()  # fmt: skip
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            latent_channels=4, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035, sample_size=64)  # fmt: skip
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8])  # fmt: skip
    pipe = FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=clip,
                               tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok2, transformer=transformer.eval())  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny preset as a diffusers pipeline directory (``save_pretrained``), as a snapshot is."""
    build_tiny(seed).save_pretrained(str(path), safe_serialization=True)
    return Path(path)


def pipeline_name(path: str | Path) -> str:
    """The pipeline class a directory's ``model_index.json`` names."""
    import json

    return json.loads((Path(path) / "model_index.json").read_text())["_class_name"]


def load_edit(path: str | Path, pipeline: str | None = None, device: str = "cpu", bf16: bool = False):
    """A diffusers pipeline from a local directory, never from the network; ``pipeline``: its class
    name (None: the one ``model_index.json`` names)."""
    import torch

    cls = pipeline_class(pipeline or pipeline_name(path))
    dtype = torch.bfloat16 if bf16 else torch.float32
    pipe = cls.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """A pipeline's float [0, 1] image as uint8, rounded as diffusers' ``numpy_to_pil`` rounds."""
    return (np.asarray(x, dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8)


@dataclass
class EditItem:
    image: Any  # (H, W, 3) uint8 RGB array or PIL image
    prompt: str
    seed: int


@dataclass
class Editor:
    """Runs a diffusers edit pipeline on many items; see the module docstring.

    ``size``: "input" gives each output its input's size (rounded down to the pipeline's multiple of
    16 pixels) and for Kontext ``max_area`` of that size; "default" lets the pipeline choose.
    ``call``: further keyword arguments of every pipeline call (e.g. ``true_cfg_scale``,
    ``negative_prompt``, ``max_sequence_length``). ``cpu_threads``: torch threads during a call on a
    CPU (None: leave them): fp32 sums are ordered by the thread count, so one fixed count makes the
    bytes independent of how many threads a worker was given (a Ray actor with ``num_cpus=1`` has one,
    a driver all its cores)."""

    pipe: Any
    num_inference_steps: int = 28
    guidance_scale: float | None = 2.5
    batch_size: int = 4
    size: str = "input"
    call: dict[str, Any] = field(default_factory=dict)
    cpu_threads: int | None = None

    def call_kwargs(self, h: int, w: int) -> dict[str, Any]:
        """The arguments of one call on images of ``h`` x ``w`` pixels (besides image, prompt, generator)."""
        import inspect

        params = inspect.signature(self.pipe.__call__).parameters
        kw: dict[str, Any] = {"num_inference_steps": int(self.num_inference_steps), "output_type": "np"}
        if self.guidance_scale is not None:
            kw["guidance_scale"] = float(self.guidance_scale)
        if self.size == "input":
            m = 16
            kw["height"], kw["width"] = max(m, h // m * m), max(m, w // m * m)
            if "max_area" in params:
                kw["max_area"] = kw["height"] * kw["width"]
        kw.update(self.call)
        return kw

    def run_group(self, images: list, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """One pipeline call on same-size images: (N, H, W, 3) float32 in [0, 1]."""
        import torch
        from PIL import Image

        from scone_data.models.common import cpu_threads

        pil = [Image.fromarray(im) if isinstance(im, np.ndarray) else im for im in images]
        w, h = pil[0].size
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]  # CPU noise: device-independent
        kw = self.call_kwargs(h, w)
        # one negative prompt per item: Qwen-Image-Edit pairs each with its image
        if isinstance(kw.get("negative_prompt"), str):
            kw["negative_prompt"] = [kw["negative_prompt"]] * len(pil)
        with cpu_threads(self.cpu_threads, self.pipe.device.type == "cpu"), torch.inference_mode():
            out = self.pipe(image=pil, prompt=list(prompts), generator=gens, **kw)
        return np.asarray(out.images, dtype=np.float32)

    def edit_float(self, items: list[EditItem]) -> list[np.ndarray]:
        """Each item's output as (H, W, 3) float32 in [0, 1], in the items' order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, it in enumerate(items):
            im = it.image
            hw = im.shape[:2] if isinstance(im, np.ndarray) else (im.size[1], im.size[0])
            groups.setdefault(tuple(hw), []).append(k)
        out: list[np.ndarray | None] = [None] * len(items)
        for idx in groups.values():
            for a in range(0, len(idx), max(1, int(self.batch_size))):
                part = idx[a : a + max(1, int(self.batch_size))]
                res = self.run_group([items[k].image for k in part], [items[k].prompt for k in part],
                                     [items[k].seed for k in part])  # fmt: skip
                for k, r in zip(part, res):
                    out[k] = r
        return out  # type: ignore[return-value]

    def edit(self, items: list[EditItem]) -> list[np.ndarray]:
        """Each item's output as an (H, W, 3) uint8 RGB array."""
        return [to_uint8(x) for x in self.edit_float(items)]


def import_ok(name: str) -> bool:
    """Whether ``diffusers.<name>`` imports (used by the doctor and the tests)."""
    try:
        importlib.import_module("diffusers")
        pipeline_class(name)
    except (ImportError, ValueError):
        return False
    return True
