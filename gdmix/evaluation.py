"""Evaluation of a scored dataset: ROC curve, calibration, per-entity AUC and an HTML report.

The numbers come from :mod:`gdmix.metrics` (pure numpy, equal to scikit-learn); this module adds
the curves a person looks at and renders everything as one self-contained HTML page: no
JavaScript, no external assets, plots drawn as inline SVG by hand. The Kubeflow UI shows such a
page in an iframe (an ``HTML`` artifact), and the ROC points fit
``ClassificationMetrics.log_roc_curve(fpr, tpr, threshold)`` as they are. Nothing here imports
Kubeflow.

Typical use in a pipeline component::

    report = evaluate(labels, logits, weights, entities={"memberId": member_ids},
                      coordinate_metrics=history)
    if report.roc is not None:
        roc_metrics.log_roc_curve(*report.roc)
    with open(html_artifact.path, "w", encoding="utf-8") as f:
        f.write(render_html(report, title="GDMix validation"))
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from gdmix import metrics as _metrics

__all__ = [
    "EvaluationReport",
    "calibration_bins",
    "evaluate",
    "render_html",
    "roc_curve",
    "roc_curve_points",
]


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _validate(labels, logits, weights):
    """(labels, logits, weights) as float64 1-D arrays; ValueError for anything unusable.

    Beyond :func:`gdmix.metrics._prepare` (lengths, 0/1 labels, non-negative weights): an empty
    input and non-finite logits are errors here, because a report of nothing, or a curve with a
    NaN threshold, would hide a broken upstream step rather than show it.
    """
    y = _metrics._as_1d("labels", labels, np.float64)
    if y.shape[0] == 0:
        raise ValueError("cannot evaluate an empty dataset: labels has no rows")
    z = _metrics._as_1d("logits", logits, np.float64)
    bad = ~np.isfinite(z)
    if bad.any():
        rows = np.flatnonzero(bad)
        n_nan = int(np.isnan(z[rows]).sum())
        kinds = []
        if n_nan:
            kinds.append(f"{n_nan} NaN")
        if rows.shape[0] - n_nan:
            kinds.append(f"{rows.shape[0] - n_nan} infinite")
        shown = ", ".join(str(int(i)) for i in rows[:5]) + (", ..." if rows.shape[0] > 5 else "")
        raise ValueError(
            f"logits contain {' and '.join(kinds)} value(s) out of {z.shape[0]} (rows {shown}); "
            "the model produced invalid scores"
        )
    y, z, w = _metrics._prepare(y, z, weights, score_name="logits")
    if w is not None and not w.sum() > 0:
        raise ValueError("cannot evaluate: every weight is zero")
    return y, z, w


def _expit(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# --------------------------------------------------------------------------------------------
# ROC curve
# --------------------------------------------------------------------------------------------


def roc_curve(labels, logits, weights=None, *, drop_intermediate: bool = True):
    """Weighted ROC curve as numpy arrays ``(fpr, tpr, thresholds)``, thresholds decreasing.

    The same points as ``sklearn.metrics.roc_curve(labels, logits, sample_weight=weights,
    drop_intermediate=drop_intermediate)``: zero-weight rows are ignored, tied logits form one
    threshold, and (by default) points collinear with their neighbours are dropped. One sort and
    cumulative sums over blocks of tied logits; no Python loop over rows.

    Unlike sklearn, the first threshold (the point (0, 0), every row predicted negative) is
    finite: ``max(logits) + 1`` instead of ``+inf``, so the thresholds can be stored as JSON or
    logged to Kubeflow. Raises ValueError when the curve is undefined (a single class, or empty).
    """
    y, z, w = _validate(labels, logits, weights)
    first_threshold = float(z.max()) + 1.0
    if not first_threshold > z.max():  # |max| >= 2**53: +1 is lost to rounding
        first_threshold = float(np.nextafter(z.max(), np.inf))
    if w is not None and not w.all():
        keep = w != 0
        y, z, w = y[keep], z[keep], w[keep]

    order = np.argsort(z)
    z_sorted = z[order]
    sw = _metrics._signed_weights(y, w)[order]
    del order
    starts = _metrics._block_starts(z_sorted[1:] != z_sorted[:-1])
    pos, neg = _metrics._split_signed(sw)
    if starts is not None:
        pos = np.add.reduceat(pos, starts)
        neg = np.add.reduceat(neg, starts)
        z_sorted = z_sorted[starts]
    # Descending thresholds: predicting positive for logit >= threshold adds blocks one by one.
    tps = np.cumsum(pos[::-1])
    fps = np.cumsum(neg[::-1])
    thresholds = z_sorted[::-1]
    if not tps[-1] > 0:
        raise ValueError("ROC curve is undefined: the data has no positive (label 1) weight")
    if not fps[-1] > 0:
        raise ValueError("ROC curve is undefined: the data has no negative (label 0) weight")

    if drop_intermediate and fps.shape[0] > 2:
        corner = np.logical_or(np.diff(fps, 2), np.diff(tps, 2))
        keep = np.flatnonzero(np.concatenate(([True], corner, [True])))
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]

    fpr = np.concatenate(([0.0], fps / fps[-1]))
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    thresholds = np.concatenate(([first_threshold], thresholds))
    return fpr, tpr, thresholds


def _thin_indices(fpr: np.ndarray, tpr: np.ndarray, max_points: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` curve points, both end points included.

    The ROC curve only moves up and right, so ``fpr + tpr`` is its (L1) arc length from the
    origin. Targets evenly spaced in arc length pick the first point at or past each target and
    the point before it, so both ends of a long straight segment survive (the corners that give
    the curve its shape) and dense runs of tiny steps are sampled evenly. The number of targets
    is the largest (by bisection) whose selection fits in ``max_points``.
    """
    n = fpr.shape[0]
    if n <= max_points:
        return np.arange(n)
    arc = fpr + tpr

    def select(k: int) -> np.ndarray:
        idx = np.searchsorted(arc, np.linspace(0.0, arc[-1], k), side="left")
        idx = np.concatenate(([0, n - 1], idx, idx - 1))
        return np.unique(np.clip(idx, 0, n - 1))

    best = np.array([0, n - 1])
    lo, hi = 2, min(n, 64 * max_points)
    while lo <= hi:
        k = (lo + hi) // 2
        chosen = select(k)
        if chosen.shape[0] <= max_points:
            if chosen.shape[0] > best.shape[0]:
                best = chosen
            lo = k + 1
        else:
            hi = k - 1
    return best


