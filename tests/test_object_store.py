"""Everything through s3:// on a moto server bound to 127.0.0.1 (no real cloud involved)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from gdmix.config import validate_config
from gdmix.distributed.launcher import free_ports
from gdmix.io import fs

from test_distributed import HANG_GUARD, _coefficients, _config, _write_dataset

BUCKET = "gdmix-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    s3fs = fs.url_to_fs(f"s3://{BUCKET}")[0]
    s3fs.mkdir(BUCKET)
    local = _write_dataset(tmp_path_factory.mktemp("s3") / "train", 3000, seed=21)
    for name in sorted(os.listdir(local)):
        s3fs.put(f"{local}/{name}", f"{BUCKET}/train/{name}")
    yield {"env": env, "local_train": local}
    patch.undo()
    server.stop()


def test_distributed_job_reads_and_writes_s3(s3, tmp_path):
    config = _config(f"s3://{BUCKET}/train", "unused")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "gdmix", "fixed-effect", str(path), "--coordinate", "global",
               "--output", f"s3://{BUCKET}/fe", "--workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, env=dict(os.environ, **s3["env"]))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(fs.read_text(f"s3://{BUCKET}/fe/job.json"))
    assert summary["rows"]["train"] == 3000
    local = tmp_path / "local"
    subprocess.run([*command[:-4], "--output", str(local), "--workers", "1"], check=True, capture_output=True,
                   timeout=HANG_GUARD, env=dict(os.environ, **s3["env"]))
    remote = fs.read_parquet_dir(f"s3://{BUCKET}/fe/models/global").sort_by([("name", "ascending"), ("term", "ascending")])
    np.testing.assert_allclose(remote.column("value").to_numpy(), _coefficients(local), atol=1e-8)
    assert not fs.url_to_fs(f"s3://{BUCKET}")[0].glob(f"{BUCKET}/.fe.job-*")  # working directory removed


def test_coordinate_descent_on_s3(s3):
    from gdmix.game import train

    raw = _config(f"s3://{BUCKET}/train", f"s3://{BUCKET}/model")
    result = train(validate_config(raw))
    assert fs.exists(f"s3://{BUCKET}/model/metrics.json")
    assert fs.read_parquet_dir(f"s3://{BUCKET}/model/scores/global/train").num_rows == 3000
    assert result.coordinates[0]["train"]["auc"] > 0.6
    assert pq.ParquetFile(fs.url_to_fs(f"s3://{BUCKET}/model/models/global/part-00000.parquet")[0]
                          .open(f"{BUCKET}/model/models/global/part-00000.parquet", "rb")).metadata.num_rows > 1


def test_prep_and_partitioned_training_on_s3(s3, tmp_path):
    """Spark writes locally and the result is uploaded; partitions are then read from s3."""
    from test_prep import _config as prep_config, _raw

    from gdmix.jobs.random_effect import train_partitions
    from gdmix.prep.run import run_prep

    (tmp_path / "raw").mkdir()
    pq.write_table(_raw(seed=4), tmp_path / "raw" / "part-0.parquet")
    raw = prep_config(tmp_path, str(tmp_path / "raw"))
    raw["prep"]["output"] = f"s3://{BUCKET}/prepared"
    config = validate_config(raw)
    summary = run_prep(config, log=lambda m: None)
    assert json.loads(fs.read_text(f"s3://{BUCKET}/prepared/prep.json"))["train_rows"] == summary["train_rows"]
    result = train_partitions(config, "per_user", "all", f"s3://{BUCKET}/per_user", log=lambda m: None)
    assert result["complete"] and sorted(result["trained"]) == list(range(5))
    scored = fs.read_parquet_dir(f"s3://{BUCKET}/per_user/scores/per_user/train")
    assert scored.num_rows == summary["train_rows"]


def test_pipeline_with_all_data_in_s3(s3, synthetic_dir, tmp_path):
    """The kfp.local pipeline reading its input from s3:// and keeping every stage's data
    under an s3:// data root; its metrics equal gdmix train's on the same data."""
    from conftest import synthetic_config
    from gdmix.game import train
    from gdmix_pipelines.run import run_local

    s3fs = fs.url_to_fs(f"s3://{BUCKET}")[0]
    for split in ("train", "validation"):
        s3fs.put(f"{synthetic_dir}/{split}", f"{BUCKET}/synthetic/{split}", recursive=True)
    raw = synthetic_config(f"s3://{BUCKET}/synthetic", f"s3://{BUCKET}/pipeline-model")
    raw["pipeline"] = {"partition_groups": 2, "parallelism": 2}
    metrics = run_local(yaml.safe_dump(raw), workdir=str(tmp_path / "root"), data_root=f"s3://{BUCKET}/runs")
    expected = train(validate_config(synthetic_config(synthetic_dir, str(tmp_path / "train-model"))))
    for got, want in zip(metrics["coordinates"], expected.coordinates, strict=True):
        assert got["validation"]["auc"] == pytest.approx(want["validation"]["auc"], abs=1e-7)
        assert got["validation"]["logloss"] == pytest.approx(want["validation"]["logloss"], abs=1e-7)
    assert fs.exists(f"s3://{BUCKET}/pipeline-model/metrics.json")
    # the stages' data went to the bucket; the local pipeline root holds only small artifacts
    assert s3fs.glob(f"{BUCKET}/runs/*/prepared/prep.json")
    assert not list((tmp_path / "root").glob("**/*.parquet"))
