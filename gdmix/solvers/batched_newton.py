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
        grad_b, grad_beta, s, c = _gradient(state)
        gmax = np.maximum(np.abs(grad_b), np.abs(grad_beta).max(axis=1, initial=0.0)) / scale[state.index]
        done = gmax <= tol
        stalled = np.zeros_like(done)
        if step < max_iter and not done.all():
            stalled = _newton_step(state, grad_b, grad_beta, s, c, moving=~done)
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


def _gradient(state: _State):
    """Gradient, Hessian weights ``s`` and ``c = F's`` (one batched product for both sums)."""
    p = state.problem
    mu = expit(state.z)
    residual = p.weights * (mu - p.labels)
    s = p.weights * mu * (1.0 - mu)
    products = np.matmul(np.stack([residual, s], axis=1), p.features)  # (E, 2, q): F'residual, F's
    grad_b = residual.sum(axis=1) + p.intercept_ridge * state.b
    grad_beta = products[:, 0, :] + p.ridge[:, None] * state.beta
    return grad_b, grad_beta, s, products[:, 1, :]


def _newton_step(state: _State, grad_b, grad_beta, s, c, moving) -> np.ndarray:
    """Move ``state`` (in place) along the capped Newton direction; returns stalled problems."""
    p = state.problem
    delta_b, delta_beta, delta_z = _newton_direction(p, s, c, grad_b, grad_beta)
    factor = _step_cap(p, delta_z, delta_b)
    delta_b, delta_beta, delta_z = delta_b * factor, delta_beta * factor[:, None], delta_z * factor[:, None]
    slope = grad_b * delta_b + np.einsum("eq,eq->e", grad_beta, delta_beta)
    return _line_search(state, delta_b, delta_beta, delta_z, slope, moving)


def _newton_direction(problem: BatchProblem, s, c, grad_b, grad_beta):
    """Solve H d = -g with the intercept eliminated by its scalar Schur complement; also
    returns the change of every row's logit, ``F d_beta + d_b``."""
    a = s.sum(axis=1) + problem.intercept_ridge
    floor = 1e-12 * np.maximum(problem.total_weight, 1.0)
    num, n, q = problem.features.shape
    if q == 0:
        delta_b = -grad_b / np.maximum(a, floor)
        return delta_b, np.zeros((num, 0)), np.repeat(delta_b[:, None], n, axis=1)
    rhs = np.stack([grad_beta, c], axis=2)  # (E, q, 2)
    if n < q:
        solved, rows = _solve_woodbury(problem, s, rhs)
    else:
        hessian = np.matmul(problem.features.transpose(0, 2, 1) * s[:, None, :], problem.features)
        hessian[:, np.arange(q), np.arange(q)] += problem.ridge[:, None]
        solved = np.linalg.solve(hessian, rhs)
        rows = np.matmul(problem.features, solved)
    u, v = solved[:, :, 0], solved[:, :, 1]
    schur = np.maximum(a - np.einsum("eq,eq->e", c, v), floor)
    delta_b = -(grad_b - np.einsum("eq,eq->e", c, u)) / schur
    delta_beta = -u - v * delta_b[:, None]
    delta_z = delta_b[:, None] - rows[:, :, 0] - rows[:, :, 1] * delta_b[:, None]
    return delta_b, delta_beta, delta_z


def _solve_woodbury(problem: BatchProblem, s, rhs):
    """``X = (F'SF + rI)^-1 rhs = (rhs - F' S^1/2 M^-1 S^1/2 F rhs) / r`` with
    ``M = rI + S^1/2 F F' S^1/2``, and ``F X`` from the row Gram matrix ``K = F F'`` without
    another pass over ``F``: ``F X = (F rhs - K S^1/2 M^-1 S^1/2 F rhs) / r``."""
    n = problem.features.shape[1]
    root = np.sqrt(s)
    gram = problem.row_gram * root[:, :, None] * root[:, None, :]
    gram[:, np.arange(n), np.arange(n)] += problem.ridge[:, None]
    projected = np.matmul(problem.features, rhs)  # F rhs, (E, n, 2)
    inner = np.linalg.solve(gram, projected * root[:, :, None]) * root[:, :, None]
    back = np.matmul(inner.transpose(0, 2, 1), problem.features).transpose(0, 2, 1)  # F' inner
    ridge = problem.ridge[:, None, None]
    return (rhs - back) / ridge, (projected - np.matmul(problem.row_gram, inner)) / ridge


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




