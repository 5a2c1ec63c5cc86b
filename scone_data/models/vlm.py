"""Chat vision-language models through transformers' image-text-to-text auto classes.

:func:`load_vlm` reads a local model directory (a Hugging Face snapshot: Qwen2.5-VL, Qwen3-VL, or
any chat VLM whose processor takes ``text=``/``images=`` and has a chat template) with
``AutoProcessor`` and ``AutoModelForImageTextToText``, offline only. :class:`VlmGenerator` asks
many (images, question) prompts at once: greedy decoding, one left-padded batch per call.

:func:`build_tiny` makes a random-weight Qwen2.5-VL or Qwen3-VL from a code config (hidden size 64,
two layers, a two-block vision tower) with the model's real processor class, whose tokenizer is a
byte-level BPE made in code (256 byte tokens, no merges, Qwen's special tokens) and whose chat
template is Qwen's format reduced to images and text: no file is read, so it works offline, and a
forward pass is milliseconds on a CPU. It exists for tests and smoke runs; the real processors'
vocabularies (151k tokens) cannot be built offline, so their outputs are not comparable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TINY_ARCHS = ("qwen2_5_vl", "qwen3_vl")
# Qwen's chat format, reduced to what the stages send (roles, images, text); real snapshots bring theirs.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>")  # fmt: skip
TINY_PIXELS = (28 * 28 * 4, 28 * 28 * 16)  # min/max pixels: 4 to 16 image tokens per image
# Weights drawn at 0.1, not transformers' 0.02: at 0.02 the image barely moves a random model's
# answer (three images, one answer), which would blind the tests to a wrong image path.
INIT_RANGE = 0.1


def _tokenizer():
    """Qwen2's tokenizer class over a byte-level BPE made in code: 256 byte tokens, no merges, and
    Qwen's special tokens (so any text round-trips, and chat templates find their markers)."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tok = T.Qwen2TokenizerFast(tokenizer_object=tk, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")  # fmt: skip
    tok.add_special_tokens({"additional_special_tokens": list(_SPECIALS[1:])})
    return tok


def tiny_processor(arch: str = "qwen2_5_vl"):
    """The arch's real processor class built in code: tiny tokenizer, 4 to 16 image tokens per image."""
    import transformers as T

    tok, (lo, hi) = _tokenizer(), TINY_PIXELS
    if arch == "qwen3_vl":  # 16-pixel patches: a merged token covers 32x32 pixels
        image = T.Qwen2VLImageProcessorFast(patch_size=16, min_pixels=lo * 32**2 // 28**2,
                                            max_pixels=hi * 32**2 // 28**2)  # fmt: skip
        return T.Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=T.Qwen3VLVideoProcessor(),
                                  chat_template=TINY_CHAT_TEMPLATE)  # fmt: skip
    image = T.Qwen2VLImageProcessor(min_pixels=lo, max_pixels=hi)
    return T.Qwen2_5_VLProcessor(image_processor=image, tokenizer=tok,
                                 video_processor=T.Qwen2VLVideoProcessor(), chat_template=TINY_CHAT_TEMPLATE)  # fmt: skip


def tiny_config(arch: str, ids: dict[str, int], vocab_size: int):
    """A two-layer, 64-wide decoder and a two-block, 32-wide vision tower of ``arch``."""
    import transformers as T

    text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                initializer_range=INIT_RANGE)  # fmt: skip
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  spatial_merge_size=2, temporal_patch_size=2, initializer_range=INIT_RANGE)  # fmt: skip
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                  initializer_range=INIT_RANGE, tie_word_embeddings=False)  # fmt: skip
    mrope = [2, 3, 3]  # 2 * (2 + 3 + 3) = head dim 16
    if arch == "qwen3_vl":
        text.update(head_dim=16, rope_scaling={"rope_type": "default", "mrope_section": mrope,
                                               "mrope_interleaved": True})  # fmt: skip
        vision.update(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[1])
        return T.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    text.update(rope_scaling={"type": "mrope", "mrope_section": mrope})
    vision.update(patch_size=14, window_size=56, fullatt_block_indexes=[1])
    return T.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)


