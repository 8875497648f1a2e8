"""A fake Kubernetes API server: exactly what ``gdmix.kube.runner.run_job`` calls, over HTTPS.

Served (JSON, as kubernetes-client 30.1.0 sends and parses it):

- ``POST/GET /apis/<group>/<version>/namespaces/<ns>/<plural>`` and
  ``GET/DELETE .../<plural>/<name>`` for the custom resources of the CRDs vendored in
  ``tests/upstream/crds`` (TFJob, MPIJob, SparkApplication). Create validates the object
  against its CRD schema (:mod:`rehearsal.crds`): 422 ``Invalid``; 409 ``AlreadyExists``;
  404 for a kind no CRD serves or an unknown namespace/object.
- ``GET /api/v1/namespaces/<ns>/pods[?labelSelector=...]``, ``.../pods/<name>``,
  ``.../pods/<name>/log[?container=...]``: the pods the fake operators made (one container
  each, run by Docker); the log is the container's output.
- ``GET /api/v1/namespaces/<ns>/secrets/<name>``: the Secrets the cluster was given.
- What Spark's driver calls (fabric8 kubernetes-client 7.x): pods create (through the
  kubelet's admission webhooks), delete, deletecollection (label / field selectors), patch
  (labels, annotations), watch (websocket, RFC 6455, or chunked HTTP: ADDED / MODIFIED /
  DELETED events); configmaps, services and persistentvolumeclaims create / get / list / delete /
  deletecollection.
  Other core resources: authorized (403 per the Role), then 404.
- ``GET /version``.

Every request needs ``Authorization: Bearer <token>`` (401 otherwise). Tokens belong to the
ServiceAccounts of the repository's RoleBindings that ``manifests/standalone`` renders (the ``resources``
and ``namespace`` of its kustomizations are followed) and are authorized by their Roles' rules (403 ``Forbidden`` with the API server's message
otherwise); :attr:`ApiServer.admin_token` may do anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
import ssl
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

from rehearsal.crds import CRD_DIR, Invalid, ServedKind, load_crds, validate_object

REPO = Path(__file__).resolve().parent.parent
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- TLS -------------------------------------------------------------------------------------


def make_tls(workdir: Path, ips: Iterable[str], dns: Iterable[str]) -> tuple[Path, Path, Path]:
    """A fresh CA and a server certificate for ``ips``/``dns``: (ca.crt, server.crt, server.key)."""
    ca_crt, crt, key = workdir / "ca.crt", workdir / "server.crt", workdir / "server.key"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        _make_tls_openssl(workdir, list(ips), list(dns))
        return ca_crt, crt, key
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gdmix-rehearsal-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_crt.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    key.chmod(0o600)
    return ca_crt, crt, key


def _make_tls_openssl(workdir: Path, ips: list[str], dns: list[str]) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=workdir)

    san = ",".join([f"IP:{i}" for i in ips] + [f"DNS:{d}" for d in dns])
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=gdmix-rehearsal-ca", "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=kube-apiserver",
        "-keyout", "server.key", "-out", "server.csr")
    (workdir / "ext.cnf").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "ext.cnf", "-out", "server.crt")


# --- RBAC ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def allows(self, group: str, resource: str, verb: str) -> bool:
        return ((group in self.api_groups or "*" in self.api_groups)
                and (resource in self.resources or "*" in self.resources)
                and (verb in self.verbs or "*" in self.verbs))


@dataclass
class Identity:
    """A ServiceAccount: its token and its rules per namespace (from RoleBindings)."""

    namespace: str
    name: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    rules: dict[str, list[Rule]] = field(default_factory=dict)  # namespace -> rules
    admin: bool = False

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def allowed(self, namespace: str, group: str, resource: str, verb: str) -> bool:
        return self.admin or any(r.allows(group, resource, verb) for r in self.rules.get(namespace, []))


#: the overlay whose RBAC the fake enforces (KFP standalone: namespace gdmix, launcher Role bound
#: to kubeflow/pipeline-runner)
RBAC_OVERLAY = REPO / "manifests" / "standalone"
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def kustomize(path: Path) -> list[dict]:
    """The objects a kustomization renders, for what gdmix's manifests use: ``resources`` (files
    and folders, recursively) and ``namespace`` (set on every namespaced object, and on the
    ServiceAccount subjects of RoleBindings whose account is one of those objects)."""
    path = Path(path)
    if path.is_file():
        return [d for d in yaml.safe_load_all(path.read_text()) if d]
    kfile = path / "kustomization.yaml"
    if not kfile.is_file():
        raise FileNotFoundError(f"no kustomization.yaml in {path}")
    k = yaml.safe_load(kfile.read_text()) or {}
    docs: list[dict] = []
    for res in k.get("resources") or []:
        docs += kustomize((path / res).resolve())
    ns = k.get("namespace")
    if ns:
        accounts = {(d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs
                    if d.get("kind") == "ServiceAccount"}
        for d in docs:
            if d.get("kind") in _CLUSTER_SCOPED:
                continue
            if d.get("kind") == "RoleBinding":
                for subject in d.get("subjects") or []:
                    if subject.get("kind") == "ServiceAccount" and \
                            (subject.get("namespace"), subject.get("name")) in accounts:
                        subject["namespace"] = ns
            d.setdefault("metadata", {})["namespace"] = ns
    return docs


def load_rbac(overlay: Path = RBAC_OVERLAY) -> dict[tuple[str, str], Identity]:
    """Identities of the ServiceAccounts bound by the Roles/RoleBindings ``overlay`` renders
    (a kustomization folder of the repository's ``manifests/``)."""
    docs = kustomize(overlay)
    roles: dict[tuple[str, str], list[Rule]] = {}
    for d in docs:
        if d.get("kind") == "Role":
            roles[(d["metadata"]["namespace"], d["metadata"]["name"])] = [
                Rule(tuple(r.get("apiGroups") or ()), tuple(r.get("resources") or ()), tuple(r.get("verbs") or ()))
                for r in d.get("rules") or []
            ]
    identities: dict[tuple[str, str], Identity] = {}
    for d in docs:
        if d.get("kind") == "ServiceAccount":
            key = (d["metadata"]["namespace"], d["metadata"]["name"])
            identities.setdefault(key, Identity(*key))
    for d in docs:
        if d.get("kind") != "RoleBinding" or d["roleRef"].get("kind") != "Role":
            continue
        ns = d["metadata"]["namespace"]
        rules = roles.get((ns, d["roleRef"]["name"]), [])
        for subject in d.get("subjects") or []:
            if subject.get("kind") != "ServiceAccount":
                continue
            key = (subject.get("namespace") or ns, subject["name"])
            identities.setdefault(key, Identity(*key)).rules.setdefault(ns, []).extend(rules)
    return identities


# --- label selectors -------------------------------------------------------------------------


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector syntax: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x)``."""
    if not selector:
        return True
    for term in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        term = term.strip()
        if not term:
            continue
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            has = m.group(1) in labels and labels[m.group(1)] in values
            if has != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = re.split(r"==?", term, maxsplit=1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


# --- the store -------------------------------------------------------------------------------


#: core/v1 resources stored as given (Spark's driver creates, lists and deletes them by label;
#: a Spark 4 driver lists its PersistentVolumeClaims at start-up even when it has none)
KEPT_AS_GIVEN = {"configmaps": "ConfigMap", "services": "Service", "persistentvolumeclaims": "PersistentVolumeClaim"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "details": self.details, "code": self.code}


class PodSource:
    """What the API server asks the fake kubelet/operators about pods (see rehearsal.operators)."""

    def list_pods(self, namespace: str) -> list[dict]:
        return []

    def get_pod(self, namespace: str, name: str) -> dict | None:
        return None

    def pod_log(self, namespace: str, name: str, container: str | None) -> str:
        raise ApiError(404, "NotFound", f'pods "{name}" not found')

    def create_pod(self, namespace: str, body: dict) -> dict:
        raise ApiError(405, "MethodNotAllowed", "pod creation is not served")

    def delete_pod(self, namespace: str, name: str) -> dict:
        raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str) -> dict:
        raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})


@dataclass
class WatchRequest:
    """``GET ...?watch=true``: answered as a stream of watch events (see ``ApiServer.watch_events``)."""

    namespace: str
    selector: str
    field_selector: str
    resource_version: str
    timeout: float


def _load(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the body of the request could not be decoded: {exc}") from None


def field_selector_matches(selector: str, obj: Mapping[str, Any]) -> bool:
    """``metadata.name=x`` / ``metadata.namespace=x`` / ``status.phase!=x`` terms."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        negate = "!=" in term
        key, value = re.split(r"!=|==?", term, maxsplit=1)
        current: Any = obj
        for part in key.strip().split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        if (str(current) == value.strip()) == negate:
            return False
    return True


