"""Random effect: one L2 logistic regression per entity, solved for all entities at once.

Each entity is fitted on its own rows, in its own feature subspace (the features it has ever
seen; all others stay exactly 0), with the other coordinates' scores as offset. Entities are
grouped into buckets of equal padded shape (rows x local features) and each bucket is solved
by :func:`gdmix.solvers.batched_newton.solve_batch`; the rare entity with more local features
than ``max_dense_features`` is solved alone by L-BFGS-B on its sparse rows.

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
from scipy.special import expit

from gdmix.config import RandomEffectConfig
from gdmix.dataset import EntityIds
from gdmix.features.index_map import IndexMap
from gdmix.models.linear import INTERCEPT_NAME, INTERCEPT_TERM, RANDOM_EFFECT_SCHEMA, is_intercept
from gdmix.solvers.batched_newton import BatchProblem, solve_batch
from gdmix.solvers.lbfgs import minimize_lbfgs

# Padded sizes: powers of two and 1.5x powers of two, so padding wastes at most a third.
_LADDER = np.array(sorted({int(m * 2**k) for k in range(40) for m in (1, 1.5)} | {0, 1, 2, 3}))
WIDE_GTOL_FLOOR = 1e-8
# Doubles per batch of the dense per-entity arrays (about 64 MB).
BATCH_BUDGET = 1 << 23


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
        has_model = model_row >= 0
        scores = np.where(has_model, self.intercepts[np.maximum(model_row, 0)], 0.0)
        if features.shape[1] == 0 or features.nnz == 0 or self.coef.nnz == 0:
            return scores
        features = features.tocsr()
        nnz_row = np.repeat(np.arange(features.shape[0]), np.diff(features.indptr))
        width = features.shape[1]
        keys = model_row[nnz_row] * width + features.indices
        model_keys = _csr_keys(self.coef)
        position = np.minimum(np.searchsorted(model_keys, keys), len(model_keys) - 1)
        match = (model_keys[position] == keys) & has_model[nnz_row]
        contribution = features.data[match] * self.coef.data[position[match]]
        return scores + np.bincount(nnz_row[match], weights=contribution, minlength=features.shape[0])

    def aligned_to(self, entities: EntityIds) -> tuple[np.ndarray, sp.csr_matrix]:
        """(intercept, coefficients) per entity code of ``entities``; NaN intercept = no model."""
        rows = self.rows_for(entities)
        has = rows >= 0
        intercepts = np.where(has, self.intercepts[np.maximum(rows, 0)], np.nan)
        coef = self.coef[np.maximum(rows, 0)] if len(rows) else sp.csr_matrix((0, self.coef.shape[1]))
        coef = sp.csr_matrix(sp.diags(has.astype(np.float64)) @ coef)
        coef.eliminate_zeros()
        return intercepts, coef

    def carry_over(self, prior: "RandomEffectModel") -> "RandomEffectModel":
        """This model plus the entities of ``prior`` it does not have (absent from new data)."""
        missing = pc.invert(pc.is_in(prior.entity_ids, value_set=self.entity_ids)).to_numpy(zero_copy_only=False)
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
        feature = columns >= 0
        safe = np.maximum(columns, 0)
        names = pc.if_else(pa.array(feature), index_map.names.take(safe) if len(index_map) else
                           pa.nulls(len(safe), pa.string()), INTERCEPT_NAME)
        terms = pc.if_else(pa.array(feature), index_map.terms.take(safe) if len(index_map) else
                           pa.nulls(len(safe), pa.string()), INTERCEPT_TERM)
        return pa.table(
            [self.entity_ids.take(rows), names, terms, pa.array(values)], schema=RANDOM_EFFECT_SCHEMA
        )

    @classmethod
    def from_table(cls, table: pa.Table, index_map: IndexMap) -> "RandomEffectModel":
        """Read a coefficient table; features missing from ``index_map`` are dropped."""
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
        coef.sum_duplicates()
        return cls(encoded.dictionary, intercepts, coef)


@dataclass
class RandomEffectReport:
    entities: int = 0
    entities_trained: int = 0
    entities_below_min_rows: int = 0
    entities_down_sampled: int = 0
    entities_zero_weight: int = 0
    one_label_entities: int = 0
    unconverged_entities: int = 0
    wide_entities: int = 0
    passive_rows: int = 0
    newton_iterations_mean: float = 0.0
    newton_iterations_max: int = 0
    batches: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EntityLayout:
    """Training rows grouped by entity, and each entity's local feature subspace.

    Entities are numbered ``k = 0..K-1`` (``entities[k]`` is the entity code). Rows of entity
    ``k`` are ``rows[row_start[k] : row_start[k] + row_count[k]]``; its local features are
    ``pair_feature[pair_start[k] : pair_start[k] + feature_count[k]]`` (sorted global columns).
    Non-zeros of the sorted design are described by (entity, local row, local column, value).
    """

    entities: np.ndarray
    rows: np.ndarray
    row_start: np.ndarray
    row_count: np.ndarray
    pair_feature: np.ndarray
    pair_start: np.ndarray
    feature_count: np.ndarray
    nnz_start: np.ndarray  # (K+1,) non-zeros of entity k: nnz_start[k]:nnz_start[k+1]
    nnz_row: np.ndarray
    nnz_col: np.ndarray
    nnz_value: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, features: sp.csr_matrix, train_rows: np.ndarray) -> "EntityLayout":
        rows = train_rows[np.argsort(codes[train_rows], kind="stable")]
        entities, row_start, row_count = np.unique(codes[rows], return_index=True, return_counts=True)
        k_of_row = np.repeat(np.arange(len(entities)), row_count)
        sorted_x = features[rows]
        sorted_x.sort_indices()
        per_row = np.diff(sorted_x.indptr)
        nnz_k = np.repeat(k_of_row, per_row)
        width = max(features.shape[1], 1)
        keys = nnz_k * width + sorted_x.indices
        pair_keys, inverse = np.unique(keys, return_inverse=True)
        feature_count = np.bincount(pair_keys // width, minlength=len(entities))
        pair_start = _starts(feature_count)
        nnz_per_entity = np.bincount(nnz_k, minlength=len(entities))
        return cls(
            entities=entities,
            rows=rows,
            row_start=row_start,
            row_count=row_count,
            pair_feature=(pair_keys % width).astype(np.int64),
            pair_start=pair_start,
            feature_count=feature_count,
            nnz_start=np.concatenate([[0], np.cumsum(nnz_per_entity)]),
            nnz_row=np.repeat(np.arange(len(rows)) - row_start[k_of_row], per_row),
            nnz_col=inverse.reshape(-1) - pair_start[nnz_k],
            nnz_value=sorted_x.data.astype(np.float64, copy=False),
        )

    @property
    def num_entities(self) -> int:
        return len(self.entities)


def fit_random_effect(
    codes: np.ndarray,
    features: sp.csr_matrix,
    labels: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    config: RandomEffectConfig,
    initial: tuple[np.ndarray, sp.csr_matrix] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix, RandomEffectReport]:
    """Train every entity with enough rows.

    ``codes`` are entity codes per row; ``initial`` is an optional warm start as (intercept per
    entity code, NaN where unknown; coefficient matrix entity code x feature). Returns the
    trained entity codes, their intercepts, their coefficients (one row each) and a report.
    """
    report = RandomEffectReport()
    train_rows = _select_training_rows(codes, config, report)
    layout = EntityLayout.build(codes, features, train_rows)
    total_weight = np.bincount(np.repeat(np.arange(layout.num_entities), layout.row_count),
                               weights=weights[layout.rows], minlength=layout.num_entities)
    positive_weight = np.bincount(np.repeat(np.arange(layout.num_entities), layout.row_count),
                                  weights=(weights * labels)[layout.rows], minlength=layout.num_entities)
    trainable = total_weight > 0
    report.entities_zero_weight = int((~trainable).sum())
    one_label = trainable & ((positive_weight <= 0) | (positive_weight >= total_weight))
    report.one_label_entities = int(one_label.sum())

    intercept_ridge = np.full(layout.num_entities, config.l2 if config.regularize_intercept else 0.0)
    if not config.regularize_intercept:
        intercept_ridge[one_label] = config.one_label_intercept_l2 or config.l2

    intercept0, pair_coef0 = _initial_point(layout, features.shape[1], initial)
    intercepts = np.zeros(layout.num_entities)
    pair_coef = np.zeros(len(layout.pair_feature))
    iterations = np.zeros(layout.num_entities, dtype=np.int64)
    converged = np.ones(layout.num_entities, dtype=bool)

    wide = trainable & (layout.feature_count > config.solver.max_dense_features)
    report.wide_entities = int(wide.sum())
    dense = np.flatnonzero(trainable & ~wide)
    done = 0
    target = int(trainable.sum())
    for batch in _batches(layout, dense):
        problem = _batch_problem(layout, batch, labels, weights, offsets, config.l2, intercept_ridge)
        q = problem.features.shape[2]
        solution = solve_batch(
            problem,
            intercept0[batch],
            _gather_pairs(layout, batch, pair_coef0, q),
            max_iter=config.solver.max_iter,
            tol=config.solver.tol,
        )
        intercepts[batch] = solution.intercept
        _scatter_pairs(layout, batch, solution.coef, pair_coef)
        iterations[batch] = solution.iterations
        converged[batch] = solution.converged
        report.batches += 1
        done += len(batch)
        if progress is not None:
            progress(done, target)
    for k in np.flatnonzero(wide):
        b, beta, its, ok = _solve_wide(layout, int(k), labels, weights, offsets, config,
                                       intercept_ridge[k], intercept0[k], pair_coef0)
        intercepts[k] = b
        start = layout.pair_start[k]
        pair_coef[start:start + layout.feature_count[k]] = beta
        iterations[k], converged[k] = its, ok
        done += 1
        if progress is not None:
            progress(done, target)

    trained = np.flatnonzero(trainable)
    report.entities_trained = len(trained)
    report.unconverged_entities = int((~converged[trained]).sum())
    if len(trained):
        report.newton_iterations_mean = float(iterations[trained].mean())
        report.newton_iterations_max = int(iterations[trained].max())
    coef = _pairs_to_csr(layout, pair_coef, features.shape[1])[trained]
    return layout.entities[trained], intercepts[trained], coef, report


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
        starts = _starts(counts)
        rank[order] = np.arange(len(codes)) - starts[codes[order]]
        sampled_out = eligible & (rank >= config.max_rows)
        report.passive_rows = int(sampled_out.sum())
        eligible &= ~sampled_out
    return np.flatnonzero(eligible)


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - _starts(lengths), lengths)
    return shifts + np.arange(total)


def _pad(sizes: np.ndarray) -> np.ndarray:
    return _LADDER[np.searchsorted(_LADDER, sizes)]


def _batches(layout: EntityLayout, entities: np.ndarray):
    """Groups of entities sharing padded (rows, features), each within the memory budget."""
    if len(entities) == 0:
        return
    n_pad = _pad(layout.row_count[entities])
    q_pad = _pad(layout.feature_count[entities])
    order = np.lexsort((q_pad, n_pad))
    entities, n_pad, q_pad = entities[order], n_pad[order], q_pad[order]
    boundaries = np.flatnonzero((np.diff(n_pad) != 0) | (np.diff(q_pad) != 0)) + 1
    for group in np.split(np.arange(len(entities)), boundaries):
        n, q = int(n_pad[group[0]]), int(q_pad[group[0]])
        per_entity = n * q + q * q + n * n + 8 * (n + q)
        size = max(1, BATCH_BUDGET // per_entity)
        for start in range(0, len(group), size):
            yield entities[group[start:start + size]]


def _batch_problem(layout, batch, labels, weights, offsets, l2, intercept_ridge) -> BatchProblem:
    """Dense padded arrays for one batch of entities."""
    m = len(batch)
    n = int(_pad(layout.row_count[batch]).max())
    q = int(_pad(layout.feature_count[batch]).max())
    row_slots = _ranges(layout.row_start[batch], layout.row_count[batch])
    row_entity = np.repeat(np.arange(m), layout.row_count[batch])
    row_local = row_slots - np.repeat(layout.row_start[batch], layout.row_count[batch])
    source = layout.rows[row_slots]
    y, w, o = np.zeros((m, n)), np.zeros((m, n)), np.zeros((m, n))
    y[row_entity, row_local] = labels[source]
    w[row_entity, row_local] = weights[source]
    o[row_entity, row_local] = offsets[source]
    nnz = _ranges(layout.nnz_start[batch], layout.nnz_start[batch + 1] - layout.nnz_start[batch])
    nnz_entity = np.repeat(np.arange(m), layout.nnz_start[batch + 1] - layout.nnz_start[batch])
    features = np.zeros((m, n, q))
    features[nnz_entity, layout.nnz_row[nnz], layout.nnz_col[nnz]] = layout.nnz_value[nnz]
    return BatchProblem(features, y, w, o, np.full(m, float(l2)), intercept_ridge[batch])


def _gather_pairs(layout: EntityLayout, batch: np.ndarray, pair_values: np.ndarray, q: int) -> np.ndarray:
    """Per-pair values of a batch as a dense (m, q) array in local column order."""
    out = np.zeros((len(batch), q))
    slots = _ranges(layout.pair_start[batch], layout.feature_count[batch])
    entity = np.repeat(np.arange(len(batch)), layout.feature_count[batch])
    out[entity, slots - np.repeat(layout.pair_start[batch], layout.feature_count[batch])] = pair_values[slots]
    return out


def _scatter_pairs(layout: EntityLayout, batch: np.ndarray, dense: np.ndarray, pair_values: np.ndarray) -> None:
    slots = _ranges(layout.pair_start[batch], layout.feature_count[batch])
    entity = np.repeat(np.arange(len(batch)), layout.feature_count[batch])
    pair_values[slots] = dense[entity, slots - np.repeat(layout.pair_start[batch], layout.feature_count[batch])]


def _initial_point(layout: EntityLayout, width: int, initial) -> tuple[np.ndarray, np.ndarray]:
    """Warm-start values per layout entity and per (entity, local feature) pair."""
    intercept0 = np.zeros(layout.num_entities)
    pair0 = np.zeros(len(layout.pair_feature))
    if initial is None:
        return intercept0, pair0
    prior_intercepts, prior_coef = initial
    known = ~np.isnan(prior_intercepts[layout.entities])
    intercept0[known] = prior_intercepts[layout.entities][known]
    if prior_coef.nnz and len(pair0):
        prior_keys = _csr_keys(prior_coef.tocsr())
        pair_entity = np.repeat(layout.entities, layout.feature_count)
        keys = pair_entity * prior_coef.shape[1] + layout.pair_feature
        position = np.minimum(np.searchsorted(prior_keys, keys), len(prior_keys) - 1)
        match = prior_keys[position] == keys
        pair0[match] = prior_coef.tocsr().data[position[match]]
    return intercept0, pair0


def _csr_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """Sorted ``row * width + column`` keys of a CSR matrix with sorted indices."""
    if not matrix.has_sorted_indices:
        matrix.sort_indices()
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def _pairs_to_csr(layout: EntityLayout, pair_values: np.ndarray, width: int) -> sp.csr_matrix:
    indptr = np.concatenate([[0], np.cumsum(layout.feature_count)])
    return sp.csr_matrix((pair_values, layout.pair_feature, indptr), shape=(layout.num_entities, width))


def _solve_wide(layout, k, labels, weights, offsets, config, intercept_ridge, intercept0, pair0):
    """One entity with too many local features for a dense Hessian: L-BFGS-B on sparse rows."""
    rows = layout.rows[layout.row_start[k]:layout.row_start[k] + layout.row_count[k]]
    nnz = slice(layout.nnz_start[k], layout.nnz_start[k + 1])
    q = int(layout.feature_count[k])
    x = sp.csr_matrix((layout.nnz_value[nnz], (layout.nnz_row[nnz], layout.nnz_col[nnz])),
                      shape=(len(rows), q))
    y, w, o = labels[rows], weights[rows], offsets[rows]
    penalty = np.concatenate([[intercept_ridge], np.full(q, config.l2)])

    def objective(theta):
        z = x @ theta[1:] + theta[0] + o
        residual = w * (expit(z) - y)
        value = np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.dot(penalty * theta, theta)
        grad = np.concatenate([[residual.sum()], x.T @ residual]) + penalty * theta
        return value, grad

    start = layout.pair_start[k]
    theta0 = np.concatenate([[intercept0], pair0[start:start + q]])
    # L-BFGS cannot resolve gradients much below sqrt(eps) of the summed loss (its line search
    # stops on round-off first), so the wide path's gradient rule has a floor.
    result = minimize_lbfgs(objective, theta0, max_iter=max(1000, 10 * config.solver.max_iter),
                            gtol=max(config.solver.tol, WIDE_GTOL_FLOOR), ftol=0.0, history=20,
                            scale=float(w.sum()))
    return result.x[0], result.x[1:], result.iterations, result.converged