def build_tiny(seed: int = 0, arch: str = "qwen2_5_vl"):
    """(model, processor): a random-weight tiny Qwen2.5-VL or Qwen3-VL, the same for the same seed."""
    import torch
    from transformers import AutoModelForImageTextToText

    if arch not in TINY_ARCHS:
        raise ValueError(f"tiny arch {arch!r} is not one of {', '.join(TINY_ARCHS)}")
    proc = tiny_processor(arch)
    ids = {s: proc.tokenizer.convert_tokens_to_ids(s) for s in _SPECIALS}
    cfg = tiny_config(arch, ids, len(proc.tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model.eval(), proc


def save_tiny(path: str | Path, seed: int = 0, arch: str = "qwen2_5_vl") -> Path:
    """Write a tiny preset as a model directory (``save_pretrained``), as a snapshot would be."""
    model, proc = build_tiny(seed, arch)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return Path(path)


def load_vlm(path: str | Path, device: str = "cpu", bf16: bool = False, attn: str | None = None):
    """(model, processor) from a local model directory, never from the network."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), local_files_only=True, dtype=dtype, attn_implementation=attn
    )
    return model.to(device).eval(), proc


@dataclass
class VlmGenerator:
    """Greedy answers of a chat VLM to prompts of images and text.

    ``model``/``processor``: as :func:`load_vlm` or :func:`build_tiny` return them. Images are (H, W, 3)
    uint8 RGB arrays (or PIL images); each prompt is one user turn: its images, then its text.
    """

    model: Any
    processor: Any

    def __post_init__(self) -> None:
        tok = getattr(self.processor, "tokenizer", self.processor)
        tok.padding_side = "left"  # generation appends on the right: every row's last token is real
        self._tok = tok
        gen = copy.deepcopy(self.model.generation_config)
        # greedy, whatever sampling the snapshot's generation_config asks for
        gen.do_sample, gen.num_beams, gen.temperature, gen.top_p, gen.top_k = False, 1, None, None, None
        gen.pad_token_id = gen.pad_token_id if gen.pad_token_id is not None else tok.pad_token_id
        self.generation_config = gen
        eos = gen.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])

    def chat_text(self, n_images: int, text: str) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
        msgs = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def inputs(self, prompts: list[tuple[list, str]]):
        """The processor's padded batch of ``prompts`` ((images, text) pairs), on the model's device."""
        from PIL import Image

        texts = [self.chat_text(len(ims), q) for ims, q in prompts]
        images = [
            Image.fromarray(im) if isinstance(im, np.ndarray) else im for ims, _ in prompts for im in ims
        ]
        enc = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return enc.to(self.model.device)

    def generate_ids(self, prompts: list[tuple[list, str]], max_new_tokens: int) -> list[list[int]]:
        """New token ids per prompt, one ``generate`` call for all; each ends at its first EOS."""
        import torch

        if not prompts:
            return []
        enc = self.inputs(prompts)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, generation_config=self.generation_config, max_new_tokens=max_new_tokens
            )
        res = []
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            cut = next((k + 1 for k, t in enumerate(row) if t in self._eos), len(row))
            res.append(row[:cut])
        return res

    def generate(
        self, prompts: list[tuple[list, str]], max_new_tokens: int, batch_size: int = 8
    ) -> list[str]:
        """Answers to ``prompts``, ``batch_size`` prompts per ``generate`` call, special tokens removed."""
        out: list[str] = []
        for a in range(0, len(prompts), batch_size):
            ids = self.generate_ids(prompts[a : a + batch_size], max_new_tokens)
            out += [self._tok.decode(t, skip_special_tokens=True).strip() for t in ids]
        return out
