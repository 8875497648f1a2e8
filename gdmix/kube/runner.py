"""Run one TFJob / MPIJob / SparkApplication to its end: create, watch, stream logs, delete.

This is the body of every launcher component. A job whose operator says ``Failed`` raises
:class:`JobFailed` at the next poll (a step must not outlive the job it waits for), with the
operator's reason and message, after printing the last log lines of its pods.
The job object is deleted in a ``finally`` (also on timeout, on errors and on SIGTERM, which is
how KFP cancels a run), so nothing keeps running after the launcher is gone. A job of the same
name that already exists is somebody else's: it is reported, never adopted or deleted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from gdmix.errors import GdmixError


class JobError(GdmixError):
    """A launched job could not be run to success."""


class JobFailed(JobError):
    """The operator marked the job failed; ``reason``/``message`` are the operator's."""

    def __init__(self, kind: str, namespace: str, name: str, reason: str, message: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        self.reason, self.message = reason, message
        detail = ": ".join(p for p in (reason, message) if p) or "no reason given"
        super().__init__(f"{kind} {namespace}/{name} failed: {detail} (its pods' logs are above)")


class JobTimeout(JobError):
    """The job did not finish within the launcher's timeout (it was deleted)."""


class JobConflict(JobError):
    """A resource with the job's name already exists; it is left alone."""


@dataclass(frozen=True)
class JobKind:
    """Where a custom resource kind lives in the API, and how to find its pods."""

    kind: str
    group: str
    version: str
    plural: str
    pod_selector: str  # label selector; ``{name}`` is the job's name

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


#: The kinds gdmix launches. Pod labels are the operators': the training operator and
#: mpi-operator label every pod with ``training.kubeflow.org/job-name`` (for an MPIJob the
#: launcher's log holds every rank's output; workers only run sshd). Of a Spark application
#: only the driver is followed: it holds the application's output, executors are noise.
KINDS: dict[str, JobKind] = {
    k.kind: k
    for k in (
        JobKind("TFJob", "kubeflow.org", "v1", "tfjobs", "training.kubeflow.org/job-name={name}"),
        JobKind("MPIJob", "kubeflow.org", "v2beta1", "mpijobs", "training.kubeflow.org/job-name={name}"),
        JobKind(
            "SparkApplication",
            "sparkoperator.k8s.io",
            "v1beta2",
            "sparkapplications",
            "sparkoperator.k8s.io/app-name={name},spark-role=driver",
        ),
    )
}

#: SparkApplication states that end the application in failure (FAILING may still be retried
#: by the operator's restart policy, so it is not final).
SPARK_FAILED_STATES = ("FAILED", "SUBMISSION_FAILED")

#: Consecutive transient API errors (5xx, 429, connection) tolerated while polling.
MAX_TRANSIENT_ERRORS = 5

#: Where the kubelet writes a pod's own namespace (with its service-account token).
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

#: Reasons a container waits that no amount of waiting fixes: a missing Secret, ConfigMap or
#: key (the object-store credentials), an image that cannot be pulled or named. The job fails
#: at once with the kubelet's message instead of hanging until the launcher's timeout.
UNRECOVERABLE_WAITING = ("CreateContainerConfigError", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


def own_namespace(path: str | None = None) -> str:
    """The namespace this process's pod runs in; outside a pod, the kubeconfig context's namespace.

    A launcher creates its jobs there by default: it is where KFP runs the step (standalone:
    ``kubeflow``; multi-user: the profile namespace) and where its service account is bound.
    """
    try:
        with open(path or SERVICE_ACCOUNT_NAMESPACE) as handle:
            namespace = handle.read().strip()
        if namespace:
            return namespace
    except OSError:
        pass
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()
    except (config.ConfigException, OSError) as exc:
        raise JobError(f"cannot tell which namespace to launch jobs in: not in a pod ({path or SERVICE_ACCOUNT_NAMESPACE} is missing) and no "
                       f"kubeconfig ({exc}); set pipeline.namespace") from None
    return (active or {}).get("context", {}).get("namespace") or "default"


def job_kind(manifest: Mapping[str, Any]) -> JobKind:
    """The :class:`JobKind` of a rendered manifest (its kind and apiVersion must match)."""
    kind = KINDS.get(manifest.get("kind", ""))
    if kind is None:
        raise ValueError(f"cannot run a '{manifest.get('kind')}' (one of: {', '.join(KINDS)})")
    if manifest.get("apiVersion") != kind.api_version:
        raise ValueError(f"{kind.kind} must have apiVersion {kind.api_version}, got {manifest.get('apiVersion')}")
    return kind


def job_outcome(manifest_kind: str, obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """``("Succeeded" | "Failed", reason, message)`` once the operator decided, else ``None``."""
    status = obj.get("status") or {}
    if manifest_kind == "SparkApplication":
        state = status.get("applicationState") or {}
        value = state.get("state") or ""
        if value == "COMPLETED":
            return "Succeeded", value, state.get("errorMessage") or ""
        if value in SPARK_FAILED_STATES:
            return "Failed", value, state.get("errorMessage") or ""
        return None
    decided = {
        c.get("type"): c
        for c in status.get("conditions") or []
        if c.get("type") in ("Succeeded", "Failed") and str(c.get("status")) == "True"
    }
    for verdict in ("Failed", "Succeeded"):
        if verdict in decided:
            condition = decided[verdict]
            return verdict, condition.get("reason") or "", condition.get("message") or ""
    return None


def _transient(exc: Exception) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is not None and (exc.status >= 500 or exc.status == 429)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or type(exc).__module__.startswith("urllib3")


def _api_detail(exc: ApiException) -> str:
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
    return f"HTTP {exc.status} {exc.reason or ''}".strip() + (f": {body}" if body else "")


class _LogFollower:
    """Prints the new lines of the job's pods' logs, each prefixed with ``[pod]``.

    Kubernetes has no "log since line N" call, so each poll reads the whole log of every pod and
    prints what comes after the lines already printed. Only complete lines are printed while a
    pod runs (a line still being written waits for the next poll); on the final read the
    remainder is printed too. Logs of pods that have not started yet are skipped quietly.
    """

    def __init__(self, core_api: Any, namespace: str, selector: str, log: Callable[[str], Any]) -> None:
        self.core_api, self.namespace, self.selector, self.log = core_api, namespace, selector, log
        self.printed: dict[str, int] = {}
        self.warned: set[str] = set()

    def poll(self, final: bool = False) -> list[str]:
        """Print new log lines; returns why any pod can never start (see :data:`UNRECOVERABLE_WAITING`)."""
        try:
            pods = self.core_api.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        except Exception as exc:  # noqa: BLE001 - showing logs must never fail the job
            detail = _api_detail(exc) if isinstance(exc, ApiException) else str(exc)
            self._warn("list", f"cannot list the job's pods ({detail}); their logs are not shown")
            return []
        stuck = []
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            self._follow(pod, final)
            stuck += _unrecoverable(pod)
        return stuck

    def _follow(self, pod: Any, final: bool) -> None:
        name = pod.metadata.name
        kwargs = {}
        containers = pod.spec.containers if pod.spec is not None else None
        if containers:
            kwargs["container"] = containers[0].name
        try:
            text = self.core_api.read_namespaced_pod_log(name, self.namespace, **kwargs)
        except ApiException as exc:
            if exc.status not in (400, 404):  # 400: container not started yet; 404: pod gone
                self._warn(name, f"cannot read the log of pod {name} ({_api_detail(exc)})")
            return
        except Exception as exc:  # noqa: BLE001 - showing logs must never fail the job
            self._warn(name, f"cannot read the log of pod {name} ({exc})")
            return
        lines = (text or "").split("\n")
        finished = final or (pod.status is not None and pod.status.phase in ("Succeeded", "Failed"))
        complete = lines if finished and lines[-1] else lines[:-1]
        done = self.printed.get(name, 0)
        if len(complete) < done:  # the log restarted (container restart or rotation)
            self.log(f"[{name}] (log restarted)")
            done = 0
        for line in complete[done:]:
            self.log(f"[{name}] {line}")
        self.printed[name] = len(complete)

    def _warn(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.log(f"warning: {message}")


def _unrecoverable(pod: Any) -> list[str]:
    """``pod/container: reason: message`` for each container stuck in :data:`UNRECOVERABLE_WAITING`."""
    statuses = (getattr(pod.status, "container_statuses", None) if pod.status is not None else None) or []
    found = []
    for status in statuses:
        waiting = getattr(getattr(status, "state", None), "waiting", None)
        if waiting is not None and waiting.reason in UNRECOVERABLE_WAITING:
            found.append(f"{pod.metadata.name}/{status.name}: {waiting.reason}: {waiting.message or ''}".rstrip(": "))
    return found


def _apis(custom_api: Any, core_api: Any) -> tuple[Any, Any]:
    if custom_api is not None and core_api is not None:
        return custom_api, core_api
    if custom_api is not None or core_api is not None:
        raise ValueError("pass both custom_api and core_api, or neither")
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise JobError(
                f"no Kubernetes configuration: not running in a pod and no usable kubeconfig ({exc})"
            ) from None
    return client.CustomObjectsApi(), client.CoreV1Api()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM (KFP cancelling the run) into SystemExit so the ``finally`` deletes the job."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(
    manifest: Mapping[str, Any],
    *,
    custom_api: Any = None,
    core_api: Any = None,
    poll_seconds: float = 5.0,
    timeout_seconds: float | None = None,
    log: Callable[[str], Any] = print,
    delete: bool = True,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Create ``manifest``, wait for its end while streaming pod logs, and return its ``status``.

    Raises :class:`JobFailed` as soon as the operator reports failure, :class:`JobTimeout` after
    ``timeout_seconds``, :class:`JobConflict` when the name is taken. The resource is deleted on
    every way out once created (unless ``delete=False``); a resource this call did not create is
    never deleted. Without ``custom_api``/``core_api`` the Kubernetes configuration is loaded
    (in-cluster service account first, then kubeconfig). ``sleep`` and ``clock`` exist for tests.
    """
    kind = job_kind(manifest)
    metadata = manifest.get("metadata") or {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not name or not namespace:
        raise ValueError("the manifest needs metadata.name and metadata.namespace")
    custom_api, core_api = _apis(custom_api, core_api)
    where = dict(group=kind.group, version=kind.version, namespace=namespace, plural=kind.plural)
    label = f"{kind.kind} {namespace}/{name}"

    with _sigterm_raises():
        _create(custom_api, where, manifest, label, kind)
        log(f"created {label}")
        try:
            return _wait(
                custom_api, where, name, kind, label, core_api, log, poll_seconds, timeout_seconds, sleep, clock
            )
        finally:
            if delete:
                _delete(custom_api, where, name, label, log)


def _create(custom_api: Any, where: dict, manifest: Mapping[str, Any], label: str, kind: JobKind) -> None:
    try:
        custom_api.create_namespaced_custom_object(body=dict(manifest), **where)
    except ApiException as exc:
        if exc.status == 409:
            raise JobConflict(
                f"{label} already exists. gdmix does not take over or delete a job it did not create: "
                f"delete it yourself (kubectl delete {kind.plural} {label.split('/')[-1]} -n {where['namespace']}) "
                f"or run under another name"
            ) from None
        if exc.status == 403:
            raise JobError(
                f"not allowed to create {label} ({_api_detail(exc)}); the launcher's service account needs "
                f"the gdmix-launcher Role in namespace {where['namespace']} (manifests/standalone binds it to KFP's "
                f"pipeline-runner, manifests/multi-user to a profile's default-editor)"
            ) from None
        if exc.status == 404:
            raise JobError(
                f"the cluster does not serve {kind.plural}.{kind.group}/{kind.version}: is its operator installed? "
                f"({_api_detail(exc)})"
            ) from None
        raise JobError(f"cannot create {label}: {_api_detail(exc)}") from None


def _wait(
    custom_api: Any,
    where: dict,
    name: str,
    kind: JobKind,
    label: str,
    core_api: Any,
    log: Callable[[str], Any],
    poll_seconds: float,
    timeout_seconds: float | None,
    sleep: Callable[[float], Any],
    clock: Callable[[], float],
) -> dict[str, Any]:
    deadline = None if timeout_seconds is None else clock() + timeout_seconds
    logs = _LogFollower(core_api, where["namespace"], kind.pod_selector.format(name=name), log)
    errors = 0
    while True:
        try:
            obj = custom_api.get_namespaced_custom_object(name=name, **where)
            errors = 0
        except Exception as exc:  # noqa: BLE001 - transient API errors are retried, others re-raised
            if isinstance(exc, ApiException) and exc.status == 404:
                raise JobError(f"{label} disappeared while running (deleted by someone else?)") from None
            errors += 1
            if not _transient(exc) or errors > MAX_TRANSIENT_ERRORS:
                raise
            log(f"warning: reading {label} failed ({exc}); retrying")
            obj = None
        outcome = job_outcome(kind.kind, obj) if obj is not None else None
        stuck = logs.poll(final=outcome is not None)
        if outcome is None and stuck:
            raise JobFailed(kind.kind, where["namespace"], name, "PodCannotStart", "; ".join(stuck))
        if outcome is not None:
            verdict, reason, message = outcome
            if verdict == "Failed":
                raise JobFailed(kind.kind, where["namespace"], name, reason, message)
            log(f"{label} succeeded")
            return dict(obj.get("status") or {})
        if deadline is not None and clock() >= deadline:
            raise JobTimeout(f"{label} did not finish within {timeout_seconds:g} s")
        sleep(poll_seconds)


def _delete(custom_api: Any, where: dict, name: str, label: str, log: Callable[[str], Any]) -> None:
    try:
        custom_api.delete_namespaced_custom_object(name=name, propagation_policy="Background", **where)
        log(f"deleted {label}")
    except ApiException as exc:
        if exc.status != 404:
            log(f"warning: could not delete {label} ({_api_detail(exc)}); delete it by hand")
    except Exception as exc:  # noqa: BLE001 - never mask the error that brought us here
        log(f"warning: could not delete {label} ({exc}); delete it by hand")
