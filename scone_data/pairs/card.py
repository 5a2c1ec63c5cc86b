"""A dataset card: markdown summary of a build's Sample records and reject reasons."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from scone_data.pairs.config import TASKS


def _table(head: tuple[str, str], rows: list[tuple[str, int]], total: int | None = None) -> list[str]:
    out = [
        f"| {head[0]} | {head[1]} |" + (" share |" if total else ""),
        "|---|---:|" + ("---:|" if total else ""),
    ]
    for name, n in rows:
        out.append(f"| {name} | {n} |" + (f" {100.0 * n / total:.1f}% |" if total else ""))
    return out


def dataset_card(records: Iterable[dict], rejects: Counter | dict) -> str:
    """Markdown: sample counts by split, task mix, label histogram (intended subjects), candidates per
    reference histogram, references per sample, and reject reasons (most frequent first).

    ``records`` is read once, as a stream: memory grows with the number of labels, not of samples."""
    n = 0
    tasks, splits, labels, cands, kinds, nrefs = (Counter() for _ in range(6))
    for r in records:
        n += 1
        tasks[r["task"]] += 1
        splits[r["split"]] += 1
        nrefs[len(r["references"])] += 1
        for ref in r["references"]:
            labels.update(ref["subject_label"])
            cands[len(ref["candidates"])] += 1
            kinds[ref["kind"]] += 1
    lines = [
        "# Dataset card",
        "",
        f"{n} samples: " + ", ".join(f"{splits[s]} {s}" for s in ("train", "val")),
        "",
    ]
    lines += ["## Task mix", ""] + _table(("task", "samples"), [(t, tasks[t]) for t in TASKS], n or None)
    lines += ["", "## Intended-subject labels", ""]
    lines += _table(("label", "count"), sorted(labels.items(), key=lambda kv: (-kv[1], kv[0])))
    lines += ["", "## Candidates per reference", ""]
    lines += _table(("candidates", "references"), [(str(k), cands[k]) for k in sorted(cands)])
    lines += ["", "## Reference kinds", ""] + _table(("kind", "references"), sorted(kinds.items()))
    lines += ["", "## References per sample", ""]
    lines += _table(("references", "samples"), [(str(k), nrefs[k]) for k in sorted(nrefs)])
    lines += ["", "## Reject reasons", ""]
    rej = sorted(dict(rejects).items(), key=lambda kv: (-kv[1], kv[0]))
    lines += _table(("reason", "count"), rej) if rej else ["none"]
    return "\n".join(lines) + "\n"
