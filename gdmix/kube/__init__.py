"""The Kubernetes side of the distributed stages: render a job, run it, clean up.

:mod:`gdmix.kube.manifests` renders TFJob / MPIJob / SparkApplication resources as plain dicts
(pure functions, tested offline against schemas); :mod:`gdmix.kube.task_config` turns KFP's
``dsl.TaskConfig`` passthrough into pod settings; :mod:`gdmix.kube.runner` creates a resource,
follows it to its end while streaming its pods' logs, and deletes it. The rest of gdmix knows
nothing of Kubernetes: only the launcher components import this package.
"""

from gdmix.kube.runner import JobConflict, JobError, JobFailed, JobTimeout, job_outcome, own_namespace, run_job
from gdmix.kube.manifests import (
    PodSettings,
    module_file_uri,
    mpijob,
    pod_template,
    resource_name,
    spark_application,
    tfjob,
)
from gdmix.kube.task_config import SparkPassthrough, apply_overrides, pod_overrides, spark_pod_overrides, with_task_config

__all__ = [
    "JobConflict",
    "JobError",
    "JobFailed",
    "JobTimeout",
    "PodSettings",
    "apply_overrides",
    "job_outcome",
    "module_file_uri",
    "own_namespace",
    "mpijob",
    "pod_overrides",
    "pod_template",
    "resource_name",
    "run_job",
    "spark_application",
    "spark_pod_overrides",
    "SparkPassthrough",
    "tfjob",
    "with_task_config",
]
