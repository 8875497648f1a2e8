"""The chief-commit sequence the fixed-effect and DeText jobs share (gdmix.jobs.commit)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gdmix.artifacts import TrainedModel
from gdmix.config import DataConfig
from gdmix.dataset import Dataset
from gdmix.distributed.collective import SingleProcess
from gdmix.io import fs
from gdmix.jobs.commit import StagedOutput
from gdmix.layout import JOB_FILE, SPEC_FILE, scores_uri


class CountingCollective(SingleProcess):
    """One process that counts its barriers (every reduction is one)."""

    def __init__(self):
        self.reductions = 0

    def sum(self, values):
        self.reductions += 1
        return super().sum(values)


def _data(rows: int) -> Dataset:
    return Dataset(uid=np.arange(rows), label=np.arange(rows) % 2.0, weight=np.ones(rows), offset=np.zeros(rows))


def _staged(tmp_path) -> StagedOutput:
    staged = StagedOutput(str(tmp_path / ".out.job"), str(tmp_path / "out"))
    data = _data(4)
    staged.write_scores("g", "train", 0, data, np.full(4, 0.5), np.array([1.0, 2.0]), rows=np.array([1, 3]))
    return staged


def test_the_chief_commits_scores_model_and_job_file_last(tmp_path):
    staged = _staged(tmp_path)
    collective = CountingCollective()
    staged.commit(collective, True, TrainedModel(DataConfig(train="t"), [], {}, {}), {"coordinate": "g", "workers": 1})
    assert collective.reductions == 2  # a barrier before and one after the commit
    scores = fs.read_parquet_dir(scores_uri(str(tmp_path / "out"), "g", "train"))
    assert scores.column("uid").to_pylist() == [1, 3]
    assert scores.column("score").to_pylist() == [1.5, 2.5] and scores.column("coordinate_score").to_pylist() == [1.0, 2.0]
    assert scores.column("label").to_pylist() == [1.0, 1.0]
    assert (tmp_path / "out" / SPEC_FILE).exists()
    assert json.loads((tmp_path / "out" / JOB_FILE).read_text()) == {"coordinate": "g", "workers": 1}
    assert not (tmp_path / ".out.job").exists()


def test_other_workers_only_wait(tmp_path):
    staged = _staged(tmp_path)
    collective = CountingCollective()
    staged.commit(collective, False, TrainedModel(DataConfig(train="t"), [], {}, {}), {})
    assert collective.reductions == 2
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.job").exists()


def test_a_failed_commit_leaves_the_previous_output_and_no_job_file(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "previous.txt").write_text("kept")
    staged = _staged(tmp_path)

    def broken(root, model):
        raise OSError("disk full")

    monkeypatch.setattr("gdmix.jobs.commit.save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        staged.commit(SingleProcess(), True, TrainedModel(DataConfig(train="t"), [], {}, {}), {})
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]
