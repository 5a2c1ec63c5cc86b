"""Grouping a stream of items into packed batches under a token budget, with a resumable state.

Two rules, each fed the same stream of `(position, item)` entries (position = (epoch, index) in a
slot's stream, item["num_tokens"] its length):

- "buffer" (default), BAGEL's and Scone's PackedDataset rule: while the open batch holds fewer than
  `prefer_buffer_before` tokens the next entry is taken from the overflow buffer when it is not
  empty, otherwise from the stream. An entry that does not fit goes to the buffer (at most
  `max_buffer_size` entries); one that does not fit and cannot be buffered (the buffer is full, or it
  came from the buffer) closes the batch. A batch also closes as soon as it holds `expected_tokens`.
  Upstream drops the entry that closed the batch; here it opens the next batch
  (`keep_overflow=False` reproduces the drop, for measurement only).
- "buffer_fit": "buffer", and before a batch closes because an entry does not fit, the largest
  buffered entries that still fit are added to it (best fit). Fuller batches (fewer steps per epoch),
  but the batches differ more from upstream's.
- "flush": the batch closes when the next entry does not fit, and that entry opens the next one.

Both never split an entry, and an empty batch accepts any entry (the loader skips entries longer
than max_tokens_per_sample before packing). Fill on the same stream is measured by
scone_train.packing_fill (recorded in bench/RESULTS.md).
"""

from collections.abc import Iterable, Iterator

RULES = ("buffer", "buffer_fit", "flush")


class Packer:
    def __init__(
        self,
        max_tokens: int,
        rule: str = "buffer",
        expected_tokens: int | None = None,
        prefer_buffer_before: int = 16384,
        max_buffer_size: int = 50,
        keep_overflow: bool = True,
    ):
        if rule not in RULES:
            raise ValueError(f"packing rule must be one of {RULES}, got {rule!r}")
        self.max_tokens, self.rule = max_tokens, rule
        self.expected = max_tokens if expected_tokens is None else expected_tokens
        self.prefer, self.max_buffer, self.keep_overflow = (
            prefer_buffer_before,
            max_buffer_size,
            keep_overflow,
        )
        self.open, self.tokens, self.buffer = [], 0, []

    def restore(self, open_entries: list, buffer_entries: list) -> None:
        """Put back the open batch and the buffer of a snapshot (entries in their saved order)."""
        self.open, self.buffer = list(open_entries), list(buffer_entries)
        self.tokens = sum(it["num_tokens"] for _, it in self.open)

    def snapshot(self) -> dict:
        """Positions of the entries taken but not yet in a closed batch: {"open": [...], "buffer": [...]}."""
        return {"open": [list(p) for p, _ in self.open], "buffer": [list(p) for p, _ in self.buffer]}

    def _put(self, entry) -> None:
        self.open.append(entry)
        self.tokens += entry[1]["num_tokens"]

    def _top_up(self) -> None:
        """Add the largest buffered entries that fit the open batch, until none does."""
        while True:
            room = self.max_tokens - self.tokens
            fits = [k for k, (_, it) in enumerate(self.buffer) if it["num_tokens"] <= room]
            if not fits:
                return
            self._put(self.buffer.pop(max(fits, key=lambda k: self.buffer[k][1]["num_tokens"])))

    def _close(self) -> list:
        done, self.open, self.tokens = self.open, [], 0
        return done

    def batches(self, entries: Iterable, finish: bool = False) -> Iterator[tuple[list, dict]]:
        """Yield (entries of one closed batch, snapshot right after closing it). `finish`: when the
        stream ends, pack what is left (buffer included) into last batches instead of keeping it."""
        it = iter(entries)
        while True:
            buffered = self.rule != "flush"
            from_buffer = buffered and bool(self.buffer) and self.tokens < self.prefer
            entry = self.buffer.pop(0) if from_buffer else next(it, None)
            if entry is None:
                break
            n = entry[1]["num_tokens"]
            if self.open and self.tokens + n > self.max_tokens:
                if buffered and not from_buffer and len(self.buffer) < self.max_buffer:
                    self.buffer.append(entry)
                    continue
                if self.rule == "buffer_fit":
                    self._top_up()
                done = self._close()
                if self.keep_overflow:
                    self._put(entry)
                yield done, self.snapshot()
                continue
            self._put(entry)
            if self.tokens >= self.expected:
                yield self._close(), self.snapshot()
        if finish:
            pending, self.buffer = self.buffer, []
            for entry in pending:
                if self.open and self.tokens + entry[1]["num_tokens"] > self.max_tokens:
                    done = self._close()
                    self._put(entry)
                    yield done, self.snapshot()
                else:
                    self._put(entry)
            if self.open:
                yield self._close(), self.snapshot()
