"""The CSR helpers of :mod:`gdmix.sparse` that replace whole-matrix temporaries with blocks."""

import numpy as np
import pytest
import scipy.sparse as sp

from gdmix.sparse import row_blocks, weighted_column_sums


def _matrix(rows=3000, width=40, density=0.2, seed=0, index=np.int32):
    rng = np.random.default_rng(seed)
    matrix = sp.random(rows, width, density=density, format="csr", random_state=seed,
                       data_rvs=lambda n: rng.normal(size=n) * 10.0 ** rng.integers(-3, 4, n))
    matrix.data[matrix.indptr[rows // 2]:matrix.indptr[rows // 2 + 1]] = 0.0
    matrix.eliminate_zeros()  # an empty row
    matrix.indices, matrix.indptr = matrix.indices.astype(index), matrix.indptr.astype(index)
    return matrix, rng.random(rows) * 3


@pytest.mark.parametrize("block", [1, 7, 100, 1 << 22])
@pytest.mark.parametrize("index", [np.int32, np.int64])
def test_weighted_column_sums_are_scipys_bit_for_bit(block, index):
    matrix, weights = _matrix(index=index)
    squares = sp.csr_matrix((matrix.data ** 2, matrix.indices, matrix.indptr), shape=matrix.shape)
    assert np.array_equal(weighted_column_sums(matrix, weights, nonzeros=block), matrix.T @ weights)
    assert np.array_equal(weighted_column_sums(matrix, weights, squared=True, nonzeros=block), squares.T @ weights)


def test_weighted_column_sums_leave_the_matrix_alone():
    matrix, weights = _matrix()
    before = matrix.copy()
    weighted_column_sums(matrix, weights, squared=True, nonzeros=50)
    assert np.array_equal(matrix.data, before.data) and np.array_equal(matrix.indices, before.indices)


def test_row_blocks_cover_every_row_once():
    matrix, _ = _matrix(rows=1000)
    for nonzeros in (1, 33, 500, 10 ** 9):
        blocks = row_blocks(matrix.indptr, nonzeros)
        assert blocks[0][0] == 0 and blocks[-1][1] == matrix.shape[0]
        assert all(stop == first for (_, stop), (first, _) in zip(blocks, blocks[1:]))
        sizes = [matrix.indptr[stop] - matrix.indptr[first] for first, stop in blocks]
        assert max(sizes) <= nonzeros + np.diff(matrix.indptr).max()  # "about": cut at row ends
