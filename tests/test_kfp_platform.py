"""What a step's pod really receives on Kubeflow Pipelines, read from the compiled YAML.

``rehearsal/kfp_driver.py`` ports the KFP driver's rules (kubeflow/pipelines tag 2.17.0,
``backend/src/v2/driver/driver.go`` ``getTaskConfigOptions`` / ``initPodSpecPatch`` and
``backend/src/v2/driver/k8s.go`` ``extendPodSpecPatch``): a component that declares a
task-config passthrough loses that field from its own pod unless ``apply_to_task`` is set; a
``secretAsEnv`` reference is optional only when the compiled spec says so. These tests apply
those rules to the checked-in compiled pipelines (``pipelines/compiled/``), not to the Python
that produced them, then hand the resulting TaskConfig to the launchers and check the jobs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from gdmix.config import validate_config
from gdmix.errors import GdmixError
from gdmix.kube.task_config import spark_pod_overrides
from gdmix.stages.backends import Launch, run_spark_prep, run_workers
from gdmix.stages.locations import require_credentials

from rehearsal import kfp_driver as driver

from conftest import synthetic_config
from test_kube_jobs import FakeCoreV1, FakeCustomObjects, condition

ROOT = Path(__file__).resolve().parent.parent

COMPILED = sorted((ROOT / "pipelines" / "compiled").glob("*.yaml"))
SECRET = "gdmix-object-store"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key", "AWS_ENDPOINT_URL": "http://s3.store:8333"}
LAUNCHERS = ("exec-prepare", "exec-fixed-effect", "exec-detext")


def _executors(path: Path) -> tuple[dict, dict, list[str]]:
    pipeline, platform = driver.load(path)
    return pipeline, platform, sorted(pipeline["deploymentSpec"]["executors"])


@pytest.mark.parametrize("compiled", COMPILED, ids=lambda p: p.stem)
def test_every_step_pod_gets_the_object_store_credentials(compiled):
    """Defect: launcher components passed ENV through without apply_to_task, so the driver left
    the Secret's variables off the step's own pod and the launcher could not reach the store."""
    pipeline, platform, executors = _executors(compiled)
    for executor in executors:
        pod = driver.step_pod(pipeline, platform, executor)
        env = driver.resolve_env(pod.env, {SECRET: CREDENTIALS})
        assert {k: env.get(k) for k in CREDENTIALS} == CREDENTIALS, f"{compiled.name} {executor}: {sorted(env)}"
        assert env["GDMIX_OBJECT_STORE_SECRET"] == SECRET


@pytest.mark.parametrize("compiled", COMPILED, ids=lambda p: p.stem)
def test_a_missing_secret_stops_every_step_naming_it(compiled):
    """Defect: optional=True let steps start without credentials; now the kubelet refuses to
    start the container and says which Secret is missing."""
    pipeline, platform, executors = _executors(compiled)
    for executor in executors:
        pod = driver.step_pod(pipeline, platform, executor)
        with pytest.raises(driver.CreateContainerConfigError, match=f'secret "{SECRET}" not found'):
            driver.resolve_env(pod.env, {})


def test_cluster_launchers_pass_scheduling_to_the_job_and_env_to_both():
    pipeline, platform, executors = _executors(ROOT / "pipelines" / "compiled" / "movielens-100k-lr-kubernetes.yaml")
    launchers = [e for e in executors if e in LAUNCHERS]
    assert launchers == ["exec-fixed-effect", "exec-prepare"]
    for executor in launchers:
        component = driver.components_by_executor(pipeline)[executor]
        passthrough, on_pod = driver.task_config_options(component)
        assert all(passthrough.values())
        assert on_pod == {"ENV": True, "KUBERNETES_VOLUMES": True, "RESOURCES": False, "KUBERNETES_TOLERATIONS": False,
                          "KUBERNETES_NODE_SELECTOR": False, "KUBERNETES_AFFINITY": False}
        task_config = driver.step_pod(pipeline, platform, executor).task_config
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in task_config["env"] if "valueFrom" in e}
        assert refs == {k: {"name": SECRET, "key": k, "optional": False} for k in CREDENTIALS}


def test_in_pod_launchers_declare_no_passthrough():
    """backend: local runs the work in the step's pod: everything set on the task must stay there."""
    pipeline, _, executors = _executors(ROOT / "pipelines" / "compiled" / "movielens-100k-lr.yaml")
    for executor in (e for e in executors if e in LAUNCHERS):
        assert "taskConfigPassthroughs" not in driver.components_by_executor(pipeline)[executor]


