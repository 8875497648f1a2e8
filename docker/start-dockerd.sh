#!/usr/bin/env bash
# Start a private Docker daemon for building the gdmix images and running the container smoke test.
#
# Installs Debian's docker.io and debootstrap when missing (needs root and the Debian mirrors),
# then starts `dockerd` by hand on a private socket and data root, in the mode that works inside an
# unprivileged-ish CI container: no bridge, no iptables/NAT (containers use --network host for
# builds, KFP's DockerRunner only needs bind mounts), and explicit ulimits because the runtime
# cannot raise RLIMIT_NOFILE past the caller's hard limit.
#
# Idempotent: a daemon already answering on the socket is reused. Prints, on stdout and as the
# last line, the line to evaluate:
#
#     eval "$(docker/start-dockerd.sh)"      # exports DOCKER_HOST=unix:///var/tmp/gdmix-docker/docker.sock
#
# Everything else (progress, errors) goes to stderr. Exits non-zero, loudly, when the daemon
# cannot be installed or started: CI must fail rather than skip the container tests.
#
# Environment:
#   GDMIX_DOCKER_ROOT   state directory (default /var/tmp/gdmix-docker): socket, data root, log
#   GDMIX_DOCKER_WAIT   seconds to wait for the daemon to answer (default 60)
set -euo pipefail

ROOT="${GDMIX_DOCKER_ROOT:-/var/tmp/gdmix-docker}"
WAIT="${GDMIX_DOCKER_WAIT:-60}"
SOCK="$ROOT/docker.sock"
HOST="unix://$SOCK"
LOG="$ROOT/dockerd.log"
PIDFILE="$ROOT/dockerd.pid"

say() { echo "start-dockerd: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

answers() { DOCKER_HOST="$HOST" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if answers; then
    say "reusing the daemon already answering on $SOCK"
    echo "export DOCKER_HOST=$HOST"
    exit 0
fi

# --- packages --------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${missing[*]} by hand"
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    # docker.io also ships a docker CLI; keep a newer one already on PATH (e.g. /usr/local/bin).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after install"
command -v docker >/dev/null 2>&1 || die "docker CLI not found"

# --- daemon ----------------------------------------------------------------------------------
mkdir -p "$ROOT/data" "$ROOT/exec"
if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    say "dockerd pid $(cat "$PIDFILE") is running but not answering yet; waiting for it"
else
    rm -f "$SOCK" "$PIDFILE"
    # containerd: docker.io 20.10 starts its own (managed) containerd under --exec-root.
    say "starting dockerd (log: $LOG)"
    nohup dockerd \
        --host "$HOST" \
        --data-root "$ROOT/data" \
        --exec-root "$ROOT/exec" \
        --pidfile "$PIDFILE" \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
        --default-ulimit nofile=1024:1024 --default-ulimit nproc=1024:1024 \
        >"$LOG" 2>&1 </dev/null &
    disown || true
fi

for ((i = 0; i < WAIT * 2; i++)); do
    if answers; then
        say "dockerd $(DOCKER_HOST="$HOST" docker version --format '{{.Server.Version}}') answering on $SOCK"
        echo "export DOCKER_HOST=$HOST"
        exit 0
    fi
    sleep 0.5
done
say "dockerd did not answer within ${WAIT}s; last lines of $LOG:"
tail -n 30 "$LOG" >&2 || true
exit 1
