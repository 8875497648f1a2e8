"""A GDMix configuration -> a KFP v2 pipeline.

The configuration fixes the pipeline's shape: its coordinates in order, the number of passes,
and per random effect the partition groups trained in parallel (``pipeline.partition_groups``,
at most ``pipeline.parallelism`` at a time). Everything else is a runtime parameter: the whole
configuration text (so hyper-parameters can change per run), ``overrides`` (``dotted.key=value``
items, as ``gdmix train --set``), the data URIs, and ``data_root``, an object-store prefix for
the stages' data when the artifact store should hold only small artifacts. A run whose
overrides change the shape fails fast and says so.

    prepare -> pass 1 -> pass 2 -> ... -> export_model -> score and evaluate (validation, test)

Each coordinate-descent pass is a nested pipeline, one task named "pass N" (a sub-DAG in the
Kubeflow UI) whose steps are named after their coordinate ("per_user: scores"):

    per coordinate: [fixed_effect | detext | random_effect_plan -> ParallelFor(random_effect)]
                    -> update_scores (and its validation evaluation) [-> evaluate (test, with a test split)]

Every step is a process (a pod in a cluster) whose start-up (Python, kfp's executor, gdmix and
its libraries) costs more than a score table's evaluation, so a step that writes scores evaluates
them itself (``update_scores``, ``score``) and hands the Kubeflow UI the same typed artifacts
(Metrics, ClassificationMetrics, HTML) a separate ``evaluate`` step would (issue 13).

A pass takes the score table and every coordinate's model of the pass before (warm starts) and
hands on its own. Pass 1 has neither, and a nested pipeline's artifact input cannot be left out
in KFP 2.17, ``= None`` default or not: the backend's driver fails a ``componentInputArtifact``
the parent DAG lacks (``parent DAG does not have input artifact``, kubeflow/pipelines 2.17.0
``backend/src/v2/driver/resolve.go`` ``resolveInputArtifact``) and so does kfp.local 2.17.3
(``Parent pipeline input argument ... not found``). So there are two pass pipelines, the first
and the later ones, built by one function (:func:`_coordinate_descent_pass`).

KFP's compiler copies a nested pipeline's components and executors for every task that uses
it; :func:`share_repeated_dags` folds the identical copies of the later pass back into one
definition, so the compiled YAML does not grow with the number of passes (``lr-tuned``, 5
passes: 7,761 lines unrolled). The pass number reaches the steps as parameters (``update_scores``'
``pass_number``, the evaluation reports' titles) rather than in display names, which the one
definition shares.

A held-out test split (``data.test``, ``prep.test_input`` or ``prep.split.test_fraction``) goes
through every step beside validation: it is scored, kept in the score table, evaluated after
every coordinate and at the end, and never selects anything.
"""

import copy
import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import List, NamedTuple

import yaml
from google.protobuf import json_format
from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset, Input, Model

from gdmix_components._shared import for_backend
from gdmix_components.detext.component import detext
from gdmix_components.evaluate.component import evaluate
from gdmix_components.export_model.component import export_model
from gdmix_components.fixed_effect.component import fixed_effect
from gdmix_components.prepare.component import prepare
from gdmix_components.random_effect.component import random_effect
from gdmix_components.random_effect_plan.component import random_effect_plan
from gdmix_components.score.component import score
from gdmix_components.update_scores.component import update_scores
from gdmix.config import (
    DetextConfig, FixedEffectConfig, GdmixConfig, RandomEffectConfig, apply_override, load_config_text,
)
from gdmix.images import image
from gdmix.stages.context import run_config, shape_of
from gdmix.stages.training import partition_groups
from gdmix.stages.locations import SECRET_NAME_ENV  # names the Secret in every step (see _secured)

# what the object-store Secret's keys become in every step's environment
SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
               "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}
RANDOM_EFFECT_RETRIES = 2  # a retried trainer skips the partitions it already committed


def pipeline_name(config: GdmixConfig) -> str:
    """``pipeline.name``, else ``gdmix-`` and the coordinates' names."""
    if config.pipeline.name:
        return config.pipeline.name
    names = "-".join(c.name for c in config.coordinates)
    return f"gdmix-{names}"[:100].replace("_", "-").lower()


