"""What Kubeflow Pipelines' driver puts on a step's pod, and what inputs it gives the step, read
from a compiled pipeline.

On a cluster the KFP *driver* turns each task of the compiled YAML into a pod: it reads the
component's ``taskConfigPassthroughs`` and the task's Kubernetes platform config
(``secretAsEnv``, ``pvcMount``, ``nodeSelector``, ...) and decides, field by field, whether a
setting goes onto the step's own pod, into the ``dsl.TaskConfig`` handed to the step's
function, or both. Getting that wrong is invisible under ``kfp.local`` (which ignores the
platform config), so this module ports those rules to Python and applies them to our compiled
YAML: the tests ask it what a step pod really receives, and the rehearsal gives each step's
container exactly that and nothing more.

Ported from kubeflow/pipelines tag 2.17.0 (the backend the pinned SDK kfp 2.17.3 talks to):

- ``backend/src/v2/driver/driver.go``: ``getTaskConfigOptions`` (no passthrough declared: every
  field goes on the pod and none into the TaskConfig; a declared passthrough takes its field
  off the pod unless ``apply_to_task``) and ``initPodSpecPatch`` (the container's env and
  resources);
- ``backend/src/v2/driver/k8s.go``: ``extendPodSpecPatch`` (``secretAsEnv``, ``configMapAsEnv``,
  ``fieldPathAsEnv``, ``secretAsVolume``, ``pvcMount``, ``nodeSelector``, ``tolerations``);
- ``backend/src/v2/driver/container.go``: the TaskConfig replaces every ``TASK_CONFIG`` input of
  the executor input (JSON of the Go ``TaskConfig`` struct: nulls for unset fields);
- ``backend/src/v2/driver/resolve.go`` and ``dag.go``: where each input of a step comes from,
  through nested pipelines' DAGs, ParallelFor iterations and collected outputs (:func:`steps`),
  and ``backend/src/v2/component/launcher_v2.go``: the placeholders the launcher fills into
  string inputs (:func:`launcher_parameters`); :class:`Plumbing` holds kfp.local's executor
  inputs against them, step by step.

Only what gdmix's pipelines use is ported; an unsupported platform setting or input spec is an
error here, not silently ignored.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

FIELDS = ("RESOURCES", "ENV", "KUBERNETES_AFFINITY", "KUBERNETES_TOLERATIONS", "KUBERNETES_NODE_SELECTOR",
          "KUBERNETES_VOLUMES")

#: platform-config keys this port understands (anything else in a compiled pipeline fails loudly)
SUPPORTED_PLATFORM_KEYS = {"secretAsEnv", "configMapAsEnv", "fieldPathAsEnv", "secretAsVolume", "pvcMount",
                           "nodeSelector", "tolerations", "imagePullPolicy"}


class CreateContainerConfigError(RuntimeError):
    """What the kubelet reports when a pod's env refers to a Secret or key that does not exist
    (and the reference is not optional): the container never starts."""


@dataclass
class StepPod:
    """The parts of a step's pod (and of its TaskConfig) that the platform config decides."""

    executor: str
    image: str
    env: list[dict] = field(default_factory=list)
    volumes: list[dict] = field(default_factory=list)
    volume_mounts: list[dict] = field(default_factory=list)
    node_selector: dict = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    resources: dict = field(default_factory=dict)
    task_config: dict | None = None  # what a dsl.TaskConfig input receives (None: no such input)


