"""Offline validation of everything gdmix sends to a cluster.

- ``manifests/`` (kustomize) renders, and every core object passes ``kubernetes-validate`` in
  strict mode (unknown fields are errors) for the Kubernetes version the kind cluster runs;
  without ``kubectl`` on PATH a small renderer of ``resources:`` stands in for ``kubectl
  kustomize`` (and is checked against it where kubectl exists).
- RBAC is least privilege (exact rule sets, nothing cluster-wide) and the namespace enforces the
  ``restricted`` Pod Security Standard.
- The custom resources of :mod:`gdmix.kube.manifests` (TFJob, MPIJob, SparkApplication, rendered
  with every setting a launcher passes on) against the operators' own CRDs, vendored byte for byte
  in ``tests/upstream/crds`` from the tags ``kind-up.sh`` installs (``tests/upstream/README.md``),
  strictly (``rehearsal/crd_schema.py``): an unknown field, which a real API server would silently
  prune, is an error here, at every level (top level, runPolicy, replica spec, pod spec,
  container), as are a wrong type, a null, an int32 overflow or a duplicate list-map key. Pod
  templates also pass the strict core ``PodTemplate`` schema of the cluster's Kubernetes, and
  every pod is checked against the restricted profile.
- The kind scripts parse (``bash -n``; shellcheck when installed) and pin their versions, which
  are the operator versions whose CRDs are vendored.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gdmix.images import ROLES
from gdmix.kube import manifests as m
from gdmix.kube.task_config import spark_pod_overrides, with_task_config
from rehearsal import crd_schema

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
    # no identity of its own that no KFP pod runs as: the deployment overlays bind the Role to
    # KFP's step account (manifests/standalone, manifests/multi-user; tests/test_cluster_setup.py)
    assert ("ServiceAccount", "gdmix", "gdmix-launcher") not in base
    assert not [key for key in base if key[0] == "RoleBinding" and base[key]["roleRef"]["name"] == "gdmix-launcher"]


def test_spark_driver_role_covers_its_executors_only(base):
    role = base[("Role", "gdmix", "gdmix-spark")]
    assert rules_of(role) == (
        expand({"": ["pods"]}, ["get", "list", "watch", "create", "delete", "deletecollection"])
        | expand({"": ["configmaps"]}, ["get", "list", "create", "delete", "deletecollection"])
        | expand({"": ["services"]}, ["get", "create", "delete", "deletecollection"])
        | expand({"": ["persistentvolumeclaims"]}, ["get", "list", "deletecollection"])
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
    # applied with -n to every namespace gdmix pods run in (KFP's step pods and the jobs' pods)
    assert "namespace" not in kustomization
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
        "metadata": {"name": "gdmix-object-store"},  # the namespace comes from `kubectl apply -n`
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }
    kubernetes_validate.validate(expected, K8S_VERSION, strict=True)
    if shutil.which("kubectl"):
        assert render_kubectl(tmp_path) == [expected]


# --- custom resources --------------------------------------------------------------------------

UPSTREAM = Path(__file__).resolve().parent / "upstream"
#: kind -> (vendored CRD in tests/upstream/crds, the version gdmix renders).
CRD_FILES = {
    "TFJob": ("kubeflow.org_tfjobs.yaml", "v1"),
    "MPIJob": ("kubeflow.org_mpijobs.yaml", "v2beta1"),
    "SparkApplication": ("sparkoperator.k8s.io_sparkapplications.yaml", "v1beta2"),
}

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


def validate_pod_template(template: dict) -> None:
    """The strict core PodTemplateSpec schema of the cluster's Kubernetes version."""
    wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    kubernetes_validate.validate(wrapper, K8S_VERSION, strict=True)


def check_pod_template(template: dict) -> None:
    """What the operator turns into pods: valid for the cluster and within the restricted profile."""
    validate_pod_template(template)
    spec = template["spec"]
    assert_restricted(
        spec["securityContext"], [c["securityContext"] for c in spec["containers"]], spec.get("volumes", []), spec
    )


def check_unchecked_pod_template(path: tuple[str, ...], value: dict) -> None:
    """The CRD subtrees marked preserve-unknown-fields are pod templates (SparkPodSpec.template)."""
    assert path[-1] == "template", f"nothing knows how to check {'.'.join(path)}"
    validate_pod_template(value)


