"""Random effect: one L2 logistic regression per entity, solved for all entities at once.

Each entity is fitted on its own rows, in its own feature subspace (the features it has ever
seen; all others stay exactly 0), with the other coordinates' scores as offset. Entities are
grouped into buckets of equal padded shape (see :mod:`gdmix.models.entity_layout`) and each
bucket is solved by :func:`gdmix.solvers.batched_newton.solve_batch`; the rare entity with more
local features than ``max_dense_features``, or too many rows for a dense batch, is solved alone
by L-BFGS-B on its sparse rows.

Row selection follows GDMix/Photon semantics: entities with fewer than ``min_rows`` rows get no
model (they score 0), entities with more than ``max_rows`` train on a seeded sample of
``max_rows`` rows and the other rows are only scored ("passive" rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from scipy.special import expit

from gdmix.config import RandomEffectConfig
from gdmix.dataset import EntityIds
from gdmix.features.index_map import IndexMap
from gdmix.models.entity_layout import MAX_DENSE_ENTITY, EntityLayout, dense_footprint
from gdmix.models.linear import RANDOM_EFFECT_SCHEMA, check_unique_coefficients, is_intercept, names_and_terms
from gdmix.solvers.batched_newton import coefficient_variances, laplace_terms, solve_batch, solve_single_rows
from gdmix.solvers.lbfgs import minimize_lbfgs
from gdmix.errors import GdmixError
from gdmix.losses.logistic import log_loss_terms, penalised_objective
from gdmix.sparse import csr_values_at, segments, starts_of, take_or

SPARSE_GTOL_FLOOR = 1e-8
#: where a coefficient table keeps the ridge ``l2: auto`` learned (Parquet schema metadata)
L2_METADATA = "gdmix.l2"
#: a coefficient table's column of the coefficients' variances (``variance: simple | full``)
VARIANCE_COLUMN = "variance"
#: ``l2: auto`` stops when the estimate of ``log l2`` is this precise (1 % in ``l2``)
L2_SEARCH_XTOL = 0.01
#: the first steps of that search in ``log l2`` (a quarter of it from a previous estimate)
L2_SEARCH_STEP = 1.0
#: the range of ``log l2`` searched (a prior standard deviation between about 1e-3 and 1e3)
L2_SEARCH_BOUNDS = (-6 * np.log(10.0), 6 * np.log(10.0))
#: the largest dense matrix (rows or features of one entity) whose determinant the evidence takes
MAX_EVIDENCE_DIMENSION = 4000


@dataclass(frozen=True)
class CoefficientVariances:
    """Per-entity variances of the intercept and of every stored coefficient (``variance:
    simple | full``), laid out as the model's coefficients (NaN: not known, e.g. an entity
    carried over from a model without variances)."""

    intercepts: np.ndarray  # (E,)
    coef: sp.csr_matrix  # (E, d)

    def take_missing(self, count: int, width: int) -> "CoefficientVariances":
        return CoefficientVariances(np.full(count, np.nan), sp.csr_matrix((count, width)))


@dataclass(frozen=True)
class RandomEffectModel:
    """Per-entity intercepts and sparse coefficients over one bag's index map."""

    entity_ids: pa.Array  # (E,) strings
    intercepts: np.ndarray  # (E,)
    coef: sp.csr_matrix  # (E, d), sorted indices
    l2: float | None = None  # the ridge learned by ``l2: auto`` (the next pass starts its search there)
    variances: CoefficientVariances | None = None

    @property
    def num_entities(self) -> int:
        return len(self.entity_ids)

    def rows_for(self, entities: EntityIds) -> np.ndarray:
        """Model row of each distinct id of ``entities`` (-1 where the entity has no model)."""
        index = pc.index_in(entities.strings(), value_set=self.entity_ids)
        return pc.fill_null(index, -1).to_numpy().astype(np.int64)

    def score(self, entities: EntityIds, features: sp.csr_matrix) -> np.ndarray:
        """This coordinate's logit per row; rows of entities without a model score 0."""
        model_row = self.rows_for(entities)[entities.codes]
        scores = take_or(self.intercepts, model_row, 0.0)
        features = features.tocsr()
        nnz_row = np.repeat(np.arange(features.shape[0]), np.diff(features.indptr))
        coefficients = csr_values_at(self.coef, model_row[nnz_row], features.indices)
        return scores + np.bincount(nnz_row, weights=features.data * coefficients, minlength=features.shape[0])

    def sample(self, rng: np.random.Generator) -> "RandomEffectModel":
        """A draw from the (diagonal) Laplace posterior: every intercept and stored coefficient
        plus normal noise of its saved variance, for exploration (Thompson sampling); entities
        whose variance is not known (NaN) keep their mean."""
        if self.variances is None:
            raise GdmixError("this random effect has no variances to sample from (trained with variance: none)")
        coef = self.coef.tocsr(copy=True)
        coef.sort_indices()
        nnz_row = np.repeat(np.arange(self.num_entities), np.diff(coef.indptr))
        spread = np.sqrt(np.nan_to_num(csr_values_at(self.variances.coef, nnz_row, coef.indices), nan=0.0))
        intercept_spread = np.sqrt(np.nan_to_num(self.variances.intercepts, nan=0.0))
        intercepts = self.intercepts + rng.standard_normal(self.num_entities) * intercept_spread
        coef.data = coef.data + rng.standard_normal(coef.nnz) * spread
        return dataclasses.replace(self, intercepts=intercepts, coef=coef)

    def warm_start_for(self, entities: EntityIds) -> WarmStart:
        """This model as the starting point of a fit on data with the given entity ids."""
        rows = self.rows_for(entities)
        return WarmStart(take_or(self.intercepts, rows, np.nan), rows, self.coef, self.l2)

    def carry_over(self, prior: "RandomEffectModel", present: pa.Array) -> "RandomEffectModel":
        """This model plus the entities of ``prior`` whose ids are not in ``present`` (the ids of
        the new training data): entities absent from new data keep their old model, while an
        entity present but left untrained (too few rows) gets none, as a cold one would."""
        missing = pc.invert(pc.is_in(prior.entity_ids, value_set=present)).to_numpy(zero_copy_only=False)
        if not missing.any():
            return self
        keep = np.flatnonzero(missing)
        variances = None
        if self.variances is not None:
            carried = prior.variances or self.variances.take_missing(prior.num_entities, prior.coef.shape[1])
            variances = CoefficientVariances(np.concatenate([self.variances.intercepts, carried.intercepts[keep]]),
                                             sp.vstack([self.variances.coef, carried.coef[keep]], format="csr"))
        return RandomEffectModel(
            pa.concat_arrays([self.entity_ids, prior.entity_ids.take(keep)]),
            np.concatenate([self.intercepts, prior.intercepts[keep]]),
            sp.vstack([self.coef, prior.coef[keep]], format="csr"),
            self.l2, variances,
        )

    def to_table(self, index_map: IndexMap) -> pa.Table:
        """Rows ``entity, name, term, value`` (and ``variance``, when the model has them): each
        entity's intercept, then its coefficients."""
        coef = self.coef.tocsr()
        coef.eliminate_zeros()
        nnz_row = np.repeat(np.arange(self.num_entities), np.diff(coef.indptr))
        rows = np.concatenate([np.arange(self.num_entities), nnz_row])
        columns = np.concatenate([np.full(self.num_entities, -1), coef.indices.astype(np.int64)])
        order = np.lexsort((columns, rows))
        rows, columns = rows[order], columns[order]
        values = np.concatenate([self.intercepts, coef.data])[order]
        names, terms = names_and_terms(index_map, columns)
        arrays, schema = [self.entity_ids.take(rows), names, terms, pa.array(values)], RANDOM_EFFECT_SCHEMA
        if self.variances is not None:
            variance = np.concatenate([self.variances.intercepts,
                                       csr_values_at(self.variances.coef, nnz_row, coef.indices)])[order]
            arrays.append(pa.array(variance))
            schema = schema.append(pa.field(VARIANCE_COLUMN, pa.float64()))
        if self.l2 is not None:
            schema = schema.with_metadata({L2_METADATA: repr(self.l2)})
        return pa.table(arrays, schema=schema)

    @classmethod
    def from_table(cls, table: pa.Table, index_map: IndexMap, source: str = "model") -> "RandomEffectModel":
        """Read a coefficient table; features missing from ``index_map`` are dropped."""
        check_unique_coefficients(table, ["entity", "name", "term"], source)
        encoded = pc.dictionary_encode(pc.cast(table.column("entity"), pa.string())).combine_chunks()
        rows = encoded.indices.to_numpy().astype(np.int64)
        num = len(encoded.dictionary)
        intercept_rows = is_intercept(table)
        features = table.filter(pa.array(~intercept_rows))
        index = index_map.lookup(features.column("name"), features.column("term"))
        known = index >= 0

        def laid_out(column: str) -> tuple[np.ndarray, sp.csr_matrix]:
            values = table.column(column).to_numpy()
            per_entity = np.zeros(num)
            per_entity[rows[intercept_rows]] = values[intercept_rows]
            return per_entity, sp.csr_matrix(
                (values[~intercept_rows][known], (rows[~intercept_rows][known], index[known])),
                shape=(num, len(index_map)))

        intercepts, coef = laid_out("value")
        variances = CoefficientVariances(*laid_out(VARIANCE_COLUMN)) if VARIANCE_COLUMN in table.column_names else None
        learned = (table.schema.metadata or {}).get(L2_METADATA.encode())
        return cls(encoded.dictionary, intercepts, coef, float(learned) if learned else None, variances)