def build_pipeline(config_text: str, overrides: list[str] | None = None):
    """The pipeline function (a ``@dsl.pipeline``) for this configuration.

    ``overrides`` change what the pipeline is compiled for (e.g. ``pipeline.backend=kubernetes``):
    they are written into the default configuration text, so every run keeps that shape and a
    run's own ``overrides`` parameter stays free.
    """
    config_text = with_overrides(config_text, overrides)
    compiled = run_config(config_text)
    shape = _Shape(compiled)
    first_pass, later_pass = _pass_pipeline(shape, first=True), _pass_pipeline(shape, first=False)
    # one line: KFP writes parameter defaults into the compiled file's header comment verbatim,
    # and a multi-line default would break that file (JSON is YAML, so stages read it as is)
    default_config = json.dumps(yaml.safe_load(config_text), separators=(",", ":"))

    @dsl.pipeline(name=pipeline_name(compiled), description="GDMix: fixed and random effects by coordinate descent")
    def gdmix_pipeline(config: str = default_config, overrides: List[str] = [], train_data: str = "",
                       validation_data: str = "", data_root: str = "", test_data: str = "") -> dsl.Model:
        common = {"config": config, "overrides": overrides}
        prep = _secured(shape, shape.launcher(prepare)(
            train_data=train_data, validation_data=validation_data, test_data=test_data, data_root=data_root,
            workload_image=image("spark"), shape=json.dumps(shape_of(compiled)), **common), shape.launcher_role("spark"))
        prep.set_display_name("prepare data")
        prepared = prep.outputs["prepared"]
        carried = {}  # what a pass hands on: the score table, every coordinate's model
        for number in range(1, shape.passes + 1):
            one_pass = (later_pass if carried else first_pass)(
                pass_number=number, pass_name=f"pass {number}", prepared=prepared, data_root=data_root,
                **carried, **common)
            one_pass.set_display_name(f"pass {number}")
            carried = {"scores": one_pass.outputs["table"],
                       **{f"previous_{key}": one_pass.outputs[f"model_{key}"] for key in shape.keys.values()}}
        table = carried["scores"]
        exported = _secured(shape, export_model(prepared=prepared, scores=table, data_root=data_root, **common))
        exported.set_display_name("export model")
        for split in ("validation",) * shape.has_validation + ("test",) * shape.has_test:
            _secured(shape, score(model=exported.outputs["model"], data=prepared, split=split, data_root=data_root,
                                  evaluate=True, title=f"GDMix model on {split} data", entities=shape.entities)
                     ).set_display_name(f"final evaluation ({split} data)")
        return exported.outputs["model"]

    share_repeated_dags(gdmix_pipeline)
    return gdmix_pipeline


def _pass_pipeline(shape: "_Shape", first: bool):
    """One coordinate-descent pass as a pipeline (``first``: pass 1, which starts from no score
    table and no models). Its inputs and outputs depend on the coordinates, so its signature is
    built here: ``previous_<key>`` / ``model_<key>`` per coordinate (:attr:`_Shape.keys`).
    ``pass_number`` goes to ``update_scores``; ``pass_name`` ("pass 2") into the reports' titles,
    as text: a number filled into a string reads ``2`` from KFP's launcher but ``2.0`` from
    kfp.local."""
    parameter = inspect.Parameter.POSITIONAL_OR_KEYWORD
    inputs = [inspect.Parameter(name, parameter, annotation=annotation) for name, annotation in (
        ("config", str), ("overrides", List[str]), ("data_root", str), ("pass_number", int), ("pass_name", str),
        ("prepared", Input[Dataset]))]
    if not first:
        inputs.append(inspect.Parameter("scores", parameter, annotation=Input[Dataset]))
        inputs += [inspect.Parameter(f"previous_{key}", parameter, annotation=Input[Model]) for key in shape.keys.values()]
    outputs = NamedTuple("PassOutputs", [("table", Dataset)] + [(f"model_{key}", Model) for key in shape.keys.values()])

    def one_pass(*channels):  # KFP calls a pipeline function with one channel per input, in order
        return outputs(**_coordinate_descent_pass(shape, dict(zip((i.name for i in inputs), channels))))

    one_pass.__signature__ = inspect.Signature(inputs, return_annotation=outputs)
    one_pass.__name__ = "first_pass" if first else "later_pass"
    description = "pass 1 of coordinate descent" if first else "a coordinate-descent pass after the first"
    return dsl.pipeline(name=one_pass.__name__.replace("_", "-"), description=description)(one_pass)


