"""Horovod as a :class:`~gdmix.distributed.collective.Collective` (``horovodrun`` / MPIJob).

DeText's training loop only needs sums (and maxima) of float64 vectors across workers; the
same loop runs on TF collective ops (``TF_CONFIG``, TFJob) or on Horovod's all-reduce
(``horovodrun -np N``, an MPIJob's launcher), chosen by how the job was started. Horovod is
built from source for this TensorFlow (``make horovod``); it is imported only here.
"""

from __future__ import annotations

import os

import numpy as np

from gdmix.errors import GdmixError


def launched_by_horovod() -> bool:
    """``horovodrun``/``mpirun`` give every process its rank in the environment."""
    return any(name in os.environ for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"))


class HorovodCollective:
    def __init__(self):
        try:
            import horovod.tensorflow as hvd
        except ImportError as exc:
            raise GdmixError(f"this job was started by horovodrun but Horovod is not installed ({exc}); "
                             "run `make horovod`") from None
        hvd.init()
        self._hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self._calls = 0

    def _reduce(self, values: np.ndarray, op) -> np.ndarray:
        self._calls += 1  # named, so a mismatch between workers fails loudly instead of mixing tensors
        flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        reduced = self._hvd.allreduce(flat, op=op, name=f"gdmix_{self._calls}")
        return np.asarray(reduced.numpy(), dtype=np.float64).reshape(np.shape(values))

    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(values, self._hvd.Sum)

    def max(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(values, self._hvd.Max)