@dataclass(frozen=True)
class WarmStart:
    """A prior model aligned to the entity codes of a training set.

    ``intercepts[code]`` is NaN and ``rows[code]`` is -1 for entities without a prior model;
    ``coef`` holds the prior coefficients, one row per prior entity, in the bag's columns.
    """

    intercepts: np.ndarray
    rows: np.ndarray
    coef: sp.csr_matrix
    l2: float | None = None  # the prior model's learned ridge (``l2: auto``), where it has one


@dataclass
class RandomEffectReport:
    entities: int = 0
    entities_trained: int = 0
    entities_below_min_rows: int = 0
    entities_down_sampled: int = 0
    entities_zero_weight: int = 0
    one_label_entities: int = 0
    unconverged_entities: int = 0
    sparse_entities: int = 0
    passive_rows: int = 0
    iterations_mean: float = 0.0
    iterations_max: int = 0
    batches: int = 0
    # ``l2: auto`` only: the estimate, the prior variance it stands for, the solves it took
    l2: float | None = None
    prior_variance: float | None = None
    l2_evaluations: int | None = None
    log_evidence: float | None = None
    l2_at_search_bound: bool | None = None  # the evidence still grew at the edge of the range searched

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def fit_random_effect(
    codes: np.ndarray,
    features: sp.csr_matrix,
    labels: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    config: RandomEffectConfig,
    initial: WarmStart | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix, RandomEffectReport]:
    """Train every entity with enough rows and positive weight.

    ``codes`` are entity codes per row. Returns the trained entity codes, their intercepts,
    their coefficients (one CSR row each, in the bag's columns) and a report.
    """
    fitted = _fit(codes, features, labels, weights, offsets, config, initial, progress)
    return fitted.codes, fitted.intercepts, fitted.coef, fitted.report


