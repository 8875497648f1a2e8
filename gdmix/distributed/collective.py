"""Collective operations between the workers of one job, through TensorFlow's collective ops.

:class:`TfCollective` lets ``MultiWorkerMirroredStrategy`` start the gRPC server and configure
collectives from ``TF_CONFIG`` (exactly as under a TFJob), then issues ``CollectiveReduceV2``
ops directly with a RING algorithm on CPU: a sum of a float64 vector arrives bit-identical on
every worker, so every worker can run the same optimiser on the same numbers. Each call must be
made by all workers in the same order; :func:`agree` turns a failure on one worker into a
failure on all of them instead of a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import numpy as np

from gdmix.distributed.cluster import WorkerInfo
from gdmix.errors import GdmixError
from gdmix.tf_runtime import import_tensorflow

T = TypeVar("T")
GROUP_KEY = 71  # any constant shared by all workers


class Collective(Protocol):
    rank: int
    size: int

    def sum(self, values: np.ndarray) -> np.ndarray: ...

    def max(self, values: np.ndarray) -> np.ndarray: ...


class SingleProcess:
    """The cluster of one: every reduction is the identity."""

    rank, size = 0, 1

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.array(values, dtype=np.float64)

    def max(self, values: np.ndarray) -> np.ndarray:
        return np.array(values, dtype=np.float64)


class TfCollective:
    """All-reduce over the cluster in ``TF_CONFIG`` (create it before any other TF work)."""

    def __init__(self, info: WorkerInfo, timeout_seconds: float = 600.0):
        tf = import_tensorflow()
        self.rank, self.size = info.index, info.count
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=timeout_seconds,
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        device = strategy.extended.worker_devices[0]
        self._strategy = strategy  # keeps the server and the collective configuration alive
        self._instance = 0
        self._reduce = {merge: self._make(tf, device, merge, timeout_seconds) for merge in ("Add", "Max")}

    def _make(self, tf, device: str, merge: str, timeout: float):
        size = self.size

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float64), tf.TensorSpec([], tf.int32)])
        def reduce(values, instance):
            with tf.device(device):
                return tf.raw_ops.CollectiveReduceV2(
                    input=values, group_size=size, group_key=GROUP_KEY, instance_key=instance,
                    ordering_token=[], merge_op=merge, final_op="Id", communication_hint="ring",
                    timeout_seconds=timeout,
                )

        return reduce

    def _call(self, merge: str, values: np.ndarray) -> np.ndarray:
        self._instance += 1  # the same sequence on every worker names the same collective
        flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        try:
            return self._reduce[merge](flat, np.int32(self._instance)).numpy().reshape(np.shape(values))
        except Exception as exc:  # a peer died or timed out: say so in one line
            raise PeerFailure(f"collective operation failed (another worker stopped?): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None

    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._call("Add", values)

    def max(self, values: np.ndarray) -> np.ndarray:
        return self._call("Max", values)


class PeerFailure(GdmixError):
    """Another worker of the job failed; its own log has the reason."""


def connect(info: WorkerInfo, timeout_seconds: float = 600.0) -> Collective:
    return TfCollective(info, timeout_seconds) if info.distributed else SingleProcess()


def agree(collective: Collective, step: Callable[[], T]) -> T:
    """Run ``step`` on every worker; if it fails anywhere, fail everywhere.

    The failing worker re-raises its own error; the others raise :class:`PeerFailure` naming
    the lowest failing worker.
    """
    error: BaseException | None = None
    result = None
    try:
        result = step()
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others know
        error = exc
    flags = np.zeros(collective.size)
    flags[collective.rank] = 1.0 if error is not None else 0.0
    failed = np.flatnonzero(collective.max(flags))
    if error is not None:
        raise error
    if failed.size:
        raise PeerFailure(f"worker {int(failed[0])} failed (see its log); stopping worker {collective.rank}")
    return result


def barrier(collective: Collective) -> None:
    collective.sum(np.zeros(1))


def check_identical(collective: Collective, values: np.ndarray, what: str) -> None:
    """Fail if ``values`` differ in any bit between workers (max and min must agree)."""
    if collective.size == 1:
        return
    bits = np.frombuffer(np.ascontiguousarray(values, dtype=np.float64).tobytes(), dtype=np.uint32).astype(np.float64)
    high, low = collective.max(bits), -collective.max(-bits)
    if not np.array_equal(high, low):
        raise GdmixError(f"{what} differs between workers; the job is not deterministic")
