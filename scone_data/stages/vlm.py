"""A chat vision-language model as a bank step (captions and tags) and as a per-sample judge.

- :class:`VlmCaptioner` (``{type: vlm_caption}``): for each row without a caption, a caption and
  subject tags from the model; the pair builder weaves captions into scene instructions and the tags
  can name what a detector looks for. Rows that have a caption are left as they are. Each filled row
  records ``caption_provenance``: model, weights hash, prompt name, version and sha256, the raw answer.
- :class:`VlmVerifier`: asks of one rendered sample the questions SconeEval's judge asks (is each
  intended subject in the target, is each distractor absent from it, does each reference's phrase
  pick one object) and returns the answers with a keep/reject decision and its reason.

Models: Qwen2.5-VL and Qwen3-VL from the registry (``scone-data weights fetch qwen2_5_vl_7b_instruct``),
``local`` (any chat VLM directory with the same processor API, ``weights_dir`` required) or ``tiny``
(random weights, tests). Weights are checked before any work; loading never touches the network.
Decoding is greedy, ``batch_size`` prompts per left-padded ``generate`` call, so the answers are
those of one-prompt calls. Prompts are the files ``prompts/<name>.<version>.txt``.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from scone_data.models import registry
from scone_data.stages.base import Batch, register_stage, reject
from scone_data.stages.model_stage import BAD_IMAGE, SnapshotStage, is_rgb_uint8

PROMPTS = Path(__file__).with_name("prompts")
VLM_ARCHS = ("qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen3_vl_4b", "qwen3_vl_8b")
_TAG = re.compile(r"[a-z][a-z '\-]{0,39}")


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    text: str  # comments removed
    sha256: str  # of the file's bytes

    def info(self) -> dict[str, str]:
        return {"prompt": self.name, "prompt_version": self.version, "prompt_sha256": self.sha256[:16]}


def load_prompt(name: str, version: str) -> Prompt:
    """``prompts/<name>.<version>.txt`` without its ``#`` comment lines (FileNotFoundError if absent)."""
    raw = (PROMPTS / f"{name}.{version}.txt").read_bytes()
    lines = [x for x in raw.decode("utf-8").splitlines() if not x.lstrip().startswith("#")]
    return Prompt(name, version, "\n".join(lines).strip(), hashlib.sha256(raw).hexdigest())


@dataclass
class VlmModel(SnapshotStage):
    """Settings and loading shared by the captioner and the verifier."""

    family: ClassVar[str] = "vlm"
    archs: ClassVar[tuple[str, ...]] = VLM_ARCHS
    prompt_name: ClassVar[str] = ""

    model: str = "qwen2_5_vl_7b"  # a registered arch (VLM_ARCHS) | local | tiny (random weights, tests)
    weights_dir: str | None = None  # model directory; None -> the registry's cache copy (tiny: built in code)
    prompt_version: str = "v1"  # prompts/<prompt_name>.<version>.txt
    max_new_tokens: int = 64
    batch_size: int = 8  # prompts per generate call
    bf16: bool = False  # weights in bf16 (use on GPUs; CPUs run fp32)
    attention: str = "sdpa"  # sdpa | eager (transformers' attn_implementation)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_gpus: str | float = "auto"  # GPUs per Ray worker; auto: a share of each GPU
    verify_sha256: bool = True  # False: only check that the files exist
    seed: int = 0  # initialises the tiny preset

    def validate(self) -> list[str]:
        out = self.snapshot_problems()
        if not (PROMPTS / f"{self.prompt_name}.{self.prompt_version}.txt").is_file():
            have = sorted(p.name for p in PROMPTS.glob(f"{self.prompt_name}.*.txt"))
            out.append(f"prompt_version: no file {self.prompt_name}.{self.prompt_version}.txt (have {have})")
        for f in ("max_new_tokens", "batch_size"):
            if int(getattr(self, f)) < 1:
                out.append(f"{f}: {getattr(self, f)} must be >= 1")
        if self.attention not in ("sdpa", "eager"):
            out.append(f"attention: {self.attention!r} is not sdpa or eager")
        return out

    def setup(self) -> None:
        from scone_data.models.vlm import VlmGenerator, build_tiny, load_vlm

        path = self.model_dir()
        device = registry.resolve_device(self.device)
        if path is None:
            import torch

            model, proc = build_tiny(self.seed)
            model = model.to(device, dtype=torch.bfloat16 if self.bf16 else torch.float32)
        else:
            model, proc = load_vlm(path, device, self.bf16, self.attention)
        if getattr(proc, "chat_template", None) is None:
            raise registry.CheckpointError(f"weights_dir {path}: the processor has no chat template")
        self._gen = VlmGenerator(model, proc)
        self._prompt = load_prompt(self.prompt_name, self.prompt_version)
        self._info = self.info_for(path)  # path: checked by model_dir above


