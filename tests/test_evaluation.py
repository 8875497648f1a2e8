"""Evaluation report: ROC and calibration against references, HTML well-formed and escaped."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve

from oracles import SCORED_CASES, scored_labels

from gdmix import metrics
from gdmix.evaluation import (
    EvaluationReport,
    calibration_bins,
    evaluate,
    render_html,
    roc_curve,
    roc_curve_points,
)


_data, CASES = scored_labels, SCORED_CASES


# ROC


@pytest.mark.parametrize("case", CASES)
def test_roc_curve_matches_sklearn(case):
    labels, logits, weights = _data(*case)
    fpr, tpr, thr = roc_curve_points(labels, logits, weights, max_points=None)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, logits, sample_weight=weights)
    assert len(fpr) == len(sk_fpr)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert math.isinf(sk_thr[0]) and thr[0] == float(np.max(logits)) + 1.0
    assert all(type(v) is float for v in fpr + tpr + thr)
    assert all(math.isfinite(v) for v in thr)

    # Every point, intermediate ones included, also matches.
    full = roc_curve(labels, logits, weights, drop_intermediate=False)
    sk_full = sk_roc_curve(labels, logits, sample_weight=weights, drop_intermediate=False)
    np.testing.assert_allclose(full[0], sk_full[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(full[1], sk_full[1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(full[2][1:], sk_full[2][1:])


@pytest.mark.parametrize("case", CASES)
def test_trapezoid_area_of_roc_equals_auc(case):
    labels, logits, weights = _data(*case)
    fpr, tpr, _ = roc_curve_points(labels, logits, weights, max_points=None)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auc(labels, logits, weights), abs=1e-12)


@pytest.mark.parametrize("max_points", [2, 3, 10, 50, 200])
@pytest.mark.parametrize("weighted", [False, True])
def test_thinned_roc_is_subsequence_with_endpoints(max_points, weighted):
    labels, logits, weights = _data(11, 20000, None, weighted, zero_frac=0.1)
    full = roc_curve_points(labels, logits, weights, max_points=None)
    thin = roc_curve_points(labels, logits, weights, max_points=max_points)
    assert len(full[0]) > 1000
    n = len(thin[0])
    assert 2 <= n <= max_points
    assert all(len(c) == n for c in thin)
    # A subsequence: the thresholds identify the points (distinct, strictly decreasing).
    index = {t: i for i, t in enumerate(full[2])}
    positions = [index[t] for t in thin[2]]
    assert positions == sorted(set(positions))
    assert positions[0] == 0 and positions[-1] == len(full[0]) - 1
    for j, i in enumerate(positions):
        assert (thin[0][j], thin[1][j]) == (full[0][i], full[1][i])
    assert (thin[0][0], thin[1][0]) == (0.0, 0.0)
    assert (thin[0][-1], thin[1][-1]) == (1.0, 1.0)
    if max_points >= 50:  # uses its budget and keeps the shape
        assert n >= 0.8 * max_points
        assert np.trapezoid(thin[1], thin[0]) == pytest.approx(np.trapezoid(full[1], full[0]), abs=2e-3)


def test_thinning_keeps_corners_of_a_stepped_curve():
    # Ties make a curve of few long segments; all its corners survive thinning.
    labels, logits, weights = _data(12, 5000, 2, True)
    full = roc_curve_points(labels, logits, weights, max_points=None)
    assert len(full[0]) < 30
    assert roc_curve_points(labels, logits, weights, max_points=30) == full


def test_roc_thresholds_finite_for_huge_logits():
    fpr, tpr, thr = roc_curve_points([0, 1, 0, 1], [1e300, 2e300, -1e300, 3e300])
    assert thr[0] > thr[1] == 3e300 and math.isfinite(thr[0])


def test_roc_undefined_and_invalid():
    with pytest.raises(ValueError, match="no positive"):
        roc_curve_points([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no negative"):
        roc_curve_points([1, 1, 0], [0.1, 0.2, 0.3], [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="empty"):
        roc_curve_points([], [])
    with pytest.raises(ValueError, match="max_points"):
        roc_curve_points([0, 1], [0.0, 1.0], max_points=1)


# Calibration


def _expit(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_calibration_bins_by_hand():
    logits = [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    labels = [0, 0, 1, 0, 1, 1]
    bins = calibration_bins(labels, logits, bins=3)
    assert len(bins) == 3
    for b, (zs, ys) in zip(bins, [([-2, -1], [0, 0]), ([0, 1], [1, 0]), ([2, 3], [1, 1])]):
        p = [_expit(z) for z in zs]
        assert b["mean_predicted"] == pytest.approx(sum(p) / 2, abs=1e-15)
        assert b["observed_rate"] == pytest.approx(sum(ys) / 2, abs=1e-15)
        assert b["weight"] == 2.0 and b["rows"] == 2
        assert b["p_min"] == pytest.approx(p[0]) and b["p_max"] == pytest.approx(p[1])


def test_calibration_bins_weighted_with_ties_and_zero_weights():
    # Unsorted input; weights 1, 1, 2, 0, 4 (total 8): quantile edges at cumulative weight 4.
    logits = np.array([1.0, -1.0, 0.0, 5.0, 1.0])
    labels = np.array([1, 0, 1, 0, 0])
    weights = np.array([1.0, 1.0, 2.0, 0.0, 4.0])
    bins = calibration_bins(labels, logits, weights, bins=2)
    # Sorted: -1 (w1, y0), 0 (w2, y1), 1 (w1, y1), 1 (w4, y0), 5 (w0, y0). Cumulative weight
    # reaches 4 at the first logit 1, so the edge is 1 and both tied rows go to bin 0; bin 1
    # holds only the zero-weight row and is dropped.
    assert len(bins) == 1
    (b,) = bins
    assert b["weight"] == 8.0 and b["rows"] == 4
    expected_pred = (_expit(-1) + 2 * _expit(0) + 5 * _expit(1)) / 8
    assert b["mean_predicted"] == pytest.approx(expected_pred, abs=1e-15)
    assert b["observed_rate"] == pytest.approx(3 / 8)

    # With three bins: edges at cumulative weights 8/3 and 16/3 -> logits 0 and 1.
    bins = calibration_bins(labels, logits, weights, bins=3)
    assert [b["weight"] for b in bins] == [3.0, 5.0]
    assert [b["rows"] for b in bins] == [2, 2]
    assert bins[0]["observed_rate"] == pytest.approx(2 / 3)
    assert bins[1]["observed_rate"] == pytest.approx(1 / 5)


def test_calibration_bins_roughly_equal_weight():
    labels, logits, weights = _data(21, 10000, None, True)
    bins = calibration_bins(labels, logits, weights, bins=10)
    assert len(bins) == 10
    total = weights.sum()
    for b in bins:
        assert b["weight"] == pytest.approx(total / 10, rel=0.01)
    assert sum(b["rows"] for b in bins) == 10000
    means = [b["mean_predicted"] for b in bins]
    assert means == sorted(means)
    assert sum(b["weight"] * b["observed_rate"] for b in bins) == pytest.approx(np.dot(weights, labels))


def test_calibration_bins_invalid():
    with pytest.raises(ValueError, match="bins"):
        calibration_bins([0, 1], [0.0, 1.0], bins=0)
    with pytest.raises(ValueError, match="empty"):
        calibration_bins([], [])


# evaluate


def _entity_data(seed: int = 3, n: int = 4000):
    rng = np.random.default_rng(seed)
    member = rng.integers(0, 200, n)
    item = rng.integers(0, 40, n)
    logits = rng.normal(size=n) - 1.0
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    weights = rng.uniform(0.5, 2.0, n)
    weights[rng.random(n) < 0.1] = 0.0
    return labels, logits, weights, {"memberId": member, "itemId": item}


COORDINATES = [
    {"pass": 1, "coordinate": "global", "split": "validation", "auc": 0.70, "logloss": 0.52},
    {"pass": 1, "coordinate": "per-member", "split": "validation", "auc": 0.74, "logloss": 0.50},
    {"pass": 2, "coordinate": "global", "split": "validation", "auc": 0.73, "logloss": 0.51},
]


def test_evaluate_collects_everything():
    labels, logits, weights, entities = _entity_data()
    report = evaluate(labels, logits, weights, entities=entities, coordinate_metrics=COORDINATES)
    expected = metrics.binary_metrics(labels, logits, weights)
    for k in ("auc", "logloss", "aupr"):
        assert report.metrics[k] == expected[k]
    assert report.metrics["rows"] == len(labels)
    assert report.metrics["weight"] == pytest.approx(weights.sum())
    assert report.metrics["positive_rate"] == pytest.approx(np.dot(weights, labels) / weights.sum())
    assert report.roc == roc_curve_points(labels, logits, weights, max_points=200)
    assert report.calibration == calibration_bins(labels, logits, weights, bins=10)
    for name, ids in entities.items():
        assert report.entity_summaries[name] == metrics.per_entity_auc_summary(ids, labels, logits, weights)
        _, aucs, _ = metrics.grouped_auc(ids, labels, logits, weights)
        np.testing.assert_array_equal(report.entity_aucs[name], aucs[~np.isnan(aucs)])
    assert report.coordinate_metrics == COORDINATES
    assert report.notes == []
    d = report.to_dict()
    assert d["roc"]["fpr"] == report.roc[0]
    assert isinstance(d["entity_aucs"]["memberId"], list)


def test_evaluate_single_class():
    report = evaluate(np.zeros(50), np.linspace(-2, 2, 50), entities={"e": np.arange(50) % 5})
    assert math.isnan(report.metrics["auc"])
    assert report.roc is None
    assert report.notes and "positive" in report.notes[0]
    assert report.entity_summaries["e"]["entities_with_auc"] == 0
    assert report.entity_aucs["e"].shape == (0,)
    assert report.to_dict()["metrics"]["auc"] is None
    page = render_html(report, "single class")
    assert _count_svg(page) == 1  # calibration only
    _check_well_formed(page)
    assert "n/a" in page
    assert "ROC curve omitted" in page
    assert "no entity has both classes" in page

    # Positives only through the weights: the only negative row has weight zero.
    report = evaluate([1, 1, 0], [0.1, 0.2, 0.3], [1.0, 2.0, 0.0])
    assert report.roc is None and "negative" in report.notes[0]


def test_evaluate_invalid_input():
    with pytest.raises(ValueError, match="empty"):
        evaluate([], [])
    with pytest.raises(ValueError, match=r"logits contain 2 NaN value\(s\) out of 4 \(rows 1, 3\)"):
        evaluate([0, 1, 0, 1], [0.1, float("nan"), 0.2, float("nan")])
    with pytest.raises(ValueError, match="infinite"):
        evaluate([0, 1], [0.1, float("inf")])
    with pytest.raises(ValueError, match="every weight is zero"):
        evaluate([0, 1], [0.1, 0.2], [0.0, 0.0])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        evaluate([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        evaluate([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="entity column 'memberId'"):
        evaluate([0, 1], [0.1, 0.2], entities={"memberId": np.arange(3)})
    with pytest.raises(TypeError, match="coordinate_metrics"):
        evaluate([0, 1], [0.1, 0.2], coordinate_metrics=[("auc", 0.5)])


def test_evaluate_zero_weights_equal_dropped_rows():
    labels, logits, weights, entities = _entity_data(5, 2000)
    keep = weights > 0
    a = evaluate(labels, logits, weights)
    b = evaluate(labels[keep], logits[keep], weights[keep])
    for k in ("auc", "logloss", "aupr", "weight", "positive_rate", "mean_predicted"):
        assert a.metrics[k] == pytest.approx(b.metrics[k], abs=1e-12)
    np.testing.assert_allclose(a.roc[0], b.roc[0], atol=1e-12)
    np.testing.assert_allclose(a.roc[1], b.roc[1], atol=1e-12)
    assert [x["weight"] for x in a.calibration] == pytest.approx([x["weight"] for x in b.calibration])


# HTML


class _Checker(HTMLParser):
    """Every opened tag is closed in order (void elements must be written self-closing)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        self.handle_startendtag(tag, attrs)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.update(name for name, _ in attrs)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check_well_formed(page: str) -> _Checker:
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert "script" not in checker.tags
    # No scripts, event handlers or external assets.
    assert not {a for a in checker.attrs if a in ("href", "src") or a.startswith("on")}
    page.encode("ascii")  # pure ASCII; other characters are character references
    return checker


