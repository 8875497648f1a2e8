"""Fixed effect: one global L2 logistic regression, TensorFlow loss/gradient + scipy L-BFGS-B.

Objective (a sum over rows, as in GDMix and Photon ML, so ``l2`` does not depend on data size)::

    F(beta, b) = sum_i w_i * CE(y_i, x_i . beta + b + o_i) + l2/2 * ||beta||^2  (+ l2/2 * b^2)

The data is converted once into tensors (CSR: row splits, column ids and values) and every
L-BFGS evaluation is one call of a ``tf.function`` around a fused native op; nothing is
re-read per iteration. The data
term and the penalty are kept apart (:class:`TfLogisticLoss` computes only the data term) so
that a distributed run can sum the data term across workers and add the penalty once.

With ``variance: simple | full`` the model also carries its coefficients' variances at the
optimum, ``1 / diag(H)`` or ``diag(H^-1)`` of the objective's Hessian ``H`` (the data term's,
summed the same way, plus the penalty): see :meth:`FixedEffectProblem.variances`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.linalg
import scipy.sparse as sp

from gdmix.config import FixedEffectConfig
from gdmix.errors import ConfigError, DataError, GdmixError
from gdmix.features.index_map import IndexMap
from gdmix.models.linear import (
    FIXED_EFFECT_SCHEMA, MAX_DENSE_HESSIAN, VARIANCE_COLUMN, check_unique_coefficients, is_intercept, names_and_terms,
)
from gdmix.distributed.collective import Collective, SingleProcess, check_identical
from gdmix.io.checkpoint import Checkpoint
from gdmix.losses.logistic_tf import TfLogisticLoss
from gdmix.solvers.lbfgs import minimize_lbfgs, minimize_lbfgs_in_segments
from gdmix.sparse import weighted_column_sums


@dataclass(frozen=True)
class FixedEffectVariances:
    """Variances of the intercept and of every coefficient (``variance: simple | full``); NaN:
    not known (a coefficient missing from the table it was read from)."""

    intercept: float
    coef: np.ndarray

    def of_theta(self) -> np.ndarray:
        """Laid out as ``theta = [b, beta]``."""
        return np.concatenate([[self.intercept], self.coef])


@dataclass(frozen=True)
class FixedEffectModel:
    """Intercept plus one coefficient per column of the bag's index map."""

    intercept: float
    coef: np.ndarray
    variances: FixedEffectVariances | None = None

    def score(self, features: sp.csr_matrix) -> np.ndarray:
        """This coordinate's logit for each row (without any offset)."""
        return features @ self.coef + self.intercept

    def sample(self, rng: np.random.Generator) -> "FixedEffectModel":
        """A draw from the (diagonal) Laplace posterior: every coefficient plus normal noise of
        its saved variance, for exploration (Thompson sampling); unknown (NaN) ones keep their mean."""
        if self.variances is None:
            raise GdmixError("this fixed effect has no variances to sample from (trained with variance: none)")
        spread = np.sqrt(np.nan_to_num(self.variances.of_theta(), nan=0.0))
        theta = np.concatenate([[self.intercept], self.coef]) + rng.standard_normal(len(spread)) * spread
        return dataclasses.replace(self, intercept=float(theta[0]), coef=theta[1:])

    def to_table(self, index_map: IndexMap) -> pa.Table:
        """Rows ``name, term, value``: the intercept, then the non-zero coefficients. With
        variances, every coefficient (a zero one has a variance too) and a ``variance`` column."""
        if self.variances is None:
            columns = np.concatenate([[-1], np.flatnonzero(self.coef)])
        else:
            columns = np.arange(-1, len(self.coef))
        names, terms = names_and_terms(index_map, columns)
        values = np.concatenate([[self.intercept], self.coef[columns[1:]]])
        table = pa.table([names, terms, pa.array(values)], schema=FIXED_EFFECT_SCHEMA)
        if self.variances is None:
            return table
        return table.append_column(pa.field(VARIANCE_COLUMN, pa.float64()), pa.array(self.variances.of_theta()))

    @classmethod
    def from_table(cls, table: pa.Table, index_map: IndexMap, source: str = "model") -> "FixedEffectModel":
        """Read a coefficient table (with its variances, if it has them); features missing from
        ``index_map`` are dropped."""
        check_unique_coefficients(table, ["name", "term"], source)
        intercept_rows = is_intercept(table)
        index = index_map.lookup(table.column("name"), table.column("term"))
        known = (index >= 0) & ~intercept_rows

        def laid_out(column: str, missing: float) -> tuple[float, np.ndarray]:
            values = table.column(column).to_numpy()
            coef = np.full(len(index_map), missing)
            coef[index[known]] = values[known]
            return float(values[intercept_rows].sum()) if intercept_rows.any() else missing, coef

        intercept, coef = laid_out("value", 0.0)
        variances = None
        if VARIANCE_COLUMN in table.column_names:
            variances = FixedEffectVariances(*laid_out(VARIANCE_COLUMN, np.nan))
        return cls(intercept, coef, variances)


