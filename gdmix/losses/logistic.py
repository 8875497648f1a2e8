"""The binary logistic loss, written to stay exact where naive forms cancel.

``softplus(z) - y*z`` loses all precision for ``y = 1`` and large ``z`` (two large numbers
subtracted); for binary labels it equals ``softplus(-z)`` or ``softplus(z)``, which never
cancel. Solvers that compare objective values (line searches) need that exactness.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import expit


def log_loss_terms(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row cross entropy of logit ``z`` against binary label ``y``."""
    return np.logaddexp(0.0, np.where(y > 0, -z, z))


def penalised_objective(design: sp.csr_matrix, y: np.ndarray, w: np.ndarray, o: np.ndarray, penalty: np.ndarray):
    """(value, gradient) of ``sum w CE(y, [1 X] theta + o) + 1/2 sum penalty theta^2``.

    ``theta[0]`` is the intercept; ``design`` holds the features only.
    """

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ theta[1:] + theta[0] + o
        residual = w * (expit(z) - y)
        value = float(np.dot(w, log_loss_terms(z, y)) + 0.5 * np.dot(penalty * theta, theta))
        gradient = np.concatenate([[residual.sum()], design.T @ residual]) + penalty * theta
        return value, gradient

    return objective
