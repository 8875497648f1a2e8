import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from gdmix.config import FixedEffectConfig
from gdmix.features.index_map import IndexMap
from gdmix.losses.logistic_tf import TfLogisticLoss
from gdmix.models.fixed_effect import (
    FixedEffectModel, Standardization, fit_fixed_effect, penalty_vector,
)

from oracles import scipy_logistic


def _one_hot_data(seed, rows=3000):
    """MovieLens-like: one-hot groups (collinear with the intercept), a near-constant column, weights."""
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, rows)
    occupation = rng.integers(0, 6, rows)
    dense = np.zeros((rows, 10))
    dense[np.arange(rows), gender] = 1.0
    dense[np.arange(rows), 2 + occupation] = 1.0
    dense[:, 8] = rng.uniform(0.9, 1.0, rows)  # "release year / 2000"
    dense[:, 9] = rng.normal(size=rows) * (rng.random(rows) < 0.05)  # rare feature
    logits = dense @ rng.normal(size=10) - 1.0
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(float)
    return sp.csr_matrix(dense), labels, rng.uniform(0.2, 3.0, rows)


def _sparse_data(seed, rows=4000, width=60):
    rng = np.random.default_rng(seed)
    features = sp.random(rows, width, density=0.08, random_state=seed, format="csr",
                         data_rvs=lambda k: rng.normal(size=k))
    logits = features @ rng.normal(size=width) + 0.3
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(float)
    return features, labels, rng.uniform(0.5, 1.5, rows)


def _config(**kw):
    return FixedEffectConfig(name="g", type="fixed_effect", **kw)


@pytest.mark.parametrize("make, l2", [(_one_hot_data, 1.0), (_one_hot_data, 0.01), (_sparse_data, 1.0), (_sparse_data, 10.0)])
def test_matches_sklearn_newton_cholesky(make, l2):
    features, labels, weights = make(seed=int(l2 * 100) % 7)
    model, report = fit_fixed_effect(features, labels, weights, np.zeros(len(labels)), _config(l2=l2))
    reference = LogisticRegression(C=1.0 / l2, solver="newton-cholesky", tol=1e-14, max_iter=1000)
    reference.fit(features, labels, sample_weight=weights)
    assert report.converged
    assert abs(model.intercept - reference.intercept_[0]) < 1e-4
    np.testing.assert_allclose(model.coef, reference.coef_[0], atol=1e-4)


def test_penalised_intercept_matches_sklearn():
    features, labels, weights = _sparse_data(3, rows=2000, width=20)
    model, report = fit_fixed_effect(features, labels, weights, np.zeros(len(labels)),
                                     _config(l2=2.0, regularize_intercept=True))
    with_ones = sp.hstack([sp.csr_matrix(np.ones((len(labels), 1))), features], format="csr")
    reference = LogisticRegression(C=0.5, solver="newton-cholesky", fit_intercept=False, tol=1e-14, max_iter=1000)
    reference.fit(with_ones, labels, sample_weight=weights)
    assert report.converged
    np.testing.assert_allclose(np.concatenate([[model.intercept], model.coef]), reference.coef_[0], atol=1e-4)


def test_offsets_and_weights_match_scipy():
    features, labels, weights = _one_hot_data(4, rows=2500)
    offsets = np.random.default_rng(5).normal(size=len(labels))
    model, report = fit_fixed_effect(features, labels, weights, offsets, _config(l2=0.5))
    b, beta = scipy_logistic(features.toarray(), labels, weights, offsets, 0.5, False)
    assert report.converged
    assert abs(model.intercept - b) < 1e-5
    np.testing.assert_allclose(model.coef, beta, atol=1e-5)


def test_intercept_only_has_the_closed_form_solution():
    rng = np.random.default_rng(6)
    labels = (rng.random(500) < 0.3).astype(float)
    weights = rng.uniform(0.5, 2.0, 500)
    model, report = fit_fixed_effect(sp.csr_matrix((500, 0)), labels, weights, np.zeros(500), _config())
    rate = np.sum(weights * labels) / np.sum(weights)
    assert report.converged and model.coef.shape == (0,)
    assert abs(model.intercept - np.log(rate / (1 - rate))) < 1e-8


