import dataclasses

import numpy as np
import pytest

from gdmix.solvers.batched_newton import BatchProblem, laplace_optimum, laplace_terms, solve_batch

from oracles import scipy_logistic


def _problem(num, n, q, real_q, seed, intercept_l2=0.0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num, n, q))
    features[:, :, real_q:] = 0.0  # padded columns
    labels = (rng.random((num, n)) < 0.5).astype(float)
    labels[:, 0], labels[:, 1] = 0.0, 1.0  # both classes: a finite optimum even without intercept ridge
    weights = rng.uniform(0.2, 2.0, (num, n))
    weights[:, -1] = 0.0  # a padded row
    offsets = rng.normal(size=(num, n))
    return BatchProblem(features, labels, weights, offsets, np.full(num, 0.8), np.full(num, intercept_l2))


@pytest.mark.parametrize("n, q, intercept_l2", [(12, 5, 0.0), (12, 5, 0.8), (4, 9, 0.0), (3, 16, 0.8), (6, 0, 0.0)])
def test_matches_scipy_per_problem(n, q, intercept_l2):
    """Primal (n >= q), Woodbury (n < q) and intercept-only paths against scipy's trust-exact."""
    real_q = max(q - 2, 0)
    problem = _problem(40, n, q, real_q, seed=n * 100 + q, intercept_l2=intercept_l2)
    solution = solve_batch(problem, tol=1e-12)
    assert solution.converged.all()
    assert np.all(solution.coef[:, real_q:] == 0.0)  # padded columns stay exactly zero
    for e in range(40):
        b, beta = scipy_logistic(problem.features[e, :, :real_q], problem.labels[e], problem.weights[e],
                                 problem.offsets[e], 0.8, intercept_l2 > 0)
        assert abs(b - solution.intercept[e]) < 1e-7
        np.testing.assert_allclose(solution.coef[e, :real_q], beta, atol=1e-7)


def test_warm_start_at_the_optimum_takes_no_step():
    problem = _problem(10, 8, 4, 4, seed=1)
    first = solve_batch(problem, tol=1e-12)
    again = solve_batch(problem, first.intercept, first.coef, tol=1e-10)
    assert (again.iterations == 0).all() and again.converged.all()
    np.testing.assert_array_equal(again.coef, first.coef)


def test_max_iter_zero_returns_start_and_reports_not_converged():
    problem = _problem(5, 8, 4, 4, seed=2)
    start = np.full((5, 4), 0.3)
    solution = solve_batch(problem, np.ones(5), start, max_iter=0)
    np.testing.assert_array_equal(solution.coef, start)
    assert not solution.converged.any() and (solution.iterations == 0).all()


def test_bad_start_far_from_optimum_still_converges():
    problem = _problem(20, 10, 3, 3, seed=4)
    solution = solve_batch(problem, np.full(20, 40.0), np.full((20, 3), -30.0), tol=1e-10)
    reference = solve_batch(problem, tol=1e-10)
    assert solution.converged.all()
    np.testing.assert_allclose(solution.coef, reference.coef, atol=1e-7)


def _at_ridge(problem, log_ridge: float, intercept_slope: np.ndarray):
    """``problem`` at ridge ``exp(log_ridge)``: the intercept's ridge moves with it where
    ``intercept_slope`` is 1 and stays fixed where it is 0."""
    ridge = np.exp(log_ridge)
    return dataclasses.replace(problem, ridge=np.full(len(problem.ridge), ridge),
                               intercept_ridge=np.where(intercept_slope > 0, ridge, problem.intercept_ridge))


def _evidence(problem, intercept_slope, log_ridge):
    """Per problem, the Laplace log evidence (up to constants) at ``exp(log_ridge)``, its slope in
    the log ridge as the terms give it, and the solution there."""
    at = _at_ridge(problem, log_ridge, intercept_slope)
    solution = solve_batch(at, tol=1e-13)
    terms = laplace_terms(at, solution, intercept_slope)
    q = problem.features.shape[2]
    prior = 0.5 * q * log_ridge + 0.5 * np.log(np.where(at.intercept_ridge > 0, at.intercept_ridge, 1.0))
    prior_slope = 0.5 * q + 0.5 * intercept_slope
    return (-terms.value + prior - 0.5 * terms.log_det, -terms.value_slope + prior_slope - 0.5 * terms.log_det_slope,
            solution, terms)