def load(path: str | Path) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) of a compiled pipeline YAML."""
    documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    pipeline = documents[0]
    platform = documents[1]["platforms"]["kubernetes"] if len(documents) > 1 else {}
    return pipeline, platform


def components_by_executor(pipeline: dict) -> dict[str, dict]:
    return {spec["executorLabel"]: spec for spec in pipeline["components"].values() if "executorLabel" in spec}


def task_config_options(component: dict) -> tuple[dict[str, bool], dict[str, bool]]:
    """``getTaskConfigOptions``: (passthrough enabled, set on pod) per field."""
    passthrough = {f: False for f in FIELDS}
    on_pod = {f: True for f in FIELDS}
    declared = component.get("taskConfigPassthroughs") or []
    for entry in declared:
        passthrough[entry["field"]] = True
        on_pod[entry["field"]] = bool(entry.get("applyToTask", False))
    return passthrough, on_pod


def step_pod(pipeline: dict, platform: dict, executor: str) -> StepPod:
    """The env, volumes and scheduling settings the driver gives ``executor``'s pod."""
    component = components_by_executor(pipeline)[executor]
    container = pipeline["deploymentSpec"]["executors"][executor]["container"]
    config = (platform.get("deploymentSpec", {}).get("executors", {}) or {}).get(executor, {})
    unsupported = set(config) - SUPPORTED_PLATFORM_KEYS
    if unsupported:
        raise NotImplementedError(f"{executor}: platform settings {sorted(unsupported)} are not ported")
    passthrough, on_pod = task_config_options(component)
    has_task_config = any(p.get("parameterType") == "TASK_CONFIG"
                          for p in component.get("inputDefinitions", {}).get("parameters", {}).values())
    task = _empty_task_config() if has_task_config else None
    pod = StepPod(executor=executor, image=container["image"])

    def place(kind: str, pod_list: list, task_key: str, items: list) -> None:
        if on_pod[kind]:
            pod_list.extend(copy.deepcopy(items))
        if task is not None and passthrough[kind]:
            task[task_key] = (task[task_key] or []) + copy.deepcopy(items)

    # initPodSpecPatch: the container's own env (the driver also adds KFP's proxy env, empty here)
    place("ENV", pod.env, "env", [{"name": e["name"], "value": e.get("value", "")} for e in container.get("env", [])])
    resources = _resources(container.get("resources") or {})
    if resources:
        if on_pod["RESOURCES"]:
            pod.resources = copy.deepcopy(resources)
        if task is not None and passthrough["RESOURCES"]:
            task["resources"] = copy.deepcopy(resources)
    # extendPodSpecPatch, in its order
    for entry in config.get("pvcMount", []):
        name = _constant(entry, "pvcNameParameter", "claimName") or entry.get("constant")
        volume = {"name": name, "persistentVolumeClaim": {"claimName": name}}
        mount = {"name": name, "mountPath": entry["mountPath"]}
        place("KUBERNETES_VOLUMES", pod.volumes, "volumes", [volume])
        place("KUBERNETES_VOLUMES", pod.volume_mounts, "volumeMounts", [mount])
    for entry in config.get("secretAsVolume", []):
        name = _constant(entry, "secretNameParameter", "secretName")
        volume = {"name": name, "secret": {"secretName": name, "optional": bool(entry.get("optional", False))}}
        place("KUBERNETES_VOLUMES", pod.volumes, "volumes", [volume])
        place("KUBERNETES_VOLUMES", pod.volume_mounts, "volumeMounts", [{"name": name, "mountPath": entry["mountPath"]}])
    for entry in config.get("secretAsEnv", []):
        name = _constant(entry, "secretNameParameter", "secretName")
        for key in entry.get("keyToEnv", []):
            selector = {"name": name, "key": key["secretKey"]}
            if "optional" in entry:  # nil unless the compiled spec says true or false
                selector["optional"] = bool(entry["optional"])
            place("ENV", pod.env, "env", [{"name": key["envVar"], "valueFrom": {"secretKeyRef": selector}}])
    for entry in config.get("configMapAsEnv", []):
        name = _constant(entry, "configMapNameParameter", "configMapName")
        for key in entry.get("keyToEnv", []):
            selector = {"name": name, "key": key["configMapKey"]}
            if "optional" in entry:
                selector["optional"] = bool(entry["optional"])
            place("ENV", pod.env, "env", [{"name": key["envVar"], "valueFrom": {"configMapKeyRef": selector}}])
    for entry in config.get("fieldPathAsEnv", []):
        place("ENV", pod.env, "env", [{"name": entry["name"], "valueFrom": {"fieldRef": {"fieldPath": entry["fieldPath"]}}}])
    selector = (config.get("nodeSelector") or {}).get("labels") or {}
    if selector:
        if on_pod["KUBERNETES_NODE_SELECTOR"]:
            pod.node_selector.update(selector)
        if task is not None and passthrough["KUBERNETES_NODE_SELECTOR"]:
            task["nodeSelector"] = dict(selector)
    tolerations = [{k: v for k, v in t.items() if k != "tolerationJson"} for t in config.get("tolerations", [])]
    if tolerations:
        place("KUBERNETES_TOLERATIONS", pod.tolerations, "tolerations", tolerations)
    pod.task_config = task
    return pod