def check_against_crd(manifest: dict, kind: str | None = None) -> None:
    """Strict validation of a rendered job against its operator's vendored CRD (of ``kind``,
    by default the manifest's own)."""
    file, version = CRD_FILES[kind or manifest["kind"]]
    crd = crd_schema.load_crd(UPSTREAM / "crds" / file, version)
    crd_schema.validate(manifest, crd, K8S_VERSION, check_opaque=check_unchecked_pod_template)


#: A KFP task config as the backend hands it to a launcher (camelCase JSON of core types; numbers
#: arrive as floats), using every passthrough gdmix declares.
TASK_CONFIG = {
    "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}},
    "env": [
        {"name": "GDMIX_TRACE", "value": "1"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}},
    ],
    "tolerations": [
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 300.0}
    ],
    "nodeSelector": {"pool": "train"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]
            }
        }
    },
    "volumes": [
        {"name": "shared", "persistentVolumeClaim": {"claimName": "gdmix-shared"}},
        {"name": "lists", "configMap": {"name": "lists", "defaultMode": 420.0}},
    ],
    "volumeMounts": [
        {"name": "shared", "mountPath": "/shared"},
        {"name": "lists", "mountPath": "/lists", "readOnly": True},
    ],
}


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
    return with_task_config(pod, TASK_CONFIG)


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


@pytest.fixture
def spark_job() -> dict:
    """As the prep launcher renders it: the task config passed through to driver and executors."""
    passed = spark_pod_overrides(TASK_CONFIG)
    return m.spark_application(
        "gdmix-prep",
        "gdmix",
        "localhost/gdmix-spark:0.1.0",
        m.module_file_uri(),
        ["/cfg/job.yaml"],
        driver={"cores": 1, "memory": "2g", **passed.pod},
        executor={"cores": 2, "memory": "4g", **passed.pod},
        instances=3,
        spark_conf={"spark.sql.shuffle.partitions": 64, "spark.dynamicAllocation.enabled": False},
        secret_env=["gdmix-object-store"],
        volumes=passed.volumes,
        labels={"app": "gdmix"},
    )


def test_tfjob_matches_the_upstream_crd_and_its_pods_are_restricted(tf_job):
    check_against_crd(tf_job)
    for replica in tf_job["spec"]["tfReplicaSpecs"].values():
        check_pod_template(replica["template"])
        assert replica["template"]["spec"]["containers"][0]["name"] == "tensorflow"


def test_mpijob_matches_the_upstream_crd_and_its_pods_are_restricted(mpi_job):
    check_against_crd(mpi_job)
    for replica in mpi_job["spec"]["mpiReplicaSpecs"].values():
        check_pod_template(replica["template"])


def test_spark_application_matches_the_upstream_crd_and_is_restricted(spark_job):
    check_against_crd(spark_job)
    for role in ("driver", "executor"):
        pod = spark_job["spec"][role]
        assert_restricted(pod["podSecurityContext"], [pod["securityContext"]], spark_job["spec"]["volumes"])


def minimal_jobs() -> list[dict]:
    """Each job with only what its renderer requires, so the optional branches are covered too."""
    pod = m.PodSettings(image="localhost/gdmix-trainer:0.1.0", command=["python", "-m", "gdmix"])
    return [
        m.tfjob("gdmix-min", "gdmix", pod, workers=1, ttl_seconds_after_finished=None),
        m.mpijob("gdmix-min", "gdmix", pod, pod, workers=1, ttl_seconds_after_finished=None),
        m.spark_application(
            "gdmix-min", "gdmix", "localhost/gdmix-spark:0.1.0", "local:///main.py", [], {}, {}, 1,
            time_to_live_seconds=None,
        ),
    ]


@pytest.mark.parametrize("job", minimal_jobs(), ids=lambda job: job["kind"])
def test_minimal_jobs_match_the_upstream_crds(job):
    check_against_crd(job)


POD = ("spec", "tfReplicaSpecs", "Worker", "template", "spec")
CONTAINER = POD + ("containers", 0)
LAUNCHER = ("spec", "mpiReplicaSpecs", "Launcher", "template", "spec", "containers", 0)
TYPO_CONTAINER = {"name": "x", "comand": ["true"]}


def mistake(job: str, path: tuple, value, why: str):
    return pytest.param(job, path, value, id=f"{job}:{'.'.join(map(str, path))}:{why}")


