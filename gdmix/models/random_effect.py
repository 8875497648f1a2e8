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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from gdmix.config import RandomEffectConfig
from gdmix.dataset import EntityIds
from gdmix.features.index_map import IndexMap
from gdmix.models.entity_layout import MAX_DENSE_ENTITY, EntityLayout, dense_footprint
from gdmix.models.linear import RANDOM_EFFECT_SCHEMA, check_unique_coefficients, is_intercept, names_and_terms
from gdmix.solvers.batched_newton import solve_batch, solve_single_rows
from gdmix.solvers.lbfgs import minimize_lbfgs
from gdmix.losses.logistic import penalised_objective
from gdmix.sparse import csr_values_at, segments, starts_of, take_or

SPARSE_GTOL_FLOOR = 1e-8


@dataclass(frozen=True)
class RandomEffectModel:
    """Per-entity intercepts and sparse coefficients over one bag's index map."""

    entity_ids: pa.Array  # (E,) strings
    intercepts: np.ndarray  # (E,)
    coef: sp.csr_matrix  # (E, d), sorted indices

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

    def warm_start_for(self, entities: EntityIds) -> WarmStart:
        """This model as the starting point of a fit on data with the given entity ids."""
        rows = self.rows_for(entities)
        return WarmStart(take_or(self.intercepts, rows, np.nan), rows, self.coef)

    def carry_over(self, prior: "RandomEffectModel", present: pa.Array) -> "RandomEffectModel":
        """This model plus the entities of ``prior`` whose ids are not in ``present`` (the ids of
        the new training data): entities absent from new data keep their old model, while an
        entity present but left untrained (too few rows) gets none, as a cold one would."""
        missing = pc.invert(pc.is_in(prior.entity_ids, value_set=present)).to_numpy(zero_copy_only=False)
        if not missing.any():
            return self
        keep = np.flatnonzero(missing)
        return RandomEffectModel(
            pa.concat_arrays([self.entity_ids, prior.entity_ids.take(keep)]),
            np.concatenate([self.intercepts, prior.intercepts[keep]]),
            sp.vstack([self.coef, prior.coef[keep]], format="csr"),
        )

    def to_table(self, index_map: IndexMap) -> pa.Table:
        """Rows ``entity, name, term, value``: each entity's intercept, then its coefficients."""
        coef = self.coef.tocsr()
        coef.eliminate_zeros()
        nnz_row = np.repeat(np.arange(self.num_entities), np.diff(coef.indptr))
        rows = np.concatenate([np.arange(self.num_entities), nnz_row])
        columns = np.concatenate([np.full(self.num_entities, -1), coef.indices.astype(np.int64)])
        order = np.lexsort((columns, rows))
        rows, columns = rows[order], columns[order]
        values = np.concatenate([self.intercepts, coef.data])[order]
        names, terms = names_and_terms(index_map, columns)
        return pa.table([self.entity_ids.take(rows), names, terms, pa.array(values)], schema=RANDOM_EFFECT_SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table, index_map: IndexMap, source: str = "model") -> "RandomEffectModel":
        """Read a coefficient table; features missing from ``index_map`` are dropped."""
        check_unique_coefficients(table, ["entity", "name", "term"], source)
        encoded = pc.dictionary_encode(pc.cast(table.column("entity"), pa.string())).combine_chunks()
        rows = encoded.indices.to_numpy().astype(np.int64)
        num = len(encoded.dictionary)
        values = table.column("value").to_numpy()
        intercept_rows = is_intercept(table)
        intercepts = np.zeros(num)
        intercepts[rows[intercept_rows]] = values[intercept_rows]
        features = table.filter(pa.array(~intercept_rows))
        index = index_map.lookup(features.column("name"), features.column("term"))
        known = index >= 0
        coef = sp.csr_matrix(
            (values[~intercept_rows][known], (rows[~intercept_rows][known], index[known])),
            shape=(num, len(index_map)),
        )
        return cls(encoded.dictionary, intercepts, coef)


