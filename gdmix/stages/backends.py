"""Running a stage's distributed work: as local processes, or as Kubernetes jobs.

The command is the same either way (``python -m gdmix fixed-effect ...``, ``gdmix prep``);
only who starts it differs. ``local`` starts N processes with the ``TF_CONFIG`` a training
operator would inject (on 127.0.0.1) or runs Spark ``local[*]`` in this process;
``kubernetes`` renders a TFJob or SparkApplication, creates it, streams its logs and fails at
once when it fails (:mod:`gdmix.kube`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import yaml

from gdmix.config import GdmixConfig
from gdmix.errors import GdmixError
from gdmix.io import fs


@dataclass(frozen=True)
class Launch:
    """Where and how a stage's job runs (from the config's ``pipeline`` section and the task)."""

    backend: str = "local"
    namespace: str = "gdmix"
    image: str = ""
    secret: str | None = None
    timeout_seconds: float = 24 * 3600
    task_config: dict | None = field(default=None, hash=False)

    @classmethod
    def from_config(cls, config: GdmixConfig, image: str = "", task_config: dict | None = None) -> "Launch":
        pipeline = config.pipeline
        return cls(pipeline.backend, pipeline.namespace, image, pipeline.object_store_secret,
                   pipeline.job_timeout_seconds, task_config)


def write_job_config(config: GdmixConfig, job_dir: str) -> str:
    """The config file a job's processes (or pods) read: ``<job_dir>/config.yaml``."""
    uri = fs.join(job_dir, "config.yaml")
    fs.write_text_atomic(uri, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return uri


def run_workers(gdmix_args: list[str], workers: int, launch: Launch, name: str, log=print) -> None:
    """``gdmix <args>`` on ``workers`` workers; raises when the job fails."""
    if launch.backend == "local":
        from gdmix.distributed.launcher import launch_local

        status = launch_local([sys.executable, "-m", "gdmix", *gdmix_args], workers)
        if status != 0:
            raise GdmixError(f"{name}: {workers} local worker(s) failed (status {status}); see their logs above")
        return
    from gdmix.kube import jobs, manifests

    pod = _pod(launch, ["python", "-m", "gdmix", *gdmix_args])
    jobs.run_job(manifests.tfjob(manifests.resource_name("gdmix", name), launch.namespace, pod, workers),
                 timeout_seconds=launch.timeout_seconds, log=log)


def run_spark_prep(config: GdmixConfig, config_uri: str, launch: Launch, name: str, log=print) -> None:
    """``gdmix prep`` in this process (Spark local) or as a SparkApplication."""
    if launch.backend == "local":
        from gdmix.prep.job import run_prep

        run_prep(config, log=log)
        return
    from gdmix.kube import jobs, manifests
    from gdmix.prep import submit

    spark = config.prep.spark
    manifest = manifests.spark_application(
        manifests.resource_name("gdmix", name), launch.namespace, launch.image, f"local://{submit.__file__}",
        [config_uri, "--set", "prep.spark.master=null"],
        driver={"memory": spark.driver_memory}, executor={"memory": spark.executor_memory},
        instances=spark.executor_instances,
        spark_conf=dict(spark.conf), secret_env=[launch.secret] if launch.secret else [],
        service_account="gdmix-spark")
    jobs.run_job(manifest, timeout_seconds=launch.timeout_seconds, log=log)


def _pod(launch: Launch, command: list[str]):
    from gdmix.kube import manifests
    from gdmix.kube.task_config import pod_overrides

    return manifests.PodSettings(image=launch.image, command=command,
                                 secret_env=[launch.secret] if launch.secret else [],
                                 **pod_overrides(launch.task_config))
