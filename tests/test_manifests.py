"""Offline validation of everything gdmix sends to a cluster.

- ``manifests/`` (kustomize) renders, and every core object passes ``kubernetes-validate`` in
  strict mode (unknown fields are errors) for the Kubernetes version the kind cluster runs;
  without ``kubectl`` on PATH a small renderer of ``resources:`` stands in for ``kubectl
  kustomize`` (and is checked against it where kubectl exists).
- RBAC is least privilege (exact rule sets, nothing cluster-wide) and the namespace enforces the
  ``restricted`` Pod Security Standard.
- The custom resources of :mod:`gdmix.kube.manifests`: SparkApplication against the Spark
  operator's own API models (``kubeflow-spark-api``, round trip: an unknown field is dropped by
  the models, so any difference is a field the operator does not know); TFJob and MPIJob, which
  have no strict schema package on PyPI, against JSON Schemas written here from the CRDs
  (training-operator v1.9 ``TFJobSpec``/``RunPolicy``, mpi-operator v2beta1 ``MPIJobSpec``), closed
  (``additionalProperties: false``) at every level we render; their pod templates against the
  strict core ``PodTemplate`` schema. Every pod is checked against the restricted profile.
- The kind scripts parse (``bash -n``; shellcheck when installed) and pin their versions.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gdmix.images import ROLES
from gdmix.kube import manifests as m
from gdmix.kube.task_config import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KIND = MANIFESTS / "kind"
#: Kubernetes minor the manifests target: the kind node image and the PSA version labels agree.
K8S_VERSION = "1.33"

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


# --- rendering ---------------------------------------------------------------------------------


def render_offline(path: Path) -> list[dict]:
    """``kubectl kustomize`` for what our kustomizations use: ``resources`` and ``namespace``."""
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unsupported, f"{path}: the offline renderer does not implement {sorted(unsupported)}"
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        target = (path / entry).resolve()
        if target.is_dir():
            docs += render_offline(target)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    namespace = kustomization.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


def render_kubectl(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True, timeout=120)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render(path: Path) -> list[dict]:
    return render_kubectl(path) if shutil.which("kubectl") else render_offline(path)


def by_key(docs: list[dict]) -> dict[tuple, dict]:
    return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module", params=["base", "kind"])
def rendered(request) -> list[dict]:
    return render(MANIFESTS / request.param)


@pytest.fixture(scope="module")
def base() -> dict[tuple, dict]:
    return by_key(render(MANIFESTS / "base"))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["base", "kind"])
def test_offline_renderer_agrees_with_kubectl(overlay):
    assert by_key(render_offline(MANIFESTS / overlay)) == by_key(render_kubectl(MANIFESTS / overlay))


def test_core_objects_pass_strict_validation(rendered):
    assert rendered
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_unknown_fields():
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "x"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verb": ["get"]}],
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, K8S_VERSION, strict=True)


# --- namespace and RBAC ------------------------------------------------------------------------


def rules_of(role: dict) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def expand(groups_resources: dict[str, list[str]], verbs: list[str]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for g, resources in groups_resources.items() for r in resources for v in verbs}


def test_namespace_enforces_the_restricted_profile(base):
    labels = base[("Namespace", None, "gdmix")]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == f"v{K8S_VERSION}"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_launcher_role_is_exactly_what_run_job_needs(base):
    role = base[("Role", "gdmix", "gdmix-launcher")]
    jobs = {"kubeflow.org": ["tfjobs", "mpijobs"], "sparkoperator.k8s.io": ["sparkapplications"]}
    expected = (
        expand(jobs, ["create", "get", "list", "watch", "delete"])
        | expand({"": ["pods"]}, ["get", "list", "watch"])
        | {("", "pods/log", "get")}
    )
    assert rules_of(role) == expected
    binding = base[("RoleBinding", "gdmix", "gdmix-launcher")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gdmix-launcher"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gdmix-launcher", "namespace": "gdmix"}]


def test_spark_driver_role_covers_its_executors_only(base):
    role = base[("Role", "gdmix", "gdmix-spark")]
    assert rules_of(role) == (
        expand({"": ["pods"]}, ["get", "list", "watch", "create", "delete", "deletecollection"])
        | expand({"": ["configmaps"]}, ["get", "list", "create", "delete", "deletecollection"])
        | expand({"": ["services"]}, ["get", "create", "delete"])
    )
    assert ("ServiceAccount", "gdmix", "gdmix-spark") in base


def test_nothing_is_cluster_wide_or_outside_the_namespace(rendered):
    for doc in rendered:
        assert doc["kind"] not in ("ClusterRole", "ClusterRoleBinding")
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "gdmix", doc["metadata"]["name"]
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert not {"secrets", "update", "patch", "escalate", "bind", "impersonate"} & set(
                rule["resources"] + rule["verbs"]
            )


def test_kind_overlay_lets_kfp_runs_use_the_launcher_role_only():
    docs = by_key(render(KIND))
    binding = docs[("RoleBinding", "gdmix", "gdmix-launcher-kfp-pipeline-runner")]
    assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] == "gdmix-launcher"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


# --- object-store credentials ------------------------------------------------------------------

OBJECT_STORE = MANIFESTS / "object-store"


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def test_object_store_secret_comes_from_a_gitignored_env_file():
    kustomization = yaml.safe_load((OBJECT_STORE / "kustomization.yaml").read_text())
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "gdmix-object-store" and generator["envs"] == ["object-store.env"]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True  # pods use the plain name
    assert kustomization["namespace"] == "gdmix"
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", str(OBJECT_STORE / "object-store.env")], cwd=ROOT)
        assert ignored.returncode == 0, "manifests/object-store/object-store.env must be gitignored"
    example = env_file(OBJECT_STORE / "object-store.env.example")
    assert set(example) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
    assert example["AWS_ACCESS_KEY_ID"] == example["AWS_SECRET_ACCESS_KEY"] == "REPLACE_ME"


def test_object_store_secret_renders_to_a_valid_secret(tmp_path):
    shutil.copy(OBJECT_STORE / "kustomization.yaml", tmp_path)
    shutil.copy(OBJECT_STORE / "object-store.env.example", tmp_path / "object-store.env")
    values = env_file(tmp_path / "object-store.env")
    expected = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gdmix-object-store", "namespace": "gdmix"},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }
    kubernetes_validate.validate(expected, K8S_VERSION, strict=True)
    if shutil.which("kubectl"):
        assert render_kubectl(tmp_path) == [expected]


# --- custom resources --------------------------------------------------------------------------


def closed(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING = {"type": "string", "minLength": 1}
COUNT = {"type": "integer", "minimum": 1}
NON_NEGATIVE = {"type": "integer", "minimum": 0}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = closed(
    {
        "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": STRING,
        "labels": LABELS,
    },
    ("name", "namespace"),
)
#: training-operator v1 ``RunPolicy`` (mpi-operator v2beta1 has the same fields).
RUN_POLICY = closed(
    {
        "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
        "ttlSecondsAfterFinished": NON_NEGATIVE,
        "activeDeadlineSeconds": COUNT,
        "backoffLimit": NON_NEGATIVE,
        "schedulingPolicy": {"type": "object"},
        "suspend": {"type": "boolean"},
        "managedBy": STRING,
    }
)


def replica_spec(replicas: dict = COUNT) -> dict:
    """``ReplicaSpec``; its ``template`` is checked against the core PodTemplateSpec separately."""
    return closed(
        {
            "replicas": replicas,
            "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
            "template": {"type": "object"},
        },
        ("replicas", "restartPolicy", "template"),
    )


TFJOB_SCHEMA = closed(
    {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "TFJob"},
        "metadata": METADATA,
        "spec": closed(
            {
                "runPolicy": RUN_POLICY,
                "successPolicy": {"enum": ["", "AllWorkers"]},
                "enableDynamicWorker": {"type": "boolean"},
                "tfReplicaSpecs": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"enum": ["Chief", "Master", "PS", "Worker", "Evaluator"]},
                    "additionalProperties": replica_spec(),
                },
            },
            ("tfReplicaSpecs",),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

MPIJOB_SCHEMA = closed(
    {
        "apiVersion": {"const": "kubeflow.org/v2beta1"},
        "kind": {"const": "MPIJob"},
        "metadata": METADATA,
        "spec": closed(
            {
                "slotsPerWorker": COUNT,
                "runLauncherAsWorker": {"type": "boolean"},
                "runPolicy": RUN_POLICY,
                "mpiReplicaSpecs": closed(
                    {"Launcher": replica_spec({"const": 1}), "Worker": replica_spec()}, ("Launcher", "Worker")
                ),
                "sshAuthMountPath": {"type": "string", "pattern": "^/"},
                "launcherCreationPolicy": {"enum": ["AtStartup", "WaitForWorkersReady"]},
                "mpiImplementation": {"enum": ["OpenMPI", "Intel", "MPICH"]},
            },
            ("mpiReplicaSpecs",),
        ),
    },
    ("apiVersion", "kind", "metadata", "spec"),
)

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def assert_restricted(
    pod_security: dict, containers_security: list[dict], volumes: list[dict] = (), spec: dict | None = None
):
    """The Pod Security Standard ``restricted`` checks that depend on what we render."""
    assert pod_security.get("runAsNonRoot") is True and pod_security.get("runAsUser", 1) != 0
    assert pod_security.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost")
    for sc in containers_security:
        assert sc["allowPrivilegeEscalation"] is False
        assert "ALL" in sc["capabilities"]["drop"] and set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}
        assert not sc.get("privileged") and sc.get("runAsUser", 1) != 0 and sc.get("runAsNonRoot", True) is True
    for volume in volumes:
        assert set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES, volume
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not (spec or {}).get(host)


def check_pod_template(template: dict) -> None:
    wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    kubernetes_validate.validate(wrapper, K8S_VERSION, strict=True)
    spec = template["spec"]
    assert_restricted(
        spec["securityContext"], [c["securityContext"] for c in spec["containers"]], spec.get("volumes", []), spec
    )


def full_pod(command: list[str]) -> m.PodSettings:
    """A pod using every PodSettings field, with a KFP task config laid over it."""
    pod = m.PodSettings(
        image="localhost/gdmix-trainer:0.1.0",
        command=command,
        env={"GDMIX_LOG": "info"},
        resources={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
        secret_env=["gdmix-object-store"],
        service_account="default",
        volumes=[{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
        volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    return apply_overrides(
        pod,
        {
            "resources": {"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}},
            "extra_env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}],
            "tolerations": [
                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "node_selector": {"pool": "train"},
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}
                        ]
                    }
                }
            },
            "volumes": [
                {"name": "shared", "persistentVolumeClaim": {"claimName": "gdmix-shared"}},
                {"name": "lists", "configMap": {"name": "lists", "defaultMode": 420}},
            ],
            "volume_mounts": [
                {"name": "shared", "mountPath": "/shared"},
                {"name": "lists", "mountPath": "/lists", "readOnly": True},
            ],
        },
    )


@pytest.fixture
def tf_job() -> dict:
    return m.tfjob(
        "gdmix-fe-global",
        "gdmix",
        full_pod(["python", "-m", "gdmix"]),
        workers=4,
        labels={"app": "gdmix"},
        active_deadline_seconds=7200,
    )


@pytest.fixture
def mpi_job() -> dict:
    launcher = full_pod(["horovodrun", "-np", "4", "--hostfile", "/etc/mpi/hostfile", "python", "-m", "gdmix"])
    worker = full_pod(["/usr/sbin/sshd", "-De", "-f", "/home/gdmix/.sshd_config"])
    return m.mpijob("gdmix-detext", "gdmix", launcher, worker, workers=2, slots_per_worker=2, labels={"app": "gdmix"})


def test_tfjob_matches_the_crd_and_its_pods_are_restricted(tf_job):
    jsonschema.validate(tf_job, TFJOB_SCHEMA)
    for replica in tf_job["spec"]["tfReplicaSpecs"].values():
        check_pod_template(replica["template"])
        assert replica["template"]["spec"]["containers"][0]["name"] == "tensorflow"


def test_mpijob_matches_the_crd_and_its_pods_are_restricted(mpi_job):
    jsonschema.validate(mpi_job, MPIJOB_SCHEMA)
    for replica in mpi_job["spec"]["mpiReplicaSpecs"].values():
        check_pod_template(replica["template"])


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "tfReplicaSpec"), {}),  # typo of tfReplicaSpecs
        (("spec", "runPolicy", "cleanPodPolicies"), "All"),
        (("spec", "tfReplicaSpecs", "Worker", "restartPolicy"), "Sometimes"),
        (("spec", "tfReplicaSpecs", "Launcher"), {"replicas": 1, "restartPolicy": "Never", "template": {}}),
        (("metadata", "generateName"), "x-"),
    ],
)
def test_tfjob_schema_catches_mistakes(tf_job, path, value):
    broken = copy.deepcopy(tf_job)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, TFJOB_SCHEMA)


def test_pod_template_typos_are_caught(mpi_job):
    template = copy.deepcopy(mpi_job["spec"]["mpiReplicaSpecs"]["Worker"]["template"])
    template["spec"]["containers"][0]["comand"] = template["spec"]["containers"][0].pop("command")
    with pytest.raises(kubernetes_validate.ValidationError):
        check_pod_template(template)
    broken = copy.deepcopy(mpi_job)
    broken["spec"]["mpiReplicaSpecs"]["Launcher"]["replicas"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, MPIJOB_SCHEMA)


def spark_app() -> dict:
    return m.spark_application(
        "gdmix-prep",
        "gdmix",
        "localhost/gdmix-spark:0.1.0",
        m.module_file_uri(),
        ["/cfg/job.yaml"],
        driver={
            "cores": 1,
            "coreLimit": "1200m",
            "memory": "2g",
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}],
        },
        executor={"cores": 2, "memory": "4g", "tolerations": [{"key": "spot", "operator": "Exists"}]},
        instances=3,
        spark_conf={"spark.sql.shuffle.partitions": 64},
        secret_env=["gdmix-object-store"],
        labels={"app": "gdmix"},
    )


def spark_round_trip(app: dict) -> dict:
    from kubeflow_spark_api.models import SparkV1beta2SparkApplication

    return SparkV1beta2SparkApplication.from_dict(app).to_dict()


def test_spark_application_matches_the_operators_api_and_is_restricted():
    app = spark_app()
    assert spark_round_trip(app) == app
    for role in ("driver", "executor"):
        pod = app["spec"][role]
        assert_restricted(pod["podSecurityContext"], [pod["securityContext"]])


def test_spark_api_check_catches_mistakes():
    from pydantic import ValidationError

    typo = spark_app()
    typo["spec"]["driver"]["memroy"] = "2g"
    assert spark_round_trip(typo) != typo
    wrong_type = spark_app()
    wrong_type["spec"]["executor"]["cores"] = "2"
    with pytest.raises(ValidationError):
        spark_round_trip(wrong_type)


# --- kind ----------------------------------------------------------------------------------------

SCRIPTS = [KIND / "kind-up.sh", KIND / "kind-e2e.sh"]
PINS = (
    "KIND_NODE_IMAGE",
    "KFP_VERSION",
    "TRAINING_OPERATOR_VERSION",
    "MPI_OPERATOR_VERSION",
    "SPARK_OPERATOR_CHART_VERSION",
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_kind_scripts_parse_and_are_strict(script):
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_kind_scripts_pass_shellcheck():
    subprocess.run(["shellcheck", *map(str, SCRIPTS)], check=True, timeout=60)


def pins() -> dict[str, str]:
    text = (KIND / "kind-up.sh").read_text()
    found = dict(re.findall(r'^([A-Z_]+)="\$\{\1:-([^}]+)\}"', text, flags=re.M))
    first_command = text.index("for tool in")
    for name in PINS:
        assert name in found, f"{name} is not pinned in kind-up.sh"
        assert text.index(f'{name}="') < first_command, f"{name} must be set at the top"
    return found


def test_kind_up_pins_versions_that_agree_with_the_rest():
    found = pins()
    assert found["KIND_NODE_IMAGE"].startswith(f"kindest/node:v{K8S_VERSION}.")
    assert found["KFP_VERSION"] == metadata.version("kfp")
    assert found["SPARK_OPERATOR_CHART_VERSION"] == metadata.version(
        "kubeflow-spark-api"
    )  # the API we validate against
    text = (KIND / "kind-up.sh").read_text()
    assert "--enable-scheme=tfjob" in text and "mpijobs.kubeflow.org" in text
    assert "spark.jobNamespaces={$NAMESPACE}" in text
    assert set(ROLES) == set(re.search(r"for role in ([a-z ]+); do", text).group(1).split())


def test_kind_cluster_config_and_make_targets():
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [n["role"] for n in cluster["nodes"]].count("control-plane") == 1
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^kind-up:.*\n\t.*manifests/kind/kind-up\.sh", makefile, flags=re.M)
    assert re.search(r"^kind-e2e:.*\n\t.*manifests/kind/kind-e2e\.sh", makefile, flags=re.M)
