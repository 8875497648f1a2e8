"""Evaluation metrics for binary response models (AUC, AUPR, log loss, per-entity AUC).

Every function is a pure, vectorized numpy computation: one sort, then cumulative weighted sums
over blocks of tied scores. There is no Python loop over rows or groups, because validation sets
are tens of millions of rows and per-entity AUC covers millions of entities.

The definitions match scikit-learn exactly (``roc_auc_score``, ``average_precision_score``,
``log_loss`` with ``sample_weight``), so numbers are comparable with other tooling, but
undefined cases return ``nan`` instead of raising: an evaluation report must not crash because
one validation shard happens to hold a single class.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "auc",
    "average_precision",
    "logloss",
    "binary_metrics",
    "grouped_auc",
    "per_entity_auc_summary",
]


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_1d(name: str, values, dtype=None) -> np.ndarray:
    """Flatten to 1-D so model outputs shaped ``(n, 1)`` are accepted as-is."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be a 1-D array, got a scalar")
    return arr.reshape(-1)


def _prepare(labels, scores, weights, score_name: str = "scores"):
    """Validate and convert (labels, scores, weights) to float64 1-D arrays of equal length.

    Labels must be 0/1 (any numeric dtype); a label of e.g. -1 or 2 would silently count as a
    negative/positive otherwise, which is a data bug the caller must hear about.
    """
    y = _as_1d("labels", labels, np.float64)
    s = _as_1d(score_name, scores, np.float64)
    n = y.shape[0]
    if s.shape[0] != n:
        raise ValueError(
            f"labels and {score_name} must have the same length, got {n} and {s.shape[0]}"
        )
    if weights is None:
        w = None
    else:
        w = _as_1d("weights", weights, np.float64)
        if w.shape[0] != n:
            raise ValueError(
                f"labels and weights must have the same length, got {n} and {w.shape[0]}"
            )
        if np.isnan(w).any() or (w < 0).any():
            raise ValueError("weights must be non-negative and not NaN")
    if n and ((y != 0.0) & (y != 1.0)).any():
        raise ValueError("labels must be 0 or 1")
    if n and np.isnan(s).any():
        raise ValueError(f"{score_name} contain NaN")
    return y, s, w


