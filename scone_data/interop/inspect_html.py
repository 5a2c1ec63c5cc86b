"""``scone-data inspect OUTPUT --html report.html``: one self-contained page to look at a corpus.

The page holds, with every image inlined as a data URI (no script, no external file):

- totals and four charts: task mix, intended-subject labels, candidates per reference, reject reasons
  (input/subject rejects from ``rejects.parquet`` and samples not made, from the manifest);
- per task, up to ``per_task`` sample cards (``<article class="card" data-task=... data-key=...>``):
  each reference with its candidate boxes (the intended one solid green, distractors dashed orange),
  the target with its boxes, the instruction and the referring expression;
- a subject-bank view: up to ``bank_subjects`` subjects (spread over labels), each cropped around its
  box with its mask overlaid.

Statistics read only the json members (image bytes are read for the shown cards only) and stop after
:data:`MAX_STATS_SAMPLES` samples, which the page then says.
"""

from __future__ import annotations

import base64
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from scone_data import schemas
from scone_data.imageio import decode_image, encode_jpeg, rle_to_mask
from scone_data.interop.charts import bar_chart
from scone_data.interop.reader import iter_samples, load_manifest
from scone_data.interop.report import Reporter
from scone_data.pairs.config import TASKS
from scone_data.shards.output import Output
from scone_data.stages.decode import DecodeImages

MAX_STATS_SAMPLES = 100_000  # json members read for the charts; past this the charts show a prefix
THUMB_SIDE = 320  # long side of inlined sample images: sharp at the card size, ~20 KB each
BANK_THUMB_SIDE = 200  # subject-bank grid cells are smaller than sample cards
THUMB_QUALITY = (
    82  # JPEG quality of the inlined thumbnails: no visible artefacts at that size, half of q95's bytes
)
MAX_PIXELS = DecodeImages.max_pixels  # the build's decode cap
TASK_COLORS = dict(
    zip(TASKS, ("#2563eb", "#0891b2", "#ea580c", "#dc2626", "#9333ea", "#db2777"), strict=True)
)
INTENDED, DISTRACTOR, TARGET = "#16a34a", "#f97316", "#facc15"
MASK_COLORS = ((37, 99, 235), (22, 163, 74), (234, 88, 12), (147, 51, 234), (8, 145, 178), (220, 38, 38))


def _uri(rgb: np.ndarray, side: int) -> str:
    h, w = rgb.shape[:2]
    s = min(1.0, side / max(h, w))
    if s < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(rgb, THUMB_QUALITY)).decode()


def _figure(
    data: bytes, w: int, h: int, boxes: list[tuple[list[float], str, str, bool]], caption: str
) -> str:
    """An SVG in the image's own pixel coordinates: ``boxes`` are ``(xyxy, label, colour, dashed)``."""
    uri = _uri(decode_image(data, MAX_PIXELS), THUMB_SIDE)
    fs = max(w, h) * 0.065
    parts = [f'<image href="{uri}" width="{w}" height="{h}"/>']
    for (x0, y0, x1, y1), label, color, dashed in boxes:
        dash = ' stroke-dasharray="7 5"' if dashed else ""
        parts.append(
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" fill="none" '
            f'stroke="{color}" stroke-width="{3 if dashed else 4}" vector-effect="non-scaling-stroke"{dash}/>'
            f'<text x="{x0 + fs * 0.3:.1f}" y="{max(y0 + fs * 1.05, fs):.1f}" font-size="{fs:.1f}" '
            f'fill="{color}" class="boxlbl">{escape(label)}</text>'
        )
    return (
        f'<figure class="shot"><svg viewBox="0 0 {w} {h}" preserveAspectRatio="xMidYMid meet">'
        + "".join(parts)
        + f"</svg><figcaption>{caption}</figcaption></figure>"
    )


