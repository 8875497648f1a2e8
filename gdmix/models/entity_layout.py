"""How a random effect's training rows are laid out for the batched solver.

Rows are grouped by entity; each entity gets its local feature subspace (the columns it has a
non-zero in, sorted), so its problem is ``rows x local features`` however wide the bag is.
Entities are then bucketed by padded shape (see :data:`_LADDER`) and each bucket becomes dense
arrays of about :data:`BATCH_BUDGET`
doubles (cache-sized: larger batches measured slower). An entity whose dense arrays alone
would exceed :data:`MAX_DENSE_ENTITY` doubles goes to the sparse one-at-a-time path instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from gdmix.solvers.batched_newton import BatchProblem
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


def padded(sizes: np.ndarray) -> np.ndarray:
    return _LADDER[np.searchsorted(_LADDER, sizes)]


def dense_footprint(rows: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Doubles one entity takes in a dense batch: design, Hessian or row Gram, and vectors."""
    n, q = padded(rows), padded(features)
    return n * q + np.where(n < q, n * n, q * q) + 8 * (n + q)


@dataclass
class EntityLayout:
    """Training rows grouped by entity, and each entity's local feature subspace.

    Entities are numbered ``k = 0..K-1`` (``entities[k]`` is the entity code). Rows of entity
    ``k`` are ``rows[row_start[k] : row_start[k] + row_count[k]]``; its local features are
    ``pair_feature[pair_start[k] : pair_start[k] + feature_count[k]]`` (sorted global columns).
    Non-zeros of entity ``k`` are ``nnz_start[k] : nnz_start[k + 1]``, each with its local row,
    local column and value.
    """

    entities: np.ndarray
    rows: np.ndarray
    row_start: np.ndarray
    row_count: np.ndarray
    pair_feature: np.ndarray
    pair_start: np.ndarray
    feature_count: np.ndarray
    nnz_start: np.ndarray
    nnz_row: np.ndarray
    nnz_col: np.ndarray
    nnz_value: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, features: sp.csr_matrix, train_rows: np.ndarray) -> "EntityLayout":
        rows = train_rows[np.argsort(codes[train_rows], kind="stable")]
        entities, row_start, row_count = np.unique(codes[rows], return_index=True, return_counts=True)
        k_of_row = np.repeat(np.arange(len(entities)), row_count)
        sorted_x = features[rows]
        sorted_x.sort_indices()
        per_row = np.diff(sorted_x.indptr)
        nnz_k = np.repeat(k_of_row, per_row)
        width = max(features.shape[1], 1)
        pair_keys, inverse = np.unique(nnz_k * width + sorted_x.indices, return_inverse=True)
        feature_count = np.bincount(pair_keys // width, minlength=len(entities))
        pair_start = starts_of(feature_count)
        nnz_per_entity = np.bincount(nnz_k, minlength=len(entities))
        return cls(
            entities=entities,
            rows=rows,
            row_start=row_start,
            row_count=row_count,
            pair_feature=(pair_keys % width).astype(np.int64),
            pair_start=pair_start,
            feature_count=feature_count,
            nnz_start=np.concatenate([[0], np.cumsum(nnz_per_entity)]),
            nnz_row=np.repeat(np.arange(len(rows)) - row_start[k_of_row], per_row),
            nnz_col=inverse.reshape(-1) - pair_start[nnz_k],
            nnz_value=sorted_x.data.astype(np.float64, copy=False),
        )

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    def per_entity_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-row quantity (indexed like the original rows) over each entity's rows."""
        k_of_row = np.repeat(np.arange(self.num_entities), self.row_count)
        return np.bincount(k_of_row, weights=values[self.rows], minlength=self.num_entities)

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
        nnz, nnz_entity, _ = segments(self.nnz_start[batch], self.nnz_start[batch + 1] - self.nnz_start[batch])
        features = np.zeros((m, n, q))
        features[nnz_entity, self.nnz_row[nnz], self.nnz_col[nnz]] = self.nnz_value[nnz]
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
        nnz = slice(self.nnz_start[k], self.nnz_start[k + 1])
        design = sp.csr_matrix((self.nnz_value[nnz], (self.nnz_row[nnz], self.nnz_col[nnz])),
                               shape=(len(rows), int(self.feature_count[k])))
        return rows, design

    def pairs_to_csr(self, pair_values: np.ndarray, width: int) -> sp.csr_matrix:
        indptr = np.concatenate([[0], np.cumsum(self.feature_count)])
        return sp.csr_matrix((pair_values, self.pair_feature, indptr), shape=(self.num_entities, width))
