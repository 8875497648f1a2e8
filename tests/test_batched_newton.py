import numpy as np
import pytest

from gdmix.solvers.batched_newton import BatchProblem, solve_batch

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