def roc_curve_points(labels, logits, weights=None, max_points: int | None = 200):
    """The weighted ROC curve as plain lists ``(fpr, tpr, thresholds)`` of Python floats.

    Points are those of :func:`roc_curve` (sklearn's, with a finite first threshold; thresholds
    are logits), thinned to at most ``max_points`` points that keep both end points and the
    curve's shape; ``max_points=None`` keeps every point. The result can go straight to
    Kubeflow's ``ClassificationMetrics.log_roc_curve(fpr, tpr, threshold)``. Raises ValueError
    for a single class (the curve is undefined) or empty input.
    """
    if max_points is not None and max_points < 2:
        raise ValueError(f"max_points must be at least 2 (the two end points), got {max_points}")
    fpr, tpr, thresholds = roc_curve(labels, logits, weights)
    if max_points is not None:
        keep = _thin_indices(fpr, tpr, max_points)
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return fpr.tolist(), tpr.tolist(), thresholds.tolist()


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def calibration_bins(labels, logits, weights=None, bins: int = 10) -> list[dict]:
    """Reliability-diagram bins: quantile bins of the predicted probability.

    Bin edges are the weighted ``k / bins`` quantiles of the prediction (the smallest value at
    which the cumulative weight reaches ``k/bins`` of the total); a row goes to the first bin
    whose upper edge is at or above its prediction, so tied predictions always share a bin.
    Binning is done on logits, which orders rows exactly as the probability does without the
    ties that float rounding creates near 0 and 1. Bins without weight are dropped, so heavy
    ties give fewer than ``bins`` bins.

    Each bin is ``{"mean_predicted", "observed_rate", "weight", "rows", "p_min", "p_max"}``:
    weighted mean predicted probability, weighted fraction of positives, total weight, row count
    (zero-weight rows included), smallest and largest predicted probability of its rows.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    bins = int(bins)
    y, z, w = _validate(labels, logits, weights)
    if w is None:
        w = np.ones_like(y)
    order = np.argsort(z)
    z, y, w = z[order], y[order], w[order]
    del order
    cum = np.cumsum(w)
    targets = np.arange(1, bins) * cum[-1] / bins
    edges = z[np.minimum(np.searchsorted(cum, targets, side="left"), z.shape[0] - 1)]
    which = np.searchsorted(edges, z, side="left")

    p = _expit(z)
    weight = np.bincount(which, weights=w, minlength=bins)
    rows = np.bincount(which, minlength=bins)
    pred = np.bincount(which, weights=w * p, minlength=bins)
    pos = np.bincount(which, weights=w * y, minlength=bins)
    first = np.searchsorted(which, np.arange(bins), side="left")  # ``which`` is sorted
    last = np.searchsorted(which, np.arange(bins), side="right") - 1

    out = []
    for b in np.flatnonzero(weight > 0):
        out.append(
            {
                "mean_predicted": float(pred[b] / weight[b]),
                "observed_rate": float(pos[b] / weight[b]),
                "weight": float(weight[b]),
                "rows": int(rows[b]),
                "p_min": float(p[first[b]]),
                "p_max": float(p[last[b]]),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """Everything the HTML page shows, also usable on its own (e.g. logged to Kubeflow).

    ``metrics``: auc, logloss, aupr (nan where undefined), rows, weight, positive_rate,
    mean_predicted. ``roc``: ``(fpr, tpr, thresholds)`` lists or None when undefined.
    ``entity_summaries[name]``: :func:`gdmix.metrics.per_entity_auc_summary`;
    ``entity_aucs[name]``: the defined per-entity AUCs (for histograms).
    ``coordinate_metrics``: rows given by the caller (one per pass and coordinate).
    ``notes``: why something is missing. ``split``: which data the metrics come from
    (``validation``, ``test``, ...), shown in the report; None when the caller did not say.
    """

    metrics: dict[str, float]
    roc: tuple[list[float], list[float], list[float]] | None = None
    calibration: list[dict] = field(default_factory=list)
    entity_summaries: dict[str, dict] = field(default_factory=dict)
    entity_aucs: dict[str, np.ndarray] = field(default_factory=dict)
    coordinate_metrics: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    split: str | None = None

    def to_dict(self) -> dict:
        """JSON-serializable form (nan becomes None; AUC arrays become lists)."""

        def clean(v):
            if isinstance(v, float | np.floating):
                return float(v) if math.isfinite(v) else None
            if isinstance(v, np.integer):
                return int(v)
            if isinstance(v, np.ndarray):
                return [clean(x) for x in v.tolist()]
            if isinstance(v, Mapping):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "metrics": self.metrics,
                "roc": None if self.roc is None else dict(zip(("fpr", "tpr", "thresholds"), self.roc)),
                "calibration": self.calibration,
                "entity_summaries": self.entity_summaries,
                "entity_aucs": self.entity_aucs,
                "coordinate_metrics": self.coordinate_metrics,
                "notes": self.notes,
                "split": self.split,
            }
        )


def evaluate(
    labels,
    logits,
    weights=None,
    entities: dict[str, np.ndarray] | None = None,
    coordinate_metrics: list[dict] | None = None,
    *,
    max_roc_points: int = 200,
    n_calibration_bins: int = 10,
    split: str | None = None,
) -> EvaluationReport:
    """Evaluate a scored dataset: global metrics, ROC, calibration and per-entity AUC.

    ``entities`` maps an entity column name (e.g. ``"memberId"``) to its per-row ids; each gets
    a per-entity AUC summary and histogram. ``coordinate_metrics`` are rows such as
    ``{"pass": 1, "coordinate": "global", "split": "validation", "auc": 0.71, "logloss": 0.52}``
    from training, shown as a table of how the metrics moved after every coordinate (rows of
    every split, ``train``, ``validation`` and ``test``, each labelled). ``split`` names the data
    being evaluated (e.g. ``"test"``): the report labels its metrics with it.

    Raises ValueError for empty input, NaN/infinite logits, labels other than 0/1, negative
    weights or all-zero weights, and entity columns of the wrong length. A single class is not
    an error: AUC and AUPR are nan and the ROC curve is omitted with a note.
    """
    y, z, w = _validate(labels, logits, weights)
    n = y.shape[0]
    notes: list[str] = []

    values = _metrics.binary_metrics(y, z, w)
    ww = np.ones(n) if w is None else w
    total = float(ww.sum())
    pos_weight = float(np.dot(ww, y))
    values.update(
        rows=n,
        weight=total,
        positive_rate=pos_weight / total,
        mean_predicted=float(np.dot(ww, _expit(z)) / total),
    )

    roc = None
    if 0.0 < pos_weight < total:
        roc = roc_curve_points(y, z, w, max_points=max_roc_points)
    else:
        which = "positive (label 1)" if pos_weight == 0.0 else "negative (label 0)"
        notes.append(
            f"The data has no {which} rows with non-zero weight: AUC, AUPR and the ROC curve "
            "are undefined."
        )

    calibration = calibration_bins(y, z, w, bins=n_calibration_bins)

    summaries: dict[str, dict] = {}
    entity_aucs: dict[str, np.ndarray] = {}
    for name, ids in (entities or {}).items():
        ids = np.asarray(ids).reshape(-1)
        if ids.shape[0] != n:
            raise ValueError(f"entity column {name!r} has {ids.shape[0]} rows, labels have {n}")
        summaries[name] = _metrics.per_entity_auc_summary(ids, y, z, w)
        _, aucs, _ = _metrics.grouped_auc(ids, y, z, w)
        entity_aucs[name] = aucs[~np.isnan(aucs)]

    rows = []
    for i, row in enumerate(coordinate_metrics or []):
        if not isinstance(row, Mapping):
            raise TypeError(f"coordinate_metrics[{i}] must be a mapping, got {type(row).__name__}")
        rows.append({str(k): v for k, v in row.items()})

    return EvaluationReport(
        metrics=values,
        roc=roc,
        calibration=calibration,
        entity_summaries=summaries,
        entity_aucs=entity_aucs,
        coordinate_metrics=rows,
        notes=notes,
        split=split,
    )


# --------------------------------------------------------------------------------------------
# HTML rendering
# --------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 16px 24px; color: #202124; background: #fff; font-size: 14px; }
h1 { font-size: 20px; font-weight: 600; margin: 0 0 12px; }
h2 { font-size: 16px; font-weight: 600; margin: 28px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid #dadce0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e8eaed; text-align: right; white-space: nowrap; }
th { background: #f1f3f4; font-weight: 600; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
tbody tr:hover { background: #f8f9fa; }
.plots { display: flex; flex-wrap: wrap; gap: 16px 32px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 13px; font-weight: 600; margin-bottom: 4px; }
svg { max-width: 100%; height: auto; display: block; }
.note { color: #5f6368; font-style: italic; margin: 6px 0; }
.up { color: #188038; }
.down { color: #c5221f; }
"""