def _empty_task_config() -> dict:
    """``json.Marshal`` of an empty Go ``TaskConfig``: nil slices and maps are ``null``."""
    return {"affinity": None, "tolerations": None, "nodeSelector": None, "env": None, "volumes": None,
            "volumeMounts": None, "resources": {}}


def _constant(entry: dict, parameter_key: str, plain_key: str) -> str:
    """A name given as a constant (runtime parameters resolved from task inputs are not ported)."""
    if entry.get(plain_key):
        return entry[plain_key]
    runtime = (entry.get(parameter_key) or {}).get("runtimeValue", {})
    if "constant" not in runtime:
        raise NotImplementedError(f"only constant names are ported, got {entry!r}")
    return runtime["constant"]


def _resources(spec: dict) -> dict:
    limits = {k: spec[f"resource{s}Limit"] for k, s in (("cpu", "Cpu"), ("memory", "Memory")) if spec.get(f"resource{s}Limit")}
    requests = {k: spec[f"resource{s}Request"] for k, s in (("cpu", "Cpu"), ("memory", "Memory"))
                if spec.get(f"resource{s}Request")}
    return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}


def resolve_env(env: list[dict], secrets: dict[str, dict[str, str]], fields: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a container started with ``env`` sees, as the kubelet resolves it.

    ``secrets``: Secret name -> its data (the namespace's Secrets). A reference to a missing
    Secret or key raises :class:`CreateContainerConfigError` unless marked optional, in which
    case the variable is left out; ``fieldRef`` values come from ``fields``.
    """
    out: dict[str, str] = {}
    for entry in env:
        source = entry.get("valueFrom")
        if source is None:
            out[entry["name"]] = str(entry.get("value", ""))
            continue
        if "secretKeyRef" in source:
            value = secret_ref_value(source["secretKeyRef"], secrets.get)
            if value is not None:
                out[entry["name"]] = value
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if fields is None or path not in fields:
                raise CreateContainerConfigError(f"Error: no value for field {path}")
            out[entry["name"]] = fields[path]
        else:
            raise NotImplementedError(f"env source {sorted(source)} is not ported")
    return out


def secret_ref_value(ref: dict, secret_data) -> str | None:
    """A ``secretKeyRef``'s value as the kubelet resolves it; ``secret_data(name)`` gives a Secret's
    data (str or bytes values) or None. A missing Secret or key raises
    :class:`CreateContainerConfigError` unless the reference is optional (then None: no variable)."""
    data = secret_data(ref["name"])
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        what = f'secret "{ref["name"]}" not found' if data is None else \
            f'couldn\'t find key {ref["key"]} in Secret {ref["name"]}'
        raise CreateContainerConfigError(f"Error: {what}")
    value = data[ref["key"]]
    return value.decode() if isinstance(value, bytes) else value


def with_task_config(executor_input: dict, component: dict, task_config: dict | None) -> dict:
    """``executor_input`` with every ``TASK_CONFIG`` input replaced by the driver's TaskConfig."""
    if task_config is None:
        return executor_input
    updated = copy.deepcopy(executor_input)
    values = updated.setdefault("inputs", {}).setdefault("parameterValues", {})
    for name, spec in component.get("inputDefinitions", {}).get("parameters", {}).items():
        if spec.get("parameterType") == "TASK_CONFIG":
            values[name] = json.loads(json.dumps(task_config))
    return updated


# --- a step's inputs: where KFP's driver takes each from ------------------------------------------
#
# kfp.local resolves a task's inputs its own way: a name a nested DAG lacks is looked up in the
# DAGs around it (kfp 2.17.3 ``kfp.local.io.IOStore``), so it runs plumbing that the backend
# refuses. The rules below are the backend driver's (kubeflow/pipelines tag 2.17.0,
# ``backend/src/v2/driver/resolve.go`` ``resolveInputs``, ``resolveInputParameter``,
# ``resolveInputArtifact``, ``resolveUpstreamParameters``, ``resolveUpstreamArtifacts``,
# ``CollectInputs``; ``dag.go``: a DAG task's inputs become its DAG's, a ParallelFor iteration
# gets its item), applied to the compiled spec with symbolic values: a step input is a constant,
# a ``Produced`` output of an earlier container step, or a list of them (``dsl.Collected``).


class DriverError(RuntimeError):
    """An input KFP's driver cannot resolve: the step's pod would fail before its container starts."""


@dataclass(frozen=True)
class Produced:
    """Output ``key`` of the container step at ``task`` (a path of task names from the root DAG;
    a ParallelFor iteration is ``<loop task>[<index>]``)."""

    task: tuple[str, ...]
    key: str


@dataclass
class Step:
    """A container task run, with its inputs as the driver resolves them (before the launcher fills
    ``{{$.inputs.parameters[...]}}`` placeholders into strings: :func:`launcher_parameters`)."""

    path: tuple[str, ...]
    component: str
    executor: str
    parameters: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)


def steps(pipeline: dict, arguments: dict | None = None) -> dict[tuple[str, ...], Step]:
    """Every container step of a run of ``pipeline`` (its root inputs: ``arguments``, else their
    defaults), by path, with its inputs as KFP's driver resolves them. Raises
    :class:`DriverError` where the driver would fail a task."""
    root = pipeline["root"]
    parameters = {name: spec["defaultValue"] for name, spec in root.get("inputDefinitions", {}).get("parameters", {}).items()
                  if "defaultValue" in spec} | dict(arguments or {})
    found: dict[tuple[str, ...], Step] = {}
    _Dag(pipeline["components"], root, (), parameters, {}, found).run()
    return found


class _Dag:
    """One DAG execution: its input values and its tasks, resolved on demand (a task's outputs
    are wanted by the tasks after it, whatever the order they are listed in)."""

    def __init__(self, components: dict, component: dict, path: tuple[str, ...], parameters: dict, artifacts: dict,
                 found: dict):
        self.components, self.component, self.path = components, component, path
        self.parameters, self.artifacts, self.found = parameters, artifacts, found
        self.tasks = component["dag"]["tasks"]
        self.children: dict[str, "_Dag | list[_Dag] | None"] = {}

    def run(self) -> None:
        for name in self.tasks:
            self._task(name)

    def _task(self, name: str):
        """The DAG execution(s) of task ``name`` (a list for a ParallelFor; None for a container step)."""
        if name in self.children:
            return self.children[name]
        task = self.tasks[name]
        if (task.get("triggerPolicy") or {}).get("condition") or "artifactIterator" in task:
            raise NotImplementedError(f"{name}: conditions and artifact iterators are not ported")
        component = self.components[task["componentRef"]["name"]]
        parameters = {key: value for key, spec in task.get("inputs", {}).get("parameters", {}).items()
                      if (value := self._parameter(name, key, spec)) is not _NULL}
        artifacts = {key: self._artifact(name, key, spec) for key, spec in task.get("inputs", {}).get("artifacts", {}).items()}
        definitions = component.get("inputDefinitions", {}).get("parameters", {})
        iterator = task.get("parameterIterator")
        for key, spec in definitions.items():  # resolveInputs: handleParamTypeValidationAndConversion
            if key not in parameters and iterator and key == iterator["itemInput"]:
                continue  # only the iterations get the item
            if key not in parameters and not spec.get("isOptional") and "defaultValue" not in spec:
                raise DriverError(f"{self._where(name)}: neither value nor default value provided for non-optional "
                                  f"parameter {key!r}")
        path = self.path + (name,)
        if "executorLabel" in component:
            self.found[path] = Step(path, task["componentRef"]["name"], component["executorLabel"], parameters, artifacts)
            self.children[name] = None
        elif iterator:  # dag.go: one DAG execution per item, each with the loop's inputs and its item
            items = iterator["items"]
            values = json.loads(items["raw"]) if "raw" in items else parameters.get(items["inputParameter"])
            if not isinstance(values, list):
                raise DriverError(f"{self._where(name)}: value of type {type(values).__name__} cannot be iterated")
            loop = {k: v for k, v in parameters.items() if k != items.get("inputParameter")}
            self.children[name] = [
                _Dag(self.components, component, self.path + (f"{name}[{index}]",),
                     loop | {iterator["itemInput"]: item}, artifacts, self.found)
                for index, item in enumerate(values)]
            for iteration in self.children[name]:
                iteration.run()
        else:  # a nested pipeline: omitted optional parameters get their default (or null)
            for key, spec in definitions.items():
                if key not in parameters and spec.get("isOptional"):
                    parameters[key] = spec.get("defaultValue")
            self.children[name] = _Dag(self.components, component, path, parameters, artifacts, self.found)
            self.children[name].run()
        return self.children[name]

    def _parameter(self, task: str, key: str, spec: dict):
        if "parameterExpressionSelector" in spec:
            raise NotImplementedError(f"{self._where(task)}: parameter expression selectors are not ported")
        if "componentInputParameter" in spec:
            source = spec["componentInputParameter"]
            if source not in self.parameters:
                raise DriverError(f"{self._where(task)}: parent DAG does not have input parameter {source}")
            value = self.parameters[source]
            return _NULL if value is None else value  # a null optional input: the task's default applies
        if "taskOutputParameter" in spec:
            output = spec["taskOutputParameter"]
            return self._output(output["producerTask"], output["outputParameterKey"], "parameters")
        if "runtimeValue" in spec:
            return spec["runtimeValue"]["constant"]
        raise NotImplementedError(f"{self._where(task)}: parameter spec {sorted(spec)} of {key} is not ported")

    def _artifact(self, task: str, key: str, spec: dict):
        if "componentInputArtifact" in spec:
            source = spec["componentInputArtifact"]
            if source not in self.artifacts:
                raise DriverError(f"{self._where(task)}: failed to resolve input artifact {key}: parent DAG does not "
                                  f"have input artifact {source}")
            return self.artifacts[source]
        if "taskOutputArtifact" in spec:
            output = spec["taskOutputArtifact"]
            return self._output(output["producerTask"], output["outputArtifactKey"], "artifacts")
        raise NotImplementedError(f"{self._where(task)}: artifact spec {sorted(spec)} of {key} is not ported")

    def _output(self, producer: str, key: str, kind: str):
        """Output ``key`` of task ``producer`` of this DAG: a container's own, or followed down a
        DAG's output selectors (a list over a ParallelFor's iterations)."""
        if producer not in self.tasks:
            raise DriverError(f"{self._where(producer)}: producer task, {producer}, not in tasks")
        executions = self._task(producer)
        component = self.components[self.tasks[producer]["componentRef"]["name"]]
        if executions is None:
            if key not in component.get("outputDefinitions", {}).get(kind, {}):
                raise DriverError(f"{self._where(producer)}: cannot find output {kind[:-1]} key {key!r}")
            return Produced(self.path + (producer,), key)
        outputs = component["dag"].get("outputs", {}).get(kind, {})
        if key not in outputs:
            raise DriverError(f"{self._where(producer)}: {kind[:-1]} output key {key!r} not found in parent task")
        if kind == "artifacts":
            selectors = outputs[key]["artifactSelectors"]
            if len(selectors) != 1:
                raise NotImplementedError("dsl.OneOf outputs are not ported")
            subtask, subkey = selectors[0]["producerSubtask"], selectors[0]["outputArtifactKey"]
        else:
            selector = outputs[key]["valueFromParameter"]
            subtask, subkey = selector["producerSubtask"], selector["outputParameterKey"]
        if isinstance(executions, list):
            return [iteration._output(subtask, subkey, kind) for iteration in executions]
        return executions._output(subtask, subkey, kind)

    def _where(self, name: str) -> str:
        return "/".join(self.path + (name,))


_NULL = object()  # a null input value: left out, as the driver leaves it out
_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['(.+?)'\]\}\}")


