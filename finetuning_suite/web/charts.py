"""Loss curves as inline SVG: drawn here, in a few lines, so they update in place every second
and look the same in every browser (gradio's own line plot keeps the series of its first data
and drops lines that appear later, such as the first eval loss)."""
from __future__ import annotations

import html
import math

COLORS = ("#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks or [low]


def _label(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3g}"


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str = "Loss",
               x_label: str = "step", y_label: str = "loss", empty: str = "No values yet.",
               width: int = 900, height: int = 300) -> str:
    """An SVG line chart of `series` (name -> [(x, y), ...]); every point is also a dot (a
    run with one logged step still shows). Each line carries `data-series` and `data-points`."""
    series = {name: sorted((x, y) for x, y in pts if y is not None and math.isfinite(y))
              for name, pts in series.items()}
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        return (f"<div class='chart chart-empty'><b>{html.escape(title)}</b><br>"
                f"{html.escape(empty)}</div>")
    left, right, top, bottom = 64, 16, 30, 70
    # the legend: one entry per series, wrapped onto as many lines as it needs below the plot
    labels = [f"{name} (last {_label(pts[-1][1])})" for name, pts in series.items()]
    places, x, line = [], left, 0
    for label in labels:
        w = 34 + 7 * len(label)
        if x > left and x + w > width - right:
            x, line = left, line + 1
        places.append((x, line))
        x += w
    height, bottom = height + 18 * line, bottom + 18 * line
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.06 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - left - right, height - top - bottom
    sx = lambda x: left + (x - x0) / (x1 - x0) * plot_w  # noqa: E731
    sy = lambda y: top + (1 - (y - y0) / (y1 - y0)) * plot_h  # noqa: E731
    out = [f"<svg class='chart' viewBox='0 0 {width} {height}' width='100%' role='img' "
           f"aria-label='{html.escape(title)}' xmlns='http://www.w3.org/2000/svg' "
           "style='max-width:100%;font-family:inherit;font-size:12px'>",
           f"<text x='{width / 2}' y='18' text-anchor='middle' font-weight='600' "
           f"fill='currentColor'>{html.escape(title)}</text>"]
    for t in nice_ticks(y0, y1):
        y = sy(t)
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
                   "stroke='currentColor' stroke-opacity='0.12'/>")
        out.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' fill='currentColor' "
                   f"fill-opacity='0.7'>{_label(t)}</text>")
    x_ticks = [t for t in nice_ticks(x0, x1, 6) if x0 <= t <= x1]
    if all(float(x).is_integer() for x in xs):
        x_ticks = [t for t in x_ticks if float(t).is_integer()] or [x0, x1]
    for t in x_ticks:
        x = sx(t)
        out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{top + plot_h}' "
                   "stroke='currentColor' stroke-opacity='0.08'/>")
        out.append(f"<text x='{x:.1f}' y='{top + plot_h + 16}' text-anchor='middle' "
                   f"fill='currentColor' fill-opacity='0.7'>{_label(t)}</text>")
    out.append(f"<text x='{left + plot_w / 2}' y='{top + plot_h + 34}' text-anchor='middle' "
               f"fill='currentColor'>{html.escape(x_label)}</text>")
    out.append(f"<text transform='translate(14 {top + plot_h / 2}) rotate(-90)' "
               f"text-anchor='middle' fill='currentColor'>{html.escape(y_label)}</text>")
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f"<polyline class='series' data-series='{html.escape(name)}' "
                   f"data-points='{len(pts)}' points='{coords}' fill='none' stroke='{color}' "
                   "stroke-width='2' stroke-linejoin='round'/>")
        if len(pts) <= 60:
            out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{color}'>"
                    f"<title>{html.escape(name)} step {_label(x)}: {_label(y)}</title></circle>"
                    for x, y in pts]
        lx, row = places[i]
        ly = top + plot_h + 60 + 18 * row
        out.append(f"<line x1='{lx}' x2='{lx + 18}' y1='{ly - 4}' y2='{ly - 4}' "
                   f"stroke='{color}' stroke-width='3'/>")
        out.append(f"<text x='{lx + 24}' y='{ly}' fill='currentColor'>{html.escape(labels[i])}</text>")
    out.append("</svg>")
    return "".join(out)
