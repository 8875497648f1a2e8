"""The KFP pipeline: built from a config, run end to end with kfp.local, compiled YAML checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from gdmix.config import validate_config
from gdmix.errors import ConfigError, DataError, GdmixError
from gdmix.game import train
from gdmix.io import fs
from gdmix.io.score_avro import write_gdmix_scores
from gdmix.stages.context import check_shape, data_overrides, run_config, shape_of
from gdmix.stages.training import partition_groups
from gdmix.stages.locations import input_location, output_location
from gdmix.ledger import Ledger
from gdmix_pipelines.compile_all import compile_all
from gdmix_pipelines.gdmix_pipeline import compile_pipeline, structure
from gdmix_pipelines.run import run_local

from conftest import synthetic_config
from fake_kfp_api import FakeKfpApi

ROOT = Path(__file__).resolve().parent.parent


def _pipeline_config(data_dir: str, output: str, **pipeline) -> dict:
    raw = synthetic_config(data_dir, output)
    raw["passes"] = 2
    raw["coordinates"][1]["partitions"] = 4
    raw["coordinates"][2]["partitions"] = 2
    raw["pipeline"] = {"partition_groups": 2, "parallelism": 2, "fixed_effect_workers": 2} | pipeline
    return raw


def test_pipeline_runs_locally_and_matches_gdmix_train(synthetic_dir, tmp_path, monkeypatch):
    """Three passes: pass 1 and two runs of the one later-pass DAG, each starting from the score
    table and models of the pass before. Every task process is probed (bench/step_probe): only
    prepare loads pyspark and only the fixed effect's TF workers TensorFlow (issue 13)."""
    raw = _pipeline_config(synthetic_dir, str(tmp_path / "pipeline-model")) | {"passes": 3}
    probes = tmp_path / "probes"
    probes.mkdir()
    monkeypatch.setenv("GDMIX_STEP_PROBE_DIR", str(probes))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "bench" / "step_probe"),
                                                                   os.environ.get("PYTHONPATH")])))
    metrics = run_local(yaml.safe_dump(raw), workdir=str(tmp_path / "root"))
    monkeypatch.delenv("GDMIX_STEP_PROBE_DIR")
    loaded = [json.loads(path.read_text()) for path in probes.glob("*.json")]
    steps = {(r["function"], tuple(r["heavy"])) for r in loaded if r.get("function")}
    assert {f for f, _ in steps} >= {"prepare", "fixed_effect", "update_scores", "random_effect", "score"}
    assert {(f, h) for f, h in steps if h} == {("prepare", ("pyspark",))}
    assert {tuple(r["heavy"]) for r in loaded if r.get("tf_worker")} == {("tensorflow",)}
    reference = train(validate_config(raw | {"output": str(tmp_path / "train-model")}))
    expected = json.loads((tmp_path / "train-model" / "metrics.json").read_text())
    assert len(metrics["coordinates"]) == len(expected["coordinates"]) == 9
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
    # every step left its KFP outputs: an HTML report with plots for the final evaluation, and one
    # per coordinate and pass (passes 2 and 3 run one DAG definition; local_task_roots keeps their
    # outputs apart, where kfp.local alone would write pass 3's over pass 2's)
    reports = sorted((tmp_path / "root").glob("*/score*/report"))  # the final step scores and evaluates
    assert reports and "<svg" in reports[-1].read_text()
    assert len(list((tmp_path / "root").rglob("report"))) == 3 * 3 + 1


