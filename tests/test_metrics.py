"""Metrics must agree with scikit-learn (the reference definitions) to round-off.

Ranking metrics (NDCG/MRR/precision@k over groups) are checked against hand-computed values, a
slow pure-Python reference on random data, and sklearn's ndcg_score where it is comparable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import average_precision_score, log_loss, ndcg_score, roc_auc_score

import gdmix.metrics as metrics_module
from oracles import SCORED_CASES, scored_labels

from gdmix.metrics import (
    auc,
    average_precision,
    binary_metrics,
    grouped_auc,
    grouped_ranking_metrics,
    logloss,
    mrr_at_k,
    ndcg_at_k,
    per_entity_auc_summary,
    per_group_ranking_metrics,
    precision_at_k,
)


_data, CASES = scored_labels, SCORED_CASES


@pytest.mark.parametrize("case", CASES)
def test_auc_matches_sklearn(case):
    labels, scores, weights = _data(*case)
    expected = roc_auc_score(labels, scores, sample_weight=weights)
    assert auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_average_precision_matches_sklearn(case):
    labels, scores, weights = _data(*case)
    expected = average_precision_score(labels, scores, sample_weight=weights)
    assert average_precision(labels, scores, weights) == pytest.approx(expected, abs=1e-12)


def test_int_labels_and_column_shapes_accepted():
    labels, scores, weights = _data(11, 300, 4, True)
    expected = roc_auc_score(labels, scores, sample_weight=weights)
    got = auc(labels.astype(np.int64), scores.reshape(-1, 1), list(weights))
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        # GDMix evaluator fixtures.
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([0.5, 0.7, 0.3, 0.4, 0.45, 0.8], [0, 0, 1, 1, 0, 1], 0.3333333),
        ([0.5, 0.75, 0.8, 0.2, 0.3, 0.4, 0.45, 0.5], [0, 0, 0, 0, 1, 1, 0, 1], 0.3),
    ],
)
def test_gdmix_evaluator_fixtures(scores, labels, expected):
    assert auc(labels, scores) == pytest.approx(expected, abs=1e-6)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_tie_is_half():
    # One positive and one negative with the same score: coin flip.
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 1], [0.2, 0.5]) == 1.0
    assert auc([1, 0], [0.2, 0.5]) == 0.0


def test_single_class_and_empty_give_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    # Both classes present but all negative rows weigh zero.
    assert math.isnan(auc([0, 1, 1], [0.1, 0.2, 0.3], [0.0, 1.0, 2.0]))
    assert math.isnan(average_precision([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(average_precision([0, 1], [0.1, 0.2], [1.0, 0.0]))
    assert math.isnan(auc([], []))
    assert math.isnan(average_precision([], []))
    assert math.isnan(logloss([], []))
    # Single class is fine for log loss.
    assert logloss([1, 1], [0.0, 0.0]) == pytest.approx(math.log(2.0), abs=1e-15)


def test_zero_weight_rows_do_not_matter():
    labels, scores, weights = _data(12, 400, 6, True, 0.4)
    keep = weights > 0
    for fn in (auc, average_precision, logloss):
        assert fn(labels, scores, weights) == pytest.approx(
            fn(labels[keep], scores[keep], weights[keep]), abs=1e-12
        )


def test_validation_errors():
    with pytest.raises(ValueError, match="same length"):
        auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        logloss([0, 1], [0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="same length"):
        grouped_auc([1, 2], [0, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="non-negative"):
        auc([0, 1], [0.1, 0.2], [1.0, -1.0])


@pytest.mark.parametrize("weighted", [False, True])
def test_logloss_matches_sklearn(weighted):
    rng = np.random.default_rng(21)
    n = 2000
    logits = rng.uniform(-20.0, 20.0, size=n)
    labels = (rng.random(n) < expit(logits)).astype(np.float64)
    weights = rng.uniform(0.0, 2.0, size=n) if weighted else None
    expected = log_loss(labels, expit(logits), sample_weight=weights, labels=[0, 1])
    assert logloss(labels, logits, weights) == pytest.approx(expected, abs=1e-10)


def test_logloss_stable_at_extreme_logits():
    z = np.array([800.0, -800.0, 800.0, -800.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    # Correct predictions cost ~0, confident mistakes cost |z|.
    per_row = [0.0, 0.0, 800.0, 800.0]
    assert logloss(y, z) == pytest.approx(np.mean(per_row), rel=1e-15)
    assert logloss(y[:2], z[:2]) == 0.0
    assert logloss(y[2:], z[2:]) == 800.0
    got = logloss(y, z, [1.0, 1.0, 1.0, 3.0])
    assert math.isfinite(got)
    assert got == pytest.approx(4 * 800.0 / 6.0, rel=1e-15)


def test_binary_metrics():
    rng = np.random.default_rng(31)
    logits = rng.normal(size=500) * 2
    labels = (rng.random(500) < expit(logits)).astype(np.int64)
    weights = rng.uniform(0.5, 1.5, size=500)
    m = binary_metrics(labels, logits, weights)
    assert set(m) == {"auc", "logloss", "aupr"}
    assert all(type(v) is float for v in m.values())
    assert m["auc"] == pytest.approx(roc_auc_score(labels, logits, sample_weight=weights), abs=1e-12)
    assert m["aupr"] == pytest.approx(
        average_precision_score(labels, logits, sample_weight=weights), abs=1e-12
    )
    assert m["logloss"] == pytest.approx(
        log_loss(labels, expit(logits), sample_weight=weights), abs=1e-10
    )


def _grouped_data(seed: int, n_groups: int, weighted: bool):
    """~200 groups of random sizes (1..60) with sparse, non-contiguous, negative group codes."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(np.arange(-5000, 5000), size=n_groups, replace=False)
    sizes = rng.integers(1, 60, size=n_groups)
    groups = np.repeat(codes, sizes)
    n = groups.shape[0]
    perm = rng.permutation(n)  # rows of a group are not contiguous in the input
    groups = groups[perm]
    labels = (rng.random(n) < 0.4).astype(np.float64)
    scores = np.round(rng.normal(size=n) + 0.7 * labels, 1)  # many ties within groups
    weights = None
    if weighted:
        weights = rng.uniform(0.1, 2.0, size=n)
        weights[rng.random(n) < 0.15] = 0.0
    return groups, labels, scores, weights


