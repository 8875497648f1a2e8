"""Which worker this process is, from ``TF_CONFIG`` (what a Kubeflow TFJob injects).

``TF_CONFIG`` is ``{"cluster": {"chief": [...], "worker": [...]}, "task": {"type", "index"}}``;
an optional chief counts as worker 0 and the workers follow it. Without ``TF_CONFIG`` the
process is a cluster of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from gdmix.errors import ConfigError

WORKER_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    count: int
    addresses: tuple[str, ...] = ()

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1


def worker_info(environ: dict[str, str] | None = None) -> WorkerInfo:
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        return WorkerInfo(0, 1)
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"TF_CONFIG is not valid: {exc}") from None
    unsupported = sorted(set(cluster) - set(WORKER_TYPES))
    if unsupported:
        raise ConfigError(f"TF_CONFIG: task types {unsupported} are not used by gdmix (only chief and worker)")
    if kind not in WORKER_TYPES:
        raise ConfigError(f"TF_CONFIG: this task is a '{kind}'; gdmix runs only chief and worker tasks")
    addresses = tuple(cluster.get("chief", [])) + tuple(cluster.get("worker", []))
    position = index if kind == "chief" else len(cluster.get("chief", [])) + index
    if not 0 <= position < len(addresses):
        raise ConfigError(f"TF_CONFIG: task index {index} of type {kind} is outside the cluster")
    return WorkerInfo(position, len(addresses), addresses)


def tf_config(addresses: list[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of plain workers."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})