def fit_random_effect_model(entities: EntityIds, features: sp.csr_matrix, labels: np.ndarray, weights: np.ndarray,
                            offsets: np.ndarray, config: RandomEffectConfig, initial: WarmStart | None = None,
                            progress: Callable[[float, float], None] | None = None
                            ) -> tuple[RandomEffectModel, RandomEffectReport]:
    """:func:`fit_random_effect` as a model: the entities' ids, the learned ``l2`` (``l2: auto``)
    and, with ``variance: simple | full``, the coefficients' variances at the optimum."""
    fitted = _fit(entities.codes, features, labels, weights, offsets, config, initial, progress)
    variances = None
    if config.variance != "none":
        variances = fitted.variances(full=config.variance == "full")
    model = RandomEffectModel(entities.strings().take(fitted.codes), fitted.intercepts, fitted.coef,
                              fitted.report.l2, variances)
    return model, fitted.report


@dataclass
class _Fit:
    problem: "_EntityProblems"
    solution: "_Solution"
    report: RandomEffectReport
    width: int

    @property
    def trained(self) -> np.ndarray:
        return np.flatnonzero(self.problem.trainable)

    @property
    def codes(self) -> np.ndarray:
        return self.problem.layout.entities[self.trained]

    @property
    def intercepts(self) -> np.ndarray:
        return self.solution.intercepts[self.trained]

    @property
    def coef(self) -> sp.csr_matrix:
        return self.problem.layout.pairs_to_csr(self.solution.pair_coef, self.width)[self.trained]

    def variances(self, full: bool) -> CoefficientVariances:
        intercepts, pairs = self.problem.variances(self.solution, full)
        return CoefficientVariances(intercepts[self.trained],
                                    self.problem.layout.pairs_to_csr(pairs, self.width)[self.trained])


