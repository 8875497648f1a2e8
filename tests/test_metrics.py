"""Metrics must agree with scikit-learn (the reference definitions) to round-off."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from gdmix.metrics import (
    auc,
    average_precision,
    binary_metrics,
    grouped_auc,
    logloss,
    per_entity_auc_summary,
)


def _data(seed: int, n: int, distinct: int | None, weighted: bool, zero_frac: float = 0.0):
    """Random labels correlated with scores; ``distinct`` rounds scores to force heavy ties."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.float64)
    scores = rng.normal(size=n) + labels
    if distinct is not None:
        scores = np.round(scores * distinct / 6.0) / distinct  # few distinct values
    weights = None
    if weighted:
        weights = rng.uniform(0.1, 3.0, size=n)
        weights[rng.random(n) < zero_frac] = 0.0
    return labels, scores, weights


CASES = [
    # (seed, n, distinct scores, weighted, fraction of zero weights)
    (0, 500, None, False, 0.0),
    (1, 1000, 3, False, 0.0),
    (2, 1000, 1, False, 0.0),
    (3, 800, None, True, 0.0),
    (4, 800, 5, True, 0.0),
    (5, 800, 2, True, 0.3),
    (6, 50, 1, True, 0.5),
    (7, 3000, 20, True, 0.1),
]


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