class Store:
    """Custom objects and Secrets, thread-safe. Controllers read and patch status through it."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        self.lock = threading.RLock()
        self.namespaces = set(namespaces)
        self.objects: dict[tuple[str, str, str, str], dict] = {}  # (group, plural, ns, name)
        self.secrets: dict[tuple[str, str], dict] = {}
        self.deleted: list[dict] = []  # deleted objects whose dependents the GC still has to remove
        self.core: dict[tuple[str, str, str], dict] = {}  # (resource, ns, name): configmaps, services
        self.rv = 0
        self.changed = threading.Condition(self.lock)  # notified on every new resourceVersion (watches)

    def _next_rv(self) -> str:
        with self.lock:
            self.rv += 1
            self.changed.notify_all()
            return str(self.rv)

    def next_rv(self) -> str:
        """A new resourceVersion (the kubelet's pod changes take one too); wakes the watches."""
        return self._next_rv()

    # --- core/v1 objects kept as given (configmaps, services) ---
    def core_create(self, resource: str, kind: str, namespace: str, body: dict) -> dict:
        if namespace not in self.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
        obj = json.loads(json.dumps(body))
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f'{kind} "" is invalid: metadata.name: Required value: name or '
                                           f'generateName is required')
        obj.update(apiVersion="v1", kind=kind)
        with self.lock:
            if (resource, namespace, name) in self.core:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                               {"name": name, "kind": resource})
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now(),
                        resourceVersion=self._next_rv())
            self.core[(resource, namespace, name)] = obj
            return json.loads(json.dumps(obj))

    def core_get(self, resource: str, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.core.get((resource, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
            return json.loads(json.dumps(obj))

    def core_list(self, resource: str, namespace: str, selector: str = "") -> list[dict]:
        with self.lock:
            return [json.loads(json.dumps(o)) for (r, ns, _), o in sorted(self.core.items())
                    if r == resource and ns == namespace
                    and selector_matches(selector, o["metadata"].get("labels") or {})]

    def core_delete(self, resource: str, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.core.pop((resource, namespace, name), None)
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
            self._next_rv()
            return obj

    def core_owned_by(self, uid: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [k for k, o in self.core.items()
                    if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]

    def add_secret(self, namespace: str, name: str, string_data: Mapping[str, str], type_: str = "Opaque") -> dict:
        import base64

        secret = {"apiVersion": "v1", "kind": "Secret", "type": type_,
                  "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                               "creationTimestamp": now()},
                  "data": {k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode()
                           for k, v in string_data.items()}}
        with self.lock:
            secret["metadata"]["resourceVersion"] = self._next_rv()
            self.secrets[(namespace, name)] = secret
        return secret

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        import base64

        with self.lock:
            secret = self.secrets.get((namespace, name))
        if secret is None:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def create(self, served: ServedKind, namespace: str, body: dict) -> dict:
        if namespace not in self.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})
        meta = body.get("metadata") or {}
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
        try:
            obj = validate_object(body, served)
        except Invalid as exc:
            name = meta.get("name", "")
            raise ApiError(422, "Invalid", f'{served.kind}.{served.group} "{name}" is invalid: {exc}',
                           {"name": name, "group": served.group, "kind": served.kind,
                            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                                       for f, m in exc.causes]}) from None
        name = obj["metadata"]["name"]
        key = (served.group, served.plural, namespace, name)
        with self.lock:
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{served.plural}.{served.group} "{name}" already exists',
                               {"name": name, "group": served.group, "kind": served.plural})
            obj["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now(),
                                   generation=1, resourceVersion=self._next_rv())
            obj.pop("status", None)  # status is a subresource: create ignores it
            self.objects[key] = obj
            return json.loads(json.dumps(obj))

    def get(self, served: ServedKind, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.get((served.group, served.plural, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{served.plural}.{served.group} "{name}" not found',
                               {"name": name, "group": served.group, "kind": served.plural})
            return json.loads(json.dumps(obj))

    def list(self, served: ServedKind | None = None, namespace: str | None = None) -> list[dict]:
        with self.lock:
            return [json.loads(json.dumps(o)) for (g, p, ns, _), o in sorted(self.objects.items())
                    if (served is None or (g, p) == (served.group, served.plural))
                    and (namespace is None or ns == namespace)]

    def delete(self, served: ServedKind, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.pop((served.group, served.plural, namespace, name), None)
            if obj is None:
                raise ApiError(404, "NotFound", f'{served.plural}.{served.group} "{name}" not found',
                               {"name": name, "group": served.group, "kind": served.plural})
            self.deleted.append(obj)
            return obj

    def set_status(self, obj: dict, status: dict) -> bool:
        """Replace the status of ``obj`` (if it still exists, same uid); False when it is gone."""
        meta = obj["metadata"]
        group = obj["apiVersion"].split("/")[0]
        with self.lock:
            for (g, _p, ns, name), current in self.objects.items():
                if (g, ns, name) == (group, meta["namespace"], meta["name"]) and \
                        current["metadata"]["uid"] == meta["uid"]:
                    if current.get("status") != status:
                        current["status"] = json.loads(json.dumps(status))
                        current["metadata"]["resourceVersion"] = self._next_rv()
                    return True
        return False

    def take_deleted(self) -> list[dict]:
        with self.lock:
            out, self.deleted = self.deleted, []
            return out


# --- HTTP ------------------------------------------------------------------------------------


class ApiServer:
    """The HTTPS server, on one or more local addresses (same port where possible)."""

    def __init__(self, store: Store, identities: dict[tuple[str, str], Identity], pods: PodSource,
                 served: dict[tuple[str, str, str], ServedKind], workdir: Path, addresses: Iterable[str] = ("127.0.0.1",),
                 log: Callable[[str], Any] | None = None) -> None:
        self.store, self.identities, self.pods, self.served = store, identities, pods, served
        self.addresses = list(addresses)
        self.workdir = Path(workdir)
        self.admin = Identity("kube-system", "rehearsal-admin", admin=True)
        self.by_token = {i.token: i for i in [*identities.values(), self.admin]}
        self.log = log
        self.requests: list[tuple[str, str, str, int]] = []  # (user, method, path, code): an audit log
        self.watches: list[tuple[str, str, str]] = []  # (user, path, transport: "websocket" | "http")
        self._stopping = threading.Event()
        self._servers: list[ThreadingHTTPServer] = []
        self.ports: dict[str, int] = {}
        self.service_ports: dict[str, int] = {}  # address -> 443 where that could be bound too
        self.ca_crt: Path | None = None

    @property
    def admin_token(self) -> str:
        return self.admin.token

    def identity(self, authorization: str | None) -> Identity | None:
        """The identity of an ``Authorization: Bearer <token>`` header (the scheme is case-insensitive:
        kubernetes-client's in-cluster config sends ``bearer``)."""
        scheme, _, token = (authorization or "").partition(" ")
        return self.by_token.get(token.strip()) if scheme.lower() == "bearer" else None

    def url(self, address: str | None = None) -> str:
        address = address or self.addresses[0]
        return f"https://{address}:{self.ports[address]}"

    def start(self) -> "ApiServer":
        self.ca_crt, crt, key = make_tls(self.workdir, self.addresses,
                                         ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                          "kubernetes.default.svc.cluster.local", "localhost"])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        handler = _handler_class(self)
        port = 0
        for address in self.addresses:
            try:
                server = ThreadingHTTPServer((address, port), handler)
            except OSError:
                server = ThreadingHTTPServer((address, 0), handler)
            self._serve_on(server, context, address)
            self.ports[address] = server.server_address[1]
            port = port or server.server_address[1]
            if address != "127.0.0.1":
                # the `kubernetes` Service's port: in-cluster clients that use the URL
                # https://kubernetes.default.svc (Spark's driver: spark.kubernetes.driver.master)
                # reach the API server on 443 (kubernetes.default.svc resolves to this address)
                try:
                    self._serve_on(ThreadingHTTPServer((address, 443), handler), context, f"{address}:443")
                    self.service_ports[address] = 443
                except OSError as exc:
                    if self.log:
                        self.log(f"apiserver: cannot listen on {address}:443 ({exc}); clients that use "
                                 f"https://kubernetes.default.svc will not reach this API server")
        return self

    def _serve_on(self, server: ThreadingHTTPServer, context: ssl.SSLContext, name: str) -> None:
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name=f"fake-apiserver-{name}", daemon=True).start()
        self._servers.append(server)

    def stop(self) -> None:
        self._stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    # --- dispatch ---
    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str, bytes]:
        url = urlparse(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/")
        if path in ("/version", "/healthz", "/readyz", "/livez"):
            if path == "/version":
                return 200, "application/json", json.dumps({"major": "1", "minor": "33", "gitVersion": "v1.33.0-gdmix-rehearsal"}).encode()
            return 200, "text/plain", b"ok"
        ident = self.identity(headers.get("Authorization"))
        if ident is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        m = re.fullmatch(r"/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?", path)
        if m:
            group, version, ns, plural, name = m.groups()
            verb = self._verb(method, name, query)
            self._authorize(ident, verb, group, plural, ns, name)
            served = self.served.get((group, version, plural))
            if served is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if method == "POST" and name is None:
                return self._json(201, self.store.create(served, ns, json.loads(body or b"{}")))
            if method == "GET" and name is None:
                items = self.store.list(served, ns)
                return self._json(200, {"apiVersion": f"{group}/{version}", "kind": f"{served.kind}List",
                                        "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
            if method == "GET":
                return self._json(200, self.store.get(served, ns, name))
            if method == "DELETE" and name is not None:
                obj = self.store.delete(served, ns, name)
                return self._json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                        "details": {"name": name, "group": group, "kind": plural,
                                                    "uid": obj["metadata"]["uid"]}})
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here by the rehearsal API server")
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?(?:/([^/]+))?", path)
        if m and m.group(2) not in ("pods", "secrets", *KEPT_AS_GIVEN):
            # authorization first (403 for whom the Role does not allow it), then not served
            ns, resource, name, sub = m.groups()
            self._authorize(ident, self._verb(method, name, query), "", f"{resource}/{sub}" if sub else resource,
                            ns, name)
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/(pods|secrets|configmaps|services|persistentvolumeclaims)"
                         r"(?:/([^/]+))?(?:/(log))?", path)
        if m:
            ns, resource, name, sub = m.groups()
            verb = self._verb(method, name, query)
            self._authorize(ident, verb, "", f"{resource}/{sub}" if sub else resource, ns, name)
            if ns not in self.store.namespaces:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
            selector = query.get("labelSelector", "")
            if verb == "watch":
                if resource != "pods":
                    raise ApiError(405, "MethodNotAllowed", f"watch {resource} is not served by the rehearsal API server")
                return WatchRequest(ns, selector, query.get("fieldSelector", ""), query.get("resourceVersion", ""),
                                    float(query.get("timeoutSeconds") or 0))
            if resource == "secrets":
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"{method} secrets is not served by the rehearsal API server")
                if name is None:
                    items = [s for (sns, _), s in sorted(self.store.secrets.items()) if sns == ns]
                    return self._json(200, {"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": items})
                secret = self.store.secrets.get((ns, name))
                if secret is None:
                    raise ApiError(404, "NotFound", f'secrets "{name}" not found', {"name": name, "kind": "secrets"})
                return self._json(200, secret)
            if resource in KEPT_AS_GIVEN:
                kind = KEPT_AS_GIVEN[resource]
                if method == "POST" and name is None:
                    return self._json(201, self.store.core_create(resource, kind, ns, _load(body)))
                if method == "GET" and name is None:
                    return self._json(200, {"apiVersion": "v1", "kind": f"{kind}List",
                                            "metadata": {"resourceVersion": str(self.store.rv)},
                                            "items": self.store.core_list(resource, ns, selector)})
                if method == "GET":
                    return self._json(200, self.store.core_get(resource, ns, name))
                if method == "DELETE" and name is not None:
                    return self._json(200, self.store.core_delete(resource, ns, name))
                if method == "DELETE":
                    deleted = [self.store.core_delete(resource, ns, o["metadata"]["name"])
                               for o in self.store.core_list(resource, ns, selector)]
                    return self._json(200, {"apiVersion": "v1", "kind": f"{kind}List", "metadata": {},
                                            "items": deleted})
                raise ApiError(405, "MethodNotAllowed", f"{method} {resource} is not served by the rehearsal API server")
            # pods
            if method == "POST" and name is None:
                return self._json(201, self.pods.create_pod(ns, _load(body)))
            if method == "GET" and name is None:
                items = [p for p in self.pods.list_pods(ns)
                         if selector_matches(selector, p["metadata"].get("labels") or {})
                         and field_selector_matches(query.get("fieldSelector", ""), p)]
                return self._json(200, {"apiVersion": "v1", "kind": "PodList",
                                        "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
            if method == "DELETE" and name is None:
                deleted = [self.pods.delete_pod(ns, p["metadata"]["name"]) for p in self.pods.list_pods(ns)
                           if selector_matches(selector, p["metadata"].get("labels") or {})
                           and field_selector_matches(query.get("fieldSelector", ""), p)]
                return self._json(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": deleted})
            if sub == "log":
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"{method} pods/log is not served")
                return 200, "text/plain", self.pods.pod_log(ns, name, query.get("container")).encode()
            if method == "DELETE":
                return self._json(200, self.pods.delete_pod(ns, name))
            if method == "PATCH":
                return self._json(200, self.pods.patch_pod(ns, name, _load(body), headers.get("Content-Type", "")))
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} pods is not served by the rehearsal API server")
            pod = self.pods.get_pod(ns, name)
            if pod is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
            return self._json(200, pod)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def watch_events(self, req: WatchRequest, alive: Callable[[], bool]) -> Iterable[dict]:
        """The events of a pod watch: ADDED for the pods that match (all of them at first, as a
        watch without resourceVersion does; those newer than ``resourceVersion`` otherwise),
        MODIFIED when a pod's resourceVersion changes, DELETED (the last state, with a
        deletionTimestamp) when it is gone; until ``timeoutSeconds``, the client leaves or the
        server stops."""
        since = int(req.resource_version) if req.resource_version.isdigit() else 0
        deadline = time.monotonic() + req.timeout if req.timeout else None
        known: dict[str, dict] = {}
        first = True
        while alive() and not self._stopping.is_set():
            with self.store.changed:
                seen_rv = self.store.rv
            current = {p["metadata"]["name"]: p for p in self.pods.list_pods(req.namespace)
                       if selector_matches(req.selector, p["metadata"].get("labels") or {})
                       and field_selector_matches(req.field_selector, p)}
            for name, pod in current.items():
                rv = pod["metadata"].get("resourceVersion", "0")
                if name not in known:
                    if not (first and since and int(rv) <= since):
                        yield {"type": "ADDED", "object": pod}
                elif known[name]["metadata"].get("resourceVersion") != rv:
                    yield {"type": "MODIFIED", "object": pod}
            for name in sorted(set(known) - set(current)):
                gone = json.loads(json.dumps(known[name]))
                gone["metadata"].setdefault("deletionTimestamp", now())
                gone["metadata"]["resourceVersion"] = str(self.store.rv)
                yield {"type": "DELETED", "object": gone}
            known, first = current, False
            if deadline is not None and time.monotonic() >= deadline:
                return
            with self.store.changed:
                if self.store.rv == seen_rv and not self._stopping.is_set():
                    self.store.changed.wait(timeout=1.0)

    @staticmethod
    def _verb(method: str, name: str | None, query: Mapping[str, str]) -> str:
        if method == "GET":
            if name is not None:
                return "get"
            return "watch" if query.get("watch") in ("true", "1") else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name is not None else "deletecollection"}.get(method, method.lower())

    def _authorize(self, ident: Identity, verb: str, group: str, resource: str, ns: str, name: str | None) -> None:
        if not ident.allowed(ns, group, resource, verb):
            base, _, sub = resource.partition("/")
            what = f"{base}.{group}" if group else base
            named = f' "{name}"' if name else ""
            raise ApiError(403, "Forbidden",
                           f'{what}{named} is forbidden: User "{ident.user}" cannot {verb} resource "{base}"'
                           f'{f" with subresource {sub!r}" if sub else ""} in API group "{group}" in the namespace "{ns}"',
                           {"name": name or "", "group": group, "kind": base})

    @staticmethod
    def _json(code: int, obj: Any) -> tuple[int, str, bytes]:
        return code, "application/json", json.dumps(obj).encode()


