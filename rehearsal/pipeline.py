"""The cluster rehearsal end to end: a ``backend: kubernetes`` pipeline, every step in its image.

``python -m rehearsal.pipeline`` (``make rehearsal``) does what a Kubeflow cluster would, as far
as one machine can:

1. an S3 server in its own container (credentials required) holds the data: a MovieLens-shaped
   synthetic dataset (a global fixed effect, per-user and per-item random effects) is uploaded;
2. the fake cluster (:mod:`rehearsal.cluster`) serves the Kubernetes API the launchers call and
   turns their TFJob / SparkApplication into containers of the rendered images; the Secret
   ``gdmix-object-store`` exists in ``kubeflow`` (step pods) and ``gdmix`` (jobs);
3. the example is compiled with ``backend: kubernetes`` and run by ``kfp.local``'s DockerRunner,
   with one change: each step's container gets only what the KFP driver would put on its pod
   according to the compiled platform spec (:mod:`rehearsal.kfp_driver`: env resolved from the
   Secret, the TaskConfig in the executor input), the pod's service-account token and the API
   server's address, on the cluster's network, as uid 1000; and each step must receive the
   inputs the driver resolves for it through the pass sub-DAGs and ParallelFor iterations
   (:func:`rehearsal.kfp_driver.steps`), or it fails before it starts;
4. the run must end with the same metrics as ``gdmix train`` on the same config (1e-6), no data
   file outside the object store (the local pipeline root holds only KFP's small artifacts),
   and every job deleted with no container left.

Exits non-zero, with the reason, when any of that fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rehearsal import kfp_driver

ROOT = Path(__file__).resolve().parent.parent
SECRET = "gdmix-object-store"
STEP_NAMESPACE, JOB_NAMESPACE = "kubeflow", "gdmix"  # KFP standalone: step pods, jobs (manifests/standalone)
BUCKET = "gdmix-rehearsal"
TOLERANCE = 1e-6


def rehearsal_config(data: str, output: str) -> dict:
    """The MovieLens-shaped example (global + per-user + per-item), sized for 2 cores. Three
    passes: pass 1 and two runs of the one later-pass DAG, each handing its score table and
    models to the next (the nested pipelines of :mod:`gdmix_pipelines.gdmix_pipeline`)."""
    return {
        "data": {"train": f"{data}/train", "validation": f"{data}/validation"},
        "output": output,
        "passes": 3,
        "coordinates": [
            {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
            {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "per_user_id",
             "partitions": 2},
            {"name": "per_item", "type": "random_effect", "entity": "item_id", "feature_bag": "per_item_id",
             "partitions": 2},
        ],
        "pipeline": {"name": "gdmix-rehearsal", "backend": "kubernetes", "namespace": JOB_NAMESPACE,
                     "fixed_effect_workers": 2, "partition_groups": 2, "parallelism": 1,
                     "object_store_secret": SECRET, "job_timeout_seconds": 1800},
    }


class DriverTaskHandler:
    """kfp.local's DockerTaskHandler, with each step's container set up as the KFP driver's pod
    and checked to get the inputs KFP's driver would give it.

    kfp.local hands over the image, the resolved command and the pipeline root. Which task this
    is comes from where kfp.local roots its outputs (:meth:`rehearsal.kfp_driver.Plumbing.step`);
    the compiled pipeline says what its pod gets (:func:`rehearsal.kfp_driver.step_pod`) and where
    each of its inputs comes from: a step whose executor input differs from the driver's
    (another task's artifact, another value) fails before its container starts.
    """

    compiled: tuple[dict, dict] | None = None
    plumbing: kfp_driver.Plumbing | None = None
    cluster = None
    secrets: dict[str, dict[str, str]] = {}
    steps: list[dict] = []

    def __init__(self, image, full_command, pipeline_root, runner, env_vars=None):
        self.image, self.full_command, self.pipeline_root = image, list(full_command), pipeline_root

    @classmethod
    def prepare(cls, compiled: Path, arguments: dict) -> None:
        """Read the compiled pipeline and resolve its steps' inputs for a run with ``arguments``."""
        cls.compiled = kfp_driver.load(compiled)
        cls.plumbing = kfp_driver.Plumbing(cls.compiled[0], arguments)
        cls.steps = []

    def run(self):
        from kfp.local import status

        pipeline, platform = self.compiled
        command = list(self.full_command)
        at = command.index("--executor_input") + 1
        executor_input = json.loads(command[at])
        step = self.plumbing.step(executor_input, self.pipeline_root)
        pod = kfp_driver.step_pod(pipeline, platform, step.executor)
        record = {"task": "/".join(step.path), "executor": step.executor, "image": self.image}
        differences = self.plumbing.differences(step, executor_input)
        if differences:
            print(f"{record['task']}: kfp.local's inputs are not the KFP driver's: " + "; ".join(differences))
            self.steps.append(record | {"status": "inputs differ", "differences": differences})
            return status.Status.FAILURE
        if pod.task_config is not None:  # the driver's TaskConfig in the executor input
            component = pipeline["components"][step.component]
            command[at] = json.dumps(kfp_driver.with_task_config(executor_input, component, pod.task_config))
        env = kfp_driver.resolve_env(pod.env, self.secrets)
        started = time.monotonic()
        code, log = self.cluster.run_in_pod(
            self.image, command, env=env, namespace=STEP_NAMESPACE, account="pipeline-runner", timeout=3600,
            binds={self.pipeline_root: {"bind": self.pipeline_root, "mode": "rw"}})
        print(log, end="")
        self.steps.append(record | {"status": code, "seconds": round(time.monotonic() - started, 1), "env": sorted(env)})
        if code != 0:
            return status.Status.FAILURE
        self.plumbing.record(step, executor_input)
        return status.Status.SUCCESS


def run(workdir: Path) -> dict:
    from kfp import local
    from kfp.local import docker_task_handler

    from gdmix.config import validate_config
    from gdmix.example_data.synthetic import generate_synthetic, write_synthetic
    from gdmix.game import train
    from gdmix_pipelines.gdmix_pipeline import build_pipeline, compile_pipeline
    from gdmix_pipelines.run import local_task_roots
    from rehearsal import FakeCluster, S3Container

    workdir.mkdir(parents=True, exist_ok=True)
    local_data = workdir / "data"
    write_synthetic(str(local_data), generate_synthetic(
        8000, {"user_id": 200, "item_id": 60}, global_features=16, global_nnz=4, re_features=4, re_nnz=2,
        skew=0.8, seed=11))
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.monotonic()
    with S3Container("AKIAREHEARSAL0000001", "rehearsal-secret-key-0000000000000000000") as s3:
        credentials = s3.env()
        with FakeCluster(secrets={(STEP_NAMESPACE, SECRET): credentials, (JOB_NAMESPACE, SECRET): credentials},
                         namespaces=[STEP_NAMESPACE, JOB_NAMESPACE]) as cluster:
            host_env = {"AWS_ACCESS_KEY_ID": credentials["AWS_ACCESS_KEY_ID"],
                        "AWS_SECRET_ACCESS_KEY": credentials["AWS_SECRET_ACCESS_KEY"],
                        "AWS_ENDPOINT_URL": s3.endpoint_url}
            os.environ.update(host_env)  # this process uploads the data and reads the results from the host side
            s3.client().create_bucket(Bucket=BUCKET)
            for split in ("train", "validation"):
                _upload(str(local_data / split), f"s3://{BUCKET}/data/{split}")
            config = rehearsal_config(f"s3://{BUCKET}/data", f"s3://{BUCKET}/model")
            config_file = workdir / "rehearsal.yaml"
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            compiled = compile_pipeline(config_file, workdir / "rehearsal-pipeline.yaml")
            arguments = {"data_root": f"s3://{BUCKET}/runs"}
            DriverTaskHandler.prepare(compiled, arguments)
            DriverTaskHandler.cluster = cluster
            DriverTaskHandler.secrets = {SECRET: dict(credentials)}  # the Secrets of the step pods' namespace
            root = workdir / "pipeline-root"
            root.mkdir(exist_ok=True)
            root.chmod(0o777)  # steps run as uid 1000 and write their outputs into the bind-mounted root
            original = docker_task_handler.DockerTaskHandler
            docker_task_handler.DockerTaskHandler = DriverTaskHandler
            try:
                local.init(runner=local.DockerRunner(), pipeline_root=str(root), raise_on_error=True)
                pipeline = build_pipeline(config_file.read_text())
                with local_task_roots():
                    task = pipeline(**arguments)
            finally:
                docker_task_handler.DockerTaskHandler = original
            report["pipeline_seconds"] = round(time.monotonic() - t0, 1)
            report["steps"] = DriverTaskHandler.steps
            pipeline_metrics = _exported_metrics(task)
            report["jobs_left"] = [o["metadata"]["name"] for o in cluster.objects()]
            report["containers_left"] = [c.name for c in cluster.running_containers()]
            report["jobs_created"] = sorted({r[2] for r in cluster.apiserver.requests
                                             if r[1] == "POST" and "/apis/" in r[2]})
            report["cluster_errors"] = [repr(e) for e in cluster.errors]
            report["local_data_files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))
            # the reference: gdmix train on the same config, data read from the same store
            reference = validate_config(config | {"output": str(workdir / "train-model")})
            train(reference)
    expected = json.loads((workdir / "train-model" / "metrics.json").read_text())
    report["max_metric_difference"] = _max_difference(pipeline_metrics, expected)
    report["validation_auc"] = pipeline_metrics["coordinates"][-1]["validation"]["auc"]
    report["seconds"] = round(time.monotonic() - t0, 1)
    problems = _problems(report)
    report["ok"] = not problems
    report["problems"] = problems
    (workdir / "rehearsal-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _upload(local_dir: str, uri: str) -> None:
    from gdmix.io import fs

    target, path = fs.url_to_fs(uri)
    target.put(local_dir, path, recursive=True)


def _exported_metrics(task) -> dict:
    """metrics.json of the exported model (in the object store: the artifact records where)."""
    from gdmix.io import fs
    from gdmix.stages.locations import read_location

    return json.loads(fs.read_text(fs.join(read_location(task.output), "metrics.json")))


def _max_difference(got: dict, want: dict) -> float:
    worst = 0.0
    assert len(got["coordinates"]) == len(want["coordinates"]), (got["coordinates"], want["coordinates"])
    for a, b in zip(got["coordinates"], want["coordinates"]):
        assert (a["name"], a["pass"]) == (b["name"], b["pass"])
        for split in ("train", "validation"):
            for key in ("auc", "logloss", "aupr"):
                worst = max(worst, abs(a[split][key] - b[split][key]))
    return worst


def _problems(report: dict) -> list[str]:
    problems = []
    if report["max_metric_difference"] > TOLERANCE:
        problems.append(f"metrics differ from gdmix train by {report['max_metric_difference']:.3g} > {TOLERANCE}")
    if report["jobs_left"]:
        problems.append(f"jobs not deleted: {report['jobs_left']}")
    if report["containers_left"]:
        problems.append(f"containers still running: {report['containers_left']}")
    if report["local_data_files"]:
        problems.append(f"data outside the object store: {report['local_data_files'][:5]}")
    if report["cluster_errors"]:
        problems.append(f"fake cluster errors: {report['cluster_errors'][:3]}")
    kinds = " ".join(report["jobs_created"])
    for plural in ("sparkapplications", "tfjobs"):
        if plural not in kinds:
            problems.append(f"no {plural} were created: {report['jobs_created']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="where data, the compiled pipeline and the report go")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gdmix-rehearsal-")).resolve()
    report = run(workdir)
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}, indent=2))
    print(f"rehearsal report: {workdir / 'rehearsal-report.json'}", file=sys.stderr)
    if not report["ok"]:
        print("REHEARSAL FAILED: " + "; ".join(report["problems"]), file=sys.stderr)
        return 1
    print(f"rehearsal passed in {report['seconds']} s ({shlex.quote(str(workdir))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
