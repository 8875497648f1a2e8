"""The report's charts (ROC, calibration, per-entity AUC histogram) as inline SVG text.

The Kubeflow UI shows an HTML artifact in a sandboxed iframe, offline, so every chart travels
inside the page as an ``<svg>`` element: no image files, no scripts, no fonts to fetch.
matplotlib draws them, through its SVG backend directly (a :class:`~matplotlib.figure.Figure`
with its own canvas, never pyplot), so no global figure registry fills up in a long-lived
process and nothing has to be closed. The settings below exist for the page, not for looks:

* ``svg.fonttype: none`` keeps text as ``<text>`` (small, readable, searchable) rather than
  glyph outlines; the browser picks the font, DejaVu Sans only measures the layout.
* A fixed ``svg.hashsalt`` and no metadata (no date) make the same report render to the same
  bytes; a salt per chart keeps the ids of clip paths and markers unique in the one HTML
  document that holds every chart.
* ``path.simplify`` off and no snapping on data lines: every point of a curve is drawn where it
  is, so the ROC curve can be read back from the SVG (the tests compare it with sklearn's).
* Named groups (``gid``) mark what a reader or a test looks for: the ROC curve
  (:data:`ROC_CURVE_ID`), the ROC axes box (:data:`ROC_AXES_ID`, data limits [0, 1] on both
  axes), each calibration point and histogram bar, which also carry a ``<title>`` tooltip.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from gdmix.evaluation.formatting import escape, fmt, is_missing

ROC_CURVE_ID = "roc-curve"
ROC_AXES_ID = "roc-axes"

_W, _H = 440, 346  # SVG user units, shown as CSS pixels (matplotlib's SVG is 72 units an inch)
_MARGIN = {"left": 62, "right": 16, "top": 30, "bottom": 46}
_BLUE = "#1a73e8"
_GREY = "#9aa0a6"
_RED = "#d93025"
_STEPS = [1, 2, 2.5, 5, 10]  # tick steps: 0.2, 0.25, 0.5, 1, 2, 5, ... times a power of ten

_STYLE = {
    "svg.fonttype": "none",
    "path.simplify": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 11,
    "text.color": "#3c4043",
    "axes.labelsize": 12,
    "axes.labelcolor": "#202124",
    "axes.edgecolor": "#5f6368",
    "axes.linewidth": 1.0,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e8eaed",
    "grid.linewidth": 1.0,
    "xtick.color": "#5f6368",
    "ytick.color": "#5f6368",
    "xtick.labelcolor": "#3c4043",
    "ytick.labelcolor": "#3c4043",
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "xtick.major.size": 5,
    "ytick.major.size": 5,
    "legend.fontsize": 11,
    "figure.facecolor": "#ffffff",
}
# Dublin Core metadata would add a date (different bytes every run) and an RDF block that has
# no use inside an HTML page.
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def _render(salt: str, title: str, draw: Callable[[Axes], dict[str, str] | None]) -> str:
    """Run ``draw`` on a fresh axes and return the figure as an inline ``<svg>`` element.

    ``draw`` may return ``{gid: tooltip}`` for groups it named; each gets a ``<title>``.
    matplotlib's rcParams are process-wide, so the style holds only while one chart is drawn
    and saved (``rc_context`` restores them); the caller's own matplotlib settings are untouched.
    """
    with mpl.rc_context(_STYLE | {"svg.hashsalt": f"gdmix-evaluation-{salt}"}):
        fig = Figure(figsize=(_W / 72, _H / 72), dpi=72)
        FigureCanvasSVG(fig)
        fig.subplots_adjust(
            left=_MARGIN["left"] / _W,
            right=1 - _MARGIN["right"] / _W,
            bottom=_MARGIN["bottom"] / _H,
            top=1 - _MARGIN["top"] / _H,
        )
        tips = draw(fig.add_subplot()) or {}
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata=_NO_METADATA)
    return _inline(out.getvalue(), title, tips)


def _inline(svg: str, title: str, tips: dict[str, str]) -> str:
    """A standalone SVG document made fit to sit in HTML.

    Drops the XML declaration and DOCTYPE (not allowed mid-page), sizes the root in CSS pixels
    instead of points (so a 440-unit chart is 440 px wide, as the page's layout expects), and
    adds an accessible ``<title>`` plus the tooltips.
    """
    svg = svg[svg.index("<svg"):].rstrip()
    end = svg.index(">")
    root = re.sub(r'\b(width|height)="([0-9.]+)pt"', r'\1="\2"', svg[:end])
    svg = f'{root} role="img">\n <title>{escape(title)}</title>{svg[end + 1:]}'
    for gid, tip in tips.items():
        opening = f'<g id="{gid}">'
        svg = svg.replace(opening, f"{opening}\n <title>{escape(tip)}</title>", 1)
    return svg


def _nice_top(hi: float, integer: bool = False) -> float:
    """The first tick at or above ``hi`` (at least a tiny positive span), for axis limits."""
    ticks = MaxNLocator(nbins=5, steps=_STEPS, integer=integer).tick_values(0.0, max(hi, 1e-12))
    return float(ticks[-1])


def _count_label(v: float, _pos=None) -> str:
    """Compact counts keep the y-axis labels narrow: 12.5k, 2M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:g}{unit}"
    return f"{v:,.0f}"


