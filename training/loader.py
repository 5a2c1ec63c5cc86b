"""The training input pipeline: sample streams -> items -> packed batches, split by rank and worker.

Each DataLoader worker owns a `role` (0..num_workers-1); its slot in the global split is
rank * num_workers + role. Batches carry (role, cursor) so the trainer can save, per role, the stream
state after the last batch it consumed (position, open batch and overflow buffer: see PackedStream).
PyTorch's DataLoader takes batches from workers in strict round robin, so on resume worker w takes
role (w + next_role) % num_workers and the sequence of batches continues exactly where it stopped.
"""

import json
import logging

from scone_train.data import decode_sample, sample_stream
from scone_train.packer import Packer
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger("scone_train")


class PackedStream(IterableDataset):
    """Packed batches of one rank: (batch, meta) with meta["cursor"] the stream state after it.

    The state of a role is {"last": position of the last entry taken from the stream, "open" and
    "buffer": positions taken but not yet in a yielded batch} (see Packer.snapshot). Resuming reads
    the stream again from the earliest of those positions, rebuilds the open batch and the overflow
    buffer from the positions listed, skips the others up to "last" (already trained on) and goes on.
    A state saved as a bare [epoch, index] (before the overflow buffer) means "start there".
    `epochs`: the stream of each role ends after that many passes over its share; the remainder is
    packed into last batches and a final (None, {"end": True, ...}) is yielded.
    """

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
        packing: dict | None = None,
        epochs: int | None = None,
    ):
        self.shards, self.builder, self.seed = shards, builder, seed
        self.rank, self.world, self.num_workers = rank, world, max(1, num_workers)
        self.max_tokens, self.max_per_sample = max_tokens, max_tokens_per_sample
        self.cursors = cursors or {}
        self.next_role = next_role
        self.tasks = set(tasks) if tasks else None
        self.packing, self.epochs = dict(packing or {}), epochs

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info is not None else 0
        role = (wid + self.next_role) % self.num_workers
        slot, slots = self.rank * self.num_workers + role, self.world * self.num_workers
        state = self.cursors.get(str(role))
        if state is None or isinstance(state, (list, tuple)):  # fresh, or an old [epoch, index] cursor
            state = {"last": None, "open": [], "buffer": [], "start": list(state or (0, 0))}
        pending = {tuple(p) for p in state["open"] + state["buffer"]}
        last = tuple(state["last"]) if state["last"] is not None else None
        starts = pending | ({last} if last is not None else set())
        begin = min(starts) if starts else tuple(state.get("start", (0, 0)))
        taken = {"last": last}
        skipped = 0

        def entries():
            nonlocal skipped
            for epoch, index, raw in sample_stream(self.shards, self.seed, slot, slots, begin):
                pos = (epoch, index)
                if last is not None and pos <= last and pos not in pending:
                    continue  # resuming: trained on before the checkpoint (bytes only, nothing decoded)
                if self.epochs is not None and epoch >= self.epochs:
                    return
                try:
                    if self.tasks is not None and json.loads(raw["json"])["task"] not in self.tasks:
                        continue  # not this stage's task (checked before decoding any image)
                    item = self.builder.item(decode_sample(raw), epoch)
                except (ValueError, OSError, KeyError) as e:  # a bad sample is data: count it, go on
                    skipped += 1
                    if skipped <= 10 or skipped % 1000 == 0:
                        log.warning(
                            "skipping sample %s (%s); %d skipped so far", raw.get("__key__"), e, skipped
                        )
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
                taken["last"] = pos if last is None or pos > last else last
                yield pos, item

        stream = entries()
        packer = Packer(self.max_tokens, **self.packing)
        if pending:  # rebuild the open batch and the buffer of the checkpoint, in their saved order
            found = {}
            while len(found) < len(pending):
                pos, item = next(stream)
                if pos in pending:
                    found[pos] = (pos, item)
            packer.restore(
                [found[tuple(p)] for p in state["open"]], [found[tuple(p)] for p in state["buffer"]]
            )
        for entries_, snap in packer.batches(stream, finish=self.epochs is not None):
            items = [it for _, it in entries_]
            meta = {
                "role": role,
                "cursor": {"last": list(taken["last"]) if taken["last"] else None, **snap},
                "samples": len(items),
                "keys": [it["key"] for it in items],
            }
            yield self.builder.pack(items), meta
        if self.epochs is not None:
            yield None, {"end": True, "role": role}


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
        self.cursors[str(meta["role"])] = meta["cursor"]
        self.next_role = (meta["role"] + 1) % self.num_workers

    def to_dict(self) -> dict:
        return {"num_workers": self.num_workers, "cursors": self.cursors, "next_role": self.next_role}