def _count_svg(page: str) -> int:
    return len(re.findall(r"<svg\b", page))


def _svg_path(page: str, gid: str) -> np.ndarray:
    """The vertices, in SVG user units (pixels), of the path drawn in the page's group ``id=gid``.

    matplotlib writes a line as one ``<path d="M x y L x y ...">`` in a ``<g>`` named by the
    artist's gid; a straight-segment path is all this reads, anything else fails.
    """
    (d,) = re.findall(rf'<g id="{gid}">\s*<path d="([^"]+)"', page)
    tokens = d.split()
    commands = [t for t in tokens if t.isalpha()]
    assert commands[0] == "M" and set(commands[1:]) <= {"L", "z"}, commands[:5]
    return np.array([float(t) for t in tokens if not t.isalpha()]).reshape(-1, 2)


def test_html_is_well_formed_with_one_svg_per_plot():
    labels, logits, weights, entities = _entity_data()
    report = evaluate(labels, logits, weights, entities=entities, coordinate_metrics=COORDINATES)
    page = render_html(report, "GDMix validation")
    checker = _check_well_formed(page)
    assert _count_svg(page) == 4  # ROC, calibration, two entity histograms
    assert checker.tags.count("table") == 3  # metrics, per-entity summaries, coordinates
    text = " ".join(checker.text)
    for needle in ("False positive rate", "True positive rate", "Mean predicted probability",
                   "Observed positive rate", "Per-entity AUC (memberId)", "Per-entity AUC (itemId)",
                   "per-member", f"{report.metrics['auc']:.4f}", "+0.0400", "\u22120.0100"):
        assert needle in text
    # The ROC curve has one vertex per point (matplotlib's path simplification is off); the
    # diagonals are drawn dashed.
    assert page.count("stroke-dasharray") >= 2
    assert len(_svg_path(page, "roc-curve")) == len(report.roc[0])
    # Inline-ready and reproducible: no XML prolog or metadata (no date), the same bytes twice,
    # and every id a chart refers to (clip paths, markers) defined once in the whole page.
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "<metadata" not in page
    assert render_html(report, "GDMix validation") == page
    referenced = set(re.findall(r'(?:url\(#|href="#)([^")]+)', page))
    assert referenced
    for ref in referenced:
        assert page.count(f'id="{ref}"') == 1, ref


