"""``scone-data audit OUT``: re-read a finished output and judge every sample as a person would.

Per sample it runs the text checker (:func:`scone_data.pairs.truth.check_sample`: every referring
expression true and unique on the rendered candidates, no colour word on people, one mention per
reference, no text slips, a target that shows no other instance of a named label, copy-paste under the
output's ``pairs.max_copy_paste``) and the mask gate on every subject shown (no rectangle pasted as a
subject, no box-fallback mask). The instances a target must leave out come from the bank the output
was built from: every subject, and every subject reject that kept its box.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from scone_data.bank.records import mask_box, scene_index
from scone_data.pairs.card import copy_paste_histogram
from scone_data.pairs.truth import check_sample
from scone_data.runtime import storage
from scone_data.shards.output import Output

# Keys of the samples with the most failed checks listed per task.
WORST_KEYS = 5


def _mask_problems(bank) -> dict[str, str]:
    """subject_id -> why its mask must never be pasted (rectangles, box fallbacks), by the subjects
    stage's own rectangle threshold (``SubjectFilter.max_rect_fill``)."""
    from scone_data.stages.subjects import SubjectFilter

    out = {}
    for s in bank.subjects:
        if s.get("mask_source") == "box":
            out[s["subject_id"]] = "mask_box_fallback"
            continue
        (x0, y0, x1, y1), area = mask_box(s["mask_rle"])
        if area >= SubjectFilter.max_rect_fill * max(1.0, (x1 - x0) * (y1 - y0)):
            out[s["subject_id"]] = "mask_rectangle"
    return out


def audit(output: str | Path) -> dict:
    """Every sample of ``output`` checked; returns the per-task figures (see :func:`format_report`)."""
    from scone_data.bank.store import Bank

    out = storage.path(output)
    manifest = Output(out).read_manifest(validate=False)
    max_cp = float((manifest.get("config", {}).get("pairs") or {}).get("max_copy_paste", 1.0))
    bank = Bank(out)
    scene, bad_masks = scene_index(bank.subjects, bank.rejected_subjects()), _mask_problems(bank)
    tasks: dict[str, dict] = {}
    scores: list[float] = []
    for rec, _ in Output(out).iter_samples(want_images=False, manifest=manifest, upgrade=False):
        t = tasks.setdefault(rec["task"], {"samples": 0, "passed": 0, "reasons": Counter(), "worst": []})
        image_id = rec["target"]["image_id"]
        reasons = check_sample(rec, scene.get(image_id, ()), max_cp)
        for ref in rec["references"]:
            if ref.get("copy_paste") is not None:
                scores.append(float(ref["copy_paste"]))
            reasons += [bad_masks[c["subject_id"]] for c in ref["candidates"] if c["subject_id"] in bad_masks]
        t["samples"] += 1
        t["passed"] += not reasons
        t["reasons"].update(set(reasons))
        if reasons:
            t["worst"].append((-len(set(reasons)), rec["key"], sorted(set(reasons))))
    report = {"output": str(out), "max_copy_paste": max_cp, "tasks": {}, "copy_paste_histogram": []}
    for name in sorted(tasks):
        t = tasks[name]
        report["tasks"][name] = {
            "samples": t["samples"],
            "passed": t["passed"],
            "failed": t["samples"] - t["passed"],
            "reasons": dict(sorted(t["reasons"].items())),
            "worst": [{"key": k, "reasons": r} for _, k, r in sorted(t["worst"])[:WORST_KEYS]],
        }
    report["copy_paste_histogram"] = copy_paste_histogram(scores)
    report["samples"] = sum(t["samples"] for t in tasks.values())
    report["failed"] = sum(t["samples"] - t["passed"] for t in tasks.values())
    return report


def format_report(report: dict) -> str:
    lines = [f"audit of {report['output']} (max_copy_paste {report['max_copy_paste']})", ""]
    lines.append(f"{'task':<28}{'samples':>9}{'passed':>9}  failed checks")
    for name, t in report["tasks"].items():
        why = ", ".join(f"{k} {v}" for k, v in t["reasons"].items()) or "-"
        lines.append(f"{name:<28}{t['samples']:>9}{t['passed']:>9}  {why}")
        for w in t["worst"]:
            lines.append(f"    {w['key']}: {', '.join(w['reasons'])}")
    lines += ["", "copy-paste score of references (1.0 = a pixel copy of the target):"]
    lines += [f"  {b}: {n}" for b, n in report["copy_paste_histogram"]]
    lines.append(f"\n{report['samples'] - report['failed']} of {report['samples']} samples pass every check")
    return "\n".join(lines)


def cmd_audit(args) -> int:
    out = storage.path(args.output)
    if not Output(out).has_manifest():
        print(f"error: {out}: no manifest.json (not a finished scone-data output)", file=sys.stderr)
        return 2
    report = audit(out)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if args.strict and report["failed"] else 0


def add_audit_parser(sub) -> None:
    a = sub.add_parser("audit", help="check every sample of an output as a person would read it")
    a.add_argument("output")
    a.add_argument("--json", action="store_true", help="the report as JSON")
    a.add_argument("--strict", action="store_true", help="exit 1 when any sample fails a check")
    a.set_defaults(fn=cmd_audit)