def _task_config(executor: str = "exec-fixed-effect") -> dict:
    """The TaskConfig the driver gives a cluster launcher, plus scheduling a user set on the task."""
    pipeline, platform, _ = _executors(ROOT / "pipelines" / "compiled" / "movielens-100k-lr-kubernetes.yaml")
    task_config = driver.step_pod(pipeline, platform, executor).task_config
    return task_config | {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                          "nodeSelector": {"pool": "cpu"}, "resources": {"limits": {"cpu": "4", "memory": "8Gi"}}}


def _succeeding_cluster():
    """Fake API clients whose job succeeds at the first poll (a TFJob's condition, a SparkApplication's state)."""
    done = {"conditions": [condition("Succeeded")], "applicationState": {"state": "COMPLETED"}}
    return {"custom_api": FakeCustomObjects([done]), "core_api": FakeCoreV1(), "poll_seconds": 0}


def test_tfjob_workers_get_the_credentials_and_the_tasks_scheduling():
    options = _succeeding_cluster()
    launch = Launch(backend="kubernetes", namespace="gdmix", image="registry/gdmix-trainer:1", secret=SECRET, timeout_seconds=30,
                    task_config=_task_config())
    run_workers(["fixed-effect", "config.yaml"], 2, launch, "fe", log=lambda _: None, job_options=options)
    manifest = options["custom_api"].created[0][4]
    pod = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {k: SECRET for k in CREDENTIALS}
    assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]
    assert pod["tolerations"][0]["key"] == "dedicated" and pod["nodeSelector"] == {"pool": "cpu"}
    assert container["resources"] == {"limits": {"cpu": "4", "memory": "8Gi"}}


def test_spark_driver_and_executors_get_the_tasks_passthrough(tmp_path):
    """Defect: the SparkApplication got only envFrom of the Secret, none of the task's settings."""
    options = _succeeding_cluster()
    raw = synthetic_config(str(tmp_path / "data"), str(tmp_path / "out"))
    raw["prep"] = {"input": {"path": "s3://bucket/raw", "format": "parquet"}, "output": "s3://bucket/prepared",
                   "label": {"column": "label"},
                   "bags": {"global": {"bags": ["global"]}}}
    config = validate_config(raw)
    launch = Launch(backend="kubernetes", namespace="gdmix", image="registry/gdmix-spark:1", secret=SECRET, timeout_seconds=30,
                    task_config=_task_config("exec-prepare"))
    run_spark_prep(config, "s3://bucket/prepared.job/config.yaml", launch, "prep", log=lambda _: None,
                   job_options=options)
    spec = options["custom_api"].created[0][4]["spec"]
    for role in ("driver", "executor"):
        refs = {e["name"] for e in spec[role]["env"] if "valueFrom" in e}
        assert refs == set(CREDENTIALS), role
        assert spec[role]["tolerations"][0]["key"] == "dedicated" and spec[role]["nodeSelector"] == {"pool": "cpu"}
        assert spec[role]["coreLimit"] == "4"


