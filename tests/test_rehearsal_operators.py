"""Cluster rehearsal of gdmix.kube.jobs.run_job: the unmodified launcher code, in the launcher
image, against the fake API server of rehearsal/ whose fake operators run the rendered jobs as
containers of the rendered images (rehearsal/README.md).

Needs a Docker daemon (DOCKER_HOST) with user-defined bridge networks and the launcher and
trainer images (``IMAGES="launcher trainer" make images``); the S3 image is built on first use.
Skipped without them, unless GDMIX_CONTAINER_TESTS=1 or GDMIX_REHEARSAL=1: then it fails.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid

import pytest

REQUIRED = os.environ.get("GDMIX_CONTAINER_TESTS") == "1" or os.environ.get("GDMIX_REHEARSAL") == "1"
NS = "gdmix"
SECRET = "gdmix-object-store"
ACCESS_KEY, SECRET_KEY = "AKIAREHEARSAL0000001", "rehearsal-" + uuid.uuid4().hex
BUCKET = "gdmix-rehearsal"


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"GDMIX_CONTAINER_TESTS/GDMIX_REHEARSAL=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set GDMIX_REHEARSAL=1 to make this a failure)")


@pytest.fixture(scope="module")
def images():
    from gdmix.images import image
    from rehearsal.dockerenv import RehearsalUnavailable, docker_client, require_image

    try:
        client = docker_client()
        for role in ("launcher", "trainer"):
            require_image(client, image(role), f'build it with: IMAGES="{role}" make images')
    except RehearsalUnavailable as exc:
        _unavailable(str(exc))
    return {"launcher": image("launcher"), "trainer": image("trainer")}


@pytest.fixture(scope="module")
def s3(images):
    from rehearsal.dockerenv import RehearsalUnavailable
    from rehearsal.objectstore import S3Container

    try:
        with S3Container(ACCESS_KEY, SECRET_KEY) as store:
            store.client().create_bucket(Bucket=BUCKET)
            yield store
    except RehearsalUnavailable as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="module")
def cluster(s3):
    from rehearsal.cluster import FakeCluster

    with FakeCluster(secrets={(NS, SECRET): s3.env(internal=True)}, namespaces=[NS, "kubeflow"]) as fake:
        yield fake
        assert not fake.errors, "the fake operators raised:\n" + "\n".join(fake.errors)


def _launch(cluster, image: str, manifest: dict, timeout_seconds: float = 240) -> tuple[int, str]:
    """run_job(manifest) in a launcher container running as KFP standalone's step account."""
    script = textwrap.dedent(f"""
        import json, os, sys
        from gdmix.kube.jobs import JobFailed, JobTimeout, run_job
        try:
            status = run_job(json.loads(os.environ["MANIFEST"]), poll_seconds=1, timeout_seconds={timeout_seconds})
        except JobFailed as exc:
            print("JOB FAILED:", exc.reason, "|", exc.message, flush=True)
            sys.exit(3)
        except JobTimeout as exc:
            print("JOB TIMEOUT:", exc, flush=True)
            sys.exit(4)
        print("STATUS", json.dumps(status), flush=True)
    """)
    return cluster.run_in_pod(image, ["python", "-c", script], env={"MANIFEST": json.dumps(manifest)},
                              timeout=timeout_seconds + 120)


def _tfjob(name: str, image: str, code: str, workers: int = 2) -> dict:
    from gdmix.kube.manifests import PodSettings, tfjob

    return tfjob(name, NS, PodSettings(image=image, command=["python", "-c", code], secret_env=[SECRET]), workers)


def _no_containers_of(cluster, manifest_name: str) -> bool:
    return not [c for c in cluster.containers() if f"_{manifest_name}-" in c.name]


