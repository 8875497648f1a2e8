"""The stages' Kubernetes backend end to end against a fake cluster whose "operator" runs the
rendered job's own command on this machine (TF workers with TF_CONFIG, spark-submit's entry file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from gdmix.distributed.launcher import launch_horovod, launch_local
from gdmix.config import validate_config
from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.stages.backends import Launch, run_spark_prep, write_job_config
from gdmix.stages.context import prepared_config, run_config, with_optional_columns
from gdmix.stages.training import train_fixed_effect

from conftest import synthetic_config
from test_kube_jobs import FakeCoreV1, condition, failed

HANG_GUARD = 300


class RunningOperator:
    """A CustomObjectsApi whose created jobs run their container command here and then report
    Succeeded (or Failed, with the command's status)."""

    def __init__(self):
        self.created, self.deleted, self.status = [], [], None
        self.event_logs: list[Path] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append(body)
        self.status = self._run(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return {"metadata": {"name": name}, "status": self.status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        self.deleted.append(name)

    def _run(self, body):
        if body["kind"] == "MPIJob":  # the launcher's horovodrun, as local ranks
            replicas = body["spec"]["mpiReplicaSpecs"]
            command = replicas["Launcher"]["template"]["spec"]["containers"][0]["command"]
            assert command[0] == "horovodrun" and command[command.index("-np") + 1] == str(replicas["Worker"]["replicas"])
            python = command.index("python")
            code = launch_horovod([sys.executable, *command[python + 1:]], replicas["Worker"]["replicas"])
            return {"conditions": [condition("Succeeded")]} if code == 0 else failed("Error", f"status {code}")
        if body["kind"] == "TFJob":
            worker = body["spec"]["tfReplicaSpecs"]["Worker"]
            command = worker["template"]["spec"]["containers"][0]["command"]
            assert command[:3] == ["python", "-m", "gdmix"]
            code = launch_local([sys.executable, *command[1:]], worker["replicas"])
            return {"conditions": [condition("Succeeded")]} if code == 0 else failed("Error", f"status {code}")
        return self._spark_submit(body)

    def _spark_submit(self, body):
        """What the Spark operator does with a SparkApplication: spark-submit of its main file with
        its arguments, driver/executor memory and sparkConf, unchanged. Only what a cluster would
        provide is substituted: the master (``--master local[2]`` on the command line, where the
        operator passes ``k8s://...``), the pod's address (127.0.0.1) and the image's Python. An
        event log records the master the application really ran with."""
        import pyspark

        spec = body["spec"]
        assert spec["type"] == "Python" and spec["mode"] == "cluster"
        assert spec["mainApplicationFile"].startswith("local://")
        events = Path(tempfile.mkdtemp(prefix="gdmix-spark-events-"))
        self.event_logs.append(events)  # removed by spark_masters()
        command = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"),
                   "--master", "local[2]", "--deploy-mode", "client", "--name", body["metadata"]["name"],
                   "--driver-memory", spec["driver"]["memory"],
                   "--conf", f"spark.executor.memory={spec['executor']['memory']}",
                   "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
                   "--conf", "spark.eventLog.enabled=true", "--conf", "spark.eventLog.compress=false",
                   "--conf", f"spark.eventLog.dir={events.as_uri()}"]
        for key, value in spec.get("sparkConf", {}).items():
            command += ["--conf", f"{key}={value}"]
        command += [spec["mainApplicationFile"].removeprefix("local://"), *spec["arguments"]]
        env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
                   PYSPARK_DRIVER_PYTHON=sys.executable)
        done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD, env=env)
        state = "COMPLETED" if done.returncode == 0 else "FAILED"
        return {"applicationState": {"state": state, "errorMessage": done.stderr[-2000:]}}

    def spark_masters(self) -> list[str]:
        """The ``spark.master`` each submitted application ran with (from its event log)."""
        masters = []
        for folder in self.event_logs:
            for log in sorted(folder.rglob("events_*")):  # eventlog_v2_<app>/events_<n>_<app>
                for line in log.read_text().splitlines():
                    event = json.loads(line)
                    if event.get("Event") == "SparkListenerEnvironmentUpdate":
                        masters.append(dict(event["Spark Properties"])["spark.master"])
            shutil.rmtree(folder, ignore_errors=True)
        self.event_logs.clear()
        return masters


def _options(operator):
    return {"custom_api": operator, "core_api": FakeCoreV1(), "poll_seconds": 0.0, "sleep": lambda s: None}


