import numpy as np

from gdmix.solvers.lbfgs import minimize_lbfgs, minimize_lbfgs_in_segments


def _problem(seed=0, offset=1e9):
    """A convex quadratic plus softplus terms whose value carries a huge constant, so value
    differences near the optimum are below float64 resolution while gradients stay exact."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40, 10))
    hessian = a.T @ a + np.eye(10)
    b = rng.normal(size=10)

    def value_and_gradient(x):
        z = a @ x
        return offset + 0.5 * x @ hessian @ x - b @ x + np.sum(np.logaddexp(0, z)), \
            hessian @ x - b + a.T @ (1 / (1 + np.exp(-z)))

    return value_and_gradient


def test_gradient_rule_is_met_where_value_round_off_stops_lbfgs():
    objective = _problem()
    result = minimize_lbfgs(objective, np.zeros(10), max_iter=500, gtol=1e-12, ftol=0.0, history=10)
    assert result.converged and result.gradient_max <= 1e-12
    assert "Newton-CG polish" in result.message  # L-BFGS-B alone stalls on the value's round-off


def test_segments_resume_bit_for_bit():
    objective = _problem(1, offset=0.0)
    whole = minimize_lbfgs_in_segments(objective, np.zeros(10), segment=3, max_iter=200, gtol=1e-10, ftol=0.0,
                                       history=10)
    saved = {}

    def keep(x, done):
        saved.setdefault(done, x.copy())

    minimize_lbfgs_in_segments(objective, np.zeros(10), segment=3, max_iter=6, gtol=1e-10, ftol=0.0, history=10,
                               on_segment=keep)
    resumed = minimize_lbfgs_in_segments(objective, saved[6], segment=3, start_iteration=6, max_iter=200,
                                         gtol=1e-10, ftol=0.0, history=10)
    assert whole.converged and np.array_equal(resumed.x, whole.x) and resumed.iterations == whole.iterations
