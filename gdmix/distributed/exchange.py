"""Passing data between workers through the job's shared storage.

Collectives move float vectors; some steps need to move strings or variable-size arrays
(every worker's distinct features, uids bucketed by hash). Those go through files under the
job's working directory (a local path or an object-store URI every worker can reach),
separated by a barrier. With one worker nothing is written.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from gdmix.distributed.collective import Collective, barrier
from gdmix.io import fs


class Exchange:
    def __init__(self, root: str, collective: Collective):
        self.root = root
        self.collective = collective

    def all_gather_table(self, name: str, table: pa.Table) -> list[pa.Table]:
        """Every worker's ``table``, in worker order."""
        if self.collective.size == 1:
            return [table]
        fs.write_parquet(table, fs.join(self.root, name), f"from-{self.collective.rank:05d}.parquet")
        barrier(self.collective)
        return [fs.read_parquet(fs.join(self.root, name, f"from-{k:05d}.parquet")) for k in range(self.collective.size)]

    def shuffle(self, name: str, buckets: list[np.ndarray]) -> list[np.ndarray]:
        """Send ``buckets[j]`` to worker j; return what each worker sent here, in worker order."""
        if self.collective.size == 1:
            return [buckets[0]]
        for target, values in enumerate(buckets):
            buffer = io.BytesIO()
            np.save(buffer, values, allow_pickle=False)
            uri = fs.join(self.root, name, f"to-{target:05d}", f"from-{self.collective.rank:05d}.npy")
            fs.write_bytes(uri, buffer.getvalue())
        barrier(self.collective)
        folder = fs.join(self.root, name, f"to-{self.collective.rank:05d}")
        return [np.load(io.BytesIO(fs.read_bytes(fs.join(folder, f"from-{k:05d}.npy"))), allow_pickle=False)
                for k in range(self.collective.size)]
