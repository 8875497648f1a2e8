"""Running a stage's distributed work: as local processes, or as Kubernetes jobs.

The command is the same either way (``python -m gdmix fixed-effect ...``, ``gdmix prep``);
only who starts it differs. ``local`` starts N processes with the ``TF_CONFIG`` a training
operator would inject (on 127.0.0.1) or runs Spark ``local[*]`` in this process;
``kubernetes`` renders a TFJob or SparkApplication, creates it, streams its logs and fails at
once when it fails (:mod:`gdmix.kube`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import yaml

from gdmix.config import GdmixConfig
from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.jobs.specs import PrepJobSpec, gdmix_command


# an MPIJob worker: sshd in the foreground as the image's user (the detext target of docker/Dockerfile sets it up)
SSHD = ["/usr/sbin/sshd", "-De", "-f", "/home/gdmix/.sshd_config"]


@dataclass(frozen=True)
class Launch:
    """Where and how a stage's job runs (from the config's ``pipeline`` section and the task)."""

    backend: str = "local"
    namespace: str | None = None  # None: the namespace the launcher's own pod runs in
    image: str = ""
    secret: str | None = None
    timeout_seconds: float = 24 * 3600
    task_config: dict | None = field(default=None, hash=False)

    @classmethod
    def from_config(cls, config: GdmixConfig, image: str = "", task_config: dict | None = None) -> "Launch":
        pipeline = config.pipeline
        return cls(pipeline.backend, pipeline.namespace, image, pipeline.object_store_secret,
                   pipeline.job_timeout_seconds, task_config)

    def job_namespace(self) -> str:
        """Where the jobs go: ``pipeline.namespace``, else the launcher pod's own namespace (KFP
        standalone: ``kubeflow``; multi-user: the profile's), where its account may create them."""
        if self.namespace:
            return self.namespace
        from gdmix.kube import own_namespace

        return own_namespace()


def write_job_config(config: GdmixConfig, job_dir: str) -> str:
    """The config file a job's processes (or pods) read: ``<job_dir>/config.yaml``."""
    uri = fs.join(job_dir, "config.yaml")
    fs.write_text_atomic(uri, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return uri


def run_workers(gdmix_args: list[str], workers: int, launch: Launch, name: str, log=print,
                job_options: dict | None = None, horovod: bool = False) -> None:
    """``gdmix <args>`` (a job spec's :meth:`~gdmix.jobs.specs.JobSpec.to_argv`) on ``workers``
    workers; raises when the job fails.

    TF collective workers (``TF_CONFIG``): local processes or a TFJob. ``horovod``: Horovod
    ranks started by ``horovodrun``: locally, or by an MPIJob's launcher. ``job_options``:
    extra arguments of :func:`gdmix.kube.run_job` (API clients, polling; for tests).
    """
    if launch.backend == "local":
        from gdmix.distributed.launcher import launch_horovod, launch_local

        argv = gdmix_command(gdmix_args)
        status = launch_horovod(argv, workers) if horovod else launch_local(argv, workers)
        if status != 0:
            raise GdmixError(f"{name}: {workers} local worker(s) failed (status {status}); see their logs above")
        return
    from gdmix.kube import PodSettings, mpijob, tfjob, with_task_config

    command = gdmix_command(gdmix_args, python="python")  # the image's interpreter

    def pod(run: list[str]):
        return with_task_config(PodSettings(image=launch.image, command=run, secret_env=_secrets(launch)),
                                launch.task_config)

    if horovod:
        launcher = pod(["horovodrun", "-np", str(workers), "--hostfile", "/etc/mpi/hostfile", *command])
        manifest = mpijob(job_name(name), launch.job_namespace(), launcher, pod(SSHD), workers)
    else:
        manifest = tfjob(job_name(name), launch.job_namespace(), pod(command), workers)
    _run(manifest, launch, log, job_options)


def run_spark_prep(config: GdmixConfig, config_uri: str, launch: Launch, name: str, log=print,
                   job_options: dict | None = None) -> None:
    """``gdmix prep`` in this process (Spark local) or as a SparkApplication."""
    if launch.backend == "local":
        from gdmix.prep.run import run_prep

        run_prep(config, log=log)
        return
    from gdmix.kube import module_file_uri, spark_application, spark_pod_overrides

    spark = config.prep.spark
    passed = spark_pod_overrides(launch.task_config)
    manifest = spark_application(
        job_name(name), launch.job_namespace(), launch.image, module_file_uri(),
        PrepJobSpec(config=config_uri, overrides=("prep.spark.master=null",)).arguments(),
        driver={"memory": spark.driver_memory, **passed.pod}, executor={"memory": spark.executor_memory, **passed.pod},
        instances=spark.executor_instances, spark_conf=dict(spark.conf), secret_env=_secrets(launch),
        volumes=passed.volumes)
    _run(manifest, launch, log, job_options)


def job_name(stage: str) -> str:
    """A fresh name per launch: a retried step must not collide with its failed predecessor
    (kept for its logs until its TTL); the work itself resumes from the output location."""
    from gdmix.kube import resource_name

    return resource_name("gdmix", stage, uuid.uuid4().hex[:6])


def _secrets(launch: Launch) -> list[str]:
    return [launch.secret] if launch.secret else []


def _run(manifest: dict, launch: Launch, log, job_options: dict | None) -> None:
    from gdmix.kube import run_job

    run_job(manifest, timeout_seconds=launch.timeout_seconds, log=log, **(job_options or {}))
