import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from gdmix.config import RandomEffectConfig
from gdmix.dataset import EntityIds
from gdmix.features.index_map import IndexMap
from gdmix.models.random_effect import RandomEffectModel, fit_random_effect

from oracles import scipy_logistic


@pytest.fixture(autouse=True, params=["native", "numpy"])
def solver_path(request, monkeypatch):
    """Every test on both paths of a plain solve: the fused per-entity kernel and batched numpy
    (where no compiler is found, or ``GDMIX_NATIVE=0``)."""
    from gdmix.native import entity_kernels as native

    if request.param == "native" and native.library() is None:
        pytest.skip("the native entity solver could not be built here")
    if request.param == "numpy":
        monkeypatch.setattr(native, "library", lambda: None)
    return request.param


def _data(seed, rows=1500, entities=120, width=15, density=0.25, skew=False):
    rng = np.random.default_rng(seed)
    if skew:
        codes = np.minimum((rng.pareto(1.2, rows) * 5).astype(np.int64), entities - 1)
    else:
        codes = rng.integers(0, entities, rows)
    features = sp.random(rows, width, density=density, random_state=seed, format="csr",
                         data_rvs=lambda k: rng.normal(size=k))
    labels = (rng.random(rows) < 0.4).astype(float)
    weights = rng.uniform(0.3, 2.0, rows)
    offsets = rng.normal(scale=0.7, size=rows)
    return codes, features, labels, weights, offsets


def _config(**kw):
    return RandomEffectConfig(name="re", type="random_effect", entity="e", **kw)


def _check_against_scipy(codes, features, labels, weights, offsets, config, trained, intercepts, coef, limit=None):
    ridge0 = config.l2 if config.regularize_intercept else 0.0
    for i, e in enumerate(trained[:limit]):
        rows = np.flatnonzero(codes == e)
        local = np.unique(features[rows].indices)
        assert set(coef[i].indices) <= set(local)  # features never seen stay exactly zero
        y = labels[rows]
        one_label = y.min() == y.max()
        b, beta = scipy_logistic(features[rows][:, local].toarray(), y, weights[rows], offsets[rows],
                                 config.l2, config.regularize_intercept or one_label)
        assert abs(b - intercepts[i]) < 1e-5, (e, b, intercepts[i], ridge0)
        np.testing.assert_allclose(coef[i].toarray()[0, local], beta, atol=1e-5)


@pytest.mark.parametrize("seed, regularize_intercept, skew", [(0, True, False), (1, False, False), (2, False, True)])
def test_matches_independent_per_entity_scipy(seed, regularize_intercept, skew):
    codes, features, labels, weights, offsets = _data(seed, skew=skew)
    config = _config(l2=0.7, regularize_intercept=regularize_intercept)
    trained, intercepts, coef, report = fit_random_effect(codes, features, labels, weights, offsets, config)
    assert report.unconverged_entities == 0
    assert np.array_equal(trained, np.unique(codes))
    _check_against_scipy(codes, features, labels, weights, offsets, config, trained, intercepts, coef)


def test_entities_too_wide_for_dense_batches_use_lbfgs_and_agree():
    codes, features, labels, weights, offsets = _data(3, rows=800, entities=30)
    dense = fit_random_effect(codes, features, labels, weights, offsets, _config(l2=0.5))
    wide_config = _config(l2=0.5, solver={"max_dense_features": 4})
    wide = fit_random_effect(codes, features, labels, weights, offsets, wide_config)
    assert wide[3].sparse_entities > 0 and dense[3].sparse_entities == 0
    np.testing.assert_allclose(wide[1], dense[1], atol=1e-5)
    np.testing.assert_allclose(wide[2].toarray(), dense[2].toarray(), atol=1e-5)


def test_one_label_entities_are_bounded_and_counted():
    codes = np.array([0, 0, 0, 1, 1, 1, 1])
    labels = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    features = sp.csr_matrix(np.array([[1.0], [0.5], [2.0], [1.0], [0.0], [1.5], [1.0]]))
    ones = np.ones(7)
    config = _config(l2=1.0, regularize_intercept=False)
    trained, intercepts, coef, report = fit_random_effect(codes, features, labels, ones, np.zeros(7), config)
    assert report.one_label_entities == 1 and report.unconverged_entities == 0
    assert np.all(np.isfinite(intercepts)) and abs(intercepts[0]) < 5
    # entity 0 behaves as if its intercept were penalised with l2 (the default one_label_intercept_l2)
    b, beta = scipy_logistic(features[:3].toarray(), labels[:3], ones[:3], np.zeros(3), 1.0, True)
    assert abs(intercepts[0] - b) < 1e-6 and abs(coef[0, 0] - beta[0]) < 1e-6