def _fit(codes, features, labels, weights, offsets, config: RandomEffectConfig, initial: WarmStart | None,
         progress) -> _Fit:
    report = RandomEffectReport()
    layout = EntityLayout.build(codes, features, _select_training_rows(codes, config, report))
    total_weight = layout.per_entity_sum(weights)
    positive_weight = layout.per_entity_sum(weights * labels)
    trainable = total_weight > 0
    one_label = trainable & ((positive_weight <= 0) | (positive_weight >= total_weight))
    report.entities_zero_weight = int((~trainable).sum())
    report.one_label_entities = int(one_label.sum())
    too_large = (layout.feature_count > config.solver.max_dense_features) | (
        dense_footprint(layout.row_count, layout.feature_count) > MAX_DENSE_ENTITY)
    report.sparse_entities = int((trainable & too_large).sum())
    problem = _EntityProblems(layout, labels, weights, offsets, config, trainable, one_label, too_large)

    start = _Solution.initial(layout, initial)
    if config.l2_auto is None:
        solution = problem.solve(config.l2, start, progress)
    else:
        solution = estimate_l2(problem, config.l2_auto.init if start.l2 is None else start.l2, start)
        report.l2, report.prior_variance = solution.l2, 1.0 / solution.l2
        edges = np.isclose(np.log(solution.l2), L2_SEARCH_BOUNDS, atol=2 * L2_SEARCH_XTOL)
        report.l2_at_search_bound = bool(edges.any())
        report.l2_evaluations = solution.evaluations
        report.log_evidence = solution.log_evidence

    trained = np.flatnonzero(trainable)
    report.entities_trained = len(trained)
    report.batches = solution.batches
    report.unconverged_entities = int((~solution.converged[trained]).sum())
    if len(trained):
        report.iterations_mean = float(solution.iterations[trained].mean())
        report.iterations_max = int(solution.iterations[trained].max())
    return _Fit(problem, solution, report, features.shape[1])


@dataclass
class _Solution:
    """Every layout entity's intercept and (entity, local feature) coefficients at one ``l2``,
    with what the solvers report and, when asked, the total Laplace log evidence."""

    intercepts: np.ndarray
    pair_coef: np.ndarray
    iterations: np.ndarray | None = None
    converged: np.ndarray | None = None
    l2: float | None = None
    log_evidence: float | None = None
    batches: int = 0
    evaluations: int = 0

    @classmethod
    def initial(cls, layout: EntityLayout, initial: WarmStart | None) -> "_Solution":
        """Warm-start values per layout entity and pair (0 where unknown), and the warm start's ``l2``."""
        if initial is None:
            return cls(np.zeros(layout.num_entities), np.zeros(len(layout.pair_feature)))
        prior = initial.intercepts[layout.entities]
        pair_rows = np.repeat(initial.rows[layout.entities], layout.feature_count)
        return cls(np.where(np.isnan(prior), 0.0, prior), csr_values_at(initial.coef, pair_rows, layout.pair_feature),
                   l2=initial.l2)


