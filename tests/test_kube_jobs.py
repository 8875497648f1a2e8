"""gdmix.kube.runner.run_job against a scripted fake Kubernetes API (no cluster, no real sleeping)."""

from __future__ import annotations

import inspect
import os
import re
import signal

import pytest
from kubernetes.client import (
    CoreV1Api,
    CustomObjectsApi,
    V1Container,
    V1ObjectMeta,
    V1Pod,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
)
from kubernetes.client.exceptions import ApiException

from gdmix.errors import GdmixError
from gdmix.kube import manifests as m
from gdmix.kube.runner import JobConflict, JobError, JobFailed, JobTimeout, job_kind, job_outcome, run_job

# --- fakes -------------------------------------------------------------------------------------


def check_call(real_class, method: str, *args, **kwargs) -> None:
    """Fail when a call would not be accepted by the real kubernetes client method.

    The generated client takes optional parameters as ``**kwargs`` and rejects unknown ones at
    call time; their names are listed in the method's docstring.
    """
    real = getattr(real_class, method)
    inspect.signature(real).bind(None, *args, **kwargs)
    known = set(re.findall(r":param \w+ (\w+):", real.__doc__))
    unknown = set(kwargs) - known
    assert not unknown, f"{method} has no parameter(s) {unknown}"


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message}


RUNNING = {"conditions": [condition("Created"), condition("Running")]}
SUCCEEDED = {"conditions": [condition("Created"), condition("Running", "False"), condition("Succeeded")]}


def failed(
    reason: str = "TFJobFailed", message: str = "TFJob gdmix/x has failed because 1 Worker replica(s) failed."
) -> dict:
    return {"conditions": [condition("Running", "False"), condition("Failed", reason=reason, message=message)]}


class FakeCustomObjects:
    """CustomObjectsApi: serves a scripted sequence of statuses (the last one repeats)."""

    def __init__(self, statuses, create_error: ApiException | None = None, on_get=None):
        self.statuses = list(statuses)
        self.create_error = create_error
        self.on_get = on_get
        self.created, self.deleted, self.gets = [], [], 0

    def create_namespaced_custom_object(self, *args, **kwargs):
        check_call(CustomObjectsApi, "create_namespaced_custom_object", *args, **kwargs)
        return self._create(*args, **kwargs)

    def _create(self, group, version, namespace, plural, body):
        if self.create_error is not None:
            raise self.create_error
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, *args, **kwargs):
        check_call(CustomObjectsApi, "get_namespaced_custom_object", *args, **kwargs)
        return self._get(*args, **kwargs)

    def _get(self, group, version, namespace, plural, name):
        assert self.created, "get before create"
        self.gets += 1
        if self.on_get is not None:
            self.on_get(self.gets)
        item = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(item, Exception):
            raise item
        return {"metadata": {"name": name, "namespace": namespace}, "status": item}

    def delete_namespaced_custom_object(self, *args, **kwargs):
        check_call(CustomObjectsApi, "delete_namespaced_custom_object", *args, **kwargs)
        self._delete(*args, **kwargs)

    def _delete(self, group, version, namespace, plural, name, propagation_policy=None):
        self.deleted.append((group, version, namespace, plural, name, propagation_policy))


def pod(name: str, phase: str = "Running", container: str = "tensorflow") -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(name=name),
        spec=V1PodSpec(containers=[V1Container(name=container)]),
        status=V1PodStatus(phase=phase),
    )


class FakeCoreV1:
    """CoreV1Api: pods per poll (the last list repeats); logs per pod as successive full texts."""

    def __init__(self, pods_per_poll=((),), logs=None):
        self.pods_per_poll = list(pods_per_poll)
        self.logs = {k: list(v) for k, v in (logs or {}).items()}
        self.selectors, self.log_reads = [], []

    def list_namespaced_pod(self, *args, **kwargs):
        check_call(CoreV1Api, "list_namespaced_pod", *args, **kwargs)
        return self._list(*args, **kwargs)

    def _list(self, namespace, label_selector=None):
        self.selectors.append(label_selector)
        pods = self.pods_per_poll.pop(0) if len(self.pods_per_poll) > 1 else self.pods_per_poll[0]
        return V1PodList(items=list(pods))

    def read_namespaced_pod_log(self, *args, **kwargs):
        check_call(CoreV1Api, "read_namespaced_pod_log", *args, **kwargs)
        return self._read_log(*args, **kwargs)

    def _read_log(self, name, namespace, container=None):
        self.log_reads.append((name, container))
        texts = self.logs.get(name) or [""]
        item = texts.pop(0) if len(texts) > 1 else texts[0]
        if isinstance(item, Exception):
            raise item
        return item


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


