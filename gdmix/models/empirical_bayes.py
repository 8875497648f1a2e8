"""``l2: auto``: a random effect's ridge learned as the prior precision that maximises the
Laplace approximation of the coordinate's marginal likelihood (the evidence).

Given ``l2`` the entities are independent, so the evidence and its derivative with respect to
``log l2`` are sums over entities of what each one's solve has at its optimum
(:class:`gdmix.solvers.batched_newton.LaplaceTerms`): :func:`laplace_log_evidence` turns those
into the two numbers, and :func:`estimate_l2` finds the root of the derivative. The derivative
is exact, so the search needs far fewer solves than one comparing values alone: a bracket from
two points, then one interpolated point, is usually the answer.

With ``per_group`` the intercept has a ridge of its own, and :func:`estimate_l2_per_group`
maximises the evidence over both (a 2-D search on the exact gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gdmix.solvers.batched_newton import LaplaceTerms

#: ``l2: auto`` stops when the estimate of ``log l2`` is this precise (1 % in ``l2``)
L2_SEARCH_XTOL = 0.01
#: the first step of that search in ``log l2`` (a quarter of it from a previous estimate)
L2_SEARCH_STEP = 1.0
#: the range of ``log l2`` searched (a prior standard deviation between about 1e-3 and 1e3)
L2_SEARCH_BOUNDS = (-6 * np.log(10.0), 6 * np.log(10.0))
#: a slope reversal ends the search's stepping when the maximum it brackets stands this far (in
#: log evidence: a Bayes factor of e) above the evidence at both ends; a shallower one may be a
#: ripple on a still rising evidence, which stepping on (while the evidence grows) steps over
L2_SEARCH_CLEAR_MAXIMUM = 1.0
#: a safeguard: the search settles for the best point it has after this many solves (it takes 2-4;
#: ``per_group``, 4-6 warm and 5-11 cold)
L2_SEARCH_MAX_EVALUATIONS = 30
#: a ``per_group`` search's Newton step moves each log ridge by at most this many first steps
L2_SEARCH_MAX_STEPS = 4
#: secant pairs closer to collinear than this sine do not tell a 2-D Hessian
_COLLINEAR = 0.2


def laplace_log_evidence(terms: LaplaceTerms, dimension, l2: float, intercept_ridge: np.ndarray,
                         intercept_slope: np.ndarray, coef_slope: float = 1.0) -> tuple[float, float]:
    """Sums over problems of the Laplace log marginal likelihood, up to terms free of the ridges,
    and of its derivative along the direction ``terms`` were taken in: ``-f* + d/2 log l2 + 1/2 log
    r0 - 1/2 log det H`` with ``d`` coefficients under the prior ``N(0, I / l2)`` and the intercept
    under ``N(0, 1 / r0)`` where it is penalised (an unpenalised intercept has a flat prior: a
    constant). The direction is ``d/d log l2`` with ``d r0 / d l2 = intercept_slope`` (1 where
    ``r0`` is ``l2`` itself, 0 where it is fixed) and ``coef_slope`` 1; ``d/d log r0`` alone is
    ``intercept_slope = r0 / l2`` with ``coef_slope`` 0 (see
    :meth:`gdmix.solvers.batched_newton.LaplaceOptimum.terms`). The ``2 pi`` factors of the prior
    and of the Gaussian integral cancel."""
    penalised = intercept_ridge > 0
    ridge = np.where(penalised, intercept_ridge, 1.0)
    prior = 0.5 * dimension * np.log(l2) + 0.5 * np.where(penalised, np.log(ridge), 0.0)
    prior_slope = 0.5 * dimension * coef_slope + 0.5 * np.where(penalised, l2 * intercept_slope / ridge, 0.0)
    return (float(np.sum(-terms.value + prior - 0.5 * terms.log_det)),
            float(np.sum(-terms.value_slope + prior_slope - 0.5 * terms.log_det_slope)))


@dataclass
class _Point:
    """One ``log l2`` the search solved at (with ``per_group``, ``(log l2, log intercept_l2)``):
    the evidence there, its slope (gradient), and the solution while it is still needed (the best
    so far, or the next solve's warm start)."""

    x: float
    value: float
    slope: float
    solution: object | None


class _Search:
    """The points solved so far, each solve warm-started from the solution at the nearest
    ``log l2`` already solved, and at most three solutions alive: the best so far, the next
    solve's start and the one being computed."""

    def __init__(self, problem, start):
        self.problem, self.start, self.points = problem, start, []

    def solve(self, x) -> _Point:
        kept = [p for p in self.points if p.solution is not None]
        origin = min(kept, key=lambda p: _distance(p.x, x)).solution if kept else self.start
        point = self._point(x, origin)
        self.points.append(point)
        best = self.best()
        for other in kept:  # the newest point is the next start; the best is the answer so far
            if other is not best:
                other.solution = None
        return point

    def best(self) -> _Point:
        return _best(self.points)

    def _point(self, x: float, origin) -> _Point:
        solution = self.problem.solve(float(np.exp(x)), origin, evidence=True)
        return _Point(x, solution.log_evidence, solution.log_evidence_slope, solution)


class _PerGroupSearch(_Search):
    """:class:`_Search` over ``x = (log l2, log intercept_l2)``: the slope is the evidence's
    gradient there."""

    def _point(self, x: np.ndarray, origin) -> _Point:
        solution = self.problem.solve(float(np.exp(x[0])), origin, evidence=True, intercept_l2=float(np.exp(x[1])))
        return _Point(x, solution.log_evidence,
                      np.array([solution.log_evidence_slope, solution.log_evidence_intercept_slope]), solution)


def _distance(a, b) -> float:
    return float(np.max(np.abs(np.subtract(a, b))))


def estimate_l2(problem, initial_l2: float, start):
    """The ``l2`` (prior precision ``1 / sigma^2`` of every entity's coefficients) that maximises
    the Laplace evidence of ``problem``, and the solution there (``evaluations``: the solves it
    took).

    ``problem`` is anything with ``solve(l2, start, evidence=True)`` returning a solution whose
    ``EVIDENCE_FIELDS`` (``log_evidence``, ``log_evidence_slope``) are sums over entities, so a
    problem made of partitions can add its partitions' fields up. The search runs in ``log l2``
    from ``initial_l2`` (the last pass's estimate on a warm pass, when ``start.l2`` is set): it
    steps uphill (the slope's way) by a fixed step while the evidence grows, which brackets the
    maximiser and steps over a hump narrower than a step, but stops as soon as the slope turns
    around a clear maximum (:data:`L2_SEARCH_CLEAR_MAXIMUM`); then it refines inside the bracket
    with the exact slopes (:func:`_next_log_l2`).
    """
    low, high = L2_SEARCH_BOUNDS
    width = L2_SEARCH_STEP if start.l2 is None else L2_SEARCH_STEP / 4  # a warm pass starts near the optimum
    search = _Search(problem, start)
    point = search.solve(float(np.clip(np.log(initial_l2), low, high)))
    step = width * np.sign(point.slope)
    while step and (ahead := float(np.clip(point.x + step, low, high))) != point.x:
        previous, point = point, search.solve(ahead)
        if point.value <= previous.value or _hump(previous, point) >= L2_SEARCH_CLEAR_MAXIMUM:
            break
    while len(search.points) < L2_SEARCH_MAX_EVALUATIONS and (target := _next_log_l2(search.points)) is not None:
        search.solve(target)
    best = search.best()
    best.solution.evaluations = len(search.points)
    return best.solution


def initial_ridges(init: float, previous_l2: float | None, previous_intercept_l2: float | None
                   ) -> tuple[float, float]:
    """Where a ``per_group`` search starts, ``(l2, intercept_l2)``: the previous pass's estimates
    (for the intercept, a pass without ``per_group`` left the shared ``l2``), else ``init``."""
    l2 = init if previous_l2 is None else previous_l2
    return l2, l2 if previous_intercept_l2 is None else previous_intercept_l2


def estimate_l2_per_group(problem, initial_l2: float, initial_intercept_l2: float, start):
    """``l2: auto`` with ``per_group``: the coefficients' ridge ``l2`` and the intercept's
    ``intercept_l2`` that together maximise the Laplace evidence of ``problem``, and the solution
    there (``intercept_l2`` and ``evaluations`` set on it).

    ``problem`` is anything with ``solve(l2, start, evidence=True, intercept_l2=...)`` returning a
    solution whose ``EVIDENCE_FIELDS`` hold the evidence and its gradient in ``(log l2, log
    intercept_l2)`` (``log_evidence_slope``, ``log_evidence_intercept_slope``), sums over
    entities. The search runs in ``x = (log l2, log intercept_l2)`` from the initial ridges, each
    solve warm-started from the nearest solved point: a first probe of :data:`L2_SEARCH_STEP`
    (a quarter of it on a warm pass, when ``start.l2`` is set) uphill in each coordinate, then
    Newton steps from the best point with the evidence's exact gradient there and its Hessian
    from the gradients' differences (:class:`_Region`), until that step is below half of
    :data:`L2_SEARCH_XTOL` in both.
    """
    low, high = L2_SEARCH_BOUNDS
    width = L2_SEARCH_STEP if start.l2 is None else L2_SEARCH_STEP / 4
    search = _PerGroupSearch(problem, start)
    search.solve(np.clip(np.log([initial_l2, initial_intercept_l2]), low, high))
    region = _Region(width)
    while len(search.points) < L2_SEARCH_MAX_EVALUATIONS and (target := region.next(search.points)) is not None:
        search.solve(target)
    best = search.best()
    best.solution.evaluations = len(search.points)
    best.solution.intercept_l2 = float(np.exp(best.x[1]))
    return best.solution



class _Region:
    """The steps of :func:`estimate_l2_per_group` (a trust region): Newton steps from the best
    point, each coordinate's at most ``L2_SEARCH_MAX_STEPS`` first steps, and at most half the way
    to the last point tried when that one came out worse than the best (its secant pair then
    corrects the Hessian, and the region shrinks until a step succeeds or lies within the
    tolerance)."""

    def __init__(self, width: float):
        self.width, self.radius = width, L2_SEARCH_MAX_STEPS * width

    def next(self, points: list[_Point]) -> np.ndarray | None:
        """Where to solve next, or None once the best point is within the tolerance of the
        maximiser (the Newton step from it, with a Hessian told by two independent secant pairs, is
        below half of it: even a curvature off by 2x keeps the error within the tolerance), or on
        the edge of the range with the evidence growing outwards in every coordinate not
        converged."""
        low, high = L2_SEARCH_BOUNDS
        best, last = _best(points), points[-1]
        if last is not best and len(points) > 1:
            self.radius = min(self.radius, _distance(last.x, best.x) / 2)
        elif len(points) > 1:
            self.radius = L2_SEARCH_MAX_STEPS * self.width
        if self.radius < L2_SEARCH_XTOL / 2:
            return None
        free = ~(((best.x <= low) & (best.slope < 0)) | ((best.x >= high) & (best.slope > 0)))
        if not free.any():
            return None
        step, told = _newton_step(best, points, free)
        if step is None:  # no concave curvature known: uphill, twice as far as the nearest point (a bracket)
            reach = max(self.width, 2 * min((_distance(p.x, best.x) for p in points if p is not best), default=0.0))
            step = np.where(free, reach * np.sign(best.slope), 0.0)
        elif told and np.abs(step).max() < L2_SEARCH_XTOL / 2:
            return None
        elif not told:  # make sure the next pair tells the Hessian
            step = _off_line(step, points, best, free, self.width)
        step = step * min(1.0, self.radius / max(np.abs(step).max(), np.finfo(float).tiny))
        target = np.clip(best.x + step, low, high)
        return None if _distance(target, best.x) < L2_SEARCH_XTOL / 4 else target


def _pairs(best: _Point, points: list[_Point], free: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The secant pairs ``(dx, dslope)`` from the best point to the others, nearest first, in the
    free coordinates (a pair that moved a fixed one would mix in a curvature not estimated)."""
    others = sorted((p for p in points if p is not best), key=lambda p: _distance(p.x, best.x))
    return [((p.x - best.x)[free], (p.slope - best.slope)[free]) for p in others
            if not np.any((p.x - best.x)[~free]) and np.any((p.x - best.x)[free])]


def _newton_step(best: _Point, points: list[_Point], free: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """The Newton step from ``best`` in the free coordinates (None while no concave curvature is
    known there), and whether the Hessian was told by enough pairs: one along the single free
    coordinate, or two not collinear (the symmetric Hessian fitted to both, the nearer weighing
    more); else, or when that fit is not concave, the diagonal is guessed from the nearest pair."""
    pairs = _pairs(best, points, free)
    if not pairs:
        return None, False
    dx, dslope = pairs[0]
    second = next((pair for pair in pairs[1:] if len(dx) == 2 and _sine(dx, pair[0]) >= _COLLINEAR), None)
    with np.errstate(divide="ignore", invalid="ignore"):
        guesses = [(np.diag(np.where(dx != 0, dslope / dx, np.nan)), len(dx) == 1)]
    if second is not None:
        guesses.insert(0, (_symmetric_fit([pairs[0], second]), True))
    for hessian, told in guesses:
        if np.isfinite(hessian).all() and np.all(np.linalg.eigvalsh(hessian) < 0):
            step = np.zeros(len(free))
            step[free] = -np.linalg.solve(hessian, best.slope[free])
            return step, told
    return None, False


def _symmetric_fit(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The symmetric 2 x 2 ``H`` with ``H dx = dslope`` for both pairs, in the least-squares sense
    (four equations, three unknowns), each pair's equations divided by ``|dx|^2``: the nearer pair
    (the curvature nearer the best point) weighs more."""
    rows, values = [], []
    for dx, dslope in pairs:
        scale = dx @ dx
        rows += [[dx[0] / scale, dx[1] / scale, 0.0], [0.0, dx[0] / scale, dx[1] / scale]]
        values += list(dslope / scale)
    a, b, c = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)[0]
    return np.array([[a, b], [b, c]])


def _sine(a: np.ndarray, b: np.ndarray) -> float:
    """``|sin|`` of the angle between two 2-vectors."""
    return float(abs(a[0] * b[1] - a[1] * b[0]) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _off_line(step: np.ndarray, points: list[_Point], best: _Point, free: np.ndarray, width: float) -> np.ndarray:
    """``step``, unless it is too short or too close to the line of the one secant pair known to
    tell the Hessian's other direction: then a probe of the first step's width across that line,
    uphill."""
    pairs = _pairs(best, points, free)
    if not pairs or len(dx := pairs[0][0]) != 2 or (np.abs(step).max() >= width / 4
                                                    and _sine(dx, step[free]) >= _COLLINEAR):
        return step
    across = np.zeros(len(free))
    across[free] = np.array([-dx[1], dx[0]]) / np.abs(dx).max()
    return width * across * (1.0 if across @ best.slope >= 0 else -1.0)


def _next_log_l2(points: list[_Point]) -> float | None:
    """Where to solve next inside the bracket, or None once the best point is within
    :data:`L2_SEARCH_XTOL` of the maximiser (or lies at the edge of the range with the evidence
    still growing outwards).

    Uphill of the best point (its slope's way) the nearest point solved there closes the
    bracket (the evidence is lower there, so it turned); the next point is the maximiser of the
    cubic matching the two points' values and slopes. The best point is the answer once that
    step is below half the tolerance: the step comes from the exact slope at the best point, so
    even a curvature off by 2x keeps the error within the tolerance.
    """
    best = _best(points)
    uphill = np.sign(best.slope)
    ahead = [p for p in points if (p.x - best.x) * uphill > 0]
    if not ahead:  # a zero slope, or the bound with the evidence still growing outwards
        return None
    end = min(ahead, key=lambda p: abs(p.x - best.x))
    if abs(end.x - best.x) <= L2_SEARCH_XTOL:
        return None
    target = _inside(best, end)
    return None if abs(target - best.x) < L2_SEARCH_XTOL / 2 else target


def _best(points: list[_Point]) -> _Point:
    return max(points, key=lambda p: p.value)


def _inside(best: _Point, end: _Point) -> float:
    """The next point strictly inside the bracket ``(best, end)``: the cubic's maximiser, else the
    secant root of the slope, else the midpoint; at least half the tolerance from ``end`` (next
    to ``best`` it means convergence)."""
    lower, upper = sorted((best.x, end.x))
    target = _cubic_maximiser(best, end)
    if not lower < target < upper:
        target = _secant_root(best, end)
    if not lower < target < upper:
        target = 0.5 * (lower + upper)
    margin = L2_SEARCH_XTOL / 2
    return float(np.clip(target, end.x + margin, best.x) if end.x < best.x else np.clip(target, best.x, end.x - margin))


def _hump(a: _Point, b: _Point) -> float:
    """How far the maximum of the cubic with the values and slopes of ``a`` and ``b`` stands above
    the better of the two, when the slopes turn between them (0 otherwise)."""
    peak = _cubic_maximiser(a, b)
    if not (a.slope * (b.x - a.x) > 0 > b.slope * (b.x - a.x) and min(a.x, b.x) < peak < max(a.x, b.x)):
        return 0.0
    h = b.x - a.x
    s = (peak - a.x) / h
    value = ((2 * s ** 3 - 3 * s ** 2 + 1) * a.value + (s ** 3 - 2 * s ** 2 + s) * h * a.slope
             + (3 * s ** 2 - 2 * s ** 3) * b.value + (s ** 3 - s ** 2) * h * b.slope)  # cubic Hermite
    return value - max(a.value, b.value)


def _secant_root(a: _Point, b: _Point) -> float:
    """Where the slope, linear through ``a`` and ``b``, is 0 (nan when it is equal at both)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(a.x - a.slope * (a.x - b.x) / np.float64(a.slope - b.slope))


def _cubic_maximiser(a: _Point, b: _Point) -> float:
    """The local maximiser of the cubic with the values and slopes of ``a`` and ``b`` (nan when
    it has none): Nocedal & Wright's (3.59) on the negated evidence."""
    with np.errstate(divide="ignore", invalid="ignore"):
        da, db = -a.slope, -b.slope  # the negated evidence's slopes and values
        d1 = da + db - 3 * (b.value - a.value) / np.float64(a.x - b.x)
        d2 = np.sign(b.x - a.x) * np.sqrt(np.float64(d1 * d1 - da * db))
        return float(b.x - (b.x - a.x) * (db + d2 - d1) / (db - da + 2 * d2))