def _handler_class(server: ApiServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            ident = server.identity(self.headers.get("Authorization"))
            try:
                result = server.handle(self.command, self.path, self.headers, body)
                if isinstance(result, WatchRequest):
                    server.requests.append((ident.user if ident else "-", self.command, self.path, 200))
                    self._watch(result, ident.user if ident else "-")
                    return
                code, ctype, payload = result
            except ApiError as exc:
                code, ctype, payload = exc.code, "application/json", json.dumps(exc.status()).encode()
            except Exception as exc:  # noqa: BLE001 - a bug in the fake must show as a 500, not a hang
                err = ApiError(500, "InternalError", f"rehearsal API server error: {type(exc).__name__}: {exc}")
                code, ctype, payload = 500, "application/json", json.dumps(err.status()).encode()
            server.requests.append((ident.user if ident else "-", self.command, self.path, code))
            if server.log:
                server.log(f"apiserver: {ident.user if ident else '-'} {self.command} {self.path} -> {code}")
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        def _watch(self, req: WatchRequest, user: str) -> None:
            self.close_connection = True
            if (self.headers.get("Upgrade") or "").lower() == "websocket":
                server.watches.append((user, self.path, "websocket"))
                if server.log:
                    server.log(f"apiserver: {user} WATCH (websocket) {self.path}")
                self._watch_websocket(req)
            else:
                server.watches.append((user, self.path, "http"))
                if server.log:
                    server.log(f"apiserver: {user} WATCH (http) {self.path}")
                self._watch_chunked(req)

        def _watch_chunked(self, req: WatchRequest) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for event in server.watch_events(req, lambda: True):
                    data = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass  # the client went away

        def _watch_websocket(self, req: WatchRequest) -> None:
            """RFC 6455, server side: each watch event is one text message; ping -> pong,
            close -> close; the server's frames are not masked."""
            key = self.headers.get("Sec-WebSocket-Key", "")
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode())
                                      .digest()).decode()
            self.send_response(101, "Switching Protocols")
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            lock, closed = threading.Lock(), threading.Event()

            def send(opcode: int, data: bytes) -> None:
                n = len(data)
                head = bytes([0x80 | opcode])
                head += bytes([n]) if n < 126 else (bytes([126]) + struct.pack(">H", n) if n < 65536
                                                    else bytes([127]) + struct.pack(">Q", n))
                with lock:
                    self.wfile.write(head + data)
                    self.wfile.flush()

            def reader() -> None:
                try:
                    while not closed.is_set():
                        head = self.rfile.read(2)
                        if len(head) < 2:
                            break
                        opcode, n = head[0] & 0x0F, head[1] & 0x7F
                        if n == 126:
                            n = struct.unpack(">H", self.rfile.read(2))[0]
                        elif n == 127:
                            n = struct.unpack(">Q", self.rfile.read(8))[0]
                        mask = self.rfile.read(4) if head[1] & 0x80 else b""
                        data = self.rfile.read(n)
                        if mask:
                            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
                        if opcode == 0x8:
                            try:
                                send(0x8, data[:2])
                            except OSError:
                                pass
                            break
                        if opcode == 0x9:
                            send(0xA, data)
                except (OSError, ValueError, struct.error):
                    pass
                finally:
                    closed.set()
                    with server.store.changed:
                        server.store.changed.notify_all()

            threading.Thread(target=reader, daemon=True, name="fake-apiserver-ws-reader").start()
            try:
                for event in server.watch_events(req, lambda: not closed.is_set()):
                    send(0x1, json.dumps(event).encode())
                if not closed.is_set():
                    send(0x8, struct.pack(">H", 1000))
            except OSError:
                pass
            finally:
                closed.set()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def write_service_account(directory: Path, token: str, ca_crt: Path, namespace: str) -> Path:
    """The folder a kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(Path(ca_crt).read_bytes())
    (directory / "namespace").write_text(namespace)
    for f in directory.iterdir():
        f.chmod(0o644)
    directory.chmod(0o755)
    return directory


__all__ = ["ApiError", "ApiServer", "Identity", "PodSource", "Rule", "SA_MOUNT", "Store", "load_crds", "load_rbac",
           "make_tls", "selector_matches", "write_service_account", "CRD_DIR"]