@dataclass
class _EntityProblems:
    """Every trainable entity's problem, solvable at any ``l2``: single-row entities in closed
    form, batches of equal padded shape by batched Newton, the rare large one by L-BFGS-B."""

    layout: EntityLayout
    labels: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray
    config: RandomEffectConfig
    trainable: np.ndarray
    one_label: np.ndarray
    too_large: np.ndarray

    def intercept_ridge(self, l2: float) -> np.ndarray:
        config = self.config
        ridge = np.full(self.layout.num_entities, l2 if config.regularize_intercept else 0.0)
        if not config.regularize_intercept:
            ridge[self.one_label] = config.one_label_intercept_l2 or l2
        return ridge

    def solve(self, l2: float, start: _Solution, progress=None, evidence: bool = False) -> _Solution:
        """Every trainable entity at ridge ``l2``, from ``start``; with ``evidence``, the sum over
        entities of their Laplace log evidence (see :func:`estimate_l2`)."""
        layout, config = self.layout, self.config
        ridge = self.intercept_ridge(l2)
        out = _Solution(np.zeros(layout.num_entities), np.zeros(len(layout.pair_feature)),
                        np.zeros(layout.num_entities, dtype=np.int64), np.ones(layout.num_entities, dtype=bool),
                        l2=l2, log_evidence=0.0 if evidence else None)
        single = self.trainable & ~self.too_large & (layout.row_count == 1)
        _solve_single_rows(layout, np.flatnonzero(single), self.labels, self.weights, self.offsets, config, l2, ridge,
                           start, out)
        done, target = int(single.sum()), int(self.trainable.sum())
        for batch in layout.batches(np.flatnonzero(self.trainable & ~self.too_large & ~single)):
            problem = layout.batch_problem(batch, self.labels, self.weights, self.offsets, l2, ridge)
            coef0 = layout.gather_pairs(batch, start.pair_coef, problem.features.shape[2])
            solution = solve_batch(problem, start.intercepts[batch], coef0, max_iter=config.solver.max_iter,
                                   tol=config.solver.tol)
            out.intercepts[batch] = solution.intercept
            layout.scatter_pairs(batch, solution.coef, out.pair_coef)
            out.iterations[batch], out.converged[batch] = solution.iterations, solution.converged
            if evidence:
                value, log_det = laplace_terms(problem, solution.intercept, solution.coef)
                out.log_evidence += _log_evidence(value, log_det, problem.features.shape[2], l2, ridge[batch])
            out.batches += 1
            done += len(batch)
            if progress is not None:
                progress(done, target)
        for k in np.flatnonzero(self.trainable & self.too_large):
            begin, count = layout.pair_start[k], layout.feature_count[k]
            result = _solve_sparse(layout, int(k), self.labels, self.weights, self.offsets, config, l2, ridge[k],
                                   np.concatenate([[start.intercepts[k]], start.pair_coef[begin:begin + count]]))
            out.intercepts[k], out.pair_coef[begin:begin + count] = result.x[0], result.x[1:]
            out.iterations[k], out.converged[k] = result.iterations, result.converged
            if evidence:
                value, log_det = _sparse_laplace_terms(layout, int(k), self.labels, self.weights, self.offsets, l2,
                                                       ridge[k], result.x)
                out.log_evidence += _log_evidence(np.array([value]), np.array([log_det]), count, l2, ridge[k:k + 1])
            done += 1
            if progress is not None:
                progress(done, target)
        return out


    def variances(self, solution: "_Solution", full: bool) -> tuple[np.ndarray, np.ndarray]:
        """The variances of every trained entity's intercept and (entity, feature) coefficients
        at ``solution`` (see :func:`gdmix.solvers.batched_newton.coefficient_variances`); NaN for
        entities not trained."""
        layout, l2 = self.layout, solution.l2
        ridge = self.intercept_ridge(l2)
        intercepts, pairs = np.full(layout.num_entities, np.nan), np.full(len(layout.pair_feature), np.nan)
        for batch in layout.batches(np.flatnonzero(self.trainable & ~self.too_large)):
            problem = layout.batch_problem(batch, self.labels, self.weights, self.offsets, l2, ridge)
            coef = layout.gather_pairs(batch, solution.pair_coef, problem.features.shape[2])
            intercepts[batch], coef_variances = coefficient_variances(problem, solution.intercepts[batch], coef, full)
            layout.scatter_pairs(batch, coef_variances, pairs)
        for k in np.flatnonzero(self.trainable & self.too_large):
            begin, count = layout.pair_start[k], layout.feature_count[k]
            theta = np.concatenate([[solution.intercepts[k]], solution.pair_coef[begin:begin + count]])
            variances = _sparse_variances(layout, int(k), self.labels, self.weights, self.offsets, l2, ridge[k],
                                          theta, full)
            intercepts[k], pairs[begin:begin + count] = variances[0], variances[1:]
        return intercepts, pairs


