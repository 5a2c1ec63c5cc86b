"""Turning samples into BAGEL's subject-to-image sequence and packing them under a token budget.

One sample, in order (each block is one attention split):
  for each reference: [<|vision_start|> VAE tokens <|vision_end|>] full, then the same framing around
  its ViT tokens, full; then [<|im_start|> instruction <|im_end|>] causal; then
  [<|vision_start|> noised target VAE tokens <|vision_end|>] noise (seen by nothing outside it).
RoPE ids: one id per image block, consecutive ids over text, the target shares the next id (a
dropped image block still takes its id, except in the sampler's image-free branch: see _add).
Classifier-free-guidance dropout (text / ViT / VAE conditions) is drawn per sample from (seed, epoch,
key), so it does not depend on workers or ranks.
"""

import random

import torch
from scone_train.data import Resize, _seed
from scone_train.layers import flattened_position_ids
from scone_train.tokenizer import encode, special_ids
from scone_train.vit import patchify


class SequenceBuilder:
    """Builds items (one per sample) and packs them into batches. Settings are plain values."""

    def __init__(
        self,
        tok,
        special: dict,
        vae_resize: Resize,
        vit_resize: Resize,
        vit_patch: int,
        latent_stride: int,
        max_latent_size: int,
        vit_max_side: int,
        dropout: dict,
        seed: int,
    ):
        self.tok, self.sp = tok, special
        self.vae_resize, self.vit_resize, self.vit_patch = vae_resize, vit_resize, vit_patch
        self.latent_stride, self.max_latent, self.vit_max_side = latent_stride, max_latent_size, vit_max_side
        self.dropout, self.seed = dropout, seed

    def item(self, sample: dict, epoch: int, train: bool = True) -> dict:
        """Decoded sample -> item with tensors and its token count."""
        rng = random.Random(_seed(self.seed, "sample", epoch, sample["key"]))
        drop = {k: train and rng.random() < self.dropout.get(k, 0.0) for k in ("text", "vit", "vae")}
        refs = []
        for img in sample["refs"]:
            refs.append({"vae": self.vae_resize(img), "vit": self.vit_resize(img)})
        item = {
            "key": sample["key"],
            "refs": refs,
            "drop": drop,
            "text_ids": encode(self.tok, sample["record"]["instruction"]),
            "target": self.vae_resize(sample["target"]),
            "n": rng.gauss(0.0, 1.0),
        }
        item["num_tokens"] = self.count(item)
        return item

    def count(self, item: dict) -> int:
        s, p = self.latent_stride, self.vit_patch
        n = 0
        for r in item["refs"]:
            n += 0 if item["drop"]["vae"] else r["vae"].shape[1] // s * (r["vae"].shape[2] // s) + 2
            n += 0 if item["drop"]["vit"] else r["vit"].shape[1] // p * (r["vit"].shape[2] // p) + 2
        n += 0 if item["drop"]["text"] else len(item["text_ids"]) + 2
        return n + item["target"].shape[1] // s * (item["target"].shape[2] // s) + 2

    def pack(self, items: list[dict]) -> dict:
        """Items -> one packed batch (see Bagel.forward for the fields)."""
        b = _Batch()
        for it in items:
            self._add(b, it)
        return b.tensors()

    def _add(self, b: "_Batch", it: dict) -> None:
        start, rope, refs, sp = b.curr, 0, [], self.sp
        for r in it["refs"]:
            vae_block = vit_block = None
            if not it["drop"]["vae"]:
                vae_block = b.vae_image(
                    r["vae"], self.latent_stride, self.max_latent, rope, sp, -float("inf")
                )
            # A condition dropped in training still advances RoPE, as in BAGEL's packing; the sampler's
            # image-free CFG branch holds no image at all and starts the instruction at 0, as BAGEL's
            # inferencer does (item["drop_advances_rope"] = False).
            keep_rope = it.get("drop_advances_rope", True)
            rope += 1 if vae_block or keep_rope else 0
            if not it["drop"]["vit"]:
                vit_block = b.vit_image(r["vit"], self.vit_patch, self.vit_max_side, rope, sp)
            rope += 1 if vit_block or keep_rope else 0
            if vae_block and vit_block:
                refs.append({"vae": vae_block, "vit": vit_block})
        instr = torch.empty(0, dtype=torch.long)
        if not it["drop"]["text"]:
            ids = [sp["bos"], *it["text_ids"], sp["eos"]]
            instr = torch.arange(b.curr, b.curr + len(ids))
            b.text(ids, list(range(rope, rope + len(ids))), "causal")
            rope += len(ids)
        b.vae_image(it["target"], self.latent_stride, self.max_latent, rope, sp, it["n"], target=True)
        b.sample_lens.append(b.curr - start)
        b.refs.append(refs)
        b.instr.append(instr)