def tf_manifest(name: str = "gdmix-fe") -> dict:
    pod_settings = m.PodSettings(image="localhost/gdmix-trainer:0.1.0", command=["python", "-m", "gdmix"])
    return m.tfjob(name, "gdmix", pod_settings, workers=2)


def run(manifest, custom, core=None, lines=None, **kwargs):
    """run_job on fakes; a fake-clock timeout makes a wrong implementation fail instead of hang."""
    fake_time = kwargs.pop("fake_time", None) or FakeTime()
    kwargs.setdefault("timeout_seconds", 600)
    lines = [] if lines is None else lines
    result = run_job(
        manifest,
        custom_api=custom,
        core_api=core or FakeCoreV1(),
        poll_seconds=1.0,
        log=lines.append,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        **kwargs,
    )
    return result, lines


# --- outcomes ----------------------------------------------------------------------------------


def test_success_returns_the_final_status_and_deletes_the_job():
    custom = FakeCustomObjects([{}, RUNNING, RUNNING, SUCCEEDED])
    fake_time = FakeTime()
    status, lines = run(tf_manifest(), custom, fake_time=fake_time)
    assert status == SUCCEEDED
    ((group, version, namespace, plural, body),) = custom.created
    assert (group, version, namespace, plural) == ("kubeflow.org", "v1", "gdmix", "tfjobs")
    assert body["metadata"]["name"] == "gdmix-fe"
    assert custom.gets == 4 and fake_time.sleeps == [1.0, 1.0, 1.0]
    assert custom.deleted == [("kubeflow.org", "v1", "gdmix", "tfjobs", "gdmix-fe", "Background")]
    assert lines[0] == "created TFJob gdmix/gdmix-fe" and "TFJob gdmix/gdmix-fe succeeded" in lines


def test_failure_raises_at_once_with_the_operators_reason_and_deletes():
    custom = FakeCustomObjects([RUNNING, failed(), RUNNING])
    fake_time = FakeTime()
    with pytest.raises(JobFailed) as caught:
        run(tf_manifest(), custom, fake_time=fake_time)
    error = caught.value
    assert isinstance(error, GdmixError)
    assert error.reason == "TFJobFailed" and "1 Worker replica(s) failed" in str(error)
    assert custom.gets == 2 and len(fake_time.sleeps) == 1  # no waiting once the operator decided
    assert len(custom.deleted) == 1


def test_failed_wins_over_a_stale_succeeded_condition():
    status = {"conditions": [condition("Succeeded"), condition("Failed", reason="Evicted")]}
    assert job_outcome("TFJob", {"status": status})[:2] == ("Failed", "Evicted")
    assert job_outcome("TFJob", {"status": {"conditions": [condition("Succeeded", "False")]}}) is None
    assert job_outcome("TFJob", {}) is None


def test_timeout_raises_and_deletes():
    custom = FakeCustomObjects([RUNNING])
    fake_time = FakeTime()
    with pytest.raises(JobTimeout, match="did not finish within 10 s"):
        run(tf_manifest(), custom, fake_time=fake_time, timeout_seconds=10)
    assert fake_time.now == 10.0
    assert len(custom.deleted) == 1


def test_an_existing_job_of_the_same_name_is_an_error_and_left_alone():
    custom = FakeCustomObjects([RUNNING], create_error=ApiException(status=409, reason="Conflict"))
    with pytest.raises(JobConflict, match="already exists") as caught:
        run(tf_manifest(), custom)
    assert "kubectl delete tfjobs gdmix-fe -n gdmix" in str(caught.value)
    assert custom.gets == 0 and custom.deleted == []


