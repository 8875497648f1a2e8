"""Batched Newton solver for many small L2-regularised logistic regressions at once.

A random effect is millions of tiny, independent problems. Solving them one scipy call at a
time (GDMix) spends almost all its time in Python and call overhead; here a whole batch of
entities with the same padded shape is one set of array operations, so the per-entity cost is
the arithmetic alone.

Each problem ``e`` minimises, over an intercept ``b`` and coefficients ``beta`` (length ``q``)::

    sum_i w_i * CE(y_i, F_i . beta + b + o_i)  +  r0/2 * b^2  +  1/2 * sum_j r_j * beta_j^2

with ``r_j > 0`` (padded columns are all-zero with ``r_j = 1``, so they stay exactly 0) and
``r0 >= 0`` (0 for an unpenalised intercept). The Newton system is solved by eliminating the
intercept (a scalar Schur complement), with the feature block ``A = F'SF + diag(r)`` inverted
either directly (``q <= n``) or through the Woodbury identity in the ``n x n`` row space when an
entity has fewer rows than features, which is the usual case for random effects. Steps are
damped by a backtracking Armijo line search, so convergence does not depend on a good start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARMIJO = 1e-4
MAX_HALVINGS = 60
# Largest change of any row's logit in one step. Far from the optimum (saturated rows, an
# unpenalised intercept) the Hessian is nearly singular and the raw Newton step absurdly long;
# capping it in logit units (not coefficient units) is invariant to feature scaling and never
# binds near the optimum.
MAX_LOGIT_STEP = 20.0


@dataclass(frozen=True)
class BatchProblem:
    """``E`` problems padded to ``n`` rows and ``q`` features (padded rows have weight 0)."""

    features: np.ndarray  # (E, n, q)
    labels: np.ndarray  # (E, n)
    weights: np.ndarray  # (E, n)
    offsets: np.ndarray  # (E, n)
    ridge: np.ndarray  # (E, q), > 0
    intercept_ridge: np.ndarray  # (E,), >= 0

    def take(self, index: np.ndarray) -> "BatchProblem":
        return BatchProblem(
            self.features[index], self.labels[index], self.weights[index],
            self.offsets[index], self.ridge[index], self.intercept_ridge[index],
        )


@dataclass(frozen=True)
class BatchSolution:
    intercept: np.ndarray  # (E,)
    coef: np.ndarray  # (E, q)
    iterations: np.ndarray  # (E,) Newton steps taken
    converged: np.ndarray  # (E,) gradient rule met
    gradient_max: np.ndarray  # (E,) final max |gradient| / max(1, total weight)


def solve_batch(
    problem: BatchProblem,
    intercept0: np.ndarray | None = None,
    coef0: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> BatchSolution:
    """Solve every problem of the batch; converged entities drop out of the working set."""
    num, _, q = problem.features.shape
    b = np.zeros(num) if intercept0 is None else np.array(intercept0, dtype=np.float64)
    beta = np.zeros((num, q)) if coef0 is None else np.array(coef0, dtype=np.float64)
    iterations = np.zeros(num, dtype=np.int64)
    converged = np.zeros(num, dtype=bool)
    gradient_max = np.full(num, np.inf)
    scale = np.maximum(problem.weights.sum(axis=1), 1.0)

    active = np.arange(num)
    work = problem
    wb, wbeta = b.copy(), beta.copy()
    value, z = _objective(work, wb, wbeta)
    for step in range(max_iter + 1):
        grad_b, grad_beta, mu = _gradient(work, wb, wbeta, z)
        gmax = np.maximum(np.abs(grad_b), np.abs(grad_beta).max(axis=1, initial=0.0)) / scale[active]
        done = gmax <= tol
        stalled = np.zeros_like(done)
        if step < max_iter and not done.all():
            delta_b, delta_beta = _newton_direction(work, mu, grad_b, grad_beta)
            delta_b, delta_beta = _cap_step(work, delta_b, delta_beta)
            slope = grad_b * delta_b + np.einsum("eq,eq->e", grad_beta, delta_beta)
            wb, wbeta, value, z, stalled = _line_search(
                work, wb, wbeta, value, z, delta_b, delta_beta, slope, ~done
            )
            iterations[active[~done]] += 1
        # write back finished entities (converged, stalled, or out of iterations)
        finished = done | stalled | (step >= max_iter)
        if finished.any():
            idx = active[finished]
            b[idx], beta[idx] = wb[finished], wbeta[finished]
            # stalled entities did not move and the last step takes no Newton step, so gmax
            # is the gradient at every returned point
            converged[idx] = done[finished]
            gradient_max[idx] = gmax[finished]
            keep = ~finished
            if not keep.any():
                break
            active = active[keep]
            work = work.take(np.flatnonzero(keep))
            wb, wbeta, value, z = wb[keep], wbeta[keep], value[keep], z[keep]
    return BatchSolution(b, beta, iterations, converged, gradient_max)


def _linear_predictor(problem: BatchProblem, b: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return np.einsum("enq,eq->en", problem.features, beta) + b[:, None] + problem.offsets


def _objective(problem: BatchProblem, b: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = _linear_predictor(problem, b, beta)
    loss = np.einsum("en,en->e", problem.weights, np.logaddexp(0.0, z) - problem.labels * z)
    penalty = 0.5 * (problem.intercept_ridge * b * b + np.einsum("eq,eq->e", problem.ridge, beta * beta))
    return loss + penalty, z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    ez = np.exp(z[~positive])
    out[~positive] = ez / (1.0 + ez)
    return out


def _gradient(problem, b, beta, z):
    mu = _sigmoid(z)
    residual = problem.weights * (mu - problem.labels)
    grad_b = residual.sum(axis=1) + problem.intercept_ridge * b
    grad_beta = np.einsum("enq,en->eq", problem.features, residual) + problem.ridge * beta
    return grad_b, grad_beta, mu


def _newton_direction(problem: BatchProblem, mu, grad_b, grad_beta):
    """Solve H d = -g with the intercept eliminated by its scalar Schur complement."""
    s = problem.weights * mu * (1.0 - mu)
    a = s.sum(axis=1) + problem.intercept_ridge
    num, n, q = problem.features.shape
    if q == 0:
        return -grad_b / np.maximum(a, 1e-12 * np.maximum(problem.weights.sum(axis=1), 1.0)), np.zeros((num, 0))
    c = np.einsum("enq,en->eq", problem.features, s)
    rhs = np.stack([grad_beta, c], axis=2)  # (E, q, 2)
    if n < q:
        solved = _solve_woodbury(problem.features, s, problem.ridge, rhs)
    else:
        hessian = np.matmul(problem.features.transpose(0, 2, 1) * s[:, None, :], problem.features)
        hessian[:, np.arange(q), np.arange(q)] += problem.ridge
        solved = np.linalg.solve(hessian, rhs)
    u, v = solved[:, :, 0], solved[:, :, 1]
    schur = a - np.einsum("eq,eq->e", c, v)
    schur = np.maximum(schur, 1e-12 * np.maximum(problem.weights.sum(axis=1), 1.0))
    delta_b = -(grad_b - np.einsum("eq,eq->e", c, u)) / schur
    delta_beta = -u - v * delta_b[:, None]
    return delta_b, delta_beta


def _cap_step(problem: BatchProblem, delta_b, delta_beta):
    """Shorten steps that would move some row's logit by more than :data:`MAX_LOGIT_STEP`."""
    change = np.abs(np.einsum("enq,eq->en", problem.features, delta_beta) + delta_b[:, None])
    change = np.where(problem.weights > 0, change, 0.0).max(axis=1, initial=0.0)
    change = np.maximum(change, np.abs(delta_b))
    factor = np.ones_like(change)
    long_step = change > MAX_LOGIT_STEP
    factor[long_step] = MAX_LOGIT_STEP / change[long_step]  # inf -> 0: no step
    factor[np.isnan(change)] = 0.0
    return delta_b * factor, delta_beta * factor[:, None]