def test_html_escapes_text():
    labels, logits, weights, _ = _entity_data(4, 500)
    evil = '<script>alert("x")</script> & <img src=x onerror=alert(1)> $\\frac{$'  # $: no mathtext
    report = evaluate(
        labels, logits, weights,
        entities={evil: np.arange(500) % 7},
        coordinate_metrics=[{"pass": 1, "coordinate": evil, evil: "</td></tr></table>", "auc": 0.6}],
    )
    page = render_html(report, evil)
    checker = _check_well_formed(page)
    assert "<script" not in page and "<img" not in page and "</td></tr></table>" not in page
    assert "&lt;script&gt;" in page
    assert " ".join(checker.text).count(evil) >= 4  # title, h1, entity table, coordinate table


def test_html_handles_missing_values_and_unicode():
    report = EvaluationReport(
        metrics={"auc": float("nan"), "logloss": 0.5, "aupr": float("nan"), "rows": 3},
        calibration=[{"mean_predicted": 0.2, "observed_rate": 0.1, "weight": 3.0, "rows": 3,
                      "p_min": 0.1, "p_max": 0.3}],
        coordinate_metrics=[{"pass": 1, "coordinate": "m\u00e9mbre", "auc": None},
                            {"pass": 2, "coordinate": "global", "auc": 0.6}],
    )
    page = render_html(report, "Evaluation \u2014 \u6e2c\u8a66")
    checker = _check_well_formed(page)
    assert "&#8212;" in page and "&#28204;" in page
    text = " ".join(checker.text)
    assert "m\u00e9mbre" in text and "n/a" in text
    assert _count_svg(page) == 1