def sample_card(rec: dict[str, Any], members: dict[str, bytes]) -> str:
    """The HTML card of one sample (images from ``members``)."""
    figs = []
    for i, ref in enumerate(rec["references"]):
        boxes = [
            (c["box_xyxy"], c["label"], INTENDED if c["intended"] else DISTRACTOR, not c["intended"])
            for c in ref["candidates"]
        ]
        n = len(ref["candidates"])
        cap = f"image {i + 1} · {escape(ref['kind'])} · {n} candidate{'s' if n != 1 else ''}"
        figs.append(_figure(members[ref["member"]], ref["width"], ref["height"], boxes, cap))
    t = rec["target"]
    tboxes = [(b["box_xyxy"], f"{b['label']} ←{b['ref_index'] + 1}", TARGET, False) for b in t["boxes"]]
    figs.append(_figure(members[t["member"]], t["width"], t["height"], tboxes, "target"))
    exprs = [
        f"image {i + 1}: {escape(r['expression'])}"
        for i, r in enumerate(rec["references"])
        if r["expression"]
    ]
    color = TASK_COLORS.get(rec["task"], "#4b5563")
    return (
        f'<article class="card{" wide" if len(rec["references"]) >= 3 else ""}" data-task="{escape(rec["task"])}" data-key="{escape(rec["key"])}">'
        f'<header><span class="pill" style="background:{color}">{escape(rec["task"])}</span>'
        f'<code>{escape(rec["key"])}</code><span class="split">{escape(rec["split"])}</span></header>'
        f'<p class="instr">{escape(rec["instruction"])}</p>'
        f'<div class="shots">{"".join(figs)}</div>'
        + (f'<p class="expr">{" · ".join(exprs)}</p>' if exprs else "")
        + f'<p class="src">{escape(rec["provenance"]["source"])}</p></article>'
    )


