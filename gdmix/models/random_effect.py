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
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from scipy.special import expit

from gdmix.config import RandomEffectConfig
from gdmix.dataset import EntityIds
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.models.empirical_bayes import (
    L2_SEARCH_BOUNDS, L2_SEARCH_XTOL, estimate_l2, estimate_l2_per_group, initial_ridges, laplace_log_evidence,
)
from gdmix.models.entity_layout import MAX_DENSE_ENTITY, EntityLayout, dense_footprint
from gdmix.models.linear import (
    MAX_DENSE_HESSIAN, RANDOM_EFFECT_SCHEMA, VARIANCE_COLUMN, check_unique_coefficients, is_intercept,
    names_and_terms,
)
from gdmix.solvers.batched_newton import (
    HatTerms, LaplaceOptimum, coefficient_variances, laplace_optimum, single_row_hat, solve_batch, solve_single_rows,
)
from gdmix.native import entity_kernels as native
from gdmix.solvers.lbfgs import minimize_lbfgs
from gdmix.solvers.parallel import available_cores, ordered_map
from gdmix.errors import GdmixError
from gdmix.losses.logistic import log_loss_terms, penalised_objective
from gdmix.memory import release_free_memory
from gdmix.sparse import csr_row_range, csr_values_at, segments, starts_of, take_or