def _decorate(ax: Axes, xlabel: str, ylabel: str, handles: list) -> None:
    """Axis labels and a one-row legend above the plot area, where it cannot hide data
    (per-entity AUC histograms often peak at 0, 0.5 and 1).

    Labels may hold user text (entity names): ``parse_math=False`` keeps a ``$`` literal.
    """
    ax.set_xlabel(xlabel, parse_math=False)
    ax.set_ylabel(ylabel, parse_math=False)
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=len(handles),
              frameon=False, borderaxespad=0.2, borderpad=0.0, handlelength=2.2, columnspacing=1.5)


def roc_svg(fpr: list[float], tpr: list[float], auc_value: float) -> str:
    """The ROC curve with its area shaded, the chance diagonal and the AUC in the legend."""

    def draw(ax: Axes) -> None:
        ax.patch.set_gid(ROC_AXES_ID)
        ax.fill([*fpr, 1.0], [*tpr, 0.0], color=_BLUE, alpha=0.08, linewidth=0)
        (chance,) = ax.plot([0, 1], [0, 1], color=_GREY, linewidth=1, linestyle=(0, (5, 4)), label="random")
        (model,) = ax.plot(fpr, tpr, color=_BLUE, linewidth=2, solid_joinstyle="round", snap=False,
                           clip_on=False, gid=ROC_CURVE_ID, label=f"model (AUC {fmt(auc_value)})")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        _decorate(ax, "False positive rate", "True positive rate", [model, chance])

    return _render("roc", "ROC curve", draw)


def calibration_svg(bins: list[dict]) -> str:
    """Mean predicted probability against observed positive rate per bin, and the diagonal.

    Both axes share one range, from 0 to a round value just above the largest point, so the
    diagonal is at 45 degrees and small probabilities are not squeezed into a corner.
    """
    pred = [b["mean_predicted"] for b in bins]
    obs = [b["observed_rate"] for b in bins]
    top = _nice_top(min(1.0, 1.02 * max(max(pred), max(obs))))

    def draw(ax: Axes) -> dict[str, str]:
        (ideal,) = ax.plot([0, top], [0, top], color=_GREY, linewidth=1, linestyle=(0, (5, 4)),
                           label="perfectly calibrated")
        (model,) = ax.plot(pred, obs, color=_BLUE, linewidth=1.5, solid_joinstyle="round", snap=False,
                           label="model")
        tips = {}
        for i, b in enumerate(bins, start=1):
            gid = f"calibration-bin-{i}"
            ax.plot([b["mean_predicted"]], [b["observed_rate"]], linestyle="none", marker="o", markersize=8,
                    markerfacecolor=_BLUE, markeredgecolor="#ffffff", markeredgewidth=1, clip_on=False, gid=gid)
            tips[gid] = (
                f"bin {i}: predicted {fmt(b['mean_predicted'])}, observed {fmt(b['observed_rate'])}, "
                f"weight {fmt(b['weight'])}, rows {fmt(b['rows'])}"
            )
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=5, steps=_STEPS))
        ax.set_xlim(0.0, top)
        ax.set_ylim(0.0, top)
        _decorate(ax, "Mean predicted probability", "Observed positive rate", [model, ideal])
        return tips

    return _render("calibration", "Calibration (reliability) plot", draw)


def histogram_svg(name: str, aucs: np.ndarray, summary: dict, index: int = 0) -> str:
    """Per-entity AUCs in 20 bins over [0, 1], with the mean and the chance level 0.5 marked.

    ``index`` (the chart's position among the page's histograms) keeps the ids of its bars
    unique in the page; ``name`` is only shown, never used in an id.
    """
    counts, edges = np.histogram(aucs, bins=20, range=(0.0, 1.0))
    top = _nice_top(float(counts.max()), integer=True)

    def draw(ax: Axes) -> dict[str, str]:
        tips = {}
        for j, (c, lo, hi) in enumerate(zip(counts.tolist(), edges[:-1].tolist(), edges[1:].tolist())):
            if c == 0:
                continue
            gid = f"auc-histogram-{index}-bin-{j + 1}"
            ax.bar(lo, c, width=hi - lo, align="edge", color=to_rgba(_BLUE, 0.75), edgecolor="#ffffff",
                   linewidth=1, gid=gid)
            tips[gid] = f"AUC {lo:.2f} to {hi:.2f}: {c:,} entities"
        handles = []
        mean = summary.get("mean")
        if not is_missing(mean):
            handles.append(ax.axvline(mean, color=_RED, linewidth=1.5, linestyle=(0, (6, 3)),
                                      label=f"mean {fmt(mean, 3)}"))
        handles.append(ax.axvline(0.5, color=_GREY, linewidth=1, linestyle=(0, (2, 3)), label="random (0.5)"))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=_STEPS, integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(_count_label))
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, top)
        _decorate(ax, f"Per-entity AUC ({name})", "Entities", handles)
        return tips

    return _render(f"histogram-{index}", f"Histogram of per-entity AUC for {name}", draw)
