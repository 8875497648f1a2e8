#!/usr/bin/env bash
# Run one gdmix pipeline on the kind cluster of kind-up.sh and wait for its end.
#
#   manifests/kind/kind-e2e.sh [CONFIG]      (default: examples/movielens-100k/lr.yaml)
#
# Port-forwards the KFP API server (service kubeflow/ml-pipeline, HTTP port 8888) to
# 127.0.0.1:$KFP_PORT, submits the config with `gdmix pipeline submit CONFIG --host URL --wait`
# (which blocks until the run ends and exits non-zero unless it succeeded), and always stops the
# port-forward. Exits with the submit command's status.
#
# Environment: GDMIX_KIND_CLUSTER (default gdmix), KFP_PORT (default 8888), GDMIX (the gdmix
# command, default .venv/bin/gdmix).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONFIG="${1:-$ROOT/examples/movielens-100k/lr.yaml}"
CLUSTER_NAME="${GDMIX_KIND_CLUSTER:-gdmix}"
KFP_PORT="${KFP_PORT:-8888}"
GDMIX="${GDMIX:-$ROOT/.venv/bin/gdmix}"
HOST="http://127.0.0.1:$KFP_PORT"

say() { echo "kind-e2e: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

command -v kubectl >/dev/null 2>&1 || die "'kubectl' is not on PATH"
command -v curl >/dev/null 2>&1 || die "'curl' is not on PATH"
[[ -x $GDMIX ]] || die "no gdmix command at $GDMIX (run 'make setup' or set GDMIX)"
[[ -f $CONFIG ]] || die "no config file $CONFIG"

PF_LOG="$(mktemp)"
kubectl --context "kind-$CLUSTER_NAME" -n kubeflow port-forward svc/ml-pipeline "$KFP_PORT:8888" >"$PF_LOG" 2>&1 &
PF_PID=$!
cleanup() {
    kill "$PF_PID" 2>/dev/null || true
    wait "$PF_PID" 2>/dev/null || true
    rm -f "$PF_LOG"
}
trap cleanup EXIT

say "waiting for the KFP API at $HOST"
for _ in $(seq 1 60); do
    if curl -fsS "$HOST/apis/v2beta1/healthz" >/dev/null 2>&1; then
        break
    fi
    kill -0 "$PF_PID" 2>/dev/null || { cat "$PF_LOG" >&2; die "kubectl port-forward exited"; }
    sleep 2
done
curl -fsS "$HOST/apis/v2beta1/healthz" >/dev/null || die "the KFP API did not answer at $HOST"

say "submitting $CONFIG"
"$GDMIX" pipeline submit "$CONFIG" --host "$HOST" --wait
