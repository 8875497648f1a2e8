"""The Docker side of the rehearsal: the daemon, the private network, image checks.

All containers of a rehearsal join one user-defined bridge network (``gdmix-rehearsal`` by
default). Docker's embedded DNS then resolves every container's network aliases, which the
fake operators set to the DNS names the real operators' Services give (e.g.
``<job>-worker-0.<ns>.svc``). The host reaches containers at their bridge addresses and the
containers reach servers that run on the host (the fake API server) at the bridge's gateway
address; nothing listens anywhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

DEFAULT_NETWORK = "gdmix-rehearsal"
#: label on every container / network the rehearsal creates (value: the owner's id)
LABEL = "io.gdmix.rehearsal"


class RehearsalUnavailable(RuntimeError):
    """No Docker daemon, no bridge networking, or a missing image."""


def docker_client(timeout: int = 60) -> Any:
    """A docker SDK client for ``DOCKER_HOST`` (raises :class:`RehearsalUnavailable`)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - the venv has it
        raise RehearsalUnavailable("the 'docker' Python package is not installed") from exc
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        raise RehearsalUnavailable(
            f"no Docker daemon answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {exc}"
        ) from None
    return client


def require_image(client: Any, tag: str, hint: str = "") -> None:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise RehearsalUnavailable(f"image {tag} is not built{'; ' + hint if hint else ''}") from None


@dataclass(frozen=True)
class Network:
    """A user-defined bridge network: its name and the gateway (the host's address on it)."""

    name: str
    gateway: str
    subnet: str


def ensure_network(client: Any, name: str = DEFAULT_NETWORK) -> Network:
    """The bridge network ``name``, created when missing (``internal``: no route out)."""
    import docker

    try:
        net = client.networks.get(name)
    except docker.errors.NotFound:
        try:
            net = client.networks.create(name, driver="bridge", internal=False, labels={LABEL: "network"},
                                         check_duplicate=True)
        except docker.errors.APIError as exc:
            raise RehearsalUnavailable(
                f"this Docker daemon cannot create the bridge network {name} ({exc}); the rehearsal needs "
                "user-defined bridges (docker/start-dockerd.sh's --bridge=none only removes the default bridge)"
            ) from None
        net.reload()
    configs = (net.attrs.get("IPAM") or {}).get("Config") or []
    if not configs or not configs[0].get("Gateway"):
        raise RehearsalUnavailable(f"network {name} has no IPv4 gateway: {net.attrs.get('IPAM')}")
    return Network(name, configs[0]["Gateway"], configs[0].get("Subnet", ""))


def container_ip(container: Any, network: str) -> str:
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


def run_container(client: Any, image: str, *, name: str, network: str, aliases: list[str] | None = None,
                  labels: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """``docker run -d`` on ``network`` with DNS ``aliases`` (the high-level SDK cannot set them).

    ``kwargs`` are those of ``APIClient.create_container`` (entrypoint, command, environment,
    user, hostname, domainname, working_dir) plus ``host_config`` keyword arguments under
    ``host_config`` (binds, extra_hosts, group_add, dns_search ...).
    """
    api = client.api
    host_config = api.create_host_config(network_mode=network, **kwargs.pop("host_config", {}))
    networking = api.create_networking_config({network: api.create_endpoint_config(aliases=aliases or [])})
    created = api.create_container(image, name=name, labels=labels or {}, host_config=host_config,
                                   networking_config=networking, detach=True, **kwargs)
    container = client.containers.get(created["Id"])
    container.start()
    return container


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar archive of ``{name: content}`` (a build context, a fake image layer)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Service:
    """``start()`` / ``stop()`` as a context manager; a start that fails half-way is stopped."""

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
