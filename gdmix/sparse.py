"""Small vectorized helpers on index arrays and CSR matrices, shared by models and layouts."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
    indptr = matrix.indptr[first:stop + 1] - begin
    rows = sp.csr_matrix((matrix.data[begin:end], matrix.indices[begin:end], indptr),
                         shape=(stop - first, matrix.shape[1]), copy=False)
    rows.has_sorted_indices = matrix.has_sorted_indices  # a range of sorted rows stays sorted
    return rows


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
