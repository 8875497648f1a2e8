"""Custom resources for the distributed stages, rendered as plain dicts (no cluster, no I/O).

A KFP v2 pipeline cannot create a custom resource itself, so a *launcher* component renders one
of these manifests, hands it to :func:`gdmix.kube.runner.run_job` and waits. Keeping the rendering
pure means every field we send to the cluster is unit-testable and schema-checked offline
(``tests/test_manifests.py``), and a different backend (Trainer v2 TrainJob) can be added next to
these functions without touching the launchers.

Three workloads:

- :func:`tfjob`: a ``kubeflow.org/v1`` TFJob (training-operator v1.9) of plain workers; the
  operator injects ``TF_CONFIG``, which :mod:`gdmix.distributed.cluster` reads.
- :func:`mpijob`: a ``kubeflow.org/v2beta1`` MPIJob (mpi-operator); the launcher runs
  ``horovodrun``/``mpirun`` over SSH against workers that run ``sshd``.
- :func:`spark_application`: a ``sparkoperator.k8s.io/v1beta2`` SparkApplication running
  ``gdmix/prep/submit.py`` (``gdmix prep`` inside spark-submit).

Every pod is rendered for the Pod Security Admission ``restricted`` profile, which the ``gdmix``
namespace enforces (``manifests/base``): non-root uid 1000, no privilege escalation, all
capabilities dropped, the runtime's default seccomp profile. Object-store credentials reach pods
only through ``envFrom.secretRef`` of a named Secret; no credential is ever written into a
manifest.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: uid/gid every gdmix image runs as (the images create this user; PSA ``restricted`` forbids root).
RUN_AS_USER = 1000

#: Spark version of the ``gdmix-spark`` image (pyspark pinned in pyproject.toml); the operator
#: requires ``spec.sparkVersion`` and uses it for labels and defaults.
SPARK_VERSION = "4.3.0"

#: Module run by spark-submit for data preparation (its file is the SparkApplication main file).
PREP_SUBMIT_MODULE = "gdmix.prep.submit"

#: Directory of the SSH keys mpi-operator mounts into MPIJob pods. Its default, ``/root/.ssh``,
#: belongs to root; our pods run as uid 1000, so the keys go to that user's home.
DEFAULT_SSH_AUTH_MOUNT_PATH = "/home/gdmix/.ssh"

#: Label on every pod gdmix launches: no Istio sidecar. Multi-user Kubeflow injects one into
#: profile namespaces; a sidecar keeps a finished TFJob worker's pod running (the job never
#: completes), intercepts MPI's ssh and the TF collective ports, and is no use to batch pods.
NO_SIDECAR = {"sidecar.istio.io/inject": "false"}

#: Port the detext image's sshd listens on as uid 1000 (docker/Dockerfile; its ssh client config
#: uses the same port, so horovodrun / mpirun need no option for it).
SSHD_PORT = 2222

#: Seconds a finished job object is kept by its operator when nobody deleted it (the launcher
#: deletes it at once; this only cleans up after a launcher pod that was killed).
DEFAULT_TTL_SECONDS = 3600

_DNS_1123_MAX = 63
_INVALID_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


# --- names -------------------------------------------------------------------------------------


def resource_name(*parts: object, max_length: int = _DNS_1123_MAX) -> str:
    """A valid Kubernetes object name built from ``parts`` (joined with ``-``).

    Lowercases, turns every run of characters outside ``[a-z0-9-]`` into one ``-`` and trims
    dashes at both ends. The result starts with a letter (``g`` is prepended otherwise) so it is
    also a DNS-1035 label: the operators name Services after their jobs, and Service names must
    start with a letter. When longer than ``max_length`` the name is cut and ends with ``-`` and
    8 hex digits of a hash of the untruncated parts, so two long names that differ only in their
    tail stay distinct. Deterministic: the same parts always give the same name.
    """
    if max_length < 10:
        raise ValueError(f"max_length must be at least 10, got {max_length}")
    raw = "-".join(str(p) for p in parts)
    name = _INVALID_NAME_CHARS.sub("-", raw.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name:
        raise ValueError(f"no usable characters for a resource name in {parts!r}")
    if not name[0].isalpha():
        name = "g" + name
    if len(name) > max_length:
        digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:8]
        name = name[: max_length - 9].rstrip("-") + "-" + digest
    return name


def _check_job_name(name: str, longest_suffix: str) -> None:
    """The operators derive pod/Service names by appending suffixes; those must stay valid too."""
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise ValueError(f"'{name}' is not a valid job name (lowercase DNS-1035 label); use resource_name()")
    limit = _DNS_1123_MAX - len(longest_suffix)
    if len(name) > limit:
        raise ValueError(
            f"job name '{name}' is {len(name)} characters; the operator appends '{longest_suffix}', "
            f"so it must be at most {limit} (use resource_name(..., max_length={limit}))"
        )


# --- pods --------------------------------------------------------------------------------------


def restricted_pod_security_context() -> dict[str, Any]:
    """Pod-level part of the PSA ``restricted`` profile (fsGroup makes mounted volumes writable)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security_context() -> dict[str, Any]:
    """Container-level part of the PSA ``restricted`` profile."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@dataclass(frozen=True)
class PodSettings:
    """Everything that varies between the pods gdmix launches; the rest is fixed policy.

    ``env`` holds plain values; ``extra_env`` holds whole Kubernetes EnvVar entries (``valueFrom``
    a Secret key, a ConfigMap key or a field), which is how KFP passes ``use_secret_as_env`` on to
    a launched workload. ``secret_env`` names Secrets mounted whole with ``envFrom.secretRef``
    (e.g. ``gdmix-object-store``), so credentials never appear in a manifest. ``resources`` is a
    Kubernetes ``resources`` dict (``requests``/``limits``).
    """

    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    affinity: dict[str, Any] | None = None
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    secret_env: list[str] = field(default_factory=list)
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    extra_env: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("PodSettings.image is empty")
        if not self.command or not all(isinstance(c, str) for c in self.command):
            raise ValueError(f"PodSettings.command must be a non-empty list of strings, got {self.command!r}")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ValueError(f"unknown image_pull_policy '{self.image_pull_policy}'")
        names = list(self.env) + [e.get("name") for e in self.extra_env]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"environment variables set twice: {duplicated}")
        mounted = {m.get("name") for m in self.volume_mounts}
        declared = {v.get("name") for v in self.volumes}
        if mounted - declared:
            raise ValueError(f"volume mounts without a volume: {sorted(mounted - declared)}")


def _env_list(pod: PodSettings) -> list[dict[str, Any]]:
    plain = [{"name": k, "value": str(v)} for k, v in pod.env.items()]
    return plain + [copy.deepcopy(e) for e in pod.extra_env]


def container(pod: PodSettings, name: str) -> dict[str, Any]:
    """The single container of a gdmix pod."""
    spec: dict[str, Any] = {
        "name": name,
        "image": pod.image,
        "imagePullPolicy": pod.image_pull_policy,
        "command": list(pod.command),
        "securityContext": restricted_container_security_context(),
    }
    env = _env_list(pod)
    if env:
        spec["env"] = env
    if pod.secret_env:
        spec["envFrom"] = [{"secretRef": {"name": s}} for s in pod.secret_env]
    if pod.resources:
        spec["resources"] = copy.deepcopy(pod.resources)
    if pod.volume_mounts:
        spec["volumeMounts"] = copy.deepcopy(pod.volume_mounts)
    return spec


def pod_template(
    pod: PodSettings,
    container_name: str,
    *,
    labels: Mapping[str, str] | None = None,
    automount_service_account_token: bool = False,
) -> dict[str, Any]:
    """A ``PodTemplateSpec`` for one replica type.

    The service-account token is not mounted by default: training pods never call the
    Kubernetes API, and a token they do not need is only something to steal.
    """
    spec: dict[str, Any] = {
        "automountServiceAccountToken": automount_service_account_token,
        "securityContext": restricted_pod_security_context(),
        "containers": [container(pod, container_name)],
    }
    if pod.service_account:
        spec["serviceAccountName"] = pod.service_account
    if pod.volumes:
        spec["volumes"] = copy.deepcopy(pod.volumes)
    if pod.tolerations:
        spec["tolerations"] = copy.deepcopy(pod.tolerations)
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    if pod.affinity:
        spec["affinity"] = copy.deepcopy(pod.affinity)
    template: dict[str, Any] = {"spec": spec}
    template["metadata"] = {"labels": {**NO_SIDECAR, **dict(labels or {})}}
    return template


def _metadata(name: str, namespace: str, labels: Mapping[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = dict(labels)
    return meta


def _run_policy(
    clean_pod_policy: str, backoff_limit: int, ttl_seconds: int | None, active_deadline_seconds: int | None
) -> dict[str, Any]:
    policy: dict[str, Any] = {"cleanPodPolicy": clean_pod_policy, "backoffLimit": backoff_limit}
    if ttl_seconds is not None:
        policy["ttlSecondsAfterFinished"] = ttl_seconds
    if active_deadline_seconds is not None:
        policy["activeDeadlineSeconds"] = active_deadline_seconds
    return policy


def _check_count(what: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


# --- TFJob -------------------------------------------------------------------------------------


def tfjob(
    name: str,
    namespace: str,
    pod: PodSettings,
    workers: int,
    labels: Mapping[str, str] | None = None,
    *,
    backoff_limit: int = 0,
    active_deadline_seconds: int | None = None,
    ttl_seconds_after_finished: int | None = DEFAULT_TTL_SECONDS,
) -> dict[str, Any]:
    """A TFJob of ``workers`` identical workers (no chief/PS: worker 0 acts as chief).

    ``restartPolicy: Never`` and ``backoffLimit: 0``: the workers form one collective
    (MultiWorkerMirroredStrategy all-reduce), and a worker restarted in place cannot rejoin a
    running collective, so the others would hang until a timeout. A failing worker therefore
    fails the whole job at once; the retry is a fresh job that resumes from gdmix's own
    checkpoint. Never also keeps each pod's log whole (no container restart truncates it).

    ``successPolicy: AllWorkers``: the job succeeds only when every worker exited 0, so no
    worker is cut off while it still commits its share of the output. ``cleanPodPolicy:
    Running`` frees the pods that are still running once the job is decided, and keeps the
    finished ones so the launcher can read their last log lines before it deletes the job.
    The container must be called ``tensorflow``: that is the one the operator injects
    ``TF_CONFIG`` and the port into.
    """
    _check_count("workers", workers)
    _check_job_name(name, f"-worker-{workers - 1}")
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "runPolicy": _run_policy("Running", backoff_limit, ttl_seconds_after_finished, active_deadline_seconds),
            "successPolicy": "AllWorkers",
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": workers,
                    "restartPolicy": "Never",
                    "template": pod_template(pod, "tensorflow", labels=labels),
                }
            },
        },
    }


# --- MPIJob ------------------------------------------------------------------------------------


def mpijob(
    name: str,
    namespace: str,
    launcher: PodSettings,
    worker: PodSettings,
    workers: int,
    slots_per_worker: int = 1,
    *,
    labels: Mapping[str, str] | None = None,
    ssh_auth_mount_path: str = DEFAULT_SSH_AUTH_MOUNT_PATH,
    ssh_port: int | None = SSHD_PORT,
    backoff_limit: int = 0,
    active_deadline_seconds: int | None = None,
    ttl_seconds_after_finished: int | None = DEFAULT_TTL_SECONDS,
) -> dict[str, Any]:
    """An MPIJob (mpi-operator v2beta1): one launcher and ``workers`` workers.

    The caller gives the commands: the launcher runs e.g. ``horovodrun -np N --hostfile
    /etc/mpi/hostfile python -m gdmix ...`` (N = workers x slots_per_worker), each worker runs
    ``sshd`` in the foreground as uid 1000 (``/usr/sbin/sshd -De -f <home>/.sshd_config``), so
    the image needs an sshd config for that user on an unprivileged port and SSH keys read from
    ``ssh_auth_mount_path``. ``launcherCreationPolicy: WaitForWorkersReady`` starts the launcher
    only when every worker's sshd is up, instead of letting its first ssh connections fail.

    Both replica types use ``restartPolicy: Never`` with ``backoffLimit: 0`` for the reason
    given in :func:`tfjob` (an MPI world cannot take a restarted rank back). ``cleanPodPolicy:
    Running`` stops the sshd workers once the launcher has finished and keeps the launcher pod,
    which holds every rank's output, for the final log read.
    """
    _check_count("workers", workers)
    _check_count("slots_per_worker", slots_per_worker)
    _check_job_name(name, max(f"-worker-{workers - 1}", "-launcher", key=len))
    return {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": _metadata(name, namespace, labels),
        "spec": {
            "slotsPerWorker": slots_per_worker,
            "mpiImplementation": "OpenMPI",
            "sshAuthMountPath": ssh_auth_mount_path,
            "launcherCreationPolicy": "WaitForWorkersReady",
            "runPolicy": _run_policy("Running", backoff_limit, ttl_seconds_after_finished, active_deadline_seconds),
            "mpiReplicaSpecs": {
                "Launcher": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": pod_template(launcher, "launcher", labels=labels),
                },
                "Worker": {
                    "replicas": workers,
                    "restartPolicy": "Never",
                    "template": _ready_when_listening(pod_template(worker, "worker", labels=labels), ssh_port),
                },
            },
        },
    }


def _ready_when_listening(template: dict[str, Any], port: int | None) -> dict[str, Any]:
    """A worker pod is Ready only once its sshd accepts connections.

    mpi-operator starts the launcher when every worker is Ready (``WaitForWorkersReady``) and
    its headless Service publishes a worker's DNS name only then; without a probe a pod is Ready
    as soon as its container starts, and horovodrun's few ssh attempts can meet a name or a port
    that is not there yet.
    """
    if port is not None:
        template["spec"]["containers"][0]["readinessProbe"] = {
            "tcpSocket": {"port": port}, "periodSeconds": 2, "failureThreshold": 30}
    return template


# --- SparkApplication --------------------------------------------------------------------------

#: SparkPodSpec keys this module sets itself; a caller's driver/executor dict may not hold them.
_SPARK_POD_OWNED = ("securityContext", "podSecurityContext", "envFrom", "serviceAccount", "instances", "labels")


def module_file_uri(module: str = PREP_SUBMIT_MODULE) -> str:
    """``local://`` URI of an installed module's file, for ``mainApplicationFile``.

    ``local://`` tells spark-submit the file is already inside the image. The path is taken from
    this process's installation, which is right when the launcher image and the Spark image
    install gdmix under the same prefix (they are built from one base, see ``docker/``).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ValueError(f"module '{module}' is not installed")
    return "local://" + spec.origin


