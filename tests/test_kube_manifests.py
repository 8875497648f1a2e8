"""Renderers of gdmix.kube.manifests and the KFP task-config passthrough (no cluster needed).

No ``from __future__ import annotations`` here: kfp reads the component's real annotations.
"""

import json
import re

import pytest
from kfp import dsl
from kfp.dsl.executor import Executor

from gdmix.kube import manifests as m
from gdmix.kube.task_config import apply_overrides, pod_overrides, with_task_config

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def trainer_pod(**changes) -> m.PodSettings:
    settings = dict(
        image="localhost/gdmix-trainer:0.1.0",
        command=["python", "-m", "gdmix", "train-fixed-effect", "/cfg/job.yaml"],
        env={"GDMIX_LOG": "info"},
        resources={"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
        secret_env=["gdmix-object-store"],
    )
    settings.update(changes)
    return m.PodSettings(**settings)


# --- names -------------------------------------------------------------------------------------


def test_resource_name_sanitizes_to_a_dns_label():
    assert m.resource_name("GDMix", "Run_42", "fixed effect/global") == "gdmix-run-42-fixed-effect-global"
    assert m.resource_name("--a..b--") == "a-b"
    assert m.resource_name("7f3a", "prep") == "g7f3a-prep"  # Services need a leading letter


def test_resource_name_truncates_with_a_hash_and_stays_distinct():
    long_a = m.resource_name("gdmix", "x" * 80, "a")
    long_b = m.resource_name("gdmix", "x" * 80, "b")
    assert len(long_a) == len(long_b) == 63
    assert long_a != long_b
    assert DNS_1035.fullmatch(long_a) and DNS_1035.fullmatch(long_b)
    assert re.search(r"-[0-9a-f]{8}$", long_a)
    assert m.resource_name("gdmix", "x" * 80, "a") == long_a  # deterministic
    short = m.resource_name("gdmix", "x" * 80, max_length=40)
    assert len(short) == 40 and DNS_1035.fullmatch(short)


def test_resource_name_rejects_nothing_usable():
    with pytest.raises(ValueError, match="no usable characters"):
        m.resource_name("__", "!!")


# --- pods --------------------------------------------------------------------------------------


def test_pod_settings_validate_their_fields():
    with pytest.raises(ValueError, match="set twice"):
        trainer_pod(env={"A": "1"}, extra_env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}])
    with pytest.raises(ValueError, match="without a volume"):
        trainer_pod(volume_mounts=[{"name": "data", "mountPath": "/data"}])
    with pytest.raises(ValueError, match="command"):
        trainer_pod(command=[])
    with pytest.raises(ValueError, match="image_pull_policy"):
        trainer_pod(image_pull_policy="Sometimes")


