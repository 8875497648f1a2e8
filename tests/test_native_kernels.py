"""The fused per-entity Newton kernel against the batched numpy solver (same problems, same
answers to the solver's tolerance), and its fallback where it cannot be built."""

import numpy as np
import pytest
import scipy.sparse as sp

from gdmix.config import RandomEffectConfig
from gdmix.models.random_effect import WarmStart, fit_random_effect
from gdmix.native import entity_kernels as native


@pytest.fixture(autouse=True)
def needs_kernel():
    if native.library() is None:
        pytest.skip("the native entity solver could not be built here")


def _population(seed, width=30, most_rows=40):
    """Entities of 1 to ``most_rows`` rows over a ``width``-wide bag (row space and primal),
    with uneven weights, offsets, a zero-weight row and one-label entities."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.zipf(1.8, 600), most_rows)
    codes = np.repeat(np.arange(600), counts)
    rows = len(codes)
    features = sp.random(rows, width, density=0.2, random_state=seed, format="csr",
                         data_rvs=lambda k: rng.normal(size=k))
    labels = (rng.random(rows) < 0.35).astype(float)
    labels[codes == 3] = 1.0  # a one-label entity
    weights = rng.uniform(0.2, 3.0, rows)
    weights[5] = 0.0
    return codes, features, labels, weights, rng.normal(scale=0.8, size=rows)


def _fit(monkeypatch, path, *args, **kwargs):
    with monkeypatch.context() as patch:
        if path == "numpy":
            patch.setattr(native, "library", lambda: None)
        return fit_random_effect(*args, **kwargs)


@pytest.mark.parametrize("regularize_intercept", [True, False])
@pytest.mark.parametrize("width", [0, 6, 30])
def test_the_kernel_finds_the_batched_solvers_optimum(monkeypatch, regularize_intercept, width):
    codes, features, labels, weights, offsets = _population(11, width=max(width, 1))
    features = features[:, :width]
    config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=0.7,
                                regularize_intercept=regularize_intercept)
    native = _fit(monkeypatch, "native", codes, features, labels, weights, offsets, config)
    batched = _fit(monkeypatch, "numpy", codes, features, labels, weights, offsets, config)
    assert native[3].unconverged_entities == 0 and batched[3].unconverged_entities == 0
    assert np.array_equal(native[0], batched[0])
    np.testing.assert_allclose(native[1], batched[1], atol=1e-8)
    np.testing.assert_allclose(native[2].toarray(), batched[2].toarray(), atol=1e-8)
    assert native[3].iterations_mean > 0


def test_large_entities_solved_through_lapack_match_the_loops_and_the_batched_solver(monkeypatch):
    """Entities with dozens of rows and features (row space and primal) factor their systems
    with LAPACK above the kernel's threshold; the loops and the batched solver agree."""
    codes, features, labels, weights, offsets = _population(13, width=60, most_rows=150)
    sides = np.minimum(np.bincount(codes), 60)
    assert (sides >= 45).sum() >= 5  # some systems are large enough for LAPACK
    config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=0.9)
    with_lapack = _fit(monkeypatch, "native", codes, features, labels, weights, offsets, config)
    library = native.library()
    library.use_lapack(None, None, None, None)
    try:
        loops = _fit(monkeypatch, "native", codes, features, labels, weights, offsets, config)
    finally:
        library.use_lapack(*native._lapack_routines())
    batched = _fit(monkeypatch, "numpy", codes, features, labels, weights, offsets, config)
    for other in (loops, batched):
        assert other[3].unconverged_entities == 0
        np.testing.assert_allclose(with_lapack[1], other[1], atol=1e-8)
        np.testing.assert_allclose(with_lapack[2].toarray(), other[2].toarray(), atol=1e-8)
    assert with_lapack[3].unconverged_entities == 0