def _log_evidence(value: np.ndarray, log_det: np.ndarray, dimension: int | np.ndarray, l2: float,
                  intercept_ridge: np.ndarray) -> float:
    """Sum over problems of the Laplace log marginal likelihood, up to terms free of ``l2``:
    ``-f* + d/2 log l2 + 1/2 log r0 - 1/2 log det H`` with ``d`` coefficients under the prior
    ``N(0, I / l2)`` and the intercept under ``N(0, 1 / r0)`` where it is penalised (an
    unpenalised intercept has a flat prior: a constant). The ``2 pi`` factors of the prior and of
    the Gaussian integral cancel."""
    penalised = intercept_ridge > 0
    intercept_prior = np.where(penalised, np.log(np.where(penalised, intercept_ridge, 1.0)), 0.0)
    prior = 0.5 * dimension * np.log(l2) + 0.5 * intercept_prior
    return float(np.sum(-value + prior - 0.5 * log_det))


def estimate_l2(problem: _EntityProblems, initial_l2: float, start: _Solution) -> _Solution:
    """The ``l2`` (prior precision ``1 / sigma^2`` of every entity's coefficients) that maximises
    the Laplace approximation of the coordinate's marginal likelihood, and the solution there.

    Given ``l2`` the entities are independent, so the evidence is a sum over entities of what
    each one's solve has at its optimum (objective, log determinant of its Hessian): a smooth
    1-D function of ``log l2``. It is bracketed by unit steps in ``log l2`` from the start
    (the last pass's estimate, when there is one, so a warm pass needs few steps), then maximised
    inside the bracket by successive parabolic interpolation (the evidence is close to quadratic
    in ``log l2``, so two or three steps do); every evaluation is a batched solve warm-started from
    the solution at the nearest ``l2`` already solved.
    """
    solved: dict[float, _Solution] = {}

    def negative_evidence(log_l2: float) -> float:
        log_l2 = float(np.clip(log_l2, *L2_SEARCH_BOUNDS))
        if log_l2 not in solved:
            nearest = min(solved, key=lambda x: abs(x - log_l2)) if solved else None
            solved[log_l2] = problem.solve(float(np.exp(log_l2)), start if nearest is None else solved[nearest],
                                           evidence=True)
        return -solved[log_l2].log_evidence

    low, high = L2_SEARCH_BOUNDS
    x = float(np.clip(np.log(initial_l2), low, high))
    width = L2_SEARCH_STEP if start.l2 is None else L2_SEARCH_STEP / 4  # a warm pass starts near the optimum
    step = width if negative_evidence(min(x + width, high)) < negative_evidence(x) else -width
    while (ahead := float(np.clip(x + step, low, high))) != x and negative_evidence(ahead) < negative_evidence(x):
        x = ahead
    a, c = max(x - width, low), min(x + width, high)
    if a < x < c:  # else the optimum is at the edge of the range searched
        _refine_by_parabolas(negative_evidence, a, x, c)
    solution = solved[min(solved, key=negative_evidence)]
    solution.evaluations = len(solved)
    return solution


def _refine_by_parabolas(function, a: float, b: float, c: float, max_steps: int = 20) -> None:
    """Minimise ``function`` inside the bracket ``a < b < c`` (``f(b)`` at most ``f(a)``, ``f(c)``):
    jump to the vertex of the parabola through the three points, keep a bracket around the best
    point, and stop once the vertex is within :data:`L2_SEARCH_XTOL` of it."""
    for _ in range(max_steps):
        fa, fb, fc = function(a), function(b), function(c)
        denominator = (b - a) * (fb - fc) - (b - c) * (fb - fa)
        if denominator == 0:
            return
        vertex = b - 0.5 * ((b - a) ** 2 * (fb - fc) - (b - c) ** 2 * (fb - fa)) / denominator
        vertex = min(max(vertex, a + L2_SEARCH_XTOL / 2), c - L2_SEARCH_XTOL / 2)
        if abs(vertex - b) < L2_SEARCH_XTOL:
            return
        if function(vertex) < fb:
            a, b, c = (a, vertex, b) if vertex < b else (b, vertex, c)
        else:
            a, c = (vertex, c) if vertex < b else (a, vertex)


