"""Independent reference solutions (scipy, written without any gdmix code) for the tests."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit


def scipy_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, o: np.ndarray,
                   l2: float, penalize_intercept: bool) -> tuple[float, np.ndarray]:
    """argmin sum w*CE(y, x.beta + b + o) + l2/2 |beta|^2 (+ l2/2 b^2) by scipy's trust-exact."""
    x = np.asarray(x, dtype=float)
    design = np.hstack([np.ones((len(y), 1)), x])
    penalty = np.full(design.shape[1], float(l2))
    if not penalize_intercept:
        penalty[0] = 0.0

    def fun(theta):
        z = design @ theta + o
        return np.sum(w * np.logaddexp(0, np.where(y > 0, -z, z))) + 0.5 * np.sum(penalty * theta**2)

    def jac(theta):
        z = design @ theta + o
        return design.T @ (w * (expit(z) - y)) + penalty * theta

    def hess(theta):
        p = expit(design @ theta + o)
        return (design * (w * p * (1 - p))[:, None]).T @ design + np.diag(penalty)

    result = minimize(fun, np.zeros(design.shape[1]), jac=jac, hess=hess, method="trust-exact",
                      options={"gtol": 1e-12, "maxiter": 1000})
    return float(result.x[0]), result.x[1:]


def scored_labels(seed: int, n: int, distinct: int | None, weighted: bool, zero_frac: float = 0.0):
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


SCORED_CASES = [
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
