"""KFP's task-config passthrough -> :class:`~gdmix.kube.manifests.PodSettings` fields.

A launcher component declared with ``@dsl.component(task_config_passthroughs=[RESOURCES, ENV,
KUBERNETES_TOLERATIONS, KUBERNETES_NODE_SELECTOR, KUBERNETES_AFFINITY, KUBERNETES_VOLUMES])``
and a parameter typed ``dsl.TaskConfig`` does not get those settings on its own pod; KFP hands
them to the function so it can put them on the workload it launches. This is how
``task.set_cpu_limit(...)``, ``kubernetes.add_toleration(...)``, ``kubernetes.use_secret_as_env``
and friends written on a pipeline task reach the TFJob/MPIJob workers.

Runtime shape (kfp 2.17.3, ``kfp/dsl/executor.py`` and the backend driver's ``TaskConfig``): the
function receives a ``kfp.dsl.TaskConfig`` dataclass whose attributes are the JSON of Kubernetes
core types, camelCase inside, ``None`` when the field was not passed through or not set:

- ``resources``: ResourceRequirements, ``{"limits": {"cpu": "2", "memory": "8Gi",
  "nvidia.com/gpu": "1"}, "requests": {...}}`` (quantities as strings; empty maps omitted);
- ``env``: a list of EnvVar, ``{"name", "value"}`` or ``{"name", "valueFrom": {"secretKeyRef" |
  "configMapKeyRef" | "fieldRef": ...}}`` (the task's env, KFP's proxy env, secrets as env);
- ``tolerations``, ``volumes``, ``volume_mounts``: lists of Toleration / Volume / VolumeMount
  (PVC, Secret and ConfigMap volumes, the pipeline workspace);
- ``node_selector``: ``{label: value}``; ``affinity``: an Affinity.

Without a passthrough (and under ``kfp.local``) every attribute is ``None``. Values travel as
protobuf ``Struct``s, so integers may arrive as floats (``tolerationSeconds: 300.0``); no field of
a pod spec is fractional, so integral floats are turned back into ints.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from gdmix.kube.manifests import PodSettings

#: TaskConfig attribute -> key in the backend's JSON (what a dict given instead must use).
_WIRE_KEYS = {
    "resources": "resources",
    "env": "env",
    "tolerations": "tolerations",
    "node_selector": "nodeSelector",
    "affinity": "affinity",
    "volumes": "volumes",
    "volume_mounts": "volumeMounts",
}


def _clean(value: Any) -> Any:
    """Drop nulls (Go's ``null`` for unset pointers) and turn integral floats back into ints.

    Empty maps stay: ``emptyDir: {}`` is a volume source, not an absent one.
    """
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value if v is not None]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _field(task_config: Any, attribute: str) -> Any:
    if isinstance(task_config, Mapping):
        wire = _WIRE_KEYS[attribute]
        return task_config.get(wire, task_config.get(attribute))
    return getattr(task_config, attribute, None)


def pod_overrides(task_config: Any) -> dict[str, Any]:
    """The :class:`PodSettings` fields a ``dsl.TaskConfig`` sets, ready for :func:`apply_overrides`.

    Accepts the ``kfp.dsl.TaskConfig`` object a component receives, the backend's JSON dict
    (camelCase keys) or ``None``; returns only the fields that carry a value. Plain environment
    values land in ``env``; entries with ``valueFrom`` are kept whole in ``extra_env`` so a
    secret stays a reference and is never resolved into the manifest.
    """
    if task_config is None:
        return {}
    if not (isinstance(task_config, Mapping) or dataclasses.is_dataclass(task_config)):
        raise TypeError(f"expected a kfp.dsl.TaskConfig, a dict or None, got {type(task_config).__name__}")
    out: dict[str, Any] = {}
    resources = _clean(_field(task_config, "resources"))
    if resources:
        out["resources"] = resources
    env, extra_env = {}, []
    for entry in _clean(_field(task_config, "env")) or []:
        name = entry.get("name")
        if not name:
            raise ValueError(f"task config env entry without a name: {entry!r}")
        if "valueFrom" in entry:
            extra_env.append(entry)
        else:
            env[name] = str(entry.get("value", ""))
    if env:
        out["env"] = env
    if extra_env:
        out["extra_env"] = extra_env
    for attribute in ("tolerations", "volumes", "volume_mounts"):
        items = _clean(_field(task_config, attribute))
        if items:
            out[attribute] = items
    node_selector = _clean(_field(task_config, "node_selector"))
    if node_selector:
        out["node_selector"] = {str(k): str(v) for k, v in node_selector.items()}
    affinity = _clean(_field(task_config, "affinity"))
    if affinity:
        out["affinity"] = affinity
    return out


def _merge_named(base: list[dict], extra: list[dict], key: str) -> list[dict]:
    """``base`` then ``extra``; an ``extra`` entry replaces a ``base`` entry with the same key."""
    replaced = {e.get(key) for e in extra}
    return [copy.deepcopy(e) for e in base if e.get(key) not in replaced] + copy.deepcopy(extra)


def apply_overrides(pod: PodSettings, overrides: Mapping[str, Any]) -> PodSettings:
    """``pod`` with a task's :func:`pod_overrides` laid over it.

    What the pipeline author wrote on the task wins over the launcher's defaults: resources and
    affinity are replaced, env and node selector are merged key by key, tolerations are
    appended, volumes and mounts are merged by name/mount path. A variable set both plainly and
    as ``valueFrom`` keeps the task's form.
    """
    unknown = set(overrides) - {f.name for f in dataclasses.fields(PodSettings)}
    if unknown:
        raise ValueError(f"not PodSettings fields: {sorted(unknown)}")
    changes: dict[str, Any] = {}
    if "resources" in overrides:
        changes["resources"] = copy.deepcopy(dict(overrides["resources"]))
    if "affinity" in overrides:
        changes["affinity"] = copy.deepcopy(overrides["affinity"])
    new_env = dict(overrides.get("env", {}))
    new_extra = list(overrides.get("extra_env", []))
    if new_env or new_extra:
        from_extra = {e.get("name") for e in new_extra}
        env = {k: v for k, v in pod.env.items() if k not in from_extra}
        env.update(new_env)
        changes["env"] = env
        extra = [e for e in pod.extra_env if e.get("name") not in new_env]
        changes["extra_env"] = _merge_named(extra, new_extra, "name")
    if "node_selector" in overrides:
        changes["node_selector"] = {**pod.node_selector, **overrides["node_selector"]}
    if "tolerations" in overrides:
        changes["tolerations"] = copy.deepcopy(pod.tolerations) + copy.deepcopy(list(overrides["tolerations"]))
    if "volumes" in overrides:
        changes["volumes"] = _merge_named(pod.volumes, list(overrides["volumes"]), "name")
    if "volume_mounts" in overrides:
        changes["volume_mounts"] = _merge_named(pod.volume_mounts, list(overrides["volume_mounts"]), "mountPath")
    for name in ("image", "command", "secret_env", "service_account", "image_pull_policy"):
        if name in overrides:
            changes[name] = overrides[name]
    return dataclasses.replace(pod, **changes)


def with_task_config(pod: PodSettings, task_config: Any) -> PodSettings:
    """Shorthand: ``apply_overrides(pod, pod_overrides(task_config))``."""
    return apply_overrides(pod, pod_overrides(task_config))


@dataclasses.dataclass(frozen=True)
class SparkPassthrough:
    """A TaskConfig as SparkApplication fields: ``pod`` for both ``driver`` and ``executor``
    (SparkPodSpec: env, tolerations, nodeSelector, affinity, volumeMounts, coreRequest,
    coreLimit, gpu), ``volumes`` for ``spec.volumes``."""

    pod: dict[str, Any]
    volumes: list[dict[str, Any]]


def spark_pod_overrides(task_config: Any) -> SparkPassthrough:
    """What a task's :func:`pod_overrides` mean for a SparkApplication's driver and executors.

    CPU requests and limits become ``coreRequest`` / ``coreLimit`` and an accelerator limit
    ``gpu``; memory is not taken from the task, because a Spark pod's memory is its JVM heap
    plus overhead, which ``prep.spark.driver_memory`` / ``executor_memory`` set.
    """
    overrides = pod_overrides(task_config)
    pod: dict[str, Any] = {}
    env = [{"name": k, "value": v} for k, v in overrides.get("env", {}).items()] + overrides.get("extra_env", [])
    if env:
        pod["env"] = env
    for source, target in (("tolerations", "tolerations"), ("node_selector", "nodeSelector"),
                           ("affinity", "affinity"), ("volume_mounts", "volumeMounts")):
        if source in overrides:
            pod[target] = overrides[source]
    resources = overrides.get("resources", {})
    if "cpu" in resources.get("requests", {}):
        pod["coreRequest"] = str(resources["requests"]["cpu"])
    if "cpu" in resources.get("limits", {}):
        pod["coreLimit"] = str(resources["limits"]["cpu"])
    accelerators = {k: v for k, v in resources.get("limits", {}).items() if k not in ("cpu", "memory")}
    if len(accelerators) > 1:
        raise ValueError(f"a Spark pod takes one kind of accelerator, the task asks for {sorted(accelerators)}")
    for name, quantity in accelerators.items():
        pod["gpu"] = {"name": name, "quantity": int(quantity)}
    return SparkPassthrough(pod=pod, volumes=overrides.get("volumes", []))
