"""The training input pipeline: sample streams -> items -> packed batches, split by rank and worker.

Each DataLoader worker owns a `role` (0..num_workers-1); its slot in the global split is
rank * num_workers + role. Batches carry (role, cursor) so the trainer can save, per role, the stream
position after the last batch it consumed. PyTorch's DataLoader takes batches from workers in strict
round robin, so on resume worker w takes role (w + next_role) % num_workers and the sequence of
batches continues exactly where it stopped.
"""

import json
import logging

from scone_train.data import decode_sample, sample_stream
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger("scone_train")


class PackedStream(IterableDataset):
    def __init__(
        self,
        shards,
        builder,
        seed,
        rank,
        world,
        num_workers,
        max_tokens,
        max_tokens_per_sample,
        cursors=None,
        next_role=0,
        tasks=None,
    ):
        self.shards, self.builder, self.seed = shards, builder, seed
        self.rank, self.world, self.num_workers = rank, world, max(1, num_workers)
        self.max_tokens, self.max_per_sample = max_tokens, max_tokens_per_sample
        self.cursors = cursors or {}
        self.next_role = next_role
        self.tasks = set(tasks) if tasks else None

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info is not None else 0
        role = (wid + self.next_role) % self.num_workers
        slot, slots = self.rank * self.num_workers + role, self.world * self.num_workers
        start = tuple(self.cursors.get(str(role), (0, 0)))
        items, total, skipped = [], 0, 0
        for epoch, index, raw in sample_stream(self.shards, self.seed, slot, slots, start):
            try:
                if self.tasks is not None and json.loads(raw["json"])["task"] not in self.tasks:
                    continue  # not this stage's task (checked before decoding any image)
                item = self.builder.item(decode_sample(raw), epoch)
            except (ValueError, OSError, KeyError) as e:  # a bad sample is data: count it and go on
                skipped += 1
                if skipped <= 10 or skipped % 1000 == 0:
                    log.warning("skipping sample %s (%s); %d skipped so far", raw.get("__key__"), e, skipped)
                continue
            if item["num_tokens"] > self.max_per_sample:
                skipped += 1
                log.warning(
                    "skipping %s: %d tokens > max_tokens_per_sample %d",
                    item["key"],
                    item["num_tokens"],
                    self.max_per_sample,
                )
                continue
            if items and total + item["num_tokens"] > self.max_tokens:
                yield (
                    self.builder.pack(items),
                    {
                        "role": role,
                        "cursor": (epoch, index),
                        "samples": len(items),
                        "keys": [it["key"] for it in items],
                    },
                )
                items, total = [], 0
            items.append(item)
            total += item["num_tokens"]


def make_loader(stream: PackedStream, num_workers: int) -> DataLoader:
    """batch_size=None: the stream already yields packed batches."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=lambda x: x,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        multiprocessing_context="fork" if num_workers else None,
    )


class LoaderState:
    """Stream positions of the batches the trainer has consumed (saved in checkpoints, per rank)."""

    def __init__(self, num_workers: int, cursors=None, next_role: int = 0):
        self.num_workers = max(1, num_workers)
        self.cursors = dict(cursors or {})
        self.next_role = next_role

    def consumed(self, meta: dict) -> None:
        self.cursors[str(meta["role"])] = list(meta["cursor"])
        self.next_role = (meta["role"] + 1) % self.num_workers

    def to_dict(self) -> dict:
        return {"num_workers": self.num_workers, "cursors": self.cursors, "next_role": self.next_role}