_W, _H = 440, 346
_MARGIN = {"left": 62, "right": 16, "top": 30, "bottom": 46}
_BLUE = "#1a73e8"
_GREY = "#9aa0a6"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float | np.floating) and not math.isfinite(v))


def _fmt(v, digits: int = 4) -> str:
    """A table cell: n/a for missing, grouped integers, fixed decimals for floats."""
    if _is_missing(v):
        return "n/a"
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        v = float(v)
        if v.is_integer() and abs(v) >= 1e4:
            return f"{v:,.0f}"
        if 1e3 <= abs(v) < 1e9:
            return f"{v:,.2f}"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 10 ** -digits):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    return str(v)


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10.0 * mag


def _ticks(hi: float, target: int = 5, integer: bool = False) -> tuple[list[float], float]:
    """Ticks from 0 to a nice upper limit >= hi, and that limit."""
    hi = max(hi, 1e-12)
    step = _nice_step(hi, target)
    if integer and step < 1 + 1e-9:
        step = 1.0
    elif integer and not float(step).is_integer():  # 2.5 -> 2
        step = math.floor(step)
    top = step * math.ceil(hi / step - 1e-9)
    count = int(round(top / step))
    return [i * step for i in range(count + 1)], top


def _tick_label(v: float, step: float) -> str:
    if step >= 1000:  # compact counts keep the y-axis labels narrow: 12.5k, 2M
        for unit, scale in (("M", 1e6), ("k", 1e3)):
            if step >= scale or v >= scale:
                return f"{v / scale:g}{unit}" if v else "0"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    if step < 1 and not math.isclose(round(step, decimals), step):
        decimals += 1
    return f"{v:,.{decimals}f}"


