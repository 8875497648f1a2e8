"""horovodrun for single-machine runs that keeps every socket on 127.0.0.1.

    python -m gdmix.distributed.horovodrun_loopback -np 2 -H localhost:2 --gloo --network-interfaces lo \
        python train.py ...

Same arguments as horovodrun (it calls horovod's own `run_commandline`). With only local hosts,
horovodrun already points the workers at 127.0.0.1 (HOROVOD_GLOO_RENDEZVOUS_ADDR=127.0.0.1,
HOROVOD_GLOO_IFACE=lo, so Gloo's TCP pairs are on loopback), but its Gloo rendezvous HTTP server
(horovod.runner.http.http_server.RendezvousServer, via horovod.runner.util.network.find_port) binds
('', port), i.e. 0.0.0.0, and has no option to change that. This wrapper makes that server (and the
KV store server of `--run-func` style jobs) bind 127.0.0.1. Local hosts only: remote workers could not
reach a loopback rendezvous.
"""

from __future__ import annotations

import sys

import horovod.runner.http.http_server as http_server
from horovod.runner.launch import run_commandline

_find_port = http_server.find_port


def _find_loopback_port(server_factory):
    return _find_port(lambda addr: server_factory(("127.0.0.1", addr[1])))


http_server.find_port = _find_loopback_port

if __name__ == "__main__":
    sys.exit(run_commandline())
