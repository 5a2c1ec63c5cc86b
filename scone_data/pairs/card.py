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


COPY_PASTE_BINS = tuple(round(0.1 * i, 1) for i in range(11))


def copy_paste_histogram(scores: list[float]) -> list[tuple[str, int]]:
    """Counts of reference copy-paste scores in bins of 0.1 (``"0.9-1.0"`` holds 1.0)."""
    counts = Counter(min(int(s * 10), 9) for s in scores)
    return [(f"{COPY_PASTE_BINS[i]:.1f}-{COPY_PASTE_BINS[i + 1]:.1f}", counts[i]) for i in range(10)]


def verifier_lines(v: dict) -> list[str]:
    """The card's Verifier section from the manifest's ``verify`` (model, prompt, counts by reason)."""
    rows = [("kept (every answer as expected)", v["kept"])]
    rows += [(f"flagged (written, keep false): {k}", n) for k, n in sorted(v["flagged"].items())]
    rows += [(f"dropped (not written): {k}", n) for k, n in sorted(v["dropped"].items())]
    total = sum(n for _, n in rows)
    head = (f"model {v['model']} (weights {v['weights_sha256'] or 'built in code'}), prompt "
            f"{v['prompt']} {v['prompt_version']} (sha256 {v['prompt_sha256']}), on_reject {v['on_reject']}")  # fmt: skip
    return ["", "## Verifier", "", head, ""] + _table(("decision", "samples"), rows, total or None)


def generated_lines(generated: dict) -> list[str]:
    """The card's Generated images section from the manifest's ``generated`` (per use: photos, kept,
    rejected by its check, not edited)."""
    what = {"insertion": "look-alikes inserted", "repose": "re-posed targets"}
    rows = [(f"{what.get(use, use)}: {k.replace('_', ' ')}", g[k])
            for use, g in sorted(generated.items()) for k in ("kept", "rejected", "not_edited")]  # fmt: skip
    head = "Of each use, every photo of the bank has one generated image kept, one rejected, or none."
    return ["", "## Generated images", "", head, ""] + _table(("generated image", "photos"), rows)


def dataset_card(
    records: Iterable[dict],
    rejects: Counter | dict,
    bank: dict | None = None,
    verify: dict | None = None,
    generated: dict | None = None,
) -> str:
    """Markdown: sample counts by split, task mix, label histogram (intended subjects), candidates per
    reference histogram, references per sample, reference kinds and sources, targets (whole photo or
    crop), instruction texts (templates, or woven from a caption and from which source), the copy-paste
    score histogram, the bank's mask sources, caption coverage and licences
    (``bank``: {"mask_sources": Counter, "images": int, "captioned": int, "licenses": Counter}), the
    VLM verifier's decisions (``verify``: the manifest's, when the build verified its samples), the
    generated images (``generated``: the manifest's, when the bank has any), and reject reasons (most
    frequent first).

    ``records`` is read once, as a stream: memory grows with the number of labels, not of samples."""
    n = 0
    tasks, splits, labels, cands, kinds, nrefs, targets, ref_sources, texts = (Counter() for _ in range(9))
    scores: list[float] = []
    for r in records:
        n += 1
        tasks[r["task"]] += 1
        splits[r["split"]] += 1
        nrefs[len(r["references"])] += 1
        targets["crop of the source photo" if r["target"].get("crop_box") else "whole source photo"] += 1
        cap = r.get("caption")
        texts[f"woven from a caption of source {cap['source']!r}" if cap else "template"] += 1
        for ref in r["references"]:
            labels.update(c["label"] for c in ref["candidates"] if c["intended"])
            cands[len(ref["candidates"])] += 1
            kinds[ref["kind"]] += 1
            ref_sources[ref["augment"].get("source", "self")] += 1
            if ref.get("copy_paste") is not None:
                scores.append(float(ref["copy_paste"]))
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
    lines += ["", "## Reference sources", ""]
    lines += ["(self: cut from the target's own photo; group: from another image of its group)", ""]
    lines += _table(("source", "references"), sorted(ref_sources.items()))
    lines += ["", "## Targets", ""] + _table(("target", "samples"), sorted(targets.items()))
    lines += ["", "## Instruction text", ""]
    lines += [
        "(woven: a Scone-style scene sentence from the target photo's caption, the source recorded)",
        "",
    ]
    lines += _table(("text", "samples"), sorted(texts.items()), n or None)
    lines += ["", "## Copy-paste score of references", ""]
    lines += [
        "(normalised cross-correlation of the intended subject with its target patch, best over rotations "
        "up to 20 degrees, mirror and scale; 1.0 = a pixel copy)",
        "",
    ]
    lines += _table(("score", "references"), copy_paste_histogram(scores))
    if bank:
        lines += ["", "## Subject bank", ""]
        cov = f"{bank['captioned']} of {bank['images']} images have a caption"
        lines += [cov, ""] + _table(("mask source", "subjects"), sorted(bank["mask_sources"].items()))
        lic = sorted(bank["licenses"].items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [""] + _table(("licence (as the source declares it)", "images"), lic)
    if verify:
        lines += verifier_lines(verify)
    if generated:
        lines += generated_lines(generated)
    lines += ["", "## References per sample", ""]
    lines += _table(("references", "samples"), [(str(k), nrefs[k]) for k in sorted(nrefs)])
    lines += ["", "## Reject reasons", ""]
    rej = sorted(dict(rejects).items(), key=lambda kv: (-kv[1], kv[0]))
    lines += _table(("reason", "count"), rej) if rej else ["none"]
    return "\n".join(lines) + "\n"