@dataclass(frozen=True)
class FixedEffectReport:
    iterations: int
    evaluations: int
    converged: bool
    gradient_max: float  # max |gradient| / total weight, the quantity gtol bounds
    objective: float
    message: str
    memory_bytes: int = 0  # this worker's in-memory data
    nonzero_bytes: int = 0  # ... of which per non-zero (the rest is per row)
    nonzeros: int = 0  # this worker's non-zeros

    def as_dict(self) -> dict:
        return {
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "converged": self.converged,
            "gradient_max_per_weight": self.gradient_max,
            "objective": self.objective,
            "message": self.message,
            "memory_bytes": self.memory_bytes,
            "bytes_per_nonzero": self.nonzero_bytes / max(self.nonzeros, 1),
        }


def _check_finite_optimum(labels: np.ndarray, weights: np.ndarray, config: FixedEffectConfig,
                          collective: Collective) -> None:
    """With an unpenalised intercept, one-label training data has no finite optimum."""
    positive, negative = collective.sum(np.array([np.dot(weights, labels), np.dot(weights, 1.0 - labels)]))
    if (positive == 0 or negative == 0) and not config.regularize_intercept:
        raise DataError(
            f"every training row with positive weight has label {int(positive > 0)}: fixed effect "
            f"'{config.name}' has an unpenalised intercept and no finite optimum "
            "(add rows of the other label or set regularize_intercept: true)",
            column="label",
        )


def _check_variance_dimension(config: FixedEffectConfig, num_features: int) -> None:
    """``variance: full`` inverts the dense Hessian: refuse before training when it is too large."""
    if config.variance == "full" and num_features + 1 > MAX_DENSE_HESSIAN:
        raise ConfigError(f"fixed effect '{config.name}': variance: full inverts a dense Hessian of "
                          f"{num_features + 1:,} coefficients, more than the {MAX_DENSE_HESSIAN:,} it allows; "
                          "use variance: simple")


def variances_from_hessian(hessian: np.ndarray, penalty: np.ndarray, name: str) -> np.ndarray:
    """The variances of ``theta = [b, beta]`` given the data term's Hessian at the optimum
    (its diagonal: ``1 / diag(H)``, "simple"; the whole matrix: ``diag(H^-1)``, "full") and the
    penalty vector: ``H`` is their sum. ``diag(H^-1)`` is the column sums of squares of
    ``L^-1`` (``H = LL'``), a triangular solve instead of a general inverse."""
    if hessian.ndim == 1:
        return 1.0 / (hessian + penalty)
    try:
        lower = np.linalg.cholesky(hessian + np.diag(penalty))
    except np.linalg.LinAlgError:
        raise GdmixError(f"fixed effect '{name}': its Hessian at the optimum is not positive definite, "
                         "so it has no variances (variance: full)") from None
    inverse = scipy.linalg.solve_triangular(lower, np.eye(len(penalty)), lower=True)
    return np.einsum("ij,ij->j", inverse, inverse)