def test_min_rows_and_max_rows():
    codes, features, labels, weights, offsets = _data(4, rows=2000, entities=60, skew=True)
    counts = np.bincount(codes)
    config = _config(min_rows=5, max_rows=40, seed=7)
    trained, intercepts, coef, report = fit_random_effect(codes, features, labels, weights, offsets, config)
    assert set(trained) == set(np.flatnonzero(counts >= 5))
    assert report.entities_below_min_rows == int(((counts > 0) & (counts < 5)).sum())
    assert report.entities_down_sampled == int((counts > 40).sum()) > 0
    assert report.passive_rows == int(np.maximum(counts[counts >= 5] - 40, 0).sum())
    again = fit_random_effect(codes, features, labels, weights, offsets, config)
    np.testing.assert_array_equal(again[1], intercepts)  # seeded: identical
    other_seed = fit_random_effect(codes, features, labels, weights, offsets, _config(min_rows=5, max_rows=40, seed=8))
    big = np.flatnonzero(np.isin(trained, np.flatnonzero(counts > 40)))
    assert not np.allclose(other_seed[1][big], intercepts[big])
    # an entity below max_rows is unaffected by sampling
    small = np.flatnonzero(np.isin(trained, np.flatnonzero((counts >= 5) & (counts <= 40))))
    plain = fit_random_effect(codes, features, labels, weights, offsets, _config(min_rows=5))
    np.testing.assert_allclose(plain[1][small], intercepts[small], atol=1e-9)


def _model(codes, features, labels, weights, offsets, config, names=None):
    trained, intercepts, coef, _ = fit_random_effect(codes, features, labels, weights, offsets, config)
    ids = pa.array([f"id{c}" for c in range(codes.max() + 1)]) if names is None else names
    return RandomEffectModel(ids.take(trained), intercepts, coef), ids


def test_scoring_table_roundtrip_and_warm_start():
    codes, features, labels, weights, offsets = _data(5, rows=900, entities=50)
    config = _config(l2=0.4, min_rows=3)
    model, ids = _model(codes, features, labels, weights, offsets, config)
    entities = EntityIds(codes, ids)
    scores = model.score(entities, features)
    rows_model = model.rows_for(entities)[codes]
    dense = model.coef.toarray()
    expected = np.where(rows_model >= 0, model.intercepts[rows_model] + np.einsum(
        "ij,ij->i", features.toarray(), dense[rows_model]), 0.0)
    np.testing.assert_allclose(scores, expected, atol=1e-12)
    assert np.all(scores[np.bincount(codes)[codes] < 3] == 0.0)  # no model: score 0

    index_map = IndexMap.from_features(pa.array([f"f{j:02d}" for j in range(15)]), pa.array([""] * 15))
    table = model.to_table(index_map)
    assert table.column_names == ["entity", "name", "term", "value"]
    assert table.filter(pa.compute.equal(table.column("name"), "(INTERCEPT)")).num_rows == model.num_entities
    back = RandomEffectModel.from_table(table, index_map)
    np.testing.assert_allclose(back.score(entities, features), scores, atol=1e-12)

    # warm start from the optimum with no iterations allowed returns the same model
    start = model.warm_start_for(entities)
    frozen = fit_random_effect(codes, features, labels, weights, offsets,
                               _config(l2=0.4, min_rows=3, solver={"max_iter": 0}), start)
    np.testing.assert_allclose(frozen[1], model.intercepts[model.rows_for(entities)[frozen[0]]])
    # ... and a cold start with no iterations does not
    cold = fit_random_effect(codes, features, labels, weights, offsets, _config(l2=0.4, min_rows=3, solver={"max_iter": 0}))
    assert np.all(cold[1] == 0.0)
    # warm start converges in fewer Newton steps than cold
    warm = fit_random_effect(codes, features, labels, weights, offsets, config, start)
    assert warm[3].iterations_max <= 1


