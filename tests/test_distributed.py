"""The distributed fixed effect: real worker processes on 127.0.0.1 talking through TF collectives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gdmix.config import validate_config
from gdmix.dataset import build_index_maps, to_dataset
from gdmix.distributed.cluster import worker_info
from gdmix.errors import ConfigError, DataError
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, plan_pieces, read_contract_table
from gdmix.models.fixed_effect import fit_fixed_effect

from conftest import dense_bag

HANG_GUARD = 300  # seconds: a job that has not ended by then is hanging (not a timing assertion)


def _write_dataset(root: Path, rows: int, seed: int, files=(0.5, 0.3, 0.2), row_group_size=300) -> str:
    """Rows with weights, an offset column and sparse features, in several files of several
    row groups (so shards start and end inside row groups)."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(rows, 30)) * (rng.random((rows, 30)) < 0.2)
    logits = dense @ rng.normal(size=30) + 0.4
    table = pa.table({
        "uid": pa.array(rng.permutation(rows) * 3 + 1, pa.int64()),
        "label": pa.array((rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(float)),
        "weight": pa.array(rng.uniform(0.2, 2.0, rows)),
        "offset": pa.array(rng.normal(scale=0.5, size=rows)),
        "global": dense_bag(dense),
    })
    root.mkdir(parents=True)
    start = 0
    for k, share in enumerate(files):
        size = rows - start if k == len(files) - 1 else int(rows * share)
        pq.write_table(table.slice(start, size), root / f"part-{k:05d}.parquet", row_group_size=row_group_size)
        start += size
    return str(root)


def _config(train: str, output: str, **optimizer) -> dict:
    return {
        "data": {"train": train},
        "output": output,
        "coordinates": [{"name": "global", "type": "fixed_effect", "feature_bag": "global", "l2": 1.0,
                         "optimizer": {"gtol": 1e-10, "tol": 0.0, **optimizer}}],
    }


def _run_job(tmp: Path, config: dict, output: Path, workers: int, *extra: str, env: dict | None = None):
    path = tmp / f"config-{output.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "gdmix", "fixed-effect", str(path), "--coordinate", "global",
               "--output", str(output), "--workers", str(workers), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD,
                          env=dict(os.environ, **(env or {})))


def _coefficients(output: Path) -> np.ndarray:
    table = fs.read_parquet_dir(str(output / "models" / "global"))
    return np.array(sorted(zip(table.column("name").to_pylist(), table.column("term").to_pylist(),
                               table.column("value").to_pylist())), dtype=object)[:, 2].astype(float)


def _single_process(train: str, config: dict) -> np.ndarray:
    table = read_contract_table(train, ContractColumns(bags=("global",)))
    maps = build_index_maps(table, ["global"])
    data = to_dataset(table, maps, [])
    spec = validate_config(config).coordinates[0]
    model, report = fit_fixed_effect(data.bags["global"], data.label, data.weight, data.offset, spec)
    assert report.converged
    table = model.to_table(maps["global"])
    return np.array(sorted(zip(table.column("name").to_pylist(), table.column("term").to_pylist(),
                               table.column("value").to_pylist())), dtype=object)[:, 2].astype(float)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return _write_dataset(tmp_path_factory.mktemp("fe") / "train", 4000, seed=5)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_match_the_single_process_fit(dataset, tmp_path, workers):
    config = _config(dataset, "unused")
    done = _run_job(tmp_path, config, tmp_path / "out", workers)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(_coefficients(tmp_path / "out"), _single_process(dataset, config), atol=1e-8, rtol=0)
    summary = json.loads((tmp_path / "out" / "job.json").read_text())
    assert summary["workers"] == workers and summary["rows"]["train"] == 4000
    scores = fs.read_parquet_dir(str(tmp_path / "out" / "scores" / "global" / "train"))
    assert scores.num_rows == 4000 and len(set(scores.column("uid").to_pylist())) == 4000
    assert len(fs.list_parquet_files(str(tmp_path / "out" / "scores" / "global" / "train"))) == workers
    assert not list(tmp_path.glob(".out.*"))  # the working directory is gone after the commit


def test_uneven_shards_with_empty_and_single_row_workers(tmp_path):
    train = tmp_path / "tiny"
    train.mkdir()
    table = pa.table({"uid": pa.array([10, 20], pa.int64()), "label": pa.array([0.0, 1.0]),
                      "global": dense_bag(np.array([[1.0, 0.0], [0.5, 2.0]]))})
    pq.write_table(table, train / "part-00000.parquet")
    assert [len(plan_pieces(fs.list_parquet_files(str(train)), (k, 3))) for k in range(3)] == [0, 1, 1]
    config = _config(str(train), "unused")
    done = _run_job(tmp_path, config, tmp_path / "out", 3)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(_coefficients(tmp_path / "out"), _single_process(str(train), config), atol=1e-8)