@pytest.mark.parametrize("n, q, intercept_l2, tracks", [(12, 5, 0.0, False), (12, 5, 0.8, True), (12, 5, 0.3, False),
                                                        (4, 9, 0.0, False), (3, 16, 0.8, True), (6, 0, 0.8, True)])
def test_laplace_slopes_and_tangents_match_finite_differences(n, q, intercept_l2, tracks):
    """The evidence's derivative in log ridge (through the optimum's move) and the optimum's
    tangent, on the primal, row-space (n < q) and intercept-only paths, with the intercept's
    ridge unpenalised, fixed, or equal to the ridge."""
    problem = _problem(30, n, q, max(q - 2, 0), seed=n * 100 + q, intercept_l2=intercept_l2)
    slope = np.full(30, 1.0 if tracks else 0.0)
    x, h = np.log(0.8), 1e-5
    evidence, evidence_slope, _, terms = _evidence(problem, slope, x)
    ahead, _, above, _ = _evidence(problem, slope, x + h)
    behind, _, below, _ = _evidence(problem, slope, x - h)
    assert np.abs(evidence_slope).max() > 0.1 or q == 0
    np.testing.assert_allclose(evidence_slope, (ahead - behind) / (2 * h), atol=1e-7)
    np.testing.assert_allclose(terms.intercept_tangent, (above.intercept - below.intercept) / (2 * h), atol=1e-7)
    np.testing.assert_allclose(terms.coef_tangent, (above.coef - below.coef) / (2 * h), atol=1e-7)


def test_laplace_terms_match_a_dense_hessian():
    """Objective and log determinant against the full (1 + q) x (1 + q) Hessian built directly."""
    for n, q in [(12, 5), (3, 16)]:
        problem = _problem(10, n, q, q - 2, seed=q, intercept_l2=0.8)
        solution = solve_batch(problem, tol=1e-13)
        terms = laplace_terms(problem, solution, 1.0)
        for e in range(10):
            design = np.hstack([np.ones((n, 1)), problem.features[e]])
            z = design @ np.concatenate([[solution.intercept[e]], solution.coef[e]]) + problem.offsets[e]
            mu = 1.0 / (1.0 + np.exp(-z))
            hessian = (design.T * (problem.weights[e] * mu * (1 - mu))) @ design + 0.8 * np.eye(q + 1)
            theta = np.concatenate([[solution.intercept[e]], solution.coef[e]])
            loss = problem.weights[e] @ (np.logaddexp(0, z) - problem.labels[e] * z)
            assert terms.log_det[e] == pytest.approx(np.linalg.slogdet(hessian)[1], rel=1e-10)
            assert terms.value[e] == pytest.approx(loss + 0.4 * theta @ theta, rel=1e-12)


def test_laplace_terms_without_a_cholesky_factor_agree(monkeypatch):
    """A block that round-off leaves not numerically positive definite takes the eigendecomposition."""
    problem = _problem(20, 12, 5, 5, seed=9, intercept_l2=0.8)
    solution = solve_batch(problem, tol=1e-12)
    expected = laplace_terms(problem, solution, 1.0)

    def not_positive_definite(_):
        raise np.linalg.LinAlgError("Matrix is not positive definite")

    monkeypatch.setattr(np.linalg, "cholesky", not_positive_definite)
    fallback = laplace_terms(problem, solution, 1.0)
    for name in ("log_det", "log_det_slope", "coef_tangent"):
        np.testing.assert_allclose(getattr(fallback, name), getattr(expected, name), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n, q", [(12, 5), (3, 16)])
def test_laplace_slopes_add_up_over_the_two_ridges(n, q):
    """Along ``log r`` with the intercept's ridge following (``dr0/dr = r0 / r``) the slopes and
    tangents are those along the coefficients' ridge alone plus those along the intercept's alone
    (``l2: auto`` with ``per_group`` takes the two apart), from one factorisation."""
    problem = _problem(20, n, q, q - 2, seed=n + q, intercept_l2=2.5)
    at = laplace_optimum(problem, solve_batch(problem, tol=1e-13))
    ratio = problem.intercept_ridge / problem.ridge
    joint, coefficients, intercept = at.terms(ratio), at.terms(0.0), at.terms(ratio, 0.0)
    for name in ("value_slope", "log_det_slope", "intercept_tangent", "coef_tangent"):
        np.testing.assert_allclose(getattr(joint, name), getattr(coefficients, name) + getattr(intercept, name),
                                   rtol=1e-10, atol=1e-12)
    assert np.abs(intercept.log_det_slope).max() > 1e-3