class _Plot:
    """An SVG chart: axes box, linear scales, grid, ticks and axis labels."""

    def __init__(self, xmax: float, ymax: float, xticks, yticks, xlabel: str, ylabel: str, desc: str):
        self.xmax, self.ymax = xmax, ymax
        self.x0 = _MARGIN["left"]
        self.x1 = _W - _MARGIN["right"]
        self.y0 = _H - _MARGIN["bottom"]  # pixel y of data y = 0
        self.y1 = _MARGIN["top"]
        self.parts: list[str] = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}" role="img" font-family="Helvetica, Arial, sans-serif" '
            f'font-size="11" fill="#3c4043">',
            f"<title>{_e(desc)}</title>",
            f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="#ffffff"/>',
        ]
        xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
        ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
        for t in xticks:
            px = self.px(t)
            self.parts.append(self._line(px, self.y0, px, self.y1, "#e8eaed"))
            self.parts.append(self._line(px, self.y0, px, self.y0 + 5, "#5f6368"))
            self.parts.append(
                f'<text x="{px:.1f}" y="{self.y0 + 17}" text-anchor="middle">{_e(_tick_label(t, xstep))}</text>'
            )
        for t in yticks:
            py = self.py(t)
            self.parts.append(self._line(self.x0, py, self.x1, py, "#e8eaed"))
            self.parts.append(self._line(self.x0 - 5, py, self.x0, py, "#5f6368"))
            self.parts.append(
                f'<text x="{self.x0 - 8}" y="{py + 4:.1f}" text-anchor="end">{_e(_tick_label(t, ystep))}</text>'
            )
        self.parts.append(
            f'<rect x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" height="{self.y0 - self.y1}" '
            'fill="none" stroke="#5f6368" stroke-width="1"/>'
        )
        cx = (self.x0 + self.x1) / 2
        cy = (self.y0 + self.y1) / 2
        self.parts.append(
            f'<text x="{cx:.1f}" y="{_H - 8}" text-anchor="middle" font-size="12" fill="#202124">{_e(xlabel)}</text>'
        )
        self.parts.append(
            f'<text x="16" y="{cy:.1f}" text-anchor="middle" font-size="12" fill="#202124" '
            f'transform="rotate(-90 16 {cy:.1f})">{_e(ylabel)}</text>'
        )

    def px(self, x: float) -> float:
        return self.x0 + (self.x1 - self.x0) * (x / self.xmax)

    def py(self, y: float) -> float:
        return self.y0 - (self.y0 - self.y1) * (y / self.ymax)

    @staticmethod
    def _line(x1, y1, x2, y2, color, width=1.0, dash=None) -> str:
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        return (
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{color}" stroke-width="{width}"{extra}/>'
        )

    def line(self, x1, y1, x2, y2, color, width=1.0, dash=None) -> None:
        self.parts.append(self._line(self.px(x1), self.py(y1), self.px(x2), self.py(y2), color, width, dash))

    def path_points(self, xs, ys) -> str:
        return " ".join(f"{self.px(x):.2f},{self.py(y):.2f}" for x, y in zip(xs, ys))

    def legend(self, items: list[tuple[str, str, str | None]]) -> None:
        """Legend entries (label, line color, dash) in a row above the plot area, where they
        cannot hide data (per-entity AUC histograms often peak at 0, 0.5 and 1)."""
        x, y = float(self.x0), self.y1 - 12
        for label, color, dash in items:
            self.parts.append(self._line(x, y, x + 22, y, color, 2, dash))
            self.parts.append(f'<text x="{x + 27:.1f}" y="{y + 4:.1f}">{_e(label)}</text>')
            x += 27 + 6.2 * len(label) + 18

    def svg(self) -> str:
        return "\n".join(self.parts + ["</svg>"])


