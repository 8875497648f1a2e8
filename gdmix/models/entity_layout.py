"""How a random effect's training rows are laid out for the batched solver.

Rows are grouped by entity; each entity gets its local feature subspace (the columns it has a
non-zero in, sorted), so its problem is ``rows x local features`` however wide the bag is.
Entities are then bucketed by padded shape (see :data:`_LADDER`) and each bucket becomes dense
arrays of about :data:`BATCH_BUDGET`
doubles (cache-sized: larger batches measured slower). An entity whose dense arrays alone
would exceed :data:`MAX_DENSE_ENTITY` doubles goes to the sparse one-at-a-time path instead.

The layout is kept for every pass of coordinate descent (only the offsets change), so it holds
as little as it can: the non-zeros' values stay in the bag's own CSR (found again per batch
through its row pointers), and a non-zero costs only its local column, in the narrowest integer
type that holds it (one byte for an entity with at most 256 features).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from gdmix.native import entity_kernels as native
from gdmix.solvers.batched_newton import BatchProblem
from gdmix.solvers.parallel import ordered_map
from gdmix.sparse import segments, starts_of

# Padded sizes: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, then eighths of each octave (72, 80,
# ..., 128, 144, ...), so padding wastes at most a third for small shapes (cheap anyway) and an
# eighth for large ones, whose dense solve grows with the cube of the size.
_LADDER = np.array(sorted(
    {0, 1, 2, 3} | {int(m * 2**k) for k in range(7) for m in (1, 1.5)}
    | {int(2**k * (1 + j / 8)) for k in range(6, 40) for j in range(8)}
))
# Doubles in one batch's dense arrays (16 MB): 1<<21 ran 1.3x faster than 1<<23 in
# bench/random_effect.py on this 2-core machine (2026-11-27).
BATCH_BUDGET = 1 << 21
# Doubles one entity may take densely (256 MB); above that it is solved sparse.
MAX_DENSE_ENTITY = 1 << 25
# Non-zeros per chunk when the layout is built (chunks run on every core and bound the
# temporaries: about 40 bytes per non-zero of a chunk).
BUILD_CHUNK_NNZ = 1 << 20
# A chunk's local columns are ranked by marking a dense (entities x bag width) table when it has
# at most this many cells per non-zero (no sort); a wider bag sorts the chunk's keys instead.
DENSE_RANK_CELLS_PER_NNZ = 16


def padded(sizes: np.ndarray) -> np.ndarray:
    return _LADDER[np.searchsorted(_LADDER, sizes)]


def dense_footprint(rows: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Doubles one entity takes in a dense batch: design, Hessian or row Gram, and vectors."""
    n, q = padded(rows), padded(features)
    return n * q + np.where(n < q, n * n, q * q) + 8 * (n + q)


@dataclass(frozen=True)
class Nonzeros:
    """Some entities' non-zeros in layout order (entity by entity, row by row): the entity
    (position in the entities asked for), the entity's local row and column, and the value."""

    owner: np.ndarray
    local_row: np.ndarray
    local_col: np.ndarray
    value: np.ndarray