WORKER = textwrap.dedent("""
    import json, os, socket
    from gdmix.io import fs
    config = json.loads(os.environ["TF_CONFIG"])
    index = config["task"]["index"]
    assert config["task"]["type"] == "worker" and config["environment"] == "cloud", config
    hosts = config["cluster"]["worker"]
    # every peer's Service name resolves; this host is the one TF_CONFIG names for this task
    addresses = {h: socket.gethostbyname(h.rsplit(":", 1)[0]) for h in hosts}
    own = socket.gethostbyname(socket.gethostname())
    assert addresses[hosts[index]] == own, (addresses, own)
    assert os.getuid() == 1000, os.getuid()
    fs.write_text(f"s3://BUCKET/RUN/worker-{index}.json", json.dumps({"tf_config": config, "addresses": addresses}))
    print("worker", index, "wrote its part", flush=True)
""")


def test_tfjob_two_workers_write_to_the_object_store(cluster, s3, images):
    name = "rehearse-tf-" + uuid.uuid4().hex[:5]
    code = WORKER.replace("BUCKET", BUCKET).replace("RUN", name)
    manifest = _tfjob(name, images["trainer"], code)
    status, log = _launch(cluster, images["launcher"], manifest)
    assert status == 0, log
    assert f"created TFJob {NS}/{name}" in log and f"TFJob {NS}/{name} succeeded" in log, log
    assert f"[{name}-worker-0] worker 0 wrote its part" in log and f"[{name}-worker-1] worker 1 wrote its part" in log
    assert f"deleted TFJob {NS}/{name}" in log
    expected = [f"{name}-worker-{i}.{NS}.svc:2222" for i in range(2)]
    for i in range(2):
        body = json.loads(s3.client().get_object(Bucket=BUCKET, Key=f"{name}/worker-{i}.json")["Body"].read())
        assert body["tf_config"] == {"cluster": {"worker": expected}, "task": {"type": "worker", "index": i},
                                     "environment": "cloud"}
    statuses = json.loads(log.split("STATUS ", 1)[1].splitlines()[0])
    assert [c["type"] for c in statuses["conditions"] if c["status"] == "True"] == ["Created", "Succeeded"]
    assert cluster.wait_for(lambda: _no_containers_of(cluster, name), timeout=30)


def test_tfjob_with_a_failing_worker_fails_with_the_operators_reason(cluster, images):
    name = "rehearse-fail-" + uuid.uuid4().hex[:5]
    code = ("import json, os, sys, time\n"
            "i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
            "print('worker', i, 'about to exit', 7 if i == 1 else 'sleep', flush=True)\n"
            "sys.exit(7) if i == 1 else time.sleep(300)\n")
    status, log = _launch(cluster, images["launcher"], _tfjob(name, images["trainer"], code))
    assert status == 3, log
    assert f"JOB FAILED: TFJobFailed | TFJob {NS}/{name} has failed because 1 Worker replica(s) failed." in log, log
    assert f"[{name}-worker-1] worker 1 about to exit 7" in log, log
    assert f"deleted TFJob {NS}/{name}" in log
    # cleanPodPolicy Running stopped worker 0, and the deletion removed everything
    assert cluster.wait_for(lambda: _no_containers_of(cluster, name), timeout=30)
    assert not cluster.objects()


def test_deleting_a_running_job_removes_its_containers(cluster, images):
    name = "rehearse-del-" + uuid.uuid4().hex[:5]
    code = "import time; print('up', flush=True); time.sleep(600)"
    status, log = _launch(cluster, images["launcher"], _tfjob(name, images["trainer"], code), timeout_seconds=8)
    assert status == 4, log  # JobTimeout: run_job deletes the job on its way out
    assert f"deleted TFJob {NS}/{name}" in log, log
    assert cluster.wait_for(lambda: _no_containers_of(cluster, name), timeout=30), \
        [c.name for c in cluster.containers()]
    assert not cluster.objects()


