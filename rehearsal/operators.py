"""Fake operators and a fake kubelet: custom objects become Docker containers.

:class:`Kubelet` runs a pod (one container) as a Docker container on the rehearsal network:
the pod template's image, ``command`` as the entrypoint and ``args`` as the command (Kubernetes
semantics), ``env`` / ``envFrom`` with Secrets resolved from the fake API server's store (a
missing Secret leaves the pod in ``CreateContainerConfigError``, as a kubelet does), the
security context's ``runAsUser``/``runAsGroup``/``fsGroup``, ``capabilities.drop`` and
``allowPrivilegeEscalation: false``, ``runAsNonRoot`` checked against the image's user,
``workingDir``, ``emptyDir``/``secret``/``configMap`` volumes, the service-account token unless
``automountServiceAccountToken: false``, ``KUBERNETES_SERVICE_HOST/PORT`` and the kubelet's DNS
search path. Resources, node selection, tolerations, probes and image pull policy are ignored.
Pod phase follows the container: Pending / Running / Succeeded (exit 0) / Failed.

DNS: every pod's container gets network aliases = the names the operators' Services give it,
so ``<job>-worker-0.<ns>.svc`` (TFJob) or ``<job>-worker-0.<job>.<ns>.svc`` (MPIJob) resolve
through Docker's embedded DNS to that container.

Controllers (one reconcile pass every ``tick`` seconds, run by :class:`rehearsal.cluster.FakeCluster`):

- :class:`TFJobController`: training-operator v1.9 (pkg/controller.v1/tensorflow).
- :class:`MPIJobController`: mpi-operator v0.7.0 v2beta1 (pkg/controller/mpi_job_controller.go).
- :class:`SparkApplicationController`: spark-operator v2.4.0 + Spark's Kubernetes backend.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import shutil
import string
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rehearsal.apiserver import SA_MOUNT, ApiError, PodSource, Store, now
from rehearsal.dockerenv import LABEL, container_ip, run_container
from rehearsal.kfp_driver import CreateContainerConfigError, secret_ref_value

CLUSTER_DOMAIN = "cluster.local"


# --- pods ------------------------------------------------------------------------------------


@dataclass
class Pod:
    """A pod of the fake cluster: its manifest (as the operator created it) and its container."""

    namespace: str
    name: str
    labels: dict[str, str]
    spec: dict
    owner_uid: str
    aliases: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: os.urandom(8).hex())
    created: str = field(default_factory=now)
    container: Any = None
    phase: str = "Pending"
    waiting_reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    ip: str = ""
    deleted: bool = False
    #: metadata.ownerReferences as created (API-created pods); owner_uid is the controller's
    owner_refs: list[dict] = field(default_factory=list)
    rv: str = "0"
    started: str = ""
    finished: str = ""
    host_ip: str = ""

    @property
    def container_name(self) -> str:
        return self.spec["containers"][0]["name"]

    @property
    def owner_uids(self) -> set[str]:
        return {self.owner_uid, *(r.get("uid") for r in self.owner_refs)} - {"", None}

    def manifest(self) -> dict:
        c = self.spec["containers"][0]
        if self.phase == "Pending":
            state = {"waiting": {"reason": self.waiting_reason, "message": self.message}}
        elif self.phase == "Running":
            state = {"running": {"startedAt": self.started or self.created}}
        else:
            state = {"terminated": {"exitCode": self.exit_code, "startedAt": self.started or self.created,
                                    "finishedAt": self.finished or now(),
                                    "reason": "Completed" if self.exit_code == 0 else "Error"}}
        meta = {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels),
                "annotations": dict(self.annotations), "uid": self.uid, "creationTimestamp": self.created,
                "resourceVersion": self.rv}
        if self.owner_refs:
            meta["ownerReferences"] = copy.deepcopy(self.owner_refs)
        status = {"phase": self.phase, "startTime": self.created,
                  "conditions": [{"type": "PodScheduled", "status": "True"},
                                 {"type": "Initialized", "status": "True"},
                                 {"type": "ContainersReady", "status": "True" if self.phase == "Running" else "False"},
                                 {"type": "Ready", "status": "True" if self.phase == "Running" else "False"}],
                  "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "imageID": "",
                                         "ready": self.phase == "Running", "restartCount": 0,
                                         "started": self.phase == "Running", "state": state}]}
        if self.host_ip:
            status["hostIP"] = self.host_ip
        if self.ip:
            status["podIP"], status["podIPs"] = self.ip, [{"ip": self.ip}]
        spec = dict(self.spec)
        spec.setdefault("nodeName", "rehearsal-node")
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


class Kubelet(PodSource):
    """Runs pods as Docker containers; answers the API server's pod reads."""

    def __init__(self, docker: Any, store: Store, network: str, cluster_id: str, workdir: Path,
                 api_host: str, api_port: int, sa_dirs: Mapping[tuple[str, str], Path],
                 extra_hosts: Mapping[str, str] | None = None) -> None:
        self.docker, self.store, self.network, self.cluster_id = docker, store, network, cluster_id
        self.workdir = Path(workdir)
        self.api_host, self.api_port = api_host, api_port
        self.sa_dirs = dict(sa_dirs)
        self.extra_hosts = dict(extra_hosts or {})
        self.lock = threading.RLock()
        self.pods: dict[tuple[str, str], Pod] = {}
        self.volume_files: dict[tuple[str, str], dict[str, tuple[bytes, int]]] = {}  # configmaps the operators make
        #: admission webhooks: f(namespace, pod manifest) -> pod manifest, for pods created through the API
        self.admission: list[Any] = []
        self.deleted_uids: list[str] = []  # uids of deleted pods: the GC removes what they own

    # --- PodSource ---
    def list_pods(self, namespace: str) -> list[dict]:
        with self.lock:
            return [p.manifest() for (ns, _), p in sorted(self.pods.items()) if ns == namespace and not p.deleted]

    def get_pod(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            pod = self.pods.get((namespace, name))
            return pod.manifest() if pod and not pod.deleted else None

    def pod_log(self, namespace: str, name: str, container: str | None) -> str:
        with self.lock:
            pod = self.pods.get((namespace, name))
        if pod is None or pod.deleted:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        if container not in (None, pod.container_name):
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if pod.container is None:
            raise ApiError(400, "BadRequest", f'container "{pod.container_name}" in pod "{name}" is waiting to '
                                              f"start: {pod.waiting_reason}")
        try:
            return pod.container.logs(stdout=True, stderr=True).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - container removed meanwhile
            raise ApiError(404, "NotFound", f'pods "{name}" not found ({exc})') from None

    def create_pod(self, namespace: str, body: dict) -> dict:
        """``POST /api/v1/namespaces/<ns>/pods`` (Spark's driver creating executors): admission
        (the registered webhooks), then the pod runs like the operators' pods."""
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
        if namespace not in self.store.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if not meta.get("name"):
            raise ApiError(422, "Invalid", 'Pod "" is invalid: metadata.name: Required value: name or generateName '
                                           'is required')
        for webhook in self.admission:
            body = webhook(namespace, body)
        meta = body["metadata"]
        spec = body.get("spec") or {}
        if not spec.get("containers"):
            raise ApiError(422, "Invalid", f'Pod "{meta["name"]}" is invalid: spec.containers: Required value')
        refs = list(meta.get("ownerReferences") or [])
        controller = next((r["uid"] for r in refs if r.get("controller")), refs[0]["uid"] if refs else "")
        pod = Pod(namespace, meta["name"], dict(meta.get("labels") or {}), spec, controller,
                  annotations=dict(meta.get("annotations") or {}), owner_refs=refs)
        self.create(pod)
        return pod.manifest()

    def delete_pod(self, namespace: str, name: str) -> dict:
        with self.lock:
            pod = self.pods.get((namespace, name))
        if pod is None or pod.deleted:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        manifest = pod.manifest()
        manifest["metadata"]["deletionTimestamp"] = now()
        manifest["metadata"]["deletionGracePeriodSeconds"] = 0
        self.delete(pod)
        return manifest

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str) -> dict:
        """Metadata patches (labels, annotations): JSON patch, merge or strategic merge patch."""
        with self.lock:
            pod = self.pods.get((namespace, name))
        if pod is None or pod.deleted:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        manifest = pod.manifest()
        if "json-patch" in content_type:
            patched = _json_patch(manifest, patch)
        else:
            patched = _merge_patch(manifest, patch)
        if patched["spec"] != manifest["spec"]:
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change '
                                           f"fields other than the rehearsal's metadata")
        pod.labels = dict(patched["metadata"].get("labels") or {})
        pod.annotations = dict(patched["metadata"].get("annotations") or {})
        self.touch(pod)
        return pod.manifest()

    # --- lifecycle ---
    def touch(self, pod: Pod) -> None:
        """A new resourceVersion for ``pod`` (its manifest changed): watches send MODIFIED."""
        pod.rv = self.store.next_rv()

    def create(self, pod: Pod) -> Pod:
        with self.lock:
            if (pod.namespace, pod.name) in self.pods and not self.pods[(pod.namespace, pod.name)].deleted:
                raise ApiError(409, "AlreadyExists", f'pods "{pod.name}" already exists',
                               {"name": pod.name, "kind": "pods"})
            self.pods[(pod.namespace, pod.name)] = pod
            pod.host_ip = pod.host_ip or self.api_host
            self.touch(pod)
        self._try_start(pod)
        self.touch(pod)
        return pod

    def owned(self, owner_uid: str) -> list[Pod]:
        with self.lock:
            return [p for p in self.pods.values() if owner_uid in p.owner_uids and not p.deleted]

    def delete(self, pod: Pod) -> None:
        """Delete a pod: its container is removed (the log goes with it)."""
        if not pod.deleted:
            self.deleted_uids.append(pod.uid)
        pod.deleted = True
        if pod.container is not None:
            try:
                pod.container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        with self.lock:
            if self.pods.get((pod.namespace, pod.name)) is pod:
                del self.pods[(pod.namespace, pod.name)]
        self.store.next_rv()  # wakes the watches: the pod is gone
        shutil.rmtree(self.workdir / "pods" / pod.uid, ignore_errors=True)

    def stop(self, pod: Pod) -> None:
        """Kill a running pod's container but keep the pod (cleanPodPolicy: the pod is deleted
        in a real cluster; we delete it too, see :meth:`delete`)."""
        self.delete(pod)

    def sync(self) -> None:
        """Start pods waiting for their config, refresh the phase of the others."""
        with self.lock:
            pods = [p for p in self.pods.values() if not p.deleted]
        for pod in pods:
            if pod.container is None:
                if pod.phase == "Pending":
                    self._try_start(pod)
                continue
            if pod.phase in ("Succeeded", "Failed"):
                continue
            before = pod.phase
            try:
                pod.container.reload()
            except Exception:  # noqa: BLE001 - removed behind our back: the pod failed
                pod.phase, pod.exit_code = "Failed", 137
                self.touch(pod)
                continue
            status = pod.container.status
            if status == "running":
                pod.phase = "Running"
            elif status in ("exited", "dead"):
                code = pod.container.attrs["State"].get("ExitCode", 1)
                pod.exit_code = code
                pod.finished = pod.container.attrs["State"].get("FinishedAt", "")[:19] + "Z"
                pod.phase = "Succeeded" if code == 0 else "Failed"
            if pod.phase != before:
                self.touch(pod)

    # --- container config ---
    def _try_start(self, pod: Pod) -> None:
        try:
            kwargs = self._container_config(pod)
        except _ConfigError as exc:
            pod.waiting_reason, pod.message = "CreateContainerConfigError", str(exc)
            return
        c = pod.spec["containers"][0]
        try:
            pod.container = run_container(
                self.docker, c["image"], name=f"k8s_{pod.container_name}_{pod.name}_{pod.namespace}_{pod.uid[:8]}",
                network=self.network, aliases=pod.aliases,
                labels={LABEL: self.cluster_id, "io.gdmix.rehearsal.pod": f"{pod.namespace}/{pod.name}",
                        "io.gdmix.rehearsal.owner": pod.owner_uid},
                **kwargs)
        except Exception as exc:  # noqa: BLE001 - image missing, bad config: the pod fails to start
            pod.waiting_reason, pod.message = "CreateContainerError", str(exc)
            return
        pod.phase, pod.waiting_reason, pod.started = "Running", "", now()
        try:
            pod.ip = container_ip(pod.container, self.network)
        except Exception:  # noqa: BLE001 - exited already
            pod.ip = ""

    def _container_config(self, pod: Pod) -> dict:
        spec = pod.spec
        if len(spec.get("containers") or []) != 1 or spec.get("initContainers"):
            raise _ConfigError("the rehearsal kubelet runs pods of exactly one container and no init containers")
        c = spec["containers"][0]
        env: dict[str, str] = {
            "KUBERNETES_SERVICE_HOST": self.api_host, "KUBERNETES_SERVICE_PORT": str(self.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
            "KUBERNETES_PORT": f"tcp://{self.api_host}:{self.api_port}",
        }
        for source in c.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef")
            if "configMapRef" in source:
                raise _ConfigError("envFrom configMapRef is not supported by the rehearsal")
            data = self.store.secret_data(pod.namespace, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise _ConfigError(f'secret "{ref["name"]}" not found')
            for k, v in data.items():
                env[source.get("prefix", "") + k] = v.decode()
        for item in c.get("env") or []:
            env[item["name"]] = self._env_value(pod, item)
        sc = {**(spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        user = sc.get("runAsUser")
        group = sc.get("runAsGroup")
        if sc.get("runAsNonRoot"):
            effective = user
            if effective is None:
                image_user = (self.docker.images.get(c["image"]).attrs.get("Config") or {}).get("User") or "0"
                effective = image_user.split(":")[0]
            if str(effective) in ("0", "root"):
                raise _ConfigError("container has runAsNonRoot and image will run as root")
        host_config: dict[str, Any] = {"dns_search": [f"{pod.namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}",
                                                      CLUSTER_DOMAIN,
                                                      *((spec.get("dnsConfig") or {}).get("searches") or [])],
                                       "extra_hosts": dict(self.extra_hosts), "binds": {}}
        if (pod.spec.get("securityContext") or {}).get("fsGroup") is not None:
            host_config["group_add"] = [str(spec["securityContext"]["fsGroup"])]
        if (sc.get("capabilities") or {}).get("drop"):
            host_config["cap_drop"] = list(sc["capabilities"]["drop"])
        if (sc.get("capabilities") or {}).get("add"):
            host_config["cap_add"] = list(sc["capabilities"]["add"])
        if sc.get("allowPrivilegeEscalation") is False:
            host_config["security_opt"] = ["no-new-privileges"]
        host_config["binds"] = self._volumes(pod, c)
        kwargs: dict[str, Any] = {
            "environment": env,
            "hostname": spec.get("hostname") or pod.name[:63],
            "host_config": host_config,
        }
        if spec.get("subdomain"):
            kwargs["domainname"] = f"{spec['subdomain']}.{pod.namespace}.svc.{CLUSTER_DOMAIN}"
        if c.get("command"):
            kwargs["entrypoint"] = list(c["command"])
            kwargs["command"] = list(c.get("args") or [])
        elif c.get("args"):
            kwargs["command"] = list(c["args"])
        pod_ip_vars = [item["name"] for item in c.get("env") or []
                       if ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                       in ("status.podIP", "status.podIPs")]
        if pod_ip_vars and not pod.ip:
            # A kubelet knows the pod IP before the container starts; Docker assigns it at start
            # (no fixed addresses on an auto-subnet network). So the container starts under a
            # shell that sets those variables to its own address (/etc/hosts: Docker's line for
            # the hostname) and then execs the pod's command: the image's entrypoint and cmd
            # unless the pod sets command / args, as the runtime would run them.
            config = (self.docker.images.get(c["image"]).attrs.get("Config") or {})
            entry = list(c["command"]) if c.get("command") else list(config.get("Entrypoint") or [])
            args = list(c["args"]) if c.get("args") else ([] if c.get("command") else list(config.get("Cmd") or []))
            if not entry + args:
                raise _ConfigError("no command to run (neither the pod nor the image gives one)")
            exports = " ".join(f'{name}="$ip"' for name in pod_ip_vars)
            script = ('h=$(cat /etc/hostname); ip=; '
                      'while read -r a rest; do for n in $rest; do [ "$n" = "$h" ] && ip=$a; done; done < /etc/hosts; '
                      '[ -n "$ip" ] || { echo "rehearsal kubelet: no address for $h in /etc/hosts" >&2; exit 126; }; '
                      f'export {exports}; exec "$@"')
            kwargs["entrypoint"] = ["/bin/sh", "-c", script, "pod-ip"]
            kwargs["command"] = entry + args
        if user is not None:
            kwargs["user"] = f"{user}:{group}" if group is not None else str(user)
        if c.get("workingDir"):
            kwargs["working_dir"] = c["workingDir"]
        return kwargs

    def _env_value(self, pod: Pod, item: dict) -> str:
        if "value" in item:
            return str(item["value"])
        source = item.get("valueFrom") or {}
        if "secretKeyRef" in source:
            try:
                value = secret_ref_value(source["secretKeyRef"], lambda name: self.store.secret_data(pod.namespace, name))
            except CreateContainerConfigError as exc:
                raise _ConfigError(f"{exc} (namespace {pod.namespace})") from None
            return "" if value is None else value
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            values = {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "metadata.uid": pod.uid,
                      "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
                      # the address is known only once the container runs; binding to all of
                      # the pod's addresses is what the pod IP amounts to in a one-address pod
                      "status.podIP": pod.ip or "0.0.0.0", "spec.nodeName": "rehearsal-node", "status.hostIP": self.api_host}
            m = path.startswith("metadata.labels['") and path[len("metadata.labels['"):-2]
            if m:
                return pod.labels.get(m, "")
            if path not in values:
                raise _ConfigError(f"fieldRef {path} is not supported by the rehearsal")
            return values[path]
        if not source:
            return ""
        raise _ConfigError(f"env {item['name']}: {list(source)} is not supported by the rehearsal")

    def _volumes(self, pod: Pod, c: dict) -> dict:
        root = self.workdir / "pods" / pod.uid
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        binds: dict[str, dict] = {}
        for mount in c.get("volumeMounts") or []:
            vol = volumes.get(mount["name"])
            if vol is None:
                raise _ConfigError(f"volume {mount['name']} is not declared")
            host = root / "volumes" / mount["name"]
            if "emptyDir" in vol:
                host.mkdir(parents=True, exist_ok=True)
                host.chmod(0o777)
            elif "secret" in vol or "configMap" in vol:
                src = vol.get("secret") or vol.get("configMap")
                key = src.get("secretName") or src.get("name")
                if "secret" in vol:
                    data = self.store.secret_data(pod.namespace, key)
                    if data is None:
                        raise _ConfigError(f'secret "{key}" not found')
                    files = {k: (v, src.get("defaultMode", 0o644)) for k, v in data.items()}
                else:
                    files = self.volume_files.get((pod.namespace, key))
                    if files is None:
                        try:
                            cm = self.store.core_get("configmaps", pod.namespace, key)
                        except ApiError:
                            if src.get("optional"):
                                cm = {}
                            else:
                                raise _ConfigError(f'configmap "{key}" not found') from None
                        files = {k: (v.encode(), src.get("defaultMode", 0o644)) for k, v in (cm.get("data") or {}).items()}
                        files.update({k: (base64.b64decode(v), src.get("defaultMode", 0o644))
                                      for k, v in (cm.get("binaryData") or {}).items()})
                items = src.get("items")
                host.mkdir(parents=True, exist_ok=True)
                chosen = ([(i["key"], i["path"], i.get("mode")) for i in items] if items
                          else [(k, k, None) for k in files])
                # as the kubelet leaves them: files owned by root with the item's / default mode; the
                # volume's root is an emptyDir: a tmpfs for a secret (mode 1777, drwxrwxrwt), a
                # directory on disk for a configMap (0777); with fsGroup, SetVolumeOwnership gives
                # every file and directory that group, read for it (a read-only volume: | 0440) and
                # directories setgid. (The ..data symlinks of AtomicWriter are not reproduced.)
                fs_group = (pod.spec.get("securityContext") or {}).get("fsGroup")
                for k, path, mode in chosen:
                    if k not in files:
                        raise _ConfigError(f"key {k} not in {key}")
                    data, default_mode = files[k]
                    target = host / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    file_mode = mode if mode is not None else src.get("defaultMode", default_mode)
                    if fs_group is not None:
                        _chgrp(target, fs_group)
                        file_mode |= 0o440
                    target.chmod(file_mode)
                for sub in [host, *(d for d in host.rglob("*") if d.is_dir())]:
                    dir_mode = (0o1777 if "secret" in vol else 0o777) if sub == host else 0o755
                    if fs_group is not None:
                        _chgrp(sub, fs_group)
                        dir_mode |= 0o2000 | 0o550
                    sub.chmod(dir_mode)
            else:
                raise _ConfigError(f"volume {mount['name']}: only emptyDir, secret and configMap are supported")
            binds[str(host)] = {"bind": mount["mountPath"], "mode": "ro" if mount.get("readOnly") or
                                "secret" in vol or "configMap" in vol else "rw"}
        if pod.spec.get("automountServiceAccountToken", True):
            sa = pod.spec.get("serviceAccountName") or pod.spec.get("serviceAccount") or "default"
            sa_dir = self.sa_dirs.get((pod.namespace, sa))
            if sa_dir is None:
                raise _ConfigError(f'serviceaccount "{sa}" not found in namespace {pod.namespace}')
            binds[str(sa_dir)] = {"bind": SA_MOUNT, "mode": "ro"}
        return binds

    def shutdown(self) -> None:
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            self.delete(pod)


class _ConfigError(Exception):
    pass


def _chgrp(path: Path, group: int | str) -> None:
    """Group ownership for fsGroup (the host runs as root; otherwise the group stays the caller's)."""
    try:
        os.chown(path, -1, int(group))
    except PermissionError:
        pass


def _merge_patch(obj: Any, patch: Any) -> Any:
    """RFC 7386 merge patch (a strategic merge patch of metadata amounts to the same)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(obj) if isinstance(obj, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


def _json_patch(obj: dict, ops: list[dict]) -> dict:
    """RFC 6902 JSON patch: add / replace / remove / test on object paths."""
    out = copy.deepcopy(obj)
    for op in ops if isinstance(ops, list) else []:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = out
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        elif op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise ApiError(422, "Invalid", f"the test of JSON patch path {op['path']} failed")
        else:
            raise ApiError(422, "Invalid", f"JSON patch op {op['op']} is not served by the rehearsal")
    return out


# --- conditions (training-operator / mpi-operator semantics) ----------------------------------


def set_condition(status: dict, ctype: str, value: str, reason: str, message: str) -> None:
    """commonutil.UpdateJobConditions: no change once Failed; Succeeded/Failed turn Running False."""
    conditions = status.setdefault("conditions", [])
    if any(c["type"] == "Failed" and c["status"] == "True" for c in conditions):
        return
    current = next((c for c in conditions if c["type"] == ctype), None)
    if current and current["status"] == value and current["reason"] == reason:
        return
    stamp = now()
    kept = []
    for c in conditions:
        if c["type"] == ctype or (ctype == "Running" and c["type"] == "Restarting") or \
                (ctype == "Restarting" and c["type"] == "Running"):
            continue
        if ctype in ("Failed", "Succeeded") and c["type"] == "Running":
            c = {**c, "status": "False"}
        kept.append(c)
    kept.append({"type": ctype, "status": value, "reason": reason, "message": message,
                 "lastUpdateTime": stamp, "lastTransitionTime": stamp})
    status["conditions"] = kept


def is_finished(status: dict) -> bool:
    return any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True" for c in status.get("conditions") or [])


def _merge_labels(template: dict, labels: Mapping[str, str]) -> dict[str, str]:
    out = dict((template.get("metadata") or {}).get("labels") or {})
    out.update(labels)
    return out


def _counts(pods: list[Pod]) -> dict[str, int]:
    return {"active": sum(p.phase in ("Pending", "Running") for p in pods),
            "succeeded": sum(p.phase == "Succeeded" for p in pods),
            "failed": sum(p.phase == "Failed" for p in pods)}


def _clean_pods(kubelet: Kubelet, pods: list[Pod], policy: str) -> None:
    """runPolicy.cleanPodPolicy once the job is decided: All, Running (default) or None."""
    for pod in pods:
        if policy == "All" or (policy == "Running" and pod.phase in ("Pending", "Running")):
            kubelet.delete(pod)


# --- TFJob -----------------------------------------------------------------------------------


class TFJobController:
    """training-operator v1.9 TFJob: one pod and one Service per replica, TF_CONFIG, status."""

    kind = "TFJob"
    DEFAULT_PORT, PORT_NAME, CONTAINER = 2222, "tfjob-port", "tensorflow"
    ORDER = ("Chief", "Eval", "Master", "PS", "Worker")

    def __init__(self, kubelet: Kubelet, store: Store) -> None:
        self.kubelet, self.store = kubelet, store

    def _port(self, spec: dict) -> int:
        for c in spec["template"]["spec"]["containers"]:
            if c["name"] == self.CONTAINER:
                for p in c.get("ports") or []:
                    if p.get("name") == self.PORT_NAME:
                        return int(p["containerPort"])
        return self.DEFAULT_PORT

    def tf_config(self, job: dict, rtype: str, index: int) -> str:
        """genTFConfigJSONStr (tensorflow.go): cluster from every replica type, host
        ``<job>-<rtype>-<i>.<ns>.svc:<port>``, task, environment cloud."""
        name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
        cluster = {}
        for rt, spec in job["spec"]["tfReplicaSpecs"].items():
            port = self._port(spec)
            cluster[rt.lower()] = [f"{name}-{rt.lower()}-{i}.{ns}.svc:{port}" for i in range(spec.get("replicas", 1))]
        # Go's json.Marshal of the TFConfig struct: cluster, task, environment (map keys sorted)
        return json.dumps({"cluster": dict(sorted(cluster.items())), "task": {"type": rtype.lower(), "index": index},
                           "environment": "cloud"}, separators=(",", ":"))

    def reconcile(self, job: dict) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = copy.deepcopy(job.get("status") or {})
        name, ns = meta["name"], meta["namespace"]
        if not status.get("conditions"):
            set_condition(status, "Created", "True", "TFJobCreated", f"TFJob {name} is created.")
        replicas = spec["tfReplicaSpecs"]
        distributed = sum(r.get("replicas", 1) for r in replicas.values()) != 1
        pods = self.kubelet.owned(meta["uid"])
        if not is_finished(status) and not pods and not status.get("startTime"):
            for rtype, rspec in replicas.items():
                for i in range(rspec.get("replicas", 1)):
                    self.kubelet.create(self._pod(job, rtype, rspec, i, distributed))
            status["startTime"] = now()
            pods = self.kubelet.owned(meta["uid"])
        if is_finished(status):
            self.store.set_status(job, status)
            return
        by_type = {rt: [p for p in pods if p.labels.get("training.kubeflow.org/replica-type") == rt.lower()]
                   for rt in replicas}
        status["replicaStatuses"] = {rt: {**_counts(ps), "selector": f"training.kubeflow.org/job-name={name},"
                                          f"training.kubeflow.org/replica-type={rt.lower()}"} for rt, ps in by_type.items()}
        has_chief = any(rt in ("Chief", "Master") for rt in replicas)
        for rtype in self.ORDER:
            if rtype not in replicas:
                continue
            counts = _counts(by_type[rtype])
            expected = replicas[rtype].get("replicas", 1) - counts["succeeded"]
            if has_chief:
                if rtype in ("Chief", "Master"):
                    if counts["active"] > 0:
                        set_condition(status, "Running", "True", "TFJobRunning", f"TFJob {ns}/{name} is running.")
                    if expected == 0:
                        self._succeed(status, name, ns)
            elif rtype == "Worker":
                worker0 = any(p.labels.get("training.kubeflow.org/replica-index") == "0" and p.phase == "Succeeded"
                              for p in by_type[rtype])
                if expected == 0 or (worker0 and spec.get("successPolicy", "") != "AllWorkers"):
                    self._succeed(status, name, ns)
                elif counts["active"] > 0:
                    set_condition(status, "Running", "True", "TFJobRunning", f"TFJob {ns}/{name} is running.")
            if counts["failed"] > 0 and replicas[rtype].get("restartPolicy", "Never") in ("Never", "ExitCode"):
                status.setdefault("completionTime", now())
                set_condition(status, "Failed", "True", "TFJobFailed",
                              f"TFJob {ns}/{name} has failed because {counts['failed']} {rtype} replica(s) failed.")
        if is_finished(status):
            _clean_pods(self.kubelet, pods, (spec.get("runPolicy") or {}).get("cleanPodPolicy", "None"))
        self.store.set_status(job, status)

    @staticmethod
    def _succeed(status: dict, name: str, ns: str) -> None:
        status.setdefault("completionTime", now())
        set_condition(status, "Succeeded", "True", "TFJobSucceeded", f"TFJob {ns}/{name} successfully completed.")

    def _pod(self, job: dict, rtype: str, rspec: dict, index: int, distributed: bool) -> Pod:
        name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
        template = copy.deepcopy(rspec["template"])
        pod_name = f"{name}-{rtype.lower()}-{index}"
        labels = _merge_labels(template, {
            "training.kubeflow.org/operator-name": "tfjob-controller",
            "training.kubeflow.org/job-name": name,
            "training.kubeflow.org/replica-type": rtype.lower(),
            "training.kubeflow.org/replica-index": str(index),
        })
        if rtype in ("Chief", "Master") or (rtype == "Worker" and index == 0 and
                                             not any(r in ("Chief", "Master") for r in job["spec"]["tfReplicaSpecs"])):
            labels["training.kubeflow.org/job-role"] = "master"
        spec = template["spec"]
        spec["restartPolicy"] = "Never" if rspec.get("restartPolicy", "Never") == "ExitCode" else rspec.get("restartPolicy", "Never")
        for c in spec["containers"]:
            if c["name"] == self.CONTAINER:
                # the defaulter's port, and SetClusterSpec's TF_CONFIG (distributed jobs only)
                if not any(p.get("name") == self.PORT_NAME for p in c.get("ports") or []):
                    c.setdefault("ports", []).append({"name": self.PORT_NAME, "containerPort": self.DEFAULT_PORT})
                if distributed:
                    c.setdefault("env", []).append({"name": "TF_CONFIG", "value": self.tf_config(job, rtype, index)})
                break
        # one headless Service per replica, named like the pod: <pod>.<ns>.svc
        aliases = [pod_name, f"{pod_name}.{ns}.svc", f"{pod_name}.{ns}.svc.{CLUSTER_DOMAIN}"]
        return Pod(ns, pod_name, labels, spec, job["metadata"]["uid"], aliases)


# --- MPIJob ----------------------------------------------------------------------------------


def ssh_auth_secret() -> dict[str, bytes]:
    """newSSHAuthSecret: an ECDSA P-521 key, PEM "EC PRIVATE KEY", and its authorized_keys line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP521R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {"ssh-privatekey": private, "ssh-publickey": public + b"\n"}


class MPIJobController:
    """mpi-operator v0.7.0 (v2beta1): ssh Secret, hostfile ConfigMap, worker pods, then the launcher."""

    kind = "MPIJob"

    def __init__(self, kubelet: Kubelet, store: Store) -> None:
        self.kubelet, self.store = kubelet, store

    @staticmethod
    def hostfile(job: dict) -> str:
        name, ns, spec = job["metadata"]["name"], job["metadata"]["namespace"], job["spec"]
        slots = spec.get("slotsPerWorker", 1)
        impl = spec.get("mpiImplementation", "OpenMPI")
        hosts = []
        if spec.get("runLauncherAsWorker"):
            hosts.append(f"{name}-launcher")
        hosts += [f"{name}-worker-{i}" for i in range(spec["mpiReplicaSpecs"]["Worker"].get("replicas", 0))]
        fmt = "{h}.{name}.{ns}.svc slots={s}\n" if impl == "OpenMPI" else "{h}.{name}.{ns}.svc:{s}\n"
        return "".join(fmt.format(h=h, name=name, ns=ns, s=slots) for h in hosts)

    def reconcile(self, job: dict) -> None:
        meta, spec = job["metadata"], job["spec"]
        name, ns, uid = meta["name"], meta["namespace"], meta["uid"]
        status = copy.deepcopy(job.get("status") or {})
        if not status.get("conditions"):
            set_condition(status, "Created", "True", "MPIJobCreated", f"MPIJob {ns}/{name} is created.")
        workers_n = spec["mpiReplicaSpecs"]["Worker"].get("replicas", 0)
        pods = self.kubelet.owned(uid)
        if not status.get("startTime") and not is_finished(status):
            secret = ssh_auth_secret()
            self.store.add_secret(ns, f"{name}-ssh", {k: v.decode() for k, v in secret.items()},
                                  "kubernetes.io/ssh-auth")
            discover = "#!/bin/sh\n" + "".join(f"echo {h.split(' ')[0]}\n" for h in self.hostfile(job).splitlines())
            self.kubelet.volume_files[(ns, f"{name}-config")] = {
                "hostfile": (self.hostfile(job).encode(), 0o644), "discover_hosts.sh": (discover.encode(), 0o644)}
            for i in range(workers_n):
                self.kubelet.create(self._worker(job, i))
            status["startTime"] = now()
            pods = self.kubelet.owned(uid)
        workers = [p for p in pods if p.labels.get("training.kubeflow.org/job-role") == "worker"]
        launchers = [p for p in pods if p.labels.get("training.kubeflow.org/job-role") == "launcher"]
        if is_finished(status):
            self.store.set_status(job, status)
            return
        running_workers = sum(p.phase == "Running" for p in workers)
        policy = spec.get("launcherCreationPolicy", "AtStartup")
        if not launchers and (policy == "AtStartup" or running_workers == workers_n):
            launchers = [self.kubelet.create(self._launcher(job))]
        launcher = launchers[0] if launchers else None
        status["replicaStatuses"] = {"Worker": _counts(workers), "Launcher": _counts(launchers)}
        if launcher is not None and launcher.phase == "Succeeded":
            status.setdefault("completionTime", now())
            set_condition(status, "Succeeded", "True", "MPIJobSucceeded", f"MPIJob {ns}/{name} successfully completed.")
        elif launcher is not None and launcher.phase == "Failed":
            # the launcher is a batch Job with backoffLimit = runPolicy.backoffLimit; at 0 its first
            # failure fails the Job: BackoffLimitExceeded, plus the failed pod's reason / message
            status.setdefault("completionTime", now())
            set_condition(status, "Failed", "True", "BackoffLimitExceeded/",
                          "Job has reached the specified backoff limit: ")
        elif any(p.phase == "Failed" for p in workers):
            pass  # v0.7.0 only fails the job through the launcher (or evicted workers)
        elif launcher is not None and launcher.phase == "Running" and running_workers == workers_n:
            set_condition(status, "Running", "True", "MPIJobRunning", f"MPIJob {ns}/{name} is running.")
        if is_finished(status):
            _clean_pods(self.kubelet, workers, (spec.get("runPolicy") or {}).get("cleanPodPolicy", "None"))
        self.store.set_status(job, status)

    def _ssh(self, job: dict, spec: dict, container: dict) -> None:
        mount = job["spec"].get("sshAuthMountPath", "/root/.ssh")
        secret = {"secretName": f"{job['metadata']['name']}-ssh",
                  "items": [{"key": "ssh-privatekey", "path": "id_rsa"}, {"key": "ssh-publickey", "path": "id_rsa.pub"},
                            {"key": "ssh-publickey", "path": "authorized_keys"}]}
        if mount == "/root/.ssh":
            secret["defaultMode"] = 0o600
        spec.setdefault("volumes", []).append({"name": "ssh-auth", "secret": secret})
        container.setdefault("volumeMounts", []).append({"name": "ssh-auth", "mountPath": mount})

    def _base(self, job: dict, role: str) -> tuple[dict, dict]:
        template = copy.deepcopy(job["spec"]["mpiReplicaSpecs"]["Launcher" if role == "launcher" else "Worker"]["template"])
        labels = _merge_labels(template, {"training.kubeflow.org/operator-name": "mpi-operator",
                                          "training.kubeflow.org/job-name": job["metadata"]["name"],
                                          "training.kubeflow.org/job-role": role})
        return template, labels

    def _worker(self, job: dict, index: int) -> Pod:
        name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
        template, labels = self._base(job, "worker")
        labels["training.kubeflow.org/replica-index"] = str(index + (1 if job["spec"].get("runLauncherAsWorker") else 0))
        spec = template["spec"]
        pod_name = f"{name}-worker-{index}"
        spec["hostname"], spec["subdomain"] = pod_name, name
        # newWorker: the job's Service domain is appended to the pod's DNS search path
        spec.setdefault("dnsConfig", {}).setdefault("searches", []).append(f"{name}.{ns}.svc.{CLUSTER_DOMAIN}")
        spec["restartPolicy"] = job["spec"]["mpiReplicaSpecs"]["Worker"].get("restartPolicy", "Never")
        c = spec["containers"][0]
        if not c.get("command") and not c.get("args"):
            c["command"] = ["/usr/sbin/sshd", "-De"]
        c.setdefault("env", []).append({"name": "K_MPI_JOB_ROLE", "value": "worker"})
        self._ssh(job, spec, c)
        return Pod(ns, pod_name, labels, spec, job["metadata"]["uid"], self._aliases(pod_name, name, ns))

    def _launcher(self, job: dict) -> Pod:
        name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
        template, labels = self._base(job, "launcher")
        spec = template["spec"]
        host = f"{name}-launcher"
        spec["hostname"], spec["subdomain"] = host, name
        spec["restartPolicy"] = job["spec"]["mpiReplicaSpecs"]["Launcher"].get("restartPolicy", "Never")
        c = spec["containers"][0]
        slots = str(job["spec"].get("slotsPerWorker", 1))
        env = [{"name": "K_MPI_JOB_ROLE", "value": "launcher"}]
        if job["spec"].get("mpiImplementation", "OpenMPI") == "OpenMPI":
            env += [{"name": "OMPI_MCA_orte_keep_fqdn_hostnames", "value": "true"},
                    {"name": "OMPI_MCA_orte_default_hostfile", "value": "/etc/mpi/hostfile"},
                    {"name": "OMPI_MCA_plm_rsh_args", "value": "-o ConnectionAttempts=10"},
                    {"name": "OMPI_MCA_orte_set_default_slots", "value": slots}]
        if not job["spec"].get("runLauncherAsWorker"):
            env += [{"name": "NVIDIA_VISIBLE_DEVICES"}, {"name": "NVIDIA_DRIVER_CAPABILITIES"}]
        c.setdefault("env", []).extend(env)
        self._ssh(job, spec, c)
        spec.setdefault("volumes", []).append({"name": "mpi-job-config", "configMap": {
            "name": f"{name}-config", "items": [{"key": "hostfile", "path": "hostfile", "mode": 0o444},
                                                {"key": "discover_hosts.sh", "path": "discover_hosts.sh", "mode": 0o555}]}})
        c.setdefault("volumeMounts", []).append({"name": "mpi-job-config", "mountPath": "/etc/mpi"})
        # the launcher is a batch Job's pod: <job>-launcher-<5 random characters>
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        return Pod(ns, f"{host}-{suffix}", labels, spec, job["metadata"]["uid"], self._aliases(host, name, ns))

    @staticmethod
    def _aliases(host: str, job: str, ns: str) -> list[str]:
        # hostname + subdomain (the job's headless Service): <host>.<job>.<ns>.svc[.cluster.local]
        return [host, f"{host}.{job}", f"{host}.{job}.{ns}.svc", f"{host}.{job}.{ns}.svc.{CLUSTER_DOMAIN}"]


# --- SparkApplication ------------------------------------------------------------------------


def java_properties(props: Mapping[str, str], comment: str) -> str:
    """``java.util.Properties.store`` output (escaped keys and values; no date line)."""
    def esc(text: str, key: bool) -> str:
        out = []
        for i, ch in enumerate(text):
            if ch == "\\":
                out.append("\\\\")
            elif ch in ":=#!" or (ch == " " and (key or i == 0)):
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            else:
                out.append(ch)
        return "".join(out)
    return f"#{comment}\n" + "".join(f"{esc(k, True)}={esc(str(v), False)}\n" for k, v in props.items())


SPARK_OPERATOR_GROUP = "sparkoperator.k8s.io"


def spark_pod_webhook(store: Store):
    """spark-operator v2.4.0's pod mutating webhook (internal/webhook/sparkpod_defaulter.go) for
    the pods labelled ``sparkoperator.k8s.io/launched-by-spark-operator=true``: the
    SparkApplication of the ``sparkoperator.k8s.io/app-name`` label, then for the driver
    (``spark-role=driver``, container ``spark-kubernetes-driver``) or executor
    (``spark-role=executor``, container ``spark-kubernetes-executor`` or ``executor``): owner
    reference (driver), env, envFrom, volumes of the role's volumeMounts (not spark-local-dir-*),
    configMaps, ports, nodeSelector, affinity, tolerations, GPU, memoryLimit, security contexts."""

    def mutate(namespace: str, pod: dict) -> dict:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(f"{SPARK_OPERATOR_GROUP}/launched-by-spark-operator") != "true":
            return pod
        app_name = labels.get(f"{SPARK_OPERATOR_GROUP}/app-name")
        if not app_name:
            return pod
        app = next((o for o in store.list() if o["kind"] == "SparkApplication"
                    and o["metadata"]["namespace"] == namespace and o["metadata"]["name"] == app_name), None)
        if app is None:
            raise ApiError(500, "InternalError", f'Internal error occurred: admission webhook '
                           f'"mutate-pod.sparkoperator.k8s.io" denied the request: failed to get SparkApplication '
                           f'{namespace}/{app_name}: sparkapplications.sparkoperator.k8s.io "{app_name}" not found')
        role = labels.get("spark-role")
        if role not in ("driver", "executor"):
            return pod
        spec_app = app["spec"]
        rs = spec_app.get(role) or {}
        names = ("spark-kubernetes-driver",) if role == "driver" else ("executor", "spark-kubernetes-executor")
        spec = pod.setdefault("spec", {})
        c = next((c for c in spec.get("containers") or [] if c.get("name") in names), None)
        if c is None:
            raise ApiError(500, "InternalError", f"failed to mutate Spark pod: {role} container not found")
        if role == "driver":
            ref = {"apiVersion": app["apiVersion"], "kind": "SparkApplication", "name": app_name,
                   "uid": app["metadata"]["uid"], "controller": True}
            refs = pod["metadata"].setdefault("ownerReferences", [])
            if ref not in refs:
                refs.append(ref)
        if rs.get("env"):
            c.setdefault("env", []).extend(copy.deepcopy(rs["env"]))
        if rs.get("envFrom"):
            c.setdefault("envFrom", []).extend(copy.deepcopy(rs["envFrom"]))
        volumes = {v["name"]: v for v in spec_app.get("volumes") or []}
        added = set()
        for m in rs.get("volumeMounts") or []:
            if m["name"].startswith("spark-local-dir-") or m["name"] not in volumes:
                continue
            if m["name"] not in added:
                spec.setdefault("volumes", []).append(copy.deepcopy(volumes[m["name"]]))
                added.add(m["name"])
            c.setdefault("volumeMounts", []).append(copy.deepcopy(m))
        for cm in rs.get("configMaps") or []:
            vol = (cm["name"] + "-vol")[:63]
            spec.setdefault("volumes", []).append({"name": vol, "configMap": {"name": cm["name"]}})
            c.setdefault("volumeMounts", []).append({"name": vol, "mountPath": cm["path"]})
        for port in rs.get("ports") or []:
            c.setdefault("ports", []).append({"name": port.get("name"), "containerPort": port["containerPort"],
                                              "protocol": port.get("protocol", "TCP")})
        for key in ("nodeSelector",):
            if rs.get(key) or spec_app.get(key):
                spec.setdefault(key, {}).update({**(spec_app.get(key) or {}), **(rs.get(key) or {})})
        if rs.get("affinity"):
            spec["affinity"] = copy.deepcopy(rs["affinity"])
        if rs.get("tolerations"):
            spec.setdefault("tolerations", []).extend(copy.deepcopy(rs["tolerations"]))
        if (rs.get("gpu") or {}).get("name") and (rs.get("gpu") or {}).get("quantity", 0) > 0:
            c.setdefault("resources", {}).setdefault("limits", {})[rs["gpu"]["name"]] = str(rs["gpu"]["quantity"])
        if rs.get("memoryLimit"):
            c.setdefault("resources", {}).setdefault("limits", {})["memory"] = rs["memoryLimit"]
        if rs.get("securityContext"):
            c["securityContext"] = copy.deepcopy(rs["securityContext"])
        if rs.get("podSecurityContext"):
            spec["securityContext"] = copy.deepcopy(rs["podSecurityContext"])
        return pod

    return mutate


def _spark_unique_id() -> str:
    """KubernetesUtils.uniqueID: 3 random bytes in hex + the clock's milliseconds in hex (40 bits)."""
    return os.urandom(3).hex() + format(int(time.time() * 1000) & 0xFFFFFFFFFF, "x")


class SparkApplicationController:
    """spark-operator v2.4.0 + the ``spark-submit --deploy-mode cluster`` it runs (Spark 4.x).

    On a new SparkApplication: a submission id, the operator's ``--conf`` list
    (internal/controller/sparkapplication/submission.go) and what spark-submit's
    KubernetesClientApplication adds (BasicDriverFeatureStep, DriverServiceFeatureStep,
    PodTemplateConfigMapStep, LocalDirsFeatureStep, DriverCommandFeatureStep) become: the
    ConfigMap ``spark-drv-<id>-conf-map`` (``spark.properties``), the executor pod template's
    ConfigMap ``<prefix>-podspec-configmap`` (the operator's template: container
    ``spark-kubernetes-executor`` and a non-controller owner reference to the application), the
    driver Service ``<prefix>-driver-svc`` (a network alias of the driver container) and the
    driver pod ``<app>-driver`` (args ``driver --properties-file /opt/spark/conf/spark.properties
    --class org.apache.spark.deploy.PythonRunner <main> <arguments>``), mutated by the operator's
    pod webhook (:func:`spark_pod_webhook`). The driver then creates its executor pods itself
    through the fake API server, as its service account (RBAC of the repository's Role).
    applicationState from the driver pod: SUBMITTED, RUNNING, COMPLETED / FAILED.
    """

    kind = "SparkApplication"
    PROPERTIES = "/opt/spark/conf/spark.properties"
    TEMPLATE_DIR, TEMPLATE_FILE = "/opt/spark/pod-template", "pod-spec-template.yml"

    def __init__(self, kubelet: Kubelet, store: Store, api_master: str | None = None) -> None:
        self.kubelet, self.store = kubelet, store
        # util.GetMasterURL: the operator pod's KUBERNETES_SERVICE_HOST/PORT
        self.api_master = api_master or f"k8s://https://{kubelet.api_host}:{kubelet.api_port}"
        self.webhook = spark_pod_webhook(store)

    def properties(self, app: dict, app_id: str, submission_id: str = "", prefix: str = "",
                   service: str = "") -> dict[str, str]:
        spec, name, ns = app["spec"], app["metadata"]["name"], app["metadata"]["namespace"]
        driver, executor = spec.get("driver") or {}, spec.get("executor") or {}
        prefix = prefix or f"{name}-{_spark_unique_id()}"
        service = service or f"{prefix}-driver-svc"
        props: dict[str, str] = {
            # spark-submit itself
            "spark.master": self.api_master,
            "spark.submit.deployMode": "cluster",
            "spark.app.name": name,
            "spark.app.submitTime": str(int(time.time() * 1000)),
            "spark.kubernetes.namespace": ns,
        }
        # the operator's --conf list, in its order
        image = spec.get("image") or ""
        if image:
            props["spark.kubernetes.container.image"] = image
        if spec.get("imagePullPolicy"):
            props["spark.kubernetes.container.image.pullPolicy"] = spec["imagePullPolicy"]
        if spec.get("pythonVersion"):
            props["spark.kubernetes.pyspark.pythonVersion"] = str(spec["pythonVersion"])
        if spec.get("memoryOverheadFactor"):
            props["spark.kubernetes.memoryOverheadFactor"] = str(spec["memoryOverheadFactor"])
        props["spark.kubernetes.submission.waitAppCompletion"] = "false"
        props.update({str(k): str(v) for k, v in (spec.get("sparkConf") or {}).items()
                      if k != "spark.kubernetes.driver.pod.name"})
        props.update({f"spark.hadoop.{k}": str(v) for k, v in (spec.get("hadoopConf") or {}).items()})
        props["spark.kubernetes.driver.podTemplateFile"] = f"/tmp/spark/{submission_id}/driver-pod-template.yaml"
        props["spark.kubernetes.driver.podTemplateContainerName"] = "spark-kubernetes-driver"
        props["spark.kubernetes.driver.pod.name"] = f"{name}-driver"
        for role, s in (("driver", driver), ("executor", executor)):
            label = f"spark.kubernetes.{role}.label."
            props[label + f"{SPARK_OPERATOR_GROUP}/app-name"] = name
            props[label + f"{SPARK_OPERATOR_GROUP}/launched-by-spark-operator"] = "true"
            if not s.get("template"):
                props[label + f"{SPARK_OPERATOR_GROUP}/mutated-by-spark-operator"] = "true"
            props[label + f"{SPARK_OPERATOR_GROUP}/submission-id"] = submission_id
            if role == "executor" and "instances" in s:
                props["spark.executor.instances"] = str(s["instances"])
            props[f"spark.kubernetes.{role}.container.image"] = s.get("image") or image
            if "cores" in s:
                props[f"spark.{role}.cores"] = str(int(s["cores"]))
            if "coreRequest" in s:
                props[f"spark.kubernetes.{role}.request.cores"] = str(s["coreRequest"])
            if "coreLimit" in s:
                props[f"spark.kubernetes.{role}.limit.cores"] = str(s["coreLimit"])
            if "memory" in s:
                props[f"spark.{role}.memory"] = str(s["memory"])
            if "memoryOverhead" in s:
                props[f"spark.{role}.memoryOverhead"] = str(s["memoryOverhead"])
            if s.get("serviceAccount"):
                props[f"spark.kubernetes.authenticate.{role}.serviceAccountName"] = s["serviceAccount"]
            if role == "executor" and "deleteOnTermination" in s:
                props["spark.kubernetes.executor.deleteOnTermination"] = str(s["deleteOnTermination"]).lower()
            if s.get("javaOptions"):
                props[f"spark.{role}.extraJavaOptions"] = s["javaOptions"]
            for k, v in {**(app["metadata"].get("labels") or {}), **(s.get("labels") or {})}.items():
                props[label + k] = str(v)
            for k, v in (s.get("annotations") or {}).items():
                props[f"spark.kubernetes.{role}.annotation.{k}"] = str(v)
            for k, v in (s.get("envVars") or {}).items():
                props[(f"spark.kubernetes.driverEnv.{k}" if role == "driver" else f"spark.executorEnv.{k}")] = str(v)
        props["spark.kubernetes.executor.podTemplateFile"] = f"/tmp/spark/{submission_id}/executor-pod-template.yaml"
        props["spark.kubernetes.executor.podTemplateContainerName"] = "spark-kubernetes-executor"
        # what KubernetesClientApplication's feature steps add for the driver
        props.update({
            "spark.kubernetes.driver.pod.name": f"{name}-driver",
            "spark.app.id": app_id,
            "spark.kubernetes.submitInDriver": "true",
            "spark.kubernetes.memoryOverheadFactor": props.get("spark.kubernetes.memoryOverheadFactor", "0.4"),
            "spark.driver.host": f"{service}.{ns}.svc",
            "spark.driver.port": props.get("spark.driver.port", "7078"),
            "spark.driver.blockManager.port": props.get("spark.driver.blockManager.port", "7079"),
            # PodTemplateConfigMapStep: the executor template, mounted in the driver
            "spark.kubernetes.executor.podTemplateFile": f"{self.TEMPLATE_DIR}/{self.TEMPLATE_FILE}",
        })
        return props

    def reconcile(self, app: dict) -> None:
        meta = app["metadata"]
        name, uid = meta["name"], meta["uid"]
        status = copy.deepcopy(app.get("status") or {})
        state = (status.get("applicationState") or {}).get("state", "")
        if state in ("COMPLETED", "FAILED", "SUBMISSION_FAILED"):
            return
        pods = self.kubelet.owned(uid)
        if not state:
            submission_id = str(uuid.uuid4())
            app_id = "spark-" + uuid.uuid4().hex
            status.update(submissionID=submission_id, sparkApplicationId=app_id, submissionAttempts=1,
                          lastSubmissionAttemptTime=now(), driverInfo={"podName": f"{name}-driver"},
                          applicationState={"state": "SUBMITTED"})
            try:
                pods = [self._submit(app, app_id, submission_id)]
            except ApiError as exc:
                status["applicationState"] = {"state": "SUBMISSION_FAILED",
                                              "errorMessage": f"failed to run spark-submit: {exc.message}"}
                self.store.set_status(app, status)
                return
            status["driverInfo"]["webUIServiceName"] = f"{name}-ui-svc"
        driver = next((p for p in pods if p.labels.get("spark-role") == "driver"), None)
        if driver is None:
            status["applicationState"] = {"state": "FAILED", "errorMessage": "driver pod not found"}
        elif driver.phase == "Running":
            status["applicationState"] = {"state": "RUNNING"}
        elif driver.phase == "Succeeded":
            status["applicationState"] = {"state": "COMPLETED"}
            status["terminationTime"] = now()
        elif driver.phase == "Failed":
            status["applicationState"] = {"state": "FAILED",
                                          "errorMessage": f"driver container failed with ExitCode: {driver.exit_code}, "
                                                          f"Reason: Error"}
            status["terminationTime"] = now()
        elif driver.waiting_reason in ("CreateContainerConfigError", "CreateContainerError"):
            status["applicationState"] = {"state": "SUBMISSION_FAILED", "errorMessage": driver.message}
        executors = [p for p in pods if p.labels.get("spark-role") == "executor"]
        if executors or status.get("executorState"):
            states = dict(status.get("executorState") or {})
            states.update({p.name: {"Pending": "PENDING", "Running": "RUNNING", "Succeeded": "COMPLETED",
                                    "Failed": "FAILED"}.get(p.phase, "UNKNOWN") for p in executors})
            status["executorState"] = states
        self.store.set_status(app, status)

    def _submit(self, app: dict, app_id: str, submission_id: str) -> Pod:
        """What the operator's spark-submit creates: ConfigMaps, the driver pod, its Service."""
        name, ns = app["metadata"]["name"], app["metadata"]["namespace"]
        unique = _spark_unique_id()
        prefix = f"{name}-{unique}"
        service = f"{prefix}-driver-svc" if len(f"{prefix}-driver-svc") <= 63 else f"spark-{unique}-driver-svc"
        props = self.properties(app, app_id, submission_id, prefix, service)
        conf_map, template_map = f"spark-drv-{unique}-conf-map", f"{prefix}-podspec-configmap"
        executor_template = {"metadata": {"ownerReferences": [
            {"apiVersion": app["apiVersion"], "kind": "SparkApplication", "name": name, "uid": app["metadata"]["uid"]}]},
            "spec": {"containers": [{"name": "spark-kubernetes-executor", "resources": {}}]}}
        import yaml

        driver = self._driver(app, app_id, props, conf_map, template_map, service)
        driver_manifest = self.webhook(ns, {"metadata": {"name": driver.name, "labels": driver.labels},
                                            "spec": driver.spec})
        driver.spec, driver.owner_refs = driver_manifest["spec"], driver_manifest["metadata"].get("ownerReferences", [])
        # spark-submit: driver pod first, then its resources owned by it
        self.store.core_create("configmaps", "ConfigMap", ns, {
            "metadata": {"name": template_map},
            "data": {"podspec-configmap-key": yaml.safe_dump(executor_template, sort_keys=False)}})
        self.store.core_create("configmaps", "ConfigMap", ns, {
            "metadata": {"name": conf_map},
            "data": {"spark.properties": java_properties(props, f"Java properties built from Kubernetes config map "
                                                                f"with name: {conf_map}")}})
        pod = self.kubelet.create(driver)
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid, "controller": True}]
        for cm in (template_map, conf_map):
            self.store.core[("configmaps", ns, cm)]["metadata"]["ownerReferences"] = owner
        self.store.core_create("services", "Service", ns, {
            "metadata": {"name": service, "labels": {"spark-app-selector": app_id}, "ownerReferences": owner},
            "spec": {"clusterIP": "None", "selector": {"spark-app-selector": app_id, "spark-role": "driver"},
                     "ports": [{"name": "driver-rpc-port", "port": 7078}, {"name": "blockmanager", "port": 7079},
                               {"name": "spark-ui", "port": 4040}]}})
        return pod

    def _driver(self, app: dict, app_id: str, props: Mapping[str, str], conf_map: str, template_map: str,
                service: str) -> Pod:
        spec, name, ns = app["spec"], app["metadata"]["name"], app["metadata"]["namespace"]
        driver = spec.get("driver") or {}
        main = spec["mainApplicationFile"]
        if main.startswith("local://"):
            main = main[len("local://"):]
        local_dir = f"/var/data/spark-{uuid.uuid4()}"
        container = {
            "name": "spark-kubernetes-driver",
            "image": props["spark.kubernetes.driver.container.image"],
            "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
            "args": ["driver", "--properties-file", self.PROPERTIES, "--class",
                     "org.apache.spark.deploy.PythonRunner", main, *[str(a) for a in spec.get("arguments") or []]],
            "ports": [{"name": "driver-rpc-port", "containerPort": 7078, "protocol": "TCP"},
                      {"name": "blockmanager", "containerPort": 7079, "protocol": "TCP"},
                      {"name": "spark-ui", "containerPort": 4040, "protocol": "TCP"}],
            "env": [{"name": "SPARK_USER", "value": "spark"},
                    {"name": "SPARK_APPLICATION_ID", "value": app_id},
                    {"name": "SPARK_DRIVER_BIND_ADDRESS", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                                     "fieldPath": "status.podIP"}}},
                    {"name": "SPARK_LOCAL_DIRS", "value": local_dir},
                    {"name": "SPARK_CONF_DIR", "value": "/opt/spark/conf"}],
            "volumeMounts": [{"name": "spark-local-dir-1", "mountPath": local_dir},
                             {"name": "pod-template-volume", "mountPath": self.TEMPLATE_DIR},
                             {"name": "spark-conf-volume-driver", "mountPath": "/opt/spark/conf"}],
        }
        pod_spec = {"containers": [container], "restartPolicy": "Never",
                    "serviceAccountName": driver.get("serviceAccount", "default"),
                    "volumes": [{"name": "spark-local-dir-1", "emptyDir": {}},
                                {"name": "pod-template-volume", "configMap": {
                                    "name": template_map, "items": [{"key": "podspec-configmap-key",
                                                                     "path": self.TEMPLATE_FILE}]}},
                                {"name": "spark-conf-volume-driver", "configMap": {
                                    "name": conf_map, "items": [{"key": "spark.properties", "path": "spark.properties",
                                                                 "mode": 420}]}}]}
        labels = {k[len("spark.kubernetes.driver.label."):]: v for k, v in props.items()
                  if k.startswith("spark.kubernetes.driver.label.")}
        labels.update({"spark-app-selector": app_id, "spark-app-name": name, "spark-role": "driver",
                       "spark-version": str(spec.get("sparkVersion", ""))})
        return Pod(ns, f"{name}-driver", labels, pod_spec, app["metadata"]["uid"],
                   [service, f"{service}.{ns}.svc", f"{service}.{ns}.svc.{CLUSTER_DOMAIN}"])


CONTROLLERS = (TFJobController, MPIJobController, SparkApplicationController)

__all__ = ["CONTROLLERS", "Kubelet", "MPIJobController", "Pod", "SparkApplicationController", "TFJobController",
           "set_condition", "ssh_auth_secret"]
