"""Evaluation metrics: binary response models (AUC, AUPR, log loss, per-entity AUC) and ranking
metrics over groups of rows (NDCG@k, MRR@k, precision@k per query or per user list).

Every function is a pure, vectorized numpy computation: one sort, then cumulative weighted sums
over blocks of tied scores (or over the top k rows of each group). There is no Python loop over
rows or groups, because validation sets are tens of millions of rows and per-entity metrics cover
millions of entities.

The definitions match scikit-learn exactly (``roc_auc_score``, ``average_precision_score``,
``log_loss`` with ``sample_weight``), so numbers are comparable with other tooling, but
undefined cases return ``nan`` instead of raising: an evaluation report must not crash because
one validation shard happens to hold a single class. NDCG equals
``sklearn.metrics.ndcg_score`` per group where that is comparable (no tied scores; sklearn's gain
is the label itself, our ``gain="linear"``); see :func:`ndcg_at_k` for how ties differ.
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
    "per_entity_auc_key",
    "ndcg_at_k",
    "mrr_at_k",
    "precision_at_k",
    "grouped_ranking_metrics",
    "per_group_ranking_metrics",
]


# Input handling


def _as_1d(name: str, values, dtype=None) -> np.ndarray:
    """Flatten to 1-D so model outputs shaped ``(n, 1)`` are accepted as-is."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be a 1-D array, got a scalar")
    return arr.reshape(-1)


def _weights(weights, n: int) -> np.ndarray | None:
    """Row weights as float64 (None stays None): one per row, non-negative, not NaN."""
    if weights is None:
        return None
    w = _as_1d("weights", weights, np.float64)
    if w.shape[0] != n:
        raise ValueError(f"labels and weights must have the same length, got {n} and {w.shape[0]}")
    if np.isnan(w).any() or (w < 0).any():
        raise ValueError("weights must be non-negative and not NaN")
    return w


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
    w = _weights(weights, n)
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


# Global metrics


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


# Per-entity metrics


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


def per_entity_auc_key(split: str) -> str:
    """Where a training run's per-coordinate results keep the per-entity AUC summary of a
    held-out split: ``per_entity_auc`` for validation (as ever), ``<split>_per_entity_auc``
    (``test_per_entity_auc``) for the others."""
    return "per_entity_auc" if split == "validation" else f"{split}_per_entity_auc"


# Ranking metrics over groups (queries, per-user candidate lists)
#
# Conventions shared by every ranking function:
#
# * Within a group, rows are ranked by score, highest first. Rows with equal scores are ranked
#   worst case first: lower labels ahead of higher ones. Averaging over all orders of a tie (what
#   sklearn's ndcg_score does) needs per-block expected discounts; the worst case costs one extra
#   sort of the tied rows only, is deterministic, and scores a constant scorer as the worst
#   ranking of its labels, so a model that collapses to ties cannot look good by accident.
# * Labels are graded relevance, any finite number >= 0; a row is relevant when its label is > 0.
# * A group with no relevant row has no defined value (nan) for any of the metrics: there is
#   nothing to rank, so it says nothing about the model, and scoring it 0 (or 1) would move the
#   mean with the share of such groups in the data. Means are over the remaining groups, so all
#   metrics average over the same groups.
# * ``weights``, when given, is one weight per group, repeated on each of its rows (as a per-row
#   column carries it); means are weighted over groups. A weight that varies within a group is
#   rejected: per-row weights have no meaning for a ranked list.

_GAINS = ("exponential", "linear")


def _prepare_ranking(groups, labels, scores, weights):
    """Validate and flatten (groups, labels, scores, weights) for the ranking metrics.

    Negative labels are rejected because they give negative gains and NDCG outside [0, 1];
    NaN labels or scores would make the ranking undefined.
    """
    g = _as_1d("groups", groups)
    y = _as_1d("labels", labels, np.float64)
    s = _as_1d("scores", scores, np.float64)
    n = y.shape[0]
    if g.shape[0] != n or s.shape[0] != n:
        raise ValueError(
            "groups, labels and scores must have the same length, got "
            f"{g.shape[0]}, {n} and {s.shape[0]}"
        )
    w = _weights(weights, n)
    if n and not (np.isfinite(y).all() and (y >= 0).all()):
        raise ValueError("labels must be finite and non-negative (graded relevance)")
    if n and np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return g, y, s, w


def _check_ks(ks) -> list[int]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = [ks]
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        out.append(int(k))
    if not out:
        raise ValueError("ks must name at least one cutoff")
    return out