def penalty_vector(num_features: int, l2: float, regularize_intercept: bool) -> np.ndarray:
    """Per-coefficient L2 weights for ``theta = [b, beta]``."""
    weights = np.full(num_features + 1, float(l2))
    if not regularize_intercept:
        weights[0] = 0.0
    return weights


@dataclass(frozen=True)
class Standardization:
    """An exact change of variables that makes L-BFGS fast on real feature bags.

    The optimiser works on ``phi`` with ``beta = s * phi_beta`` and ``b = s_b * phi_b - m . beta``:
    implicitly centred (weighted means ``m``) and scaled (``s`` ~ 1/sqrt of the Hessian diagonal
    at p = 1/2) features, without ever densifying the sparse design. The objective is still
    evaluated in the model's own coefficients, so the optimum is unchanged; only the spectrum the
    optimiser sees is better. On MovieLens' one-hot bags (gender M + F = 1 mirrors the
    intercept) L-BFGS then needs 31 iterations to get within 1e-9 of the optimum, instead of
    600+ to get within 1e-3 (bench/fixed_effect.py, docs/benchmarks.md).
    """

    means: np.ndarray
    scales: np.ndarray
    intercept_scale: float

    @classmethod
    def from_data(cls, features: sp.csr_matrix, weights: np.ndarray, penalty: np.ndarray,
                  collective: Collective = SingleProcess()) -> "Standardization":
        """From weighted first and second moments of the features, summed over all workers
        (the squares a block of rows at a time: never a second copy of the data)."""
        local = np.concatenate([[weights.sum()], weighted_column_sums(features, weights),
                                weighted_column_sums(features, weights, squared=True)])
        sums = collective.sum(local)
        width = features.shape[1]
        total = max(float(sums[0]), np.finfo(float).tiny)
        means = sums[1:1 + width] / total
        variance = np.maximum(sums[1 + width:] / total - means**2, 0.0)
        curvature = 0.25 * total * variance + penalty[1:]
        scales = 1.0 / np.sqrt(np.where(curvature > 0, curvature, 1.0))
        return cls(means, scales, 1.0 / np.sqrt(0.25 * total + penalty[0]))

    def to_model(self, phi: np.ndarray) -> np.ndarray:
        beta = self.scales * phi[1:]
        return np.concatenate([[self.intercept_scale * phi[0] - self.means @ beta], beta])

    def from_model(self, theta: np.ndarray) -> np.ndarray:
        beta = theta[1:]
        return np.concatenate([[(theta[0] + self.means @ beta) / self.intercept_scale], beta / self.scales])

    def gradient_to_internal(self, gradient: np.ndarray) -> np.ndarray:
        return np.concatenate([[self.intercept_scale * gradient[0]],
                               self.scales * (gradient[1:] - self.means * gradient[0])])

    def gradient_to_model(self, gradient: np.ndarray) -> np.ndarray:
        grad_b = gradient[0] / self.intercept_scale
        return np.concatenate([[grad_b], gradient[1:] / self.scales + self.means * grad_b])


def fit_fixed_effect(
    features: sp.csr_matrix,
    labels: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    config: FixedEffectConfig,
    initial: FixedEffectModel | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    collective: Collective = SingleProcess(),
    checkpoint: Checkpoint | None = None,
) -> tuple[FixedEffectModel, FixedEffectReport]:
    """Train the fixed effect to the optimum of its penalised objective (see
    :class:`FixedEffectProblem`, which this builds and solves)."""
    problem = FixedEffectProblem.build(features, labels, weights, offsets, config, collective)
    return problem.solve(initial, on_iteration, checkpoint)