def test_pipeline_learns_l2_like_gdmix_train(synthetic_dir, tmp_path):
    """l2: auto in the pipeline (per_user with its intercept's ridge learned apart, per_group):
    the plan step searches over all partitions (from the previous pass's ridges), every partition
    group trains at them, and the numbers are gdmix train's; the KFP metrics and the HTML report
    show what was learned."""
    raw = _pipeline_config(synthetic_dir, str(tmp_path / "pipeline-model"))
    raw["coordinates"][1]["l2"] = {"auto": True, "per_group": True}  # the intercept's ridge learned apart
    raw["coordinates"][2]["l2"] = "auto"
    metrics = run_local(yaml.safe_dump(raw), workdir=str(tmp_path / "root"))
    train(validate_config(raw | {"output": str(tmp_path / "train-model")}))
    expected = json.loads((tmp_path / "train-model" / "metrics.json").read_text())
    learned = {"l2": [], "intercept_l2": []}
    for got, want in zip(metrics["coordinates"], expected["coordinates"], strict=True):
        assert (got["name"], got["pass"]) == (want["name"], want["pass"])
        assert got["validation"]["auc"] == pytest.approx(want["validation"]["auc"], abs=1e-7)
        assert got["train"]["logloss"] == pytest.approx(want["train"]["logloss"], rel=1e-7)
        if got["name"] == "global":
            assert "l2" not in got["solver"]
            continue
        assert got["solver"]["l2_evaluations"] == want["solver"]["l2_evaluations"]
        for key in learned:
            assert (key in got["solver"]) == (key in want["solver"]) == (key == "l2" or got["name"] == "per_user")
            if key in got["solver"]:
                assert got["solver"][key] == pytest.approx(want["solver"][key], rel=1e-7)
                learned[key].append(got["solver"][key])
    assert [len(values) for values in learned.values()] == [4, 2]
    logged = {key: [] for key in learned}  # what the update-scores steps logged as KFP Metrics
    for path in (tmp_path / "root").glob("*/*/update-scores*/executor_output.json"):
        metadata = json.loads(path.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        for key in learned:
            if f"learned_{key}" in metadata:
                logged[key].append(metadata[f"learned_{key}"])
    for key in learned:
        assert sorted(logged[key]) == pytest.approx(sorted(learned[key]))
    reports = [path.read_text() for path in (tmp_path / "root").glob("*/later-pass/update-scores*/report")]
    assert reports and all("learned intercept l2" in report for report in reports)  # the per-coordinate table


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
    assert text.count("parallelismLimit: 3") == 4  # 2 random effects x 2 pass definitions (first, later)
    groups = [json.loads(s) for s in _raw_items(compiled["pipeline"])]
    assert ["0:1", "1:3", "3:4"] in groups and ["0:1", "1:2"] in groups
    secrets = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert secrets and all(e["secretAsEnv"][0]["secretName"] == "team-s3" for e in secrets.values())
    assert "AWS_SECRET_ACCESS_KEY" in text and "aws_secret_access_key:" not in text.lower()
    assert "retryPolicy" in text  # partition trainers are retried (finished partitions are skipped)


def test_later_passes_share_one_definition(synthetic_dir, tmp_path):
    """Each pass is a task running a nested pipeline; KFP's compiler copies a nested pipeline for
    every use, share_repeated_dags folds the copies back: more passes add only their tasks."""
    compiled = {}
    for passes in (2, 6):
        config = tmp_path / f"passes-{passes}.yaml"
        config.write_text(yaml.safe_dump(_pipeline_config(synthetic_dir, str(tmp_path / "model")) | {"passes": passes}))
        compiled[passes] = compile_pipeline(config, tmp_path / f"pipeline-{passes}.yaml")
    two, six = (structure(compiled[n])["pipeline"] for n in (2, 6))
    assert len(two["components"]) == len(six["components"])  # (the outer steps' numbering differs)
    assert sorted(two["deploymentSpec"]["executors"]) == sorted(six["deploymentSpec"]["executors"])
    assert len(six["deploymentSpec"]["executors"]) == 7  # one per step function (no test split: no evaluate)
    tasks = six["root"]["dag"]["tasks"]
    passes = {spec["taskInfo"]["name"]: spec["componentRef"]["name"] for spec in tasks.values()
              if spec["taskInfo"]["name"].startswith("pass ")}
    assert sorted(passes) == [f"pass {n}" for n in range(1, 7)]
    assert passes["pass 1"] == "comp-first-pass" and {passes[f"pass {n}"] for n in range(2, 7)} == {"comp-later-pass"}
    names = {t["taskInfo"]["name"] for t in six["components"]["comp-later-pass"]["dag"]["tasks"].values()}
    assert {"global: fixed effect", "per_user: offsets", "per_user: scores and evaluation",
            "per_item: scores and evaluation"} <= names
    growth = len(compiled[6].read_text().splitlines()) - len(compiled[2].read_text().splitlines())
    assert growth < 4 * 60, growth  # 4 more pass tasks of about 50 lines each


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
    table = Ledger.initial(config)
    train_rows = table.splits["train"]
    scores = tmp_path / "scores"
    for split, rows in table.splits.items():
        fs.write_parquet(pa.table({"uid": rows.uid, "coordinate_score": np.full(rows.num_rows, 0.5)}),
                         str(scores / split))
    table.read_scores("global", str(scores), "model-uri")
    assert np.allclose(table.offsets("per_user").column("offset").to_numpy(), 0.5)
    assert np.allclose(table.offsets("global").column("offset").to_numpy(), 0.0)
    short = tmp_path / "short"
    fs.write_parquet(pa.table({"uid": train_rows.uid[1:], "coordinate_score": np.zeros(train_rows.num_rows - 1)}),
                     str(short / "train"))
    with pytest.raises(DataError, match="no score for uid"):
        table.read_scores("per_user", str(short), "model-uri")


def test_score_table_reads_a_coordinate_gdmix_scored(synthetic_dir, tmp_path):
    """An external coordinate's scores as GDMix's score Avro: its own score is taken
    (predictionScorePerCoordinate), not the cumulative predictionScore; rows in any order."""
    config = run_config(yaml.safe_dump(synthetic_config(synthetic_dir, str(tmp_path / "o"))))
    table = Ledger.initial(config)
    scores = tmp_path / "avro"
    rng = np.random.default_rng(3)
    own = {}
    for split, rows in table.splits.items():
        order = rng.permutation(rows.num_rows)
        own[split] = rng.normal(size=rows.num_rows)
        (scores / split).mkdir(parents=True)
        write_gdmix_scores(str(scores / split), rows.uid[order], own[split][order] + 7.0, own[split][order],
                           None, np.ones(rows.num_rows))
    table.read_scores("external", str(scores), "model-uri")
    for split, rows in table.splits.items():
        # GDMix's schema holds scores as Avro floats (float32)
        np.testing.assert_array_equal(rows.scores["external"], own[split].astype(np.float32))


def test_submit_uploads_a_version_and_runs_it(synthetic_dir, tmp_path, capsys):
    """gdmix pipeline submit with the real kfp.Client against a KFP API on 127.0.0.1: the
    package is uploaded as a version of its pipeline (created once), the run is created from
    that version with the data parameters, the compile-time overrides are in the package, the
    run's UI link is printed, and --wait fails on a failed run."""
    from gdmix import cli

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_pipeline_config(synthetic_dir, "s3://bucket/model")))
    with FakeKfpApi() as api:
        argv = ["pipeline", "submit", str(config), "--host", api.host, "--wait", "--data-root", "s3://bucket/runs",
                "--set", "coordinates.per_user.l2=3", "--set", "pipeline.backend=kubernetes"]
        assert cli.main(argv) == 0
        result = json.loads(capsys.readouterr().out)
        assert cli.main(argv[:5]) == 0  # a second submission: a new version of the same pipeline
        api.final_state = "FAILED"
        assert cli.main(argv[:6]) == 1
    assert len(api.pipelines) == 1 and len(api.versions) == 3 and len(api.experiments) == 1
    run = api.runs[result["run_id"]]
    assert run["pipeline_version_reference"] == {"pipeline_id": result["pipeline_id"],
                                                 "pipeline_version_id": result["version_id"]}
    assert run["runtime_config"]["parameters"]["data_root"] == "s3://bucket/runs"
    spec = api.versions[result["version_id"]]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "gdmix-global-per-user-per-item"
    default = yaml.safe_load(spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"])
    assert default["pipeline"]["backend"] == "kubernetes" and default["coordinates"][1]["l2"] == 3
    assert result["link"] == f"{api.host}/#/runs/details/{result['run_id']}"


def test_submit_to_multi_user_kubeflow_with_a_token(synthetic_dir, tmp_path, monkeypatch):
    """Multi-user Kubeflow: everything is created in the profile namespace, every request carries
    the bearer token (given, or re-read from a token file), and a missing token is refused."""
    from gdmix import cli

    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client keeps a context file under ~/.config
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_pipeline_config(synthetic_dir, "s3://bucket/model")))
    token_file = tmp_path / "token"
    token_file.write_text("secret-token\n")
    with FakeKfpApi(token="secret-token", multi_user=True) as api:
        base = ["pipeline", "submit", str(config), "--host", api.host, "--namespace", "team-a"]
        assert cli.main(base + ["--token", "secret-token", "--ui-host", "https://kubeflow.example.com/pipeline"]) == 0
        assert cli.main(base + ["--token-path", str(token_file)]) == 0
        assert cli.main(base) == 1  # no credentials: the API refuses
    assert {p["namespace"] for p in api.pipelines.values()} == {"team-a"}
    assert {e["namespace"] for e in api.experiments.values()} == {"team-a"}
    served = [r for r in api.requests if r["path"] != "/apis/v2beta1/healthz"]
    assert sum(r["authorization"] == "Bearer secret-token" for r in served) >= 8


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


def test_compile_for_a_registry_and_the_cluster_backend(synthetic_dir, tmp_path, monkeypatch):
    """gdmix pipeline compile --backend kubernetes --registry --tag --name: every step and every
    workload image comes from that registry and tag, and the package is named as asked."""
    from gdmix import cli

    for variable in ("GDMIX_IMAGE_REGISTRY", "GDMIX_IMAGE_TAG"):  # restored after the test
        monkeypatch.setenv(variable, "")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_pipeline_config(synthetic_dir, "s3://bucket/model")))
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["pipeline", "compile", str(config), "-o", str(out), "--backend", "kubernetes",
                     "--registry", "registry.example.com/ml", "--tag", "1.2.3", "--name", "team-ranking"]) == 0
    compiled = structure(out)
    images = {e["container"]["image"] for e in compiled["pipeline"]["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/ml/gdmix-launcher:1.2.3", "registry.example.com/ml/gdmix-trainer:1.2.3"}
    text = out.read_text()
    assert "registry.example.com/ml/gdmix-spark:1.2.3" in text  # the SparkApplication's image
    assert "localhost/" not in text
    assert compiled["pipeline"]["pipelineInfo"]["name"] == "team-ranking"