def test_prep_and_fixed_effect_as_kubernetes_jobs(synthetic_dir, tmp_path):
    raw = synthetic_config(synthetic_dir, str(tmp_path / "out"))
    raw["pipeline"] = {"backend": "kubernetes", "namespace": "gdmix", "fixed_effect_workers": 2,
                       "object_store_secret": "s3-creds"}
    derived = with_optional_columns(run_config(yaml.safe_dump(raw))).model_dump(mode="json")
    derived["prep"]["output"] = str(tmp_path / "prepared")
    config = validate_config(derived)
    launch = Launch.from_config(config, image="registry/gdmix-trainer:1", task_config=None)
    operator = RunningOperator()

    config_uri = write_job_config(config, str(tmp_path / "prep-job"))
    run_spark_prep(config, config_uri, launch, "prep", log=lambda m: None, job_options=_options(operator))
    application = operator.created[0]
    assert application["kind"] == "SparkApplication" and application["spec"]["image"] == "registry/gdmix-trainer:1"
    assert application["spec"]["arguments"] == [config_uri, "--set", "prep.spark.master=null"]
    assert json.loads(fs.read_text(str(tmp_path / "prepared" / "prep.json")))["train_rows"] > 0
    # cluster mode: gdmix prep took its master from spark-submit, not from its own config
    assert operator.spark_masters() == ["local[2]"]

    stage = prepared_config(config, str(tmp_path / "prepared"))
    import gdmix.stages.training as coordinates

    original = coordinates.run_workers
    coordinates.run_workers = lambda *a, **k: original(*a, **k, job_options=_options(operator))
    try:
        summary = train_fixed_effect(stage, "global", str(tmp_path / "global"), None, None, launch, log=lambda m: None)
    finally:
        coordinates.run_workers = original
    job = operator.created[1]
    assert job["kind"] == "TFJob" and job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    container = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "s3-creds"}} in container["envFrom"]
    assert container["command"] == ["python", "-m", "gdmix", "fixed-effect", str(tmp_path / "global.job" / "config.yaml"),
                                    "--coordinate", "global", "--output", str(tmp_path / "global"),
                                    "--index-maps", str(tmp_path / "prepared")]
    assert summary["workers"] == 2 and fs.exists(str(tmp_path / "global" / "models" / "global"))
    assert len(operator.deleted) == 2  # every job is deleted at the end
    assert not fs.exists(str(tmp_path / "global.job"))  # the job's config and offsets are cleaned up


def test_a_failed_kubernetes_job_fails_the_stage(synthetic_dir, tmp_path):
    raw = synthetic_config(synthetic_dir, str(tmp_path / "out"))
    raw["pipeline"] = {"backend": "kubernetes", "namespace": "gdmix"}
    config = prepared_config(run_config(yaml.safe_dump(raw)), str(tmp_path / "missing-prepared"))
    launch = Launch.from_config(config, image="img")
    import gdmix.stages.training as coordinates

    operator = RunningOperator()
    original = coordinates.run_workers
    coordinates.run_workers = lambda *a, **k: original(*a, **k, job_options=_options(operator))
    try:
        with pytest.raises(GdmixError, match="failed"):
            train_fixed_effect(config, "global", str(tmp_path / "global"), None, None, launch, log=lambda m: None)
    finally:
        coordinates.run_workers = original
    assert operator.deleted and not fs.exists(str(tmp_path / "global"))


@pytest.mark.parametrize("coordinate, command", [("global", "fixed-effect"), ("deep", "detext")])
def test_a_fixed_effect_stage_launches_its_jobs_spec(synthetic_dir, tmp_path, monkeypatch, coordinate, command):
    """The stage's job: the coordinate's command with the prepared index maps and the warm start."""
    raw = synthetic_config(synthetic_dir, str(tmp_path / "out"))
    raw["coordinates"].append({"name": "deep", "type": "detext", "doc_text": ["title"], "distribution": "horovod"})
    config = prepared_config(run_config(yaml.safe_dump(raw)), str(tmp_path / "prepared"))
    output = str(tmp_path / coordinate)
    launched = []

    def run_workers(args, workers, launch, name, log, horovod=False):
        launched.append((args, workers, name, horovod))
        fs.write_text(fs.join(output, "job.json"), '{"workers": 1}')

    monkeypatch.setattr("gdmix.stages.training.run_workers", run_workers)
    assert train_fixed_effect(config, coordinate, output, None, "prev", Launch(), log=lambda m: None) == {"workers": 1}
    assert launched == [([command, f"{output}.job/config.yaml", "--coordinate", coordinate, "--output", output,
                          "--index-maps", str(tmp_path / "prepared"), "--warm-start", "prev"],
                         config.pipeline.fixed_effect_workers, f"{coordinate}-{command}", command == "detext")]
    assert not fs.exists(f"{output}.job")