SPARSE_GTOL_FLOOR = 1e-8
#: entities whose smaller side (rows or local features) is at most this are solved by the fused
#: kernel (:mod:`gdmix.native.entity_kernels`) when no evidence is asked for; larger ones by
#: batched numpy (LAPACK's blocked factorisations for the rare large dense system; the kernel's
#: plain loops were measured only up to this size, where they beat it)
NATIVE_MAX_SIDE = 256
#: a coefficient table is built and written this many entities at a time (:meth:`RandomEffectModel.write`)
WRITE_CHUNK_ENTITIES = 1 << 15
#: where a coefficient table keeps the ridge ``l2: auto`` learned (Parquet schema metadata)
L2_METADATA = "gdmix.l2"
#: ... and the intercept's, when ``l2: auto`` learned it apart (``per_group``)
INTERCEPT_L2_METADATA = "gdmix.intercept_l2"


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
    intercept_l2: float | None = None  # the intercept's own ridge (``l2: auto`` with ``per_group``)

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
        if native.library() is not None:
            return native.score_rows(features, model_row, self.coef, self.intercepts, ordered_map)
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
        return WarmStart(take_or(self.intercepts, rows, np.nan), rows, self.coef, self.l2, self.intercept_l2)

    def carry_over(self, prior: "RandomEffectModel", present: pa.Array) -> "RandomEffectModel":
        """This model plus the entities of ``prior`` whose ids are not in ``present`` (the ids of
        the new training data): entities absent from new data keep their old model, while an
        entity present but left untrained (too few rows) gets none, as a cold one would."""
        missing = pc.invert(pc.is_in(prior.entity_ids, value_set=present)).to_numpy(zero_copy_only=False)
        return self.carry_over_rows(prior, np.flatnonzero(missing))

    def carry_over_rows(self, prior: "RandomEffectModel", keep: np.ndarray) -> "RandomEffectModel":
        """This model plus rows ``keep`` of ``prior`` (the entities :meth:`carry_over` finds
        absent from the data, when the caller knows them without looking their ids up)."""
        if len(keep) == 0:
            return self
        variances = None
        if self.variances is not None:
            carried = prior.variances or self.variances.take_missing(prior.num_entities, prior.coef.shape[1])
            variances = CoefficientVariances(np.concatenate([self.variances.intercepts, carried.intercepts[keep]]),
                                             sp.vstack([self.variances.coef, carried.coef[keep]], format="csr"))
        return RandomEffectModel(
            pa.concat_arrays([self.entity_ids, prior.entity_ids.take(keep)]),
            np.concatenate([self.intercepts, prior.intercepts[keep]]),
            sp.vstack([self.coef, prior.coef[keep]], format="csr"),
            self.l2, variances, self.intercept_l2,
        )

    def split(self, parts: int) -> list["RandomEffectModel"]:
        """The model as ``parts`` consecutive ranges of its entities (fewer when it has fewer
        entities, one when it has none)."""
        bounds = np.linspace(0, self.num_entities, max(1, min(parts, self.num_entities)) + 1).astype(np.int64)

        def piece(first: int, stop: int) -> "RandomEffectModel":
            variances = None if self.variances is None else CoefficientVariances(
                self.variances.intercepts[first:stop], csr_row_range(self.variances.coef, first, stop))
            return dataclasses.replace(self, entity_ids=self.entity_ids.slice(first, stop - first),
                                       intercepts=self.intercepts[first:stop], coef=csr_row_range(self.coef, first, stop),
                                       variances=variances)

        return [piece(first, stop) for first, stop in zip(bounds[:-1], bounds[1:])]

    def write(self, uri: str, index_map: IndexMap) -> None:
        """The coefficient table (:meth:`to_table`) as one Parquet file per core, ``part-00000``,
        ``part-00001``, ...: consecutive ranges of entities, built and written in parallel (read in
        file-name order they are the one table), each in chunks of :data:`WRITE_CHUNK_ENTITIES`
        entities so that the table (strings on every row) never exists whole in memory. ``uri``
        is a fresh (staging) directory."""
        def write(numbered: tuple[int, "RandomEffectModel"]) -> None:
            number, part = numbered
            chunks = part.split(-(-part.num_entities // WRITE_CHUNK_ENTITIES))
            fs.write_parquet_tables((chunk.to_table(index_map, dictionary=True) for chunk in chunks), uri,
                                    f"part-{number:05d}.parquet")

        for _ in ordered_map(write, list(enumerate(self.split(available_cores())))):
            pass

    def to_table(self, index_map: IndexMap, dictionary: bool = False) -> pa.Table:
        """Rows ``entity, name, term, value`` (and ``variance``, when the model has them): each
        entity's intercept, then its coefficients. With ``dictionary``, the three string columns
        are dictionary arrays over this model's ids and the names and terms it uses: the same
        values without a string per row, as :meth:`write` writes them (Parquet stores them
        dictionary-encoded either way)."""
        coef = self.coef.tocsr()
        if not coef.has_sorted_indices:
            coef = coef.sorted_indices()
        nnz_row = np.repeat(np.arange(self.num_entities), np.diff(coef.indptr))
        kept = slice(None)
        if not coef.data.all():  # explicit zeros are not written (the model is left as it is)
            kept = np.flatnonzero(coef.data)
            nnz_row = nnz_row[kept]
        # entity by entity, its intercept then its coefficients by column: kept entry j lands after
        # the j entries and nnz_row[j] + 1 intercepts before it
        rows = np.repeat(np.arange(self.num_entities), np.bincount(nnz_row, minlength=self.num_entities) + 1)
        intercept_at = np.arange(self.num_entities) + np.searchsorted(nnz_row, np.arange(self.num_entities))
        entry_at = np.arange(len(nnz_row)) + nnz_row + 1
        columns = np.empty(len(rows), dtype=np.int64)
        columns[intercept_at], columns[entry_at] = -1, coef.indices[kept]

        def laid_out(intercepts, entries):
            values = np.empty(len(rows))
            values[intercept_at], values[entry_at] = intercepts, entries
            return pa.array(values)

        names, terms = names_and_terms(index_map, columns, dictionary)
        entities = self.entity_ids.take(rows) if not dictionary else pa.DictionaryArray.from_arrays(
            pa.array(rows.astype(np.int32)), pc.cast(self.entity_ids, pa.string()))
        arrays = [entities, names, terms, laid_out(self.intercepts, coef.data[kept])]
        schema = RANDOM_EFFECT_SCHEMA
        if dictionary:
            schema = pa.schema([field.with_type(array.type) for field, array in zip(schema, arrays)])
        if self.variances is not None:
            arrays.append(laid_out(self.variances.intercepts,
                                   csr_values_at(self.variances.coef, nnz_row, coef.indices[kept])))
            schema = schema.append(pa.field(VARIANCE_COLUMN, pa.float64()))
        ridges = ((L2_METADATA, self.l2), (INTERCEPT_L2_METADATA, self.intercept_l2))
        learned = {key: repr(value) for key, value in ridges if value is not None}
        if learned:
            schema = schema.with_metadata(learned)
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
        return cls(encoded.dictionary, intercepts, coef, learned_ridge(table.schema, L2_METADATA), variances,
                   learned_ridge(table.schema, INTERCEPT_L2_METADATA))


def learned_ridge(schema: pa.Schema, key: str) -> float | None:
    """A ridge ``l2: auto`` learned, as a coefficient table's metadata keeps it (None: not there)."""
    learned = (schema.metadata or {}).get(key.encode())
    return float(learned) if learned else None


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
    intercept_l2: float | None = None  # ... and its intercept's (``per_group``)


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
    # ``per_group`` only: the intercept's own ridge and prior variance (``l2`` is then the coefficients')
    intercept_l2: float | None = None
    intercept_prior_variance: float | None = None

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
    report = RandomEffectReport()
    problem = entity_problems(codes, features, labels, weights, offsets, config, report)
    fitted = _fit(problem, report, features.shape[1], initial, progress)
    return fitted.codes, fitted.intercepts, fitted.coef, fitted.report


def fit_random_effect_model(entities: EntityIds, features: sp.csr_matrix, labels: np.ndarray, weights: np.ndarray,
                            offsets: np.ndarray, config: RandomEffectConfig, initial: WarmStart | None = None,
                            progress: Callable[[float, float], None] | None = None, intercept_l2: float | None = None,
                            memo: "PassMemo | None" = None) -> tuple[RandomEffectModel, RandomEffectReport]:
    """:func:`fit_random_effect` as a model: the entities' ids, the learned ``l2`` (``l2: auto``)
    and, with ``variance: simple | full``, the coefficients' variances at the optimum.

    ``intercept_l2`` (a fixed ``l2`` only) is the intercept's own ridge: what a partition trains
    at after the coordinate's ``per_group`` search (:mod:`gdmix.jobs.learned_l2`). ``memo``
    carries the entities' problems from one pass of coordinate descent to the next (see
    :class:`PassMemo`)."""
    report = RandomEffectReport()
    scores = None
    if memo is None:
        problem = entity_problems(entities.codes, features, labels, weights, offsets, config, report)
    else:
        problem = memo.problem_for(entities.codes, features, labels, weights, offsets, config, report)
        if config.l2_auto is None and native.library() is not None:  # the fused kernel scores as it solves
            scores = np.full(len(labels), np.nan)
    fitted = _fit(problem, report, features.shape[1], initial, progress, intercept_l2, scores)
    variances = None
    if config.variance != "none":
        variances = fitted.variances(full=config.variance == "full")
    model = RandomEffectModel(entities.strings().take(fitted.codes), fitted.intercepts, fitted.coef,
                              fitted.report.l2, variances, fitted.report.intercept_l2)
    if memo is not None:
        memo.trained, memo.scores = fitted.trained, scores
    return model, fitted.report


@dataclass
class PassMemo:
    """What a random-effect coordinate keeps from one pass of coordinate descent to the next on
    the same training rows, where only the offsets change: the entities' problems (grouping the
    rows by entity and ranking each entity's columns, the largest serial part of a cold pass)
    and which layout entities the last model's first rows are, so that the next pass reads its
    starting point straight from that model (:meth:`start_from`) instead of looking every
    coefficient up. Rows are recognised by identity: other arrays (a new dataset) build afresh."""

    inputs: tuple = ()
    config: RandomEffectConfig | None = None
    problem: "_EntityProblems | None" = None
    counts: dict = dataclasses.field(default_factory=dict)  # the report's counts of ``problem``
    trained: np.ndarray | None = None  # layout entities of the last model's first rows, in order
    model: RandomEffectModel | None = None  # the last pass's model (with any entities carried over)
    # the training rows' scores by the last model, computed by the solve while each entity's rows
    # were in cache (NaN for rows it did not score: see :meth:`training_scores`)
    scores: np.ndarray | None = None
    # whether a warm start read straight off the last model (:meth:`start_from`) may be written
    # over by the solve: set where the caller drops that model once the next one is trained
    # (coordinate descent), so the two generations of coefficients are never held together
    recycle: bool = False

    def clear(self) -> None:
        """Forget everything (the next pass builds afresh)."""
        self.inputs, self.config, self.problem, self.counts = (), None, None, {}
        self.trained = self.model = self.scores = None

    def problem_for(self, codes, features, labels, weights, offsets, config: RandomEffectConfig,
                    report: RandomEffectReport) -> "_EntityProblems":
        """The problems of these rows at these offsets: the last pass's, when the rows and the
        config are the same; counts what it found into ``report`` either way."""
        inputs = (codes, features, labels, weights)
        if self._holds(inputs, config):
            for key, value in self.counts.items():
                setattr(report, key, value)
            return dataclasses.replace(self.problem, offsets=offsets)
        problem = entity_problems(codes, features, labels, weights, offsets, config, report)
        # kept without this pass's offsets (8 bytes a row): the next pass brings its own
        self.inputs, self.config, self.counts = inputs, config, report.as_dict()
        self.problem = dataclasses.replace(problem, offsets=None)
        self.trained = self.model = self.scores = None
        return problem

    def _holds(self, inputs: tuple, config: RandomEffectConfig) -> bool:
        """Whether the memo's problems are those of these rows (the same arrays) and config."""
        return (self.problem is not None and self.config == config and len(inputs) == len(self.inputs)
                and all(mine is theirs for mine, theirs in zip(self.inputs, inputs)))

    def _last_model_slots(self, model: RandomEffectModel, codes, features, labels, weights,
                          config: RandomEffectConfig) -> np.ndarray | slice | None:
        """The pairs the last pass's model stores in its first rows (in order; a slice when they
        are all of them), when ``model`` is that model, unedited, on these very rows; else None."""
        if (model is None or model is not self.model or self.trained is None
                or not self._holds((codes, features, labels, weights), config)):
            return None
        layout, trained = self.problem.layout, self.trained
        if len(trained) == layout.num_entities:  # everyone trained (as usual): every pair, in order
            slots = slice(None)
        else:
            slots, _, _ = segments(layout.pair_start[trained], layout.feature_count[trained])
        features_of_slots = layout.pair_feature[slots]
        coef = model.coef
        count = len(features_of_slots)
        same = coef.indices is layout.pair_feature or np.array_equal(coef.indices[:count], features_of_slots)
        if coef.indptr[len(trained)] != count or not same:
            return None  # its coefficients were edited since (zeros dropped)
        return slots

    def training_scores(self, model: RandomEffectModel, entities: EntityIds, features, labels,
                        weights) -> np.ndarray | None:
        """``model.score(entities, features)``, bit for bit, when ``model`` is the last pass's on
        these very rows: the rows the solve scored are taken as they are, the others (entities
        the kernel did not solve, rows left out of training) scored now; None otherwise, or when
        the solve scored no row (``l2: auto``, no native kernel). The memo hands its array over
        rather than copy it (8 bytes a row), so it answers once per solve; later calls get None
        and score the model instead, to the same bits."""
        if self.scores is None or self._last_model_slots(model, entities.codes, features, labels, weights,
                                                         self.config) is None:
            return None
        scores, self.scores = self.scores, None
        missing = np.flatnonzero(np.isnan(scores))
        if len(missing) == len(scores):  # the solve scored none: score them all, without a copy of the bag
            return None
        if len(missing):
            scores[missing] = model.score(entities.take(missing), features[missing])
        return scores

    def carried_rows(self, model: RandomEffectModel) -> np.ndarray:
        """The rows of the last pass's model (``model``, which :meth:`start_from` accepted) that it
        carried over from an earlier one: those after the entities it trained, the entities absent
        from these rows, which the next pass carries again without looking their ids up."""
        return np.arange(len(self.trained), model.num_entities)

    def start_from(self, model: RandomEffectModel, codes, features, labels, weights,
                   config: RandomEffectConfig) -> "_Solution | None":
        """Where a fit of these rows starts when warm-started from ``model``: read straight off it
        when it is the last pass's model on the same rows (its first rows are the trained layout
        entities, their coefficients in layout order); None for any other model or rows."""
        slots = self._last_model_slots(model, codes, features, labels, weights, config)
        if slots is None:
            return None
        layout, trained, coef = self.problem.layout, self.trained, model.coef
        stored = coef.data[:coef.indptr[len(trained)]]
        if isinstance(slots, slice):  # every pair, in order: the model's own values (solvers only read a start)
            pairs = stored
        else:
            pairs = np.zeros(len(layout.pair_feature))
            pairs[slots] = stored
        start = _Solution(np.zeros(layout.num_entities), pairs, l2=model.l2, intercept_l2=model.intercept_l2,
                          recyclable=self.recycle or pairs is not stored,
                          columns=coef.indices if isinstance(slots, slice) else None)
        start.intercepts[trained] = model.intercepts[:len(trained)]
        return start


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
    def everyone_trained(self) -> bool:
        return bool(self.problem.trainable.all())

    @property
    def intercepts(self) -> np.ndarray:
        return self.solution.intercepts if self.everyone_trained else self.solution.intercepts[self.trained]

    @property
    def coef(self) -> sp.csr_matrix:
        coef = self.problem.layout.pairs_to_csr(self.solution.pair_coef, self.width, self.solution.columns)
        return coef if self.everyone_trained else coef[self.trained]

    def variances(self, full: bool) -> CoefficientVariances:
        intercepts, pairs = self.problem.variances(self.solution, full)
        return CoefficientVariances(intercepts[self.trained],
                                    self.problem.layout.pairs_to_csr(pairs, self.width)[self.trained])


def entity_problems(codes, features, labels, weights, offsets, config: RandomEffectConfig,
                    report: RandomEffectReport | None = None) -> "_EntityProblems":
    """Every entity's training problem (rows grouped by entity after ``min_rows`` / ``max_rows``),
    solvable at any ``l2``; counts what it found into ``report``."""
    report = RandomEffectReport() if report is None else report
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
    release_free_memory()  # the build's temporaries (per row and per non-zero), before the solve's outputs
    return _EntityProblems(layout, labels, weights, offsets, config, trainable, one_label, too_large)


def initial_solution(problem: "_EntityProblems", initial: WarmStart | None) -> "_Solution":
    """Where the solver starts on ``problem``: the warm start's coefficients (0 where unknown)
    and its learned ``l2``."""
    return _Solution.initial(problem.layout, initial)


def evidence_fields() -> tuple[str, ...]:
    """The evidence quantities of a solution, each a sum over entities (so partitions and
    workers add them up)."""
    return _Solution.EVIDENCE_FIELDS


def learned_l2_report(solution) -> dict:
    """What ``l2: auto`` found, as report fields: the estimate, the prior variance it stands for,
    the solves it took, the log evidence there, and whether it lies at the edge of the range
    searched (the evidence still grew there: the data barely constrain the prior); with
    ``per_group``, the intercept's estimate and prior variance too (``l2`` is the coefficients')."""
    ridges = [solution.l2] + ([] if getattr(solution, "intercept_l2", None) is None else [solution.intercept_l2])
    edges = np.isclose(np.log(ridges)[:, None], L2_SEARCH_BOUNDS, atol=2 * L2_SEARCH_XTOL)
    report = {"l2": float(solution.l2), "prior_variance": 1.0 / float(solution.l2),
              "l2_evaluations": int(solution.evaluations), "log_evidence": float(solution.log_evidence),
              "l2_at_search_bound": bool(edges.any())}
    if len(ridges) > 1:
        report |= {"intercept_l2": float(ridges[1]), "intercept_prior_variance": 1.0 / float(ridges[1])}
    return report


def _fit(problem: "_EntityProblems", report: RandomEffectReport, width: int, initial: "WarmStart | _Solution | None",
         progress, intercept_l2: float | None = None, scores: np.ndarray | None = None) -> _Fit:
    """Solve ``problem`` from ``initial`` (a warm start, or a starting solution of this very
    problem) at the config's ``l2``, or search ``l2`` (``l2: auto``). At a fixed ``l2``,
    ``scores`` receives the rows the fused kernel scored (see :meth:`_EntityProblems.solve`)."""
    trainable, config = problem.trainable, problem.config
    start = initial if isinstance(initial, _Solution) else _Solution.initial(problem.layout, initial)
    auto = config.l2_auto
    if auto is None:
        solution = problem.solve(config.l2, start, progress, intercept_l2=intercept_l2, scores=scores,
                                 recycle_start=True)  # the one solve from this start
    else:
        if auto.per_group:
            solution = estimate_l2_per_group(problem, *initial_ridges(auto.init, start.l2, start.intercept_l2), start)
        else:
            solution = estimate_l2(problem, auto.init if start.l2 is None else start.l2, start)
        for key, value in learned_l2_report(solution).items():
            setattr(report, key, value)

    trained = np.flatnonzero(trainable)
    report.entities_trained = len(trained)
    report.batches = solution.batches
    report.unconverged_entities = int((~solution.converged[trained]).sum())
    if len(trained):
        report.iterations_mean = float(solution.iterations[trained].mean())
        report.iterations_max = int(solution.iterations[trained].max())
    return _Fit(problem, solution, report, width)


@dataclass
class _Solution:
    """Every layout entity's intercept and (entity, local feature) coefficients at one ``l2`` (and
    one intercept ridge ``intercept_l2``, when it is apart), with what the solvers report and, when
    asked, the total Laplace log evidence and its slopes."""

    #: the evidence quantities :func:`estimate_l2` and :func:`estimate_l2_per_group` use: each a sum
    #: over entities, so partitions (and workers) add them up to the coordinate's
    EVIDENCE_FIELDS: ClassVar[tuple[str, ...]] = ("log_evidence", "log_evidence_slope", "log_evidence_intercept_slope")

    intercepts: np.ndarray
    pair_coef: np.ndarray
    iterations: np.ndarray | None = None
    converged: np.ndarray | None = None
    l2: float | None = None
    log_evidence: float | None = None
    # d log_evidence / d log l2 (with intercept_l2 set, the intercept's ridge held fixed)
    log_evidence_slope: float | None = None
    log_evidence_intercept_slope: float | None = None  # d log_evidence / d log intercept_l2 (0 without it)
    # with the evidence, how the optimum moves: (d intercepts, d pair_coef) / d log l2 and, with
    # intercept_l2 set, / d log intercept_l2, so that a solve at nearby ridges starts from a
    # first-order prediction (:meth:`toward`)
    tangents: list[tuple[np.ndarray, np.ndarray]] | None = None
    batches: int = 0
    evaluations: int = 0
    intercept_l2: float | None = None  # the intercept's ridge, when not l2's (``per_group``)
    # a start whose arrays nobody else reads: the solve from it writes its results over them
    # (each entity's start is read before its result is written, and by its own solve only)
    recyclable: bool = False
    # the column indices of a model of this very layout (read-only), for the next model to share
    columns: np.ndarray | None = None

    def add_laplace(self, optimum: LaplaceOptimum, dimension, ridge: np.ndarray,
                    directions: list[tuple[np.ndarray, float]]) -> list[tuple[tuple[np.ndarray, np.ndarray], object]]:
        """Add some entities' log evidence and its slopes along ``directions`` (see
        :meth:`_EntityProblems.directions`, here for these entities) to the totals; returns each
        direction's tangent arrays with the entities' terms along it, for the caller to scatter
        the tangents (laid out as its path lays out coefficients)."""
        terms = [optimum.terms(*direction) for direction in directions]
        evidence = [laplace_log_evidence(along, dimension, self.l2, ridge, *direction)
                    for along, direction in zip(terms, directions)]
        self.log_evidence += evidence[0][0]
        self.log_evidence_slope += evidence[0][1]
        if len(evidence) > 1:
            self.log_evidence_intercept_slope += evidence[1][1]
        return list(zip(self.tangents, terms))

    def toward(self, l2: float, intercept_l2: float | None = None) -> "_Solution":
        """This solution as the start of a solve at ``l2`` (and ``intercept_l2``): moved along its
        tangents, when it has them (a warm start then misses the optimum by the square of the step
        in ``log l2``)."""
        if self.tangents is None or self.l2 is None:
            return self
        shifts = [float(np.log(l2 / self.l2))]
        if len(self.tangents) > 1 and intercept_l2 is not None:
            shifts.append(float(np.log(intercept_l2 / self.intercept_l2)))
        intercepts, pair_coef = self.intercepts, self.pair_coef
        for shift, (intercept_tangent, pair_tangent) in zip(shifts, self.tangents):
            intercepts, pair_coef = intercepts + shift * intercept_tangent, pair_coef + shift * pair_tangent
        return _Solution(intercepts, pair_coef, l2=l2, intercept_l2=intercept_l2)

    @classmethod
    def initial(cls, layout: EntityLayout, initial: WarmStart | None) -> "_Solution":
        """Warm-start values per layout entity and pair (0 where unknown), and the warm start's
        ridges."""
        if initial is None:
            return cls(np.zeros(layout.num_entities), np.zeros(len(layout.pair_feature)))
        prior = initial.intercepts[layout.entities]
        pair_rows = np.repeat(initial.rows[layout.entities], layout.feature_count)
        return cls(np.where(np.isnan(prior), 0.0, prior), csr_values_at(initial.coef, pair_rows, layout.pair_feature),
                   l2=initial.l2, intercept_l2=initial.intercept_l2)


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

    def intercept_ridge(self, l2: float, intercept_l2: float | None = None) -> np.ndarray:
        """Each entity's intercept ridge: ``intercept_l2`` (by default ``l2``) where the intercept
        is penalised; else 0, but for one-label entities ``one_label_intercept_l2`` (default
        ``l2``)."""
        config = self.config
        own = l2 if intercept_l2 is None else intercept_l2
        ridge = np.full(self.layout.num_entities, own if config.regularize_intercept else 0.0)
        if not config.regularize_intercept:
            ridge[self.one_label] = config.one_label_intercept_l2 or l2
        return ridge

    def intercept_ridge_slope(self, l2: float, intercept_l2: float | None = None) -> np.ndarray:
        """``d r0 / d l2`` per entity, ``intercept_l2`` held (1 where the intercept's ridge is ``l2``
        itself, 0 where it is fixed or 0), read off :meth:`intercept_ridge`, which is affine in
        ``l2``."""
        return (self.intercept_ridge(2.0 * l2, intercept_l2) - self.intercept_ridge(l2, intercept_l2)) / l2

    def directions(self, l2: float, intercept_l2: float | None = None) -> list[tuple[np.ndarray, float]]:
        """The directions the evidence's slopes are taken in, as ``(intercept_slope, coef_slope)``
        of :meth:`gdmix.solvers.batched_newton.LaplaceOptimum.terms` (per entity, then one number):
        ``log l2`` (the intercept's ridge moving with it where it follows ``l2``) and, with
        ``intercept_l2``, ``log intercept_l2`` alone (``d r0 / d log intercept_l2``, over ``l2``,
        as the terms scale by the coefficients' ridge)."""
        along_l2 = (self.intercept_ridge_slope(l2, intercept_l2), 1.0)
        if intercept_l2 is None:
            return [along_l2]
        moved = self.intercept_ridge(l2, 2.0 * intercept_l2) - self.intercept_ridge(l2, intercept_l2)
        return [along_l2, (moved / l2, 0.0)]

    def solve(self, l2: float, start: _Solution, progress=None, evidence: bool = False,
              intercept_l2: float | None = None, scores: np.ndarray | None = None,
              recycle_start: bool = False) -> _Solution:
        """Every trainable entity at ridge ``l2`` (and, where given, ``intercept_l2`` on the
        intercepts the prior covers), from ``start`` (moved along its tangents when it has them);
        with ``evidence``, the sums over entities of their Laplace log evidence and of its slopes
        (see :func:`estimate_l2`), and the optimum's tangents. ``scores`` (one per dataset row)
        receives the score of every row the fused kernel's entities own, by the solution (others
        are left as they were). With ``recycle_start``, a :attr:`_Solution.recyclable` start is
        solved in place: the solution is written over its arrays (the one solve from it)."""
        layout, config = self.layout, self.config
        ridge, directions = self.intercept_ridge(l2, intercept_l2), self.directions(l2, intercept_l2)
        moved = start.toward(l2, intercept_l2)
        recycle = recycle_start and start.recyclable and moved is start and not evidence
        start = moved
        out = _Solution(start.intercepts if recycle else np.zeros(layout.num_entities),
                        start.pair_coef if recycle else np.zeros(len(layout.pair_feature)),
                        np.zeros(layout.num_entities, dtype=np.int64), np.ones(layout.num_entities, dtype=bool),
                        l2=l2, intercept_l2=intercept_l2, columns=start.columns)
        if evidence:
            out.log_evidence, out.log_evidence_slope, out.log_evidence_intercept_slope = 0.0, 0.0, 0.0
            out.tangents = [(np.zeros(layout.num_entities), np.zeros(len(layout.pair_feature))) for _ in directions]
        fused = not evidence and native.library() is not None  # the fused kernel takes the small ones
        single = self.trainable & ~self.too_large & (layout.row_count == 1) & (not fused)
        _solve_single_rows(layout, np.flatnonzero(single), self.labels, self.weights, self.offsets, config, l2, ridge,
                           directions, start, out)
        done, target = int(single.sum()), int(self.trainable.sum())

        def solve_one(batch: np.ndarray):  # on a worker thread: reads shared arrays, writes none
            problem = layout.batch_problem(batch, self.labels, self.weights, self.offsets, l2, ridge)
            coef0 = layout.gather_pairs(batch, start.pair_coef, problem.features.shape[2])
            solution = solve_batch(problem, start.intercepts[batch], coef0, max_iter=config.solver.max_iter,
                                   tol=config.solver.tol)
            optimum = laplace_optimum(problem, solution) if evidence else None
            return batch, problem.features.shape[2], solution, optimum

        dense = np.flatnonzero(self.trainable & ~self.too_large & ~single)
        if fused:
            small = np.minimum(layout.row_count[dense], layout.feature_count[dense]) <= NATIVE_MAX_SIDE

            def each_chunk(function, chunks):
                nonlocal done
                for chunk, result in zip(chunks, ordered_map(function, chunks)):
                    done += len(chunk)
                    if progress is not None:
                        progress(done, target)
                    yield result

            out.batches += native.solve_entities(
                layout, dense[small], self.labels, self.weights, self.offsets, l2, ridge, start.intercepts,
                start.pair_coef, max_iter=config.solver.max_iter, tol=config.solver.tol, intercepts=out.intercepts,
                pairs=out.pair_coef, iterations=out.iterations, converged=out.converged, map_chunks=each_chunk,
                scores=scores)
            dense = dense[~small]
        for batch, width, solution, optimum in ordered_map(solve_one, layout.batches(dense)):
            out.intercepts[batch] = solution.intercept
            layout.scatter_pairs(batch, solution.coef, out.pair_coef)
            out.iterations[batch], out.converged[batch] = solution.iterations, solution.converged
            if evidence:
                for (intercept_tangent, pair_tangent), terms in out.add_laplace(
                        optimum, width, ridge[batch], _directions_of(directions, batch)):
                    intercept_tangent[batch] = terms.intercept_tangent
                    layout.scatter_pairs(batch, terms.coef_tangent, pair_tangent)
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
                optimum = _sparse_laplace_optimum(layout, int(k), self.labels, self.weights, self.offsets, l2,
                                                  ridge[k], result.x)
                for (intercept_tangent, pair_tangent), terms in out.add_laplace(
                        optimum, count, ridge[k:k + 1], _directions_of(directions, slice(k, k + 1))):
                    intercept_tangent[k] = terms.intercept_tangent[0]
                    pair_tangent[begin:begin + count] = terms.coef_tangent[0]
            done += 1
            if progress is not None:
                progress(done, target)
        return out

    def variances(self, solution: "_Solution", full: bool) -> tuple[np.ndarray, np.ndarray]:
        """The variances of every trained entity's intercept and (entity, feature) coefficients
        at ``solution`` (see :func:`gdmix.solvers.batched_newton.coefficient_variances`); NaN for
        entities not trained."""
        layout, l2 = self.layout, solution.l2
        ridge = self.intercept_ridge(l2, solution.intercept_l2)
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


def _directions_of(directions: list[tuple[np.ndarray, float]], entities) -> list[tuple[np.ndarray, float]]:
    """:meth:`_EntityProblems.directions` for some entities."""
    return [(intercept_slope[entities], coef_slope) for intercept_slope, coef_slope in directions]


def _solve_single_rows(layout: EntityLayout, entities: np.ndarray, labels, weights, offsets,
                       config: RandomEffectConfig, l2: float, intercept_ridge: np.ndarray,
                       directions: list[tuple[np.ndarray, float]], start: "_Solution", out: "_Solution") -> None:
    """Entities with one training row: the exact one-dimensional reduction (see
    :func:`gdmix.solvers.batched_newton.solve_single_rows`), written into ``out`` (with their
    Laplace log evidence, in closed form, when ``out`` collects it)."""
    if len(entities) == 0:
        return
    rows = layout.rows[layout.row_start[entities]]
    nonzeros = layout.nonzeros(entities)
    owner, values = nonzeros.owner, nonzeros.value
    slots = layout.pair_start[entities][owner] + nonzeros.local_col
    norm2 = np.bincount(owner, weights=values * values, minlength=len(entities))
    logit0 = start.intercepts[entities] + np.bincount(owner, weights=values * start.pair_coef[slots],
                                                      minlength=len(entities))
    ridge = intercept_ridge[entities]
    y, w, o = labels[rows], weights[rows], offsets[rows]
    l2s = np.full(len(entities), l2)
    solution = solve_single_rows(norm2, logit0, y, w, o, l2s, ridge,
                                 max_iter=config.solver.max_iter, tol=config.solver.tol)
    out.intercepts[entities] = solution.intercept
    out.pair_coef[slots] = solution.scale[owner] * values
    out.iterations[entities], out.converged[entities] = solution.iterations, solution.converged
    if out.log_evidence is not None:
        z = solution.intercept + solution.scale * norm2 + o
        mu = expit(z)
        s = w * mu * (1.0 - mu)
        coef_norm2 = solution.scale ** 2 * norm2
        q = layout.feature_count[entities]
        value = w * log_loss_terms(z, y) + 0.5 * (ridge * solution.intercept ** 2 + l2 * coef_norm2)
        optimum = LaplaceOptimum(single_row_hat(norm2, s, solution.scale, l2s, q), value, s[:, None],
                                 (s * (1.0 - 2.0 * mu))[:, None], solution.intercept, coef_norm2, q, l2s, ridge, w)
        for (intercept_tangent, pair_tangent), terms in out.add_laplace(optimum, q, ridge,
                                                                         _directions_of(directions, entities)):
            intercept_tangent[entities] = terms.intercept_tangent
            with np.errstate(divide="ignore", invalid="ignore"):  # the tangent is along x / |x|
                along = np.where(norm2 > 0, terms.coef_tangent[:, 0] / np.sqrt(norm2), 0.0)
            pair_tangent[slots] = along[owner] * values


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


def _sparse_laplace_optimum(layout: EntityLayout, k: int, labels, weights, offsets, l2: float,
                            intercept_ridge: float, theta: np.ndarray) -> LaplaceOptimum:
    """:func:`gdmix.solvers.batched_newton.laplace_optimum` of one large entity from its sparse
    rows: the dense matrix is ``n x n`` (row space) or ``q x q``, whichever is smaller."""
    rows, design, z, s = _entity_curvature(layout, k, weights, offsets, theta)
    n, q = design.shape
    if min(n, q) > MAX_DENSE_HESSIAN:
        raise GdmixError(f"l2: auto: an entity with {n:,} rows and {q:,} local features is too large for the "
                         f"evidence's determinant (at most {MAX_DENSE_HESSIAN:,} of either); cap its rows "
                         "with max_rows or use a fixed l2")
    w, coef = weights[rows], theta[1:]
    value = np.dot(w, log_loss_terms(z, labels[rows])) + 0.5 * (intercept_ridge * theta[0] ** 2 + l2 * coef @ coef)
    hat = _sparse_row_space_hat(design, s, coef, l2) if n < q else _sparse_primal_hat(design, s, coef, l2)
    value, intercept, norm2, l2s, ridge, weight = (  # one problem, as a batch of one
        np.array([v], dtype=np.float64) for v in (value, theta[0], coef @ coef, l2, intercept_ridge, w.sum()))
    return LaplaceOptimum(hat, value, s[None, :], (s * (1.0 - 2.0 * expit(z)))[None, :], intercept, norm2, q, l2s,
                          ridge, weight)


def _sparse_row_space_hat(design: sp.csr_matrix, s: np.ndarray, coef: np.ndarray, l2: float) -> HatTerms:
    """The row-space :class:`HatTerms` of one sparse entity (fewer rows than columns), as
    :func:`gdmix.solvers.batched_newton.laplace_terms` takes them for a batch."""
    n, q = design.shape
    gram = (design @ design.T).toarray()
    system = s[:, None] * gram + l2 * np.eye(n)
    inverse = np.linalg.inv(system)
    fitted = design @ coef
    rows = inverse @ np.stack([s, s * fitted], axis=1)  # B^-1 [s, S F beta]
    return HatTerms(np.array([np.linalg.slogdet(system)[1] + (q - n) * np.log(l2)]),
                    np.einsum("ij,ji->i", gram, inverse)[None, :], (gram @ rows[:, 0])[None, :],
                    ((fitted - gram @ rows[:, 1]) / l2)[None, :], (design.T @ rows[:, 0])[None, :],
                    ((coef - design.T @ rows[:, 1]) / l2)[None, :])


def _sparse_primal_hat(design: sp.csr_matrix, s: np.ndarray, coef: np.ndarray, l2: float) -> HatTerms:
    """The ``q x q`` :class:`HatTerms` of one sparse entity; the rows' leverages are taken a block
    of rows at a time, so no ``n x q`` dense matrix is formed."""
    n, q = design.shape
    block = (design.T @ sp.diags(s) @ design).toarray() + l2 * np.eye(q)
    inverse = np.linalg.inv(block)
    solved_c, solved_coef = inverse @ (design.T @ s), inverse @ coef
    step = max(1, (1 << 22) // max(q, 1))
    diagonal = np.concatenate([np.asarray(design[i:i + step].multiply(design[i:i + step] @ inverse).sum(axis=1))[:, 0]
                               for i in range(0, n, step)])
    return HatTerms(np.array([np.linalg.slogdet(block)[1]]), diagonal[None, :], (design @ solved_c)[None, :],
                    (design @ solved_coef)[None, :], solved_c[None, :], solved_coef[None, :])


def _sparse_variances(layout: EntityLayout, k: int, labels, weights, offsets, l2: float, intercept_ridge: float,
                      theta: np.ndarray, full: bool) -> np.ndarray:
    """Intercept and coefficient variances of one large entity from its sparse rows (the dense
    Hessian is ``(q + 1) x (q + 1)``)."""
    _, design, _, s = _entity_curvature(layout, k, weights, offsets, theta)
    penalty = np.concatenate([[intercept_ridge], np.full(design.shape[1], l2)])
    if not full:
        return 1.0 / (np.concatenate([[s.sum()], design.multiply(design).T @ s]) + penalty)
    if design.shape[1] > MAX_DENSE_HESSIAN:
        raise GdmixError(f"variance: full: an entity with {design.shape[1]:,} local features is too large for a "
                         f"dense Hessian (at most {MAX_DENSE_HESSIAN:,}); use variance: simple")
    full_design = sp.hstack([sp.csr_matrix(np.ones((design.shape[0], 1))), design]).tocsr()
    hessian = (full_design.T @ sp.diags(s) @ full_design).toarray() + np.diag(penalty)
    return np.diag(np.linalg.inv(hessian)).copy()