@dataclass
class FixedEffectProblem:
    """The fixed effect's objective over rows held as TensorFlow tensors.

    Built once from a CSR design (which the caller may then release: the tensors are all an
    optimisation needs, 12 bytes per non-zero). With a ``collective`` of several workers the
    rows are this worker's shard: every evaluation sums the workers' data terms (bit-identical
    on all of them) and adds the penalty once, so every worker runs the same L-BFGS iterates.
    """

    config: FixedEffectConfig
    data_term: TfLogisticLoss
    change: Standardization
    penalty: np.ndarray
    total_weight: float
    collective: Collective

    @classmethod
    def build(cls, features: sp.csr_matrix, labels: np.ndarray, weights: np.ndarray, offsets: np.ndarray,
              config: FixedEffectConfig, collective: Collective = SingleProcess()) -> "FixedEffectProblem":
        _check_finite_optimum(labels, weights, config, collective)
        _check_variance_dimension(config, features.shape[1])
        penalty = penalty_vector(features.shape[1], config.l2, config.regularize_intercept)
        return cls(
            config=config,
            data_term=TfLogisticLoss(features, labels, weights, offsets),
            change=Standardization.from_data(features, weights, penalty, collective),
            penalty=penalty,
            total_weight=float(collective.sum(np.array([np.sum(weights)]))[0]),
            collective=collective,
        )

    def objective(self, phi: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient at the optimiser's (standardised) point ``phi``."""
        theta = self.change.to_model(phi)
        value, gradient = self.data_term(theta)
        summed = self.collective.sum(np.concatenate([[value], gradient]))
        value = summed[0] + 0.5 * float(np.dot(self.penalty * theta, theta))
        return value, self.change.gradient_to_internal(summed[1:] + self.penalty * theta)

    def variances(self, theta: np.ndarray) -> FixedEffectVariances:
        """The variances of the model's coefficients ``theta`` (the optimum): every worker's
        share of the data term's Hessian, summed once, plus the penalty. The Hessian is taken in
        the model's own coefficients, never the standardised ones the optimiser works on."""
        hessian = self.collective.sum(self.data_term.hessian(theta, self.config.variance == "full"))
        variances = variances_from_hessian(hessian, self.penalty, self.config.name)
        return FixedEffectVariances(float(variances[0]), variances[1:])

    def solve(self, initial: FixedEffectModel | None = None,
              on_iteration: Callable[[int, float], None] | None = None,
              checkpoint: Checkpoint | None = None) -> tuple[FixedEffectModel, FixedEffectReport]:
        """Optimise from ``initial`` (or zeros). With a ``checkpoint`` the optimiser restarts
        every ``checkpoint.every`` iterations and saves its point there; solving again with the
        same checkpoint resumes from it and ends exactly where an uninterrupted run ends."""
        change, opt = self.change, self.config.optimizer
        theta0 = np.zeros(len(self.penalty))
        if initial is not None:
            theta0[0], theta0[1:] = initial.intercept, initial.coef
        options = dict(max_iter=opt.max_iter, gtol=opt.gtol, ftol=opt.tol, history=opt.history,
                       scale=self.total_weight, on_iteration=on_iteration,
                       gradient_measure=lambda g: float(np.max(np.abs(change.gradient_to_model(g)))))
        if checkpoint is None:
            result = minimize_lbfgs(self.objective, change.from_model(theta0), **options)
        else:
            saved = checkpoint.load()
            start, done = (change.from_model(theta0), 0) if saved is None else saved
            if len(start) != len(theta0):
                raise DataError(f"checkpoint {checkpoint.uri} has {len(start)} coefficients, the model {len(theta0)}")
            check_identical(self.collective, start, "the checkpoint read by each worker")
            result = minimize_lbfgs_in_segments(self.objective, start, segment=checkpoint.every,
                                                start_iteration=done, on_segment=checkpoint.save, **options)
        check_identical(self.collective, result.x, "the optimum found by each worker")
        theta = change.to_model(result.x)
        variances = None if self.config.variance == "none" else self.variances(theta)
        model = FixedEffectModel(float(theta[0]), theta[1:].copy(), variances)
        report = FixedEffectReport(
            iterations=result.iterations,
            evaluations=result.evaluations,
            converged=result.converged,
            gradient_max=result.gradient_max / max(self.total_weight, 1.0),
            objective=result.value,
            message=result.message,
            memory_bytes=self.data_term.memory_bytes,
            nonzero_bytes=self.data_term.nonzero_bytes,
            nonzeros=self.data_term.nnz,
        )
        return model, report
