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
import warnings
from pathlib import Path

from gdmix.artifacts import METRICS_FILE
from gdmix.config import load_config_text
from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.stages.locations import read_location
from pipelines.gdmix_pipeline import build_pipeline, compile_pipeline

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


def submit(config_text: str, host: str, overrides: list[str] | None = None, *, experiment: str = "gdmix",
           data_root: str = "", train_data: str = "", validation_data: str = "", wait: bool = False,
           timeout_seconds: float = 24 * 3600) -> dict:
    """Compile and submit a run to a Kubeflow Pipelines API at ``host`` (``kfp.Client``)."""
    import kfp

    with tempfile.TemporaryDirectory(prefix="gdmix-submit-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(config_text)
        package = compile_pipeline(config_path, Path(tmp) / "pipeline.yaml")
        client = kfp.Client(host=host)
        arguments = {"overrides": list(overrides or ()), "data_root": data_root, "train_data": train_data,
                     "validation_data": validation_data}
        run = client.create_run_from_pipeline_package(str(package), arguments=arguments,
                                                      experiment_name=experiment, enable_caching=False)
    result = {"run_id": run.run_id, "host": host, "experiment": experiment}
    if wait:
        finished = client.wait_for_run_completion(run.run_id, timeout=int(timeout_seconds))
        result["state"] = str(getattr(finished, "state", None))
        if result["state"] != "SUCCEEDED":
            raise GdmixError(f"run {run.run_id} ended {result['state']}")
    return result
