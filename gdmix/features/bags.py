"""Name-term-value feature bags -> sparse design matrices.

The in-memory form of a bag is a CSR matrix with float64 values and int32 column indices
(12 bytes per non-zero and 4 per row while the indices fit in int32): compact enough to hold the fixed effect's data in memory
for the whole optimisation instead of re-reading files on every evaluation.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from gdmix.features.index_map import IndexMap


def flatten_bag(bag: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, pa.Array, np.ndarray]:
    """(row of each feature occurrence, names, terms, values) of a normalised bag column."""
    if isinstance(bag, pa.ChunkedArray):
        bag = bag.combine_chunks() if bag.num_chunks != 1 else bag.chunk(0)
    rows = pc.list_parent_indices(bag).to_numpy().astype(np.int64, copy=False)
    items = pc.list_flatten(bag)
    values = items.field("value").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return rows, items.field("name"), items.field("term"), values


def bag_to_csr(bag: pa.Array | pa.ChunkedArray, index_map: IndexMap, num_rows: int) -> sp.csr_matrix:
    """Sparse matrix of a bag in ``index_map``'s columns; unknown features are dropped.

    A feature repeated within one row has its values summed (usual sparse semantics); explicit
    zeros are dropped, so they never widen a random-effect entity's feature subspace.
    """
    rows, names, terms, values = flatten_bag(bag)
    cols = index_map.lookup(names, terms)
    known = cols >= 0
    if not known.all():
        rows, cols, values = rows[known], cols[known], values[known]
    matrix = sp.csr_matrix(
        (values, (rows, cols.astype(np.int32, copy=False))), shape=(num_rows, len(index_map))
    )
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix
