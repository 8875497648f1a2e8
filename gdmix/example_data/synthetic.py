"""Synthetic GLMix data with known fixed and random effects, for tests and benchmarks.

The true model of row ``i`` is::

    logit_i = intercept + x_i . beta + sum_E ( b_E[e_i] + z_Ei . gamma_E[e_i] )
    label_i ~ Bernoulli(sigmoid(logit_i))

with ``beta ~ N(0, fixed_scale^2)`` and per-entity ``b, gamma ~ N(0, random_scale^2)``.
``x_i`` (bag ``global``) has ``global_nnz`` distinct features out of ``global_features`` named
``("g", "<k>")``; ``z_Ei`` (bag ``per_<E>``) has ``re_nnz`` distinct features out of
``re_features`` named ``("r", "<k>")``; all values are N(0, 1). Entity ids are ``0..n-1``; with
``skew > 0`` entity ``k`` is drawn with probability proportional to ``(k + 1) ** -skew`` (so
entity 0 is the most frequent).

Everything is generated vectorized, in blocks of :data:`BLOCK_ROWS` rows, each with its own
random stream derived from the seed, so tens of millions of rows need neither a Python loop per
row or entity nor memory for more than one block of temporaries. The tables carry a
``true_logit`` column besides the contract columns, for checks against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.io.contract import FEATURE_BAG_TYPE, FEATURE_STRUCT, write_dataset
from gdmix.models.linear import FIXED_EFFECT_SCHEMA, INTERCEPT_NAME, RANDOM_EFFECT_SCHEMA

GLOBAL_FEATURE_NAME = "g"
RE_FEATURE_NAME = "r"
BLOCK_ROWS = 1 << 20


@dataclass
class SyntheticData:
    train: pa.Table
    validation: pa.Table
    fixed_truth: pa.Table  # name, term, value; intercept as ("(INTERCEPT)", "")
    random_truth: dict[str, pa.Table] = field(default_factory=dict)  # entity, name, term, value
    test: pa.Table | None = None  # the held-out test rows (``test_fraction > 0``)


@dataclass
class _Effect:
    column: str
    count: int
    cdf: np.ndarray | None  # None: uniform
    bias: np.ndarray  # (count,)
    coef: np.ndarray  # (count, re_features)


def _check_args(rows, entities, global_features, global_nnz, re_features, re_nnz, skew,
                validation_fraction, test_fraction=0.0) -> None:
    if int(rows) != rows or rows < 1:
        raise GdmixError(f"rows must be a positive integer, got {rows!r}")
    if not 0 <= global_nnz <= global_features:
        raise GdmixError(
            f"global_nnz ({global_nnz}) must be between 0 and global_features ({global_features})"
        )
    if entities and not 0 <= re_nnz <= re_features:
        raise GdmixError(f"re_nnz ({re_nnz}) must be between 0 and re_features ({re_features})")
    if skew < 0 or not np.isfinite(skew):
        raise GdmixError(f"skew must be a finite number >= 0, got {skew!r}")
    if not 0.0 <= validation_fraction < 1.0:
        raise GdmixError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if not (0.0 <= test_fraction < 1.0 and validation_fraction + test_fraction < 1.0):
        raise GdmixError(f"test_fraction must be >= 0 with validation_fraction + test_fraction < 1, "
                         f"got {test_fraction!r} (validation_fraction {validation_fraction!r})")
    reserved = {"uid", "label", "weight", "offset", "global", "true_logit", "fixed"}
    for column, count in entities.items():
        if not isinstance(column, str) or not column:
            raise GdmixError(f"entity column names must be non-empty strings, got {column!r}")
        if column in reserved or column.startswith("per_"):
            raise GdmixError(f"entity column name {column!r} clashes with a generated column")
        if int(count) != count or count < 1:
            raise GdmixError(f"entity {column!r} needs a positive number of entities, got {count!r}")


def _distinct_features(rng: np.random.Generator, n: int, total: int, k: int) -> np.ndarray:
    """``(n, k)`` feature indices, distinct within a row and sorted ascending."""
    if k == 0:
        return np.zeros((n, 0), dtype=np.int32)
    if 4 * k > total:
        # random keys: the k smallest of `total` uniforms per row (in sub-blocks to bound memory)
        step = max(1, (1 << 23) // total)
        parts = []
        for start in range(0, n, step):
            keys = rng.random((min(step, n - start), total), dtype=np.float32)
            parts.append(np.argpartition(keys, k - 1, axis=1)[:, :k] if k < total
                         else np.argsort(keys, axis=1))
        return np.sort(np.concatenate(parts), axis=1).astype(np.int32)
    # draw with replacement, then redraw repeated entries until none is left; only rows that
    # had a repeat are revisited (each round keeps about a fraction k / total of them, <= 1/4).
    # The result is uniform over k-subsets: the process commutes with relabelling features.
    picks = rng.integers(0, total, size=(n, k))
    picks.sort(axis=1)
    active = np.arange(n)
    while active.size:
        sub = picks[active]
        repeat = np.zeros(sub.shape, dtype=bool)
        repeat[:, 1:] = sub[:, 1:] == sub[:, :-1]
        has = repeat.any(axis=1)
        active, sub, repeat = active[has], sub[has], repeat[has]
        if not active.size:
            break
        sub[repeat] = rng.integers(0, total, size=int(repeat.sum()))
        sub.sort(axis=1)
        picks[active] = sub
    return picks.astype(np.int32)


def _string_take(dictionary: pa.Array, codes: np.ndarray) -> pa.Array:
    return pc.take(dictionary, pa.array(codes.reshape(-1)))


def _bag(name: pa.Array, terms: pa.Array, idx: np.ndarray, values: np.ndarray) -> pa.ListArray:
    n, k = idx.shape
    struct = pa.StructArray.from_arrays(
        [
            _string_take(name, np.zeros(n * k, dtype=np.int32)),
            _string_take(terms, idx),
            pa.array(values.reshape(-1), pa.float64()),
        ],
        fields=list(FEATURE_STRUCT),
    )
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32) if k else np.zeros(n + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, struct, type=FEATURE_BAG_TYPE)


def _terms(count: int) -> pa.Array:
    return pc.cast(pa.array(np.arange(count, dtype=np.int64)), pa.string())


def generate_synthetic(
    rows: int,
    entities: dict[str, int],
    *,
    global_features: int = 20,
    global_nnz: int = 5,
    re_features: int = 5,
    re_nnz: int = 3,
    skew: float = 0.0,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
    intercept: float = -0.5,
    fixed_scale: float = 0.5,
    random_scale: float = 0.8,
    seed: int = 0,
) -> SyntheticData:
    """Generate rows from a known GLMix model; see the module docstring.

    Each row draws one uniform ``u`` for its split: validation when ``u < validation_fraction``,
    test when ``validation_fraction <= u < validation_fraction + test_fraction``, else train. So a
    test split takes its rows from train only: validation is the same with or without it.
    """
    entities = dict(entities)
    _check_args(rows, entities, global_features, global_nnz, re_features, re_nnz, skew,
                validation_fraction, test_fraction)
    rows = int(rows)
    truth_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    beta = truth_rng.normal(0.0, fixed_scale, size=global_features)
    effects = []
    for column, count in entities.items():
        count = int(count)
        cdf = None
        if skew > 0:
            weights = np.arange(1, count + 1, dtype=np.float64) ** -float(skew)
            cdf = np.cumsum(weights)
            cdf /= cdf[-1]
        effects.append(
            _Effect(
                column, count, cdf,
                truth_rng.normal(0.0, random_scale, size=count),
                truth_rng.normal(0.0, random_scale, size=(count, re_features)),
            )
        )

    g_name, g_terms = pa.array([GLOBAL_FEATURE_NAME]), _terms(global_features)
    r_name, r_terms = pa.array([RE_FEATURE_NAME]), _terms(re_features)
    train_blocks, validation_blocks, test_blocks = [], [], []
    for block, start in enumerate(range(0, rows, BLOCK_ROWS)):
        n = min(BLOCK_ROWS, rows - start)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, block]))
        g_idx = _distinct_features(rng, n, global_features, global_nnz)
        g_val = rng.standard_normal(g_idx.shape)
        logit = intercept + (g_val * beta[g_idx]).sum(axis=1)
        per_entity = []
        for effect in effects:
            if effect.cdf is None:
                ids = rng.integers(0, effect.count, size=n)
            else:
                ids = np.minimum(np.searchsorted(effect.cdf, rng.random(n), side="right"),
                                 effect.count - 1)
            ids = ids.astype(np.int64)
            r_idx = _distinct_features(rng, n, re_features, re_nnz)
            r_val = rng.standard_normal(r_idx.shape)
            logit += effect.bias[ids] + (r_val * effect.coef[ids[:, None], r_idx]).sum(axis=1)
            per_entity.append((effect.column, ids, r_idx, r_val))
        label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
        split_draw = rng.random(n)
        is_validation = split_draw < validation_fraction
        is_test = ~is_validation & (split_draw < validation_fraction + test_fraction)
        uid = np.arange(start, start + n, dtype=np.int64)

        def table(rows_: np.ndarray) -> pa.Table:
            columns: dict[str, pa.Array] = {"uid": pa.array(uid[rows_]), "label": pa.array(label[rows_])}
            for column, ids, _, _ in per_entity:
                columns[column] = pa.array(ids[rows_])
            columns["global"] = _bag(g_name, g_terms, g_idx[rows_], g_val[rows_])
            for column, _, r_idx, r_val in per_entity:
                columns[f"per_{column}"] = _bag(r_name, r_terms, r_idx[rows_], r_val[rows_])
            columns["true_logit"] = pa.array(logit[rows_])
            return pa.table(columns)

        train_blocks.append(table(np.flatnonzero(~is_validation & ~is_test)))
        validation_blocks.append(table(np.flatnonzero(is_validation)))
        test_blocks.append(table(np.flatnonzero(is_test)))

    fixed_truth = pa.table(
        {
            "name": [INTERCEPT_NAME] + [GLOBAL_FEATURE_NAME] * global_features,
            "term": [""] + g_terms.to_pylist(),
            "value": np.concatenate([[intercept], beta]),
        },
        schema=FIXED_EFFECT_SCHEMA,
    )
    random_truth = {effect.column: _random_truth(effect, r_terms) for effect in effects}
    return SyntheticData(
        train=pa.concat_tables(train_blocks),
        validation=pa.concat_tables(validation_blocks),
        fixed_truth=fixed_truth,
        random_truth=random_truth,
        test=pa.concat_tables(test_blocks) if test_fraction > 0 else None,
    )


def _random_truth(effect: _Effect, r_terms: pa.Array) -> pa.Table:
    """One row per (entity, coefficient): the intercept first, then ``("r", "<k>")``."""
    width = 1 + effect.coef.shape[1]
    entity_codes = np.repeat(np.arange(effect.count, dtype=np.int64), width)
    term_codes = np.tile(np.arange(width, dtype=np.int64), effect.count)
    names = pa.array([INTERCEPT_NAME] + [RE_FEATURE_NAME] * (width - 1))
    terms = pa.concat_arrays([pa.array([""]), r_terms])
    return pa.table(
        {
            "entity": pc.cast(pa.array(entity_codes), pa.string()),
            "name": pc.take(names, pa.array(term_codes)),
            "term": pc.take(terms, pa.array(term_codes)),
            "value": np.hstack([effect.bias[:, None], effect.coef]).reshape(-1),
        },
        schema=RANDOM_EFFECT_SCHEMA,
    )


def write_synthetic(out: str, data: SyntheticData, rows_per_file: int | None = None) -> dict[str, str]:
    """Write ``out/train/``, ``out/validation/``, ``out/test/`` (when the data has a test split),
    ``out/truth/fixed/`` and ``out/truth/<E>/``.

    Returns the written directories keyed ``train``, ``validation``, (``test``,) ``truth/fixed``
    and ``truth/<E>`` for each entity column ``E``.
    """
    paths = {
        "train": fs.join(out, "train"),
        "validation": fs.join(out, "validation"),
        "truth/fixed": fs.join(out, "truth", "fixed"),
    }
    write_dataset(data.train, paths["train"], rows_per_file)
    write_dataset(data.validation, paths["validation"], rows_per_file)
    if data.test is not None:
        paths["test"] = fs.join(out, "test")
        write_dataset(data.test, paths["test"], rows_per_file)
    else:
        fs.remove(fs.join(out, "test"))  # an earlier run's test rows may be this run's training rows
    write_dataset(data.fixed_truth, paths["truth/fixed"])
    for column, table in data.random_truth.items():
        paths[f"truth/{column}"] = fs.join(out, "truth", column)
        write_dataset(table, paths[f"truth/{column}"])
    return paths