def _small_int_labels(values: np.ndarray) -> np.ndarray | None:
    """``values`` as int16 when every value is an integer in [0, 32767], else None.

    Relevance labels are almost always 0/1 or 0..4; as small integers they can be radix-sorted
    or counted instead of comparison-sorted as float64.
    """
    if values.size and 0.0 <= values.min() and values.max() <= 32767.0:
        as_int = values.astype(np.int16)
        if np.array_equal(as_int, values):
            return as_int
    return None


def _sort_within(blocks: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Permutation ordering rows by (block, value) when ``blocks`` is already non-decreasing.

    ``blocks`` are int64 ids in [0, m). Rows are argsorted by value (numpy's linear-time radix
    sort for small integer labels), then the unique key ``block * m + rank`` is value-sorted, as
    in :func:`_group_score_order`. The sorted keys have exactly the (sorted) ``blocks`` as their
    block part, so subtracting ``blocks * m`` recovers the ranks without a division.
    """
    m = values.shape[0]
    as_int = _small_int_labels(values)
    by_value = np.argsort(values) if as_int is None else np.argsort(as_int, kind="stable")
    key = blocks[by_value]
    key *= m
    key += np.arange(m, dtype=np.int64)
    key.sort()
    key -= blocks * m
    return by_value[key]


def _ranking_order(g: np.ndarray, y: np.ndarray, s: np.ndarray):
    """Rows ranked within groups: ``(order, group_starts)``.

    Order is by group, then score descending, then label ascending among tied scores (the worst
    case). The group sort runs on ``-s``; the tie fix-up then re-sorts only the rows that share
    their score with a neighbour of the same group, so continuous scores pay nothing for it.
    """
    n = y.shape[0]
    order, g_sorted = _group_score_order(g, np.negative(s))
    opens = np.empty(n, dtype=bool)
    opens[0] = True
    np.not_equal(g_sorted[1:], g_sorted[:-1], out=opens[1:])
    del g_sorted
    starts = np.flatnonzero(opens)

    s_sorted = s[order]
    tied_prev = np.empty(n, dtype=bool)  # row i has the score of row i-1, same group
    tied_prev[0] = False
    np.equal(s_sorted[1:], s_sorted[:-1], out=tied_prev[1:])
    del s_sorted
    tied_prev &= ~opens
    if tied_prev.any():
        in_tie = tied_prev.copy()
        in_tie[:-1] |= tied_prev[1:]
        rows = np.flatnonzero(in_tie)
        blocks = np.cumsum(~tied_prev[rows], dtype=np.int64)
        blocks -= 1
        tied_order = order[rows]
        order[rows] = tied_order[_sort_within(blocks, y[tied_order])]
    return order, starts


def _gain(labels: np.ndarray, gain: str) -> np.ndarray:
    if gain == "linear":
        return labels
    out = np.exp2(labels)
    out -= 1.0  # exact for integer labels
    return out


def _cumulative_discount(kmax: int) -> np.ndarray:
    """``D[j]`` = sum of the first j rank discounts 1 / log2(rank + 2), ``D[0] = 0``."""
    return np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(kmax) + 2.0))))


def _ideal_dcg_by_counting(y_sorted, group_index, n_groups: int, ks, gain: str):
    """IDCG@k of every group from label counts, without sorting, for small integer labels.

    In the ideal order the rows with label v take ranks [a_v, a_v + c_v), a_v counting the
    group's rows with higher labels, so IDCG@k = sum_v gain(v) * (D(min(a_v + c_v, k)) -
    D(min(a_v, k))) with D the cumulative discount. One bincount over (group, label) replaces
    the sort; None (use the sort) for other labels or when the count table would be large.
    """
    labels = _small_int_labels(y_sorted)
    if labels is None:
        return None
    width = int(labels.max()) + 1
    if n_groups * width > max(y_sorted.shape[0], 1 << 20):
        return None
    if width == 1:  # nothing relevant anywhere
        return {k: np.zeros(n_groups) for k in ks}
    key = group_index * width
    key += labels
    counts = np.bincount(key, minlength=n_groups * width).reshape(n_groups, width)
    counts = counts[:, :0:-1]  # labels width-1 down to 1; label 0 has gain 0
    after = np.cumsum(counts, axis=1)
    before = after - counts
    gains = _gain(np.arange(width - 1, 0, -1, dtype=np.float64), gain)
    cum = _cumulative_discount(max(ks))
    return {
        k: (cum[np.minimum(after, k)] - cum[np.minimum(before, k)]) @ gains for k in set(ks)
    }


def _top_k_sums(values: np.ndarray, pos: np.ndarray, starts: np.ndarray, k: int, kmax: int):
    """Per group, the sum of ``values`` over the rows ranked before ``k``."""
    if k < kmax:
        values = np.where(pos < k, values, 0.0)
    return np.add.reduceat(values, starts)


def _ranking_core(groups, labels, scores, ks, weights, gain: str, ndcg: bool):
    """Per-group NDCG@k (if ``ndcg``), MRR@k and precision@k for every k in ``ks``.

    Returns ``(group_values, row_counts, group_weights, values)``: groups sorted by value,
    ``group_weights`` None without weights, and ``values[name]`` an array per metric name
    (``ndcg@5``, ...), nan for groups without a relevant row.

    After the ranking sort only the top ``max(ks)`` rows of each group are kept, so long lists
    cost no more than short ones beyond the sort. DCG sums run per group with
    ``np.add.reduceat``; relevant counts use an exact integer cumsum.
    """
    if gain not in _GAINS:
        raise ValueError(f"gain must be one of {', '.join(_GAINS)}, got {gain!r}")
    ks = _check_ks(ks)
    g, y, s, w = _prepare_ranking(groups, labels, scores, weights)
    n = y.shape[0]
    names = [f"{m}@{k}" for k in ks for m in (("ndcg",) if ndcg else ()) + ("mrr", "precision")]
    if n == 0:
        empty = np.empty(0, dtype=np.float64)
        return (g[:0].copy(), np.empty(0, dtype=np.int64), None if w is None else empty,
                {name: empty.copy() for name in names})

    order, starts = _ranking_order(g, y, s)
    n_groups = starts.shape[0]
    sizes = np.diff(np.append(starts, n))
    group_values = g[order[starts]]
    group_weights = None
    if w is not None:
        w_sorted = w[order]
        group_weights = w_sorted[starts]
        if (w_sorted != np.repeat(group_weights, sizes)).any():
            raise ValueError(
                "weights must be constant within a group (one weight per group, repeated on "
                "its rows)"
            )
        del w_sorted
    y_sorted = y[order]
    del order
    pos = np.arange(n, dtype=np.int64)
    pos -= np.repeat(starts, sizes)
    undefined = np.add.reduceat(y_sorted > 0, starts, dtype=np.int64) == 0

    kmax = max(ks)
    ideal = idcg = None
    if ndcg:
        group_index = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)
        idcg = _ideal_dcg_by_counting(y_sorted, group_index, n_groups, ks, gain)
        if idcg is None:
            ideal = y_sorted[_sort_within(group_index, np.negative(y_sorted))]
        del group_index

    if sizes.max() > kmax:  # only the top kmax rows of each group matter from here on
        keep = pos < kmax
        y_sorted, pos = y_sorted[keep], pos[keep]
        if ideal is not None:
            ideal = ideal[keep]
        del keep
    kept = np.minimum(sizes, kmax)
    starts_kept = np.concatenate(([0], np.cumsum(kept[:-1])))
    relevant = y_sorted > 0

    first_relevant = np.minimum.reduceat(np.where(relevant, pos, kmax), starts_kept)
    relevant_cum = np.cumsum(relevant, dtype=np.int64)
    relevant_before = relevant_cum[starts_kept] - relevant[starts_kept]
    if ndcg:
        discount = 1.0 / np.log2(np.arange(kmax, dtype=np.float64) + 2.0)
        discount = discount[pos]
        gains = _gain(y_sorted, gain) * discount
        if ideal is not None:
            ideal_gains = _gain(ideal, gain) * discount
        del discount

    values: dict[str, np.ndarray] = {}
    for k in ks:
        if ndcg:
            dcg = _top_k_sums(gains, pos, starts_kept, k, kmax)
            if idcg is None:
                idcg_k = _top_k_sums(ideal_gains, pos, starts_kept, k, kmax)
            else:
                idcg_k = idcg[k]
            value = np.full(n_groups, np.nan)
            np.divide(dcg, idcg_k, out=value, where=idcg_k > 0)
            values[f"ndcg@{k}"] = value
        reciprocal = np.zeros(n_groups)
        hit = first_relevant < k
        reciprocal[hit] = 1.0 / (first_relevant[hit] + 1.0)
        reciprocal[undefined] = np.nan
        values[f"mrr@{k}"] = reciprocal
        top = np.minimum(sizes, k)
        precision = (relevant_cum[starts_kept + top - 1] - relevant_before) / top
        precision[undefined] = np.nan
        values[f"precision@{k}"] = precision
    return group_values, sizes.astype(np.int64), group_weights, {n_: values[n_] for n_ in names}


def _group_mean(values: np.ndarray, group_weights: np.ndarray | None) -> float:
    """(Weighted) mean over groups where ``values`` is defined; nan when none (or no weight)."""
    defined = ~np.isnan(values)
    if group_weights is None:
        return float(values[defined].mean()) if defined.any() else float("nan")
    w = group_weights[defined]
    total = w.sum()
    if not total > 0:
        return float("nan")
    return float(np.dot(w, values[defined]) / total)


def ndcg_at_k(groups, labels, scores, k: int, weights=None, gain: str = "exponential") -> float:
    """Mean over groups of NDCG@k = DCG@k / IDCG@k.

    DCG@k = sum over the top k rows (rank i = 0, 1, ...) of gain(label_i) / log2(i + 2), with
    gain 2**label - 1 (``"exponential"``, the usual choice for graded relevance and TF-Ranking's
    default; equal to linear for 0/1 labels) or label (``"linear"``, sklearn's ndcg_score).
    IDCG@k is DCG@k of the same group's labels sorted descending. Groups with IDCG = 0 (no
    relevant row) are left out of the mean; nan if no group is left. A group shorter than k
    counts all its rows.

    Tied scores rank lower labels first (the worst case; see the section notes above), so ties
    earn no credit, whereas sklearn averages over tie orders: the two agree when scores do not
    tie within a group.
    """
    _, _, gw, values = _ranking_core(groups, labels, scores, [k], weights, gain, ndcg=True)
    return _group_mean(values[f"ndcg@{k}"], gw)


def mrr_at_k(groups, labels, scores, k: int, weights=None) -> float:
    """Mean over groups of the reciprocal rank of the first relevant row (label > 0) in the top k.

    1 / (rank + 1) with ranks from 0, and 0 when no relevant row is ranked within the top k.
    Groups without any relevant row are left out; nan if no group is left. Tied scores rank
    lower labels first (worst case).
    """
    _, _, gw, values = _ranking_core(groups, labels, scores, [k], weights, "linear", ndcg=False)
    return _group_mean(values[f"mrr@{k}"], gw)


def precision_at_k(groups, labels, scores, k: int, weights=None) -> float:
    """Mean over groups of the fraction of relevant rows (label > 0) in the top min(k, size).

    Dividing by min(k, group size) rather than k keeps a perfect ranking of a short list at 1.
    Groups without any relevant row are left out, as for NDCG and MRR (their precision would be
    0 whatever the model does); nan if no group is left. Tied scores rank lower labels first.
    """
    _, _, gw, values = _ranking_core(groups, labels, scores, [k], weights, "linear", ndcg=False)
    return _group_mean(values[f"precision@{k}"], gw)


def per_group_ranking_metrics(
    groups, labels, scores, ks=(1, 5, 10), gain: str = "exponential"
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """NDCG@k, MRR@k and precision@k of every group at once, for every k in ``ks``.

    Returns ``(group_values, values, row_counts)`` like :func:`grouped_auc`: groups sorted by
    value, ``values`` keyed ``"ndcg@k"``, ``"mrr@k"``, ``"precision@k"`` with one float per
    group (nan where the group has no relevant row), and the number of rows of each group.
    """
    group_values, counts, _, values = _ranking_core(groups, labels, scores, ks, None, gain, True)
    return group_values, values, counts


def grouped_ranking_metrics(
    groups, labels, scores, ks=(1, 5, 10), weights=None, gain: str = "exponential"
) -> dict:
    """Mean NDCG@k, MRR@k and precision@k for every k in ``ks``, from one ranking sort.

    Keys ``"ndcg@k"``, ``"mrr@k"``, ``"precision@k"`` (floats, nan when undefined), in ``ks``
    order, plus ``"groups"`` (number of groups) and ``"groups_with_relevant"`` (those averaged
    over). Each mean equals what :func:`ndcg_at_k`, :func:`mrr_at_k` and :func:`precision_at_k`
    return for that k.
    """
    _, counts, gw, values = _ranking_core(groups, labels, scores, ks, weights, gain, ndcg=True)
    out: dict = {name: _group_mean(v, gw) for name, v in values.items()}
    out["groups"] = int(counts.shape[0])
    out["groups_with_relevant"] = int((~np.isnan(values[f"mrr@{_check_ks(ks)[0]}"])).sum())
    return out