def _solve_woodbury(features, s, ridge, rhs):
    """(F'SF + diag(r))^-1 rhs via an n x n system: cheap when rows n < features q."""
    n = features.shape[1]
    scaled = features * np.sqrt(s)[:, :, None]  # S^1/2 F, (E, n, q)
    inv_r = 1.0 / ridge  # (E, q)
    t = rhs * inv_r[:, :, None]  # R^-1 rhs
    gram = np.matmul(scaled * inv_r[:, None, :], scaled.transpose(0, 2, 1))  # S^1/2 F R^-1 F' S^1/2
    gram[:, np.arange(n), np.arange(n)] += 1.0
    inner = np.linalg.solve(gram, np.matmul(scaled, t))  # (E, n, 2)
    return t - inv_r[:, :, None] * np.matmul(scaled.transpose(0, 2, 1), inner)


def _line_search(problem, b, beta, value, z, delta_b, delta_beta, slope, moving):
    """Backtracking Armijo search, vectorized: each entity halves its own step until accepted.

    A step is also accepted when it changes the objective by no more than float64 round-off:
    near the optimum the Armijo decrease is below the resolution of the summed loss, and the
    gradient test of the next iteration is the judge of convergence, not this one.
    """
    new_b, new_beta, new_value, new_z = b.copy(), beta.copy(), value.copy(), z.copy()
    pending = np.flatnonzero(moving)
    step = np.ones(len(pending))
    roundoff = 8 * np.finfo(float).eps * (np.abs(value) + 1.0)
    for _ in range(MAX_HALVINGS):
        if pending.size == 0:
            break
        sub = problem.take(pending)
        trial_b = b[pending] + step * delta_b[pending]
        trial_beta = beta[pending] + step[:, None] * delta_beta[pending]
        trial_value, trial_z = _objective(sub, trial_b, trial_beta)
        limit = value[pending] + ARMIJO * step * slope[pending]
        ok = trial_value <= limit + roundoff[pending]
        accepted = pending[ok]
        new_b[accepted], new_beta[accepted] = trial_b[ok], trial_beta[ok]
        new_value[accepted], new_z[accepted] = trial_value[ok], trial_z[ok]
        pending, step = pending[~ok], step[~ok] * 0.5
    stalled = np.zeros(len(b), dtype=bool)
    stalled[pending] = True
    return new_b, new_beta, new_value, new_z, stalled