def _reference_grouped(groups, labels, scores, weights):
    values = np.unique(groups)
    aucs, counts = [], []
    for v in values:
        m = groups == v
        y = labels[m]
        w = None if weights is None else weights[m]
        wy = np.ones(m.sum()) if w is None else w
        if wy[y == 1].sum() > 0 and wy[y == 0].sum() > 0:
            aucs.append(roc_auc_score(y, scores[m], sample_weight=w))
        else:
            aucs.append(np.nan)
        counts.append(m.sum())
    return values, np.array(aucs), np.array(counts)


@pytest.mark.parametrize("weighted", [False, True])
def test_grouped_auc_matches_per_group_loop(weighted):
    groups, labels, scores, weights = _grouped_data(41 + weighted, 200, weighted)
    values, aucs, counts = grouped_auc(groups, labels, scores, weights)
    ref_values, ref_aucs, ref_counts = _reference_grouped(groups, labels, scores, weights)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(counts, ref_counts)
    assert np.array_equal(np.isnan(aucs), np.isnan(ref_aucs))
    assert np.isnan(ref_aucs).any() and (~np.isnan(ref_aucs)).sum() > 100  # both paths exercised
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    # Each group's AUC also equals the global function on that group's rows.
    for v in values[:10]:
        m = groups == v
        expected = auc(labels[m], scores[m], None if weights is None else weights[m])
        got = aucs[np.searchsorted(values, v)]
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


def test_grouped_auc_single_group_equals_auc_and_empty():
    labels, scores, weights = _data(51, 600, 7, True, 0.2)
    values, aucs, counts = grouped_auc(np.full(600, 7), labels, scores, weights)
    assert values.tolist() == [7] and counts.tolist() == [600]
    assert aucs[0] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)
    values, aucs, counts = grouped_auc([], [], [])
    assert values.size == aucs.size == counts.size == 0


