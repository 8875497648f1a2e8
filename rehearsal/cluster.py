"""FakeCluster: the fake API server + fake operators + Docker, as one context manager.

    with FakeCluster(secrets={("gdmix", "gdmix-object-store"): s3.env()}, namespaces=["gdmix", "kubeflow"]) as cluster:
        cluster.service_account_dir("kubeflow", "pipeline-runner")  # folder to mount at SA_MOUNT
        cluster.env_for_launcher()        # KUBERNETES_SERVICE_HOST/PORT for a container
        cluster.launcher_container_kwargs()  # network, mounts, env for `docker run` of a step pod
        cluster.run_in_pod(image, command)   # run a step container as that pod would, wait, (exit, log)
        cluster.objects()                 # custom objects (with their status)
        cluster.running_containers()      # containers of this cluster still running
        cluster.kube_config()             # kubernetes.client.Configuration for this process (admin or a token)

The API server listens on 127.0.0.1 (for this process) and on the rehearsal network's gateway
(for containers), on the same port when free; its certificate names both addresses and
``kubernetes.default.svc``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rehearsal.apiserver import SA_MOUNT, ApiServer, Identity, Store, load_crds, load_rbac, write_service_account
from rehearsal.dockerenv import DEFAULT_NETWORK, LABEL, Service, docker_client, ensure_network, run_container
from rehearsal.operators import CONTROLLERS, Kubelet, spark_pod_webhook

#: the account KFP standalone runs step pods (hence launchers) as
LAUNCHER_ACCOUNT = ("kubeflow", "pipeline-runner")


class FakeCluster(Service):
    def __init__(self, secrets: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
                 namespaces: Iterable[str] = ("gdmix", "kubeflow"), *, network: str = DEFAULT_NETWORK,
                 rbac_overlay: Path | None = None, tick: float = 0.5, log=None, docker: Any = None) -> None:
        self.id = "fc-" + uuid.uuid4().hex[:8]
        self.namespaces = list(namespaces)
        self.secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.network_name = network
        self.rbac_overlay = rbac_overlay
        self.tick = tick
        self.log = log
        self.docker = docker
        self.errors: list[str] = []  # reconcile exceptions (a bug in the fake, shown by the tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.workdir: Path | None = None

    # --- lifecycle ---
    def start(self) -> "FakeCluster":
        self.docker = self.docker or docker_client()
        self.network = ensure_network(self.docker, self.network_name)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"gdmix-rehearsal-{self.id}-"))
        self.workdir.chmod(0o755)
        self.store = Store(self.namespaces)
        for (ns, name), data in self.secrets.items():
            self.store.add_secret(ns, name, data)
        kwargs = {"overlay": self.rbac_overlay} if self.rbac_overlay else {}
        self.identities = load_rbac(**kwargs)
        for ns in self.namespaces:  # every namespace has its "default" account (no rules)
            self.identities.setdefault((ns, "default"), Identity(ns, "default"))
        self.kubelet = Kubelet(self.docker, self.store, self.network.name, self.id, self.workdir, self.network.gateway,
                               0, {})
        self.apiserver = ApiServer(self.store, self.identities, self.kubelet, load_crds(), self.workdir / "tls",
                                   ["127.0.0.1", self.network.gateway], log=self.log)
        (self.workdir / "tls").mkdir()
        self.apiserver.start()
        self.kubelet.api_port = self.apiserver.ports[self.network.gateway]
        self.kubelet.extra_hosts = {"kubernetes.default.svc": self.network.gateway,
                                    "kubernetes.default.svc.cluster.local": self.network.gateway,
                                    "kubernetes.default": self.network.gateway, "kubernetes": self.network.gateway}
        self.kubelet.sa_dirs = {key: write_service_account(self.workdir / "sa" / f"{key[0]}_{key[1]}", ident.token,
                                                           self.apiserver.ca_crt, key[0])
                                for key, ident in self.identities.items()}
        self.controllers = {c.kind: c(self.kubelet, self.store) for c in CONTROLLERS}
        self.kubelet.admission.append(spark_pod_webhook(self.store))  # spark-operator's pod webhook
        self._thread = threading.Thread(target=self._loop, name=f"fake-operators-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if getattr(self, "kubelet", None) is not None:
            self.kubelet.shutdown()
        if self.docker is not None:  # anything left with this cluster's label (e.g. run_in_pod)
            for c in self.containers():
                c.remove(force=True)
        if getattr(self, "apiserver", None) is not None:
            self.apiserver.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # noqa: BLE001 - keep reconciling, but keep the error for the tests
                self.errors.append(traceback.format_exc())
            self._stop.wait(self.tick)

    def reconcile_once(self) -> None:
        # garbage collection: the dependents (pods, ConfigMaps, Services: ownerReferences) of
        # deleted objects go, and what those owned in turn (a deleted driver pod's executors)
        uids = [obj["metadata"]["uid"] for obj in self.store.take_deleted()]
        while True:
            uids += self.kubelet.deleted_uids
            self.kubelet.deleted_uids = []
            if not uids:
                break
            uid = uids.pop()
            for pod in self.kubelet.owned(uid):
                self.kubelet.delete(pod)
            for resource, ns, name in self.store.core_owned_by(uid):
                try:
                    gone = self.store.core_delete(resource, ns, name)
                except Exception:  # noqa: BLE001 - deleted meanwhile
                    continue
                uids.append(gone["metadata"]["uid"])
        self.kubelet.sync()
        for obj in self.store.list():
            controller = self.controllers.get(obj["kind"])
            if controller is not None:
                controller.reconcile(obj)

    # --- what a runner needs ---
    def service_account_dir(self, namespace: str = LAUNCHER_ACCOUNT[0], name: str = LAUNCHER_ACCOUNT[1]) -> Path:
        """Host folder with token, ca.crt, namespace: mount it read-only at SA_MOUNT."""
        return self.kubelet.sa_dirs[(namespace, name)]

    def token(self, namespace: str = LAUNCHER_ACCOUNT[0], name: str = LAUNCHER_ACCOUNT[1]) -> str:
        return self.identities[(namespace, name)].token

    @property
    def admin_token(self) -> str:
        return self.apiserver.admin_token

    def env_for_launcher(self) -> dict[str, str]:
        """The variables the kubelet gives every container (the API server's Service)."""
        host, port = self.network.gateway, str(self.kubelet.api_port)
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{host}:{port}"}

    def launcher_container_kwargs(self, namespace: str = LAUNCHER_ACCOUNT[0],
                                  account: str = LAUNCHER_ACCOUNT[1]) -> dict[str, Any]:
        """Keyword arguments of :func:`rehearsal.dockerenv.run_container` for a step pod's container
        running as ``namespace/account``: network, SA mount, API env, DNS search, cluster label."""
        return {
            "network": self.network.name,
            "labels": {LABEL: self.id},
            "environment": self.env_for_launcher(),
            "host_config": {
                "binds": {str(self.service_account_dir(namespace, account)): {"bind": SA_MOUNT, "mode": "ro"}},
                "dns_search": [f"{namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local"],
                "extra_hosts": dict(self.kubelet.extra_hosts),
            },
        }

    def run_in_pod(self, image: str, command: list[str], *, env: Mapping[str, str] | None = None,
                   namespace: str = LAUNCHER_ACCOUNT[0], account: str = LAUNCHER_ACCOUNT[1],
                   user: str = "1000:1000", timeout: float = 600, binds: Mapping[str, dict] | None = None,
                   name: str | None = None) -> tuple[int, str]:
        """Run ``command`` in ``image`` as a pod of ``namespace/account`` would; (exit code, log)."""
        kwargs = self.launcher_container_kwargs(namespace, account)
        kwargs["environment"].update(env or {})
        kwargs["host_config"]["binds"].update(binds or {})
        container = run_container(self.docker, image, name=name or f"gdmix-rehearsal-step-{uuid.uuid4().hex[:6]}",
                                  entrypoint=list(command[:1]), command=list(command[1:]), user=user,
                                  **kwargs)
        try:
            result = container.wait(timeout=timeout)
            return result.get("StatusCode", 1), container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)

    def kube_config(self, token: str | None = None) -> Any:
        """A kubernetes.client.Configuration for this process (127.0.0.1); admin unless ``token``."""
        from kubernetes import client

        config = client.Configuration()
        config.host = self.apiserver.url("127.0.0.1")
        config.ssl_ca_cert = str(self.apiserver.ca_crt)
        config.api_key = {"authorization": "Bearer " + (token or self.admin_token)}
        return config

    def objects(self) -> list[dict]:
        return self.store.list()

    def core_objects(self, resource: str, namespace: str | None = None) -> list[dict]:
        """ConfigMaps / Services (``resource``) in the fake API server's store."""
        return [o for ns in ([namespace] if namespace else self.namespaces) for o in self.store.core_list(resource, ns)]

    def pods(self, namespace: str | None = None) -> list[dict]:
        return [p for ns in ([namespace] if namespace else self.namespaces) for p in self.kubelet.list_pods(ns)]

    def running_containers(self) -> list[Any]:
        """This cluster's containers that still exist and run (pods, step containers)."""
        # ignore_removed: a container removed between docker's listing and its inspection is gone, not an error
        return self.docker.containers.list(filters={"label": f"{LABEL}={self.id}", "status": "running"},
                                           ignore_removed=True)

    def containers(self) -> list[Any]:
        """This cluster's containers, running or not."""
        return self.docker.containers.list(all=True, filters={"label": f"{LABEL}={self.id}"}, ignore_removed=True)

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()