def test_rendered_roc_and_auc_match_sklearn(tmp_path):
    """The page's ROC curve, read back from its SVG pixels, lies on sklearn's ROC curve of the
    same scores and encloses its area; the AUC printed is sklearn's (weighted, zero weights dropped)."""
    from sklearn.metrics import roc_auc_score

    labels, logits, weights, entities = _entity_data(8, 20000)
    report = evaluate(labels, logits, weights, entities=entities, coordinate_metrics=COORDINATES)
    out = tmp_path / "report.html"
    out.write_text(render_html(report, "GDMix validation"), encoding="ascii")
    page = out.read_text(encoding="ascii")
    assert out.stat().st_size < 200_000

    kept = weights > 0
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels[kept], logits[kept], sample_weight=weights[kept], drop_intermediate=False)
    sk_auc = roc_auc_score(labels[kept], logits[kept], sample_weight=weights[kept])
    # The axes box in pixels (the ROC axes span [0, 1] on both axes), then the curve mapped back
    # into data space through it; SVG y grows downwards.
    box = _svg_path(page, "roc-axes")
    left, right = box[:, 0].min(), box[:, 0].max()
    top, bottom = box[:, 1].min(), box[:, 1].max()
    pixels = _svg_path(page, "roc-curve")
    fpr = (pixels[:, 0] - left) / (right - left)
    tpr = (bottom - pixels[:, 1]) / (bottom - top)
    assert len(fpr) > 50
    assert (fpr[0], tpr[0]) == pytest.approx((0, 0), abs=1e-4) and (fpr[-1], tpr[-1]) == pytest.approx((1, 1), abs=1e-4)
    assert np.all(np.diff(fpr) >= -1e-4) and np.all(np.diff(tpr) >= -1e-4)
    # every drawn vertex is a point of sklearn's curve (to the 1e-6-pixel rounding of the SVG)
    nearest = np.min(np.abs(fpr[:, None] - sk_fpr[None, :]) + np.abs(tpr[:, None] - sk_tpr[None, :]), axis=1)
    assert nearest.max() < 1e-6, nearest.max()
    # the area under the drawn curve is sklearn's AUC up to the thinning of the curve
    assert np.trapezoid(tpr, fpr) == pytest.approx(sk_auc, abs=2e-3)
    assert f"model (AUC {sk_auc:.4f})" in page
    assert report.metrics["auc"] == pytest.approx(sk_auc, abs=1e-12)