def launcher_parameters(parameters: dict) -> dict:
    """What the step's code receives: the launcher substitutes ``{{$.inputs.parameters['x']}}``
    in the executor input (an f-string of pipeline channels compiles to one) with x's value as
    text, a number as Go's ``strconv.FormatFloat(v, 'f', -1, 64)`` writes it (``2``, not ``2.0``)
    (kubeflow/pipelines 2.17.0 ``backend/src/v2/component/launcher_v2.go``
    ``compileCmdAndArgs``, ``getPlaceholders``). ``parameters`` holds concrete values."""
    def text(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return format(Decimal(repr(float(value))).normalize(), "f")
        if isinstance(value, str):
            return value
        raise NotImplementedError(f"a {type(value).__name__} filled into a string is not ported")

    def fill(match) -> str:  # a placeholder of no input stays as it is, as in the launcher
        return text(parameters[match.group(1)]) if match.group(1) in parameters else match.group(0)

    return {name: _PLACEHOLDER.sub(fill, value) if isinstance(value, str) else value
            for name, value in parameters.items()}


class Plumbing:
    """A run's steps as the driver resolves them (:func:`steps`), held against the executor inputs
    kfp.local builds, step by step: which step an executor input is for, how it differs from the
    driver's, and (once the step succeeded) what it produced for the steps after it."""

    def __init__(self, pipeline: dict, arguments: dict | None = None):
        self.pipeline = pipeline
        self.by_place = {(step.path[:-1], step.component): step for step in steps(pipeline, arguments).values()}
        self.produced: dict[Produced, object] = {}  # an output artifact's URI, an output parameter's value

    def step(self, executor_input: dict, pipeline_root: str) -> Step:
        """The step of an executor input: kfp.local roots its outputs at
        ``<pipeline root>/<run>/<DAG tasks>/<component name without comp->`` (DAG tasks nested by
        ``gdmix_pipelines.run.local_task_roots``; a ParallelFor iteration is ``<loop>-iteration-<i>``)."""
        folder = Path(executor_input["outputs"]["outputFile"]).parent.relative_to(pipeline_root)
        dags = tuple(re.sub(r"-iteration-(\d+)$", r"[\1]", part) for part in folder.parts[1:-1])
        place = (dags, f"comp-{folder.parts[-1]}")
        if place not in self.by_place:
            raise RuntimeError(f"no step of the compiled pipeline has its outputs at {folder}")
        return self.by_place[place]

    def differences(self, step: Step, executor_input: dict) -> list[str]:
        """Where ``executor_input`` differs from what the driver and the launcher would give ``step``:
        its declared parameters (a default where the driver sets none: the launcher applies it) and
        every input artifact's URIs."""
        definitions = self.pipeline["components"][step.component].get("inputDefinitions", {})
        given = executor_input.get("inputs", {})
        values, artifacts = given.get("parameterValues", {}), given.get("artifacts", {})
        try:
            expected, uris = self.expected(step)
        except KeyError as missing:
            return [f"{missing.args[0]} has not run yet"]
        found = []
        for name, spec in definitions.get("parameters", {}).items():
            if spec.get("parameterType") == "TASK_CONFIG":
                continue  # filled in by the driver from the pod (container.go), not resolved
            want = expected.get(name, spec.get("defaultValue"))
            if _comparable(values.get(name)) != _comparable(want):
                found.append(f"parameter {name}: {values.get(name)!r}, not {want!r}")
        for name in sorted(set(uris) | set(artifacts)):
            got = [artifact["uri"] for artifact in artifacts.get(name, {}).get("artifacts", [])]
            if got != uris.get(name, []):
                found.append(f"artifact {name}: {got}, not {uris.get(name, [])}")
        return found

    def expected(self, step: Step) -> tuple[dict, dict[str, list[str]]]:
        """(parameter values, artifact URIs) that ``step``'s code gets on KFP: its resolved
        parameters with what its producers wrote and the launcher's placeholders filled in, and
        the URIs of the artifacts its producers wrote. A KeyError names a producer not yet run."""
        parameters = launcher_parameters({k: self._value(v) for k, v in step.parameters.items()})
        uris = {k: [self.produced[p] for p in (v if isinstance(v, list) else [v])] for k, v in step.artifacts.items()}
        return parameters, uris

    def record(self, step: Step, executor_input: dict) -> None:
        """What a finished step produced: its output artifacts' URIs and its output parameters'
        values (the KFP executor writes them into the executor output file)."""
        outputs = executor_input.get("outputs", {})
        for name, listed in outputs.get("artifacts", {}).items():
            self.produced[Produced(step.path, name)] = listed["artifacts"][0]["uri"]
        written = Path(outputs["outputFile"])
        values = json.loads(written.read_text()).get("parameterValues", {}) if written.exists() else {}
        for name in outputs.get("parameters", {}):
            if name in values:
                self.produced[Produced(step.path, name)] = values[name]

    def _value(self, value):
        if isinstance(value, Produced):
            return self.produced[value]
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value


def _comparable(value):
    """A parameter value as JSON compares it: numbers are floats (protobuf's Value has no integers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, list, dict)):
        return value
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return float(value)
