"""Optimizer checkpoints: a small array file written atomically, read back on restart."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from gdmix.io import fs


@dataclass(frozen=True)
class Checkpoint:
    """Where a fit saves its state every ``every`` iterations; only the ``writer`` writes."""

    uri: str
    every: int
    writer: bool = True

    def load(self) -> tuple[np.ndarray, int] | None:
        """(point, iterations done) of the last checkpoint, or None."""
        if not fs.exists(self.uri):
            return None
        with np.load(io.BytesIO(fs.read_bytes(self.uri)), allow_pickle=False) as saved:
            return saved["x"].copy(), int(saved["iterations"])

    def save(self, x: np.ndarray, iterations: int) -> None:
        if not self.writer:
            return
        buffer = io.BytesIO()
        np.savez(buffer, x=np.asarray(x, dtype=np.float64), iterations=np.int64(iterations))
        fs.write_bytes_atomic(self.uri, buffer.getvalue())