def test_create_errors_say_what_is_missing():
    forbidden = FakeCustomObjects([RUNNING], create_error=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(JobError, match="gdmix-launcher Role"):
        run(tf_manifest(), forbidden)
    no_crd = FakeCustomObjects([RUNNING], create_error=ApiException(status=404, reason="Not Found"))
    with pytest.raises(JobError, match="operator installed"):
        run(tf_manifest(), no_crd)
    assert forbidden.deleted == no_crd.deleted == []


def test_delete_false_keeps_the_job():
    custom = FakeCustomObjects([SUCCEEDED])
    run(tf_manifest(), custom, delete=False)
    assert custom.deleted == []


def test_transient_api_errors_are_retried_then_given_up():
    flaky = FakeCustomObjects([ApiException(status=503), ApiException(status=500), SUCCEEDED])
    status, lines = run(tf_manifest(), flaky)
    assert status == SUCCEEDED and sum("retrying" in line for line in lines) == 2
    down = FakeCustomObjects([ApiException(status=503)])
    with pytest.raises(ApiException):
        run(tf_manifest(), down)
    assert down.gets == 6 and len(down.deleted) == 1
    gone = FakeCustomObjects([RUNNING, ApiException(status=404)])
    with pytest.raises(JobError, match="disappeared"):
        run(tf_manifest(), gone)


def test_sigterm_from_a_cancelled_run_still_deletes_the_job():
    def cancel(gets):
        if gets == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    custom = FakeCustomObjects([RUNNING], on_get=cancel)
    with pytest.raises(SystemExit) as caught:
        run(tf_manifest(), custom)
    assert caught.value.code == 128 + signal.SIGTERM
    assert len(custom.deleted) == 1
    assert signal.getsignal(signal.SIGTERM) is before


# --- logs --------------------------------------------------------------------------------------


def test_pod_logs_are_streamed_once_each_with_the_pod_name():
    w0, w1 = "gdmix-fe-worker-0", "gdmix-fe-worker-1"
    core = FakeCoreV1(
        pods_per_poll=[
            [],
            [pod(w0), pod(w1, "Pending")],
            [pod(w0), pod(w1)],
            [pod(w0, "Succeeded"), pod(w1, "Succeeded")],
        ],
        logs={
            w0: [
                "step 1\nstep 2\nhalf",
                "step 1\nstep 2\nhalf a line\nstep 3\n",
                "step 1\nstep 2\nhalf a line\nstep 3\ndone",
            ],
            w1: [ApiException(status=400, reason="ContainerCreating"), "worker 1 up\n", "worker 1 up\nbye\n"],
        },
    )
    custom = FakeCustomObjects([RUNNING, RUNNING, RUNNING, SUCCEEDED])
    _, lines = run(tf_manifest(), custom, core)
    streamed = [line for line in lines if line.startswith("[")]
    assert streamed == [
        f"[{w0}] step 1",
        f"[{w0}] step 2",
        f"[{w0}] half a line",
        f"[{w0}] step 3",
        f"[{w1}] worker 1 up",
        f"[{w0}] done",
        f"[{w1}] bye",
    ]
    assert not any(line.startswith("warning") for line in lines)  # a pod not started yet is no error
    assert set(core.selectors) == {"training.kubeflow.org/job-name=gdmix-fe"}
    assert {c for _, c in core.log_reads} == {"tensorflow"}


def test_logs_of_a_failed_job_are_printed_before_the_error():
    w0 = "gdmix-fe-worker-0"
    core = FakeCoreV1(pods_per_poll=[[pod(w0, "Failed")]], logs={w0: ["loading\nTraceback: boom"]})
    custom = FakeCustomObjects([failed()])
    lines: list[str] = []
    with pytest.raises(JobFailed):
        run(tf_manifest(), custom, core, lines)
    assert lines == [
        "created TFJob gdmix/gdmix-fe",
        f"[{w0}] loading",
        f"[{w0}] Traceback: boom",
        "deleted TFJob gdmix/gdmix-fe",
    ]


def test_pod_listing_errors_warn_once_and_do_not_fail_the_job():
    class Unreachable(FakeCoreV1):
        def _list(self, namespace, label_selector=None):
            raise ConnectionResetError("connection reset by peer")

    custom = FakeCustomObjects([RUNNING, RUNNING, SUCCEEDED])
    status, lines = run(tf_manifest(), custom, Unreachable())
    assert status == SUCCEEDED
    assert [line for line in lines if line.startswith("warning")] == [
        "warning: cannot list the job's pods (connection reset by peer); their logs are not shown"
    ]


def test_log_read_errors_warn_once_and_do_not_fail_the_job():
    w0 = "gdmix-fe-worker-0"
    core = FakeCoreV1(pods_per_poll=[[pod(w0)]], logs={w0: [ApiException(status=403, reason="Forbidden")]})
    custom = FakeCustomObjects([RUNNING, RUNNING, SUCCEEDED])
    status, lines = run(tf_manifest(), custom, core)
    assert status == SUCCEEDED
    assert sum(line.startswith("warning: cannot read the log") for line in lines) == 1


# --- other kinds -------------------------------------------------------------------------------


def spark_manifest():
    return m.spark_application(
        "gdmix-prep",
        "gdmix",
        "localhost/gdmix-spark:0.1.0",
        "local:///app/submit.py",
        ["/cfg.yaml"],
        {"cores": 1},
        {"cores": 1},
        2,
    )


def test_spark_application_success_and_driver_logs():
    driver = "gdmix-prep-driver"
    core = FakeCoreV1(
        pods_per_poll=[[pod(driver, container="spark-kubernetes-driver")]], logs={driver: ["prep ok\n"]}
    )
    custom = FakeCustomObjects(
        [{"applicationState": {"state": "SUBMITTED"}}, {"applicationState": {"state": "COMPLETED"}}]
    )
    status, lines = run(spark_manifest(), custom, core)
    assert status["applicationState"]["state"] == "COMPLETED"
    assert custom.created[0][:4] == ("sparkoperator.k8s.io", "v1beta2", "gdmix", "sparkapplications")
    assert set(core.selectors) == {"sparkoperator.k8s.io/app-name=gdmix-prep,spark-role=driver"}
    assert f"[{driver}] prep ok" in lines


@pytest.mark.parametrize("state", ["FAILED", "SUBMISSION_FAILED"])
def test_spark_application_failure_carries_the_error_message(state):
    custom = FakeCustomObjects([{"applicationState": {"state": state, "errorMessage": "driver exited 1"}}])
    with pytest.raises(JobFailed, match=f"{state}: driver exited 1"):
        run(spark_manifest(), custom)
    assert len(custom.deleted) == 1
    assert job_outcome("SparkApplication", {"status": {"applicationState": {"state": "FAILING"}}}) is None


def test_mpijob_uses_the_v2beta1_api():
    settings = m.PodSettings(image="localhost/gdmix-detext:0.1.0", command=["horovodrun", "-np", "2"])
    manifest = m.mpijob("gdmix-detext", "gdmix", settings, settings, workers=2)
    custom = FakeCustomObjects([SUCCEEDED])
    run(manifest, custom)
    assert custom.created[0][:4] == ("kubeflow.org", "v2beta1", "gdmix", "mpijobs")
    assert custom.deleted[0][3] == "mpijobs"


def test_bad_manifests_and_half_given_apis_are_rejected():
    with pytest.raises(ValueError, match="apiVersion"):
        job_kind({"apiVersion": "kubeflow.org/v1", "kind": "MPIJob"})
    with pytest.raises(ValueError, match="cannot run"):
        job_kind({"apiVersion": "batch/v1", "kind": "Job"})
    with pytest.raises(ValueError, match="both"):
        run_job(tf_manifest(), custom_api=FakeCustomObjects([RUNNING]))


def test_the_fakes_reject_calls_the_real_client_would_reject():
    with pytest.raises(AssertionError, match="propagationPolicy"):
        args = ("g", "v", "ns", "p", "n")
        check_call(CustomObjectsApi, "delete_namespaced_custom_object", *args, propagationPolicy="Background")
    with pytest.raises(TypeError):
        check_call(CoreV1Api, "list_namespaced_pod")


def test_a_pod_that_can_never_start_fails_the_job_at_once():
    """A missing Secret (or key) keeps a container in CreateContainerConfigError forever: the
    launcher fails with the kubelet's message instead of waiting for its timeout."""
    from kubernetes.client import V1ContainerState, V1ContainerStateWaiting, V1ContainerStatus

    stuck = pod("x-worker-0", phase="Pending")
    stuck.status.container_statuses = [V1ContainerStatus(
        name="tensorflow", image="i", image_id="", ready=False, restart_count=0,
        state=V1ContainerState(waiting=V1ContainerStateWaiting(
            reason="CreateContainerConfigError", message='secret "gdmix-object-store" not found')))]
    custom, core = FakeCustomObjects([RUNNING]), FakeCoreV1([[stuck]])
    with pytest.raises(JobFailed, match='PodCannotStart.*x-worker-0/tensorflow.*secret "gdmix-object-store" not found'):
        run_job(tf_manifest(), custom_api=custom, core_api=core, poll_seconds=0, timeout_seconds=60, log=lambda _: None)
    assert custom.deleted
