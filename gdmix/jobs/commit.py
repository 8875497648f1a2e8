"""How a distributed coordinate job (fixed effect, DeText) publishes its output: all or nothing.

Every worker writes its share of the scores into a staging folder inside the job's working
directory; once all have (a barrier), the chief adds the model, moves the staged output into
place in one step, writes ``job.json`` last as the completion marker and removes the working
directory; a second barrier keeps any worker from reporting success before that. A reader thus
sees either the previous output or the complete new one, and ``job.json`` only beside a
complete one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gdmix.artifacts import TrainedModel, save_model
from gdmix.dataset import Dataset
from gdmix.distributed.collective import Collective, barrier
from gdmix.io import fs
from gdmix.layout import JOB_FILE, scores_uri


@dataclass(frozen=True)
class StagedOutput:
    """The output a job builds under ``<workdir>/output`` and commits to ``output``."""

    workdir: str
    output: str

    @property
    def staging(self) -> str:
        return fs.join(self.workdir, "output")

    def write_scores(self, coordinate: str, split: str, worker: int, data: Dataset, base: np.ndarray,
                     own: np.ndarray, rows: np.ndarray | None = None) -> None:
        """One worker's scores of ``data`` (of its ``rows`` only, when given): ``base`` is the
        rows' offset (the other coordinates' scores), ``own`` this coordinate's."""
        pick = slice(None) if rows is None else rows
        table = pa.table({"uid": pa.array(data.uid[pick]), "label": pa.array(data.label[pick]),
                          "weight": pa.array(data.weight[pick]), "score": pa.array(base[pick] + own),
                          "coordinate_score": pa.array(own)})
        fs.write_parquet(table, scores_uri(self.staging, coordinate, split), f"part-{worker:05d}.parquet")

    def commit(self, collective: Collective, is_chief: bool, model: TrainedModel, summary: dict) -> None:
        """Every worker calls this after writing its scores; the chief publishes the output."""
        barrier(collective)  # every worker's scores are written
        if is_chief:
            save_model(self.staging, model)
            fs.commit_directory(self.staging, self.output)
            fs.write_text_atomic(fs.join(self.output, JOB_FILE), fs.to_json(summary))
            fs.remove(self.workdir)
        barrier(collective)  # nobody reports success before the output is committed
