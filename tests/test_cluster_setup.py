"""What gdmix sets up in a cluster matches what Kubeflow Pipelines 2.17.0 really runs.

The facts about KFP come from its own manifests, vendored byte for byte under
``tests/upstream/kfp-2.17.0/`` (see ``tests/upstream/README.md``): the SeaweedFS object store
(Service, NetworkPolicy, credentials Secret), the namespace KFP standalone installs into and the
accounts step pods run as (``pipeline-runner`` standalone, ``default-editor`` multi-user).

The kind scripts are run for real against fake ``kubectl`` / ``kind`` / ``helm`` / ``docker`` /
``curl`` / ``gdmix`` commands that record what they are asked to do (and, for ``kubectl create
secret --dry-run -o yaml | kubectl apply -f -``, what would be applied); ``kind-e2e.sh`` uploads
its data with the real gdmix Python to a local S3 server (moto) that stands in for SeaweedFS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from gdmix.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KIND = MANIFESTS / "kind"
KIND_UP = KIND / "kind-up.sh"
KIND_E2E = KIND / "kind-e2e.sh"
UPSTREAM = Path(__file__).resolve().parent / "upstream"
KFP = UPSTREAM / "kfp-2.17.0"
SEAWEEDFS = KFP / "manifests/kustomize/third-party/seaweedfs/base/seaweedfs"
PLATFORM_AGNOSTIC = KFP / "manifests/kustomize/env/platform-agnostic/kustomization.yaml"
MULTI_USER_PARAMS = KFP / "manifests/kustomize/base/installs/multi-user/api-service/params.env"
API_SERVER_CONFIG = KFP / "backend/src/apiserver/config/config.json"

SECRET = PipelineConfig().object_store_secret  # "gdmix-object-store"
#: where KFP standalone's jobs run: the namespace manifests/base creates (kind-e2e.sh passes it as
#: pipeline.namespace)
JOBS_NAMESPACE = yaml.safe_load((MANIFESTS / "base/kustomization.yaml").read_text())["namespace"]
SECRET_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def env_lines(text: str) -> dict[str, str]:
    pairs = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


# --- what KFP 2.17.0 runs (vendored) -------------------------------------------------------------


def kfp_namespace() -> str:
    """Where KFP standalone (env/platform-agnostic, which kind-up.sh applies) installs everything."""
    return load(PLATFORM_AGNOSTIC)["namespace"]


def seaweedfs_service() -> dict:
    return load(SEAWEEDFS / "seaweedfs-service.yaml")


def seaweedfs_policy() -> dict:
    return load(SEAWEEDFS / "seaweedfs-networkpolicy.yaml")


def kfp_artifact_secret() -> dict:
    return load(SEAWEEDFS / "mlpipeline-minio-artifact-secret.yaml")


def standalone_runner_account() -> str:
    return json.loads(API_SERVER_CONFIG.read_text())["DEFAULTPIPELINERUNNERSERVICEACCOUNT"]


def multi_user_runner_account() -> str:
    return env_lines(MULTI_USER_PARAMS.read_text())["DEFAULTPIPELINERUNNERSERVICEACCOUNT"]


def upstream_kfp_rows() -> dict[str, str]:
    """``tests/upstream/README.md``'s kubeflow/pipelines section: file -> git blob."""
    text = (UPSTREAM / "README.md").read_text()
    section = text.split("## kubeflow/pipelines", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{40})` \|$", section, flags=re.M))


def test_vendored_kfp_files_are_the_upstream_files_the_readme_names():
    rows = upstream_kfp_rows()
    text = (UPSTREAM / "README.md").read_text().split("## kubeflow/pipelines", 1)[1]
    assert "https://github.com/kubeflow/pipelines" in text and "tag `2.17.0`" in text
    vendored = {str(p.relative_to(KFP)) for p in KFP.rglob("*") if p.is_file()}
    assert vendored == set(rows)
    for path, blob in rows.items():
        data = (KFP / path).read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, path


def test_vendored_facts_are_consistent():
    """What the other tests rely on, said once: KFP standalone installs SeaweedFS into its own
    namespace, the SeaweedFS kustomization agrees, and the runner accounts exist."""
    assert "../../third-party/seaweedfs/base" in load(PLATFORM_AGNOSTIC)["resources"]
    assert load(SEAWEEDFS / "kustomization.yaml")["namespace"] == kfp_namespace() == "kubeflow"
    service = seaweedfs_service()
    assert service["metadata"]["namespace"] == kfp_namespace()
    pipeline_runner = load(KFP / "manifests/kustomize/base/pipeline/pipeline-runner-sa.yaml")
    assert pipeline_runner["kind"] == "ServiceAccount"
    assert pipeline_runner["metadata"]["name"] == standalone_runner_account() == "pipeline-runner"
    assert multi_user_runner_account() == "default-editor"


# --- rendering gdmix's kustomizations -------------------------------------------------------------


def render_offline(path: Path) -> list[dict]:
    """``kubectl kustomize`` for what gdmix's kustomizations use: ``resources``, ``namespace`` and
    ``replacements`` of a Role's namespace into RoleBinding subjects (manifests/multi-user)."""
    kustomization = load(path / "kustomization.yaml")
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources", "replacements"}
    assert not unsupported, f"{path}: not implemented here: {sorted(unsupported)}"
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        target = (path / entry).resolve()
        docs += render_offline(target) if target.is_dir() else load_all(target)
    if kustomization.get("namespace"):
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for replacement in kustomization.get("replacements", []):
        source = replacement["source"]
        assert source["fieldPath"] == "metadata.namespace"
        (value,) = [
            d["metadata"]["namespace"] for d in docs if d["kind"] == source["kind"] and d["metadata"]["name"] == source["name"]
        ]
        for target in replacement["targets"]:
            for doc in docs:
                if doc["kind"] != target["select"]["kind"]:
                    continue
                for field_path in target["fieldPaths"]:
                    match = re.fullmatch(r"subjects\.(\d+)\.namespace", field_path)
                    assert match, field_path
                    doc["subjects"][int(match.group(1))]["namespace"] = value
    return docs


def render(path: Path) -> list[dict]:
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True, timeout=120)
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    return render_offline(path)


def by_key(docs: list[dict]) -> dict[tuple, dict]:
    return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["standalone", "multi-user"])
def test_offline_renderer_agrees_with_kubectl(overlay):
    assert by_key(render_offline(MANIFESTS / overlay)) == by_key(render(MANIFESTS / overlay))


def copy_manifests(tmp_path: Path) -> Path:
    target = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, target, ignore=shutil.ignore_patterns("*.sh", "object-store.env"))
    return target


# --- defect 3: the object store KFP 2.17 really runs, reachable from the jobs' namespace ----------


def admits(policy: dict, namespace: dict, pod_labels: dict, port: int) -> bool:
    """Whether a NetworkPolicy's ingress admits a pod of another namespace on ``port`` (TCP).

    Implements what the vendored policy uses: ``namespaceSelector`` / ``podSelector`` with
    ``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist) and ``ports``. The
    namespace's labels include ``kubernetes.io/metadata.name``, which the API server sets.
    """
    labels = {**namespace["metadata"].get("labels", {}), "kubernetes.io/metadata.name": namespace["metadata"]["name"]}

    def selects(selector: dict, have: dict) -> bool:
        if any(have.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expression in selector.get("matchExpressions", []):
            key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
            ok = {
                "In": key in have and have[key] in values,
                "NotIn": key not in have or have[key] not in values,
                "Exists": key in have,
                "DoesNotExist": key not in have,
            }[operator]
            if not ok:
                return False
        return True

    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
            continue
        for peer in rule.get("from", []):
            if "ipBlock" in peer:
                continue  # pod traffic is not matched by ipBlock rules of this policy
            if "namespaceSelector" not in peer:
                continue  # a podSelector alone means the policy's own namespace
            if selects(peer["namespaceSelector"], labels) and selects(peer.get("podSelector", {}), pod_labels):
                return True
    return False


def test_network_policy_check_is_not_vacuous():
    policy = seaweedfs_policy()
    plain = {"metadata": {"name": JOBS_NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    assert not admits(policy, plain, {}, 8333)
    istio = {"metadata": {"name": "istio-system"}}
    assert admits(policy, istio, {}, 8333)


def s3_port(service: dict) -> int:
    """The Service port that reaches SeaweedFS's S3 server (container port 8333, ``http-s3``)."""
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "http-s3"]
    return port["port"]


def test_jobs_namespace_is_admitted_by_seaweedfs_network_policy():
    docs = by_key(render(MANIFESTS / "base"))
    namespace = docs[("Namespace", None, JOBS_NAMESPACE)]
    # the policy selects SeaweedFS's pods; the jobs' pods carry no particular label
    assert admits(seaweedfs_policy(), namespace, {}, s3_port(seaweedfs_service()))


def test_profile_namespaces_are_admitted_by_seaweedfs_network_policy():
    # multi-user Kubeflow: the jobs run in the profile namespace, which the profile controller labels
    profile = {"metadata": {"name": "kubeflow-user-example-com", "labels": {"app.kubernetes.io/part-of": "kubeflow-profile"}}}
    assert admits(seaweedfs_policy(), profile, {}, s3_port(seaweedfs_service()))


# --- running the kind scripts against fake tools --------------------------------------------------

FAKE_TOOL = r'''
import base64, json, os, pathlib, sys, time

tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
record = {"tool": tool, "argv": args}


def log():
    with open(os.environ["FAKE_LOG"], "a") as handle:
        handle.write(json.dumps(record) + "\n")


def option(name):
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


if tool == "kubectl":
    if args[:1] == ["--context"]:
        record["context"], args = args[1], args[2:]
    namespace = option("-n")
    verb = [a for a in args if not a.startswith("-") and a != namespace][0]
    if verb == "get" and "secret" in args:
        name = args[args.index("secret") + 1]
        key = option("-o").removeprefix("jsonpath={.data.").removesuffix("}")
        record["read"] = [namespace, name, key]
        value = json.loads(os.environ["FAKE_SECRETS"]).get(f"{namespace}/{name}", {}).get(key, "")
        sys.stdout.write(base64.b64encode(value.encode()).decode())
    elif verb == "create" and "secret" in args:
        name = args[args.index("generic") + 1]
        source = option("--from-env-file")
        pairs = {}
        for line in pathlib.Path(source).read_text().splitlines() if source else []:
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                pairs[key] = value
        for arg in args:
            if arg.startswith("--from-literal="):
                key, _, value = arg.removeprefix("--from-literal=").partition("=")
                pairs[key] = value
        data = {k: base64.b64encode(v.encode()).decode() for k, v in pairs.items()}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "data": data}
        sys.stdout.write(json.dumps(secret))
    elif verb == "apply" and option("-f") == "-":
        record["applied"] = sys.stdin.read()
    elif verb == "port-forward":
        log()
        time.sleep(600)
elif tool == "kind" and args[:2] == ["get", "clusters"]:
    print("gdmix")
elif tool == "gdmix" and args[:2] == ["datasets", "movielens-100k"]:
    out = pathlib.Path(option("--out"))
    for split in ("train", "validation"):
        (out / split).mkdir(parents=True)
        (out / split / "part-00000.parquet").write_bytes(b"PAR1 " + split.encode())
elif tool == "gdmix" and args[:2] == ["pipeline", "submit"]:
    record["config"] = pathlib.Path(args[2]).read_text()
log()
'''


@pytest.fixture
def fake_tools(tmp_path):
    """A PATH with fake cluster tools; returns (environment, function reading their log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "fake_tool.py"
    script.write_text(f"#!{sys.executable}\n{FAKE_TOOL}")
    script.chmod(0o755)
    for tool in ("kubectl", "kind", "helm", "docker", "curl", "gdmix"):
        (bin_dir / tool).symlink_to(script)
    log = tmp_path / "tools.jsonl"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_SECRETS": "{}",
        "PYTHON": sys.executable,
        "GDMIX": str(bin_dir / "gdmix"),
        "HOME": str(tmp_path / "home"),
        "GDMIX_IMAGE_TAG": "0.0.0-test",
    }

    def calls(tool: str | None = None) -> list[dict]:
        if not log.exists():
            return []
        records = [json.loads(line) for line in log.read_text().splitlines()]
        return [r for r in records if tool in (None, r["tool"])]

    return env, calls


KFP_CREDENTIALS = {"accesskey": "kfp-access-key-123", "secretkey": "kfp-secret-key-456"}


def run_kind_up(env: dict, object_store_env: Path) -> subprocess.CompletedProcess:
    env = {
        **env,
        "GDMIX_OBJECT_STORE_ENV": str(object_store_env),
        "FAKE_SECRETS": json.dumps({"kubeflow/mlpipeline-minio-artifact": KFP_CREDENTIALS}),
    }
    result = subprocess.run(["bash", str(KIND_UP)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def applied_secrets(calls) -> dict[str, dict[str, str]]:
    """namespace -> decoded data of every Secret named ``gdmix-object-store`` kind-up applied."""
    found = {}
    for call in calls("kubectl"):
        for doc in yaml.safe_load_all(call.get("applied") or ""):
            if doc and doc["kind"] == "Secret" and doc["metadata"]["name"] == SECRET:
                data = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
                found[doc["metadata"]["namespace"]] = data
    return found


def test_kind_up_creates_the_secret_where_step_pods_and_jobs_run(fake_tools, tmp_path):
    """Defect 2: KFP standalone runs the step pods in its own namespace, the jobs run in gdmix's;
    each reads the Secret from its own namespace."""
    env, calls = fake_tools
    run_kind_up(env, tmp_path / "no-such.env")
    secrets = applied_secrets(calls)
    assert set(secrets) == {kfp_namespace(), JOBS_NAMESPACE}
    assert secrets[kfp_namespace()] == secrets[JOBS_NAMESPACE]
    assert set(secrets[JOBS_NAMESPACE]) == SECRET_KEYS


def test_kind_up_copies_an_env_file_into_both_namespaces(fake_tools, tmp_path):
    env, calls = fake_tools
    values = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_ENDPOINT_URL": "https://s3.example:9000"}
    object_store_env = tmp_path / "object-store.env"
    object_store_env.write_text("# mine\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    run_kind_up(env, object_store_env)
    assert applied_secrets(calls) == {kfp_namespace(): values, JOBS_NAMESPACE: values}
    assert not [c for c in calls("kubectl") if c.get("read")]  # KFP's own credentials are not read


def test_kind_up_points_the_secret_at_the_seaweedfs_kfp_runs(fake_tools, tmp_path):
    """Defect 3: the endpoint is KFP 2.17's SeaweedFS S3 Service, the credentials those of the
    Secret KFP creates for it, read (not guessed) from the namespace KFP runs in."""
    env, calls = fake_tools
    run_kind_up(env, tmp_path / "no-such.env")
    secrets = applied_secrets(calls)
    endpoint = urlsplit(secrets[JOBS_NAMESPACE]["AWS_ENDPOINT_URL"])
    service = seaweedfs_service()
    assert endpoint.scheme == "http"
    assert endpoint.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert endpoint.port == s3_port(service)

    upstream = kfp_artifact_secret()
    reads = [c["read"] for c in calls("kubectl") if c.get("read")]
    assert reads and {(namespace, name) for namespace, name, _ in reads} == {(kfp_namespace(), upstream["metadata"]["name"])}
    assert {key for _, _, key in reads} <= set(upstream.get("stringData", {})) | set(upstream.get("data", {}))
    assert secrets[JOBS_NAMESPACE]["AWS_ACCESS_KEY_ID"] == KFP_CREDENTIALS["accesskey"]
    assert secrets[JOBS_NAMESPACE]["AWS_SECRET_ACCESS_KEY"] == KFP_CREDENTIALS["secretkey"]
    for call in calls():  # the credentials never appear on a command line
        assert not set(KFP_CREDENTIALS.values()) & set(" ".join(call["argv"]).split("=")), call["argv"]


def test_kind_up_applies_the_standalone_overlay_and_watches_the_jobs_namespace(fake_tools, tmp_path):
    env, calls = fake_tools
    run_kind_up(env, tmp_path / "no-such.env")
    applied_dirs = [c["argv"][c["argv"].index("-k") + 1] for c in calls("kubectl") if "-k" in c["argv"]]
    assert str(KIND) in applied_dirs
    assert "../standalone" in load(KIND / "kustomization.yaml")["resources"]
    (helm,) = [c["argv"] for c in calls("helm") if "upgrade" in c["argv"]]
    assert f"spark.jobNamespaces={{{JOBS_NAMESPACE}}}" in helm
    assert "spark.serviceAccount.create=false" in helm  # gdmix-spark comes from manifests/rbac


# --- defect 4: kind-e2e runs on real data in the object store --------------------------------------


@pytest.fixture
def s3_server():
    """A local S3 (moto) standing in for SeaweedFS behind `kubectl port-forward`."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield port
    server.stop()


def test_kind_e2e_uploads_movielens_and_submits_s3_uris(fake_tools, s3_server, tmp_path):
    import boto3

    env, calls = fake_tools
    credentials = {"AWS_ACCESS_KEY_ID": "e2e-access-key-789", "AWS_SECRET_ACCESS_KEY": "e2e-secret-key-012"}
    endpoint = f"http://{seaweedfs_service()['metadata']['name']}.{kfp_namespace()}.svc.cluster.local:8333"
    env = {
        **{k: v for k, v in env.items() if not k.startswith("AWS_")},
        "S3_PORT": str(s3_server),
        "FAKE_SECRETS": json.dumps({f"{JOBS_NAMESPACE}/{SECRET}": {**credentials, "AWS_ENDPOINT_URL": endpoint}}),
    }
    result = subprocess.run(["bash", str(KIND_E2E)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    # the data came from `gdmix datasets movielens-100k`, fetched at run time
    assert [c["argv"][:2] for c in calls("gdmix")] == [["datasets", "movielens-100k"], ["pipeline", "submit"]]
    # it went through a port-forward of KFP's SeaweedFS S3 service
    (forward,) = [c["argv"] for c in calls("kubectl") if "port-forward" in c["argv"]][:1]
    assert f"svc/{seaweedfs_service()['metadata']['name']}" in forward and f"{s3_server}:8333" in forward

    (submit,) = [c for c in calls("gdmix") if c["argv"][:2] == ["pipeline", "submit"]]
    argv = submit["argv"]
    train, validation = argv[argv.index("--train-data") + 1], argv[argv.index("--validation-data") + 1]
    data_root = argv[argv.index("--data-root") + 1]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert train.startswith("s3://mlpipeline/gdmix-e2e/") and train.endswith("/data/train")
    assert validation == train.removesuffix("train") + "validation"
    assert data_root.startswith("s3://") and any(o.startswith("output=s3://") for o in overrides)
    assert "--wait" in argv
    # compiled for the cluster backend (a --set at submit cannot change the compiled shape)
    pipeline = yaml.safe_load(submit["config"])["pipeline"]
    assert pipeline["backend"] == "kubernetes"
    # the jobs go where kind-up.sh set up their RBAC, Secret and Spark operator
    assert pipeline["namespace"] == JOBS_NAMESPACE

    # the objects are in the store, under the URIs the run was given
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_server}", region_name="us-east-1",
                      aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"])
    for uri, split in ((train, "train"), (validation, "validation")):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = s3.get_object(Bucket=bucket, Key=f"{key}/part-00000.parquet")["Body"].read()
        assert body == b"PAR1 " + split.encode()
    for call in calls():  # the credentials never appear on a command line
        assert not set(credentials.values()) & set(re.split(r"[=\s]", " ".join(call["argv"])))


def test_kind_e2e_defaults_to_the_movielens_example():
    text = KIND_E2E.read_text()
    assert '"$ROOT/gdmix/examples/movielens-100k"' in text
    assert (ROOT / "gdmix/examples/movielens-100k/lr.yaml").exists()
    assert "datasets movielens-100k" in text and "data/movielens-100k" not in text


# --- defect 8: the launcher Role is bound to the accounts KFP's step pods run as -----------------


def launcher_bindings(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "gdmix-launcher"]


def test_standalone_binds_the_launcher_role_to_pipeline_runner():
    for overlay in ("standalone", "kind"):
        docs = render(MANIFESTS / overlay)
        (binding,) = launcher_bindings(docs)
        assert binding["metadata"]["namespace"] == JOBS_NAMESPACE
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gdmix-launcher"}
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": standalone_runner_account(), "namespace": kfp_namespace()}
        ]
        assert ("Role", JOBS_NAMESPACE, "gdmix-launcher") in by_key(docs)


def test_no_launcher_account_that_no_kfp_pod_runs_as():
    kfp_accounts = {standalone_runner_account(), multi_user_runner_account()}
    for overlay in ("base", "standalone", "kind", "multi-user"):
        docs = render(MANIFESTS / overlay)
        assert "gdmix-launcher" not in {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
        for binding in launcher_bindings(docs):
            assert {s["name"] for s in binding["subjects"]} <= kfp_accounts, overlay


def check_multi_user(docs: list[dict], profile: str) -> None:
    keys = by_key(docs)
    assert all(d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding") for d in docs)
    assert {d["metadata"]["namespace"] for d in docs} == {profile}
    (binding,) = launcher_bindings(docs)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": multi_user_runner_account(), "namespace": profile}]
    base = by_key(render(MANIFESTS / "base"))
    for kind, name in (("Role", "gdmix-launcher"), ("Role", "gdmix-spark")):
        assert keys[(kind, profile, name)]["rules"] == base[(kind, JOBS_NAMESPACE, name)]["rules"]
    # the Spark driver's account exists where the SparkApplications run
    assert ("ServiceAccount", profile, "gdmix-spark") in keys
    assert keys[("RoleBinding", profile, "gdmix-spark")]["subjects"] == [
        {"kind": "ServiceAccount", "name": "gdmix-spark", "namespace": profile}
    ]


def test_multi_user_overlay_puts_everything_in_the_profile_namespace():
    namespace = load(MANIFESTS / "multi-user/kustomization.yaml")["namespace"]
    check_multi_user(render(MANIFESTS / "multi-user"), namespace)


def test_multi_user_overlay_takes_any_profile_namespace(tmp_path):
    """`kustomize edit set namespace <profile>` is the one change a user makes."""
    manifests = copy_manifests(tmp_path)
    path = manifests / "multi-user/kustomization.yaml"
    kustomization = load(path)
    kustomization["namespace"] = "team-a"
    path.write_text(yaml.safe_dump(kustomization))
    check_multi_user(render(manifests / "multi-user"), "team-a")
    check_multi_user(render_offline(manifests / "multi-user"), "team-a")


def test_object_store_docs_cover_both_deployments():
    text = (MANIFESTS / "object-store/kustomization.yaml").read_text()
    assert "namespace" not in load(MANIFESTS / "object-store/kustomization.yaml")
    for command in ("kubectl apply -n kubeflow -k", "kubectl apply -n gdmix -k", "kubectl apply -n <profile> -k"):
        assert command in text
    readme = (MANIFESTS / "README.md").read_text()
    for overlay in ("standalone/", "multi-user/", "rbac/", "object-store/"):
        assert f"`{overlay}`" in readme


# --- pins ------------------------------------------------------------------------------------------

#: what kind-up.sh fetches from each pinned tag (checked against local mirrors where they exist)
FETCHED = {
    "kubeflow/pipelines": ("KFP_VERSION", ["manifests/kustomize/cluster-scoped-resources",
                                           "manifests/kustomize/env/platform-agnostic"]),
    "kubeflow/training-operator": ("TRAINING_OPERATOR_VERSION", ["manifests/overlays/standalone"]),
    "kubeflow/mpi-operator": ("MPI_OPERATOR_VERSION", ["deploy/v2beta1/mpi-operator.yaml"]),
}


def kind_up_pins() -> dict[str, str]:
    return dict(re.findall(r'^([A-Z_]+)="\$\{\1:-([^}]+)\}"', KIND_UP.read_text(), flags=re.M))


def test_kind_up_installs_the_kfp_release_vendored_here():
    pins = kind_up_pins()
    assert KFP.name == f"kfp-{pins['KFP_VERSION']}"
    text = KIND_UP.read_text()
    for repository, (pin, paths) in FETCHED.items():
        for path in paths:
            if repository == "kubeflow/mpi-operator":
                url = f"https://raw.githubusercontent.com/{repository}/${pin}/{path}"
            elif repository == "kubeflow/pipelines":
                url = f"github.com/{repository}/{path}?ref=${pin}"
            else:
                url = f"github.com/{repository}.git/{path}?ref=${pin}"
            assert url in text, url


@pytest.mark.parametrize("repository", sorted(FETCHED))
def test_kind_up_fetches_paths_that_exist_at_the_pinned_tags(repository):
    mirror = Path("/work/.mirror") / repository.replace("/", "+") / "repo"
    if not mirror.exists():
        pytest.skip(f"no local mirror of {repository}")
    pin, paths = FETCHED[repository]
    tag = kind_up_pins()[pin]
    for path in paths:
        found = subprocess.run(["git", "-C", str(mirror), "ls-tree", "--name-only", tag, path],
                               capture_output=True, text=True, timeout=60)
        assert found.returncode == 0 and found.stdout.strip() == path, f"{repository}@{tag}: no {path}"
