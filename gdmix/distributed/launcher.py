"""Local launcher: run one command as N workers on 127.0.0.1, the way a TFJob would.

Each child gets the ``TF_CONFIG`` a Kubeflow training operator would inject (workers on free
loopback ports), so the command it runs is exactly the one a TFJob pod runs, and a share of
the machine's cores for its TensorFlow thread pools. Output is
streamed with a ``[worker k]`` prefix. The launcher watches all children: the first one to
fail stops the others at once (no hanging collectives), and its exit status is returned.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from gdmix.distributed.cluster import tf_config
from gdmix.tf_runtime import THREADS_VARIABLE

STOP_GRACE_SECONDS = 5.0


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def launch_local(argv: Sequence[str], workers: int, env: dict[str, str] | None = None,
                 output=None) -> int:
    """Run ``argv`` as ``workers`` processes; 0 if all succeed, else the first failure's status."""
    output = output or sys.stderr
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    base = dict(os.environ if env is None else env)
    # N workers share this machine's cores instead of each taking all of them
    base.setdefault(THREADS_VARIABLE, str(max(1, (os.cpu_count() or 1) // workers)))
    children = []
    pumps = []
    for index in range(workers):
        child_env = dict(base, TF_CONFIG=tf_config(addresses, index))
        child = subprocess.Popen(list(argv), env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1, start_new_session=True)
        children.append(child)
        pump = threading.Thread(target=_pump, args=(child, f"[worker {index}] ", output), daemon=True)
        pump.start()
        pumps.append(pump)
    status = _watch(children, output)
    for pump in pumps:
        pump.join(timeout=STOP_GRACE_SECONDS)
    return status


def _pump(child: subprocess.Popen, prefix: str, output) -> None:
    for line in child.stdout:
        output.write(prefix + line)
        output.flush()


def _watch(children: list[subprocess.Popen], output) -> int:
    while True:
        codes = [child.poll() for child in children]
        failed = [(index, code) for index, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            index, code = failed[0]
            output.write(f"worker {index} exited with status {code}; stopping the other workers\n")
            _stop(children)
            return code if code > 0 else 128 - code
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.05)


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def horovodrun_command(argv: Sequence[str], workers: int) -> list[str]:
    """``horovodrun`` for ``workers`` local ranks over Gloo, every socket on 127.0.0.1
    (:mod:`gdmix.distributed.horovodrun_loopback` keeps its rendezvous server off 0.0.0.0)."""
    import importlib.util

    from gdmix.errors import GdmixError

    if importlib.util.find_spec("horovod") is None:
        raise GdmixError("Horovod is not installed: it is built from source for this TensorFlow (make horovod)")
    return [sys.executable, "-m", "gdmix.distributed.horovodrun_loopback", "-np", str(workers),
            "-H", f"localhost:{workers}", "--gloo", "--network-interfaces", "lo", *argv]


def launch_horovod(argv: Sequence[str], workers: int, env: dict[str, str] | None = None) -> int:
    """Run ``argv`` as ``workers`` Horovod ranks (the way an MPIJob's launcher would)."""
    base = dict(os.environ if env is None else env)
    base.setdefault(THREADS_VARIABLE, str(max(1, (os.cpu_count() or 1) // workers)))
    return subprocess.call(horovodrun_command(argv, workers), env=base)
