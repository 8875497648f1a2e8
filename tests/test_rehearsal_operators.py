"""Cluster rehearsal of gdmix.kube.runner.run_job: the unmodified launcher code, in the launcher
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
        from gdmix.kube.runner import JobFailed, JobTimeout, run_job
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

    from gdmix.kube.runner import JobError, run_job

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
    assert err.value.status == 422 and "'replica' was unexpected" in err.value.body
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
    launcher only checks what mpi-operator gives it (horovodrun over ssh in the detext image:
    test_mpijob_horovodrun_allreduce_over_ssh_on_two_workers)."""
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


# --- SparkApplication: the driver creates its executors through the fake API server -------------

SPARK_MAIN = textwrap.dedent("""
    import os, socket, sys
    from pyspark.sql import SparkSession
    spark = SparkSession.builder.getOrCreate()
    sc = spark.sparkContext
    total = spark.range(0, 1000, numPartitions=8).groupBy().sum("id").collect()[0][0]
    hosts = sorted(set(sc.parallelize(range(16), 16).map(lambda _: socket.gethostname()).collect()))
    print("SPARK-RESULT", total, len(hosts), ",".join(hosts), flush=True)
    spark.stop()
""")


def _spark_images(images):
    from gdmix.images import image
    from rehearsal.dockerenv import RehearsalUnavailable, docker_client, require_image

    try:
        require_image(docker_client(), image("spark"), 'build it with: IMAGES="spark" make images')
    except RehearsalUnavailable as exc:
        _unavailable(str(exc))
    return image("spark")


def _run_in_process(cluster, manifest: dict, timeout_seconds: float = 400) -> list[str]:
    from kubernetes import client

    from gdmix.kube.runner import run_job

    api = client.ApiClient(cluster.kube_config(cluster.token()))  # the launcher's account
    lines: list[str] = []
    try:
        run_job(manifest, custom_api=client.CustomObjectsApi(api), core_api=client.CoreV1Api(api), poll_seconds=1,
                timeout_seconds=timeout_seconds, log=lines.append)
    finally:
        print("\n".join(lines))  # shown by pytest when the test fails
    return lines


def _spark_calls(cluster, since: int) -> list[tuple[str, str, str, int]]:
    return [r for r in cluster.apiserver.requests[since:] if r[0] == f"system:serviceaccount:{NS}:gdmix-spark"]


def test_sparkapplication_driver_runs_two_executors_through_the_api_server(cluster, images):
    from kubernetes import client

    from gdmix.kube.manifests import spark_application

    spark_image = _spark_images(images)
    name = "rehearse-spark-" + uuid.uuid4().hex[:5]
    core = client.CoreV1Api(client.ApiClient(cluster.kube_config()))
    core.create_namespaced_config_map(NS, {"metadata": {"name": f"{name}-main"}, "data": {"main.py": SPARK_MAIN}})
    manifest = spark_application(
        name, NS, spark_image, "local:///opt/rehearsal-app/main.py", [],
        driver={"memory": "512m", "volumeMounts": [{"name": "app", "mountPath": "/opt/rehearsal-app"}]},
        executor={"memory": "512m"}, instances=2, secret_env=[SECRET],
        volumes=[{"name": "app", "configMap": {"name": f"{name}-main"}}])
    since = len(cluster.apiserver.requests)
    lines = _run_in_process(cluster, manifest)
    log = "\n".join(lines)
    calls = _spark_calls(cluster, since)
    SPARK_CALLS.extend(calls)
    assert "SPARK-RESULT 499500 2 " in log, log  # the sum, computed on two executors
    executors = [p for (_, m, p, c) in calls if m == "POST" and p.endswith("/pods") and c == 201]
    assert len(executors) == 2, calls
    # the driver's own pod, its executors' ConfigMap, a watch (websocket), deletion by labels
    assert ("GET", f"/api/v1/namespaces/{NS}/pods/{name}-driver", 200) in [(m, p, c) for _, m, p, c in calls]
    assert any(m == "POST" and p.endswith("/configmaps") and c == 201 for _, m, p, c in calls), calls
    assert any(t == "websocket" and "watch=true" in p for _, p, t in cluster.apiserver.watches)
    assert any(m == "DELETE" and "/pods?labelSelector=" in p and c == 200 for _, m, p, c in calls), calls
    # failures other than the Role's denials (checked by the test below) are the fake's bugs
    assert not [c for c in calls if c[3] >= 400 and c[3] != 403], calls
    assert cluster.wait_for(lambda: _no_containers_of(cluster, name), timeout=30), \
        [c.name for c in cluster.containers()]
    assert not [o for o in cluster.objects() if o["metadata"]["name"] == name]
    core.delete_namespaced_config_map(f"{name}-main", NS)


#: calls of the Spark driver's account in the runs above, for the RBAC check below
SPARK_CALLS: list[tuple[str, str, str, int]] = []

PREP_LAUNCHER = textwrap.dedent("""
    import sys
    from gdmix.config import load_config
    from gdmix.images import image
    from gdmix.stages.backends import Launch, run_spark_prep
    uri = sys.argv[1]
    config = load_config(uri)
    launch = Launch(backend="kubernetes", namespace="gdmix", image=image("spark"), secret="gdmix-object-store",
                    timeout_seconds=500)
    run_spark_prep(config, uri, launch, "prep", log=lambda m: print(m, flush=True))
    print("PREP DONE", flush=True)
""")