def test_spark_passthrough_maps_accelerators_and_volumes():
    passed = spark_pod_overrides({"resources": {"limits": {"nvidia.com/gpu": 1.0}},
                                  "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]})
    assert passed.pod["gpu"] == {"name": "nvidia.com/gpu", "quantity": 1}
    assert passed.pod["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert passed.volumes == [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]


def test_jobs_go_to_the_launcher_pods_own_namespace(tmp_path, monkeypatch):
    """Defect: jobs went to the config's namespace (default 'gdmix'), where KFP's step account
    has no rights; now the default is the namespace the launcher pod runs in."""
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-a\n")
    monkeypatch.setattr("gdmix.kube.runner.SERVICE_ACCOUNT_NAMESPACE", str(namespace_file))
    options = _succeeding_cluster()
    launch = Launch(backend="kubernetes", image="registry/gdmix-trainer:1", secret=SECRET)
    assert launch.namespace is None and launch.job_namespace() == "team-a"
    run_workers(["fixed-effect", "config.yaml"], 1, launch, "fe", log=lambda _: None, job_options=options)
    assert options["custom_api"].created[0][2] == "team-a"
    explicit = Launch(backend="kubernetes", namespace="gdmix", image="i:1")
    assert explicit.job_namespace() == "gdmix"


def test_blank_credentials_fail_the_step_naming_the_secret():
    environ = {"GDMIX_OBJECT_STORE_SECRET": SECRET, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "key",
               "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    with pytest.raises(GdmixError, match=f"AWS_ACCESS_KEY_ID.*Secret '{SECRET}'"):
        require_credentials("s3://bucket/x", environ)
    assert require_credentials("/local/path", environ) == "/local/path"
    assert require_credentials("s3://bucket/x", environ | {"AWS_ACCESS_KEY_ID": "id"}) == "s3://bucket/x"
    assert require_credentials("s3://bucket/x", {}) == "s3://bucket/x"  # not a pipeline step: other credential sources
    local = {k: v for k, v in environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    assert require_credentials("s3://bucket/x", local) == "s3://bucket/x"  # kfp.local: no Secret involved


def test_compiled_pipelines_have_distinct_names_and_cluster_variants():
    names = {path.stem: driver.load(path)[0]["pipelineInfo"]["name"] for path in COMPILED}
    assert len(set(names.values())) == len(names), names
    assert {"movielens-100k-lr-kubernetes", "movielens-100k-detext-kubernetes"} <= set(names)
    for stem, name in names.items():
        assert name == f"gdmix-{stem}"
        pipeline = driver.load(ROOT / "pipelines" / "compiled" / f"{stem}.yaml")[0]
        default = yaml.safe_load(pipeline["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"])
        backend = default.get("pipeline", {}).get("backend", "local")
        assert backend == ("kubernetes" if stem.endswith("-kubernetes") else "local")
        images = {e["container"]["image"] for k, e in pipeline["deploymentSpec"]["executors"].items() if k in LAUNCHERS}
        role = "launcher" if backend == "kubernetes" else None
        assert role is None or images == {f"localhost/gdmix-{role}:0.1.0"}


def test_job_pods_opt_out_of_istio_sidecars():
    """Multi-user Kubeflow injects Istio sidecars into profile namespaces; a sidecar never exits,
    so a finished worker's pod would keep its job running. Every launched pod opts out."""
    from gdmix.kube import manifests as m

    pod = m.PodSettings(image="i:1", command=["python"])
    tf = m.tfjob("j", "ns", pod, 2)
    mpi = m.mpijob("k", "ns", pod, pod, 2)
    spark = m.spark_application("s", "ns", "i:1", "local:///x.py", [], {}, {}, 1)
    templates = [tf["spec"]["tfReplicaSpecs"]["Worker"]["template"],
                 *(r["template"] for r in mpi["spec"]["mpiReplicaSpecs"].values())]
    for labels in [t["metadata"]["labels"] for t in templates] + [spark["spec"]["driver"]["labels"],
                                                                   spark["spec"]["executor"]["labels"]]:
        assert labels["sidecar.istio.io/inject"] == "false"


def test_mpijob_workers_are_ready_only_when_sshd_listens():
    """WaitForWorkersReady and the workers' DNS names wait for Ready: it must mean sshd is up."""
    from gdmix.kube import manifests as m

    pod = m.PodSettings(image="i:1", command=["python"])
    job = m.mpijob("k", "ns", pod, pod, 2)
    replicas = job["spec"]["mpiReplicaSpecs"]
    probe = replicas["Worker"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["tcpSocket"] == {"port": m.SSHD_PORT}
    assert "readinessProbe" not in replicas["Launcher"]["template"]["spec"]["containers"][0]


# --- the nested pass DAGs, as KFP's driver resolves their steps' inputs (rehearsal/kfp_driver.py) --

TUNED = ROOT / "pipelines" / "compiled" / "movielens-100k-lr-tuned.yaml"


def _passes(pipeline: dict) -> list[str]:
    """The root's pass tasks, in pass order (their display names are "pass N")."""
    tasks = pipeline["root"]["dag"]["tasks"]
    named = {spec["taskInfo"]["name"]: name for name, spec in tasks.items() if spec["taskInfo"]["name"].startswith("pass ")}
    return [named[f"pass {n}"] for n in range(1, len(named) + 1)]


@pytest.mark.parametrize("compiled", COMPILED, ids=lambda p: p.stem)
def test_every_step_input_resolves_as_the_driver_resolves_it(compiled):
    """Through the pass sub-DAGs and their ParallelFor iterations, every input a step's component
    requires reaches it, from a task that exists where the driver looks for it."""
    pipeline, _ = driver.load(compiled)
    steps = driver.steps(pipeline)
    for path, step in steps.items():
        definitions = pipeline["components"][step.component].get("inputDefinitions", {})
        required = {name for name, spec in definitions.get("artifacts", {}).items() if not spec.get("isOptional")}
        assert required <= set(step.artifacts), (path, sorted(required - set(step.artifacts)))
        produced = [p for v in list(step.artifacts.values()) + list(step.parameters.values())
                    for p in (v if isinstance(v, list) else [v]) if isinstance(p, driver.Produced)]
        assert all(p.task in steps for p in produced), path


def test_each_pass_takes_the_table_and_models_of_the_pass_before():
    pipeline, _ = driver.load(TUNED)
    passes = _passes(pipeline)
    assert len(passes) == 5
    tasks = pipeline["root"]["dag"]["tasks"]
    assert len({tasks[name]["componentRef"]["name"] for name in passes[1:]}) == 1  # one later-pass definition
    steps = driver.steps(pipeline)
    in_pass = {n: {step.component: step for path, step in steps.items() if path[0] == name} for n, name in
               enumerate(passes, 1)}
    first = {path[1]: step for path, step in steps.items() if path[0] == passes[0]}
    assert "scores" not in first["fixed-effect"].artifacts and "previous" not in first["fixed-effect"].artifacts
    for number in range(2, 6):
        before, now = passes[number - 2], passes[number - 1]
        fixed = next(step for path, step in steps.items() if path == (now, "fixed-effect"))
        assert fixed.artifacts["previous"] == driver.Produced((before, "fixed-effect"), "model")
        last_update = max((path for path in steps if path[0] == before and path[1].startswith("update-scores")),
                          key=lambda path: (len(path[1]), path[1]))
        assert fixed.artifacts["scores"] == driver.Produced(last_update, "table")
        trainers = [step for path, step in steps.items() if path[0] == now and path[-1] == "random-effect"]
        assert trainers and all(t.artifacts["previous"] == driver.Produced((before, "random-effect-plan"), "model")
                                for t in trainers)
        assert len(in_pass[number]) == len(in_pass[2])
    summaries = next(step for path, step in steps.items() if path == (passes[2], "update-scores-2"))
    assert summaries.parameters["partition_summaries"] == [
        driver.Produced((passes[2], f"for-loop-2[{i}]", "random-effect"), "Output") for i in range(4)]
    assert summaries.parameters["pass_number"] == 3


def test_a_nested_pipeline_cannot_leave_out_an_artifact_input():
    """Why pass 1 has a pipeline of its own: the driver fails a componentInputArtifact its parent
    DAG lacks, as KFP 2.17.0's resolveInputArtifact does, ``= None`` default or not."""
    pipeline, _ = driver.load(TUNED)
    del pipeline["root"]["dag"]["tasks"][_passes(pipeline)[1]]["inputs"]["artifacts"]["scores"]
    with pytest.raises(driver.DriverError, match="parent DAG does not have input artifact scores"):
        driver.steps(pipeline)


def test_the_plumbing_check_catches_what_kfp_local_would_resolve_otherwise(tmp_path):
    """The rehearsal's check of kfp.local's executor inputs: the step comes from where kfp.local
    roots its outputs, and an input artifact from the wrong pass, or a title the launcher would
    fill in otherwise, is a difference."""
    pipeline, _ = driver.load(TUNED)
    plumbing = driver.Plumbing(pipeline, {"data_root": "s3://b/runs"})
    passes = _passes(pipeline)
    root = tmp_path / "run-1"

    def executor_input(step):
        folder = root.joinpath(*(re.sub(r"\[(\d+)\]$", r"-iteration-\1", p) for p in step.path[:-1]),
                               step.component.removeprefix("comp-"))
        outputs = pipeline["components"][step.component].get("outputDefinitions", {})
        return {"outputs": {"outputFile": str(folder / "executor_output.json"),
                            "artifacts": {k: {"artifacts": [{"uri": str(folder / k)}]} for k in outputs.get("artifacts", {})},
                            "parameters": {k: {"outputFile": str(folder / k)} for k in outputs.get("parameters", {})}}}

    for path, step in driver.steps(pipeline, {"data_root": "s3://b/runs"}).items():  # in order, as kfp.local runs them
        given = executor_input(step)
        assert plumbing.step(given, str(tmp_path)) is plumbing.by_place[(path[:-1], step.component)]
        parameters, uris = plumbing.expected(step)
        defaults = {name: spec["defaultValue"] for name, spec in pipeline["components"][step.component]
                    .get("inputDefinitions", {}).get("parameters", {}).items() if "defaultValue" in spec}
        given["inputs"] = {"parameterValues": defaults | parameters,  # kfp.local passes the defaults too
                           "artifacts": {k: {"artifacts": [{"uri": u} for u in v]} for k, v in uris.items()}}
        assert plumbing.differences(step, given) == [], path
        if path == (passes[2], "fixed-effect"):
            wrong = json.loads(json.dumps(given))
            wrong["inputs"]["artifacts"]["previous"]["artifacts"][0]["uri"] = uris["scores"][0]
            assert [d.split(":")[0] for d in plumbing.differences(step, wrong)] == ["artifact previous"]
        if path == (passes[2], "update-scores"):  # it evaluates the table it writes
            assert parameters["title"] == "GDMix after pass 3 global"
            wrong = json.loads(json.dumps(given))
            wrong["inputs"]["parameterValues"]["title"] = "GDMix after pass 3.0 global"  # kfp.local's text of a number
            assert [d.split(":")[0] for d in plumbing.differences(step, wrong)] == ["parameter title"]
        for name in given["outputs"]["parameters"]:
            Path(given["outputs"]["outputFile"]).parent.mkdir(parents=True, exist_ok=True)
            Path(given["outputs"]["outputFile"]).write_text(json.dumps({"parameterValues": {name: f"{path}"}}))
        plumbing.record(step, given)
