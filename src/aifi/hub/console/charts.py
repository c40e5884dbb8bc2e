"""Charts drawn on the server as inline SVG: no script, no CDN, readable when printed.

Each function returns an SVG fragment (``markupsafe.Markup``) with a
``<title>`` per point or bar, so a hover shows the value; all text is
escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from markupsafe import Markup, escape

__all__ = ["bar_chart", "line_chart"]

PALETTE = ("#1f6feb", "#d9480f", "#2f9e44", "#9c36b5", "#e8590c", "#0c8599", "#5c940d")
WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 24, 36


def line_chart(
    title: str,
    days: Sequence[date],
    series: Mapping[str, Mapping[date, float]],
    *,
    unit: str = "",
    percent: bool = False,
) -> Markup:
    """One line per series over ``days``; a gap where a day has no value."""
    peak = max((v for s in series.values() for v in s.values()), default=0.0)
    top = 1.0 if percent else _nice(peak)
    parts = [_frame(title, days, top, unit, percent)]
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = [(_x(days, d), _y(v, top), d, v) for d, v in sorted(values.items()) if d in days]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        if len(points) > 1:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'
            )
        for x, y, d, v in points:
            shown = f"{v:.0%}" if percent else f"{v:.1f}{unit}"
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)} {d:%Y-%m-%d}: {shown}</title></circle>"
            )
    parts.append(_legend(list(series)))
    return _svg(title, parts)


def bar_chart(title: str, days: Sequence[date], series: Mapping[str, Mapping[date, int]]) -> Markup:
    """Stacked bars per day, one colour per series."""
    totals = {d: sum(s.get(d, 0) for s in series.values()) for d in days}
    top = _nice(max(totals.values(), default=0))
    parts = [_frame(title, days, top, "", False)]
    width = max(2.0, (WIDTH - LEFT - RIGHT) / max(1, len(days)) - 2)
    for day in days:
        base = 0
        for index, (name, values) in enumerate(series.items()):
            count = values.get(day, 0)
            if not count:
                continue
            y0, y1 = _y(base, top), _y(base + count, top)
            x = _x(days, day) - width / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{y1:.1f}" width="{width:.1f}" height="{y0 - y1:.1f}" '
                f'fill="{PALETTE[index % len(PALETTE)]}"><title>{escape(name)} '
                f"{day:%Y-%m-%d}: {count}</title></rect>"
            )
            base += count
    parts.append(_legend(list(series)))
    return _svg(title, parts)


def _svg(title: str, parts: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts)
        + "</svg>"
    )


def _frame(title: str, days: Sequence[date], top: float, unit: str, percent: bool) -> str:
    inner_bottom = HEIGHT - BOTTOM
    lines = [
        f'<text x="{LEFT}" y="15" class="chart-title">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{inner_bottom}" x2="{WIDTH - RIGHT}" y2="{inner_bottom}" '
        'stroke="#888"/>',
    ]
    for step in range(5):
        value = top * step / 4
        y = _y(value, top)
        label = f"{value:.0%}" if percent else f"{value:g}{unit}"
        lines.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="axis">{label}</text>'
        )
    if days:
        every = max(1, len(days) // 6)
        for day in days[::every]:
            lines.append(
                f'<text x="{_x(days, day):.1f}" y="{inner_bottom + 14}" text-anchor="middle" '
                f'class="axis">{day:%m-%d}</text>'
            )
    return "".join(lines)


def _legend(names: list[str]) -> str:
    items, x = [], LEFT
    for index, name in enumerate(names[:7]):
        colour = PALETTE[index % len(PALETTE)]
        items.append(
            f'<rect x="{x}" y="{HEIGHT - 12}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{HEIGHT - 3}" class="axis">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return "".join(items)


def _x(days: Sequence[date], day: date) -> float:
    span = WIDTH - LEFT - RIGHT
    if len(days) < 2:
        return LEFT + span / 2
    index = (day - days[0]).days
    return LEFT + span * (index + 0.5) / len(days)


def _y(value: float, top: float) -> float:
    span = HEIGHT - TOP - BOTTOM
    return HEIGHT - BOTTOM - span * (value / top if top else 0)


def _nice(peak: float) -> float:
    """A round upper bound of the axis at or above ``peak``."""
    if peak <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(peak))) / 10 if peak >= 1 else 0.1
    for step in (1, 2, 2.5, 5, 10):
        if peak <= step * magnitude:
            return step * magnitude
    return 10 * magnitude
