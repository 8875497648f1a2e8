"""Batched Newton solver for many small L2-regularised logistic regressions at once.

A random effect is millions of tiny, independent problems. Solving them one scipy call at a
time (GDMix) spends almost all its time in Python and call overhead; here a whole batch of
entities with the same padded shape is one set of array operations, so the per-entity cost is
the arithmetic alone.

Each problem ``e`` minimises, over an intercept ``b`` and coefficients ``beta`` (length ``q``)::

    sum_i w_i * CE(y_i, F_i . beta + b + o_i)  +  r0/2 * b^2  +  r/2 * |beta|^2

with ``r > 0`` and ``r0 >= 0`` (0 for an unpenalised intercept). Padded rows have weight 0 and
padded columns are all zero, so their coefficients stay exactly 0. The Newton system is solved
by eliminating the intercept (a scalar Schur complement); the feature block
``A = F'SF + r I`` is inverted directly when ``q <= n``, and through the Woodbury identity in
the ``n x n`` row space when an entity has fewer rows than features (the usual random-effect
case), where the row Gram matrix ``F F'`` is computed once per batch, not once per iteration.
Steps are capped in logit units and damped by a backtracking Armijo line search, so
convergence does not depend on a good start.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import expit

from gdmix.solvers.logistic import log_loss_terms

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
    ridge: np.ndarray  # (E,), > 0
    intercept_ridge: np.ndarray  # (E,), >= 0
    row_gram: np.ndarray | None = None  # (E, n, n) F F', set by solve_batch when n < q

    def take(self, index: np.ndarray) -> "BatchProblem":
        return BatchProblem(
            self.features[index], self.labels[index], self.weights[index], self.offsets[index],
            self.ridge[index], self.intercept_ridge[index],
            None if self.row_gram is None else self.row_gram[index],
        )

    @property
    def total_weight(self) -> np.ndarray:
        return self.weights.sum(axis=1)


@dataclass(frozen=True)
class BatchSolution:
    intercept: np.ndarray  # (E,)
    coef: np.ndarray  # (E, q)
    iterations: np.ndarray  # (E,) Newton steps taken
    converged: np.ndarray  # (E,) gradient rule met
    gradient_max: np.ndarray  # (E,) final max |gradient| / max(1, total weight)


@dataclass
class _State:
    """The working set: current point, linear predictor and objective of unfinished problems."""

    problem: BatchProblem
    index: np.ndarray  # positions in the full batch
    b: np.ndarray
    beta: np.ndarray
    z: np.ndarray
    value: np.ndarray

    def keep(self, mask: np.ndarray) -> "_State":
        where = np.flatnonzero(mask)
        return _State(self.problem.take(where), self.index[mask], self.b[mask], self.beta[mask],
                      self.z[mask], self.value[mask])


def solve_batch(
    problem: BatchProblem,
    intercept0: np.ndarray | None = None,
    coef0: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> BatchSolution:
    """Solve every problem of the batch; finished problems leave the working set."""
    num, _, q = problem.features.shape
    b = np.zeros(num) if intercept0 is None else np.array(intercept0, dtype=np.float64)
    beta = np.zeros((num, q)) if coef0 is None else np.array(coef0, dtype=np.float64)
    iterations = np.zeros(num, dtype=np.int64)
    converged = np.zeros(num, dtype=bool)
    gradient_max = np.full(num, np.inf)
    scale = np.maximum(problem.total_weight, 1.0)
    n = problem.features.shape[1]
    if 0 < n < q:  # Woodbury path: the row Gram matrix is constant across iterations
        problem = replace(problem, row_gram=np.matmul(problem.features, problem.features.transpose(0, 2, 1)))

    z = _linear_predictor(problem, b, beta)
    state = _State(problem, np.arange(num), b.copy(), beta.copy(), z, _objective(problem, b, beta, z))
    for step in range(max_iter + 1):
        grad_b, grad_beta, mu = _gradient(state)
        gmax = np.maximum(np.abs(grad_b), np.abs(grad_beta).max(axis=1, initial=0.0)) / scale[state.index]
        done = gmax <= tol
        stalled = np.zeros_like(done)
        if step < max_iter and not done.all():
            stalled = _newton_step(state, mu, grad_b, grad_beta, moving=~done)
            iterations[state.index[~done & ~stalled]] += 1
        # stalled problems did not move and the last round takes no step, so gmax is the
        # gradient at every returned point
        finished = done | stalled | (step >= max_iter)
        if finished.any():
            idx = state.index[finished]
            b[idx], beta[idx] = state.b[finished], state.beta[finished]
            converged[idx] = done[finished]
            gradient_max[idx] = gmax[finished]
            if finished.all():
                break
            state = state.keep(~finished)
    return BatchSolution(b, beta, iterations, converged, gradient_max)


def _linear_predictor(problem: BatchProblem, b: np.ndarray, beta: np.ndarray) -> np.ndarray:
    return np.matmul(problem.features, beta[:, :, None])[:, :, 0] + b[:, None] + problem.offsets


def _objective(problem: BatchProblem, b, beta, z, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Penalised loss of problems ``rows`` of the batch at (b, beta) with linear predictor z."""
    loss = np.einsum("en,en->e", problem.weights[rows], log_loss_terms(z, problem.labels[rows]))
    penalty = problem.intercept_ridge[rows] * b * b + problem.ridge[rows] * np.einsum("eq,eq->e", beta, beta)
    return loss + 0.5 * penalty


