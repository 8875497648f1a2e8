"""The logistic loss over rows held in TensorFlow tensors: the fixed effect's data term.

``TfLogisticLoss`` computes ``sum_i w_i CE(y_i, x_i.beta + b + o_i)`` and its gradient in one call
of the fused native op (:mod:`gdmix.native`), or of an equivalent composition of stock TensorFlow
ops where the op cannot be built. Only the data term lives here, never the penalty, so that a
distributed fit can sum it across workers and add the penalty once.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from gdmix.losses.logistic import curvature, data_hessian
from gdmix.memory import TENSOR_ALIGNMENT
from gdmix.native import logistic_loss_op
from gdmix.sparse import BLOCK_NONZEROS, row_blocks
from gdmix.tf_runtime import import_tensorflow


class TfLogisticLoss:
    """``sum_i w_i CE(y_i, x_i.beta + b + o_i)`` and its gradient w.r.t. ``theta = [b, beta]``.

    The rows live in TensorFlow tensors for the whole optimisation: CSR row splits (int64),
    column ids (int32) and values (float64), i.e. 12 bytes per non-zero plus 32 per row with
    labels, weights and offsets. An evaluation is one call of the fused native op
    (:mod:`gdmix.native`), or of an equivalent composition of TensorFlow ops where the op
    cannot be built.
    """

    def __init__(self, features: sp.csr_matrix, labels: np.ndarray, weights: np.ndarray, offsets: np.ndarray):
        import_tensorflow()
        features = features.tocsr()
        self.num_rows, self.num_features = features.shape
        self.nnz = features.nnz
        self._tensors = tuple(
            shared_tensor(array, dtype)
            for array, dtype in ((features.indptr, np.int64), (features.indices, np.int32),
                                 (features.data, np.float64), (labels, np.float64),
                                 (weights, np.float64), (offsets, np.float64))
        )
        op = logistic_loss_op()
        self.native = op is not None
        self._function = _fused_function(op) if self.native else _composite_function()

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = self._function(np.asarray(theta, dtype=np.float64), *self._tensors)
        return float(value.numpy()), gradient.numpy()

    def logits(self, theta: np.ndarray) -> np.ndarray:
        """``x_i . beta + b`` per row (without offsets), from the tensors alone."""
        return _logits_function()(np.asarray(theta, dtype=np.float64), *self._tensors[:3]).numpy()

    def hessian(self, theta: np.ndarray, full: bool) -> np.ndarray:
        """The data term's Hessian at ``theta``: its diagonal, or (``full``) the dense matrix
        (see :func:`gdmix.losses.logistic.data_hessian`).

        Read from the tensors themselves (zero-copy numpy views; the job has released its CSR
        by now), a block of about ``HESSIAN_BLOCK_NONZEROS`` non-zeros at a time, so it needs
        no second copy of the data."""
        indptr, cols, values, _labels, weights, offsets = (np.asarray(t) for t in self._tensors)
        width = self.num_features + 1
        total = np.zeros((width, width) if full else width)
        for start, stop in row_blocks(indptr, HESSIAN_BLOCK_NONZEROS):
            first, last = indptr[start], indptr[stop]
            block = sp.csr_matrix((values[first:last], cols[first:last], indptr[start:stop + 1] - first),
                                  shape=(stop - start, self.num_features))
            z = block @ theta[1:] + theta[0] + offsets[start:stop]
            total += data_hessian(block, curvature(z, weights[start:stop]), full)
        return total

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the in-memory data (all tensors)."""
        return int(sum(t.dtype.size * int(np.prod(t.shape)) for t in self._tensors))

    @property
    def nonzero_bytes(self) -> int:
        """Bytes that grow with the non-zeros (column ids and values): 12 per non-zero."""
        return int(sum(t.dtype.size * int(np.prod(t.shape)) for t in self._tensors[1:3]))


def shared_tensor(array: np.ndarray, dtype):
    """A tensor of ``array``: the same memory where the array already has ``dtype`` and is
    aligned as TensorFlow requires (the CSR :func:`gdmix.dataset.load_dataset` builds), a copy
    otherwise. Sharing keeps a job from holding its largest data twice. The tensor keeps the
    array alive; neither is written after this."""
    tf = import_tensorflow()
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.size and array.flags.writeable and array.ctypes.data % TENSOR_ALIGNMENT == 0:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.constant(array)


_COMPILED: dict = {}
#: rows are read in blocks of about this many non-zeros when the Hessian is computed
HESSIAN_BLOCK_NONZEROS = BLOCK_NONZEROS


def _signature(tf):
    spec = tf.TensorSpec
    return [spec([None], tf.float64), spec([None], tf.int64), spec([None], tf.int32),
            spec([None], tf.float64), spec([None], tf.float64), spec([None], tf.float64),
            spec([None], tf.float64)]


def _fused_function(op):
    """One native op call per evaluation; data tensors are arguments, never graph constants."""
    if "fused" not in _COMPILED:
        tf = import_tensorflow()

        @tf.function(input_signature=_signature(tf))
        def fused(theta, row_splits, cols, values, labels, weights, offsets):
            return op.gdmix_logistic_loss_grad(theta, row_splits, cols, values, labels, weights, offsets)

        _COMPILED["fused"] = fused
    return _COMPILED["fused"]


def _logits_function():
    if "logits" not in _COMPILED:
        tf = import_tensorflow()

        @tf.function(input_signature=_signature(tf)[:4])
        def logits(theta, row_splits, cols, values):
            rows = tf.ragged.row_splits_to_segment_ids(row_splits, out_type=tf.int32)
            num_rows = tf.shape(row_splits)[0] - 1
            return tf.math.unsorted_segment_sum(values * tf.gather(theta[1:], cols), rows, num_rows) + theta[0]

        _COMPILED["logits"] = logits
    return _COMPILED["logits"]


def _composite_function():
    """The same loss and gradient from stock TensorFlow ops (the fallback and the reference)."""
    if "composite" not in _COMPILED:
        tf = import_tensorflow()

        @tf.function(input_signature=_signature(tf))
        def composite(theta, row_splits, cols, values, labels, weights, offsets):
            num_rows = tf.shape(labels)[0]
            rows = tf.ragged.row_splits_to_segment_ids(row_splits, out_type=tf.int32)
            intercept, beta = theta[0], theta[1:]
            logits = tf.math.unsorted_segment_sum(values * tf.gather(beta, cols), rows, num_rows)
            logits = logits + intercept + offsets
            loss = tf.reduce_sum(weights * tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
            residual = weights * (tf.sigmoid(logits) - labels)
            grad_beta = tf.math.unsorted_segment_sum(values * tf.gather(residual, rows), cols, tf.shape(beta)[0])
            return loss, tf.concat([tf.reshape(tf.reduce_sum(residual), [1]), grad_beta], axis=0)

        _COMPILED["composite"] = composite
    return _COMPILED["composite"]