_UNIT_TICKS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def _roc_svg(fpr: list[float], tpr: list[float], auc_value: float) -> str:
    plot = _Plot(1.0, 1.0, _UNIT_TICKS, _UNIT_TICKS, "False positive rate", "True positive rate",
                 "ROC curve")
    plot.line(0, 0, 1, 1, _GREY, 1, "5 4")
    area = plot.path_points([*fpr, 1.0], [*tpr, 0.0])
    plot.parts.append(f'<polygon points="{area}" fill="{_BLUE}" fill-opacity="0.08" stroke="none"/>')
    plot.parts.append(
        f'<polyline points="{plot.path_points(fpr, tpr)}" fill="none" stroke="{_BLUE}" '
        'stroke-width="2" stroke-linejoin="round"/>'
    )
    plot.legend([(f"model (AUC {_fmt(auc_value)})", _BLUE, None), ("random", _GREY, "5 4")])
    return plot.svg()


def _calibration_svg(bins: list[dict]) -> str:
    pred = [b["mean_predicted"] for b in bins]
    obs = [b["observed_rate"] for b in bins]
    ticks, top = _ticks(min(1.0, 1.02 * max(max(pred), max(obs))), 5)
    plot = _Plot(top, top, ticks, ticks, "Mean predicted probability", "Observed positive rate",
                 "Calibration (reliability) plot")
    plot.line(0, 0, top, top, _GREY, 1, "5 4")
    plot.parts.append(
        f'<polyline points="{plot.path_points(pred, obs)}" fill="none" stroke="{_BLUE}" '
        'stroke-width="1.5" stroke-linejoin="round"/>'
    )
    for i, b in enumerate(bins):
        tip = (
            f"bin {i + 1}: predicted {_fmt(b['mean_predicted'])}, observed {_fmt(b['observed_rate'])}, "
            f"weight {_fmt(b['weight'])}, rows {_fmt(b['rows'])}"
        )
        plot.parts.append(
            f'<circle cx="{plot.px(b["mean_predicted"]):.2f}" cy="{plot.py(b["observed_rate"]):.2f}" '
            f'r="4" fill="{_BLUE}" stroke="#ffffff" stroke-width="1"><title>{_e(tip)}</title></circle>'
        )
    plot.legend([("model", _BLUE, None), ("perfectly calibrated", _GREY, "5 4")])
    return plot.svg()