def test_carry_over_keeps_entities_absent_from_new_data():
    codes, features, labels, weights, offsets = _data(6, rows=600, entities=30)
    model, ids = _model(codes, features, labels, weights, offsets, _config())
    subset = codes < 10
    newer, _ = _model(codes[subset], features[subset], labels[subset], weights[subset], offsets[subset], _config(), ids)
    merged = newer.carry_over(model, ids.take(np.unique(codes[subset])))
    assert merged.num_entities == model.num_entities
    old_row = model.rows_for(EntityIds(np.array([25]), ids))[0]
    new_row = merged.rows_for(EntityIds(np.array([25]), ids))[0]
    assert merged.intercepts[new_row] == model.intercepts[old_row]


def test_string_entity_ids_score_by_value():
    codes, features, labels, weights, offsets = _data(7, rows=300, entities=10)
    names = pa.array([f"user-{c}" for c in range(10)])
    model, _ = _model(codes, features, labels, weights, offsets, _config(), names)
    shuffled = np.array([3, 1, 0, 2, 9, 8, 7, 6, 5, 4])  # same ids, different code order
    recoded = EntityIds(np.argsort(shuffled)[codes], names.take(shuffled))
    np.testing.assert_allclose(model.score(recoded, features), model.score(EntityIds(codes, names), features))


@pytest.mark.parametrize("seed", range(4))
def test_hard_problems_converge_to_the_exact_optimum(seed):
    """Large offsets and feature values, tiny l2, zero weights: every entity still converges
    (a loss computed with cancellation made line searches stall at round-off here)."""
    rng = np.random.default_rng(seed)
    rows, entities, width = 3000, 150, 40
    codes = np.minimum((rng.pareto(0.8, rows) * 3).astype(np.int64), entities - 1)
    features = sp.random(rows, width, density=0.1, random_state=seed, format="csr",
                         data_rvs=lambda k: rng.normal(scale=5, size=k))
    labels = (rng.random(rows) < 0.3).astype(float)
    weights = rng.uniform(0, 3, rows) * (rng.random(rows) > 0.2)
    offsets = rng.normal(scale=8, size=rows)
    for regularize in (True, False):
        config = _config(l2=0.05, regularize_intercept=regularize)
        trained, intercepts, coef, report = fit_random_effect(codes, features, labels, weights, offsets, config)
        assert report.unconverged_entities == 0
        assert np.array_equal(trained, np.unique(codes[weights > 0]))
        _check_optimum_against_scipy(codes, features, labels, weights, offsets, config, trained, intercepts, coef)


def _check_optimum_against_scipy(codes, features, labels, weights, offsets, config, trained, intercepts, coef):
    """Each entity's objective at the solver's answer equals scipy's optimum (trust-exact, to 1e-12
    gradient): the objective, not the coefficients, because near-separable entities with a tiny
    l2 have flat directions along which equally good answers differ."""
    for i, e in enumerate(trained):
        rows = np.flatnonzero(codes == e)
        local = np.unique(features[rows].indices)
        x, y, w, o = features[rows][:, local].toarray(), labels[rows], weights[rows], offsets[rows]
        one_label = np.dot(w, y) <= 0 or np.dot(w, y) >= w.sum()
        penalize_intercept = config.regularize_intercept or one_label
        b, beta = scipy_logistic(x, y, w, o, config.l2, penalize_intercept)
        penalty = np.r_[config.l2 if penalize_intercept else 0.0, np.full(len(local), config.l2)]

        def objective(theta):
            z = theta[0] + x @ theta[1:] + o
            return np.sum(w * np.logaddexp(0, np.where(y > 0, -z, z))) + 0.5 * np.sum(penalty * theta**2)

        best = objective(np.r_[b, beta])
        got = objective(np.r_[intercepts[i], coef[i].toarray()[0, local]])
        assert abs(got - best) <= 1e-7 * max(1.0, abs(best)), (e, got, best)


def test_entities_too_tall_for_dense_batches_use_lbfgs_and_agree(monkeypatch):
    codes, features, labels, weights, offsets = _data(8, rows=900, entities=6, width=5)  # ~150 rows each
    dense = fit_random_effect(codes, features, labels, weights, offsets, _config(l2=0.5))
    monkeypatch.setattr("gdmix.models.random_effect.MAX_DENSE_ENTITY", 500)
    tall = fit_random_effect(codes, features, labels, weights, offsets, _config(l2=0.5))
    assert tall[3].sparse_entities == 6 and dense[3].sparse_entities == 0
    np.testing.assert_allclose(tall[1], dense[1], atol=1e-5)
    np.testing.assert_allclose(tall[2].toarray(), dense[2].toarray(), atol=1e-5)


