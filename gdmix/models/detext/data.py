"""The rows a DeText model reads, and how batches are cut from them.

:class:`DetextRows` holds, for a set of rows, the text columns (bytes), the wide bag as CSR
(columns from the bag's index map), the dense columns, and labels, weights and list ids.
Batches are positions into it; :func:`batch_arrays` / :func:`batch_inputs` turn a batch into
the network's inputs (the wide bag padded to the batch's longest row).

Batches are the same on every worker (:class:`Batches`): a seeded permutation of the global row
numbers (pointwise) or of whole lists (ranking losses), ``batch_size`` rows at a time, computed
from global metadata only (:class:`RowIndex`: the row count and, for ranking losses, the list ids).
Each worker holds only its shard, a contiguous range of the training rows (:class:`TrainingShard`,
:func:`shard_range`), and takes from every global batch the rows of its range. Local batch sizes
vary, but the shards' loss sums add up to exactly the single-worker batch's (the training loop
all-reduces sums and divides by the global weight), so 1 and N workers follow the same trajectory.
A ranking list must never be split: shard boundaries are moved to list starts, which needs each
list's rows to be consecutive in the data when there is more than one worker (checked:
:func:`shard_range` raises a :class:`~gdmix.errors.DataError` naming the column otherwise).
Each step's share is gathered inside the training step from the shard's columns held once as
tensors (:class:`ShardTensors`): Python hands the step only the positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from gdmix.config import DetextConfig
from gdmix.errors import DataError
from gdmix.io.contract import shard_bounds
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


def batch_arrays(rows: DetextRows, positions: np.ndarray, offsets: np.ndarray) -> dict[str, np.ndarray]:
    """The network's inputs for ``positions`` as numpy arrays (offsets already include the data's own)."""
    arrays = {f"text:{name}": values[positions] for name, values in rows.texts.items()}
    arrays["wide_ids"], arrays["wide_values"] = _padded(rows.wide, positions)
    arrays["dense"] = rows.dense[positions]
    arrays["offset"] = np.asarray(offsets[positions], np.float32)
    return dict(sorted(arrays.items()))  # one key order everywhere (a traced signature's order)


def batch_inputs(rows: DetextRows, positions: np.ndarray, offsets: np.ndarray) -> dict:
    """:func:`batch_arrays` as tensors: the network's input dict."""
    return {name: tf.constant(values, dtype=tf.string if name.startswith("text:") else None)
            for name, values in batch_arrays(rows, positions, offsets).items()}


def blank_rows(text_names: list[str], dense_dims: int) -> DetextRows:
    """One empty row: enough to build a network's weights when a worker holds no rows."""
    return DetextRows({name: np.array([b""], dtype=object) for name in text_names}, None,
                      np.zeros((1, dense_dims), np.float32), None, np.ones(1, np.float32), None)


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


@dataclass(frozen=True)
class RowIndex:
    """What the global batch schedule needs, and nothing more: the number of training rows and,
    for ranking losses, every row's list id as an integer code (codes sort like the ids)."""

    num_rows: int
    groups: np.ndarray | None = None

    @classmethod
    def of(cls, num_rows: int, groups: np.ndarray | None) -> "RowIndex":
        return cls(num_rows, None if groups is None else list_codes(groups))


def list_codes(groups: np.ndarray) -> np.ndarray:
    """List ids (any sortable type) as int64 codes in the ids' sort order."""
    return np.unique(np.asarray(groups), return_inverse=True)[1].astype(np.int64).reshape(-1)


class Batches:
    """The global batch schedule, identical on every worker.

    ``rows`` is anything with ``num_rows`` and ``groups`` (:class:`RowIndex`, or :class:`DetextRows`
    when every row is in memory): the schedule never looks at the rows' contents."""

    def __init__(self, rows, batch_size: int, seed: int, by_group: bool):
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