def _histogram_svg(name: str, aucs: np.ndarray, summary: dict) -> str:
    counts, edges = np.histogram(aucs, bins=20, range=(0.0, 1.0))
    yticks, top = _ticks(float(counts.max()), 5, integer=True)
    plot = _Plot(1.0, top, _UNIT_TICKS, yticks, f"Per-entity AUC ({name})", "Entities",
                 f"Histogram of per-entity AUC for {name}")
    for c, lo, hi in zip(counts.tolist(), edges[:-1].tolist(), edges[1:].tolist()):
        if c == 0:
            continue
        x, y = plot.px(lo) + 0.5, plot.py(c)
        width = plot.px(hi) - plot.px(lo) - 1.0
        plot.parts.append(
            f'<rect x="{x:.2f}" y="{y:.2f}" width="{width:.2f}" height="{plot.y0 - y:.2f}" '
            f'fill="{_BLUE}" fill-opacity="0.75"><title>{_e(f"AUC {lo:.2f} to {hi:.2f}: {c:,} entities")}'
            "</title></rect>"
        )
    mean = summary.get("mean")
    items = []
    if not _is_missing(mean):
        plot.line(mean, 0, mean, top, "#d93025", 1.5, "6 3")
        items.append((f"mean {_fmt(mean, 3)}", "#d93025", "6 3"))
    plot.line(0.5, 0, 0.5, top, _GREY, 1, "2 3")
    items.append(("random (0.5)", _GREY, "2 3"))
    plot.legend(items)
    return plot.svg()


_LABELS = {
    "auc": "AUC",
    "aupr": "AUPR",
    "logloss": "Log loss",
    "rows": "Rows",
    "weight": "Total weight",
    "positive_rate": "Positive rate",
    "mean_predicted": "Mean predicted probability",
    "pass": "Pass",
    "coordinate": "Coordinate",
    "split": "Split",
}


