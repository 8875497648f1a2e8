"""A Kubeflow Pipelines REST API (v2beta1) on 127.0.0.1, for ``gdmix pipeline submit`` tests.

It stands in for the KFP API *server* only: the client under test is the real ``kfp.Client``
(kfp 2.17.3 with its generated ``kfp_server_api``), so the requests are the ones a cluster
receives. It serves the endpoints submission uses (healthz, pipelines list/upload/upload_version,
experiments list/create, runs create/get), checks the bearer token or session cookie when one is
configured, keeps pipelines, versions, experiments and runs per namespace, and records every
request for assertions. Runs end in ``final_state`` as soon as they are read.
"""

from __future__ import annotations

import json
import threading
import uuid
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml


class FakeKfpApi:
    def __init__(self, token: str | None = None, cookie: str | None = None, multi_user: bool = False):
        self.token, self.cookie, self.multi_user = token, cookie, multi_user
        self.requests: list[dict] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.final_state = "SUCCEEDED"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeKfpApi":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the API ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict]:
        self.requests.append({"method": method, "path": path, "query": query,
                              "authorization": headers.get("Authorization"), "cookie": headers.get("Cookie")})
        if not self._authorized(headers):
            return 401, {"error": "unauthenticated", "code": 16}
        namespace = query.get("namespace", [""])[0]
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": self.multi_user}
        if path == "/apis/v2beta1/pipelines" and method == "GET":
            return 200, _listed("pipelines", self.pipelines, namespace, query)
        if path == "/apis/v2beta1/pipelines/upload" and method == "POST":
            spec = self._package(headers, body)
            pipeline = {"pipeline_id": uuid.uuid4().hex, "display_name": query["name"][0], "namespace": namespace}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self._add_version(pipeline["pipeline_id"], query["name"][0], spec)
            return 200, pipeline
        if path == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            spec = self._package(headers, body)
            pipeline_id = query["pipelineid"][0]
            if pipeline_id not in self.pipelines:
                return 404, {"error": f"pipeline {pipeline_id} not found", "code": 5}
            return 200, self._add_version(pipeline_id, query["name"][0], spec)
        if path.startswith("/apis/v2beta1/pipelines/") and path.endswith("/versions") and method == "GET":
            pipeline_id = path.split("/")[4]
            found = sorted((v for v in self.versions.values() if v["pipeline_id"] == pipeline_id),
                           key=lambda v: v["created_at"], reverse=True)
            return 200, {"pipeline_versions": found[:1], "total_size": len(found)} if found else {}
        if path == "/apis/v2beta1/experiments" and method == "GET":
            return 200, _listed("experiments", self.experiments, namespace, query)
        if path == "/apis/v2beta1/experiments" and method == "POST":
            experiment = json.loads(body) | {"experiment_id": uuid.uuid4().hex}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if path == "/apis/v2beta1/runs" and method == "POST":
            run = json.loads(body) | {"run_id": uuid.uuid4().hex, "state": "PENDING"}
            reference = run.get("pipeline_version_reference") or {}
            if reference.get("pipeline_version_id") not in self.versions:
                return 400, {"error": "the run must name an uploaded pipeline version", "code": 3}
            self.runs[run["run_id"]] = run
            return 200, run
        if path.startswith("/apis/v2beta1/runs/") and method == "GET":
            run = self.runs.get(path.rsplit("/", 1)[1])
            if run is None:
                return 404, {"error": "run not found", "code": 5}
            run["state"] = self.final_state
            return 200, run
        return 404, {"error": f"{method} {path} is not served by this fake", "code": 5}

    def _authorized(self, headers) -> bool:
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return False
        return not self.cookie or self.cookie in (headers.get("Cookie") or "")

    def _package(self, headers, body: bytes) -> dict:
        """The pipeline spec of the multipart form's ``uploadfile`` (kfp_server_api's field name)."""
        message = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return yaml.safe_load(part.get_payload(decode=True).decode().split("\n---\n")[0])
        raise AssertionError("no uploadfile in the upload request")

    def _add_version(self, pipeline_id: str, name: str, spec: dict) -> dict:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": uuid.uuid4().hex, "display_name": name,
                   "pipeline_spec": spec, "created_at": f"2026-01-01T00:{len(self.versions) // 60:02d}:{len(self.versions) % 60:02d}Z"}
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = api.handle(self.command, url.path, parse_qs(url.query), self.headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):  # quiet
                pass

        return Handler


def _listed(kind: str, items: dict, namespace: str, query: dict) -> dict:
    """A list response, filtered by namespace and by a display_name EQUALS predicate."""
    found = [i for i in items.values() if i.get("namespace", "") == namespace]
    for predicate in json.loads(query.get("filter", ["{}"])[0]).get("predicates", []):
        assert predicate["key"] == "display_name" and predicate["operation"] in ("EQUALS", 1), predicate
        found = [i for i in found if i["display_name"] == predicate.get("stringValue", predicate.get("string_value"))]
    return {kind: found, "total_size": len(found)} if found else {}