def _signed_weights(y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """``+w`` for positives, ``-w`` for negatives.

    One array carries both label and weight, so reordering rows costs a single random gather
    (the dominant cost after the sort at 10M rows). A zero-weight row maps to 0 and then counts
    as neither class, which is exactly its contribution to every weighted metric.
    """
    sw = np.multiply(y, 2.0)
    sw -= 1.0
    if w is not None:
        sw *= w
    return sw


def _split_signed(sw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive weight, negative weight) per row; exact, and reuses ``sw``'s buffer."""
    pos = np.maximum(sw, 0.0)
    neg = np.subtract(pos, sw, out=sw)
    return pos, neg


def _block_starts(differs: np.ndarray) -> np.ndarray | None:
    """Start index of each run of equal sorted keys given ``differs[i] = key[i+1] != key[i]``.

    None when every key is distinct (the usual case for continuous scores), so callers can skip
    the reduction over blocks entirely.
    """
    if differs.all():
        return None
    return np.flatnonzero(np.concatenate(([True], differs)))


def _score_blocks(y: np.ndarray, s: np.ndarray, w: np.ndarray | None):
    """Positive and negative weight per distinct score, in ascending score order.

    Everything AUC and AP need: both are functions of these block sums only, which is what
    makes tie handling exact. Sorted scores come from np.sort (fast, sequential) rather than a
    gather through the argsort permutation.
    """
    order = np.argsort(s)
    sw = _signed_weights(y, w)[order]
    del order
    s_sorted = np.sort(s)
    starts = _block_starts(s_sorted[1:] != s_sorted[:-1])
    del s_sorted
    pos, neg = _split_signed(sw)
    if starts is not None:
        pos = np.add.reduceat(pos, starts)
        neg = np.add.reduceat(neg, starts)
    return pos, neg


def _auc_from_blocks(pos_b: np.ndarray, neg_b: np.ndarray) -> float:
    """AUC = sum_b pos_b * (neg_below_b + neg_b / 2) / (P * N), blocks in ascending score order.

    This is the trapezoid area of the ROC curve (a tie between a positive and a negative counts
    1/2), i.e. what sklearn's roc_auc_score computes. Written as two dot products with the
    inclusive cumsum to avoid a temporary; the result is at least half the first term, so the
    subtraction loses no precision.
    """
    neg_cum = np.cumsum(neg_b)
    p_total = pos_b.sum()
    n_total = neg_cum[-1]
    if not (p_total > 0 and n_total > 0):
        return float("nan")
    area = np.dot(pos_b, neg_cum) - 0.5 * np.dot(pos_b, neg_b)
    return float(area / (p_total * n_total))


def _ap_from_blocks(pos_b: np.ndarray, neg_b: np.ndarray) -> float:
    """AP = sum_k (recall_k - recall_{k-1}) * precision_k over distinct thresholds, descending.

    recall_k - recall_{k-1} is the positive weight of block k over P, so AP is one dot product.
    Leading zero-weight blocks (predicted weight 0) add no recall and get precision 0, as in
    sklearn.
    """
    pos_desc = pos_b[::-1]
    tps = np.cumsum(pos_desc)
    p_total = tps[-1]
    if not p_total > 0:
        return float("nan")
    predicted = np.cumsum(neg_b[::-1])
    predicted += tps
    precision = np.divide(tps, predicted, out=predicted, where=predicted > 0)
    return float(np.dot(pos_desc, precision) / p_total)


def _logloss(y: np.ndarray, z: np.ndarray, w: np.ndarray | None) -> float:
    """Weighted mean of softplus(z) - y*z, computed as max(z,0) - y*z + log1p(exp(-|z|))."""
    loss = np.abs(z)
    np.negative(loss, out=loss)
    np.exp(loss, out=loss)
    np.log1p(loss, out=loss)
    loss += np.maximum(z, 0.0)
    loss -= y * z
    if w is None:
        return float(loss.mean())
    total = w.sum()
    if not total > 0:
        return float("nan")
    return float(np.dot(w, loss) / total)


# --------------------------------------------------------------------------------------------
# Global metrics
# --------------------------------------------------------------------------------------------


def auc(labels, scores, weights=None) -> float:
    """Weighted area under the ROC curve; tied scores count 1/2 (trapezoid rule).

    One argsort, weights summed per block of equal scores, then a closed form over the blocks:
    equal to ``sklearn.metrics.roc_auc_score(labels, scores, sample_weight=weights)`` in
    O(n log n). Returns nan when the input is empty or one class has no positive weight.
    """
    y, s, w = _prepare(labels, scores, weights)
    if y.shape[0] == 0:
        return float("nan")
    return _auc_from_blocks(*_score_blocks(y, s, w))


def average_precision(labels, scores, weights=None) -> float:
    """Weighted average precision, step-wise as in ``sklearn.metrics.average_precision_score``.

    Thresholds are the distinct scores in decreasing order; tied scores form one threshold (no
    interpolation), as sklearn does. Returns nan when empty or when positives have no weight.
    """
    y, s, w = _prepare(labels, scores, weights)
    if y.shape[0] == 0:
        return float("nan")
    return _ap_from_blocks(*_score_blocks(y, s, w))


def logloss(labels, logits, weights=None) -> float:
    """Weighted mean binary cross entropy, computed stably from logits.

    loss = softplus(z) - y*z = max(z, 0) - y*z + log1p(exp(-|z|)). Going through probabilities
    would round expit(z) to 0 or 1 for |z| > ~37 and give inf or clipped values; this form is
    accurate for any finite logit. Returns nan when empty or the weights sum to zero.
    """
    y, z, w = _prepare(labels, logits, weights, score_name="logits")
    if y.shape[0] == 0:
        return float("nan")
    return _logloss(y, z, w)


def binary_metrics(labels, logits, weights=None) -> dict[str, float]:
    """AUC, log loss and AUPR of a logistic model, all from logits, sorting only once.

    Ranking metrics use the logits directly (monotone in the probability) because expit()
    collapses large logits onto 1.0 and would create spurious ties.
    """
    y, z, w = _prepare(labels, logits, weights, score_name="logits")
    if y.shape[0] == 0:
        return {"auc": float("nan"), "logloss": float("nan"), "aupr": float("nan")}
    pos_b, neg_b = _score_blocks(y, z, w)
    return {
        "auc": _auc_from_blocks(pos_b, neg_b),
        "logloss": _logloss(y, z, w),
        "aupr": _ap_from_blocks(pos_b, neg_b),
    }


# --------------------------------------------------------------------------------------------
# Per-entity metrics
# --------------------------------------------------------------------------------------------


def _group_score_order(g: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row order sorted by (group, score) and a sorted key whose changes mark group boundaries.

    For integer groups whose span times n fits in int64 (any realistic entity coding), rows are
    first argsorted by score, then the unique int64 key ``(group - min) * n + score_rank`` is
    sorted by value: a value sort is several times faster than np.lexsort, and the key itself
    yields both the permutation and the group of each sorted row. Otherwise falls back to
    np.lexsort.
    """
    n = g.shape[0]
    if g.dtype.kind in "iub":
        gmin, gmax = int(g.min()), int(g.max())
        if (gmax - gmin + 1) * n < 2**63:
            by_score = np.argsort(s)
            if g.dtype.kind == "u" and g.dtype.itemsize == 8:
                key = (g[by_score] - np.uint64(gmin)).astype(np.int64)
            else:
                key = g[by_score].astype(np.int64)
                key -= gmin
            key *= n
            key += np.arange(n, dtype=np.int64)
            key.sort()
            group_sorted, rank = np.divmod(key, n)
            return by_score[rank], group_sorted
    order = np.lexsort((s, g))
    return order, g[order]


def grouped_auc(
    groups, labels, scores, weights=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC of every group (entity) at once, identical to ``auc`` applied group by group.

    Rows sorted by (group, score); weights summed per block of equal (group, score); the
    within-group cumulative negative weight is the global cumsum minus its value where the
    group starts. No loop over groups, so millions of entities cost one sort.

    Returns ``(group_values, aucs, row_counts)`` sorted by group value; ``aucs`` is nan where a
    group lacks positive weight in one class; ``row_counts`` counts rows (zero weights included).
    """
    y, s, w = _prepare(labels, scores, weights)
    g = _as_1d("groups", groups)
    n = y.shape[0]
    if g.shape[0] != n:
        raise ValueError(f"groups and labels must have the same length, got {g.shape[0]} and {n}")
    if n == 0:
        return g[:0].copy(), np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)

    order, g_sorted = _group_score_order(g, s)
    sw = _signed_weights(y, w)[order]
    s_sorted = s[order]

    group_change = g_sorted[1:] != g_sorted[:-1]
    del g_sorted
    opens_group = np.concatenate(([True], group_change))
    row_group_starts = np.flatnonzero(opens_group)
    group_values = g[order[row_group_starts]]
    del order

    block_change = np.not_equal(s_sorted[1:], s_sorted[:-1])
    del s_sorted
    block_change |= group_change
    del group_change
    block_starts = _block_starts(block_change)
    del block_change

    pos, neg = _split_signed(sw)
    if block_starts is not None:
        pos = np.add.reduceat(pos, block_starts)
        neg = np.add.reduceat(neg, block_starts)
        opens_group = opens_group[block_starts]
    n_blocks = pos.shape[0]
    group_starts = np.flatnonzero(opens_group)  # in block coordinates
    del opens_group

    # Inclusive cumulative negative weight within each group.
    neg_cum = np.cumsum(neg)
    base = neg_cum[group_starts] - neg[group_starts]
    neg_cum -= np.repeat(base, np.diff(np.append(group_starts, n_blocks)))

    p_total = np.add.reduceat(pos, group_starts)
    n_total = np.add.reduceat(neg, group_starts)
    # area_g = sum_b pos_b * (neg_cum_b - neg_b / 2), as in _auc_from_blocks.
    neg_cum *= pos
    neg *= pos
    area = np.add.reduceat(neg_cum, group_starts)
    area -= 0.5 * np.add.reduceat(neg, group_starts)

    defined = (p_total > 0) & (n_total > 0)
    aucs = np.full(p_total.shape[0], np.nan)
    aucs[defined] = area[defined] / (p_total[defined] * n_total[defined])

    row_counts = np.diff(np.append(row_group_starts, n)).astype(np.int64)
    return group_values, aucs, row_counts


def per_entity_auc_summary(groups, labels, scores, weights=None) -> dict:
    """Distribution of per-entity AUC over entities where it is defined.

    A single global AUC hides whether random effects help the typical entity; the mean,
    row-weighted mean and quantiles of per-entity AUC show it. Entities with one class only are
    counted in ``entities`` but excluded from the statistics; if none is left, statistics are None.
    """
    _, aucs, counts = grouped_auc(groups, labels, scores, weights)
    defined = ~np.isnan(aucs)
    out: dict = {"entities": int(aucs.shape[0]), "entities_with_auc": int(defined.sum())}
    if not defined.any():
        out.update(mean=None, row_weighted_mean=None, median=None, p10=None, p90=None)
        return out
    a = aucs[defined]
    c = counts[defined].astype(np.float64)
    p10, median, p90 = np.percentile(a, [10.0, 50.0, 90.0])
    out.update(
        mean=float(a.mean()),
        row_weighted_mean=float(np.dot(a, c) / c.sum()),
        median=float(median),
        p10=float(p10),
        p90=float(p90),
    )
    return out