@pytest.mark.parametrize(
    "job, path, value",
    [
        # top level and metadata
        mistake("tf_job", ("specs",), {}, "unknown"),
        mistake("tf_job", ("status",), {}, "operator-owned"),
        mistake("tf_job", ("apiVersion",), "kubeflow.org/v2", "wrong-version"),
        mistake("tf_job", ("kind",), "PyTorchJob", "wrong-kind"),
        mistake("tf_job", ("metadata", "lables"), {}, "unknown"),
        mistake("tf_job", ("metadata", "name"), "GDMix_FE", "not-dns"),
        mistake("tf_job", ("metadata", "namespace"), "gdmix.ns", "not-dns-label"),
        mistake("tf_job", ("metadata", "labels", "app"), "gdmix/fe", "bad-label-value"),
        # job spec and runPolicy
        mistake("tf_job", ("spec", "tfReplicaSpec"), {}, "unknown"),
        mistake("tf_job", ("spec", "successPolicy"), True, "type"),
        mistake("tf_job", ("spec", "runPolicy", "cleanPodPolicies"), "All", "unknown"),
        mistake("tf_job", ("spec", "runPolicy", "backoffLimit"), "0", "type"),
        mistake("tf_job", ("spec", "runPolicy", "ttlSecondsAfterFinished"), 2**31, "int32"),
        mistake("tf_job", ("spec", "runPolicy", "activeDeadlineSeconds"), None, "not-nullable"),
        # replica spec
        mistake("tf_job", ("spec", "tfReplicaSpecs", "Worker", "replica"), 4, "unknown"),
        mistake("tf_job", ("spec", "tfReplicaSpecs", "Worker", "replicas"), 4.0, "float"),
        mistake("tf_job", ("spec", "tfReplicaSpecs", "Worker", "template", "metadata", "label"), {}, "unknown"),
        # pod spec
        mistake("tf_job", POD + ("nodeSelecter",), {}, "unknown"),
        mistake("tf_job", POD + ("automountServiceAccountToken",), "false", "type"),
        mistake("tf_job", POD + ("securityContext", "runAsUser"), "1000", "type"),
        mistake("tf_job", POD + ("tolerations", 0, "tolerationSeconds"), 1.5, "float"),
        mistake("tf_job", POD + ("volumes", 1, "name"), "scratch", "duplicate-name"),
        # container
        mistake("tf_job", CONTAINER + ("comand",), ["python"], "unknown"),
        mistake("tf_job", CONTAINER + ("command",), "python -m gdmix", "type"),
        mistake("tf_job", CONTAINER + ("resources", "limits", "cpu"), ["4"], "type"),
        mistake("tf_job", CONTAINER + ("env", -1, "valueFrom", "secretKeyRef", "nam"), "tok", "unknown"),
        mistake("tf_job", CONTAINER + ("env", -1, "name"), "GDMIX_LOG", "duplicate-name"),
        # MPIJob
        mistake("mpi_job", ("spec", "slotsPerWorker"), "2", "type"),
        mistake("mpi_job", ("spec", "mpiImplementation"), "OpenMP", "enum"),
        mistake("mpi_job", ("spec", "sshAuthMountpath"), "/home/gdmix/.ssh", "unknown"),
        mistake("mpi_job", LAUNCHER + ("envFrom", 0, "secretRef", "nmae"), "x", "unknown"),
        # SparkApplication
        mistake("spark_job", ("spec", "mode"), "local", "enum"),
        mistake("spark_job", ("spec", "driver", "memroy"), "2g", "unknown"),
        mistake("spark_job", ("spec", "executor", "cores"), "2", "type"),
        mistake("spark_job", ("spec", "executor", "cores"), 0, "minimum"),
        mistake("spark_job", ("spec", "sparkConf", "spark.sql.shuffle.partitions"), 64, "type"),
        mistake("spark_job", ("spec", "restartPolicy", "typ"), "Never", "unknown"),
        mistake("spark_job", ("spec", "driver", "template"), {"spec": {"containers": [TYPO_CONTAINER]}}, "pod"),
    ],
)
def test_crd_check_catches_mistakes_anywhere(request, job, path, value):
    rendered = request.getfixturevalue(job)
    check_against_crd(rendered)
    broken = copy.deepcopy(rendered)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(crd_schema.InvalidManifest) as caught:
        check_against_crd(broken, kind=rendered["kind"])
    assert all(str(path[-1]) in error for error in caught.value.errors), caught.value.errors


