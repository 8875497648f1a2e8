#!/usr/bin/env bash
# Run one gdmix pipeline on MovieLens-100K on the kind cluster of kind-up.sh and wait for its end.
#
#   manifests/kind/kind-e2e.sh [CONFIG]
#
# CONFIG defaults to gdmix/examples/movielens-100k/lr-kubernetes.yaml when it exists, else
# gdmix/examples/movielens-100k/lr.yaml. The run is compiled for `pipeline.backend: kubernetes`
# (the distributed steps become TFJob / MPIJob / SparkApplication) and `pipeline.namespace: gdmix`
# (the namespace kind-up.sh prepared for them): when CONFIG does not say so, a temporary copy
# with these keys set is submitted. (`--set pipeline.backend=kubernetes` at submit would not do:
# the backend is part of the compiled pipeline's shape, and a run that changes it fails at its
# first step.)
#
#   1. builds MovieLens-100K with `gdmix datasets movielens-100k` into a temporary folder
#      (downloaded at run time; MOVIELENS_SOURCE=<ml-100k folder, zip or RecBole wheel> to use a
#      local copy instead; nothing is ever committed);
#   2. uploads its train/ and validation/ to $GDMIX_E2E_PREFIX/<run>/data/ with the gdmix venv's
#      Python (s3fs), through a port-forward of KFP's SeaweedFS S3 service (kubeflow/seaweedfs,
#      port 8333) when Secret gdmix/gdmix-object-store points there, else straight to the endpoint
#      it names. The credentials are read from that Secret into the uploading process's
#      environment only, never written to disk or put on a command line;
#   3. port-forwards the KFP API server (kubeflow/ml-pipeline, port 8888) and runs
#      `gdmix pipeline submit CONFIG --host URL --wait` with --train-data/--validation-data
#      s3://.../data/{train,validation}, --data-root s3://.../stages and --set output=s3://.../model,
#      which blocks until the run ends and exits non-zero unless it succeeded.
#
# The port-forwards and the temporary folder are always removed. Exits with the submit's status.
#
# Environment: GDMIX_KIND_CLUSTER (default gdmix), KFP_PORT (default 8888), S3_PORT (default
# 8333), GDMIX_E2E_PREFIX (default s3://mlpipeline/gdmix-e2e: the bucket KFP's SeaweedFS creates),
# GDMIX (the gdmix command, default .venv/bin/gdmix), PYTHON (default .venv/bin/python),
# MOVIELENS_SOURCE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EXAMPLES="$ROOT/gdmix/examples/movielens-100k"
if [[ -f $EXAMPLES/lr-kubernetes.yaml ]]; then
    DEFAULT_CONFIG="$EXAMPLES/lr-kubernetes.yaml"
else
    DEFAULT_CONFIG="$EXAMPLES/lr.yaml"
fi
CONFIG="${1:-$DEFAULT_CONFIG}"
CLUSTER_NAME="${GDMIX_KIND_CLUSTER:-gdmix}"
KFP_PORT="${KFP_PORT:-8888}"
S3_PORT="${S3_PORT:-8333}"
PREFIX="${GDMIX_E2E_PREFIX:-s3://mlpipeline/gdmix-e2e}"
GDMIX="${GDMIX:-$ROOT/.venv/bin/gdmix}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
HOST="http://127.0.0.1:$KFP_PORT"
NAMESPACE="gdmix"
SECRET_NAME="gdmix-object-store"
KFP_S3_ENDPOINT="http://seaweedfs.kubeflow.svc.cluster.local:8333"
KUBECTL=(kubectl --context "kind-$CLUSTER_NAME")