def test_pod_template_is_restricted_and_takes_credentials_by_reference():
    pod = trainer_pod(
        env={"AWS_REGION": "us-east-1"},
        volumes=[{"name": "scratch", "emptyDir": {}}],
        volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}],
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        node_selector={"pool": "train"},
    )
    template = m.pod_template(pod, "tensorflow", labels={"app": "gdmix"})
    spec = template["spec"]
    assert template["metadata"] == {"labels": {"sidecar.istio.io/inject": "false", "app": "gdmix"}}
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["name"] == "tensorflow"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["envFrom"] == [{"secretRef": {"name": "gdmix-object-store"}}]
    assert {e["name"] for e in container["env"]} == {"AWS_REGION"}
    assert spec["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert spec["nodeSelector"] == {"pool": "train"}
    assert "serviceAccountName" not in spec and "affinity" not in spec


def test_pod_template_copies_instead_of_sharing_caller_state():
    pod = trainer_pod()
    template = m.pod_template(pod, "tensorflow")
    template["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "99"
    template["spec"]["securityContext"]["runAsUser"] = 0
    again = m.pod_template(pod, "tensorflow")
    assert again["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    assert again["spec"]["securityContext"]["runAsUser"] == 1000


# --- TFJob / MPIJob ----------------------------------------------------------------------------


def test_tfjob_has_plain_workers_that_fail_the_job_at_once():
    job = m.tfjob("gdmix-fe-global", "gdmix", trainer_pod(), workers=3, labels={"app": "gdmix"})
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert job["metadata"] == {"name": "gdmix-fe-global", "namespace": "gdmix", "labels": {"app": "gdmix"}}
    spec = job["spec"]
    assert list(spec["tfReplicaSpecs"]) == ["Worker"]
    worker = spec["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "Never"
    assert worker["template"]["spec"]["containers"][0]["name"] == "tensorflow"
    assert spec["successPolicy"] == "AllWorkers"
    assert spec["runPolicy"]["backoffLimit"] == 0
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert "TF_CONFIG" not in json.dumps(job)  # the operator injects it


def test_job_names_leave_room_for_the_operators_suffixes():
    with pytest.raises(ValueError, match="at most"):
        m.tfjob("a" * 60, "gdmix", trainer_pod(), workers=12)
    m.tfjob("a" * 53, "gdmix", trainer_pod(), workers=12)  # + "-worker-11" = 63
    with pytest.raises(ValueError, match="DNS-1035"):
        m.tfjob("Bad_Name", "gdmix", trainer_pod(), workers=1)
    with pytest.raises(ValueError, match="positive integer"):
        m.tfjob("gdmix-x", "gdmix", trainer_pod(), workers=0)


def test_mpijob_has_a_launcher_and_sshd_workers():
    launcher = trainer_pod(
        command=["horovodrun", "-np", "4", "--hostfile", "/etc/mpi/hostfile", "python", "-m", "gdmix"]
    )
    worker = trainer_pod(command=["/usr/sbin/sshd", "-De", "-f", "/home/gdmix/.sshd_config"], env={})
    job = m.mpijob("gdmix-detext", "gdmix", launcher, worker, workers=2, slots_per_worker=2)
    assert job["apiVersion"] == "kubeflow.org/v2beta1" and job["kind"] == "MPIJob"
    spec = job["spec"]
    assert spec["slotsPerWorker"] == 2
    assert spec["mpiImplementation"] == "OpenMPI"
    assert spec["sshAuthMountPath"] == "/home/gdmix/.ssh"
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    replicas = spec["mpiReplicaSpecs"]
    assert replicas["Launcher"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert replicas["Launcher"]["template"]["spec"]["containers"][0]["command"][0] == "horovodrun"
    assert replicas["Worker"]["template"]["spec"]["containers"][0]["command"][0] == "/usr/sbin/sshd"
    assert {r["restartPolicy"] for r in replicas.values()} == {"Never"}


# --- SparkApplication --------------------------------------------------------------------------


def spark_app(**changes):
    args = dict(
        name="gdmix-prep",
        namespace="gdmix",
        image="localhost/gdmix-spark:0.1.0",
        main_application_file=m.module_file_uri(),
        arguments=["/cfg/job.yaml", "--set", "prep.spark.master=null"],
        driver={"cores": 1, "memory": "2g"},
        executor={"cores": 2, "memory": "4g"},
        instances=3,
        spark_conf={"spark.sql.shuffle.partitions": 64, "spark.sql.adaptive.enabled": True},
        secret_env=["gdmix-object-store"],
    )
    args.update(changes)
    return m.spark_application(**args)


def test_spark_application_runs_prep_submit_in_cluster_mode():
    app = spark_app()
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and app["kind"] == "SparkApplication"
    spec = app["spec"]
    assert (spec["type"], spec["pythonVersion"], spec["mode"]) == ("Python", "3", "cluster")
    assert spec["mainApplicationFile"].startswith("local:///")
    assert spec["mainApplicationFile"].endswith("gdmix/prep/submit.py")
    assert spec["sparkConf"] == {"spark.sql.shuffle.partitions": "64", "spark.sql.adaptive.enabled": "true"}
    assert spec["driver"]["serviceAccount"] == "gdmix-spark"
    assert spec["executor"]["instances"] == 3
    for role in ("driver", "executor"):
        assert spec[role]["envFrom"] == [{"secretRef": {"name": "gdmix-object-store"}}]
        assert spec[role]["podSecurityContext"]["runAsNonRoot"] is True
        assert spec[role]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["restartPolicy"] == {"type": "Never"}


def test_spark_application_refuses_settings_it_owns():
    with pytest.raises(ValueError, match="serviceAccount"):
        spark_app(driver={"cores": 1, "serviceAccount": "default"})
    with pytest.raises(ValueError, match="instances"):
        spark_app(executor={"instances": 9})
    with pytest.raises(ValueError, match="scalar"):
        spark_app(spark_conf={"spark.x": {"nested": 1}})


def test_module_file_uri_reports_missing_modules():
    with pytest.raises(ValueError, match="not installed"):
        m.module_file_uri("gdmix.no_such_module")


# --- KFP task config ---------------------------------------------------------------------------

#: What the KFP backend driver puts in the task_config parameter: its Go ``TaskConfig`` struct
#: marshalled to JSON (fields without omitempty, so unset ones are null), Kubernetes core types
#: inside. This is a launcher task with set_cpu_limit/set_memory_request/set_accelerator_*,
#: set_env_variable, kubernetes.use_secret_as_env, add_toleration, add_node_selector,
#: mount_pvc and use_config_map_as_volume.
WIRE_TASK_CONFIG = {
    "affinity": None,
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 300.0},
    ],
    "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
    "env": [
        {"name": "GDMIX_LOG", "value": "debug"},
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}},
    ],
    "volumes": [
        {"name": "shared", "persistentVolumeClaim": {"claimName": "gdmix-shared"}},
        {"name": "feature-lists", "configMap": {"name": "feature-lists", "optional": False, "defaultMode": 420.0}},
    ],
    "volumeMounts": [
        {"name": "shared", "mountPath": "/shared"},
        {"name": "feature-lists", "mountPath": "/etc/gdmix/features"},
    ],
    "resources": {"limits": {"cpu": "4", "nvidia.com/gpu": "1"}, "requests": {"memory": "16Gi"}},
}

PASSTHROUGHS = [
    dsl.TaskConfigField.RESOURCES,
    dsl.TaskConfigField.ENV,
    dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
    dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR,
    dsl.TaskConfigField.KUBERNETES_AFFINITY,
    dsl.TaskConfigField.KUBERNETES_VOLUMES,
]


def received_task_config(tmp_path, wire):
    """Run a real KFP component function through kfp's executor and return what it received."""
    seen = {}

    @dsl.component(base_image="python:3.11", task_config_passthroughs=PASSTHROUGHS)
    def launcher(task_config: dsl.TaskConfig):
        seen["value"] = task_config

    executor_input = {
        "inputs": {"parameterValues": {} if wire is None else {"task_config": json.loads(json.dumps(wire))}},
        "outputs": {"outputFile": str(tmp_path / "executor_output.json")},
    }
    Executor(executor_input, launcher).execute()
    return seen["value"]


def test_pod_overrides_reads_the_task_config_kfp_passes(tmp_path):
    task_config = received_task_config(tmp_path, WIRE_TASK_CONFIG)
    assert isinstance(task_config, dsl.TaskConfig)
    overrides = pod_overrides(task_config)
    assert overrides["resources"] == {"limits": {"cpu": "4", "nvidia.com/gpu": "1"}, "requests": {"memory": "16Gi"}}
    assert overrides["env"] == {"GDMIX_LOG": "debug", "HTTPS_PROXY": "http://proxy:3128"}
    assert overrides["extra_env"] == [
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}
    ]
    assert overrides["tolerations"][1]["tolerationSeconds"] == 300
    assert isinstance(overrides["tolerations"][1]["tolerationSeconds"], int)
    assert overrides["volumes"][1]["configMap"]["defaultMode"] == 420
    assert overrides["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert [v["mountPath"] for v in overrides["volume_mounts"]] == ["/shared", "/etc/gdmix/features"]
    assert "affinity" not in overrides
    # the wire dict itself is accepted too
    assert pod_overrides(WIRE_TASK_CONFIG) == overrides


def test_pod_overrides_of_an_empty_task_config(tmp_path):
    assert pod_overrides(None) == {}
    assert pod_overrides(received_task_config(tmp_path, None)) == {}  # no passthrough / kfp.local
    assert pod_overrides(dsl.TaskConfig(resources={}, env=[], affinity={})) == {}
    with pytest.raises(TypeError):
        pod_overrides("cpu=4")


def test_task_config_lands_on_the_launched_pods(tmp_path):
    base = trainer_pod(
        env={"GDMIX_LOG": "info", "TF_CPP_MIN_LOG_LEVEL": "2"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        volumes=[{"name": "shared", "emptyDir": {}}],
        volume_mounts=[{"name": "shared", "mountPath": "/shared"}],
    )
    pod = with_task_config(base, received_task_config(tmp_path, WIRE_TASK_CONFIG))
    assert pod.resources["limits"]["nvidia.com/gpu"] == "1"
    assert pod.env == {"GDMIX_LOG": "debug", "TF_CPP_MIN_LOG_LEVEL": "2", "HTTPS_PROXY": "http://proxy:3128"}
    assert len(pod.tolerations) == 3
    assert [v["name"] for v in pod.volumes] == ["shared", "feature-lists"]
    assert pod.volumes[0] == {"name": "shared", "persistentVolumeClaim": {"claimName": "gdmix-shared"}}
    assert pod.secret_env == ["gdmix-object-store"] and pod.image == base.image
    job = m.tfjob("gdmix-fe", "gdmix", pod, workers=2)
    container = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    secret_ref = {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}}
    assert secret_ref in container["env"]
    assert "api-key" not in {e.get("value") for e in container["env"]}


def test_apply_overrides_lets_the_task_switch_a_variable_to_a_secret():
    base = trainer_pod(env={"TOKEN": "dev-token"})
    secret_ref = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}
    pod = apply_overrides(base, {"extra_env": [secret_ref]})
    assert "TOKEN" not in pod.env and pod.extra_env == [secret_ref]
    with pytest.raises(ValueError, match="not PodSettings fields"):
        apply_overrides(base, {"cpu": "4"})