def test_unchecked_subtrees_need_a_check_of_their_own(spark_job):
    """A pod template under preserve-unknown-fields is an error without a check, fine with one."""
    spark_job["spec"]["driver"]["template"] = {"metadata": {"annotations": {"a": "b"}}}
    file, version = CRD_FILES["SparkApplication"]
    crd = crd_schema.load_crd(UPSTREAM / "crds" / file, version)
    assert crd.opaque == (("spec", "driver", "template"), ("spec", "executor", "template"))
    with pytest.raises(crd_schema.InvalidManifest, match="driver.template"):
        crd_schema.validate(spark_job, crd, K8S_VERSION)
    check_against_crd(spark_job)


def test_crd_schema_translation():
    """The OpenAPI v3 features of structural schemas, as the API server reads them."""
    schema, opaque = crd_schema.to_json_schema(
        {
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "n": {"type": "integer", "format": "int32"},
                "q": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                      "pattern": "^[0-9]+m?$"},
                "t": {"type": "string", "nullable": True},
                "d": {"type": "string", "default": "x"},
                "s": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "o": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "e": {"type": "object"},
            },
            "required": ["n", "d"],
        }
    )
    check = crd_schema.StrictValidator(schema)
    assert opaque == [("o",)]
    assert check.is_valid({"n": 1, "q": "5m", "t": None, "s": ["a", "b"], "o": {"anything": 1}, "e": {}})
    for bad in (
        {"n": 2**31},  # int32 overflow
        {"n": 1.0},  # a float is not an integer
        {"n": True},
        {"n": 1, "q": 1.5},
        {"n": 1, "q": "5x"},  # the pattern binds the string form
        {"n": 1, "extra": 1},  # closed
        {"n": 1, "e": {"x": 1}},  # an object without properties is closed too (the server prunes all)
        {"n": 1, "d": None},  # null where not nullable
        {"n": 1, "s": ["a", "a"]},
        {"q": 1},  # required, and n has no default
    ):
        assert not check.is_valid(bad), bad
    for unsupported in (
        {"type": "object", "x-kubernetes-embedded-resource": True},
        {"type": "string", "format": "byte"},
        {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() > 1"}]},
    ):
        with pytest.raises(NotImplementedError):
            crd_schema.to_json_schema({"type": "object", "properties": {"metadata": {}, "x": unsupported}})


def upstream_rows(section: str) -> dict[str, dict[str, str]]:
    """The table of one ``## <section>`` of tests/upstream/README.md: file -> {column: value}."""
    text = (UPSTREAM / "README.md").read_text()
    body = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip().strip("`") for cell in line.strip("|").split("|")))) for line in lines[2:]]
    return {row["File"]: row for row in rows}


def git_blob_hash(data: bytes) -> str:
    """What ``git hash-object`` prints: upstream's blob id of the same bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_vendored_crds_are_the_upstream_files_the_readme_names():
    rows = upstream_rows("CRDs")
    vendored = {p.name for p in (UPSTREAM / "crds").iterdir()}
    assert set(rows) == vendored == {file for file, _ in CRD_FILES.values()}
    for name, row in rows.items():
        assert row["Repository"].startswith("https://github.com/kubeflow/")
        assert re.fullmatch(r"[0-9a-f]{40}", row["Commit"]) and row["Path"].endswith(name)
        blob = git_blob_hash((UPSTREAM / "crds" / name).read_bytes())
        assert blob == row["Git blob"], f"{name} is not {row['Repository']} {row['Tag']}:{row['Path']}"


def test_kind_up_installs_the_operators_whose_crds_we_check():
    tags = {row["Repository"].rsplit("/", 1)[1]: row["Tag"] for row in upstream_rows("CRDs").values()}
    found = pins()
    assert found["TRAINING_OPERATOR_VERSION"] == tags["training-operator"]
    assert found["MPI_OPERATOR_VERSION"] == tags["mpi-operator"]
    assert f"v{found['SPARK_OPERATOR_CHART_VERSION']}" == tags["spark-operator"]  # chart x.y.z = tag vx.y.z


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
    # the backend release (a tag of kubeflow/pipelines) of the SDK's minor version; the SDK has
    # patch releases (2.17.3) the backend does not
    assert found["KFP_VERSION"].split(".")[:2] == metadata.version("kfp").split(".")[:2]
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