def _bank_view(output: Path, limit: int) -> tuple[str, int]:
    bank = Output(output).bank
    parts = sorted((bank / "subjects").glob("*.parquet"))
    if not parts or limit <= 0:
        return '<p class="empty">no subject bank in this output</p>', 0
    subjects = [s for p in parts for s in schemas.from_table("subject", pq.read_table(p))]
    by_label: dict[str, list[dict]] = {}
    for s in subjects:
        by_label.setdefault(s["label"], []).append(s)
    chosen, rnd = [], 0  # round-robin over labels: the view shows the variety, not the biggest label
    while len(chosen) < limit and any(rnd < len(v) for v in by_label.values()):
        chosen += [v[rnd] for _, v in sorted(by_label.items()) if rnd < len(v)][: limit - len(chosen)]
        rnd += 1
    want = {s["image_id"] for s in chosen}
    images: dict[str, bytes] = {}
    for p in sorted((bank / "images").glob("*.parquet")):
        t = pq.read_table(p, columns=["image_id", "image_bytes"])
        for iid, b in zip(t.column("image_id").to_pylist(), t.column("image_bytes").to_pylist(), strict=True):
            if iid in want and iid not in images:
                images[iid] = b
    labels = sorted(by_label)
    tiles = []
    for s in chosen:
        if s["image_id"] not in images:
            continue
        rgb = decode_image(images[s["image_id"]], MAX_PIXELS)
        mask = rle_to_mask(s["mask_rle"]).astype(bool)
        if mask.shape != rgb.shape[:2]:
            continue
        color = np.array(MASK_COLORS[labels.index(s["label"]) % len(MASK_COLORS)], np.float32)
        over = rgb.astype(np.float32)
        over[mask] = over[mask] * 0.5 + color * 0.5
        over = over.astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(over, contours, -1, tuple(int(c) for c in color), max(2, max(rgb.shape) // 250))
        x0, y0, x1, y1 = s["box_xyxy"]
        mx, my = (x1 - x0) * 0.15, (y1 - y0) * 0.15
        h, w = rgb.shape[:2]
        crop = over[
            int(max(0, y0 - my)) : int(min(h, y1 + my)) + 1, int(max(0, x0 - mx)) : int(min(w, x1 + mx)) + 1
        ]
        a = s["attributes"]
        tiles.append(
            f'<figure class="subj" data-subject="{escape(s["subject_id"])}"><img src="{_uri(crop, BANK_THUMB_SIDE)}" alt="">'
            f"<figcaption><b>{escape(s['label'])}</b> {escape(a['color'])} · {escape(a['position'])}<br>"
            f"<small>{escape(s['mask_source'])} mask · {100 * s['area_frac']:.1f}% of image · "
            f"{escape(s['subject_id'])}</small></figcaption></figure>"
        )
    note = f"<p class='note'>{len(tiles)} of {len(subjects)} subjects, {len(labels)} labels</p>"
    return note + f'<div class="bank">{"".join(tiles)}</div>', len(tiles)


CSS = """
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;
color:#1f2937;background:#f3f4f6}main{max-width:1240px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 12px;padding-bottom:6px;border-bottom:2px solid #e5e7eb}
.sub{color:#6b7280;margin:0 0 16px}.tiles{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.tile{background:#fff;border-radius:10px;padding:10px 16px;box-shadow:0 1px 3px #0002;min-width:120px}
.tile b{display:block;font-size:22px}.tile span{color:#6b7280;font-size:12px;text-transform:uppercase}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
.chart{background:#fff;border-radius:10px;padding:12px 16px;margin:0;box-shadow:0 1px 3px #0002}
.chart figcaption{font-weight:600;margin-bottom:6px}.chart .lbl{font-size:12px;fill:#374151}
.chart .num{font-size:12px;fill:#111827;font-weight:600}
.legend{display:flex;gap:18px;flex-wrap:wrap;margin:8px 0 0;color:#374151}
.legend i{display:inline-block;width:22px;height:0;border-top:4px solid;vertical-align:middle;margin-right:6px}
nav a{display:inline-block;margin:4px 6px 0 0;padding:3px 10px;border-radius:999px;color:#fff;text-decoration:none;font-size:12px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.card.wide{grid-column:1/-1}.card{background:#fff;border-radius:12px;padding:14px;box-shadow:0 1px 3px #0002}
.card header{display:flex;gap:10px;align-items:center}.card code{color:#6b7280;font-size:12px}
.pill{color:#fff;border-radius:999px;padding:2px 10px;font-size:12px;font-weight:600}
.split{margin-left:auto;font-size:12px;color:#6b7280}.instr{font-size:15px;margin:10px 0;font-weight:500}
.shots{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}.shot{margin:0;flex:1 1 150px;max-width:240px}
.shot svg{width:100%;height:auto;max-height:220px;background:#e5e7eb;border-radius:6px;display:block}
.shot figcaption{font-size:12px;color:#4b5563;margin-top:4px;text-align:center}
.boxlbl{font-weight:700;paint-order:stroke;stroke:#000a;stroke-width:3px;stroke-linejoin:round}
.expr{font-size:12px;color:#15803d;margin:8px 0 0}.src{font-size:11px;color:#9ca3af;margin:4px 0 0}
.bank{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.subj{background:#fff;border-radius:10px;padding:8px;margin:0;box-shadow:0 1px 3px #0002}
.subj img{width:100%;height:130px;object-fit:contain;background:#e5e7eb;border-radius:6px}
.subj figcaption{font-size:12px}.empty,.note{color:#6b7280}
"""


def build_report(
    output: str | Path,
    html_path: str | Path,
    per_task: int = 4,
    bank_subjects: int = 24,
    split: str | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write the report page of ``output`` to ``html_path``; returns what it shows."""
    output = Path(output)
    manifest = load_manifest(output)
    reporter = reporter or Reporter("inspect", show_progress=False)
    reporter.start(output=str(output), html=str(html_path), per_task=per_task, bank_subjects=bank_subjects)
    cards: dict[str, list[str]] = {t: [] for t in TASKS}
    labels: Counter = Counter()
    cands: Counter = Counter()
    tasks: Counter = Counter()
    seen = 0
    total = manifest["samples"]

    def want(rec: dict[str, Any]) -> bool:
        return len(cards.setdefault(rec["task"], [])) < per_task

    with reporter.phase(min(total, MAX_STATS_SAMPLES), "inspect samples") as bar:
        for rec, members in iter_samples(output, split, want_images=want, manifest=manifest):
            if seen >= MAX_STATS_SAMPLES:
                break
            seen += 1
            tasks[rec["task"]] += 1
            for ref in rec["references"]:
                cands[len(ref["candidates"])] += 1
                labels.update(c["label"] for c in ref["candidates"] if c["intended"])
            if members:
                cards[rec["task"]].append(sample_card(rec, members))
            bar.update()
    rejects: Counter = Counter()
    rejects_path = Output(output).rejects
    if rejects_path.exists():
        rejects.update(pq.read_table(rejects_path, columns=["reason"]).column("reason").to_pylist())
    rejects.update({f"sample: {k}": v for k, v in manifest.get("pair_rejects", {}).items()})
    with reporter.phase(1, "subject bank") as bar:
        bank_html, n_bank = _bank_view(output, bank_subjects)
        bar.update()

    task_counts = {t: tasks[t] for t in TASKS if tasks[t]} | {
        t: n for t, n in tasks.items() if t not in TASKS
    }
    charts = "".join(
        [
            bar_chart("Task mix (samples)", task_counts, colors=TASK_COLORS),
            bar_chart("Intended subjects by label", dict(labels.most_common())),
            bar_chart("Candidates per reference image", {str(k): cands[k] for k in sorted(cands)}, colors={}),
            bar_chart("Reject reasons", dict(rejects.most_common()), colors={}),
        ]
    )
    shown = {t: c for t, c in cards.items() if c}
    nav = "".join(
        f'<a href="#task-{t}" style="background:{TASK_COLORS.get(t, "#4b5563")}">{t} ({tasks[t]})</a>'
        for t in shown
    )
    sections = "".join(
        f'<section id="task-{escape(t)}" class="task"><h2>{escape(t)} <small class="note">'
        f'{len(c)} of {tasks[t]} shown</small></h2><div class="cards">{"".join(c)}</div></section>'
        for t, c in shown.items()
    )
    tiles = "".join(
        f'<div class="tile"><b>{v}</b><span>{k}</span></div>'
        for k, v in [
            ("samples", manifest["samples"]),
            ("shards", len(manifest["shards"])),
            ("source images", manifest["images"]),
            ("subjects", manifest["subjects"]),
            ("rejected inputs", sum(manifest["rejects"].values())),
            ("samples not made", sum(manifest["pair_rejects"].values())),
        ]
    )
    partial = (
        f"<p class='note'>Charts cover the first {MAX_STATS_SAMPLES} samples.</p>"
        if seen >= MAX_STATS_SAMPLES
        else ""
    )
    legend = (
        f'<div class="legend"><span><i style="border-color:{INTENDED}"></i>intended candidate</span>'
        f'<span><i style="border-color:{DISTRACTOR};border-top-style:dashed"></i>distractor</span>'
        f'<span><i style="border-color:{TARGET}"></i>subject in the target (←N: from image N)</span></div>'
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>scone-data: {escape(output.name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>scone-data corpus report</h1><p class='sub'>{escape(str(output.resolve()))} · "
        f"{escape(manifest['kind'])} · scone-data {escape(manifest['scone_data_version'])} · "
        f"config {escape(manifest['config_hash'])}"
        + (f" · split {escape(split)}" if split else "")
        + f"</p><div class='tiles'>{tiles}</div><h2>Overview</h2>{partial}<div class='charts'>{charts}</div>"
        f"<h2>Samples</h2><nav>{nav}</nav>{legend}{sections or '<p class=empty>no samples</p>'}"
        f"<h2>Subject bank</h2>{bank_html}</main></body></html>"
    )
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page, encoding="utf-8")
    return {
        "html": str(html_path),
        "html_bytes": len(page.encode()),
        "samples_read": seen,
        "cards": sum(len(c) for c in shown.values()),
        "cards_per_task": {t: len(c) for t, c in shown.items()},
        "bank_subjects": n_bank,
        "reject_reasons": len(rejects),
    }


def text_summary(output: str | Path) -> dict[str, Any]:
    """What ``inspect`` prints without ``--html``: the manifest's counts."""
    m = load_manifest(output)
    return {
        "samples": m["samples"],
        "shards": len(m["shards"]),
        "images": m["images"],
        "subjects": m["subjects"],
        "tasks": m["tasks"],
        "splits": m["splits"],
        "rejects": m["rejects"],
        "samples not made": m["pair_rejects"],
    }
