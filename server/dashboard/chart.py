"""The volume chart as SVG, drawn on the server: no JavaScript, no image library.

Two bars per day — ministry notices (法務省通知) and municipality notices
(市町村通知) — over a shared scale, with a grid line at half and full scale,
a date under every 15th day and a tooltip (``<title>``) on every day.  Colours
come from the page's style sheet (classes ``bar-ministry``/``bar-municipality``),
so the markup carries no inline styles and the page's Content-Security-Policy
needs no ``unsafe-inline``.  Pure: values in, markup out (every text escaped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

from .volume import DayVolume

__all__ = ["nice_ceiling", "volume_svg"]

WIDTH, HEIGHT = 900, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 28, 36


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k not below ``value`` (at least 1): a readable axis maximum."""
    if value <= 1:
        return 1
    power = 10 ** int(math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    raise AssertionError("unreachable")  # pragma: no cover


def volume_svg(days: Sequence[DayVolume], *, title: str) -> Markup:
    """The chart for ``days`` (oldest first); ``title`` names it for screen readers."""
    top = nice_ceiling(max([d.ministry for d in days] + [d.municipality for d in days] + [0]))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(days), 1)
    bar = max(slot * 0.42, 1.0)
    total_m = sum(d.ministry for d in days)
    total_c = sum(d.municipality for d in days)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="volume" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label={quoteattr(title)}>',
        f"<title>{escape(title)}</title>",
        f"<desc>法務省通知 合計 {total_m} 件、市町村通知 合計 {total_c} 件</desc>",
    ]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        value = top * fraction
        label = f"{value:g}" if value == int(value) else ""  # counts: no "2.5" on the axis
        out.append(
            f'<line class="gridline" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for index, entry in enumerate(days):
        x = LEFT + index * slot
        tip = f"{entry.day.isoformat()} 法務省通知 {entry.ministry} 件 / 市町村通知 {entry.municipality} 件"
        out.append(f'<g class="day"><title>{escape(tip)}</title>')
        for offset, value, css in (
            (0.0, entry.ministry, "bar-ministry"),
            (bar, entry.municipality, "bar-municipality"),
        ):
            h = plot_h * value / top
            out.append(
                f'<rect class="{css}" x="{x + slot * 0.08 + offset:.1f}" y="{TOP + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"/>'
            )
        out.append("</g>")
        if index % 15 == 0 or index == len(days) - 1:
            out.append(
                f'<text class="axis" x="{x + slot / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{entry.day.month}/{entry.day.day}</text>'
            )
    out.append(
        f'<rect class="bar-ministry" x="{LEFT}" y="6" width="12" height="12"/>'
        f'<text class="legend" x="{LEFT + 16}" y="16">法務省通知（市町村へ）</text>'
        f'<rect class="bar-municipality" x="{LEFT + 200}" y="6" width="12" height="12"/>'
        f'<text class="legend" x="{LEFT + 216}" y="16">市町村通知（法務省へ）</text>'
    )
    out.append("</svg>")
    return Markup("".join(out))
