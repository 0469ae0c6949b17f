"""Static line charts as inline SVG: no JavaScript, no network, text kept as text.

The charts are simple (lines, 95% bands, markers, one reference line), so they are written directly:
a dozen figures take milliseconds, where matplotlib needed about a second per report. User text (model
ids, attack names) never goes into a figure: titles and legends are HTML beside it, escaped by the
template, and each model keeps one colour and marker across every figure.

A model's look is written once per page, not once per line: `series_css` gives each model a class (colour,
dash, and a `<marker>` at every point) and `series_defs` the markers and legend swatches, which every figure
and legend references by id. A line is then its points and a class, whatever the number of models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v"]  # paired with the colours, shifted by one each round of colours
PANEL = (440, 270)  # one panel's size in CSS pixels (the page scales it down on narrow screens)
MARGIN = (58, 14, 42, 24)  # left, right, bottom, top, in pixels: room for tick labels, axis label, title
FONT = 11  # tick and axis label size in pixels


@dataclass(frozen=True)
class Style:
    color: str  # hex colour
    marker: str  # o s ^ D v
    dashed: bool  # the second round of colours is dashed
    index: int = 0  # the model's place in the sweep: its class `s{index}` and ids `mk{index}`, `sw{index}`

    @property
    def dasharray(self) -> str:
        return "5 3" if self.dashed else "none"

    @property
    def css_class(self) -> str:
        return f"s{self.index}"


def model_styles(models: list[str]) -> dict[str, Style]:
    """Colour, marker and dash per model: 20 models get 20 distinct looks (model 10 differs from model 0 by
    its dashes and its marker), and the look repeats only after 100 models."""
    rounds = lambda i: i // len(COLORS)
    return {
        m: Style(COLORS[i % len(COLORS)], MARKERS[(i + rounds(i)) % len(MARKERS)], rounds(i) % 2 == 1, i)
        for i, m in enumerate(models)
    }


def series_css(styles: dict[str, Style]) -> Markup:
    """One CSS rule per model for its lines (`s{i}`) and bands (`b{i}`); thin lines have no markers."""
    rules = []
    for style in styles.values():
        i, color = style.index, style.color
        rules.append(
            f".s{i}{{stroke:{color};stroke-dasharray:{style.dasharray};"
            f"marker-start:url(#mk{i});marker-mid:url(#mk{i});marker-end:url(#mk{i})}} .b{i}{{fill:{color}}}"
        )
    return Markup("\n".join(rules))  # hex colours and numbers only


def series_defs(styles: dict[str, Style]) -> Markup:
    """A zero-size <svg> holding each model's marker and legend swatch, for every figure to reference by id. Not
    display:none or visibility:hidden: a marker inherits from where it is defined, and would vanish with them."""
    parts = ['<svg class="defs" width="0" height="0" aria-hidden="true"><defs>']
    for style in styles.values():
        i, color = style.index, style.color
        parts.append(
            f'<marker id="mk{i}" markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" viewBox="-4.5 -4.5 9 9" '
            f'refX="0" refY="0" overflow="visible">{marker(style.marker, 0, 0, color)}</marker>'
        )
        parts.append(
            f'<symbol id="sw{i}" viewBox="0 0 30 12"><line x1="0" y1="6" x2="30" y2="6" stroke="{color}" '
            f'stroke-width="2" stroke-dasharray="{style.dasharray}"/>{marker(style.marker, 15, 6, color)}</symbol>'
        )
    parts.append("</defs></svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class Curve:
    model: str  # picks the style; never drawn as text
    x: np.ndarray  # (k,) eps, scale or epoch
    y: np.ndarray  # (k,)
    low: np.ndarray | None = None  # (k,) lower edge of the band (95% interval), or no band
    high: np.ndarray | None = None
    thin: bool = False  # a secondary series (train accuracy beside val accuracy): thin, dashed, no markers


@dataclass(frozen=True)
class Panel:
    curves: list[Curve]
    xlabel: str  # fixed text only: no user strings in figures
    ylabel: str
    title: str = ""
    reference: float | None = None  # a dotted vertical line (the reference eps)
    percent: bool = True  # y is a fraction shown as %, on [0, 1]
    integer_x: bool = False  # x is a count (epochs): whole-number ticks


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round ticks from <= lo to >= hi: the finest step of 1, 2, 2.5 or 5 x 10^k (whole if `integer`)
    that needs at most count + 1 ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo, lo + 1] if math.isfinite(lo) else [0.0, 1.0]
    power = 10.0 ** math.floor(math.log10((hi - lo) / count))
    steps = [m * power * 10**k for k in (0, 1) for m in (1, 2, 2.5, 5)]
    steps = [s for s in steps if not integer or (s >= 1 and s % 1 == 0)] or [1.0]
    span = lambda s: (math.floor(lo / s + 1e-9), math.ceil(hi / s - 1e-9))
    step = next((s for s in steps if span(s)[1] - span(s)[0] + 1 <= count + 1), steps[-1])
    first, last = span(step)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _tick_label(value: float, percent: bool) -> str:
    return f"{value * 100:.0f}%" if percent else f"{value:.6g}"


def figure_svg(panels: list[Panel], styles: dict[str, Style], name: str, columns: int = 1) -> Markup:
    """The panels side by side (`columns` per row) in one <svg>, safe to inline in HTML."""
    rows = -(-len(panels) // columns)
    width, height = PANEL[0] * columns, PANEL[1] * rows
    parts = [
        f'<svg class="plot" role="img" viewBox="0 0 {width} {height}" style="max-width: {width}px" '
        f'font-size="{FONT}" data-figure="{escape(name)}">'  # no xmlns: HTML puts <svg> in its namespace
    ]
    for i, panel in enumerate(panels):
        x0, y0 = (i % columns) * PANEL[0], (i // columns) * PANEL[1]
        parts.append(f'<g class="panel" transform="translate({x0},{y0})">{_panel(panel, styles)}</g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # numbers and escaped fixed labels only


def _panel(panel: Panel, styles: dict[str, Style]) -> str:
    left, right, bottom, top = MARGIN
    w, h = PANEL[0] - left - right, PANEL[1] - top - bottom
    xs = np.concatenate([c.x[np.isfinite(c.x)] for c in panel.curves] + [np.array([], dtype=float)])
    xs = np.append(xs, [panel.reference] if panel.reference is not None else [])
    xs = xs if xs.size else np.array([0.0, 1.0])  # an empty panel still gets axes
    x_ticks = nice_ticks(float(xs.min()), float(xs.max()), integer=panel.integer_x)
    y_ticks = [0, 0.2, 0.4, 0.6, 0.8, 1.0] if panel.percent else _y_ticks(panel)
    x_lo, x_hi = min(x_ticks[0], xs.min()), max(x_ticks[-1], xs.max())
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    x_span, y_span = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0
    sx = lambda v: left + (v - x_lo) / x_span * w
    sy = lambda v: top + h - (v - y_lo) / y_span * h
    out = [_axes(panel, x_ticks, y_ticks, sx, sy, left, top, w, h)]
    for curve in panel.curves:
        out.append(_curve(curve, styles[curve.model], sx, sy))
    if panel.reference is not None:
        x = sx(panel.reference)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#555" stroke-dasharray="2 3"/>')
    return "".join(out)


def _y_ticks(panel: Panel) -> list[float]:
    ys = np.concatenate([c.y[np.isfinite(c.y)] for c in panel.curves] + [np.array([], dtype=float)])
    return nice_ticks(min(0.0, float(ys.min())), float(ys.max())) if ys.size else [0.0, 1.0]


def _axes(panel: Panel, x_ticks, y_ticks, sx, sy, left: float, top: float, w: float, h: float) -> str:
    out = []
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#e3e6eb"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(t, panel.percent)}</text>')
    for t in x_ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#e3e6eb"/>')
        out.append(f'<text x="{x:.1f}" y="{top + h + 15}" text-anchor="middle">{_tick_label(t, False)}</text>')
    out.append(f'<path d="M{left} {top} V{top + h} H{left + w}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{left + w / 2:.1f}" y="{top + h + 33}" text-anchor="middle">{escape(panel.xlabel)}</text>')
    middle = 'text-anchor="middle">'
    out.append(f'<text transform="translate(14,{top + h / 2:.1f}) rotate(-90)" {middle}{escape(panel.ylabel)}</text>')
    if panel.title:
        out.append(f'<text x="{left + w / 2:.1f}" y="{top - 8}" font-weight="600" {middle}{escape(panel.title)}</text>')
    return "".join(out)


def _curve(curve: Curve, style: Style, sx, sy) -> str:
    """The band (a polygon) and the line (a polyline) of one curve; colour, dash and markers come from the
    model's class (`series_css`), so a line costs its points only."""
    keep = np.isfinite(curve.x) & np.isfinite(curve.y)
    order = np.argsort(curve.x[keep], kind="stable")
    x, y = curve.x[keep][order], curve.y[keep][order]
    if x.size == 0:
        return ""
    out = []
    if curve.low is not None and curve.high is not None:
        low, high = curve.low[keep][order], curve.high[keep][order]
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any():
            edge = [f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x[ok], high[ok], strict=True)]
            edge += [f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x[ok][::-1], low[ok][::-1], strict=True)]
            out.append(f'<polygon class="band b{style.index}" points="{" ".join(edge)}"/>')
    points = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y, strict=True))
    thin = " thin" if curve.thin else ""
    out.append(f'<polyline class="line {style.css_class}{thin}" points="{points}"/>')
    return "".join(out)


def swatch(style: Style) -> Markup:
    """A model's line and marker for the HTML legends and the headline table: a reference to its symbol in
    `series_defs`."""
    return Markup(
        f'<svg class="swatch" width="30" height="12" viewBox="0 0 30 12" aria-hidden="true">'
        f'<use href="#sw{style.index}"/></svg>'
    )


def marker(shape: str, x: float, y: float, color: str, r: float = 3.2) -> str:
    """One marker (o s ^ v D) as an SVG element centred on (x, y)."""
    if shape == "o":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}"/>'
    if shape == "s":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" fill="{color}"/>'
    corners = {
        "^": [(0, -1.2), (1.1, 0.9), (-1.1, 0.9)],
        "v": [(-1.1, -0.9), (1.1, -0.9), (0, 1.2)],
        "D": [(0, -1.3), (1.1, 0), (0, 1.3), (-1.1, 0)],
    }[shape]
    points = " ".join(f"{x + dx * r:.1f},{y + dy * r:.1f}" for dx, dy in corners)
    return f'<polygon points="{points}" fill="{color}"/>'