def test_warm_start():
    features, labels, weights = _sparse_data(7, rows=1500, width=25)
    offsets = np.zeros(len(labels))
    model, _ = fit_fixed_effect(features, labels, weights, offsets, _config())
    frozen, report = fit_fixed_effect(features, labels, weights, offsets, _config(optimizer={"max_iter": 0}), model)
    np.testing.assert_allclose(frozen.coef, model.coef, atol=1e-12)
    assert report.converged  # the warm start is already optimal
    cold, cold_report = fit_fixed_effect(features, labels, weights, offsets, _config(optimizer={"max_iter": 0}))
    assert not cold_report.converged and np.all(cold.coef == 0)
    again, again_report = fit_fixed_effect(features, labels, weights, offsets, _config(), model)
    assert again_report.iterations <= 2


def test_tf_loss_and_standardization_are_consistent():
    """The TF data term matches numpy, and the change of variables maps gradients correctly."""
    features, labels, weights = _one_hot_data(8, rows=400)
    offsets = np.random.default_rng(9).normal(size=400)
    theta = np.random.default_rng(10).normal(size=11)
    value, gradient = TfLogisticLoss(features, labels, weights, offsets)(theta)
    z = features @ theta[1:] + theta[0] + offsets
    assert value == pytest.approx(np.sum(weights * (np.logaddexp(0, z) - labels * z)), rel=1e-12)
    residual = weights * (1 / (1 + np.exp(-z)) - labels)
    np.testing.assert_allclose(gradient, np.concatenate([[residual.sum()], features.T @ residual]), rtol=1e-10)

    change = Standardization.from_data(features, weights, penalty_vector(10, 1.0, False))
    phi = change.from_model(theta)
    np.testing.assert_allclose(change.to_model(phi), theta, atol=1e-12)
    # d f(T phi)/d phi = T' grad: check against a finite difference along a random direction
    direction = np.random.default_rng(11).normal(size=11)
    loss = TfLogisticLoss(features, labels, weights, offsets)
    eps = 1e-6
    numeric = (loss(change.to_model(phi + eps * direction))[0] - loss(change.to_model(phi - eps * direction))[0]) / (2 * eps)
    assert numeric == pytest.approx(change.gradient_to_internal(gradient) @ direction, rel=1e-6)
    np.testing.assert_allclose(change.gradient_to_model(change.gradient_to_internal(gradient)), gradient, rtol=1e-10)


def test_model_table_roundtrip_drops_unknown_features():
    index_map = IndexMap.from_features(pa.array(["a", "b", "c"]), pa.array(["", "x", ""]))
    model = FixedEffectModel(0.25, np.array([1.5, 0.0, -2.0]))
    table = model.to_table(index_map)
    assert table.to_pylist() == [
        {"name": "(INTERCEPT)", "term": "", "value": 0.25},
        {"name": "a", "term": "", "value": 1.5},
        {"name": "c", "term": "", "value": -2.0},
    ]
    smaller = IndexMap.from_features(pa.array(["c", "z"]), pa.array(["", ""]))
    back = FixedEffectModel.from_table(table, smaller)
    assert back.intercept == 0.25 and back.coef.tolist() == [-2.0, 0.0]


def test_native_kernel_matches_stock_tensorflow_ops():
    """The fused op is built and used here, agrees with the composite TF kernel, and is deterministic."""
    from gdmix.losses.logistic_tf import _composite_function

    features, labels, weights = _sparse_data(12, rows=3000, width=200)
    offsets = np.random.default_rng(13).normal(size=3000)
    features.data[::7] *= 30.0  # some large logits
    loss = TfLogisticLoss(features, labels, weights, offsets)
    assert loss.native, "the native op should build with the toolchain of this machine"
    theta = np.random.default_rng(14).normal(size=201)
    value, gradient = loss(theta)
    again = loss(theta)
    assert again[0] == value and np.array_equal(again[1], gradient)
    reference = _composite_function()(theta, *loss._tensors)
    assert value == pytest.approx(float(reference[0].numpy()), rel=1e-12)
    np.testing.assert_allclose(gradient, reference[1].numpy(), rtol=1e-10, atol=1e-9)