@dataclass(frozen=True)
class WarmStart:
    """A prior model aligned to the entity codes of a training set.

    ``intercepts[code]`` is NaN and ``rows[code]`` is -1 for entities without a prior model;
    ``coef`` holds the prior coefficients, one row per prior entity, in the bag's columns.
    """

    intercepts: np.ndarray
    rows: np.ndarray
    coef: sp.csr_matrix


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

    def as_dict(self) -> dict:
        return dict(self.__dict__)


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
    report = RandomEffectReport()
    layout = EntityLayout.build(codes, features, _select_training_rows(codes, config, report))
    total_weight = layout.per_entity_sum(weights)
    positive_weight = layout.per_entity_sum(weights * labels)
    trainable = total_weight > 0
    one_label = trainable & ((positive_weight <= 0) | (positive_weight >= total_weight))
    report.entities_zero_weight = int((~trainable).sum())
    report.one_label_entities = int(one_label.sum())

    intercept_ridge = np.full(layout.num_entities, config.l2 if config.regularize_intercept else 0.0)
    if not config.regularize_intercept:
        intercept_ridge[one_label] = config.one_label_intercept_l2 or config.l2

    intercept0, pair_coef0 = _initial_point(layout, initial)
    intercepts = np.zeros(layout.num_entities)
    pair_coef = np.zeros(len(layout.pair_feature))
    iterations = np.zeros(layout.num_entities, dtype=np.int64)
    converged = np.ones(layout.num_entities, dtype=bool)

    too_large = (layout.feature_count > config.solver.max_dense_features) | (
        dense_footprint(layout.row_count, layout.feature_count) > MAX_DENSE_ENTITY)
    sparse_path = np.flatnonzero(trainable & too_large)
    report.sparse_entities = len(sparse_path)
    single = trainable & ~too_large & (layout.row_count == 1)
    _solve_single_rows(layout, np.flatnonzero(single), labels, weights, offsets, config, intercept_ridge,
                       intercept0, pair_coef0, intercepts, pair_coef, iterations, converged)
    done, target = int(single.sum()), int(trainable.sum())
    for batch in layout.batches(np.flatnonzero(trainable & ~too_large & ~single)):
        problem = layout.batch_problem(batch, labels, weights, offsets, config.l2, intercept_ridge)
        solution = solve_batch(
            problem, intercept0[batch], layout.gather_pairs(batch, pair_coef0, problem.features.shape[2]),
            max_iter=config.solver.max_iter, tol=config.solver.tol,
        )
        intercepts[batch] = solution.intercept
        layout.scatter_pairs(batch, solution.coef, pair_coef)
        iterations[batch], converged[batch] = solution.iterations, solution.converged
        report.batches += 1
        done += len(batch)
        if progress is not None:
            progress(done, target)
    for k in sparse_path:
        start, count = layout.pair_start[k], layout.feature_count[k]
        result = _solve_sparse(layout, int(k), labels, weights, offsets, config, intercept_ridge[k],
                               np.concatenate([[intercept0[k]], pair_coef0[start:start + count]]))
        intercepts[k], pair_coef[start:start + count] = result.x[0], result.x[1:]
        iterations[k], converged[k] = result.iterations, result.converged
        done += 1
        if progress is not None:
            progress(done, target)

    trained = np.flatnonzero(trainable)
    report.entities_trained = len(trained)
    report.unconverged_entities = int((~converged[trained]).sum())
    if len(trained):
        report.iterations_mean = float(iterations[trained].mean())
        report.iterations_max = int(iterations[trained].max())
    coef = layout.pairs_to_csr(pair_coef, features.shape[1])[trained]
    return layout.entities[trained], intercepts[trained], coef, report


def _solve_single_rows(layout: EntityLayout, entities: np.ndarray, labels, weights, offsets,
                       config: RandomEffectConfig, intercept_ridge, intercept0, pair0,
                       intercepts, pair_coef, iterations, converged) -> None:
    """Entities with one training row: the exact one-dimensional reduction (see
    :func:`gdmix.solvers.batched_newton.solve_single_rows`), written into the outputs."""
    if len(entities) == 0:
        return
    rows = layout.rows[layout.row_start[entities]]
    nnz, owner, _ = segments(layout.nnz_start[entities], layout.nnz_start[entities + 1] - layout.nnz_start[entities])
    values = layout.nnz_value[nnz]
    slots = layout.pair_start[entities][owner] + layout.nnz_col[nnz]
    norm2 = np.bincount(owner, weights=values * values, minlength=len(entities))
    start = intercept0[entities] + np.bincount(owner, weights=values * pair0[slots], minlength=len(entities))
    solution = solve_single_rows(norm2, start, labels[rows], weights[rows], offsets[rows],
                                 np.full(len(entities), config.l2), intercept_ridge[entities],
                                 max_iter=config.solver.max_iter, tol=config.solver.tol)
    intercepts[entities] = solution.intercept
    pair_coef[slots] = solution.scale[owner] * values
    iterations[entities], converged[entities] = solution.iterations, solution.converged


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


def _initial_point(layout: EntityLayout, initial: WarmStart | None) -> tuple[np.ndarray, np.ndarray]:
    """Warm-start values per layout entity and per (entity, local feature) pair; 0 if unknown."""
    if initial is None:
        return np.zeros(layout.num_entities), np.zeros(len(layout.pair_feature))
    prior = initial.intercepts[layout.entities]
    intercept0 = np.where(np.isnan(prior), 0.0, prior)
    pair_rows = np.repeat(initial.rows[layout.entities], layout.feature_count)
    return intercept0, csr_values_at(initial.coef, pair_rows, layout.pair_feature)


def _solve_sparse(layout: EntityLayout, k: int, labels, weights, offsets, config: RandomEffectConfig,
                  intercept_ridge: float, theta0: np.ndarray):
    """One entity too large for a dense batch: L-BFGS-B on its sparse rows."""
    rows, design = layout.entity_design(k)
    penalty = np.concatenate([[intercept_ridge], np.full(design.shape[1], config.l2)])
    objective = penalised_objective(design, labels[rows], weights[rows], offsets[rows], penalty)
    # L-BFGS cannot resolve gradients much below sqrt(eps) of the summed loss (its line search
    # stops on round-off first), so this path's gradient rule has a floor.
    return minimize_lbfgs(objective, theta0, max_iter=max(1000, 10 * config.solver.max_iter),
                          gtol=max(config.solver.tol, SPARSE_GTOL_FLOOR), ftol=0.0, history=20,
                          scale=float(weights[rows].sum()))