@dataclass
class EntityLayout:
    """Training rows grouped by entity, and each entity's local feature subspace.

    Entities are numbered ``k = 0..K-1`` (``entities[k]`` is the entity code). Rows of entity
    ``k`` are ``rows[row_start[k] : row_start[k] + row_count[k]]`` (original row indices of
    ``features``); its local features are ``pair_feature[pair_start[k] : pair_start[k] +
    feature_count[k]]`` (sorted global columns). Non-zeros of entity ``k`` are ``nnz_start[k] :
    nnz_start[k + 1]`` of ``nnz_col`` (their local columns), in the order of its rows' entries
    in ``features``; :meth:`nonzeros` finds their values.
    """

    features: sp.csr_matrix
    entities: np.ndarray
    rows: np.ndarray
    row_start: np.ndarray
    row_count: np.ndarray
    pair_feature: np.ndarray
    pair_start: np.ndarray
    feature_count: np.ndarray
    nnz_start: np.ndarray
    nnz_col: np.ndarray
    _kernel_arrays: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, codes: np.ndarray, features: sp.csr_matrix, train_rows: np.ndarray) -> "EntityLayout":
        features = features.tocsr()
        if not features.has_sorted_indices:  # canonical, so a later in-place sort cannot reorder what we index
            features = features.sorted_indices()
        native_kernels = native.library() is not None
        if native_kernels:
            rows = native.group_by_code(train_rows, codes)
        else:
            rows = train_rows[np.argsort(codes[train_rows], kind="stable")]
        sorted_codes = codes[rows]
        row_start = np.flatnonzero(np.diff(sorted_codes, prepend=-1) != 0) if len(rows) else np.zeros(0, np.int64)
        entities, row_count = sorted_codes[row_start], np.diff(np.append(row_start, len(rows)))
        nnz_per_entity = np.bincount(np.repeat(np.arange(len(entities)), row_count),
                                     weights=np.diff(features.indptr)[rows], minlength=len(entities))
        nnz_start = np.concatenate([[0], np.cumsum(nnz_per_entity.astype(np.int64))])
        width = max(features.shape[1], 1)
        chunks = _chunk_bounds(nnz_start)

        if native_kernels:
            rows_, starts, counts = (np.ascontiguousarray(a, dtype=np.int64) for a in (rows, row_start, row_count))

            def rank(bounds: tuple[int, int]):
                first, last = bounds
                feature_count, pairs, local = native.rank_columns(
                    features.indptr, features.indices, width, rows_, starts, counts, first, last, nnz_start)
                return (feature_count, pairs.astype(_column_type(width)),
                        local.astype(_index_type(int(feature_count.max(initial=0)))))
        else:
            def rank(bounds: tuple[int, int]):
                return _rank_columns(features, rows, row_start, row_count, nnz_start, width, *bounds)

        ranked = list(ordered_map(rank, zip(chunks[:-1], chunks[1:])))
        feature_count = np.concatenate([counts for counts, _, _ in ranked]) if ranked else np.zeros(0, np.int64)
        pair_feature = np.concatenate([pairs for _, pairs, _ in ranked]) if ranked else np.zeros(0, np.int32)
        nnz_col = np.concatenate([local for _, _, local in ranked]) if ranked else np.zeros(0, np.uint8)
        return cls(features=features, entities=entities, rows=rows, row_start=row_start, row_count=row_count,
                   pair_feature=pair_feature, pair_start=starts_of(feature_count), feature_count=feature_count,
                   nnz_start=nnz_start, nnz_col=nnz_col)

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def nbytes(self) -> int:
        """Bytes this layout holds, the bag's CSR it reads included."""
        own = sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray))
        return own + sum(getattr(self.features, name).nbytes for name in ("data", "indices", "indptr"))

    def kernel_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays :mod:`gdmix.native.entity_kernels` reads, in the types it reads them (64-bit
        indices, float64 values; converted once and kept), but the bag's row pointers and the
        local columns, read in their own width (32 or 64 bits; 8, 16 or 32), not copied: the row
        pointers are 8 bytes a row of the dataset."""
        if self._kernel_arrays is None:
            def int64(values):
                return np.ascontiguousarray(values, dtype=np.int64)

            indptr = self.features.indptr
            if indptr.dtype not in (np.int32, np.int64) or not indptr.flags.c_contiguous:
                indptr = int64(indptr)
            self._kernel_arrays = (
                int64(self.row_start), int64(self.row_count), int64(self.rows), indptr,
                np.ascontiguousarray(self.features.data, dtype=np.float64), int64(self.nnz_start),
                np.ascontiguousarray(self.nnz_col), int64(self.pair_start), int64(self.feature_count))
        return self._kernel_arrays

    def per_entity_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-row quantity (indexed like the original rows) over each entity's rows."""
        k_of_row = np.repeat(np.arange(self.num_entities), self.row_count)
        return np.bincount(k_of_row, weights=values[self.rows], minlength=self.num_entities)

    def nonzeros(self, entities: np.ndarray) -> Nonzeros:
        """The non-zeros of ``entities`` (layout numbers), read from the bag's CSR."""
        slot, owner_of_row, local_row = segments(self.row_start[entities], self.row_count[entities])
        source = self.rows[slot]
        begin = self.features.indptr[source]
        entry, row_of_entry, _ = segments(begin, self.features.indptr[source + 1] - begin)
        position, _, _ = segments(self.nnz_start[entities], self.nnz_start[entities + 1] - self.nnz_start[entities])
        return Nonzeros(owner_of_row[row_of_entry], local_row[row_of_entry], self.nnz_col[position],
                        self.features.data[entry].astype(np.float64, copy=False))

    def batches(self, entities: np.ndarray) -> Iterator[np.ndarray]:
        """Groups of entities sharing padded (rows, features), each within the memory budget."""
        if len(entities) == 0:
            return
        n_pad, q_pad = padded(self.row_count[entities]), padded(self.feature_count[entities])
        order = np.lexsort((q_pad, n_pad))
        entities, n_pad, q_pad = entities[order], n_pad[order], q_pad[order]
        footprint = dense_footprint(self.row_count[entities], self.feature_count[entities])
        boundaries = np.flatnonzero((np.diff(n_pad) != 0) | (np.diff(q_pad) != 0)) + 1
        for group in np.split(np.arange(len(entities)), boundaries):
            size = max(1, BATCH_BUDGET // int(footprint[group[0]]))
            for start in range(0, len(group), size):
                yield entities[group[start:start + size]]

    def batch_problem(self, batch, labels, weights, offsets, l2: float, intercept_ridge) -> BatchProblem:
        """Dense padded arrays of one batch (entities of equal padded shape)."""
        m = len(batch)
        n = int(padded(self.row_count[batch]).max())
        q = int(padded(self.feature_count[batch]).max())
        slot, entity, local_row = segments(self.row_start[batch], self.row_count[batch])
        source = self.rows[slot]
        y, w, o = np.zeros((m, n)), np.zeros((m, n)), np.zeros((m, n))
        y[entity, local_row] = labels[source]
        w[entity, local_row] = weights[source]
        o[entity, local_row] = offsets[source]
        nonzeros = self.nonzeros(batch)
        features = np.zeros((m, n, q))
        features[nonzeros.owner, nonzeros.local_row, nonzeros.local_col] = nonzeros.value
        return BatchProblem(features, y, w, o, np.full(m, float(l2)), intercept_ridge[batch])

    def gather_pairs(self, batch: np.ndarray, pair_values: np.ndarray, q: int) -> np.ndarray:
        """Per-(entity, local feature) values of a batch as a dense (m, q) array."""
        slot, entity, column = segments(self.pair_start[batch], self.feature_count[batch])
        out = np.zeros((len(batch), q))
        out[entity, column] = pair_values[slot]
        return out

    def scatter_pairs(self, batch: np.ndarray, dense: np.ndarray, pair_values: np.ndarray) -> None:
        """Inverse of :meth:`gather_pairs`: write a batch's (m, q) coefficients back."""
        slot, entity, column = segments(self.pair_start[batch], self.feature_count[batch])
        pair_values[slot] = dense[entity, column]

    def entity_design(self, k: int) -> tuple[np.ndarray, sp.csr_matrix]:
        """(original row indices, sparse local design) of entity ``k``, for the sparse path."""
        rows = self.rows[self.row_start[k]:self.row_start[k] + self.row_count[k]]
        nonzeros = self.nonzeros(np.array([k]))
        design = sp.csr_matrix((nonzeros.value, (nonzeros.local_row, nonzeros.local_col.astype(np.int64))),
                               shape=(len(rows), int(self.feature_count[k])))
        return rows, design

    def pairs_to_csr(self, pair_values: np.ndarray, width: int, columns: np.ndarray | None = None) -> sp.csr_matrix:
        """One row per layout entity holding its pairs' values (``pair_values``, not copied) in
        its local features' columns: ``pair_feature`` itself (already in scipy's index type), or
        ``columns``, the column indices of an earlier such matrix of this layout (the last pass's
        model). Shared, not copied (4 bytes a coefficient), and so made read-only."""
        index = np.int32 if max(len(pair_values), width) < np.iinfo(np.int32).max else np.int64  # scipy's own choice
        if columns is None or columns.dtype != index or len(columns) != len(pair_values):
            columns = self.pair_feature.astype(index, copy=False)  # the layout's own, as a rule
            columns.flags.writeable = False
        matrix = sp.csr_matrix((self.num_entities, width), dtype=np.float64)
        # set, not passed to the constructor, whose format check copies views (scipy's ``prune``)
        matrix.indptr = np.concatenate([[0], np.cumsum(self.feature_count)]).astype(index)
        matrix.indices, matrix.data = columns, pair_values
        return matrix


def _chunk_bounds(nnz_start: np.ndarray) -> np.ndarray:
    """Entity boundaries cutting the layout into chunks of about :data:`BUILD_CHUNK_NNZ` non-zeros."""
    targets = np.arange(0, int(nnz_start[-1]), BUILD_CHUNK_NNZ)
    cuts = np.searchsorted(nnz_start, targets, side="right") - 1
    return np.unique(np.concatenate([[0], cuts, [len(nnz_start) - 1]]))


def _rank_columns(features: sp.csr_matrix, rows, row_start, row_count, nnz_start, width: int,
                  first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entities ``first..last-1``: each one's count of distinct columns, those columns (sorted,
    entity by entity) and every non-zero's rank among its entity's columns (its local column)."""
    count = last - first
    slot, owner, _ = segments(row_start[first:last], row_count[first:last])
    begin = features.indptr[rows[slot]]
    entry, row_of_entry, _ = segments(begin, features.indptr[rows[slot] + 1] - begin)
    entity_of_entry = owner[row_of_entry]
    keys = entity_of_entry * width + features.indices[entry]
    if count * width <= DENSE_RANK_CELLS_PER_NNZ * max(len(keys), 1):
        seen = np.zeros(count * width, dtype=bool)
        seen[keys] = True
        pair_keys = np.flatnonzero(seen)
        index = np.empty(count * width, dtype=np.int64)  # written only where seen: no pass over every cell
        index[pair_keys] = np.arange(len(pair_keys))
        rank = index[keys]
    else:
        pair_keys, rank = np.unique(keys, return_inverse=True)
    feature_count = np.bincount(pair_keys // width, minlength=count)
    local = rank.reshape(-1) - starts_of(feature_count)[entity_of_entry]
    return (feature_count, (pair_keys % width).astype(_column_type(width)),
            local.astype(_index_type(int(feature_count.max(initial=0)))))


def _column_type(width: int) -> np.dtype:
    """The type of ``pair_feature``: scipy's index type for a bag this wide, so that the models
    built from the layout share the array as their column indices (:meth:`EntityLayout.pairs_to_csr`)."""
    return np.dtype(np.int32 if width < np.iinfo(np.int32).max else np.int64)


def _index_type(largest: int) -> np.dtype:
    """The narrowest unsigned integer type holding ``0 .. largest`` (local columns, features)."""
    return np.min_scalar_type(max(largest, 0))