def test_a_dying_worker_fails_the_job_and_a_rerun_resumes_exactly(dataset, tmp_path):
    config = _config(dataset, "unused", max_iter=200)
    reference = _run_job(tmp_path, config, tmp_path / "reference", 2, "--checkpoint-every", "3")
    assert reference.returncode == 0, reference.stderr[-3000:]

    output = tmp_path / "resumed"
    died = _run_job(tmp_path, config, output, 2, "--checkpoint-every", "3",
                    env={"GDMIX_FAULT_WORKER": "1", "GDMIX_FAULT_ITERATION": "7"})
    assert died.returncode != 0
    assert "worker 1 exited with status 42; stopping the other workers" in died.stderr
    assert not output.exists()  # nothing committed
    assert list(tmp_path.glob(".resumed.job-*/checkpoint.npz"))  # but the checkpoint is there

    resumed = _run_job(tmp_path, config, output, 2, "--checkpoint-every", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert np.array_equal(_coefficients(output), _coefficients(tmp_path / "reference"))


def test_bad_data_in_one_shard_fails_every_worker_clearly(tmp_path):
    train = Path(_write_dataset(tmp_path / "bad", 900, seed=7, files=(0.5, 0.5)))
    table = pq.read_table(train / "part-00001.parquet")
    labels = table.column("label").to_numpy().copy()
    labels[100] = 3.0
    pq.write_table(table.set_column(1, "label", pa.array(labels)), train / "part-00001.parquet")
    done = _run_job(tmp_path, _config(str(train), "unused"), tmp_path / "out", 2)
    assert done.returncode != 0
    assert "part-00001.parquet, column 'label', row 100: label 3.0 is not 0 or 1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_duplicate_uids_in_different_shards_are_found(tmp_path):
    train = Path(_write_dataset(tmp_path / "dup", 600, seed=8, files=(0.5, 0.5)))
    first = pq.read_table(train / "part-00000.parquet")
    second = pq.read_table(train / "part-00001.parquet")
    uids = second.column("uid").to_numpy().copy()
    uids[-1] = first.column("uid")[0].as_py()
    pq.write_table(second.set_column(0, "uid", pa.array(uids)), train / "part-00001.parquet")
    done = _run_job(tmp_path, _config(str(train), "unused"), tmp_path / "out", 2)
    assert done.returncode != 0 and "duplicate uid" in done.stderr


def test_coordinate_descent_with_local_workers(dataset, tmp_path):
    from gdmix.game import train

    raw = _config(dataset, str(tmp_path / "one"))
    single = train(validate_config(raw))
    raw["output"] = str(tmp_path / "two")
    double = train(validate_config(raw), workers=2)
    assert double.coordinates[0]["solver"]["workers"] == 2
    np.testing.assert_allclose(double.model.models["global"].coef, single.model.models["global"].coef, atol=1e-8)


def test_shards_partition_the_rows_exactly(dataset):
    files = fs.list_parquet_files(dataset)
    for count in (1, 2, 3, 7):
        tables = [read_contract_table(dataset, ContractColumns(bags=("global",)), shard=(k, count)) for k in range(count)]
        sizes = [t.num_rows for t in tables]
        assert sum(sizes) == 4000 and max(sizes) - min(sizes) <= 1
        uids = np.concatenate([t.table.column("uid").to_numpy() for t in tables])
        assert np.array_equal(uids, read_contract_table(dataset, ContractColumns()).table.column("uid").to_numpy())
    assert len(files) == 3


def test_errors_in_a_shard_name_the_row_within_the_file(tmp_path):
    train = Path(_write_dataset(tmp_path / "rows", 1000, seed=9, files=(1.0,), row_group_size=128))
    table = pq.read_table(train / "part-00000.parquet")
    labels = table.column("label").to_numpy().copy()
    labels[777] = 5.0
    pq.write_table(table.set_column(1, "label", pa.array(labels)), train / "part-00000.parquet", row_group_size=128)
    with pytest.raises(DataError, match="row 777: label 5.0"):
        read_contract_table(str(train), ContractColumns(), shard=(2, 3))


def test_tf_config_parsing():
    def info(config):
        return worker_info({"TF_CONFIG": json.dumps(config)})

    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    assert info({"cluster": cluster, "task": {"type": "chief", "index": 0}}).index == 0
    second = info({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert (second.index, second.count, second.is_chief) == (2, 3, False)
    assert worker_info({}).count == 1
    with pytest.raises(ConfigError, match="ps"):
        info({"cluster": dict(cluster, ps=["p:1"]), "task": {"type": "worker", "index": 0}})
    with pytest.raises(ConfigError, match="outside"):
        info({"cluster": cluster, "task": {"type": "worker", "index": 5}})


def test_warm_start_round_trip_through_the_job(dataset, tmp_path):
    config = _config(dataset, "unused")
    first = _run_job(tmp_path, config, tmp_path / "first", 2)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _run_job(tmp_path, _config(dataset, "unused", max_iter=0), tmp_path / "again", 2,
                     "--warm-start", str(tmp_path / "first"))
    assert again.returncode == 0, again.stderr[-3000:]
    np.testing.assert_allclose(_coefficients(tmp_path / "again"), _coefficients(tmp_path / "first"), atol=1e-12)


def test_coordinate_descent_passes_offsets_to_the_workers(synthetic_dir, tmp_path):
    """Two passes of FE + RE: the workers train the fixed effect against the random effect's scores."""
    from conftest import synthetic_config
    from gdmix.game import train

    raw = synthetic_config(synthetic_dir, str(tmp_path / "one"), passes=2)
    raw["coordinates"] = raw["coordinates"][:2]
    raw["coordinates"][0]["optimizer"] = {"gtol": 1e-10, "tol": 0.0}
    single = train(validate_config(raw))
    raw["output"] = str(tmp_path / "two")
    double = train(validate_config(raw), workers=2)
    assert [c["name"] for c in double.coordinates] == ["global", "per_user", "global", "per_user"]
    np.testing.assert_allclose(double.model.models["global"].coef, single.model.models["global"].coef, atol=1e-7)
    np.testing.assert_allclose(double.model.models["per_user"].intercepts, single.model.models["per_user"].intercepts,
                               atol=1e-7)


def test_missing_offsets_are_an_error_not_a_dropped_row(dataset, tmp_path):
    uids = read_contract_table(dataset, ContractColumns()).table.column("uid").to_numpy()
    (tmp_path / "offsets").mkdir()
    pq.write_table(pa.table({"uid": uids[1:], "offset": np.zeros(len(uids) - 1)}), tmp_path / "offsets" / "part-0.parquet")
    done = _run_job(tmp_path, _config(dataset, "unused"), tmp_path / "out", 2, "--offsets", str(tmp_path / "offsets"))
    assert done.returncode != 0
    assert f"no offset for uid {uids[0]} (1 row has none)" in done.stderr


_THREADS_PROBE = """
import json, sys, warnings
if sys.argv[1] == "started":  # something else started TensorFlow's runtime before gdmix
    import tensorflow as tf
    tf.constant(1.0) + 1.0
from gdmix import tf_runtime
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tf_runtime.import_tensorflow()
print(json.dumps({"settings": tf_runtime.thread_settings(),
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}))
"""


@pytest.mark.parametrize("started", [False, True])
def test_thread_cap_is_applied_or_loudly_not(started):
    """GDMIX_INTRA_OP_THREADS caps TensorFlow's pools; when the runtime was started first the cap
    cannot apply, and that is a warning and a record, never silence."""
    env = dict(os.environ, GDMIX_INTRA_OP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", _THREADS_PROBE, "started" if started else "fresh"], env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    settings = record["settings"]
    assert settings["requested"] == 1
    if not started:
        assert (settings["intra_op"], settings["inter_op"], settings["cap_applied"]) == (1, 1, True)
        assert record["warnings"] == []
    else:
        assert settings["cap_applied"] is False and settings["cap_error"]
        assert (settings["intra_op"], settings["inter_op"]) != (1, 1)  # what TensorFlow really uses
        assert len(record["warnings"]) == 1 and "GDMIX_INTRA_OP_THREADS=1 is NOT applied" in record["warnings"][0]


_KERAS_PROBE = """
import json, sys
import numpy as np
import scipy.sparse as sp
from gdmix import tf_runtime
from gdmix.losses.logistic_tf import TfLogisticLoss
tf = tf_runtime.import_tensorflow()
x = sp.random(20, 5, density=0.5, format="csr", random_state=0)
loss = TfLogisticLoss(x, (np.arange(20) % 2).astype(float), np.ones(20), np.zeros(20))
value, gradient = loss(np.full(6, 0.1))
loaded = {name: name in sys.modules for name in ("keras", "sklearn")}
layer = tf.keras.layers.Dense(2)
import keras.src.optimizers as optimizers
print(json.dumps({"loaded_by_fixed_effect": loaded, "finite": bool(np.isfinite(value)),
                  "dense_shape": layer(tf.ones((1, 3))).shape.as_list(), "optimizers": optimizers.__name__,
                  "adam": tf.keras.optimizers.Adam.__module__}))
"""


def test_fixed_effect_tensorflow_leaves_keras_unloaded_until_used():
    """A fixed-effect worker imports TensorFlow without the Keras 3 (and scikit-learn) that
    TensorFlow's ``__init__`` would load eagerly (about 1.8 s of its 5 s here); Keras still loads,
    whole and working, when something uses it."""
    done = subprocess.run([sys.executable, "-c", _KERAS_PROBE], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["loaded_by_fixed_effect"] == {"keras": False, "sklearn": False}
    assert record["finite"]
    assert record["dense_shape"] == [1, 2]
    assert record["optimizers"] == "keras.src.optimizers"
    assert record["adam"].startswith("keras.src.optimizers")
