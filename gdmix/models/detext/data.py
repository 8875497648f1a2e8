"""The rows a DeText model reads, and how batches are cut from them.

:class:`DetextRows` holds, for a set of rows, the text columns (bytes), the wide bag as CSR
(columns from the bag's index map), the dense columns, and labels, weights and list ids.
Batches are positions into it; :func:`batch_inputs` turns a batch into the network's input
tensors (the wide bag padded to the batch's longest row).

Batches are the same on every worker: a seeded permutation of rows (pointwise) or of whole
lists (ranking losses), ``batch_size`` rows at a time, and worker k of n takes the k-th
slice of each batch. The workers' loss sums then add up to exactly the single-worker batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from gdmix.config import DetextConfig
from gdmix.errors import DataError
from gdmix.models.detext.network import text_columns
from gdmix.models.detext.text import text_array
from gdmix.tf_runtime import import_tensorflow

tf = import_tensorflow()  # this package is TensorFlow through and through


@dataclass
class DetextRows:
    texts: dict[str, np.ndarray]
    wide: sp.csr_matrix | None
    dense: np.ndarray
    labels: np.ndarray | None
    weights: np.ndarray
    groups: np.ndarray | None

    @property
    def num_rows(self) -> int:
        return len(self.weights)

    def take(self, positions: np.ndarray) -> "DetextRows":
        def pick(values):
            return None if values is None else values[positions]

        return DetextRows({name: values[positions] for name, values in self.texts.items()}, pick(self.wide),
                          self.dense[positions], pick(self.labels), self.weights[positions], pick(self.groups))


def rows_from_columns(config: DetextConfig, columns: dict[str, pa.Array | np.ndarray], wide: sp.csr_matrix | None,
                      labels, weights, source: str = "data") -> DetextRows:
    """Gather a model's inputs from named columns (texts, dense, group) and the wide CSR."""
    def column(name: str):
        if name not in columns:
            raise DataError(f"DeText coordinate '{config.name}' needs column '{name}'", path=source, column=name)
        return columns[name]

    texts = {name: text_array(_to_list(column(name))) for name in text_columns(config)}
    dense = np.zeros((len(weights), 0), np.float32)
    if config.dense:
        dense = np.column_stack([np.asarray(_to_numpy(column(c)), np.float64) for c in config.dense]).astype(np.float32)
        bad = np.argwhere(~np.isfinite(dense))
        if bad.size:
            raise DataError(f"dense feature is not finite (row {int(bad[0, 0])})", path=source,
                            column=config.dense[int(bad[0, 1])])
    groups = np.asarray(_to_numpy(column(config.group))) if config.group else None
    return DetextRows(texts, wide, dense, None if labels is None else np.asarray(labels, np.float32),
                      np.asarray(weights, np.float32), groups)


def _to_list(values) -> list:
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


def _to_numpy(values):
    return values.to_numpy(zero_copy_only=False) if hasattr(values, "to_numpy") else np.asarray(values)


def batch_inputs(rows: DetextRows, positions: np.ndarray, offsets: np.ndarray) -> dict:
    """The network's input dict for ``positions`` (offsets already include the data's own)."""
    inputs = {f"text:{name}": tf.constant(values[positions], dtype=tf.string) for name, values in rows.texts.items()}
    ids, values = _padded(rows.wide, positions)
    inputs["wide_ids"] = tf.constant(ids)
    inputs["wide_values"] = tf.constant(values)
    inputs["dense"] = tf.constant(rows.dense[positions])
    inputs["offset"] = tf.constant(np.asarray(offsets[positions], np.float32))
    return dict(sorted(inputs.items()))  # one key order everywhere (a traced signature's order)


def _padded(wide: sp.csr_matrix | None, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A CSR's rows as [n, k] feature ids (column + 1; 0 pads) and values."""
    if wide is None:
        return np.zeros((len(positions), 1), np.int32), np.zeros((len(positions), 1), np.float32)
    part = wide[positions]
    lengths = np.diff(part.indptr)
    width = max(int(lengths.max(initial=0)), 1)
    ids = np.zeros((len(positions), width), np.int32)
    values = np.zeros((len(positions), width), np.float32)
    row = np.repeat(np.arange(len(positions)), lengths)
    slot = np.arange(part.nnz) - np.repeat(part.indptr[:-1], lengths)
    ids[row, slot] = part.indices + 1
    values[row, slot] = part.data
    return ids, values


class Batches:
    """The global batch schedule, identical on every worker; :meth:`local` is a worker's share."""

    def __init__(self, rows: DetextRows, batch_size: int, seed: int, by_group: bool):
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        if by_group:
            order = np.argsort(rows.groups, kind="stable")
            _, starts = np.unique(rows.groups[order], return_index=True)
            self.units = np.split(order, starts[1:])
        else:
            self.units = None
        self.count = rows.num_rows if self.units is None else len(self.units)
        self._queue = np.empty(0, np.int64)

    def next(self) -> np.ndarray:
        """The next global batch: row positions (whole lists for ranking losses)."""
        if self.units is None:
            return self._take(self.batch_size)
        chosen, size = [], 0
        while size < self.batch_size:  # lists until the batch holds about batch_size rows
            unit = self.units[int(self._take(1)[0])]
            chosen.append(unit)
            size += len(unit)
        return np.concatenate(chosen)

    def _take(self, count: int) -> np.ndarray:
        while len(self._queue) < count:  # epochs follow one another without a short batch
            self._queue = np.concatenate([self._queue, self.rng.permutation(self.count)])
        taken, self._queue = self._queue[:count], self._queue[count:]
        return taken

    @staticmethod
    def local(batch: np.ndarray, rows: DetextRows, rank: int, size: int) -> np.ndarray:
        """Worker ``rank``'s share of a global batch (whole lists stay on one worker)."""
        if rows.groups is None or size == 1:
            return np.array_split(batch, size)[rank]
        groups = rows.groups[batch]
        _, first = np.unique(groups, return_index=True)
        order = np.argsort(first)  # lists in batch order
        mine = np.array_split(np.arange(len(order)), size)[rank]
        keep = np.isin(groups, np.unique(groups)[order[mine]])
        return batch[keep]