def test_the_api_server_enforces_the_repository_rbac_and_the_crd_schema(cluster, images):
    from kubernetes import client

    from gdmix.kube.jobs import JobError, run_job

    def apis(token):
        api_client = client.ApiClient(cluster.kube_config(token))
        return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)

    custom, core = apis(cluster.token())  # kubeflow/pipeline-runner, bound to the launcher Role in gdmix
    manifest = _tfjob("rehearse-rbac", images["trainer"], "print(1)")
    other = json.loads(json.dumps(manifest))
    other["metadata"]["namespace"] = "kubeflow"
    with pytest.raises(JobError, match="not allowed to create"):
        run_job(other, custom_api=custom, core_api=core, poll_seconds=0.1, log=lambda _: None)
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_secret(SECRET, NS)  # the launcher Role has no secrets
    assert err.value.status == 403
    invalid = json.loads(json.dumps(manifest))
    invalid["spec"]["tfReplicaSpecs"]["Worker"]["replica"] = 2
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object("kubeflow.org", "v1", NS, "tfjobs", invalid)
    assert err.value.status == 422 and "replica: unknown field" in err.value.body
    # authorization comes first, as in a real API server: a kind the Role does not name is 403 ...
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", manifest)
    assert err.value.status == 403
    # ... and 404 (no CRD serves it) for whom it is allowed
    with pytest.raises(client.ApiException) as err:
        apis(cluster.admin_token)[0].create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", manifest)
    assert err.value.status == 404
    with pytest.raises(client.ApiException) as err:
        apis("not-a-token")[0].get_namespaced_custom_object("kubeflow.org", "v1", NS, "tfjobs", "x")
    assert err.value.status == 401


def test_the_object_store_refuses_other_credentials(s3):
    import botocore.exceptions

    for access_key, secret_key in ((ACCESS_KEY, "wrong"), ("AKIAOTHER00000000000", SECRET_KEY)):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            s3.client(access_key, secret_key).list_objects_v2(Bucket=BUCKET)
        assert err.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId")


MPI_LAUNCHER = textwrap.dedent("""
    import os, socket, stat
    hostfile = open("/etc/mpi/hostfile").read()
    print(hostfile, end="", flush=True)
    ssh = os.environ["SSH_DIR"]
    assert sorted(os.listdir(ssh)) == ["authorized_keys", "id_rsa", "id_rsa.pub"], os.listdir(ssh)
    assert open(f"{ssh}/id_rsa").read().startswith("-----BEGIN EC PRIVATE KEY-----")
    assert open(f"{ssh}/authorized_keys").read().startswith("ecdsa-sha2-nistp521 ")
    for line in hostfile.splitlines():
        host = line.split()[0]
        print(host, socket.gethostbyname(host), flush=True)
    for k in ("K_MPI_JOB_ROLE", "OMPI_MCA_orte_keep_fqdn_hostnames", "OMPI_MCA_orte_default_hostfile",
              "OMPI_MCA_plm_rsh_args", "OMPI_MCA_orte_set_default_slots"):
        print(k, os.environ[k], flush=True)
""")


def test_mpijob_workers_then_launcher_with_hostfile_ssh_keys_and_dns(cluster, images):
    """A small MPIJob check: the trainer image has no sshd/OpenMPI, so the workers sleep and the
    launcher only checks what mpi-operator gives it (detext image: full horovodrun over ssh)."""
    from gdmix.kube.manifests import DEFAULT_SSH_AUTH_MOUNT_PATH, PodSettings, mpijob

    name = "rehearse-mpi-" + uuid.uuid4().hex[:5]
    launcher = PodSettings(image=images["trainer"], command=["python", "-c", MPI_LAUNCHER],
                           env={"SSH_DIR": DEFAULT_SSH_AUTH_MOUNT_PATH})
    worker = PodSettings(image=images["trainer"], command=["sleep", "600"])
    manifest = mpijob(name, NS, launcher, worker, 2, slots_per_worker=2)
    status, log = _launch(cluster, images["launcher"], manifest)
    assert status == 0, log
    for i in range(2):
        assert f"{name}-worker-{i}.{name}.{NS}.svc slots=2" in log, log
    assert "K_MPI_JOB_ROLE launcher" in log and "OMPI_MCA_orte_default_hostfile /etc/mpi/hostfile" in log
    assert "OMPI_MCA_orte_set_default_slots 2" in log and "OMPI_MCA_orte_keep_fqdn_hostnames true" in log
    assert f"MPIJob {NS}/{name} succeeded" in log
    assert cluster.wait_for(lambda: _no_containers_of(cluster, name), timeout=30)
