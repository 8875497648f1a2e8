"""L-BFGS-B driver: scipy's optimizer with stopping rules that certify the optimum.

scipy's default rule (``factr``: a small *relative decrease* of the objective) fires on a summed
loss of many rows while coefficients are still visibly off.
Here the decisive rule is the gradient: stop when ``gradient_measure(grad) <= gtol * scale``
(the caller passes the total sample weight as ``scale``, making ``gtol`` independent of data
size), and the relative-decrease rule is left on only at round-off level. The measure is the
caller's because the optimised variables may be a reparametrisation of the model's
coefficients (see :mod:`gdmix.models.fixed_effect`), and the rule must hold for the latter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

ValueAndGradient = Callable[[np.ndarray], tuple[float, np.ndarray]]


@dataclass(frozen=True)
class LbfgsResult:
    x: np.ndarray
    value: float
    gradient_max: float
    iterations: int
    evaluations: int
    converged: bool
    message: str


def minimize_lbfgs(
    value_and_gradient: ValueAndGradient,
    x0: np.ndarray,
    *,
    max_iter: int,
    gtol: float,
    ftol: float,
    history: int,
    scale: float = 1.0,
    gradient_measure: Callable[[np.ndarray], float] | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
) -> LbfgsResult:
    """Minimise a smooth function given as (value, gradient) in float64.

    ``converged`` reports whether the gradient rule holds at the returned point, whatever
    internal reason scipy gave for stopping (a line search that cannot improve a point already
    at round-off level is a success; one that stops far from the optimum is not).
    """
    x0 = np.asarray(x0, dtype=np.float64)
    gradient_limit = gtol * max(scale, 1.0)
    measure = gradient_measure or _max_abs
    evaluations = 0
    last = {"x": None, "gradient": None}

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evaluations
        evaluations += 1
        value, gradient = value_and_gradient(x)
        gradient = np.asarray(gradient, dtype=np.float64)
        last["x"], last["gradient"] = x.copy(), gradient
        return float(value), gradient

    iteration = 0
    stopped = False

    def callback(intermediate_result) -> None:  # scipy passes an OptimizeResult by this name
        nonlocal iteration, stopped
        iteration += 1
        if on_iteration is not None:
            on_iteration(iteration, float(intermediate_result.fun))
        # L-BFGS-B evaluates each accepted iterate before calling back, so the cached gradient
        # belongs to it
        if np.array_equal(last["x"], intermediate_result.x) and measure(last["gradient"]) <= gradient_limit:
            stopped = True
            raise StopIteration

    if max_iter == 0:
        value, gradient = fun(x0)
        grad_max = measure(gradient)
        return LbfgsResult(x0, value, grad_max, 0, evaluations, grad_max <= gradient_limit, "max_iter is 0")

    result = minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={
            "maxiter": max_iter,
            "maxcor": history,
            "ftol": ftol,
            "gtol": 0.0 if gradient_measure else gradient_limit,
            "maxfun": max(15000, 20 * max_iter),
            "maxls": 50,
        },
    )
    x, value, gradient = np.asarray(result.x, dtype=np.float64), float(result.fun), np.asarray(result.jac)
    message = "gradient tolerance reached" if stopped else str(result.message)
    if measure(gradient) > gradient_limit and result.nit < max_iter:
        # L-BFGS-B stopped short of the gradient rule before its iteration budget: its line
        # search can no longer see decreases below the round-off of the objective's value.
        polished = polish_newton_cg(fun, x, gradient, measure, gradient_limit)
        if polished is not None:
            x, value, gradient = polished
            message = "gradient tolerance reached after a Newton-CG polish"
    grad_max = measure(gradient)
    return LbfgsResult(
        x=x,
        value=value,
        gradient_max=grad_max,
        iterations=int(result.nit),
        evaluations=evaluations,
        converged=grad_max <= gradient_limit,
        message=message,
    )


def polish_newton_cg(
    value_and_gradient: ValueAndGradient,
    x: np.ndarray,
    gradient: np.ndarray,
    measure: Callable[[np.ndarray], float],
    limit: float,
    *,
    steps: int = 3,
    cg_iterations: int = 25,
):
    """Newton steps from gradients alone, to finish where a value-based line search cannot.

    Near the optimum, objective differences fall below the resolution of the objective's
    float64 value (for a loss summed over many rows), so L-BFGS-B stops while the gradient,
    which has no such floor, still says how far the optimum is. Here each step solves
    ``H d = -g`` by conjugate gradients with Hessian-vector products from gradient
    differences, and is kept only if it shrinks the gradient. Returns (x, value, gradient), or
    None if no step helped.
    """
    improved = None
    for _ in range(steps):
        direction = _conjugate_gradient(value_and_gradient, x, gradient, cg_iterations)
        if direction is None:
            break
        value, new_gradient = value_and_gradient(x + direction)
        if measure(new_gradient) >= measure(gradient):
            break
        x, gradient, improved = x + direction, np.asarray(new_gradient), (x + direction, value, new_gradient)
        if measure(gradient) <= limit:
            break
    return improved


def _conjugate_gradient(value_and_gradient, x, gradient, iterations):
    """Approximately solve ``H d = -g`` with ``H v ~ (g(x + h v) - g(x)) / h``."""
    direction = np.zeros_like(x)
    residual = -gradient
    search = residual.copy()
    norm = residual @ residual
    target = 1e-6 * np.sqrt(norm)  # a Newton step need not be exact; 1e-6 relative is plenty
    for _ in range(iterations):
        size = np.sqrt(search @ search)
        if size == 0:
            break
        step = np.sqrt(np.finfo(float).eps) * (1.0 + np.max(np.abs(x))) / size
        product = (np.asarray(value_and_gradient(x + step * search)[1]) - gradient) / step
        curvature = search @ product
        if curvature <= 0:  # not positive definite along this direction: stop here
            break
        alpha = norm / curvature
        direction += alpha * search
        residual -= alpha * product
        new_norm = residual @ residual
        if np.sqrt(new_norm) <= target:
            break
        search = residual + (new_norm / norm) * search
        norm = new_norm
    return direction if np.any(direction) else None


def _max_abs(gradient: np.ndarray) -> float:
    return float(np.max(np.abs(gradient))) if gradient.size else 0.0


def minimize_lbfgs_in_segments(
    value_and_gradient: ValueAndGradient,
    x0: np.ndarray,
    *,
    segment: int,
    max_iter: int,
    start_iteration: int = 0,
    on_segment: Callable[[np.ndarray, int], None] | None = None,
    **options,
) -> LbfgsResult:
    """L-BFGS-B restarted every ``segment`` iterations, with a hook at each restart.

    The restart points are where a checkpoint can be taken: resuming from the point saved
    after a segment is bit-for-bit the same computation as not having stopped, because an
    uninterrupted run restarts there too (it only gives up the curvature memory, a few extra
    iterations). ``on_segment(x, iterations_done)`` runs after every segment.
    """
    x, done, evaluations = np.asarray(x0, dtype=np.float64), start_iteration, 0
    report = options.pop("on_iteration", None)
    while True:
        budget = max(0, min(segment, max_iter - done))
        on_iteration = None if report is None else (lambda it, value, base=done: report(base + it, value))
        result = minimize_lbfgs(value_and_gradient, x, max_iter=budget, on_iteration=on_iteration, **options)
        x, done, evaluations = result.x, done + result.iterations, evaluations + result.evaluations
        if on_segment is not None:
            on_segment(x, done)
        if result.converged or done >= max_iter or result.iterations < budget:
            return LbfgsResult(x, result.value, result.gradient_max, done, evaluations, result.converged,
                               result.message)
