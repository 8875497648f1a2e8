"""DeText input sharded across workers (issue 13): each worker reads only its rows, ranking lists
are never split, and N workers follow the single worker's trajectory through the sharded path.

The multi-worker runs here are threads of this process joined by an in-memory collective (the
real N-process job is covered by tests/test_detext.py), so each test takes a few seconds.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bag

from gdmix.config import DetextConfig
from gdmix.errors import DataError

WORDS = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma", "tau", "rho"])
ROW_GROUP = 25


def _config(**overrides) -> DetextConfig:
    values = {"name": "deep", "type": "detext", "doc_text": ["title"], "steps": 8, "eval_every": 4,
              "batch_size": 40, "embedding_dim": 8, "num_filters": 4, "num_units": 8, "hidden": [8],
              "learning_rate": 0.01, "wide_bag": "wide"}
    return DetextConfig(**(values | overrides))


def _write(root: Path, list_sizes: list[int], files: int = 2, seed: int = 0) -> Path:
    """Rows in ``files`` Parquet files of ``ROW_GROUP``-row row groups; list ``q`` k has
    ``list_sizes[k]`` consecutive rows; a learnable title and a small wide bag."""
    rng = np.random.default_rng(seed)
    lists = np.repeat(np.arange(len(list_sizes)), list_sizes)
    n = len(lists)
    item = rng.integers(0, 30, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(item % 8 - 3.5)))).astype(np.int64)
    table = pa.table({"uid": np.arange(n, dtype=np.int64), "label": labels, "q": lists,
                      "title": [f"{WORDS[i % 8]} {WORDS[(i // 8) % 8]}" for i in item],
                      "wide": bag([[(f"f{i % 5}", "", 1.0), (f"g{k % 3}", "", 0.5)] for k, i in enumerate(item)])})
    folder = root / "train"
    folder.mkdir(parents=True)
    step = -(-n // files)
    for k in range(files):
        pq.write_table(table.slice(k * step, step), folder / f"part-{k:05d}.parquet", row_group_size=ROW_GROUP)
    return folder


class _Group:
    """An in-memory all-reduce for worker threads (``size`` members)."""

    def __init__(self, size: int):
        self.size, self.barrier, self.slots = size, threading.Barrier(size, timeout=120), [None] * size

    def reduce(self, rank: int, values, merge) -> np.ndarray:
        self.slots[rank] = np.asarray(values, np.float64)
        self.barrier.wait()
        out = merge(np.stack(self.slots), axis=0)
        self.barrier.wait()
        return out


class _Member:
    def __init__(self, group: _Group, rank: int):
        self.group, self.rank, self.size = group, rank, group.size

    def sum(self, values):
        return self.group.reduce(self.rank, values, np.sum)

    def max(self, values):
        return self.group.reduce(self.rank, values, np.max)


def _worker(uri: str, config: DetextConfig, collective, exchange_root: Path) -> dict:
    """What the job does on one worker, up to training: its shard, the shared model, the loop."""
    from gdmix.dataset import read_dataset
    from gdmix.distributed.exchange import Exchange
    from gdmix.io.contract import ContractColumns
    from gdmix.jobs.detext import _wide_index_map, training_shard, validation_shard
    from gdmix.models.detext.coordinate import detext_rows, new_model
    from gdmix.models.detext.data import HeldOutShard, TrainingShard
    from gdmix.models.detext.training import train_network

    exchange = Exchange(str(exchange_root), collective)
    columns = ContractColumns(bags=("wide",), extra=("title", "q"))
    index, (low, high) = training_shard(uri, config, collective.rank, collective.size)
    reading = read_dataset(uri, columns, rows=(low, high))
    maps = _wide_index_map(config, reading, None, exchange)
    rows = detext_rows(config, reading.finish(maps))
    model = new_model(config, rows, len(maps["wide"]), exchange)
    model._build()  # threads share Keras's seed generator: every run starts from the same drawn weights
    draw = np.random.default_rng(config.seed)
    for weight in model.network.weights:
        weight.assign(draw.normal(0, 0.3, weight.shape).astype(weight.numpy().dtype))
    held_index, held_range = validation_shard(uri, config, collective.rank, collective.size)  # the training rows
    held_rows = rows if held_range == (low, high) else detext_rows(
        config, read_dataset(uri, columns, rows=held_range).finish(maps))
    validation = HeldOutShard.gather(held_rows, held_range[0], held_index, collective)
    report = train_network(model.network, config, TrainingShard(rows, low, index), np.zeros(rows.num_rows),
                           validation, np.zeros(held_rows.num_rows), collective=collective, log=lambda m: None)
    lists = set() if rows.groups is None else set(rows.groups.tolist())
    return {"losses": [loss for _, loss in report.train_loss], "range": (low, high), "lists": lists,
            "vocabulary": model.vocabulary, "wide": len(maps["wide"]),
            "validation": [e[config.metric] for e in report.evaluations], "validation_range": held_range}


def _train(uri: Path, config: DetextConfig, workers: int, tmp: Path) -> list[dict]:
    """``workers`` threads, each a worker of the sharded path; their results by rank."""
    group, results, errors = _Group(workers), [None] * workers, []

    def work(rank: int) -> None:
        try:
            results[rank] = _worker(str(uri), config, _Member(group, rank), tmp / f"exchange-{workers}")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_a_worker_reads_only_the_row_groups_of_its_shard(tmp_path, monkeypatch):
    from gdmix.dataset import read_dataset
    from gdmix.io.contract import ContractColumns
    from gdmix.jobs.detext import training_shard

    uri = _write(tmp_path, [1] * 200, files=2)  # 2 files x 4 row groups of 25 rows
    opened: list[tuple[str, int]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, row_groups, *args, **kwargs):
        opened.extend((id(self), g) for g in row_groups)
        return original(self, row_groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    index, (low, high) = training_shard(str(uri), _config(), 1, 4)
    data = read_dataset(str(uri), ContractColumns(extra=("title",)), rows=(low, high)).finish({})
    assert index.num_rows == 200 and (low, high) == (50, 100)
    assert len(opened) == 2  # the 2 row groups of rows 50-99, of the 8 in the data
    assert data.uid.tolist() == list(range(50, 100))
    titles = pq.read_table(uri / "part-00000.parquet", columns=["title"]).column("title").to_pylist()
    assert data.columns["title"].to_pylist() == titles[50:100]  # the text column carried as it is


def test_two_workers_follow_one_worker_through_the_sharded_path(tmp_path):
    uri = _write(tmp_path, [1] * 157, files=3)
    config = _config()
    one = _train(uri, config, 1, tmp_path)
    two = _train(uri, config, 2, tmp_path)
    assert [w["range"] for w in two] == [(0, 78), (78, 157)]
    assert two[0]["vocabulary"] == two[1]["vocabulary"] == one[0]["vocabulary"]
    assert two[0]["wide"] == one[0]["wide"] == 8
    np.testing.assert_allclose(two[0]["losses"], one[0]["losses"], rtol=1e-4)
    assert two[0]["losses"] == two[1]["losses"]  # every worker applies the same update
    assert one[0]["losses"][-1] < one[0]["losses"][0]
    # validation sharded too: each worker scores its half, the metric sees every row's logit
    assert [w["validation_range"] for w in two] == [(0, 78), (78, 157)]
    assert len(one[0]["validation"]) == 2
    np.testing.assert_allclose(two[0]["validation"], one[0]["validation"], atol=1e-6)
    assert two[0]["validation"] == two[1]["validation"]


def test_ranking_lists_stay_whole_and_two_workers_match_one(tmp_path):
    sizes = [7, 3, 9, 5, 6, 6, 8, 2, 6, 8, 5, 3]  # 68 rows: the middle row 34 is inside list 5 (rows 30-35)
    uri = _write(tmp_path, sizes, files=2)
    config = _config(loss="listwise", group="q", batch_size=20, metric="ndcg@3")
    one = _train(uri, config, 1, tmp_path)
    two = _train(uri, config, 2, tmp_path)
    assert [w["range"] for w in two] == [(0, 36), (36, 68)]  # moved from 34 to the start of list 6
    assert not (two[0]["lists"] & two[1]["lists"]) and two[0]["lists"] | two[1]["lists"] == set(range(12))
    np.testing.assert_allclose(two[0]["losses"], one[0]["losses"], rtol=1e-4)
    assert [w["validation_range"] for w in two] == [(0, 34), (34, 68)]  # lists may split: ndcg sees all rows
    np.testing.assert_allclose(two[0]["validation"], one[0]["validation"], atol=1e-6)


def test_shard_bounds_move_to_list_starts():
    from gdmix.models.detext.data import RowIndex, shard_range

    groups = np.repeat([5, 1, 9, 2], [3, 4, 1, 2])  # ids need not be sorted, only contiguous
    index = RowIndex.of(10, groups)
    ranges = [shard_range(index, rank, 3) for rank in range(3)]
    assert ranges == [(0, 3), (3, 7), (7, 10)]
    assert shard_range(RowIndex.of(10, None), 1, 3) == (3, 6)  # pointwise: the fixed effect's shard


def test_a_list_stored_in_two_places_is_an_error_naming_file_and_column(tmp_path):
    from gdmix.jobs.detext import training_shard

    folder = tmp_path / "train"
    folder.mkdir()
    for k, lists in enumerate(([0, 0, 1, 1], [2, 2, 0, 3])):  # list 0 reappears in the second file
        pq.write_table(pa.table({"uid": np.arange(4 * k, 4 * k + 4), "q": lists}), folder / f"part-{k:05d}.parquet")
    config = _config(loss="pairwise", group="q")
    assert training_shard(str(folder), config, 0, 1)[1] == (0, 8)  # one worker: any order is fine
    with pytest.raises(DataError, match="not consecutive") as caught:
        training_shard(str(folder), config, 0, 2)
    assert caught.value.path.endswith("part-00001.parquet") and caught.value.column == "q"
    assert caught.value.row == 2
    with pytest.raises(DataError, match="list-id column") as missing:
        training_shard(str(folder), _config(loss="pairwise", group="query"), 0, 2)
    assert missing.value.column == "query" and missing.value.path.endswith("part-00000.parquet")


def test_each_step_gathers_the_workers_share_of_its_global_batch():
    """The step's inputs, gathered from the shard's tensors, are exactly what :func:`batch_inputs`
    builds from the share's rows (wide bag padded per batch), and some shares are empty."""
    import scipy.sparse as sp

    from gdmix.models.detext.data import (Batches, DetextRows, RowIndex, ShardTensors, TrainingShard, batch_arrays,
                                          tf)

    n = 30
    wide = sp.csr_matrix(np.arange(40, dtype=np.float64).reshape(10, 4) % 3 * (np.arange(10)[:, None] % 4 > 0))
    rows = DetextRows({"title": np.array([f"word{k} beta".encode() for k in range(10)], dtype=object)}, wide,
                      np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10, dtype=np.float32),
                      np.linspace(0.5, 1, 10).astype(np.float32), None)
    offsets = np.arange(10) / 10
    shard = TrainingShard(rows, 10, RowIndex(n))
    tensors = ShardTensors(shard, offsets)
    gather = tf.function(tensors.gather, input_signature=[tf.TensorSpec([None], tf.int64)])
    reference = Batches(RowIndex(n), 4, 0, False)
    sizes = []
    for positions, global_rows in shard.shares(Batches(RowIndex(n), 4, 0, False), 8):
        batch = reference.next()
        expected = batch[(batch >= 10) & (batch < 20)] - 10
        np.testing.assert_array_equal(positions, expected)
        assert global_rows == 4 and positions.dtype == np.int64
        inputs, labels, weights, codes = gather(positions)
        want = batch_arrays(rows, expected, offsets)
        assert sorted(inputs) == sorted(want)
        for name, values in want.items():
            np.testing.assert_array_equal(inputs[name].numpy(), values.astype(inputs[name].numpy().dtype), name)
        np.testing.assert_array_equal(labels.numpy(), expected.astype(np.float32))
        np.testing.assert_array_equal(weights.numpy(), rows.weights[expected])
        np.testing.assert_array_equal(codes.numpy(), np.zeros(len(expected)))
        sizes.append(len(expected))
    assert 0 in sizes  # some global batches hold none of this worker's rows


