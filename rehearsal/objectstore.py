"""An S3 server in its own container that accepts only the given credentials.

    with S3Container("AKIAREHEARSAL0000001", "secret...") as s3:
        s3.endpoint_url            # from this machine: http://<container address>:9000
        s3.internal_endpoint_url   # from containers on the network: http://s3.rehearsal.local:9000
        s3.client()                # a boto3 S3 client with the right credentials

The server is moto (``moto[server]==5.2.5``) in the image ``localhost/gdmix-rehearsal-s3``
(built on first use from the gdmix base image, see :func:`ensure_image`), started with
:mod:`rehearsal.s3server`: one IAM user with exactly these keys, authentication on from the
first request, moto's control API refused. A request with any other key is refused
(``InvalidAccessKeyId`` / ``SignatureDoesNotMatch``), as a real object store would.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path
from typing import Any

from rehearsal.dockerenv import (
    DEFAULT_NETWORK,
    LABEL,
    RehearsalUnavailable,
    container_ip,
    Service,
    docker_client,
    ensure_network,
    run_container,
    tar_bytes,
)

IMAGE = "localhost/gdmix-rehearsal-s3:5.2.5"
MOTO_VERSION = "5.2.5"
PORT = 9000
DEFAULT_ALIAS = "s3.rehearsal.local"
BASE_CANDIDATES = ("localhost/gdmix-base:bookworm", "python:3.11-slim")

_DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
COPY ca-bundle.crt /tmp/ca-bundle.crt
# the build machine's CA bundle is used for pip only and removed in the same layer
RUN python3 -m venv /opt/moto \\
 && PIP_CERT=/tmp/ca-bundle.crt /opt/moto/bin/pip install --no-cache-dir --disable-pip-version-check \\
        "moto[server]=={MOTO_VERSION}" \\
 && rm -f /tmp/ca-bundle.crt \\
 && /opt/moto/bin/python -c "import moto; print('moto', moto.__version__)"
COPY s3server.py /opt/rehearsal/s3server.py
USER 1000:1000
EXPOSE {PORT}
CMD ["/opt/moto/bin/python", "/opt/rehearsal/s3server.py"]
LABEL {LABEL}=s3
"""


def _ca_bundle() -> bytes:
    for candidate in (os.environ.get("GDMIX_CA_BUNDLE"), os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    return b""


def ensure_image(client: Any = None, base_image: str | None = None, log=print) -> str:
    """``localhost/gdmix-rehearsal-s3``, built when missing (pip needs PyPI: ``--network host``)."""
    import docker

    client = client or docker_client()
    try:
        client.images.get(IMAGE)
        return IMAGE
    except docker.errors.ImageNotFound:
        pass
    if base_image is None:
        for candidate in BASE_CANDIDATES:
            try:
                client.images.get(candidate)
                base_image = candidate
                break
            except docker.errors.ImageNotFound:
                continue
        else:
            raise RehearsalUnavailable(f"no base image for {IMAGE} (one of {BASE_CANDIDATES}; run make images)")
    files = {
        "Dockerfile": _DOCKERFILE.encode(),
        "ca-bundle.crt": _ca_bundle(),
        "s3server.py": (Path(__file__).parent / "s3server.py").read_bytes(),
    }
    buf = io.BytesIO(tar_bytes(files))
    log(f"objectstore: building {IMAGE} from {base_image} (pip install moto[server]=={MOTO_VERSION})")
    try:
        client.images.build(fileobj=buf, custom_context=True, tag=IMAGE, network_mode="host", rm=True,
                            forcerm=True, buildargs={"BASE_IMAGE": base_image})
    except docker.errors.BuildError as exc:
        tail = "".join(str(c.get("stream", c.get("error", ""))) for c in list(exc.build_log)[-20:])
        raise RehearsalUnavailable(f"building {IMAGE} failed: {exc}\n{tail}") from None
    return IMAGE


class S3Container(Service):
    """A moto S3 server container on the rehearsal network, reachable only with these keys."""

    def __init__(self, access_key: str, secret_key: str, *, network: str = DEFAULT_NETWORK,
                 alias: str = DEFAULT_ALIAS, region: str = "us-east-1", client: Any = None,
                 start_timeout: float = 60.0) -> None:
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.network_name, self.alias = network, alias
        self.start_timeout = start_timeout
        self._docker = client
        self.container: Any = None
        self.ip = ""

    # --- lifecycle ---
    def start(self) -> "S3Container":
        self._docker = self._docker or docker_client()
        ensure_image(self._docker)
        ensure_network(self._docker, self.network_name)
        server_code = (Path(__file__).parent / "s3server.py").read_text()
        self.container = run_container(
            self._docker, IMAGE,
            name=f"gdmix-rehearsal-s3-{uuid.uuid4().hex[:6]}",
            network=self.network_name,
            aliases=[self.alias],
            labels={LABEL: "s3"},
            # this checkout's server code, not only the copy baked into the image
            command=["/opt/moto/bin/python", "-c", server_code],
            environment={"S3_ACCESS_KEY": self.access_key, "S3_SECRET_KEY": self.secret_key, "S3_PORT": str(PORT),
                         # the alias is a host name, not <bucket>.<endpoint>: path-style buckets only
                         "S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true"},
        )
        self.ip = container_ip(self.container, self.network_name)
        self._wait_ready()
        return self

    def stop(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self.container = None

    # --- addresses and clients ---
    @property
    def endpoint_url(self) -> str:
        """The endpoint from this machine (the container's address on the bridge)."""
        return f"http://{self.ip}:{PORT}"

    @property
    def internal_endpoint_url(self) -> str:
        """The endpoint from containers on the rehearsal network (its DNS alias)."""
        return f"http://{self.alias}:{PORT}"

    def env(self, internal: bool = True) -> dict[str, str]:
        """What a Secret for this store holds (the keys the AWS SDKs, s3fs and pyarrow read)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.internal_endpoint_url if internal else self.endpoint_url,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=access_key or self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def logs(self) -> str:
        return self.container.logs().decode(errors="replace") if self.container is not None else ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status == "exited":
                raise RehearsalUnavailable(f"the S3 container exited: {self.logs()[-2000:]}")
            try:
                self.client().list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.5)
        raise RehearsalUnavailable(f"the S3 container did not answer within {self.start_timeout:g}s ({last}); "
                                   f"log: {self.logs()[-2000:]}")