def _solve_single_rows(layout: EntityLayout, entities: np.ndarray, labels, weights, offsets,
                       config: RandomEffectConfig, l2: float, intercept_ridge: np.ndarray, start: "_Solution",
                       out: "_Solution") -> None:
    """Entities with one training row: the exact one-dimensional reduction (see
    :func:`gdmix.solvers.batched_newton.solve_single_rows`), written into ``out`` (with their
    Laplace log evidence, in closed form, when ``out`` collects it)."""
    if len(entities) == 0:
        return
    rows = layout.rows[layout.row_start[entities]]
    nnz, owner, _ = segments(layout.nnz_start[entities], layout.nnz_start[entities + 1] - layout.nnz_start[entities])
    values = layout.nnz_value[nnz]
    slots = layout.pair_start[entities][owner] + layout.nnz_col[nnz]
    norm2 = np.bincount(owner, weights=values * values, minlength=len(entities))
    logit0 = start.intercepts[entities] + np.bincount(owner, weights=values * start.pair_coef[slots],
                                                      minlength=len(entities))
    ridge = intercept_ridge[entities]
    y, w, o = labels[rows], weights[rows], offsets[rows]
    solution = solve_single_rows(norm2, logit0, y, w, o, np.full(len(entities), l2), ridge,
                                 max_iter=config.solver.max_iter, tol=config.solver.tol)
    out.intercepts[entities] = solution.intercept
    out.pair_coef[slots] = solution.scale[owner] * values
    out.iterations[entities], out.converged[entities] = solution.iterations, solution.converged
    if out.log_evidence is not None:
        # H = [[s + r0, s x'], [s x, s x x' + l2 I]]: det = l2^q (1 + s|x|^2 / l2) (r0 + s l2 / (l2 + s|x|^2))
        u = solution.intercept + solution.scale * norm2
        z = u + o
        mu = expit(z)
        s = w * mu * (1.0 - mu)
        value = w * log_loss_terms(z, y) + 0.5 * (ridge * solution.intercept ** 2 + l2 * solution.scale ** 2 * norm2)
        q = layout.feature_count[entities]
        tiny = np.finfo(float).tiny
        log_det = (q * np.log(l2) + np.log1p(s * norm2 / l2)
                   + np.log(np.maximum(ridge + s * l2 / (l2 + s * norm2), tiny)))
        out.log_evidence += _log_evidence(value, log_det, q, l2, ridge)


def _select_training_rows(codes: np.ndarray, config: RandomEffectConfig, report: RandomEffectReport) -> np.ndarray:
    """Rows used for training after the ``min_rows`` / ``max_rows`` rules (seeded sampling)."""
    counts = np.bincount(codes)
    report.entities = int((counts > 0).sum())
    report.entities_below_min_rows = int(((counts > 0) & (counts < config.min_rows)).sum())
    eligible = counts[codes] >= config.min_rows
    if config.max_rows is not None and (counts > config.max_rows).any():
        report.entities_down_sampled = int((counts > config.max_rows).sum())
        rng = np.random.default_rng(config.seed)
        order = np.lexsort((rng.random(len(codes)), codes))
        rank = np.empty(len(codes), dtype=np.int64)
        rank[order] = np.arange(len(codes)) - starts_of(counts)[codes[order]]
        sampled_out = eligible & (rank >= config.max_rows)
        report.passive_rows = int(sampled_out.sum())
        eligible &= ~sampled_out
    return np.flatnonzero(eligible)


