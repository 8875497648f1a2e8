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


def curvature(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-row second derivative ``w mu (1 - mu)`` of the weighted loss in the logit, as
    ``expit(z) * expit(-z)``: ``mu - mu^2`` would round to 0 where ``mu`` is near 1."""
    return w * expit(z) * expit(-z)


def data_hessian(design: sp.csr_matrix, s: np.ndarray, full: bool) -> np.ndarray:
    """The Hessian ``[1 X]' S [1 X]`` of a data term w.r.t. ``theta = [b, beta]`` (``s``: the
    rows' :func:`curvature`): its diagonal, or (``full``) the whole dense matrix, which only
    small ``X`` (few columns) can afford."""
    if not full:
        squares = sp.csr_matrix((design.data**2, design.indices, design.indptr), shape=design.shape)
        return np.concatenate([[s.sum()], squares.T @ s])
    weighted = sp.diags(s) @ design
    hessian = np.empty((design.shape[1] + 1,) * 2)
    hessian[0, 0] = s.sum()
    hessian[0, 1:] = hessian[1:, 0] = design.T @ s
    hessian[1:, 1:] = (design.T @ weighted).toarray()
    return hessian
