"""The curves behind the report: input checks, the weighted ROC curve and calibration bins.

Pure numpy, with no plotting and no HTML, so the numbers can be tested against scikit-learn
on their own and logged to Kubeflow (``ClassificationMetrics.log_roc_curve``) as they are.
"""

from __future__ import annotations

import numpy as np

from gdmix import metrics as _metrics


def validate(labels, logits, weights):
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


def expit(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


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
    y, z, w = validate(labels, logits, weights)
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
    y, z, w = validate(labels, logits, weights)
    if w is None:
        w = np.ones_like(y)
    order = np.argsort(z)
    z, y, w = z[order], y[order], w[order]
    del order
    cum = np.cumsum(w)
    targets = np.arange(1, bins) * cum[-1] / bins
    edges = z[np.minimum(np.searchsorted(cum, targets, side="left"), z.shape[0] - 1)]
    which = np.searchsorted(edges, z, side="left")

    p = expit(z)
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