def test_the_jobs_reader_names_the_file_column_and_row_of_bad_input(tmp_path):
    """A worker reads its shard row group by row group (``read_dataset``); a bad value in it is
    reported at its file and row within that file, a missing text column by name."""
    from gdmix.config import validate_config
    from gdmix.jobs.detext import _read_splits

    uri = _write(tmp_path, [1] * 200, files=2)  # 2 files x 100 rows, row groups of 25
    second = uri / "part-00001.parquet"
    table = pq.read_table(second)
    labels = table.column("label").to_numpy().copy()
    labels[63] = 3  # global row 163, inside worker 1's shard [100, 200) and its third row group
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), second,
                   row_group_size=ROW_GROUP)
    config = validate_config({"data": {"train": str(uri)}, "output": str(tmp_path / "out"),
                              "coordinates": [_config().model_dump(mode="json")]})
    spec = config.coordinates[0]
    worker_0 = _read_splits(config, spec, ("title",), {"train": (0, 100)}, 0, 2)  # its rows are all valid
    assert worker_0["train"].num_rows == 100
    with pytest.raises(DataError, match="not 0 or 1") as bad:
        _read_splits(config, spec, ("title",), {"train": (100, 200)}, 1, 2)
    assert (bad.value.path, bad.value.column, bad.value.row) == (str(second), "label", 63)
    with pytest.raises(DataError, match="missing requested column") as missing:
        _read_splits(config, spec, ("headline",), {"train": (0, 100)}, 0, 2)
    assert missing.value.column == "headline" and missing.value.path.endswith("part-00000.parquet")
