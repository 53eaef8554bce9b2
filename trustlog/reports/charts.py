"""Charts as inline SVG (matplotlib, no pyplot state): a report page needs no network at all.

Text stays text (svg.fonttype none), so figures are small and their labels searchable; ids
inside each SVG are salted with the chart's name so two charts on one page never share one.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from decimal import Decimal

import matplotlib
from matplotlib.figure import Figure

matplotlib.use("Agg")

_BAR = "#3b6ea8"
_FLAG = "#c0392b"
_PALETTE = ("#3b6ea8", "#e08a2c", "#4f9a6b", "#8e5ea2", "#c0392b", "#6c7a89", "#b8a03a")
_WIDTH_IN = 7.2


def _svg(fig: Figure, name: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        # no metadata: the date would make every render differ, and the page needs none
        fig.savefig(
            buf,
            format="svg",
            bbox_inches="tight",
            metadata={"Creator": None, "Date": None, "Format": None, "Type": None},
        )
    text = buf.getvalue()
    svg = text[text.index("<svg") :]
    return svg.replace("<svg ", f'<svg role="img" aria-label="{name}" ', 1)


def _style(fig: Figure) -> None:
    for ax in fig.axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)


def hbar(name: str, labels: Sequence[str], values: Sequence[Decimal], xlabel: str) -> str:
    """Horizontal bars, largest first at the top (spend by team, by tool)."""
    n = max(len(labels), 1)
    fig = Figure(figsize=(_WIDTH_IN, 0.7 + 0.32 * n))
    ax = fig.subplots()
    ys = list(range(len(labels)))[::-1]
    vals = [float(v) for v in values]
    ax.barh(ys, vals, color=_BAR)
    ax.set_yticks(ys, labels=list(labels))
    ax.set_xlabel(xlabel, fontsize=8)
    top = max(vals, default=0.0) or 1.0
    for y, v in zip(ys, vals, strict=True):
        ax.text(v + top * 0.01, y, f"{v:,.2f}", va="center", fontsize=7)
    ax.set_xlim(0, top * 1.15)
    _style(fig)
    return _svg(fig, name)


def daily(
    name: str, days: Sequence[str], values: Sequence[Decimal], flagged: Sequence[bool]
) -> str:
    """One bar per day; days with unpriced calls in the flag colour."""
    fig = Figure(figsize=(_WIDTH_IN, 2.6))
    ax = fig.subplots()
    xs = list(range(len(days)))
    ax.bar(xs, [float(v) for v in values], color=[_FLAG if f else _BAR for f in flagged])
    step = max(1, len(days) // 10)
    ax.set_xticks(xs[::step], labels=list(days[::step]), rotation=30, ha="right")
    ax.set_ylabel("USD", fontsize=8)
    _style(fig)
    return _svg(fig, name)


def weekly_by_tool(
    name: str, weeks: Sequence[str], series: Mapping[str, Sequence[Decimal | None]]
) -> str:
    """Grouped bars: one group per week, one bar per tool; None = week not shown."""
    fig = Figure(figsize=(_WIDTH_IN, 2.8))
    ax = fig.subplots()
    k = max(len(series), 1)
    width = 0.8 / k
    for i, (tool, values) in enumerate(series.items()):
        xs = [w + (i - (k - 1) / 2) * width for w in range(len(weeks))]
        ax.bar(
            xs,
            [0.0 if v is None else float(v) for v in values],
            width=width,
            label=tool,
            color=_PALETTE[i % len(_PALETTE)],
        )
    ax.set_xticks(list(range(len(weeks))), labels=list(weeks))
    ax.set_ylabel("USD", fontsize=8)
    if series:
        ax.legend(fontsize=7, frameon=False, ncols=min(k, 4))
    _style(fig)
    return _svg(fig, name)
