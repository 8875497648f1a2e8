"""What Kubeflow Pipelines' driver puts on a step's pod, read from a compiled pipeline.

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
  the executor input (JSON of the Go ``TaskConfig`` struct: nulls for unset fields).

Only what gdmix's pipelines use is ported; an unsupported platform setting is an error here,
not silently ignored.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
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