@dataclass(frozen=True)
class SingleRowSolution:
    intercept: np.ndarray  # (E,)
    scale: np.ndarray  # (E,): the coefficients are scale * x (the entity's one row)
    iterations: np.ndarray
    converged: np.ndarray


def solve_single_rows(
    norm2: np.ndarray, start_logit: np.ndarray, labels: np.ndarray, weights: np.ndarray, offsets: np.ndarray,
    ridge: np.ndarray, intercept_ridge: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10,
) -> SingleRowSolution:
    """Entities with exactly one row, solved as one-dimensional problems.

    With one row ``x``, only ``u = b + x.beta`` reaches the loss, and for a given ``u`` the
    penalty ``r0/2 b^2 + r/2 |beta|^2`` is smallest with ``beta`` along ``x``; it is then
    ``rho/2 u^2`` with ``rho = r0 k / (r0 + k)``, ``k = r / |x|^2``. So a Newton iteration on the
    scalar ``u`` (vectorized over all such entities) gives the exact optimum, and
    ``b = k u / (r0 + k)``, ``beta = (u - b) x / |x|^2``. Single-row entities are the majority
    of a long-tailed population, and this costs a few scalar operations each.
    ``norm2`` is ``|x|^2``, ``start_logit`` the warm start's ``b + x.beta``.
    """
    with np.errstate(divide="ignore"):
        kappa = np.where(norm2 > 0, ridge / np.where(norm2 > 0, norm2, 1.0), np.inf)
    rho = np.where(np.isinf(kappa), intercept_ridge,
                   intercept_ridge * kappa / np.maximum(intercept_ridge + np.where(np.isinf(kappa), 0, kappa),
                                                        np.finfo(float).tiny))
    u = np.array(start_logit, dtype=np.float64)
    iterations = np.zeros(len(u), dtype=np.int64)
    scale = np.maximum(weights, 1.0)

    def value(points):
        z = points + offsets
        return weights * np.logaddexp(0.0, np.where(labels > 0, -z, z)) + 0.5 * rho * points * points

    current = value(u)
    active = np.ones(len(u), dtype=bool)
    for iteration in range(max_iter + 1):
        mu = expit(u + offsets)
        gradient = weights * (mu - labels) + rho * u
        active &= np.abs(gradient) / scale > tol
        if not active.any() or iteration >= max_iter:
            break
        curvature = np.maximum(weights * mu * (1.0 - mu) + rho, np.finfo(float).tiny)
        step = np.clip(-gradient / curvature, -MAX_LOGIT_STEP, MAX_LOGIT_STEP)
        length = np.where(active, 1.0, 0.0)
        for _halving in range(MAX_HALVINGS):  # Armijo on the scalar problems still moving
            trial = u + length * step
            trial_value = value(trial)
            ok = trial_value <= current + ARMIJO * length * gradient * step + 8 * np.finfo(float).eps * (
                np.abs(current) + 1.0)
            if ok[active].all():
                break
            length = np.where(ok, length, length * 0.5)
        moved = active & ok
        u = np.where(moved, trial, u)
        current = np.where(moved, trial_value, current)
        iterations += moved
        active &= ok
    mu = expit(u + offsets)
    converged = np.abs(weights * (mu - labels) + rho * u) / scale <= tol
    finite_kappa = np.where(np.isinf(kappa), 0.0, kappa)
    intercept = np.where(np.isinf(kappa), u, finite_kappa * u / np.maximum(intercept_ridge + finite_kappa,
                                                                          np.finfo(float).tiny))
    with np.errstate(divide="ignore", invalid="ignore"):
        coefficient_scale = np.where(norm2 > 0, (u - intercept) / np.where(norm2 > 0, norm2, 1.0), 0.0)
    return SingleRowSolution(intercept, coefficient_scale, iterations, converged)
