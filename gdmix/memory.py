"""Giving freed memory back to the operating system between the phases of a run.

Reading a dataset frees gigabytes in many medium-sized blocks: Arrow keeps them in its own pool
and glibc keeps them in its heap, so the process's resident memory stays at the reading
phase's peak while training allocates on top of it. Resident memory is what a container's
memory limit counts, so after reading we hand both back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np
import pyarrow as pa


def release_free_memory() -> None:
    """Return the free memory of Arrow's pool and of the C heap (glibc only) to the system."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


#: bytes freed between two hand-backs in a loop (a trim walks the whole heap: not once per small piece)
FREED_THRESHOLD = 64 << 20


class FreedMemory:
    """Counts what a loop frees and hands it back (:func:`release_free_memory`) each time at
    least ``threshold`` bytes have been freed since the last time: a loop over many small pieces
    does not pay a trim of the whole heap per piece, and one over large pieces does not hold
    them all resident until it ends."""

    def __init__(self, threshold: int | None = None):
        self.threshold, self.pending = FREED_THRESHOLD if threshold is None else threshold, 0

    def freed(self, nbytes: int) -> None:
        self.pending += int(nbytes)
        if self.pending >= self.threshold:
            release_free_memory()
            self.pending = 0


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


#: TensorFlow shares (rather than copies) a CPU buffer only at this alignment (Eigen's maximum)
TENSOR_ALIGNMENT = 64


def aligned_empty(size: int, dtype) -> np.ndarray:
    """An uninitialised 1-d array whose data starts at a :data:`TENSOR_ALIGNMENT` boundary, so
    that TensorFlow can use it in place (:func:`gdmix.losses.logistic_tf.shared_tensor`)."""
    itemsize = np.dtype(dtype).itemsize  # 4 or 8: divides both the alignment and numpy's own
    raw = np.empty(size + TENSOR_ALIGNMENT // itemsize, dtype=dtype)
    start = (-raw.ctypes.data % TENSOR_ALIGNMENT) // itemsize
    # a view of nearly all of ``raw``: scipy copies views of less than half their base
    return raw[start:start + size]