def shard_range(index: RowIndex, rank: int, size: int, source: str = "data",
                column: str | None = None, locate=None) -> tuple[int, int]:
    """Worker ``rank``'s rows ``[low, high)``: the fixed effect's balanced shard
    (:func:`~gdmix.io.contract.shard_bounds`), with both ends moved forward to the next list start
    for ranking losses, so a list is never split between workers.

    With more than one worker the lists must be contiguous (each list's rows consecutive); a list
    found in two places is a :class:`DataError` naming ``column`` and, through ``locate`` (global
    row -> (file, row in file)), the file and row where it reappears."""
    low, high = shard_bounds(index.num_rows, rank, size)
    if index.groups is None or size == 1:
        return low, high
    starts = np.flatnonzero(np.diff(index.groups) != 0) + 1
    _check_contiguous(index.groups, starts, source, column, locate)
    boundaries = np.concatenate([[0], starts, [index.num_rows]])
    move = lambda row: int(boundaries[np.searchsorted(boundaries, row)])  # noqa: E731
    return move(low), move(high)


def _check_contiguous(codes: np.ndarray, starts: np.ndarray, source: str, column: str | None, locate) -> None:
    """Every list id forms one run of rows (a run per distinct id)."""
    runs = np.concatenate([[0], starts]) if len(codes) else starts
    if len(runs) == len(np.unique(codes)):
        return
    run_codes = codes[runs]
    _, first_run = np.unique(run_codes, return_index=True)
    repeated = np.setdiff1d(np.arange(len(runs)), first_run)[0]  # the first run of an id seen before
    row = int(runs[repeated])
    path, file_row = locate(row) if locate is not None else (source, row)
    raise DataError("the rows of a ranking list are not consecutive (the list id reappears here after other "
                    "lists): with more than one worker each list must be stored contiguously (sort the data by "
                    "the list id) so that no list is split between workers", path=path, column=column, row=file_row)


@dataclass
class TrainingShard:
    """A worker's contiguous range of the training rows: its :class:`DetextRows` (global row
    ``start + i`` is ``rows`` row i) and the :class:`RowIndex` of all rows, for the schedule."""

    rows: DetextRows
    start: int
    index: RowIndex

    @classmethod
    def in_memory(cls, rows: DetextRows, offsets: np.ndarray, rank: int, size: int,
                  source: str = "data") -> tuple["TrainingShard", np.ndarray]:
        """The shard of rows every worker holds in full (coordinate descent in one process), and its offsets."""
        index = RowIndex.of(rows.num_rows, rows.groups)
        low, high = shard_range(index, rank, size, source)
        positions = np.arange(low, high)
        return cls(rows.take(positions), low, index), np.asarray(offsets)[positions]

    def local(self, batch: np.ndarray) -> np.ndarray:
        """This worker's share of a global batch, as positions into ``rows`` (in batch order)."""
        mine = batch[(batch >= self.start) & (batch < self.start + self.rows.num_rows)]
        return mine - self.start

    def shares(self, batches: Batches, steps: int) -> Iterator[tuple[np.ndarray, int]]:
        """For each of ``steps`` global batches: this worker's share (:meth:`local`, int64; may be
        empty: the worker still takes part in the step's all-reduce) and the global batch's size."""
        for _ in range(steps):
            batch = batches.next()
            yield self.local(batch).astype(np.int64), len(batch)

    def codes(self) -> np.ndarray:
        """The shard's list ids as global codes (zeros without lists)."""
        if self.index.groups is None:
            return np.zeros(self.rows.num_rows, np.int64)
        return self.index.groups[self.start:self.start + self.rows.num_rows]


@dataclass
class HeldOutShard:
    """A worker's contiguous range of the validation rows (``rows``, global row ``start`` first) and,
    for the metric, every validation row's label, weight and list code (``everything``, no inputs):
    each worker scores only its rows, and the logits are all-reduced before the metric."""

    rows: DetextRows
    start: int
    everything: DetextRows

    @classmethod
    def gather(cls, rows: DetextRows, start: int, index: RowIndex, collective) -> "HeldOutShard":
        """Every worker's labels and weights, all-reduced once (zeros outside each worker's range)."""
        columns = np.zeros((2, index.num_rows))
        columns[:, start:start + rows.num_rows] = [rows.labels, rows.weights]
        labels, weights = collective.sum(columns.ravel()).reshape(2, index.num_rows).astype(np.float32)
        return cls(rows, start, DetextRows({}, None, np.zeros((index.num_rows, 0), np.float32), labels, weights,
                                           index.groups))

    def place(self, logits: np.ndarray) -> np.ndarray:
        """This worker's logits at their global rows, zeros elsewhere (to be all-reduced)."""
        out = np.zeros(self.everything.num_rows)
        out[self.start:self.start + self.rows.num_rows] = logits
        return out