def test_prep_sparkapplication_as_run_spark_prep_renders_it(cluster, s3, images):
    """The real prep: run_spark_prep in a launcher container (so module_file_uri() is the
    image's path), 2 executors, input and output in the S3 container."""
    import io

    import pyarrow.parquet as pq
    import yaml

    from test_prep import _config, _raw

    _spark_images(images)
    run = "rehearse-prep-" + uuid.uuid4().hex[:5]
    root = f"s3://{BUCKET}/{run}"
    buffer = io.BytesIO()
    pq.write_table(_raw(), buffer)
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{run}/raw/part-0.parquet", Body=buffer.getvalue())
    config = _config(__import__("pathlib").Path("/unused"), f"{root}/raw")
    config["data"] = {"train": f"{root}/prepared/train", "validation": f"{root}/prepared/validation"}
    config["output"] = f"{root}/model"
    config["prep"]["output"] = f"{root}/prepared"
    config["prep"]["spark"] = {"driver_memory": "1g", "executor_memory": "1g", "executor_instances": 2,
                               "shuffle_partitions": 4}
    client.put_object(Bucket=BUCKET, Key=f"{run}/config.yaml", Body=yaml.safe_dump(config).encode())
    since = len(cluster.apiserver.requests)
    status, log = cluster.run_in_pod(images["launcher"], ["python", "-c", PREP_LAUNCHER, f"{root}/config.yaml"],
                                     env=s3.env(internal=True), timeout=700)  # the step's Secret
    calls = _spark_calls(cluster, since)
    SPARK_CALLS.extend(calls)
    assert status == 0 and "PREP DONE" in log, log[-20000:]
    executors = [p for (_, m, p, c) in calls if m == "POST" and p.endswith("/pods") and c == 201]
    assert len(executors) == 2, calls
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{run}/prepared/")["Contents"]}
    assert f"{run}/prepared/prep.json" in keys, sorted(keys)
    for split in ("train", "validation"):
        assert any(k.startswith(f"{run}/prepared/{split}/") and k.endswith(".parquet") for k in keys), sorted(keys)
    assert cluster.wait_for(lambda: not [c for c in cluster.containers() if "gdmix-prep-" in c.name], timeout=30)
    assert not cluster.objects()


def test_the_spark_driver_needs_no_permission_the_shipped_role_lacks(cluster):
    """Every call the driver made as gdmix-spark (manifests/rbac/spark-rbac.yaml) was allowed."""
    if not SPARK_CALLS:
        pytest.skip("no SparkApplication ran in this session")
    denied = sorted({(m, p.split("?")[0]) for (_, m, p, c) in SPARK_CALLS if c == 403})
    assert not denied, f"the shipped Role gdmix-spark does not allow: {denied}"


# --- MPIJob with horovodrun: the shape run_workers(horovod=True) renders, in the detext image ----

HOROVOD_ALLREDUCE = textwrap.dedent("""
    import os, socket
    import horovod.tensorflow as hvd
    import tensorflow as tf
    hvd.init()
    total = hvd.allreduce(tf.constant(hvd.rank(), dtype=tf.int32), op=hvd.Sum)
    print("HVD-RESULT rank", hvd.rank(), "of", hvd.size(), "sum", int(total.numpy()), "on", socket.gethostname(),
          "uid", os.getuid(), flush=True)
""")


def test_mpijob_horovodrun_allreduce_over_ssh_on_two_workers(cluster, images):
    """The MPIJob run_workers(horovod=True) renders (launcher ``horovodrun -np 2 --hostfile
    /etc/mpi/hostfile``, workers ``SSHD``), with an allreduce instead of DeText: horovodrun's Gloo
    launcher sshes (uid 1000, port 2222, the operator's key at sshAuthMountPath) into both workers."""
    from gdmix.images import image
    from gdmix.kube.manifests import PodSettings, mpijob
    from gdmix.stages.backends import SSHD
    from rehearsal.dockerenv import RehearsalUnavailable, docker_client, require_image

    try:
        require_image(docker_client(), image("detext"), 'build it with: IMAGES="detext" make images')
    except RehearsalUnavailable as exc:
        _unavailable(str(exc))
    detext = image("detext")
    name = "rehearse-hvd-" + uuid.uuid4().hex[:5]
    launcher = PodSettings(image=detext, command=["horovodrun", "-np", "2", "--hostfile", "/etc/mpi/hostfile",
                                                  "python", "-c", HOROVOD_ALLREDUCE])
    manifest = mpijob(name, NS, launcher, PodSettings(image=detext, command=list(SSHD)), 2)
    status, log = _launch(cluster, images["launcher"], manifest, timeout_seconds=300)
    print(log)  # shown by pytest -rP, or when the test fails
    assert status == 0, log
    assert f"created MPIJob {NS}/{name}" in log and f"MPIJob {NS}/{name} succeeded" in log, log
    results = sorted(line.split("HVD-RESULT ", 1)[1] for line in log.splitlines() if "HVD-RESULT " in line)
    # rank i on worker i (the hostfile's order, one slot each), as uid 1000, both with 0 + 1
    assert results == [f"rank {i} of 2 sum 1 on {name}-worker-{i} uid 1000" for i in range(2)], log
    assert f"deleted MPIJob {NS}/{name}" in log, log
    assert cluster.wait_for(lambda: _no_containers_of(cluster, name), timeout=30), \
        [c.name for c in cluster.containers()]
    assert not [o for o in cluster.objects() if o["metadata"]["name"] == name]
