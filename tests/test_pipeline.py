"""The KFP pipeline: built from a config, run end to end with kfp.local, compiled YAML checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from gdmix.config import validate_config
from gdmix.errors import ConfigError, DataError, GdmixError
from gdmix.game import train
from gdmix.io import fs
from gdmix.stages.context import check_shape, data_overrides, run_config, shape_of
from gdmix.stages.coordinates import partition_groups
from gdmix.stages.locations import input_location, output_location
from gdmix.stages.score_table import ScoreTable
from pipelines.compile_all import compile_all
from pipelines.gdmix_pipeline import compile_pipeline, structure
from pipelines.run import run_local

from conftest import synthetic_config

ROOT = Path(__file__).resolve().parent.parent


def _pipeline_config(data_dir: str, output: str, **pipeline) -> dict:
    raw = synthetic_config(data_dir, output)
    raw["passes"] = 2
    raw["coordinates"][1]["partitions"] = 4
    raw["coordinates"][2]["partitions"] = 2
    raw["pipeline"] = {"partition_groups": 2, "parallelism": 2, "fixed_effect_workers": 2} | pipeline
    return raw


def test_pipeline_runs_locally_and_matches_gdmix_train(synthetic_dir, tmp_path):
    raw = _pipeline_config(synthetic_dir, str(tmp_path / "pipeline-model"))
    metrics = run_local(yaml.safe_dump(raw), workdir=str(tmp_path / "root"))
    reference = train(validate_config(raw | {"output": str(tmp_path / "train-model")}))
    expected = json.loads((tmp_path / "train-model" / "metrics.json").read_text())
    assert len(metrics["coordinates"]) == len(expected["coordinates"]) == 6
    for got, want in zip(metrics["coordinates"], expected["coordinates"]):
        assert (got["name"], got["pass"]) == (want["name"], want["pass"])
        for split in ("train", "validation"):
            for key in ("auc", "logloss", "aupr"):
                assert got[split][key] == pytest.approx(want[split][key], abs=1e-7), (got["name"], split, key)
    # the exported model is gdmix train's layout: it scores, and its scores are the pipeline's
    assert fs.exists(str(tmp_path / "pipeline-model" / "model.json"))
    ours = fs.read_parquet_dir(str(tmp_path / "pipeline-model" / "scores" / "per_item" / "validation")).sort_by("uid")
    theirs = fs.read_parquet_dir(str(tmp_path / "train-model" / "scores" / "per_item" / "validation")).sort_by("uid")
    np.testing.assert_allclose(ours.column("score").to_numpy(), theirs.column("score").to_numpy(), atol=1e-6)
    assert reference.coordinates[-1]["validation"]["auc"] > 0.6
    # every step left its KFP outputs: an HTML report with plots for the final evaluation
    reports = sorted((tmp_path / "root").glob("*/evaluate*/report"))
    assert reports and "<svg" in reports[-1].read_text()


def test_a_run_may_not_change_the_compiled_shape(synthetic_dir, tmp_path):
    raw = _pipeline_config(synthetic_dir, str(tmp_path / "model"))
    with pytest.raises(GdmixError, match="failed"):
        run_local(yaml.safe_dump(raw), ["passes=3"], workdir=str(tmp_path / "root"))
    assert not (tmp_path / "model").exists()
    with pytest.raises(ConfigError, match="passes"):
        check_shape(shape_of(run_config(yaml.safe_dump(raw))), run_config(yaml.safe_dump(raw), ["passes=3"]))
    check_shape(shape_of(run_config(yaml.safe_dump(raw))), run_config(yaml.safe_dump(raw),
                                                                       ["coordinates.per_user.l2=7"]))


def test_compiled_yaml_is_current(tmp_path, monkeypatch):
    monkeypatch.delenv("GDMIX_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("GDMIX_IMAGE_TAG", raising=False)
    for fresh in compile_all(tmp_path):
        checked_in = ROOT / fresh.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} is missing: run `make compile`"
        assert checked_in.read_text() == fresh.read_text(), f"{checked_in} is stale: run `make compile`"


def test_compiled_pipeline_images_parallelism_secrets(synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GDMIX_IMAGE_REGISTRY", "registry.example.com/ml")
    raw = _pipeline_config(synthetic_dir, str(tmp_path / "model"), parallelism=3, partition_groups=3,
                           object_store_secret="team-s3")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    compiled = structure(compile_pipeline(config, tmp_path / "pipeline.yaml"))
    executors = compiled["pipeline"]["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {"registry.example.com/ml/gdmix-spark:0.1.0", "registry.example.com/ml/gdmix-trainer:0.1.0"}
    # kfp is baked into the images: no pip install at task start
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors.values())
    text = (tmp_path / "pipeline.yaml").read_text()
    assert text.count("parallelismLimit: 3") == 4  # 2 random effects x 2 passes
    groups = [json.loads(s) for s in _raw_items(compiled["pipeline"])]
    assert ["0:1", "1:3", "3:4"] in groups and ["0:1", "1:2"] in groups
    secrets = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert secrets and all(e["secretAsEnv"][0]["secretName"] == "team-s3" for e in secrets.values())
    assert "AWS_SECRET_ACCESS_KEY" in text and "aws_secret_access_key:" not in text.lower()
    assert "retryPolicy" in text  # partition trainers are retried (finished partitions are skipped)


def _raw_items(spec: dict) -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "raw" in node and isinstance(node["raw"], str) and node["raw"].startswith("["):
                found.append(node["raw"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(spec)
    return found


def test_partition_groups_cover_every_partition_once():
    for partitions in (1, 2, 5, 16, 17):
        for groups in (1, 3, 4, 40):
            ranges = [tuple(map(int, g.split(":"))) for g in partition_groups(partitions, groups)]
            covered = [p for a, b in ranges for p in range(a, b)]
            assert covered == list(range(partitions)) and len(ranges) == min(groups, partitions)


def test_locations_and_data_overrides():
    assert output_location("/root/run/task/model") == "/root/run/task/model"
    moved = output_location("/root/run/task/model", "s3://bucket/runs")
    assert moved.startswith("s3://bucket/runs/") and moved.endswith("/model")
    assert moved != output_location("/root/run2/task/model", "s3://bucket/runs")
    assert input_location("minio://mlpipeline/v2/artifacts/x", {}) == "s3://mlpipeline/v2/artifacts/x"
    assert input_location("/local", {"location": "s3://b/k"}) == "s3://b/k"
    contract = yaml.safe_dump(synthetic_config("/d", "/o"))
    assert data_overrides(contract, "s3://b/train", "") == ["data.train=s3://b/train"]
    prepared = yaml.safe_dump(synthetic_config("/d", "/o") | {"prep": {
        "input": {"path": "/raw"}, "output": "/p", "label": {"column": "y"}}})
    assert data_overrides(prepared, "s3://b/train", "s3://b/v") == ["prep.input.path=s3://b/train",
                                                                   "prep.validation_input.path=s3://b/v"]


def test_score_table_never_drops_rows(synthetic_dir, tmp_path):
    config = run_config(yaml.safe_dump(synthetic_config(synthetic_dir, str(tmp_path / "o"))))
    table = ScoreTable.initial(config)
    train_rows = table.splits["train"]
    scores = tmp_path / "scores"
    for split, rows in table.splits.items():
        uids = rows.column("uid").to_numpy()
        fs.write_parquet(pa.table({"uid": uids, "coordinate_score": np.full(len(uids), 0.5)}),
                         str(scores / split))
    table.update("global", str(scores), "model-uri")
    assert np.allclose(table.offsets("per_user").column("offset").to_numpy(), 0.5)
    assert np.allclose(table.offsets("global").column("offset").to_numpy(), 0.0)
    short = tmp_path / "short"
    fs.write_parquet(pa.table({"uid": train_rows.column("uid").to_numpy()[1:],
                                                   "coordinate_score": np.zeros(train_rows.num_rows - 1)}),
                     str(short / "train"))
    with pytest.raises(DataError, match="no score for uid"):
        table.update("per_user", str(short), "model-uri")


def test_submit_compiles_and_creates_a_run(synthetic_dir, tmp_path, monkeypatch):
    """gdmix pipeline submit against a stand-in kfp.Client: the compiled package and the run's
    arguments are what a Kubeflow Pipelines API receives; --wait fails on a failed run."""
    import kfp

    calls = {}

    class Run:
        run_id = "run-1"

    class FakeClient:
        def __init__(self, host):
            calls["host"] = host

        def create_run_from_pipeline_package(self, package, arguments, experiment_name, enable_caching):
            calls["spec"] = yaml.safe_load(Path(package).read_text().split("\n---\n")[0])
            calls.update(arguments=arguments, experiment=experiment_name)
            return Run()

        def wait_for_run_completion(self, run_id, timeout):
            return type("Finished", (), {"state": calls.get("state", "SUCCEEDED")})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    from gdmix import cli

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_pipeline_config(synthetic_dir, "s3://bucket/model")))
    assert cli.main(["pipeline", "submit", str(config), "--host", "http://127.0.0.1:8888", "--wait",
                     "--set", "coordinates.per_user.l2=3", "--data-root", "s3://bucket/runs"]) == 0
    assert calls["host"] == "http://127.0.0.1:8888" and calls["experiment"] == "gdmix"
    assert calls["arguments"]["overrides"] == ["coordinates.per_user.l2=3"]
    assert calls["arguments"]["data_root"] == "s3://bucket/runs"
    assert calls["spec"]["pipelineInfo"]["name"] == "gdmix-global-per-user-per-item"
    calls["state"] = "FAILED"
    assert cli.main(["pipeline", "submit", str(config), "--host", "http://127.0.0.1:8888", "--wait"]) == 1


def test_a_cluster_pipeline_runs_its_launchers_in_the_launcher_image(synthetic_dir, tmp_path):
    raw = _pipeline_config(synthetic_dir, str(tmp_path / "model"), backend="kubernetes")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    compiled = structure(compile_pipeline(config, tmp_path / "pipeline.yaml"))
    executors = compiled["pipeline"]["deploymentSpec"]["executors"]
    by_name = {name: e["container"]["image"] for name, e in executors.items()}
    assert by_name["exec-prepare"].endswith("/gdmix-launcher:0.1.0")
    assert by_name["exec-fixed-effect"].endswith("/gdmix-launcher:0.1.0")
    assert by_name["exec-random-effect"].endswith("/gdmix-trainer:0.1.0")  # partition trainers do the work
    text = (tmp_path / "pipeline.yaml").read_text()
    assert "gdmix-spark:0.1.0" in text and "gdmix-trainer:0.1.0" in text  # the workloads' images