def test_entities_gathered_block_by_block_and_one_larger_than_a_block(monkeypatch):
    """The kernel copies a block of entities' rows (about 16,384 non-zeros) into contiguous
    buffers before solving them: a chunk spanning many blocks, and an entity of 2,000 rows
    (about 24,000 non-zeros, more than a block) that gets a block of its own."""
    codes, features, labels, weights, offsets = _population(14, width=80, most_rows=60)
    rng = np.random.default_rng(14)
    big = sp.random(2000, 80, density=0.15, random_state=14, format="csr", data_rvs=lambda k: rng.normal(size=k))
    codes = np.concatenate([codes[:700], np.full(2000, 600), codes[700:]])
    features = sp.vstack([features[:700], big, features[700:]], format="csr")
    labels = np.concatenate([labels[:700], (rng.random(2000) < 0.4).astype(float), labels[700:]])
    weights = np.concatenate([weights[:700], np.ones(2000), weights[700:]])
    offsets = np.concatenate([offsets[:700], rng.normal(size=2000), offsets[700:]])
    assert big.nnz > 1 << 14 and features.nnz - big.nnz > 2 << 14
    config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=0.8)
    native = _fit(monkeypatch, "native", codes, features, labels, weights, offsets, config)
    batched = _fit(monkeypatch, "numpy", codes, features, labels, weights, offsets, config)
    assert native[3].unconverged_entities == 0 and native[3].sparse_entities == 0
    assert np.array_equal(native[0], batched[0]) and 600 in native[0]
    np.testing.assert_allclose(native[1], batched[1], atol=1e-8)
    np.testing.assert_allclose(native[2].toarray(), batched[2].toarray(), atol=1e-8)
    # the kernel reads the bag's row pointers in their own width: 64-bit ones give the same bits
    wide = features.copy()
    wide.indices, wide.indptr = features.indices.astype(np.int64), features.indptr.astype(np.int64)
    assert features.indptr.dtype == np.int32 and wide.indptr.dtype == np.int64
    native_wide = _fit(monkeypatch, "native", codes, wide, labels, weights, offsets, config)
    assert np.array_equal(native_wide[1], native[1]) and (native_wide[2] != native[2]).nnz == 0


def test_a_warm_start_lands_on_the_same_optimum_in_fewer_steps(monkeypatch):
    codes, features, labels, weights, offsets = _population(12)
    config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=1.3)
    trained, intercepts, coef, cold = _fit(monkeypatch, "native", codes, features, labels, weights, offsets, config)
    start = WarmStart(np.full(codes.max() + 1, np.nan), np.full(codes.max() + 1, -1), coef)
    start.intercepts[trained], start.rows[trained] = intercepts, np.arange(len(trained))
    moved = offsets + 0.05
    native = _fit(monkeypatch, "native", codes, features, labels, weights, moved, config, start)
    batched = _fit(monkeypatch, "numpy", codes, features, labels, weights, moved, config, start)
    np.testing.assert_allclose(native[1], batched[1], atol=1e-8)
    np.testing.assert_allclose(native[2].toarray(), batched[2].toarray(), atol=1e-8)
    assert native[3].iterations_mean < cold.iterations_mean


def test_without_a_compiler_the_numpy_path_is_used_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("GDMIX_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="native entity kernels unavailable"):
            assert native.library() is None
        monkeypatch.setenv("GDMIX_NATIVE", "0")
        native.library.cache_clear()
        assert native.library() is None
        codes, features, labels, weights, offsets = _population(13)
        config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=1.0)
        assert fit_random_effect(codes, features, labels, weights, offsets, config)[3].unconverged_entities == 0
    finally:
        native.library.cache_clear()


@pytest.mark.parametrize("index_type", [np.int32, np.int64])
def test_scores_are_the_numpy_paths_bit_for_bit(monkeypatch, index_type):
    import pyarrow as pa

    from gdmix.dataset import EntityIds
    from gdmix.models.random_effect import RandomEffectModel

    rng = np.random.default_rng(14)
    coef = sp.random(50, 40, density=0.3, random_state=14, format="csr")
    model = RandomEffectModel(pa.array([f"e{i}" for i in range(50)]), rng.normal(size=50), coef)
    ids = [f"e{i}" for i in rng.integers(0, 70, 3000)]  # some entities have no model: they score 0
    features = sp.random(3000, 40, density=0.25, random_state=15, format="csr")
    features.indices = features.indices.astype(index_type)
    features.indptr = features.indptr.astype(index_type)
    entities = EntityIds.from_array(pa.array(ids))
    monkeypatch.setattr(native, "CHUNK_ROWS", 1000)
    fused = model.score(entities, features)
    with monkeypatch.context() as patch:
        patch.setattr(native, "library", lambda: None)
        reference = model.score(entities, features)
    assert np.array_equal(fused, reference)
    assert (fused == 0).any() and (fused != 0).any()
