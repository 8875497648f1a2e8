"""Batched Newton solver for many small L2-regularised logistic regressions at once.

A random effect is millions of tiny, independent problems. Solving them one scipy call at a
time spends almost all its time in Python and call overhead; here a whole batch of
entities with the same padded shape is one set of array operations, so the per-entity cost is
the arithmetic alone.

Each problem ``e`` minimises, over an intercept ``b`` and coefficients ``beta`` (length ``q``)::

    sum_i w_i * CE(y_i, F_i . beta + b + o_i)  +  r0/2 * b^2  +  r/2 * |beta|^2

with ``r > 0`` and ``r0 >= 0`` (0 for an unpenalised intercept). Padded rows have weight 0 and
padded columns are all zero, so their coefficients stay exactly 0. The intercept is eliminated
from each Newton system by its scalar Schur complement. Two parameterisations share one loop:

* ``q <= n`` (:class:`_Primal`): Newton on ``beta`` with the ``q x q`` Hessian;
* ``n < q``, the usual random-effect case (:class:`_RowSpace`): the optimum has ``beta = F' a``
  (the penalty is a ridge), so Newton runs on ``a`` (length ``n``) with the row Gram matrix
  ``K = F F'`` computed once; an iteration then costs O(n^2) per problem plus one pass over
  ``F`` for the gradient test, instead of several passes over ``F``.

Steps are capped in logit units and damped by a backtracking Armijo line search, so
convergence does not depend on a good start.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import expit

from gdmix.losses.logistic import log_loss_terms

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

    def take(self, index: np.ndarray) -> "BatchProblem":
        return BatchProblem(self.features[index], self.labels[index], self.weights[index], self.offsets[index],
                            self.ridge[index], self.intercept_ridge[index])

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
    logits: np.ndarray  # (E, n) every row's logit at the returned point
    value: np.ndarray  # (E,) the penalised objective there


def solve_batch(
    problem: BatchProblem,
    intercept0: np.ndarray | None = None,
    coef0: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> BatchSolution:
    """Solve every problem of the batch; finished problems leave the working set."""
    num, n, q = problem.features.shape
    b = np.zeros(num) if intercept0 is None else np.array(intercept0, dtype=np.float64)
    beta = np.zeros((num, q)) if coef0 is None else np.array(coef0, dtype=np.float64)
    space = _RowSpace(problem) if 0 < n < q else _Primal(problem)
    coef = space.start(beta)
    iterations = np.zeros(num, dtype=np.int64)
    converged = np.zeros(num, dtype=bool)
    gradient_max = np.full(num, np.inf)
    scale = np.maximum(problem.total_weight, 1.0)
    out_coef, logits, value = np.zeros_like(coef), np.zeros((num, n)), np.zeros(num)

    z = space.predictor(b, coef)
    state = _State(space, np.arange(num), b, coef, z, space.objective(b, coef, z))
    for step in range(max_iter + 1):
        gmax, direction = state.space.newton(state.b, state.coef, state.z)
        gmax = gmax / scale[state.index]
        done = gmax <= tol
        stalled = np.zeros_like(done)
        if step < max_iter and not done.all():
            stalled = _line_search(state, *direction, moving=~done)
            iterations[state.index[~done & ~stalled]] += 1
        # stalled problems did not move and the last round takes no step, so gmax is the
        # gradient at every returned point
        finished = done | stalled | (step >= max_iter)
        if finished.any():
            idx = state.index[finished]
            b[idx], out_coef[idx] = state.b[finished], state.coef[finished]
            converged[idx] = done[finished]
            gradient_max[idx] = gmax[finished]
            logits[idx], value[idx] = state.z[finished], state.value[finished]
            if finished.all():
                break
            state = state.keep(~finished)
    return BatchSolution(b, space.finish(out_coef), iterations, converged, gradient_max, logits, value)


@dataclass(frozen=True)
class LaplaceTerms:
    """Per problem, at its optimum: the penalised objective ``value`` and the log determinant of
    the full Hessian ``log_det`` (what the Laplace approximation of the problem's marginal
    likelihood needs), and the derivative of each with respect to ``log r`` (``r``: the ridge),
    the optimum moving with ``r``. The slopes let a search for the best ridge find the root of
    the evidence's derivative in a few solves instead of comparing values at many; the tangents
    (how the optimum moves) let a solve at a nearby ridge start from a first-order prediction."""

    value: np.ndarray  # (E,)
    log_det: np.ndarray  # (E,)
    value_slope: np.ndarray  # (E,) d value / d log r
    log_det_slope: np.ndarray  # (E,) d log_det / d log r
    intercept_tangent: np.ndarray  # (E,) d intercept / d log r
    coef_tangent: np.ndarray  # (E, m) d beta / d log r, in the basis of the HatTerms it came from


@dataclass(frozen=True)
class HatTerms:
    """What the Laplace terms need of the coefficient block ``A = F'SF + rI`` of the Hessian
    (``S = diag(s)``, ``s = w mu (1 - mu)``), seen through each problem's ``n`` rows, so that the
    primal (``q x q``), row-space (``n x n``), single-row (closed form) and sparse paths share
    one formula (:class:`LaplaceOptimum`). Coefficient vectors may be in any orthonormal basis of
    ``m`` columns (a single row's problem is one-dimensional)."""

    log_det: np.ndarray  # (E,) log det A
    diagonal: np.ndarray  # (E, n) diag(F A^-1 F'): each row's leverage in the coefficient block
    hat_s: np.ndarray  # (E, n) F A^-1 F' s
    hat_coef: np.ndarray  # (E, n) F A^-1 beta
    solved_c: np.ndarray  # (E, m) A^-1 F's
    solved_coef: np.ndarray  # (E, m) A^-1 beta


def laplace_terms(problem: BatchProblem, solution: BatchSolution,
                  intercept_slope: np.ndarray | float = 0.0) -> LaplaceTerms:
    """Per problem, at the optimum ``solution`` (its logits and objective as the solver left
    them), :class:`LaplaceTerms`; ``intercept_slope`` is ``d r0 / d r`` (1 where the intercept's
    ridge is the ridge, 0 where it is fixed). See :func:`laplace_optimum`."""
    return laplace_optimum(problem, solution).terms(intercept_slope)


def laplace_optimum(problem: BatchProblem, solution: BatchSolution) -> "LaplaceOptimum":
    """The batch at its optimum ``solution``, as :class:`LaplaceOptimum` takes it.

    The Hessian is ``[[sum s + r0, c'], [c, A]]`` with ``c = F's``: its log determinant is
    ``log det A`` plus the log of the intercept's Schur complement. With fewer rows than columns
    ``A``'s determinant and inverse come from the row space, ``det A = r^(q-n) det(SK + rI_n)``
    (``K = FF'``), as the row-space Newton solver works. A padded column adds ``log r`` to the
    determinant, which the prior's normalisation (``q/2 log r``) cancels, so padding changes
    neither the evidence nor its slope.
    """
    p, coef = problem, solution.coef
    n, q = p.features.shape[1:]
    mu = expit(solution.logits)
    s = p.weights * mu * (1.0 - mu)
    hat = _row_space_hat(p, s, coef) if n < q else _primal_hat(p, s, coef)
    return LaplaceOptimum(hat, solution.value, s, s * (1.0 - 2.0 * mu), solution.intercept,
                          np.einsum("eq,eq->e", coef, coef), q, p.ridge, p.intercept_ridge, p.total_weight)


@dataclass(frozen=True)
class LaplaceOptimum:
    """Problems at their optimum, as the Laplace terms see them: row curvatures ``s`` (and ``s_prime
    = ds/dz = s (1 - 2 mu)``), intercept ``intercept``, ``|beta|^2 = coef_norm2``, ``dimension``
    (padded) coefficients, the coefficients' ridge ``r`` and the intercept's ``r0``, and what
    :class:`HatTerms` says of the coefficient block. The primal, row-space, single-row and sparse
    paths share this one formula; :meth:`terms` gives the slopes and tangents along any direction
    in which the two ridges move, from one factorisation (``l2: auto`` with ``per_group`` asks
    for two: the coefficients' ridge alone and the intercept's alone)."""

    hat: HatTerms
    value: np.ndarray
    s: np.ndarray
    s_prime: np.ndarray
    intercept: np.ndarray
    coef_norm2: np.ndarray
    dimension: object
    ridge: np.ndarray
    intercept_ridge: np.ndarray
    total_weight: np.ndarray

    @cached_property
    def sigma(self) -> np.ndarray:
        """The intercept's Schur complement ``sum s + r0 - s'F A^-1 F's``: ``1 / (H^-1)_00``."""
        return _floor(self.s.sum(axis=1) + self.intercept_ridge - np.einsum("en,en->e", self.s, self.hat.hat_s),
                      self.total_weight)

    @cached_property
    def unexplained(self) -> np.ndarray:
        """``1 - F A^-1 c``: how the intercept's direction reaches each row."""
        return 1.0 - self.hat.hat_s

    @cached_property
    def leverage(self) -> np.ndarray:
        """Each row's ``x~'H^-1 x~`` (``x~ = [1, f]``)."""
        return self.hat.diagonal + self.unexplained * self.unexplained / self.sigma[:, None]

    def terms(self, intercept_slope, coef_slope: float = 1.0) -> LaplaceTerms:
        """:class:`LaplaceTerms` with slopes and tangents along ``d/d log r`` where ``dH/dr = P =
        diag(intercept_slope, coef_slope, ..., coef_slope)``: ``(intercept_slope, 1)`` moves the
        coefficients' ridge (and the intercept's, where it follows it); ``(r0 / r, 0)`` moves the
        intercept's ridge alone, in ``log r0``. Everything below is linear in ``P``.

        The value's slope is ``r/2 theta'P theta`` (the optimum's move does not count: the
        gradient is 0 there); the log determinant's is ``r tr(H^-1 P)`` plus, through the move
        ``dtheta/dr = -H^-1 P theta``, ``r sum_i h_i s'_i dz_i/dr`` with leverages ``h_i =
        x~_i'H^-1 x~_i`` (``d log det H / d theta = sum_i h_i s'_i x~_i``). Everything is
        eliminated through the intercept's Schur complement ``sigma``, and ``r tr(A^-1) = q -
        sum_i s_i (F A^-1 F')_ii`` (as ``A^-1 = (I - A^-1 F'SF) / r``), so only the rows' view of
        ``A^-1`` is needed. The tangent is ``r dtheta/dr``.
        """
        hat, s, sigma, ridge = self.hat, self.s, self.sigma, self.ridge
        moved_intercept = (intercept_slope * self.intercept
                           - coef_slope * np.einsum("en,en->e", s, hat.hat_coef)) / sigma  # (H^-1 P theta)_0
        logit_move = -(moved_intercept[:, None] * self.unexplained + coef_slope * hat.hat_coef)  # dz/dr
        trace = (intercept_slope * ridge / sigma + coef_slope * self.dimension  # r tr(H^-1 P)
                 - coef_slope * np.einsum("en,en->e", s, hat.diagonal)
                 + coef_slope * ridge * np.einsum("em,em->e", hat.solved_c, hat.solved_c) / sigma)
        log_det_slope = trace + ridge * np.einsum("en,en->e", self.leverage * self.s_prime, logit_move)
        value_slope = 0.5 * ridge * (intercept_slope * self.intercept * self.intercept + coef_slope * self.coef_norm2)
        coef_tangent = -ridge[:, None] * (coef_slope * hat.solved_coef - hat.solved_c * moved_intercept[:, None])
        return LaplaceTerms(self.value, hat.log_det + np.log(sigma), value_slope, log_det_slope,
                            -ridge * moved_intercept, coef_tangent)


def _primal_hat(p: BatchProblem, s: np.ndarray, coef: np.ndarray) -> HatTerms:
    """:class:`HatTerms` from the ``q x q`` block itself (at least as many rows as columns)."""
    n, q = p.features.shape[1:]
    if q == 0:
        zeros = np.zeros(s.shape)
        return HatTerms(np.zeros(len(s)), zeros, zeros, zeros, coef, coef)
    block = np.matmul(p.features.transpose(0, 2, 1) * s[:, None, :], p.features)
    block[:, np.arange(q), np.arange(q)] += p.ridge[:, None]
    inverse, log_det = _inverse_factor(block)  # A^-1 = X'X
    whitened = np.matmul(p.features, inverse.transpose(0, 2, 1))  # F X': its rows' squared norms are leverages
    c = np.matmul(s[:, None, :], p.features)[:, 0, :]
    solved = np.matmul(inverse.transpose(0, 2, 1), np.matmul(inverse, np.stack([c, coef], axis=2)))  # A^-1 [c, beta]
    hat = np.matmul(p.features, solved)
    return HatTerms(log_det, np.einsum("enq,enq->en", whitened, whitened), hat[:, :, 0], hat[:, :, 1],
                    solved[:, :, 0], solved[:, :, 1])


def _inverse_factor(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a stack of symmetric positive definite ``A``: ``X`` with ``A^-1 = X'X``, and ``log det
    A``. Cholesky (``X = L^-1``) is fast; a stack that round-off left not numerically positive
    definite (huge features against a tiny ridge) takes the eigendecomposition instead."""
    try:
        factor = np.linalg.cholesky(block)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(block)
        values = np.maximum(np.abs(values), np.finfo(float).tiny)
        return vectors.transpose(0, 2, 1) / np.sqrt(values)[:, :, None], np.log(values).sum(axis=1)
    return _lower_inverse(factor), 2.0 * np.log(np.diagonal(factor, axis1=1, axis2=2)).sum(axis=1)


def _lower_inverse(factor: np.ndarray) -> np.ndarray:
    """Inverses of a stack of lower-triangular matrices, row by row (forward substitution over
    the whole stack at once): for the small blocks of a batch, with the Cholesky factorisation,
    this is about 1.5x faster than LAPACK's general inverse and determinant, which pay a call per
    matrix (7 ms against 10 ms for 8,000 6 x 6 blocks)."""
    size = factor.shape[-1]
    inverse = np.zeros_like(factor)
    reciprocal = 1.0 / np.diagonal(factor, axis1=1, axis2=2)
    for i in range(size):
        inverse[:, i, i] = reciprocal[:, i]
        if i:
            inverse[:, i, :i] = -np.matmul(factor[:, i:i + 1, :i], inverse[:, :i, :i])[:, 0, :] * reciprocal[:, i:i + 1]
    return inverse


def _row_space_hat(p: BatchProblem, s: np.ndarray, coef: np.ndarray) -> HatTerms:
    """:class:`HatTerms` from the row space (fewer rows than columns): with ``B = SK + rI_n``,
    ``A^-1 F' = F' B^-1`` gives ``F A^-1 F' = K B^-1``, ``A^-1 c = F' B^-1 s`` and ``A^-1 beta =
    (beta - F' B^-1 S F beta) / r``."""
    n, q = p.features.shape[1:]
    gram = np.matmul(p.features, p.features.transpose(0, 2, 1))
    system = s[:, :, None] * gram
    system[:, np.arange(n), np.arange(n)] += p.ridge[:, None]
    inverse = np.linalg.inv(system)
    hat = np.matmul(gram, inverse)  # K B^-1 = F A^-1 F'
    fitted = np.matmul(p.features, coef[:, :, None])[:, :, 0]  # F beta
    rows = np.matmul(inverse, np.stack([s, s * fitted], axis=2))  # B^-1 [s, S F beta]
    through = np.matmul(rows.transpose(0, 2, 1), p.features)  # F' B^-1 [s, S F beta], as rows
    hat_s = np.matmul(gram, rows[:, :, 0:1])[:, :, 0]
    ridge = p.ridge[:, None]
    log_det = np.linalg.slogdet(system)[1] + (q - n) * np.log(p.ridge)
    return HatTerms(log_det, np.diagonal(hat, axis1=1, axis2=2), hat_s,
                    (fitted - np.matmul(gram, rows[:, :, 1:2])[:, :, 0]) / ridge, through[:, 0, :],
                    (coef - through[:, 1, :]) / ridge)


def coefficient_variances(problem: BatchProblem, intercept: np.ndarray, coef: np.ndarray,
                          full: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per problem, the variances of the intercept ``(E,)`` and coefficients ``(E, q)`` at
    ``(intercept, coef)`` (the optimum): ``1 / diag(H)`` (``full`` False, what GDMix calls
    "simple") or ``diag(H^-1)`` (the Laplace posterior's marginal variances).

    ``H = [[d, c'], [c, A]]`` with ``A = F'SF + rI``, ``c = F's``, ``d = sum s + r0``; by the block
    inverse, with ``sigma = d - c'A^-1 c``: ``(H^-1)_00 = 1 / sigma`` and
    ``diag(H^-1)_beta = diag(A^-1) + (A^-1 c)^2 / sigma``. With fewer rows than columns
    ``A^-1 = (I - G'M^-1 G) / r`` (Woodbury; ``G = S^1/2 F``, ``M = rI + GG'``), so only ``n x n``
    systems are solved. Padded columns get ``1 / r``, padded rows add nothing.
    """
    p = problem
    num, n, q = p.features.shape
    _, s = _curvature(p, intercept, coef)
    d = s.sum(axis=1) + p.intercept_ridge
    if not full:
        diagonal = np.einsum("en,enq->eq", s, p.features * p.features) + p.ridge[:, None]
        return 1.0 / _schur_floor(p, d), 1.0 / diagonal
    c = np.matmul(s[:, None, :], p.features)[:, 0, :]
    if n < q:
        g = np.sqrt(s)[:, :, None] * p.features
        m = np.matmul(g, g.transpose(0, 2, 1))
        m[:, np.arange(n), np.arange(n)] += p.ridge[:, None]
        solved = np.linalg.solve(m, np.concatenate([g, np.matmul(g, c[:, :, None])], axis=2))  # M^-1 [G, Gc]
        diagonal = (1.0 - np.einsum("enq,enq->eq", g, solved[:, :, :q])) / p.ridge[:, None]
        a_inv_c = (c - np.matmul(g.transpose(0, 2, 1), solved[:, :, q:])[:, :, 0]) / p.ridge[:, None]
    else:
        block = np.matmul(p.features.transpose(0, 2, 1) * s[:, None, :], p.features)
        block[:, np.arange(q), np.arange(q)] += p.ridge[:, None]
        inverse = np.linalg.inv(block)
        diagonal = np.diagonal(inverse, axis1=1, axis2=2).copy()
        a_inv_c = np.matmul(inverse, c[:, :, None])[:, :, 0]
    sigma = _schur_floor(p, d - np.einsum("eq,eq->e", c, a_inv_c))
    return 1.0 / sigma, diagonal + a_inv_c * a_inv_c / sigma[:, None]


@dataclass
class _State:
    """The working set: current point, linear predictor and objective of unfinished problems."""

    space: "_Primal | _RowSpace"
    index: np.ndarray  # positions in the full batch
    b: np.ndarray
    coef: np.ndarray
    z: np.ndarray
    value: np.ndarray

    def keep(self, mask: np.ndarray) -> "_State":
        return _State(self.space.take(np.flatnonzero(mask)), self.index[mask], self.b[mask], self.coef[mask],
                      self.z[mask], self.value[mask])


class _Primal:
    """Newton on ``beta`` itself: the ``q x q`` system (problems with at least as many rows
    as features)."""

    def __init__(self, problem: BatchProblem):
        self.problem = problem

    def take(self, index: np.ndarray) -> "_Primal":
        return _Primal(self.problem.take(index))

    def start(self, beta: np.ndarray) -> np.ndarray:
        return beta

    def finish(self, coef: np.ndarray) -> np.ndarray:
        return coef

    def predictor(self, b, coef) -> np.ndarray:
        p = self.problem
        return np.matmul(p.features, coef[:, :, None])[:, :, 0] + b[:, None] + p.offsets

    def objective(self, b, coef, z, rows=slice(None)) -> np.ndarray:
        """Penalised loss of problems ``rows`` at (b, coef) with linear predictor z."""
        p = self.problem
        penalty = p.intercept_ridge[rows] * b * b + p.ridge[rows] * np.einsum("eq,eq->e", coef, coef)
        return _loss(p, z, rows) + 0.5 * penalty

    def newton(self, b, beta, z):
        """(max |gradient|, (delta_b, delta_beta, delta_z, slope)) at the current point."""
        p = self.problem
        residual, s = _row_terms(p, z)
        products = np.matmul(np.stack([residual, s], axis=1), p.features)  # (E, 2, q): F'residual, F's
        grad_b = residual.sum(axis=1) + p.intercept_ridge * b
        grad_beta = products[:, 0, :] + p.ridge[:, None] * beta
        c = products[:, 1, :]
        gmax = np.maximum(np.abs(grad_b), np.abs(grad_beta).max(axis=1, initial=0.0))
        q = p.features.shape[2]
        if q == 0:
            delta_b = -grad_b / _schur_floor(p, s.sum(axis=1) + p.intercept_ridge)
            return gmax, (delta_b, np.zeros_like(beta), np.repeat(delta_b[:, None], p.features.shape[1], 1),
                          grad_b * delta_b)
        hessian = np.matmul(p.features.transpose(0, 2, 1) * s[:, None, :], p.features)
        hessian[:, np.arange(q), np.arange(q)] += p.ridge[:, None]
        solved = np.linalg.solve(hessian, np.stack([grad_beta, c], axis=2))
        u, v = solved[:, :, 0], solved[:, :, 1]
        schur = _schur_floor(p, s.sum(axis=1) + p.intercept_ridge - np.einsum("eq,eq->e", c, v))
        delta_b = -(grad_b - np.einsum("eq,eq->e", c, u)) / schur
        delta_beta = -u - v * delta_b[:, None]
        delta_z = np.matmul(p.features, delta_beta[:, :, None])[:, :, 0] + delta_b[:, None]
        slope = grad_b * delta_b + np.einsum("eq,eq->e", grad_beta, delta_beta)
        return gmax, (delta_b, delta_beta, delta_z, slope)


class _RowSpace:
    """Newton on ``a`` with ``beta = F' a``: all of it in the ``n``-dimensional row space.

    ``start`` projects a warm start onto the row space (the orthogonal part can only add
    penalty, so it is zero at the optimum); the penalty is ``r/2 a'Ka`` and a Newton step
    solves ``(S K + r I) X = [v, s]`` with ``v = w (mu - y) + r a`` (the gradient in
    ``beta`` is ``F' v``).
    """

    def __init__(self, problem: BatchProblem, gram: np.ndarray | None = None):
        self.problem = problem
        self.gram = np.matmul(problem.features, problem.features.transpose(0, 2, 1)) if gram is None else gram

    def take(self, index: np.ndarray) -> "_RowSpace":
        return _RowSpace(self.problem.take(index), self.gram[index])

    def start(self, beta: np.ndarray) -> np.ndarray:
        if not beta.any():
            return np.zeros(self.gram.shape[:2])
        n = self.gram.shape[1]
        jitter = 1e-12 * (np.trace(self.gram, axis1=1, axis2=2) / n + 1.0)
        regular = self.gram + jitter[:, None, None] * np.eye(n)
        projected = np.matmul(self.problem.features, beta[:, :, None])[:, :, 0]
        return np.linalg.solve(regular, projected[:, :, None])[:, :, 0]

    def finish(self, coef: np.ndarray) -> np.ndarray:
        return np.matmul(coef[:, None, :], self.problem.features)[:, 0, :]

    def predictor(self, b, coef) -> np.ndarray:
        return np.matmul(self.gram, coef[:, :, None])[:, :, 0] + b[:, None] + self.problem.offsets

    def objective(self, b, coef, z, rows=slice(None)) -> np.ndarray:
        """Penalised loss of problems ``rows``; the penalty is ``r/2 a'Ka`` (+ the intercept's)."""
        p = self.problem
        quadratic = np.einsum("en,en->e", coef, np.matmul(self.gram[rows], coef[:, :, None])[:, :, 0])
        return _loss(p, z, rows) + 0.5 * (p.intercept_ridge[rows] * b * b + p.ridge[rows] * quadratic)

    def newton(self, b, a, z):
        p, gram = self.problem, self.gram
        n = gram.shape[1]
        residual, s = _row_terms(p, z)
        v = residual + p.ridge[:, None] * a
        grad_b = residual.sum(axis=1) + p.intercept_ridge * b
        grad_beta = np.matmul(v[:, None, :], p.features)[:, 0, :]  # F'v, only to measure it
        gmax = np.maximum(np.abs(grad_b), np.abs(grad_beta).max(axis=1, initial=0.0))
        system = s[:, :, None] * gram
        system[:, np.arange(n), np.arange(n)] += p.ridge[:, None]
        solved = np.linalg.solve(system, np.stack([v, s], axis=2))  # (E, n, 2)
        moved = np.matmul(gram, solved)  # K X: the logit change of each column of X
        schur = _schur_floor(p, s.sum(axis=1) + p.intercept_ridge - np.einsum("en,en->e", s, moved[:, :, 1]))
        delta_b = (-grad_b + np.einsum("en,en->e", s, moved[:, :, 0])) / schur
        delta_a = -(solved[:, :, 0] + solved[:, :, 1] * delta_b[:, None])
        delta_z = delta_b[:, None] - moved[:, :, 0] - moved[:, :, 1] * delta_b[:, None]
        # grad_beta . delta_beta = v' K delta_a = v . (delta_z - delta_b)
        slope = grad_b * delta_b + np.einsum("en,en->e", v, delta_z - delta_b[:, None])
        return gmax, (delta_b, delta_a, delta_z, slope)


def _curvature(problem: BatchProblem, intercept: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and Hessian weights ``w mu (1 - mu)`` of every row at ``(intercept, coef)``."""
    z = np.matmul(problem.features, coef[:, :, None])[:, :, 0] + intercept[:, None] + problem.offsets
    return z, _row_terms(problem, z)[1]


def _row_terms(problem: BatchProblem, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row residual ``w (mu - y)`` and Hessian weight ``w mu (1 - mu)``."""
    mu = expit(z)
    return problem.weights * (mu - problem.labels), problem.weights * mu * (1.0 - mu)


def _loss(problem: BatchProblem, z: np.ndarray, rows=slice(None)) -> np.ndarray:
    return np.einsum("en,en->e", problem.weights[rows], log_loss_terms(z, problem.labels[rows]))


def _schur_floor(problem: BatchProblem, schur: np.ndarray) -> np.ndarray:
    return _floor(schur, problem.total_weight)


def _floor(schur: np.ndarray, total_weight: np.ndarray) -> np.ndarray:
    """The intercept's Schur complement, kept positive (it is 0 up to round-off when the rows
    cannot tell the intercept from the coefficients and the intercept is unpenalised)."""
    return np.maximum(schur, 1e-12 * np.maximum(total_weight, 1.0))


def _step_cap(problem: BatchProblem, delta_z, delta_b) -> np.ndarray:
    """Factor that shortens steps moving some row's logit by more than :data:`MAX_LOGIT_STEP`."""
    change = np.where(problem.weights > 0, np.abs(delta_z), 0.0).max(axis=1, initial=0.0)
    change = np.maximum(change, np.abs(delta_b))
    factor = np.ones_like(change)
    long_step = change > MAX_LOGIT_STEP
    factor[long_step] = MAX_LOGIT_STEP / change[long_step]  # inf -> 0: no step
    factor[np.isnan(change)] = 0.0
    return factor


def _line_search(state: _State, delta_b, delta_coef, delta_z, slope, moving) -> np.ndarray:
    """Backtracking Armijo search, vectorized: each problem halves its own step until accepted.

    The step is first capped in logit units. A step is also accepted when it changes the
    objective by no more than float64 round-off (the loss terms are positive and computed
    without cancellation, so that is a few ulps of the value): near the optimum the Armijo
    decrease is below the resolution of the summed loss, and the gradient test of the next
    iteration is the judge of convergence. Trial points reuse ``delta_z``, so a trial costs no
    matrix product. Returns the problems that could not move (stalled).
    """
    factor = _step_cap(state.space.problem, delta_z, delta_b)
    delta_b, delta_coef, delta_z, slope = delta_b * factor, delta_coef * factor[:, None], \
        delta_z * factor[:, None], slope * factor
    pending = np.flatnonzero(moving)
    step = np.ones(len(pending))
    roundoff = 8 * np.finfo(float).eps * (np.abs(state.value) + 1.0)
    for _ in range(MAX_HALVINGS):
        if pending.size == 0:
            break
        trial_b = state.b[pending] + step * delta_b[pending]
        trial_coef = state.coef[pending] + step[:, None] * delta_coef[pending]
        trial_z = state.z[pending] + step[:, None] * delta_z[pending]
        trial_value = state.space.objective(trial_b, trial_coef, trial_z, pending)
        ok = trial_value <= state.value[pending] + ARMIJO * step * slope[pending] + roundoff[pending]
        accepted = pending[ok]
        state.b[accepted], state.coef[accepted] = trial_b[ok], trial_coef[ok]
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


def single_row_hat(norm2: np.ndarray, s: np.ndarray, scale: np.ndarray, ridge: np.ndarray,
                   dimension: np.ndarray) -> HatTerms:
    """:class:`HatTerms` of one-row problems (row ``x``, ``|x|^2 = norm2``, ``beta = scale x``) in
    closed form, in the basis ``x / |x|`` (``m = 1``): ``A = s xx' + rI`` has ``A^-1 x = x / D``
    with ``D = s|x|^2 + r`` and ``det A = r^q (1 + s|x|^2 / r)``, so :class:`LaplaceOptimum`
    covers them with ``n = 1``."""
    denominator = s * norm2 + ridge
    norm = np.sqrt(norm2)
    return HatTerms(dimension * np.log(ridge) + np.log1p(s * norm2 / ridge), (norm2 / denominator)[:, None],
                    (s * norm2 / denominator)[:, None], (scale * norm2 / denominator)[:, None],
                    (s * norm / denominator)[:, None], (scale * norm / denominator)[:, None])
