"""The entity layout against a plain per-entity reference: rows grouped by entity, each entity's
sorted local columns, every non-zero's local position, on both ways of ranking columns."""

import numpy as np
import pytest
import scipy.sparse as sp

from gdmix.models import entity_layout
from gdmix.models.entity_layout import EntityLayout


def _check(codes, features, train_rows):
    layout = EntityLayout.build(codes, features, train_rows)
    csr = features.tocsr()
    expected_entities = np.unique(codes[train_rows])
    assert np.array_equal(layout.entities, expected_entities)
    for k, entity in enumerate(expected_entities):
        rows = train_rows[codes[train_rows] == entity]  # in their original order
        block = csr[rows]
        columns = np.unique(block.indices)
        begin = layout.pair_start[k]
        assert np.array_equal(layout.rows[layout.row_start[k]:layout.row_start[k] + layout.row_count[k]], rows)
        assert np.array_equal(layout.pair_feature[begin:begin + layout.feature_count[k]], columns)
        nonzeros = layout.nonzeros(np.array([k]))
        dense = np.zeros((len(rows), len(columns)))
        dense[nonzeros.local_row, nonzeros.local_col.astype(np.int64)] = nonzeros.value
        assert np.array_equal(dense, block[:, columns].toarray())
    return layout


@pytest.fixture(params=["numpy marks", "numpy sorts", "native marks", "native sorts"])
def ranking(request, monkeypatch):
    """Each way of ranking an entity's columns: numpy on whole chunks (a dense table, or a sort
    for wide bags) and the C kernel entity by entity (marking a table, or a sort for wide bags);
    the numpy ones also group rows by argsort instead of the kernel's counting sort."""
    from gdmix.native import entity_kernels as native

    path, way = request.param.split()
    if path == "native" and native.library() is None:
        pytest.skip("the native kernels could not be built here")
    if path == "numpy":
        monkeypatch.setattr(native, "library", lambda: None)
        monkeypatch.setattr(entity_layout, "DENSE_RANK_CELLS_PER_NNZ", 10**9 if way == "marks" else 0)
    else:
        monkeypatch.setattr(native, "MARK_WIDTH", 10**9 if way == "marks" else 0)
    return request.param


def test_the_layout_groups_rows_and_ranks_each_entitys_columns(monkeypatch, ranking):
    monkeypatch.setattr(entity_layout, "BUILD_CHUNK_NNZ", 97)  # many chunks, cut between entities
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 60, 900)
    features = sp.random(900, 300, density=0.05, random_state=5, format="csr")
    train_rows = np.flatnonzero(rng.random(900) < 0.8)
    layout = _check(codes, features, train_rows)
    assert layout.nnz_col.dtype == np.uint8  # at most 256 local columns: one byte per non-zero


def test_unsorted_indices_and_a_bag_without_columns(ranking):
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 20, 200)
    features = sp.random(200, 40, density=0.2, random_state=6, format="csr")
    shuffled = features.copy()
    for row in range(200):  # the same matrix with each row's entries in reverse order
        part = slice(shuffled.indptr[row], shuffled.indptr[row + 1])
        shuffled.indices[part], shuffled.data[part] = shuffled.indices[part][::-1], shuffled.data[part][::-1]
    shuffled.has_sorted_indices = False
    _check(codes, shuffled, np.arange(200))
    empty = _check(codes, sp.csr_matrix((200, 0)), np.arange(200))
    assert empty.feature_count.sum() == 0 and len(empty.feature_count) == len(empty.entities)


def test_wide_bags_large_entities_and_64_bit_indices(ranking):
    """More than 256 local columns (two-byte local columns), an entity with a thousand rows, and
    int64 column indices, as scipy uses for very large matrices."""
    rng = np.random.default_rng(8)
    codes = np.concatenate([np.zeros(1000, dtype=np.int64), rng.integers(1, 50, 500)])
    features = sp.random(1500, 2000, density=0.02, random_state=8, format="csr")
    layout = _check(codes, features, np.arange(1500))
    assert layout.nnz_col.dtype == np.uint16 and layout.feature_count[0] > 256
    wide = features.copy()
    wide.indices, wide.indptr = features.indices.astype(np.int64), features.indptr.astype(np.int64)
    assert wide.indices.dtype == np.int64  # the constructor would have narrowed them
    _check(codes, wide, np.flatnonzero(rng.random(1500) < 0.5))


def test_the_counting_sort_is_a_stable_argsort_and_refuses_negative_codes():
    from gdmix.native import entity_kernels as native

    if native.library() is None:
        pytest.skip("the native kernels could not be built here")
    rng = np.random.default_rng(9)
    codes, rows = rng.integers(0, 30, 500), np.flatnonzero(rng.random(500) < 0.7)
    assert np.array_equal(native.group_by_code(rows, codes), rows[np.argsort(codes[rows], kind="stable")])
    with pytest.raises(ValueError, match="non-negative"):
        native.group_by_code(np.arange(3), np.array([0, -1, 2]))