def _table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """Rows of (cell html, css class) pairs; header cells are escaped here."""
    out = ["<table>", "<thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in header]
    out.append("</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = "".join(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>" for cell, cls in row)
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _cell(v) -> tuple[str, str]:
    if isinstance(v, str):
        return _e(v), "text"
    return _e(_fmt(v)), ""


def _coordinate_table(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    keys = [k for k in ("pass", "coordinate", "split") if k in keys] + [
        k for k in keys if k not in ("pass", "coordinate", "split")
    ]
    with_delta = "auc" in keys
    header = []
    for k in keys:
        header.append(_LABELS.get(k, k))
        if k == "auc" and with_delta:
            header.append("\u0394 AUC")
    previous: dict = {}
    body = []
    for row in rows:
        cells = []
        for k in keys:
            cells.append(_cell(row[k]) if k in row else ("", ""))
            if k == "auc" and with_delta:
                split = str(row.get("split", ""))
                value = row.get("auc")
                before = previous.get(split)
                if _is_missing(value) or isinstance(value, str) or _is_missing(before):
                    cells.append(("", ""))
                else:
                    d = float(value) - float(before)
                    sign = "+" if d >= 0 else "\u2212"
                    cls = "up" if d > 0 else ("down" if d < 0 else "")
                    cells.append((_e(f"{sign}{abs(d):.4f}"), cls))
                if not _is_missing(value) and not isinstance(value, str):
                    previous[split] = value
        body.append(cells)
    return _table(header, body)


def render_html(report: EvaluationReport, title: str = "GDMix evaluation") -> str:
    """A self-contained HTML page for ``report``: tables and inline SVG plots, no scripts.

    Sections: overall metrics; ROC curve (with the diagonal) and calibration plot; per-entity
    AUC summaries with one histogram per entity column; the per-coordinate metrics table. All
    text is escaped. The page is pure ASCII (other characters become character references), so
    it displays correctly whatever encoding it is served with.
    """
    m = report.metrics
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8"/>',
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f"<h2>Metrics ({_e(report.split)} data)</h2>" if report.split else "<h2>Metrics</h2>",
    ]
    order = ["auc", "aupr", "logloss", "rows", "weight", "positive_rate", "mean_predicted"]
    names = order + [k for k in m if k not in order]
    rows = [[(_e(_LABELS.get(k, k)), "text"), _cell(m[k])] for k in names if k in m]
    if report.split:
        rows.insert(0, [(_e(_LABELS["split"]), "text"), (_e(report.split), "text")])
    parts.append(_table(["Metric", "Value"], rows))
    for note in report.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')

    parts.append("<h2>ROC curve and calibration</h2>")
    parts.append('<div class="plots">')
    if report.roc is not None:
        parts.append("<figure><figcaption>ROC curve</figcaption>")
        parts.append(_roc_svg(report.roc[0], report.roc[1], m.get("auc", float("nan"))))
        parts.append("</figure>")
    else:
        parts.append('<p class="note">ROC curve omitted: it is undefined without both classes.</p>')
    if report.calibration:
        parts.append("<figure><figcaption>Calibration (quantile bins of the prediction)</figcaption>")
        parts.append(_calibration_svg(report.calibration))
        parts.append("</figure>")
    else:
        parts.append('<p class="note">Calibration plot omitted: no bins with weight.</p>')
    parts.append("</div>")

    if report.entity_summaries:
        parts.append("<h2>Per-entity AUC</h2>")
        header = ["Entity", "Entities", "With AUC", "Mean", "Row-weighted mean", "P10", "Median", "P90"]
        stats = ["entities", "entities_with_auc", "mean", "row_weighted_mean", "p10", "median", "p90"]
        rows = [
            [(_e(name), "text")] + [_cell(s.get(k)) for k in stats]
            for name, s in report.entity_summaries.items()
        ]
        parts.append(_table(header, rows))
        parts.append(
            '<p class="note">Entities with a single class have no AUC; they are counted but '
            "not in the statistics.</p>"
        )
        parts.append('<div class="plots">')
        for name, summary in report.entity_summaries.items():
            aucs = np.asarray(report.entity_aucs.get(name, np.empty(0)), dtype=np.float64)
            aucs = aucs[~np.isnan(aucs)]
            if aucs.shape[0] == 0:
                parts.append(f'<p class="note">{_e(name)}: no entity has both classes; no histogram.</p>')
                continue
            parts.append(f"<figure><figcaption>{_e(name)}</figcaption>")
            parts.append(_histogram_svg(name, aucs, summary))
            parts.append("</figure>")
        parts.append("</div>")

    if report.coordinate_metrics:
        parts.append("<h2>Metrics after each coordinate</h2>")
        parts.append(_coordinate_table(report.coordinate_metrics))
        if any("auc" in row for row in report.coordinate_metrics):
            parts.append(
                '<p class="note">\u0394 AUC: change from the previous row of the same split.</p>'
            )

    parts += ["</body>", "</html>", ""]
    return "\n".join(parts).encode("ascii", "xmlcharrefreplace").decode("ascii")
