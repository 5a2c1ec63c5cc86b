"""Small inline-SVG bar charts for the HTML report: no script, no external file, readable when printed."""

from __future__ import annotations

from html import escape

# Bars beyond this many are folded into one "other (N)" bar so a chart stays one screen tall.
MAX_BARS = 15
PALETTE = ("#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#dc2626", "#ca8a04", "#4b5563")


def bar_chart(
    title: str, counts: dict[str, int], colors: dict[str, str] | None = None, width: int = 560
) -> str:
    """A horizontal bar chart of ``counts`` (already in display order) as an HTML ``<figure>``."""
    items = [(str(k), int(v)) for k, v in counts.items()]
    if len(items) > MAX_BARS:
        rest = items[MAX_BARS - 1 :]
        items = items[: MAX_BARS - 1] + [(f"other ({len(rest)})", sum(v for _, v in rest))]
    if not items:
        return f'<figure class="chart"><figcaption>{escape(title)}</figcaption><p class="empty">none</p></figure>'
    bar_h, gap, num_w = 18, 6, 56
    label_w = min(260, 12 + 7 * max(len(k[:34]) for k, _ in items))  # ~7 px per 12 px glyph
    h = len(items) * (bar_h + gap) + gap
    vmax = max(v for _, v in items) or 1
    span = width - label_w - num_w
    rows = []
    for i, (k, v) in enumerate(items):
        y = gap + i * (bar_h + gap)
        w = max(2.0, span * v / vmax) if v else 0
        color = (colors or {}).get(k, PALETTE[i % len(PALETTE)] if colors is None else PALETTE[0])
        rows.append(
            f'<text x="{label_w - 8}" y="{y + bar_h - 5}" text-anchor="end" class="lbl">{escape(k[:34])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" fill="{color}">'
            f"<title>{escape(k)}: {v}</title></rect>"
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 5}" class="num">{v}</text>'
        )
    return (
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {width} {h}" width="100%" role="img" aria-label="{escape(title)}">'
        + "".join(rows)
        + "</svg></figure>"
    )
