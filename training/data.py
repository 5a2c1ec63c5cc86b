"""Reading our WebDataset shards as a deterministic, resumable stream of decoded samples.

Order: each epoch shuffles the list of all shards of all listed datasets with (seed, epoch). Streams
are split across `slots` = world_size * num_workers: by shard (slot s reads shards s, s + slots, ...)
when there are at least as many shards as slots, otherwise by sample (slot s keeps samples whose
index in the epoch is s mod slots; every slot then reads every shard, which is logged). A stream is
infinite (epoch after epoch); its position is (epoch, index of the next sample in that epoch).
"""

import hashlib
import importlib
import io
import json
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from scone_data import schemas
from scone_data.runtime import storage
from scone_data.shards.output import Output

TASKS = schemas.tasks()  # the Sample schema is the one list of task types


def list_shards(datasets: list[str], split: str) -> list[str]:
    """The `split` shards of every dataset dir, in order. An output of scone-data (the dir, or its
    `shards/` subdir) gives the shards its manifest lists, so a stray tar in `shards/` is never read
    and an unfinished output (a ledger, no manifest) is refused; a plain dir of tars with no
    manifest gives its `{split}-*.tar` (or its `shards/` subdir's), sorted."""
    out = []
    for d in datasets:
        root = storage.path(d)  # a folder, or an object-store URI (s3://bucket/out)
        output = Output.of_dataset(root)
        if output is not None:
            found = output.shards(split)  # ManifestError (a ValueError) names a missing or bad manifest
            missing = f"no {split} shards listed in {output.manifest_path}"
        else:
            found = sorted(root.glob(f"{split}-*.tar")) or sorted((root / "shards").glob(f"{split}-*.tar"))
            missing = f"no {split}-*.tar shards under {root} (or {root / 'shards'})"
        if not found:
            raise FileNotFoundError(missing)
        out.extend(str(p) for p in found)
    return out


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def iter_raw(shards: list[str]):
    """Yield raw tar groups {"__key__", "json": bytes, "ref0.jpg": bytes, ...} with plain WebDataset."""
    import webdataset as wds

    # shards on an object store are read through pyarrow.fs, configured as scone-data's outputs are
    # (scone_data/runtime/storage.py: the AWS_* environment variables), not through webdataset's
    # command-line handlers (curl, gsutil)
    for scheme in {s.partition("://")[0] for s in shards if storage.is_uri(s)}:
        importlib.import_module("webdataset.gopen").gopen_schemes[scheme] = _open_remote
    # Splitting is done by us (deterministic, resumable), so WebDataset's own splitters are turned off.
    ds = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    yield from ds


def _open_remote(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    if mode != "rb":
        raise ValueError(f"{url}: shards are only read here, not opened with mode {mode!r}")
    return storage.open_input(url)


def sample_stream(shards: list[str], seed: int, slot: int, slots: int, start: tuple = (0, 0)):
    """Infinite stream of (epoch, index_in_epoch, raw sample) for one slot, from position `start`."""
    epoch, index = start
    while True:
        order = list(shards)
        random.Random(_seed(seed, "shards", epoch)).shuffle(order)
        by_shard = len(order) >= slots
        mine = order[slot::slots] if by_shard else order
        i = -1
        for k, raw in enumerate(iter_raw(mine)):
            if not by_shard and k % slots != slot:
                continue
            i += 1
            if i < index:
                continue  # resuming: skip what was consumed (bytes only, nothing decoded)
            yield epoch, i, raw
        epoch, index = epoch + 1, 0


@dataclass
class Resize:
    """BAGEL's image transform rule (data/transforms.py, used unchanged by Scone), aspect preserved:
    scale so that the long side is <= max_size (never enlarging), then raise it so that the short
    side is >= min_size (the short-side rule wins); each side is rounded to the *nearest* multiple of
    `stride` (Python's round, at least one stride). If that holds more than `max_pixels` pixels it is
    scaled down to them, and if the long side then exceeds max_size it is scaled down once more,
    each time rounding as above. A 512x512 image with (518, 224, 14) becomes 518x518 (37 x 37 ViT
    patches), not 504x504."""

    max_size: int
    min_size: int
    stride: int
    max_pixels: int = 14 * 14 * 9 * 1024  # BAGEL's ImageTransform default

    def _scaled(self, w: float, h: float, scale: float) -> tuple[int, int]:
        return tuple(
            max(self.stride, int(round(round(s * scale) / self.stride) * self.stride)) for s in (w, h)
        )

    def size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) of the resized image."""
        scale = max(min(self.max_size / max(w, h), 1.0), self.min_size / min(w, h))
        nw, nh = self._scaled(w, h, scale)
        if nw * nh > self.max_pixels:
            nw, nh = self._scaled(nw, nh, self.max_pixels / (nw * nh))
        if max(nw, nh) > self.max_size:
            nw, nh = self._scaled(nw, nh, self.max_size / max(nw, nh))
        return nw, nh

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB -> (3, H, W) float32 in [-1, 1] (mean 0.5, std 0.5 as BAGEL's VAE and SigLIP use)."""
        img = img.resize(self.size(*img.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
        return x.permute(2, 0, 1).contiguous()


def decode_sample(raw: dict) -> dict:
    """Raw tar group -> {"key", "record", "refs": [PIL], "target": PIL}. Raises ValueError on bad data."""
    record = json.loads(raw["json"])
    refs = []
    for ref in record["references"]:
        if ref["member"] not in raw:
            raise ValueError(f"{raw['__key__']}: missing member {ref['member']}")
        refs.append(Image.open(io.BytesIO(raw[ref["member"]])).convert("RGB"))
    if "target.jpg" not in raw:
        raise ValueError(f"{raw['__key__']}: missing member target.jpg")
    target = Image.open(io.BytesIO(raw["target.jpg"])).convert("RGB")
    if record.get("task") not in TASKS:
        raise ValueError(f"{raw['__key__']}: unknown task {record.get('task')!r}")
    return {"key": record["key"], "record": record, "refs": refs, "target": target}