def parse_caption(text: str, max_tags: int) -> tuple[str | None, list[str]]:
    """(caption, tags) from an answer in the prompt's two-line form; a caption-only answer is its
    first line. Tags: lowercase words, deduplicated, at most ``max_tags``."""
    caption, tags = None, []
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        key, _, rest = ln.partition(":")
        if key.strip().lower() == "caption" and caption is None:
            caption = rest
        elif key.strip().lower() == "tags":
            tags += rest.split(",")
    if caption is None and lines and not lines[0].lower().startswith("tags"):
        caption = lines[0]
    # printable text only: a model's stray control or replacement characters never reach a record
    caption = " ".join("".join(ch for ch in caption or "" if ch.isprintable() and ch != "\ufffd").split())
    clean = []
    for t in tags:
        m = _TAG.fullmatch(" ".join(t.strip().lower().strip(".").split()))
        if m and m.group(0) not in clean:
            clean.append(m.group(0))
    return (caption or None), clean[:max_tags]


@register_stage
@dataclass
class VlmCaptioner(VlmModel):
    """Captions and subject tags for the rows without a caption."""

    name: ClassVar[str] = "vlm_caption"
    type: ClassVar[str] = "vlm_caption"
    needs: ClassVar[tuple[str, ...]] = ("image",)
    adds: ClassVar[dict[str, str]] = {
        "caption": "value",
        "subject_tags": "json",
        "caption_provenance": "json",
    }
    prompt_name: ClassVar[str] = "vlm_caption"

    max_tags: int = 16

    def validate(self) -> list[str]:
        return super().validate() + ([] if int(self.max_tags) >= 0 else [f"max_tags: {self.max_tags} < 0"])

    def process(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        caption = list(batch.get("caption", [None] * n))
        tags = list(batch.get("subject_tags", [None] * n))
        prov = list(batch.get("caption_provenance", [None] * n))
        todo = []
        for i in range(n):
            if not is_rgb_uint8(batch["image"][i]):
                reject(batch, i, BAD_IMAGE)
            elif not (caption[i] or "").strip():
                todo.append(i)
        answers = self._gen.generate(
            [([batch["image"][i]], self._prompt.text) for i in todo], self.max_new_tokens, self.batch_size
        )
        for i, raw in zip(todo, answers):
            caption[i], tags[i] = parse_caption(raw, self.max_tags)
            prov[i] = {"model": self._info["name"], "weights_sha256": self._info["weights_sha256"],
                       **self._prompt.info(), "max_new_tokens": self.max_new_tokens, "raw": raw}  # fmt: skip
        batch.update(caption=caption, subject_tags=tags, caption_provenance=prov)
        return batch


# -- verification -------------------------------------------------------------------------------
_NUMBERS = {w: k for k, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def parse_answer(kind: str, text: str) -> bool | int | None:
    """yes/no -> True/False, a count -> int; None when the answer says neither."""
    words = re.findall(r"[a-z]+|\d+", text.lower())
    if kind == "count":
        for w in words:
            if w.isdigit():
                return int(w)
            if w in _NUMBERS:
                return _NUMBERS[w]
        return None
    return {"yes": True, "no": False}.get(words[0]) if words else None


@dataclass
class Question:
    kind: str  # present | count | unambiguous
    image: str  # member name the question is asked of
    subject: str  # the label or phrase it is about
    text: str
    expected: bool | int
    code: str  # reject reason code when the answer differs


def sample_questions(record: dict, prompt: Prompt) -> list[Question]:
    """The judge's questions of one sample record (schema v2), in a fixed order."""
    tmpl = dict(ln.split(":", 1) for ln in prompt.text.splitlines() if ":" in ln)
    tmpl = {k.strip(): v.strip() for k, v in tmpl.items()}
    target = record["target"]["member"]
    intended: dict[str, int] = {}
    for b in record["target"]["boxes"]:
        intended[b["label"]] = intended.get(b["label"], 0) + 1
    others = sorted({c["label"] for r in record["references"] for c in r["candidates"] if not c["intended"]})
    out = []
    for label, k in intended.items():
        if label in others:  # same-label distractors: only the intended ones may appear
            out.append(
                Question("count", target, label, tmpl["count"].format(label=label), k, "count_mismatch")
            )
        else:
            out.append(Question("present", target, label, tmpl["present"].format(label=label), True,
                                "intended_missing"))  # fmt: skip
    for label in others:
        if label not in intended:
            out.append(Question("present", target, label, tmpl["present"].format(label=label), False,
                                "distractor_present"))  # fmt: skip
    for r in record["references"]:
        mine = [c["label"] for c in r["candidates"] if c["intended"]]
        if mine:
            phrase = r.get("expression") or f"the {mine[0]}"
            out.append(Question("unambiguous", r["member"], phrase,
                                tmpl["unambiguous"].format(phrase=phrase), True, "ambiguous"))  # fmt: skip
    return out


def decide(questions: list[Question], answers: list[str]) -> dict[str, Any]:
    """``{"keep", "reason", "answers"}``: kept when every answer is the expected one; the reason is
    the first failure (``code: subject in image``, or ``unclear_answer: ...``); "" when kept."""
    rows, reason = [], ""
    for q, a in zip(questions, answers, strict=True):
        got = parse_answer(q.kind, a)
        ok = got is not None and got == q.expected and type(got) is type(q.expected)
        rows.append({"kind": q.kind, "image": q.image, "subject": q.subject, "question": q.text,
                     "expected": q.expected, "answer": a, "parsed": got, "ok": ok})  # fmt: skip
        if not ok and not reason:
            code = "unclear_answer" if got is None else q.code
            reason = f"{code}: {q.subject} in {q.image}"
    return {"keep": not reason, "reason": reason, "answers": rows}


def _rgb(data: Any):
    import numpy as np
    from PIL import Image

    if isinstance(data, np.ndarray):
        return data
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@dataclass
class VlmVerifier(VlmModel):
    """Judges rendered samples: ``verifier(record, members)`` -> the decision of :func:`decide` plus
    the model's provenance. ``members``: member name -> encoded image bytes or an (H, W, 3) uint8 array.
    :meth:`verify_many` batches the questions of many samples into the same ``generate`` calls."""

    type: ClassVar[str] = ""  # not a bank step: it reads samples, which the shard phase makes
    prompt_name: ClassVar[str] = "vlm_verify"
    max_new_tokens: int = 8

    def process(self, batch: Batch) -> Batch:  # pragma: no cover - not a row stage
        raise TypeError("VlmVerifier judges samples: call it with (record, members)")

    def __call__(self, record: dict, members: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        return self.verify_many([(record, members)])[0]

    def verify_many(self, samples: list[tuple[dict, dict[str, Any]]]) -> list[dict[str, Any]]:
        if not self._ready:
            self.setup()
            self._ready = True
        qs = [sample_questions(rec, self._prompt) for rec, _ in samples]
        prompts = [([_rgb(mem[q.image])], q.text) for (_, mem), sq in zip(samples, qs) for q in sq]
        answers = self._gen.generate(prompts, self.max_new_tokens, self.batch_size)
        out, a = [], 0
        for sq in qs:
            res = decide(sq, answers[a : a + len(sq)])
            a += len(sq)
            out.append({**res, "model": self._info["name"], "weights_sha256": self._info["weights_sha256"],
                        **self._prompt.info()})  # fmt: skip
        return out
