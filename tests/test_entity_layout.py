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


@pytest.mark.parametrize("dense_ranking", [True, False])
def test_the_layout_groups_rows_and_ranks_each_entitys_columns(monkeypatch, dense_ranking):
    monkeypatch.setattr(entity_layout, "DENSE_RANK_CELLS_PER_NNZ", 10**9 if dense_ranking else 0)
    monkeypatch.setattr(entity_layout, "BUILD_CHUNK_NNZ", 97)  # many chunks, cut between entities
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 60, 900)
    features = sp.random(900, 300, density=0.05, random_state=5, format="csr")
    train_rows = np.flatnonzero(rng.random(900) < 0.8)
    layout = _check(codes, features, train_rows)
    assert layout.nnz_col.dtype == np.uint8  # at most 256 local columns: one byte per non-zero


def test_unsorted_indices_and_a_bag_without_columns():
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