class _Batch:
    """Accumulates one packed sequence (lists), then turns into tensors."""

    def __init__(self):
        self.curr = 0
        self.sample_lens, self.split_lens, self.attn_modes = [], [], []
        self.text_ids, self.text_idx, self.pos = [], [], []
        self.vit_pix, self.vit_pos, self.vit_lens, self.vit_idx = [], [], [], []
        self.vae_imgs, self.vae_shapes, self.lat_pos, self.vae_idx, self.t, self.is_tgt = (
            [],
            [],
            [],
            [],
            [],
            [],
        )
        self.refs, self.instr = [], []

    def text(self, ids, pos, mode) -> None:
        self.text_ids += ids
        self.text_idx += range(self.curr, self.curr + len(ids))
        self.pos += pos
        self.curr += len(ids)
        self.split_lens.append(len(ids))
        self.attn_modes.append(mode)

    def _framed(self, n, rope, sp, mode) -> int:
        """Frame n image tokens with vision start/end; returns the first image-token position."""
        first = self.curr + 1
        self.text_ids += [sp["vision_start"], sp["vision_end"]]
        self.text_idx += [self.curr, self.curr + n + 1]
        self.pos += [rope] * (n + 2)
        self.curr += n + 2
        self.split_lens.append(n + 2)
        self.attn_modes.append(mode)
        return first

    def vae_image(self, img, stride, max_latent, rope, sp, n, target=False) -> tuple:
        h, w = img.shape[1] // stride, img.shape[2] // stride
        first = self._framed(h * w, rope, sp, "noise" if target else "full")
        self.vae_imgs.append(img)
        self.vae_shapes.append((h, w))
        self.lat_pos.append(flattened_position_ids(h, w, max_latent))
        self.vae_idx += range(first, first + h * w)
        self.t += [n] * (h * w)
        self.is_tgt += [target] * (h * w)
        return (first, h, w)

    def vit_image(self, img, p, max_side, rope, sp) -> tuple:
        h, w = img.shape[1] // p, img.shape[2] // p
        first = self._framed(h * w, rope, sp, "full")
        self.vit_pix.append(patchify(img, p))
        self.vit_pos.append(flattened_position_ids(h, w, max_side))
        self.vit_lens.append(h * w)
        self.vit_idx += range(first, first + h * w)
        return (first, h, w)

    def tensors(self) -> dict:
        long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        vae_idx, is_tgt = long(self.vae_idx), torch.tensor(self.is_tgt, dtype=torch.bool)
        target_mask = torch.zeros(self.curr, dtype=torch.bool)
        target_mask[vae_idx[is_tgt]] = True
        und = torch.ones(self.curr, dtype=torch.bool)
        und[vae_idx] = False
        return {
            "seq_len": self.curr,
            "sample_lens": self.sample_lens,
            "split_lens": self.split_lens,
            "attn_modes": self.attn_modes,
            "text_ids": long(self.text_ids),
            "text_indexes": long(self.text_idx),
            "position_ids": long(self.pos),
            "vit_pixels": torch.cat(self.vit_pix) if self.vit_pix else torch.zeros(0, 0),
            "vit_position_ids": torch.cat(self.vit_pos) if self.vit_pos else long([]),
            "vit_seqlens": self.vit_lens,
            "vit_indexes": long(self.vit_idx),
            "vae_images": self.vae_imgs,
            "vae_shapes": self.vae_shapes,
            "latent_position_ids": torch.cat(self.lat_pos),
            "vae_indexes": vae_idx,
            "timesteps": torch.tensor(self.t, dtype=torch.float32),
            "vae_is_target": is_tgt,
            "mse_indexes": vae_idx[is_tgt],
            "target_mask": target_mask,
            "und_indexes": torch.nonzero(und).flatten(),
            "scone_refs": self.refs,
            "instr_indexes": self.instr,
        }


def move_batch(batch: dict, device) -> dict:
    """Tensors (and lists of tensors) of a packed batch to `device`."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif k in ("vae_images", "instr_indexes"):
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v
    return out


def sequence_builder(model, tok, data: dict, seed: int) -> SequenceBuilder:
    """The builder for ``model``'s geometry: image sizes from ``data`` (a stage's ``data`` section;
    ``vae_image``/``vit_image`` required), its token dropout (none when absent), ``seed``."""
    mc = model.cfg
    return SequenceBuilder(
        tok,
        special_ids(tok),
        Resize(**data["vae_image"]),
        Resize(**data["vit_image"]),
        model.vit_cfg.patch_size,
        mc.vae_downsample * mc.latent_patch_size,
        mc.max_latent_size,
        mc.vit_max_num_patch_per_side,
        data.get("dropout", {}),
        seed,
    )