def _spark_pod(
    role: str,
    given: Mapping[str, Any],
    secret_env: Iterable[str],
    labels: Mapping[str, str] | None,
) -> dict[str, Any]:
    owned = sorted(set(given) & set(_SPARK_POD_OWNED))
    if owned:
        raise ValueError(f"spark {role} settings {owned} are set by spark_application() itself")
    spec = copy.deepcopy(dict(given))
    spec["podSecurityContext"] = restricted_pod_security_context()
    spec["securityContext"] = restricted_container_security_context()
    secrets = list(secret_env)
    if secrets:
        spec["envFrom"] = [{"secretRef": {"name": s}} for s in secrets]
    spec["labels"] = {**NO_SIDECAR, **dict(labels or {})}
    return spec


def spark_application(
    name: str,
    namespace: str,
    image: str,
    main_application_file: str,
    arguments: Iterable[str],
    driver: Mapping[str, Any],
    executor: Mapping[str, Any],
    instances: int,
    spark_conf: Mapping[str, Any] | None = None,
    secret_env: Iterable[str] = (),
    service_account: str = "gdmix-spark",
    *,
    volumes: Iterable[Mapping[str, Any]] = (),
    labels: Mapping[str, str] | None = None,
    spark_version: str = SPARK_VERSION,
    image_pull_policy: str = "IfNotPresent",
    time_to_live_seconds: int | None = DEFAULT_TTL_SECONDS,
) -> dict[str, Any]:
    """A Python SparkApplication in cluster mode (the operator runs spark-submit for us).

    ``driver`` / ``executor`` are the operator's SparkPodSpec fields the caller chooses (e.g.
    ``{"cores": 1, "memory": "2g"}``); security contexts, ``envFrom`` of ``secret_env``, the
    driver's service account (``gdmix-spark``: the driver creates its executor pods, so it is the
    one pod that needs API access) and the executor count are set here, and passing them in the
    dicts is an error rather than a silent override. ``restartPolicy: Never``: a failed prep is
    retried by the pipeline, which sees the failure at once.
    """
    _check_count("instances", instances)
    _check_job_name(name, "-ui-svc")
    conf = {}
    for key, value in (spark_conf or {}).items():
        if isinstance(value, (dict, list, tuple, set)) or value is None:
            raise ValueError(f"spark_conf['{key}'] must be a scalar, got {value!r}")
        conf[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    secrets = list(secret_env)
    driver_spec = _spark_pod("driver", driver, secrets, labels)
    driver_spec["serviceAccount"] = service_account
    executor_spec = _spark_pod("executor", executor, secrets, labels)
    executor_spec["instances"] = instances
    spec: dict[str, Any] = {
        "type": "Python",
        "pythonVersion": "3",
        "mode": "cluster",
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "mainApplicationFile": main_application_file,
        "arguments": [str(a) for a in arguments],
        "sparkVersion": spark_version,
        "restartPolicy": {"type": "Never"},
        "driver": driver_spec,
        "executor": executor_spec,
    }
    if conf:
        spec["sparkConf"] = conf
    volumes = [copy.deepcopy(dict(v)) for v in volumes]
    if volumes:  # mounted per pod by the driver/executor dicts' volumeMounts
        spec["volumes"] = volumes
    if time_to_live_seconds is not None:
        spec["timeToLiveSeconds"] = time_to_live_seconds
    return {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": _metadata(name, namespace, labels),
        "spec": spec,
    }
