"""Server-rendered SVG bar charts: the dashboard works offline and the charts are testable as text.

Each chart is a small, self-contained ``<svg>`` with a ``<title>`` for screen readers and one
``<rect class="bar">`` per value carrying ``data-label``/``data-value`` so tests can read it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH = 420
HEIGHT = 180
MARGIN_LEFT = 44
MARGIN_BOTTOM = 40
MARGIN_TOP = 22


def bar_chart(
    title: str, data: Sequence[tuple[str, float]], *, css_class: str = "", unit: str = ""
) -> Markup:
    """A vertical bar chart of ``(label, value)`` pairs; an empty chart says "no data"."""
    plot_w = WIDTH - MARGIN_LEFT - 8
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    parts = [
        f'<svg class="chart {escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" xmlns="http://www.w3.org/2000/svg" data-title="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="{WIDTH / 2}" y="14" text-anchor="middle">{escape(title)}</text>',
    ]
    peak = max((float(v) for _, v in data), default=0.0)
    if not data or peak <= 0:
        parts.append(
            f'<text class="chart-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            "no data yet</text>"
        )
    else:
        slot = plot_w / len(data)
        bar_w = max(2.0, slot * 0.7)
        base_y = MARGIN_TOP + plot_h
        parts.append(
            f'<line class="axis" x1="{MARGIN_LEFT}" y1="{base_y}" x2="{WIDTH - 8}" y2="{base_y}"/>'
        )
        parts.append(
            f'<text class="tick" x="{MARGIN_LEFT - 4}" y="{MARGIN_TOP + 8}" text-anchor="end">'
            f"{_short(peak)}</text>"
        )
        label_every = max(1, len(data) // 10)
        for i, (label, value) in enumerate(data):
            h = plot_h * float(value) / peak
            x = MARGIN_LEFT + i * slot + (slot - bar_w) / 2
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{base_y - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" data-label="{escape(str(label))}" data-value="{value}">'
                f"<title>{escape(str(label))}: {_short(float(value))}{escape(unit)}</title></rect>"
            )
            if i % label_every == 0:
                cx = MARGIN_LEFT + i * slot + slot / 2
                parts.append(
                    f'<text class="tick" x="{cx:.1f}" y="{base_y + 12}" text-anchor="end" '
                    f'transform="rotate(-30 {cx:.1f} {base_y + 12})">{escape(str(label)[-12:])}</text>'
                )
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2f}"