def _coordinate_descent_pass(shape: "_Shape", given: dict) -> dict:
    """The tasks of one pass over every coordinate, from the pass pipeline's inputs ``given``;
    returns its outputs (the score table after the last coordinate, every coordinate's model)."""
    common = {"config": given["config"], "overrides": given["overrides"]}
    prepared, data_root = given["prepared"], given["data_root"]
    table, models = given.get("scores"), {}
    for coordinate in shape.coordinates:
        name, key = coordinate.name, shape.keys[coordinate.name]
        optional = {"scores": table} if table is not None else {}
        previous = {"previous": given[f"previous_{key}"]} if f"previous_{key}" in given else {}
        if isinstance(coordinate, (FixedEffectConfig, DetextConfig)):
            deep = isinstance(coordinate, DetextConfig)
            role = "detext" if deep else "trainer"
            task = _secured(shape, shape.launcher(detext if deep else fixed_effect)(
                coordinate=name, prepared=prepared, data_root=data_root, workload_image=image(role), **optional,
                **previous, **common), shape.launcher_role(role))
            task.set_display_name(f"{name}: {'DeText' if deep else 'fixed effect'}")
            model, collected = task.outputs["model"], {}
        else:
            plan = _secured(shape, random_effect_plan(coordinate=name, prepared=prepared, data_root=data_root,
                                                      **optional, **previous, **common))
            plan.set_display_name(f"{name}: offsets")
            model = plan.outputs["model"]
            with dsl.ParallelFor(shape.groups[name], parallelism=shape.parallelism) as group:
                trainer = _secured(shape, random_effect(coordinate=name, partitions=group, prepared=prepared,
                                                        model=model, **previous, **common))
                trainer.set_display_name(f"{name}: partitions").set_retry(RANDOM_EFFECT_RETRIES)
            collected = {"partition_summaries": dsl.Collected(trainer.output)}
        title = f"GDMix after {given['pass_name']} {name}"  # KFP fills the pass's name in at run time
        update = _secured(shape, update_scores(coordinate=name, pass_number=given["pass_number"], prepared=prepared,
                                               model=model, data_root=data_root, title=title, entities=shape.entities,
                                               **optional, **collected, **common))
        update.set_display_name(f"{name}: scores and evaluation")
        table, models[f"model_{key}"] = update.outputs["table"], model
        if shape.has_test:
            _secured(shape, evaluate(scores=table, split="test", title=f"{title}, test data", entities=shape.entities)
                     ).set_display_name(f"{name}: test evaluation")
    return {"table": table, **models}


class _Shape:
    """What the compiled structure depends on."""

    def __init__(self, config: GdmixConfig):
        self.passes = config.passes
        self.backend = config.pipeline.backend
        self.coordinates = list(config.coordinates)
        self.parallelism = config.pipeline.parallelism
        self.secret = config.pipeline.object_store_secret
        self.entities = sorted({c.entity for c in config.coordinates if isinstance(c, RandomEffectConfig)})
        self.has_validation = bool(config.prep.validation_input or config.prep.split)
        self.has_test = bool(config.prep.test_input or (config.prep.split and config.prep.split.test_fraction > 0))
        self.groups = {c.name: partition_groups(c.partitions or config.prep.partitions, config.pipeline.partition_groups)
                       for c in config.coordinates if isinstance(c, RandomEffectConfig)}
        #: coordinate name -> the identifier that names its model among a pass's inputs and outputs
        #: (coordinate names may hold '.' and '-'; an index keeps two that differ only there apart)
        self.keys = {}
        for index, coordinate in enumerate(config.coordinates):
            key = re.sub(r"\W", "_", coordinate.name)
            while key in self.keys.values():
                key += f"_{index}"
            self.keys[coordinate.name] = key

    def launcher(self, component):
        """A launcher component's variant for this backend (see :func:`for_backend`)."""
        return for_backend(component, self.backend)

    def launcher_role(self, workload: str) -> str:
        """A launcher step's image: in a cluster it only creates jobs (the light launcher image);
        with local backends it runs the work itself."""
        return "launcher" if self.backend == "kubernetes" else workload


def _secured(shape: _Shape, task, role: str = "trainer"):
    """The task's image (``GDMIX_IMAGE_REGISTRY`` / ``_TAG`` as they are now, not when the
    component modules were imported) and the object-store credentials from the Kubernetes
    Secret (by reference, never inlined).

    The Secret is required (``optional=False``): without it the kubelet refuses to start the
    step and names the Secret, instead of a step that starts and fails later on an anonymous
    object-store request. The Secret's name also travels as ``GDMIX_OBJECT_STORE_SECRET`` so
    a step whose credentials are empty can say which Secret to fix.
    """
    task.container_spec.image = image(role)
    if shape.secret:
        kubernetes.use_secret_as_env(task, shape.secret, SECRET_KEYS, optional=False)
        task.set_env_variable(SECRET_NAME_ENV, shape.secret)
    return task