def _transpose_times(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``F' v`` per problem: (E, n, q), (E, n) -> (E, q)."""
    return np.matmul(rows[:, None, :], features)[:, 0, :]


def _gradient(state: _State):
    p = state.problem
    mu = expit(state.z)
    residual = p.weights * (mu - p.labels)
    grad_b = residual.sum(axis=1) + p.intercept_ridge * state.b
    grad_beta = _transpose_times(p.features, residual) + p.ridge[:, None] * state.beta
    return grad_b, grad_beta, mu


def _newton_step(state: _State, mu, grad_b, grad_beta, moving) -> np.ndarray:
    """Move ``state`` (in place) along the capped Newton direction; returns stalled problems."""
    p = state.problem
    delta_b, delta_beta = _newton_direction(p, mu, grad_b, grad_beta)
    delta_z = np.matmul(p.features, delta_beta[:, :, None])[:, :, 0] + delta_b[:, None]
    factor = _step_cap(p, delta_z, delta_b)
    delta_b, delta_beta, delta_z = delta_b * factor, delta_beta * factor[:, None], delta_z * factor[:, None]
    slope = grad_b * delta_b + np.einsum("eq,eq->e", grad_beta, delta_beta)
    return _line_search(state, delta_b, delta_beta, delta_z, slope, moving)


def _newton_direction(problem: BatchProblem, mu, grad_b, grad_beta):
    """Solve H d = -g with the intercept eliminated by its scalar Schur complement."""
    s = problem.weights * mu * (1.0 - mu)
    a = s.sum(axis=1) + problem.intercept_ridge
    floor = 1e-12 * np.maximum(problem.total_weight, 1.0)
    num, n, q = problem.features.shape
    if q == 0:
        return -grad_b / np.maximum(a, floor), np.zeros((num, 0))
    c = _transpose_times(problem.features, s)
    rhs = np.stack([grad_beta, c], axis=2)  # (E, q, 2)
    if n < q:
        solved = _solve_woodbury(problem, s, rhs)
    else:
        hessian = np.matmul(problem.features.transpose(0, 2, 1) * s[:, None, :], problem.features)
        hessian[:, np.arange(q), np.arange(q)] += problem.ridge[:, None]
        solved = np.linalg.solve(hessian, rhs)
    u, v = solved[:, :, 0], solved[:, :, 1]
    schur = np.maximum(a - np.einsum("eq,eq->e", c, v), floor)
    delta_b = -(grad_b - np.einsum("eq,eq->e", c, u)) / schur
    delta_beta = -u - v * delta_b[:, None]
    return delta_b, delta_beta


def _solve_woodbury(problem: BatchProblem, s, rhs):
    """``(F'SF + rI)^-1 rhs = (rhs - F' S^1/2 M^-1 S^1/2 F rhs) / r`` with ``M = rI + S^1/2 F F' S^1/2``."""
    n = problem.features.shape[1]
    root = np.sqrt(s)
    gram = problem.row_gram * root[:, :, None] * root[:, None, :]
    gram[:, np.arange(n), np.arange(n)] += problem.ridge[:, None]
    projected = np.matmul(problem.features, rhs) * root[:, :, None]  # S^1/2 F rhs, (E, n, 2)
    inner = np.linalg.solve(gram, projected) * root[:, :, None]  # (E, n, 2)
    back = np.matmul(inner.transpose(0, 2, 1), problem.features).transpose(0, 2, 1)  # F' inner
    return (rhs - back) / problem.ridge[:, None, None]


def _step_cap(problem: BatchProblem, delta_z, delta_b) -> np.ndarray:
    """Factor that shortens steps moving some row's logit by more than :data:`MAX_LOGIT_STEP`."""
    change = np.where(problem.weights > 0, np.abs(delta_z), 0.0).max(axis=1, initial=0.0)
    change = np.maximum(change, np.abs(delta_b))
    factor = np.ones_like(change)
    long_step = change > MAX_LOGIT_STEP
    factor[long_step] = MAX_LOGIT_STEP / change[long_step]  # inf -> 0: no step
    factor[np.isnan(change)] = 0.0
    return factor


def _line_search(state: _State, delta_b, delta_beta, delta_z, slope, moving) -> np.ndarray:
    """Backtracking Armijo search, vectorized: each problem halves its own step until accepted.

    A step is also accepted when it changes the objective by no more than float64 round-off
    (the loss terms are positive and computed without cancellation, so that is a few ulps of
    the value): near the optimum the Armijo decrease is below the resolution of the summed
    loss, and the gradient test of the next iteration is the judge of convergence. Trial points
    reuse ``delta_z``, so a trial costs no matrix product.
    """
    p = state.problem
    pending = np.flatnonzero(moving)
    step = np.ones(len(pending))
    roundoff = 8 * np.finfo(float).eps * (np.abs(state.value) + 1.0)
    for _ in range(MAX_HALVINGS):
        if pending.size == 0:
            break
        trial_b = state.b[pending] + step * delta_b[pending]
        trial_beta = state.beta[pending] + step[:, None] * delta_beta[pending]
        trial_z = state.z[pending] + step[:, None] * delta_z[pending]
        trial_value = _objective(p, trial_b, trial_beta, trial_z, pending)
        ok = trial_value <= state.value[pending] + ARMIJO * step * slope[pending] + roundoff[pending]
        accepted = pending[ok]
        state.b[accepted], state.beta[accepted] = trial_b[ok], trial_beta[ok]
        state.z[accepted], state.value[accepted] = trial_z[ok], trial_value[ok]
        pending, step = pending[~ok], step[~ok] * 0.5
    stalled = np.zeros(len(state.b), dtype=bool)
    stalled[pending] = True
    return stalled

