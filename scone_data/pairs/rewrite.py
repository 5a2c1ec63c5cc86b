"""Optional rewriting of instructions by a local causal language model (``PairConfig.rewrite_model``).

The model is any transformers causal LM saved in a directory (loaded with ``local_files_only``). Decoding
is greedy, in fixed batches over the plans in slot order, so the same plans, model and settings give the
same text. A rewrite is used only if it keeps what makes the sample trainable: every reference mention
("image 1", ...) and no new one, and, for each reference, the phrase that names its subject (the
referring expression of an intra reference, the label otherwise). Otherwise the template text is kept
and counted under ``rewrite_kept_original``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from scone_data.pairs.sample_plan import SamplePlan

PROMPT = (
    "Rewrite this image-generation instruction in other words. Keep every mention like 'image 1' and "
    "every description of an object exactly.\nInstruction: {text}\nRewritten:"
)
# A rewrite shorter than this or longer than this many times the original is not an instruction.
MIN_REWRITE_CHARS = 8
MAX_LENGTH_RATIO = 3.0
_MENTION = re.compile(r"\bimage (\d+)\b", re.IGNORECASE)

Generate = Callable[[list[str]], list[str]]


def required_phrases(plan: SamplePlan) -> list[str]:
    """What a rewrite of ``plan.instruction`` must still contain (compared case-insensitively)."""
    out = []
    for i, r in enumerate(plan.references):
        out.append(f"image {i + 1}")
        label = next(c.label for c in r.candidates if c.intended)
        out.append(r.expression if r.expression_spec else label)
    return out


def acceptable(original: str, rewritten: str, required: list[str]) -> bool:
    """Whether ``rewritten`` may replace ``original`` (see the module docstring)."""
    text = rewritten.strip()
    if not MIN_REWRITE_CHARS <= len(text) <= MAX_LENGTH_RATIO * max(len(original), MIN_REWRITE_CHARS):
        return False
    if set(_MENTION.findall(text)) != set(_MENTION.findall(original)):
        return False
    low = text.lower()
    return all(p.lower() in low for p in required)


def rewrite_plans(plans: list[SamplePlan], generate: Generate, batch_size: int, notes: Counter):
    """Plans with accepted rewrites swapped in; ``notes`` counts ``rewrite_kept_original``."""
    out = []
    for i in range(0, len(plans), batch_size):
        batch = plans[i : i + batch_size]
        texts = generate([PROMPT.format(text=p.instruction) for p in batch])
        for p, t in zip(batch, texts, strict=True):
            t = _first_line(t)
            if acceptable(p.instruction, t, required_phrases(p)):
                out.append(replace(p, instruction=t))
            else:
                notes["rewrite_kept_original"] += 1
                out.append(p)
    return out


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def load_generator(path: str, max_new_tokens: int) -> Generate:
    """A greedy batch generator over the causal LM in directory ``path``: prompts -> continuations."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("rewrite_model needs torch and transformers; install them or unset it") from e
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tok.padding_side = "left"  # generation continues from the right end of every row
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    pad_id = tok.pad_token_id
    eos_id = tok.eos_token_id if tok.eos_token_id is not None else pad_id

    def generate(prompts: list[str]) -> list[str]:
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        return tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    return generate