def share_repeated_dags(pipeline) -> None:
    """Fold identical copies of a nested pipeline in ``pipeline`` (a compiled ``@dsl.pipeline``)
    back into one definition, and identical executors into one; in place, so that the compiled
    file and a kfp.local run get the same spec.

    KFP's compiler merges a full copy of a nested pipeline's components, executors and platform
    config into the outer spec for every task that uses it (kfp 2.17.3,
    ``pipeline_spec_builder.merge_deployment_spec_and_component_spec``), renaming each copy
    (``comp-later-pass-2``, ``exec-update-scores-7``, ...). The pipeline spec lets tasks share a
    component, and KFP's backend compiles each component once for all the tasks using it
    (``backend/src/v2/compiler/visitor.go``: "each component is visited exactly once").

    Two DAG components are identical when their specs are, with every component they refer to
    compared by content, not name (a Merkle key); the first of each kind is kept and tasks point
    to it. Only DAGs are shared: the container components of one DAG stay distinct, because
    kfp.local roots a task's outputs at its component's name within its DAG
    (``executor_input_utils.construct_local_task_root``) and two tasks of one DAG sharing one
    would overwrite each other's outputs. Across DAGs, :func:`gdmix_pipelines.run.local_task_roots`
    keeps them apart under kfp.local, as KFP's driver does with its per-task output URIs.
    """
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    platform = json_format.MessageToDict(pipeline.platform_spec)
    components, executors = spec["components"], spec["deploymentSpec"]["executors"]
    kubernetes_executors = (platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
                            .get("executors", {}))
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name not in keys:
            component = copy.deepcopy(components[name])
            if "dag" in component:
                for task in component["dag"]["tasks"].values():
                    task["componentRef"]["name"] = key(task["componentRef"]["name"])
            else:
                label = component.pop("executorLabel")
                component["executor"] = [executors[label], kubernetes_executors.get(label)]
            keys[name] = hashlib.sha256(json.dumps(component, sort_keys=True).encode()).hexdigest()
        return keys[name]

    kept = {}  # key -> the one DAG component of that content (comp-x rather than comp-x-2)
    for name in sorted((n for n in components if "dag" in components[n]), key=lambda n: (len(n), n)):
        kept.setdefault(key(name), name)
    reachable, pending = set(), [spec["root"]]
    while pending:  # from the root down, pointing every task at the kept DAG of its kind
        for task in pending.pop().get("dag", {}).get("tasks", {}).values():
            name = task["componentRef"]["name"]
            if "dag" in components[name]:
                name = task["componentRef"]["name"] = kept[key(name)]
            if name not in reachable:
                reachable.add(name)
                pending.append(components[name])
    containers = [name for name in reachable if "executorLabel" in components[name]]
    labels = {}  # key -> the one executor of the container components of that content
    for label, name in sorted((components[n]["executorLabel"], n) for n in containers):
        labels[key(name)] = min(labels.get(key(name), label), label, key=lambda x: (len(x), x))  # exec-x, not -2
    for name in containers:
        components[name]["executorLabel"] = labels[key(name)]
    used = sorted(set(labels.values()))
    spec["components"] = {name: components[name] for name in sorted(reachable)}
    spec["deploymentSpec"]["executors"] = {label: executors[label] for label in used}
    if kubernetes_executors:
        platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"] = {
            label: kubernetes_executors[label] for label in used if label in kubernetes_executors}
    pipeline.pipeline_spec.CopyFrom(json_format.ParseDict(spec, type(pipeline.pipeline_spec)()))
    pipeline.platform_spec.CopyFrom(json_format.ParseDict(platform, type(pipeline.platform_spec)()))


def with_overrides(config_text: str, overrides: list[str] | None) -> str:
    """The configuration text with ``dotted.key=value`` overrides written into it (YAML)."""
    if not overrides:
        return config_text
    raw = yaml.safe_load(config_text)
    for assignment in overrides:
        apply_override(raw, assignment)
    return yaml.safe_dump(raw, sort_keys=False)


def compile_pipeline(config_path, output, overrides: list[str] | None = None) -> Path:
    """Compile the pipeline of a configuration file to ``output`` (YAML), with ``overrides``
    (``dotted.key=value``) applied to what it is compiled for."""
    text = Path(config_path).read_text()
    load_config_text(text, list(overrides or ()), source=str(config_path))  # validate before building
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(text, overrides), str(output))
    return output


def structure(compiled) -> dict:
    """The compiled YAML's documents (the pipeline spec, then the Kubernetes platform spec)."""
    documents = list(yaml.safe_load_all(Path(compiled).read_text()))
    return {"pipeline": documents[0], "platform": documents[1] if len(documents) > 1 else None,
            "summary": json.dumps(sorted(documents[0].get("deploymentSpec", {}).get("executors", {})))}
