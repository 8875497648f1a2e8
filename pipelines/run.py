"""Running the pipeline: locally under ``kfp.local`` (the embedded default), or on a cluster.

``run_local`` executes the very pipeline a cluster runs, task by task, as local processes
(``kfp.local.SubprocessRunner`` in this environment); distributed steps use their local
backends (N TF workers on 127.0.0.1, Spark ``local[*]``). When it succeeds the exported model
is committed to the configuration's ``output``, as ``gdmix train`` would leave it.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from gdmix.layout import METRICS_FILE
from gdmix.config import load_config_text
from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.stages.locations import read_location
from gdmix_pipelines.gdmix_pipeline import build_pipeline, compile_pipeline, pipeline_name

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_local(config_text: str, overrides: list[str] | None = None, *, workdir: str | None = None,
              data_root: str = "", runner: str = "subprocess", log_file: str | None = None) -> dict:
    """Run the pipeline with kfp.local; returns the final metrics (``metrics.json``).

    kfp.local prints every task's full executor input and outputs; with ``log_file`` all of it
    goes to that file instead, and only one line per finished task is shown (and the log's
    tail if the run fails).
    """
    if log_file:
        with _output_to(log_file) as lines:
            try:
                return run_local(config_text, overrides, workdir=workdir, data_root=data_root, runner=runner)
            except GdmixError:
                lines.failed = True
                raise
    from kfp import local

    config = load_config_text(config_text, list(overrides or ()), source="pipeline config")
    root = Path(workdir or tempfile.mkdtemp(prefix="gdmix-pipeline-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":
        local.init(runner=local.DockerRunner(), pipeline_root=str(root), raise_on_error=True)
    else:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    pipeline = build_pipeline(config_text)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        original_print = builtins.print  # kfp.local indents print() while it runs, and may leave it so
        try:
            with local_task_roots():
                task = pipeline(overrides=list(overrides or ()), data_root=data_root)
        except RuntimeError as exc:  # kfp.local's report of a failed task
            raise GdmixError(f"the pipeline failed: {ANSI.sub('', str(exc))}") from None
        finally:
            builtins.print = original_print
    exported = read_location(task.output)
    fs.remove(config.output)
    _copy_tree(exported, config.output)
    return json.loads(fs.read_text(fs.join(config.output, METRICS_FILE))) | {"output": config.output}


@contextlib.contextmanager
def local_task_roots():
    """While it lasts, kfp.local gives every task of a nested DAG its own output folder.

    kfp.local roots a task's outputs at ``<pipeline root>/<run>/<component name>``, nesting the
    run's name only for ParallelFor iterations (kfp 2.17.3,
    ``kfp.local.orchestrator.task_spec_utils.get_nested_pipeline_resource_name``). The passes after
    the first share one DAG definition (:func:`gdmix_pipelines.gdmix_pipeline.share_repeated_dags`),
    so their steps have the same component names, and pass 3 would write its models and score
    table over pass 2's (and find pass 2's partitions "already committed"). KFP's driver gives
    every task its own output URIs (a salted task root, kubeflow/pipelines 2.17.0
    ``backend/src/v2/driver/driver.go``); nesting every DAG task's name, as kfp.local already does
    for iterations, does the same here: ``<run>/later-pass-2/update-scores/table``.
    """
    from kfp.local.orchestrator import task_spec_utils

    original = task_spec_utils.get_nested_pipeline_resource_name
    task_spec_utils.get_nested_pipeline_resource_name = (
        lambda task_name, pipeline_resource_name: f"{pipeline_resource_name}/{task_name}")
    try:
        yield
    finally:
        task_spec_utils.get_nested_pipeline_resource_name = original


@contextlib.contextmanager
def _output_to(log_file: str):
    """Send this process's (and its children's) stdout and stderr to ``log_file`` (file
    descriptors, as kfp.local's task processes inherit them); afterwards show one line per
    finished task, and the log's tail if the run failed."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    state = type("State", (), {"failed": False})()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log_file, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield state
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        _summarize(Path(log_file), state.failed)


def _summarize(log_file: Path, failed: bool) -> None:
    text = ANSI.sub("", log_file.read_text(errors="replace"))
    for line in text.splitlines():
        if " finished with status " in line:
            print(re.sub(r"^\S+ - [A-Z]+ - ", "", line.strip()), file=sys.stderr)
    if failed:  # the failing task's own error is near the end
        errors = [line.strip() for line in text.splitlines() if "error:" in line.lower()]
        print("\n".join(dict.fromkeys(errors[-5:])), file=sys.stderr)
    print(f"pipeline log: {log_file}", file=sys.stderr)


def _copy_tree(source: str, target: str) -> None:
    """Copy the exported model (any file systems) into ``target`` through a staged commit."""
    source_fs, source_path = fs.url_to_fs(source)
    with fs.staged_directory(target) as staging:
        target_fs, staging_path = fs.url_to_fs(staging)
        for path in source_fs.find(source_path):
            relative = path[len(source_path.rstrip("/")) + 1:]
            with source_fs.open(path, "rb") as handle:
                fs.write_bytes(fs.unstrip(target_fs, f"{staging_path}/{relative}"), handle.read())


@dataclass(frozen=True)
class KfpAuth:
    """How ``gdmix pipeline submit`` authenticates to a KFP API (``kfp.Client``'s options).

    ``namespace``: the profile namespace of multi-user Kubeflow (pipelines, experiments and runs
    are created there; ``None`` for standalone KFP). ``existing_token``: a bearer token (e.g.
    ``kubectl create token ...``); ``token_path``: a file holding one, re-read on every request
    (a projected service-account token, what ``KF_PIPELINES_SA_TOKEN_PATH`` names inside a
    cluster; kfp.Client also reads that variable itself); ``cookies``: the session cookie of an
    authenticated browser (``authservice_session=...``) behind Dex/oauth2-proxy;
    ``ssl_ca_cert``: the CA of an HTTPS endpoint; ``ui_host``: where the UI is, for run links.
    """

    namespace: str | None = None
    existing_token: str | None = None
    token_path: str | None = None
    cookies: str | None = None
    ssl_ca_cert: str | None = None
    ui_host: str | None = None

    def client(self, host: str):
        import kfp
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(self.token_path) if self.token_path else None
        return kfp.Client(host=host, namespace=self.namespace or "kubeflow", existing_token=self.existing_token,
                          cookies=self.cookies, ssl_ca_cert=self.ssl_ca_cert, credentials=credentials,
                          ui_host=self.ui_host)


def submit(config_text: str, host: str, overrides: list[str] | None = None, *, experiment: str = "gdmix",
           data_root: str = "", train_data: str = "", validation_data: str = "", wait: bool = False,
           timeout_seconds: float = 24 * 3600, auth: KfpAuth = KfpAuth(), version: str | None = None,
           log=print, test_data: str = "") -> dict:
    """Compile the configuration (``overrides`` written into it) and run it on the KFP API at ``host``.

    The package is uploaded as a *version* of the pipeline named by ``pipeline.name`` (the
    pipeline is created on its first upload), so every submission is listed in the UI under
    one pipeline and can be rerun from there; the run is created from that version in
    ``experiment``. Returns the run's id, the pipeline and version ids and the run's UI link.
    ``train_data``, ``validation_data``, ``test_data``: URIs replacing the config's data (or raw
    inputs) for this run.
    """
    config = load_config_text(config_text, list(overrides or ()), source="pipeline config")
    name = pipeline_name(config)
    # kfp.Client prints its own links on stdout: keep stdout for our result (gdmix prints JSON)
    from kfp_server_api.exceptions import ApiException

    try:
        with contextlib.redirect_stdout(sys.stderr):
            client = auth.client(host)
            return _submit(client, config_text, name, host, overrides, experiment, data_root, train_data,
                           validation_data, wait, timeout_seconds, auth, version, log, test_data)
    except ApiException as exc:
        hint = {401: "; authenticate with --token, --token-path or --cookies",
                403: f"; the identity may not use namespace '{auth.namespace or '(none)'}': check --namespace"}
        raise GdmixError(f"the KFP API at {host} refused the submission: HTTP {exc.status} {exc.reason or ''}"
                         f"{hint.get(exc.status, '')}") from None


def _submit(client, config_text, name, host, overrides, experiment, data_root, train_data, validation_data, wait,
            timeout_seconds, auth, version, log, test_data: str = "") -> dict:
    with tempfile.TemporaryDirectory(prefix="gdmix-submit-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(config_text)
        package = str(compile_pipeline(config_path, Path(tmp) / "pipeline.yaml", list(overrides or ())))
        pipeline_id, version_id = _upload(client, package, name, version, auth.namespace)
    experiment_id = _experiment(client, experiment, auth.namespace)
    arguments = {"data_root": data_root, "train_data": train_data, "validation_data": validation_data}
    if test_data:
        arguments["test_data"] = test_data
    run = client.run_pipeline(experiment_id, f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}", params=arguments,
                              pipeline_id=pipeline_id, version_id=version_id, enable_caching=False)
    link = f"{_ui_prefix(auth.ui_host or host)}/#/runs/details/{run.run_id}"
    log(f"run {run.run_id} of pipeline {name}: {link}")
    result = {"run_id": run.run_id, "host": host, "experiment": experiment, "pipeline_id": pipeline_id,
              "version_id": version_id, "link": link}
    if auth.namespace:
        result["namespace"] = auth.namespace
    if wait:
        finished = client.wait_for_run_completion(run.run_id, timeout=int(timeout_seconds))
        result["state"] = str(getattr(finished, "state", None))
        if result["state"] != "SUCCEEDED":
            raise GdmixError(f"run {run.run_id} ended {result['state']}: {link}")
    return result


def _upload(client, package: str, name: str, version: str | None, namespace: str | None) -> tuple[str, str]:
    """(pipeline id, version id): a new version of pipeline ``name``, created on first upload."""
    version = version or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    found = client.list_pipelines(filter=_name_filter(name), namespace=namespace, page_size=1).pipelines or []
    if found:
        pipeline_id = found[0].pipeline_id
        uploaded = client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline_id)
        return pipeline_id, uploaded.pipeline_version_id
    # the first upload creates the pipeline with this package as its first version
    pipeline_id = client.upload_pipeline(package, pipeline_name=name, namespace=namespace,
                                         description="GDMix: fixed and random effects by coordinate descent").pipeline_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
    if not versions:
        raise GdmixError(f"KFP created pipeline {name} ({pipeline_id}) without a version")
    return pipeline_id, versions[0].pipeline_version_id


def _experiment(client, name: str, namespace: str | None) -> str:
    found = client.list_experiments(filter=_name_filter(name), namespace=namespace, page_size=1).experiments or []
    if found:
        return found[0].experiment_id
    return client.create_experiment(name, namespace=namespace).experiment_id


def _name_filter(name: str) -> str:
    """A KFP API list filter: display_name equals ``name``."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _ui_prefix(host: str) -> str:
    host = host.rstrip("/")
    return host if host.startswith(("http://", "https://")) else "http://" + host