def test_per_entity_auc_summary():
    groups, labels, scores, weights = _grouped_data(61, 200, True)
    _, ref_aucs, ref_counts = _reference_grouped(groups, labels, scores, weights)
    ok = ~np.isnan(ref_aucs)
    s = per_entity_auc_summary(groups, labels, scores, weights)
    assert s["entities"] == 200
    assert s["entities_with_auc"] == int(ok.sum())
    a, c = ref_aucs[ok], ref_counts[ok]
    assert s["mean"] == pytest.approx(a.mean(), abs=1e-12)
    assert s["row_weighted_mean"] == pytest.approx((a * c).sum() / c.sum(), abs=1e-12)
    assert s["median"] == pytest.approx(np.median(a), abs=1e-12)
    assert s["p10"] == pytest.approx(np.quantile(a, 0.1), abs=1e-12)
    assert s["p90"] == pytest.approx(np.quantile(a, 0.9), abs=1e-12)


def test_per_entity_auc_summary_no_defined_group():
    s = per_entity_auc_summary([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])
    assert s["entities"] == 2
    assert s["entities_with_auc"] == 0
    for key in ("mean", "row_weighted_mean", "median", "p10", "p90"):
        assert s[key] is None


@pytest.mark.parametrize(
    "make_groups",
    [
        lambda c: (c % 250 - 125).astype(np.int8),  # span exceeds int8 range; groups merge
        lambda c: (c.astype(np.uint64) + np.uint64(2**63 + 12345)),  # huge unsigned codes
        lambda c: c.astype(np.int64) * 10**15,  # span * n overflows int64: lexsort path
        lambda c: np.char.add("user", c.astype(str)),  # non-integer codes: lexsort path
    ],
    ids=["int8", "uint64-huge", "int64-wide", "str"],
)
def test_grouped_auc_group_dtypes(make_groups):
    codes, labels, scores, weights = _grouped_data(71, 120, True)
    codes = codes + 5000  # non-negative base codes, distinct
    groups = make_groups(codes)
    values, aucs, counts = grouped_auc(groups, labels, scores, weights)
    ref_values, ref_aucs, ref_counts = _reference_grouped(groups, labels, scores, weights)
    assert values.dtype == groups.dtype
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)


def test_grouped_auc_bool_groups_and_distinct_scores():
    rng = np.random.default_rng(81)
    n = 500
    groups = rng.random(n) < 0.5
    labels = (rng.random(n) < 0.5).astype(np.float64)
    scores = rng.normal(size=n) + labels  # all distinct: no tie blocks at all
    values, aucs, counts = grouped_auc(groups, labels, scores)
    assert values.tolist() == [False, True]
    for v, a, c in zip(values, aucs, counts):
        m = groups == v
        assert c == m.sum()
        assert a == pytest.approx(roc_auc_score(labels[m], scores[m]), abs=1e-12)


# ----------------------------------------------------------------------------- ranking metrics

LOG2_3 = math.log2(3)  # rank 1 discount is 1/log2(3); rank 0 is 1/log2(2) = 1

# Three groups, rows interleaved in the input.
# "a": scores 0.9, 0.7, 0.3 -> labels in rank order 1, 0, 2
# "b": scores 0.8, 0.6, 0.5, 0.2 -> labels in rank order 0, 0, 1, 3
# "c": labels 0, 0 -> no relevant row: excluded from every mean
HAND_GROUPS = ["a", "b", "c", "a", "b", "b", "c", "a", "b"]
HAND_LABELS = [1, 3, 0, 0, 0, 1, 0, 2, 0]
HAND_SCORES = [0.9, 0.2, 0.4, 0.7, 0.8, 0.5, 0.1, 0.3, 0.6]
# Exponential gains 2**l - 1: label 1 -> 1, 2 -> 3, 3 -> 7.
A_NDCG2 = (1 / 1 + 0 / LOG2_3) / (3 / 1 + 1 / LOG2_3)  # DCG / IDCG, ideal labels 2, 1
B_NDCG2 = (0 / 1 + 0 / LOG2_3) / (7 / 1 + 1 / LOG2_3)  # = 0
A_NDCG2_LINEAR = (1 / 1 + 0 / LOG2_3) / (2 / 1 + 1 / LOG2_3)
B_NDCG4 = (0 + 0 + 1 / math.log2(4) + 7 / math.log2(5)) / (7 + 1 / LOG2_3 + 0 + 0)
A_NDCG4 = (1 + 0 + 3 / math.log2(4)) / (3 + 1 / LOG2_3 + 0)


