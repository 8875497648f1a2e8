"""Small vectorized helpers on index arrays and CSR matrices, shared by models and layouts."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse import _sparsetools

#: rows are visited in blocks of about this many non-zeros where a temporary per non-zero is needed
BLOCK_NONZEROS = 1 << 22


def starts_of(counts: np.ndarray) -> np.ndarray:
    """Start offset of each segment when segments of ``counts`` are laid end to end."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts) - counts


def segments(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten segments ``[starts[k], starts[k] + lengths[k])`` without a Python loop.

    Returns (position, segment, offset): every position covered, the segment ``k`` it belongs
    to, and its offset inside that segment.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    segment = np.repeat(np.arange(len(lengths)), lengths)
    offset = np.arange(int(lengths.sum())) - starts_of(lengths)[segment]
    return np.asarray(starts, dtype=np.int64)[segment] + offset, segment, offset


def csr_row_range(matrix: sp.csr_matrix, first: int, stop: int) -> sp.csr_matrix:
    """Rows ``[first, stop)`` of ``matrix`` sharing its indices and values (no copy of the
    non-zeros, unlike ``matrix[first:stop]``, which copies them through a column filter)."""
    begin, end = int(matrix.indptr[first]), int(matrix.indptr[stop])
    rows = sp.csr_matrix((stop - first, matrix.shape[1]), dtype=matrix.dtype)
    # the arrays are set, not passed to the constructor: its format check copies a view of a
    # much larger array (scipy's ``prune``), which would make every short range a copy
    rows.indptr = (matrix.indptr[first:stop + 1] - begin).astype(matrix.indices.dtype, copy=False)
    rows.indices, rows.data = matrix.indices[begin:end], matrix.data[begin:end]
    rows.has_sorted_indices = matrix.has_sorted_indices  # a range of sorted rows stays sorted
    return rows


def row_blocks(indptr: np.ndarray, nonzeros: int = BLOCK_NONZEROS) -> list[tuple[int, int]]:
    """Consecutive row ranges covering every row (empty ones too), each of about ``nonzeros``
    non-zeros (more only where one row alone has more)."""
    rows = len(indptr) - 1
    cuts = np.searchsorted(indptr, np.arange(nonzeros, indptr[-1], nonzeros), side="right") - 1
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 0, rows), [rows]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def weighted_column_sums(matrix: sp.csr_matrix, weights: np.ndarray, squared: bool = False,
                         nonzeros: int = BLOCK_NONZEROS) -> np.ndarray:
    """``sum_i weights[i] * x_ij`` (with ``squared``, ``x_ij ** 2``) for every column ``j``.

    Bit for bit what ``matrix.T @ weights`` gives (for the squares: of a CSR of the squared
    values), because it runs scipy's own kernel over the same non-zeros in the same order,
    accumulating into one output; but the squares are taken a block of rows at a time, so no
    copy of the matrix's values (8 bytes per non-zero, the size of the data) is ever made."""
    matrix = matrix.tocsr()
    out = np.zeros(matrix.shape[1], dtype=np.result_type(matrix.dtype, weights.dtype))
    weights = np.ascontiguousarray(weights, dtype=out.dtype)
    blocks = row_blocks(matrix.indptr, nonzeros) if squared else [(0, matrix.shape[0])]
    squares = np.empty(max((matrix.indptr[stop] - matrix.indptr[first] for first, stop in blocks), default=0)
                       if squared else 0, dtype=out.dtype)
    for first, stop in blocks:
        rows = csr_row_range(matrix, first, stop)
        values = np.square(rows.data, out=squares[:rows.nnz]) if squared else rows.data.astype(out.dtype, copy=False)
        # the transpose's matrix-vector kernel adds into ``out``: blocks continue the one sum
        _sparsetools.csc_matvec(matrix.shape[1], stop - first, rows.indptr, rows.indices, values,
                                weights[first:stop], out)
    return out


def csr_values_at(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows[k], cols[k]]`` for every k: 0 where nothing is stored or ``rows[k] < 0``.

    One binary search over the sorted (row, column) keys of the stored entries; the matrix is
    not modified (a copy is sorted if its indices are not).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows))
    if matrix.nnz == 0 or len(rows) == 0:
        return out
    if not matrix.has_sorted_indices:
        matrix = matrix.sorted_indices()
    width = max(matrix.shape[1], 1)
    stored = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr)) * width + matrix.indices
    keys = rows * width + np.asarray(cols, dtype=np.int64)
    position = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
    found = (stored[position] == keys) & (rows >= 0)
    out[found] = matrix.data[position[found]]
    return out


def take_or(values: np.ndarray, index: np.ndarray, fill: float) -> np.ndarray:
    """``values[index]`` with ``fill`` where ``index < 0`` (also when ``values`` is empty)."""
    index = np.asarray(index, dtype=np.int64)
    out = np.full(len(index), fill, dtype=np.float64)
    valid = index >= 0
    out[valid] = values[index[valid]]
    return out