say() { echo "kind-e2e: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

command -v kubectl >/dev/null 2>&1 || die "'kubectl' is not on PATH"
command -v curl >/dev/null 2>&1 || die "'curl' is not on PATH"
[[ -x $GDMIX ]] || die "no gdmix command at $GDMIX (run 'make setup' or set GDMIX)"
[[ -x $PYTHON ]] || die "no Python at $PYTHON (run 'make setup' or set PYTHON)"
[[ -f $CONFIG ]] || die "no config file $CONFIG"
[[ $PREFIX == s3://?* ]] || die "GDMIX_E2E_PREFIX must be an s3:// URI, not '$PREFIX'"

WORK="$(mktemp -d)"
PF_PIDS=()
cleanup() {
    local pid
    for pid in ${PF_PIDS[@]+"${PF_PIDS[@]}"}; do  # (an empty array is "unbound" in bash < 4.4)
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# port_forward SERVICE LOCAL_PORT REMOTE_PORT HEALTH_URL: start `kubectl port-forward` in the
# background and wait until HEALTH_URL answers
port_forward() {
    local log="$WORK/port-forward-$1.log"
    "${KUBECTL[@]}" -n kubeflow port-forward "svc/$1" "$2:$3" >"$log" 2>&1 &
    local pid=$!
    PF_PIDS+=("$pid")
    say "waiting for kubeflow/$1 at $4"
    for _ in $(seq 1 60); do
        if curl -fsS "$4" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "kubectl port-forward of kubeflow/$1 exited"; }
        sleep 2
    done
    curl -fsS "$4" >/dev/null || die "kubeflow/$1 did not answer at $4"
}

secret_value() {
    "${KUBECTL[@]}" -n "$NAMESPACE" get secret "$SECRET_NAME" -o "jsonpath={.data.$1}" | base64 -d
}

RUN_ID="$(date -u +%Y%m%d-%H%M%S)-$$"
RUN_PREFIX="${PREFIX%/}/$RUN_ID"
DATA="$RUN_PREFIX/data"

# --- 1. the data ---------------------------------------------------------------------------------
say "building MovieLens-100K in $WORK/movielens-100k"
dataset_args=(datasets movielens-100k --out "$WORK/movielens-100k")
if [[ -n ${MOVIELENS_SOURCE:-} ]]; then
    dataset_args+=(--source "$MOVIELENS_SOURCE")
fi
"$GDMIX" "${dataset_args[@]}"
for split in train validation; do
    [[ -d $WORK/movielens-100k/$split ]] || die "gdmix datasets wrote no $split/ folder"
done

# --- 2. upload -----------------------------------------------------------------------------------
endpoint="$(secret_value AWS_ENDPOINT_URL)"
[[ -n $endpoint ]] || die "Secret $NAMESPACE/$SECRET_NAME has no AWS_ENDPOINT_URL (run kind-up.sh first)"
if [[ $endpoint == "$KFP_S3_ENDPOINT" ]]; then
    port_forward seaweedfs "$S3_PORT" 8333 "http://127.0.0.1:$S3_PORT/status"
    upload_endpoint="http://127.0.0.1:$S3_PORT"
else
    upload_endpoint="$endpoint"
fi
say "uploading the data to $DATA/ (through $upload_endpoint)"
AWS_ACCESS_KEY_ID="$(secret_value AWS_ACCESS_KEY_ID)" \
AWS_SECRET_ACCESS_KEY="$(secret_value AWS_SECRET_ACCESS_KEY)" \
GDMIX_E2E_S3_ENDPOINT="$upload_endpoint" \
    "$PYTHON" - "$WORK/movielens-100k" "$DATA" <<'EOF'
import os
import sys

import s3fs

local, remote = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/")
if not (os.environ["AWS_ACCESS_KEY_ID"] and os.environ["AWS_SECRET_ACCESS_KEY"]):
    sys.exit("the object-store Secret has no credentials")
fs = s3fs.S3FileSystem(key=os.environ["AWS_ACCESS_KEY_ID"], secret=os.environ["AWS_SECRET_ACCESS_KEY"],
                       client_kwargs={"endpoint_url": os.environ["GDMIX_E2E_S3_ENDPOINT"]})
bucket = remote.removeprefix("s3://").split("/", 1)[0]
if not fs.exists(bucket):
    fs.mkdir(bucket)
for split in ("train", "validation"):
    fs.put(f"{local}/{split}/", f"{remote}/{split}/", recursive=True)
    uploaded = [p for p in fs.find(f"{remote}/{split}") if not p.endswith("/")]
    if not uploaded:
        sys.exit(f"nothing arrived at {remote}/{split}")
    print(f"kind-e2e: {len(uploaded)} file(s) in {remote}/{split}", file=sys.stderr)
EOF

# --- 3. the run ----------------------------------------------------------------------------------
RUN_CONFIG="$WORK/config.yaml"
"$PYTHON" - "$CONFIG" "$RUN_CONFIG" "$NAMESPACE" <<'EOF'
import sys

import yaml

source, target, namespace = sys.argv[1:]
with open(source) as handle:
    config = yaml.safe_load(handle)
pipeline = config.get("pipeline") or {}
if pipeline.get("backend") != "kubernetes":
    print(f"kind-e2e: {source} is compiled with pipeline.backend=kubernetes", file=sys.stderr)
if not pipeline.get("namespace"):  # else the launchers' own namespace, "kubeflow" in KFP standalone
    print(f"kind-e2e: its jobs run in namespace {namespace}", file=sys.stderr)
config["pipeline"] = {**pipeline, "backend": "kubernetes", "namespace": pipeline.get("namespace") or namespace}
with open(target, "w") as handle:
    yaml.safe_dump(config, handle, sort_keys=False)
EOF

port_forward ml-pipeline "$KFP_PORT" 8888 "$HOST/apis/v2beta1/healthz"
say "submitting $CONFIG (data $DATA, outputs $RUN_PREFIX)"
"$GDMIX" pipeline submit "$RUN_CONFIG" --host "$HOST" --wait \
    --train-data "$DATA/train" --validation-data "$DATA/validation" \
    --data-root "$RUN_PREFIX/stages" --set "output=$RUN_PREFIX/model"