def test_ranking_hand_computed():
    g, y, s = HAND_GROUPS, HAND_LABELS, HAND_SCORES
    assert ndcg_at_k(g, y, s, 2) == pytest.approx((A_NDCG2 + B_NDCG2) / 2, abs=1e-15)
    assert A_NDCG2 == pytest.approx(0.2754116, abs=1e-7)  # 1 / 3.6309298
    assert ndcg_at_k(g, y, s, 2, gain="linear") == pytest.approx(A_NDCG2_LINEAR / 2, abs=1e-15)
    assert ndcg_at_k(g, y, s, 4) == pytest.approx((A_NDCG4 + B_NDCG4) / 2, abs=1e-15)
    # MRR@2: "a" has its relevant row at rank 0 (1/1), "b" only at rank 2 (outside: 0).
    assert mrr_at_k(g, y, s, 2) == pytest.approx((1.0 + 0.0) / 2, abs=1e-15)
    assert mrr_at_k(g, y, s, 3) == pytest.approx((1.0 + 1 / 3) / 2, abs=1e-15)
    # precision@2: "a" 1 of 2, "b" 0 of 2; @4: "a" 2 of its 3 rows, "b" 2 of 4.
    assert precision_at_k(g, y, s, 2) == pytest.approx((1 / 2 + 0 / 2) / 2, abs=1e-15)
    assert precision_at_k(g, y, s, 4) == pytest.approx((2 / 3 + 2 / 4) / 2, abs=1e-15)
    # Weighted over groups: a=3, b=1, c=5 (c has no relevant row, so its weight is unused).
    w = [{"a": 3.0, "b": 1.0, "c": 5.0}[x] for x in g]
    assert ndcg_at_k(g, y, s, 2, weights=w) == pytest.approx((3 * A_NDCG2 + 1 * B_NDCG2) / 4)
    assert mrr_at_k(g, y, s, 3, weights=w) == pytest.approx((3 * 1.0 + 1 * (1 / 3)) / 4)
    assert precision_at_k(g, y, s, 4, weights=w) == pytest.approx((3 * 2 / 3 + 1 * 2 / 4) / 4)

    values, per_group, counts = per_group_ranking_metrics(g, y, s, ks=(2, 4))
    assert values.tolist() == ["a", "b", "c"] and counts.tolist() == [3, 4, 2]
    assert list(per_group) == [
        "ndcg@2", "mrr@2", "precision@2", "ndcg@4", "mrr@4", "precision@4"
    ]
    np.testing.assert_allclose(per_group["ndcg@2"][:2], [A_NDCG2, B_NDCG2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(per_group["ndcg@4"][:2], [A_NDCG4, B_NDCG4], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(per_group["mrr@4"][:2], [1.0, 1 / 3])
    np.testing.assert_array_equal(per_group["precision@2"][:2], [0.5, 0.0])
    assert all(math.isnan(v[2]) for v in per_group.values())


def test_ranking_ties_rank_lower_labels_first():
    # A constant scorer gets the worst order: labels 0, 1, 2 in rank order.
    worst = (0 / 1 + 1 / LOG2_3 + 3 / 2) / (3 / 1 + 1 / LOG2_3 + 0 / 2)
    for labels in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        assert ndcg_at_k([7, 7, 7], labels, [0.5, 0.5, 0.5], 3) == pytest.approx(worst, abs=1e-15)
        assert mrr_at_k([7, 7, 7], labels, [0.5] * 3, 3) == pytest.approx(1 / 2, abs=1e-15)
        assert precision_at_k([7, 7, 7], labels, [0.5] * 3, 1) == 0.0
    # A tie straddling the cutoff: rank order 0 | (tie of labels 2 and 0 -> 0, 2) | 1.
    g, y, s = [1, 1, 1, 1], [0, 2, 0, 1], [0.9, 0.5, 0.5, 0.1]
    assert ndcg_at_k(g, y, s, 2) == 0.0
    assert mrr_at_k(g, y, s, 2) == 0.0
    assert mrr_at_k(g, y, s, 3) == pytest.approx(1 / 3, abs=1e-15)
    assert precision_at_k(g, y, s, 3) == pytest.approx(1 / 3, abs=1e-15)
    expected = (3 / math.log2(4) + 1 / math.log2(5)) / (3 + 1 / LOG2_3)
    assert ndcg_at_k(g, y, s, 4) == pytest.approx(expected, abs=1e-15)
    # Equal scores in different groups are not ties: each group keeps its own order.
    assert ndcg_at_k([1, 1, 2, 2], [1, 0, 0, 1], [0.5, 0.2, 0.5, 0.7], 1) == 1.0


def test_ranking_undefined_and_empty():
    assert math.isnan(ndcg_at_k([1, 1, 2], [0, 0, 0], [0.1, 0.2, 0.3], 2))
    assert math.isnan(mrr_at_k([1, 1], [0, 0], [0.1, 0.2], 2))
    assert math.isnan(precision_at_k([1, 1], [0, 0], [0.1, 0.2], 2))
    # All relevant groups have weight 0.
    assert math.isnan(ndcg_at_k([1, 1, 2], [1, 0, 0], [0.1, 0.2, 0.3], 2, weights=[0, 0, 1]))
    m = grouped_ranking_metrics([], [], [], ks=(1, 3))
    assert m["groups"] == 0 and m["groups_with_relevant"] == 0
    names = ("ndcg", "mrr", "precision")
    assert all(math.isnan(m[f"{name}@{k}"]) for name in names for k in (1, 3))
    values, per_group, counts = per_group_ranking_metrics([], [], [], ks=(2,))
    assert values.size == counts.size == 0 and all(v.size == 0 for v in per_group.values())
    # A single-row group with a relevant row is perfectly ranked.
    assert grouped_ranking_metrics([5], [2], [0.0], ks=(1, 10))["ndcg@10"] == 1.0


def test_ranking_validation_errors():
    g, y, s = [1, 1, 2], [0, 1, 1], [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="same length"):
        ndcg_at_k([1, 1], y, s, 2)
    with pytest.raises(ValueError, match="same length"):
        mrr_at_k(g, y, s, 2, weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k(g, [0, -1, 1], s, 2)
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k(g, [0, np.nan, 1], s, 2)
    with pytest.raises(ValueError, match="NaN"):
        precision_at_k(g, y, [0.1, np.nan, 0.3], 2)
    with pytest.raises(ValueError, match="constant within a group"):
        ndcg_at_k(g, y, s, 2, weights=[1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        ndcg_at_k(g, y, s, 2, weights=[1.0, 1.0, -1.0])
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            ndcg_at_k(g, y, s, bad)
    with pytest.raises(ValueError, match="gain"):
        ndcg_at_k(g, y, s, 2, gain="log")
    with pytest.raises(ValueError, match="at least one"):
        grouped_ranking_metrics(g, y, s, ks=())


def _ranking_data(seed: int, n_groups: int, label_kind: str, tie_digits: int | None):
    """Groups of 1..30 rows, non-contiguous in the input, with graded labels and optional ties."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(np.arange(-10_000, 10_000), size=n_groups, replace=False)
    sizes = rng.integers(1, 31, size=n_groups)
    groups = np.repeat(codes, sizes)
    n = groups.shape[0]
    groups = groups[rng.permutation(n)]
    if label_kind == "binary":
        labels = (rng.random(n) < 0.2).astype(np.float64)
    elif label_kind == "graded":
        labels = rng.choice([0, 0, 0, 1, 2, 3, 4], size=n).astype(np.float64)
    else:  # fractional grades: IDCG goes through the sort, not the label counts
        labels = rng.choice([0.0, 0.0, 0.5, 1.0, 2.5], size=n)
    scores = rng.normal(size=n) + 0.4 * labels
    if tie_digits is not None:
        scores = np.round(scores, tie_digits)
    group_weight = dict(zip(codes.tolist(), rng.uniform(0.0, 3.0, size=n_groups).tolist()))
    weights = np.array([group_weight[g] for g in groups.tolist()])  # one weight per group
    return groups, labels, scores, weights


def _reference_ranking(groups, labels, scores, k: int, gain: str):
    """Slow per-group loop in plain Python: {group: (ndcg, mrr, precision)} or None if undefined."""
    by_group: dict = {}
    for g, y, s in zip(groups.tolist(), labels.tolist(), scores.tolist()):
        by_group.setdefault(g, []).append((y, s))
    out = {}
    for g, rows in by_group.items():
        ranked = [y for y, _ in sorted(rows, key=lambda r: (-r[1], r[0]))]  # worst case on ties
        ideal = sorted((y for y, _ in rows), reverse=True)
        if not any(y > 0 for y in ranked):
            out[g] = None
            continue

        def gain_of(y):
            return 2.0**y - 1.0 if gain == "exponential" else y

        dcg = sum(gain_of(y) / math.log2(i + 2) for i, y in enumerate(ranked[:k]))
        idcg = sum(gain_of(y) / math.log2(i + 2) for i, y in enumerate(ideal[:k]))
        first = next((i for i, y in enumerate(ranked[:k]) if y > 0), None)
        rr = 0.0 if first is None else 1.0 / (first + 1)
        top = ranked[:k]
        out[g] = (dcg / idcg, rr, sum(y > 0 for y in top) / len(top))
    return out


def _weighted_mean(pairs):
    pairs = list(pairs)
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total


RANKING_CASES = [
    # (seed, groups, labels, rounding of scores (None: no ties), gain)
    (101, 300, "graded", 1, "exponential"),
    (102, 300, "graded", None, "linear"),
    (103, 300, "binary", 0, "exponential"),
    (104, 200, "fractional", 1, "exponential"),
    (105, 200, "fractional", None, "linear"),
]


@pytest.mark.parametrize("case", RANKING_CASES)
def test_ranking_matches_slow_reference(case):
    seed, n_groups, label_kind, digits, gain = case
    groups, labels, scores, weights = _ranking_data(seed, n_groups, label_kind, digits)
    ks = (1, 3, 10, 50)  # 50 is larger than every group
    values, per_group, counts = per_group_ranking_metrics(groups, labels, scores, ks, gain=gain)
    means = grouped_ranking_metrics(groups, labels, scores, ks, gain=gain)
    weighted = grouped_ranking_metrics(groups, labels, scores, ks, weights=weights, gain=gain)
    np.testing.assert_array_equal(values, np.unique(groups))
    np.testing.assert_array_equal(counts, [np.sum(groups == v) for v in values])
    for k in ks:
        ref = _reference_ranking(groups, labels, scores, k, gain)
        defined = [v for v in values.tolist() if ref[v] is not None]
        assert 0 < len(defined) < len(values)  # both kinds of group exercised
        assert means["groups_with_relevant"] == len(defined)
        for j, name in enumerate(("ndcg", "mrr", "precision")):
            expected = np.array([np.nan if ref[v] is None else ref[v][j] for v in values.tolist()])
            np.testing.assert_allclose(per_group[f"{name}@{k}"], expected, rtol=0, atol=1e-12)
            assert means[f"{name}@{k}"] == pytest.approx(
                np.mean([ref[v][j] for v in defined]), abs=1e-12
            )
            group_weight = {g: w for g, w in zip(groups.tolist(), weights.tolist())}
            assert weighted[f"{name}@{k}"] == pytest.approx(
                _weighted_mean((group_weight[v], ref[v][j]) for v in defined), abs=1e-12
            )
        # The single-metric functions give the same means (to round-off: fewer rows are kept).
        single = {
            "ndcg": ndcg_at_k(groups, labels, scores, k, gain=gain),
            "mrr": mrr_at_k(groups, labels, scores, k, weights),
            "precision": precision_at_k(groups, labels, scores, k),
        }
        assert single["ndcg"] == pytest.approx(means[f"ndcg@{k}"], abs=1e-14)
        assert single["mrr"] == pytest.approx(weighted[f"mrr@{k}"], abs=1e-14)
        assert single["precision"] == pytest.approx(means[f"precision@{k}"], abs=1e-14)
    if digits is not None:  # ties within groups really occurred
        assert len(set(zip(groups.tolist(), scores.tolist()))) < len(groups)


def test_ideal_dcg_sort_and_count_paths_agree(monkeypatch):
    groups, labels, scores, _ = _ranking_data(111, 300, "graded", 1)
    counted = grouped_ranking_metrics(groups, labels, scores, ks=(1, 4, 40))
    calls = []
    original = metrics_module._ideal_dcg_by_counting

    def no_counting(*args):
        calls.append(original(*args))  # the count path was eligible here
        return None

    monkeypatch.setattr(metrics_module, "_ideal_dcg_by_counting", no_counting)
    sorted_ = grouped_ranking_metrics(groups, labels, scores, ks=(1, 4, 40))
    assert calls and calls[0] is not None
    assert counted.keys() == sorted_.keys()
    for key in counted:
        assert counted[key] == pytest.approx(sorted_[key], abs=1e-13)


def test_ndcg_large_integer_labels_use_the_sort():
    # Label range too wide for the (group, label) count table: the sort path must take over.
    rng = np.random.default_rng(121)
    groups = np.repeat(np.arange(80), 12)
    labels = rng.integers(0, 30_000, size=groups.shape[0]).astype(np.float64)
    labels[rng.random(groups.shape[0]) < 0.5] = 0.0
    scores = rng.normal(size=groups.shape[0])
    got = per_group_ranking_metrics(groups, labels, scores, ks=(5,), gain="linear")[1]["ndcg@5"]
    ref = _reference_ranking(groups, labels, scores, 5, "linear")
    np.testing.assert_allclose(got, [ref[g][0] for g in range(80)], rtol=0, atol=1e-12)


@pytest.mark.parametrize("gain", ["linear", "exponential"])
def test_ndcg_matches_sklearn_without_ties(gain):
    # sklearn's gain is the label itself; exponential gain = sklearn on 2**label - 1.
    groups, labels, scores, _ = _ranking_data(131, 150, "graded", None)
    values, per_group, counts = per_group_ranking_metrics(groups, labels, scores, (1, 5, 100), gain)
    checked = 0
    for i, v in enumerate(values.tolist()):
        m = groups == v
        y = labels[m] if gain == "linear" else 2.0 ** labels[m] - 1.0
        if counts[i] < 2 or not (y > 0).any():  # sklearn needs 2+ rows; it scores "none" as 0
            continue
        for k in (1, 5, 100):
            expected = ndcg_score([y], [scores[m]], k=k)
            assert per_group[f"ndcg@{k}"][i] == pytest.approx(expected, abs=1e-12)
        checked += 1
    assert checked > 100


def test_ndcg_is_worst_case_where_sklearn_averages_ties():
    y, s = [0, 1, 2, 0], [0.3, 0.3, 0.3, 0.1]
    ours = ndcg_at_k([1] * 4, y, s, 3, gain="linear")
    assert ours == pytest.approx((0 + 1 / LOG2_3 + 2 / 2) / (2 + 1 / LOG2_3), abs=1e-15)
    assert ours < ndcg_score([y], [s], k=3)  # sklearn: expected value over tie orders
    worst = ndcg_score([y], [[0.3, 0.2, 0.1, 0.0]], k=3)  # the worst order, tie-free
    assert ours == pytest.approx(worst, abs=1e-12)


@pytest.mark.parametrize(
    "make_groups",
    [
        lambda c: c.astype(np.int64) * 10**15,  # span * n overflows int64: lexsort path
        lambda c: np.char.add("query", c.astype(str)),  # string groups
        lambda c: (c.astype(np.uint64) + np.uint64(2**63 + 12345)),  # huge unsigned codes
    ],
    ids=["int64-wide", "str", "uint64-huge"],
)
def test_ranking_group_dtypes(make_groups):
    codes, labels, scores, weights = _ranking_data(141, 120, "graded", 1)
    base = grouped_ranking_metrics(codes, labels, scores, ks=(2, 7), weights=weights)
    groups = make_groups(codes + 10_000)
    got = grouped_ranking_metrics(groups, labels, scores, ks=(2, 7), weights=weights)
    assert got.keys() == base.keys()
    for key in base:
        assert got[key] == pytest.approx(base[key], abs=1e-13)
    values = per_group_ranking_metrics(groups, labels, scores, ks=(2,))[0]
    assert values.dtype == groups.dtype and len(values) == 120