def _solve_sparse(layout: EntityLayout, k: int, labels, weights, offsets, config: RandomEffectConfig, l2: float,
                  intercept_ridge: float, theta0: np.ndarray):
    """One entity too large for a dense batch: L-BFGS-B on its sparse rows."""
    rows, design = layout.entity_design(k)
    penalty = np.concatenate([[intercept_ridge], np.full(design.shape[1], l2)])
    objective = penalised_objective(design, labels[rows], weights[rows], offsets[rows], penalty)
    # L-BFGS cannot resolve gradients much below sqrt(eps) of the summed loss (its line search
    # stops on round-off first), so this path's gradient rule has a floor.
    return minimize_lbfgs(objective, theta0, max_iter=max(1000, 10 * config.solver.max_iter),
                          gtol=max(config.solver.tol, SPARSE_GTOL_FLOOR), ftol=0.0, history=20,
                          scale=float(weights[rows].sum()))


def _entity_curvature(layout: EntityLayout, k: int, weights, offsets, theta: np.ndarray):
    """One large entity's rows, sparse design, logits and Hessian weights ``w mu (1 - mu)`` at ``theta``."""
    rows, design = layout.entity_design(k)
    z = design @ theta[1:] + theta[0] + offsets[rows]
    mu = expit(z)
    return rows, design, z, weights[rows] * mu * (1.0 - mu)


def _sparse_laplace_terms(layout: EntityLayout, k: int, labels, weights, offsets, l2: float, intercept_ridge: float,
                          theta: np.ndarray) -> tuple[float, float]:
    """:func:`gdmix.solvers.batched_newton.laplace_terms` of one large entity from its sparse
    rows: the dense matrix is ``n x n`` (row space) or ``q x q``, whichever is smaller."""
    rows, design, z, s = _entity_curvature(layout, k, weights, offsets, theta)
    n, q = design.shape
    if min(n, q) > MAX_EVIDENCE_DIMENSION:
        raise GdmixError(f"l2: auto: an entity with {n:,} rows and {q:,} local features is too large for the "
                         f"evidence's determinant (at most {MAX_EVIDENCE_DIMENSION:,} of either); cap its rows "
                         "with max_rows or use a fixed l2")
    w = weights[rows]
    penalty = intercept_ridge * theta[0] ** 2 + l2 * theta[1:] @ theta[1:]
    value = float(np.dot(w, log_loss_terms(z, labels[rows])) + 0.5 * penalty)
    if n < q:
        gram = (design @ design.T).toarray()
        system = s[:, None] * gram + l2 * np.eye(n)
        log_det = np.linalg.slogdet(system)[1] + (q - n) * np.log(l2)
        cross = s @ gram @ np.linalg.solve(system, s)
    else:
        block = (design.T @ sp.diags(s) @ design).toarray() + l2 * np.eye(q)
        log_det = np.linalg.slogdet(block)[1]
        c = design.T @ s
        cross = c @ np.linalg.solve(block, c)
    schur = max(s.sum() + intercept_ridge - cross, 1e-12 * max(w.sum(), 1.0))
    return value, float(log_det + np.log(schur))


def _sparse_variances(layout: EntityLayout, k: int, labels, weights, offsets, l2: float, intercept_ridge: float,
                      theta: np.ndarray, full: bool) -> np.ndarray:
    """Intercept and coefficient variances of one large entity from its sparse rows (the dense
    Hessian is ``(q + 1) x (q + 1)``)."""
    _, design, _, s = _entity_curvature(layout, k, weights, offsets, theta)
    penalty = np.concatenate([[intercept_ridge], np.full(design.shape[1], l2)])
    if not full:
        return 1.0 / (np.concatenate([[s.sum()], design.multiply(design).T @ s]) + penalty)
    if design.shape[1] > MAX_EVIDENCE_DIMENSION:
        raise GdmixError(f"variance: full: an entity with {design.shape[1]:,} local features is too large for a "
                         f"dense Hessian (at most {MAX_EVIDENCE_DIMENSION:,}); use variance: simple")
    full_design = sp.hstack([sp.csr_matrix(np.ones((design.shape[0], 1))), design]).tocsr()
    hessian = (full_design.T @ sp.diags(s) @ full_design).toarray() + np.diag(penalty)
    return np.diag(np.linalg.inv(hessian)).copy()