def test_single_row_entities_take_the_exact_one_dimensional_path(solver_path):
    """Entities with one row (most of a long-tailed population) against scipy, penalised and not:
    in closed form on the numpy path, by the fused kernel on the native one."""
    rng = np.random.default_rng(9)
    rows, width = 400, 12
    codes = np.arange(rows)  # every entity has exactly one row
    dense = np.where(rng.random((rows, width)) < 0.3, rng.normal(size=(rows, width)), 0.0)
    dense[5] = 0.0  # a row without features
    features = sp.csr_matrix(dense)
    labels = (rng.random(rows) < 0.5).astype(float)
    weights, offsets = rng.uniform(0.5, 2.0, rows), rng.normal(size=rows)
    for regularize in (True, False):
        config = _config(l2=0.6, regularize_intercept=regularize)
        trained, intercepts, coef, report = fit_random_effect(codes, features, labels, weights, offsets, config)
        assert report.unconverged_entities == 0
        assert report.batches == (0 if solver_path == "numpy" else 1)  # no dense batch / one kernel call
        _check_against_scipy(codes, features, labels, weights, offsets, config, trained, intercepts, coef, limit=80)


def test_a_model_is_written_in_parts_that_read_back_as_its_table(monkeypatch, tmp_path):
    from gdmix.io import fs
    from gdmix.models.random_effect import CoefficientVariances

    rng = np.random.default_rng(17)
    coef = sp.random(40, 12, density=0.3, random_state=17, format="csr")
    variances = CoefficientVariances(rng.random(40), coef.copy())
    model = RandomEffectModel(pa.array([f"e{i}" for i in range(40)]), rng.normal(size=40), coef, 0.7, variances)
    index_map = IndexMap(pa.array([f"f{i:02d}" for i in range(12)]), pa.array([""] * 12))
    monkeypatch.setattr("gdmix.models.random_effect.available_cores", lambda: 3)
    monkeypatch.setattr("gdmix.models.random_effect.WRITE_CHUNK_ENTITIES", 5)  # 14 entities per file: 3 chunks
    model.write(str(tmp_path / "model"), index_map)
    files = fs.list_parquet_files(str(tmp_path / "model"))
    assert len(files) == 3 and pq.ParquetFile(files[0]).metadata.num_row_groups == 3
    # min/max statistics for the values; none for the dictionary-built string columns (costly, unused)
    group = pq.ParquetFile(files[0]).metadata.row_group(0)
    assert [group.column(i).is_stats_set for i in range(group.num_columns)] == [False, False, False, True, True]
    read = fs.read_parquet_dir(str(tmp_path / "model"))
    assert read.equals(model.to_table(index_map)) and read.schema.metadata == model.to_table(index_map).schema.metadata
    back = RandomEffectModel.from_table(read, index_map)
    assert back.l2 == 0.7 and np.array_equal(back.intercepts, model.intercepts)
    assert len(RandomEffectModel(pa.array([], pa.string()), np.zeros(0), sp.csr_matrix((0, 12))).split(3)) == 1


def test_a_row_range_shares_the_matrix_non_zeros():
    from gdmix.sparse import csr_row_range

    matrix = sp.random(30, 9, density=0.4, random_state=3, format="csr")
    for first, stop in [(0, 30), (4, 17), (29, 30), (12, 12)]:
        rows = csr_row_range(matrix, first, stop)
        assert rows.shape == (stop - first, 9) and (rows != matrix[first:stop]).nnz == 0
    for first, stop in [(4, 17), (20, 22), (29, 30)]:  # short ranges too (scipy's constructor would copy them)
        rows = csr_row_range(matrix, first, stop)
        assert np.shares_memory(rows.data, matrix.data) and np.shares_memory(rows.indices, matrix.indices)
        assert rows.indptr.dtype == rows.indices.dtype
    unsorted = sp.csr_matrix((np.array([1.0, 2.0]), np.array([5, 1]), np.array([0, 2])), shape=(1, 9))
    assert not csr_row_range(unsorted, 0, 1).has_sorted_indices