class ShardTensors:
    """A worker's training shard held once as tensors, and :meth:`gather`, which cuts one step's
    share out of them inside the training step's own ``tf.function``.

    Why inside the step and not in a ``tf.data`` pipeline: the schedule is drawn in Python
    (:meth:`TrainingShard.shares`), and streaming it into ``tf.data`` takes
    ``Dataset.from_generator``; with that source in the process, every ``tf.function`` traced after
    it ran its kernels on TensorFlow's compute thread at about twice the CPU (TF 2.21, one
    intra-/inter-op thread; a function traced before it kept its speed, and ``tf.data`` without
    ``from_generator`` did not do it), so a ``tf.data`` feed made each step 2-3x dearer than a plain
    Python feed. A pipeline would buy nothing in return: the gather costs a fraction of a
    millisecond, and a worker has one thread to overlap it on. Here Python hands the step only
    its positions (one int64 vector), and the step's inputs never exist as separate eager
    tensors. Memory: the shard's columns once, plus one step's rows while it runs."""

    def __init__(self, shard: TrainingShard, offsets: np.ndarray):
        rows = shard.rows
        labels = rows.labels if rows.labels is not None else np.zeros(rows.num_rows, np.float32)
        self.texts = {name: _string_tensor(values) for name, values in rows.texts.items()}
        self.dense = tf.constant(rows.dense, tf.float32)
        self.offset = tf.constant(np.asarray(offsets, np.float32).reshape(-1)[:rows.num_rows])
        self.labels = tf.constant(np.asarray(labels, np.float32))
        self.weights = tf.constant(np.asarray(rows.weights, np.float32))
        self.codes = tf.constant(shard.codes().astype(np.int64))
        self.wide = _ragged_wide(rows.wide)

    def gather(self, positions) -> tuple[dict, "tf.Tensor", "tf.Tensor", "tf.Tensor"]:
        """``(inputs, labels, weights, list codes)`` of shard rows ``positions`` (int64 [k]):
        the inputs exactly as :func:`batch_inputs` builds them. Traceable (graph ops only)."""
        inputs = {f"text:{name}": tf.gather(values, positions) for name, values in self.texts.items()}
        inputs["dense"] = tf.gather(self.dense, positions)
        inputs["offset"] = tf.gather(self.offset, positions)
        inputs["wide_ids"], inputs["wide_values"] = self._padded_wide(positions)
        return (dict(sorted(inputs.items())), tf.gather(self.labels, positions), tf.gather(self.weights, positions),
                tf.gather(self.codes, positions))

    def _padded_wide(self, positions):
        """The rows' wide features padded to the longest (at least one column), as :func:`_padded`."""
        count = tf.shape(positions, out_type=tf.int64)[0]
        if self.wide is None:
            return tf.zeros([count, 1], tf.int32), tf.zeros([count, 1], tf.float32)
        ids, values = (tf.gather(part, positions) for part in self.wide)
        shape = tf.stack([count, tf.maximum(ids.bounding_shape(axis=1, out_type=tf.int64), 1)])
        return ids.to_tensor(0, shape=shape), values.to_tensor(0.0, shape=shape)


def _string_tensor(values: np.ndarray):
    """A text column as a ``tf.string`` vector (an empty column too: ``tf.constant`` cannot type it)."""
    return tf.constant(values, tf.string) if len(values) else tf.zeros([0], tf.string)


def _ragged_wide(wide: sp.csr_matrix | None):
    """A CSR's rows as ragged feature ids (column + 1) and values, as :func:`_padded` pads them."""
    if wide is None:
        return None
    lengths, used = np.diff(wide.indptr).astype(np.int64), slice(wide.indptr[0], wide.indptr[-1])
    ids = tf.RaggedTensor.from_row_lengths(tf.constant(wide.indices[used].astype(np.int32) + 1), lengths)
    values = tf.RaggedTensor.from_row_lengths(tf.constant(wide.data[used].astype(np.float32)), lengths)
    return ids, values
