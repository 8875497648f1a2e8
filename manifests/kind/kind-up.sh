#!/usr/bin/env bash
# Create (or reuse) a local kind cluster that runs gdmix's pipeline end to end:
#
#   1. the kind cluster (manifests/kind/cluster.yaml, pinned node image);
#   2. manifests/kind (= manifests/standalone): namespace "gdmix" (PSA restricted; labelled so that
#      KFP's SeaweedFS NetworkPolicy admits it), its least-privilege RBAC, and the launcher Role
#      bound to "pipeline-runner", the account KFP standalone runs step pods as (in "kubeflow");
#   3. Kubeflow Pipelines standalone (namespace "kubeflow", object store SeaweedFS);
#   4. the training operator v1, restricted to TFJob (its bundled MPIJob v1 CRD is left out, because
#      mpi-operator's MPIJob v2beta1 CRD has the same name);
#   5. mpi-operator (MPIJob kubeflow.org/v2beta1);
#   6. the Spark operator (helm), watching namespace "gdmix" and using gdmix's own Spark RBAC;
#   7. the object-store Secret "gdmix-object-store" in "kubeflow" (KFP's step pods read it) and in
#      "gdmix" (the TFJob/MPIJob/Spark pods read it): from manifests/object-store/object-store.env
#      (or $GDMIX_OBJECT_STORE_ENV) when present, else pointing at the SeaweedFS S3 service that KFP
#      runs, with KFP's own credentials (read from the cluster, never written to disk);
#   8. the gdmix images <registry>/gdmix-{spark,trainer,detext,launcher}:<tag>, loaded with
#      `kind load docker-image` (build them first; nothing is pulled for them).
#
# Needs kind, kubectl, helm, docker and network access to GitHub and the charts' registries.
# Idempotent: rerunning it on an existing cluster re-applies everything.
#
# Environment: every pin below can be overridden (e.g. KFP_VERSION=... make kind-up);
# GDMIX_IMAGE_REGISTRY / GDMIX_IMAGE_TAG as in gdmix/images.py; PYTHON (default .venv/bin/python).
set -euo pipefail

# --- pinned versions -----------------------------------------------------------------------------
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"          # Kubernetes 1.33 (PSA labels pin v1.33)
KFP_VERSION="${KFP_VERSION:-2.17.0}"                                # backend release (tag) of the kfp 2.17 SDK
TRAINING_OPERATOR_VERSION="${TRAINING_OPERATOR_VERSION:-v1.9.0}"    # TFJob kubeflow.org/v1
MPI_OPERATOR_VERSION="${MPI_OPERATOR_VERSION:-v0.7.0}"              # MPIJob kubeflow.org/v2beta1
SPARK_OPERATOR_CHART_VERSION="${SPARK_OPERATOR_CHART_VERSION:-2.4.0}"  # SparkApplication v1beta2 (CRD vendored in tests/upstream/crds)
SPARK_OPERATOR_CHART_REPO="${SPARK_OPERATOR_CHART_REPO:-https://kubeflow.github.io/spark-operator}"

CLUSTER_NAME="${GDMIX_KIND_CLUSTER:-gdmix}"
NAMESPACE="gdmix"
WAIT="${GDMIX_KIND_WAIT:-15m}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
KUBECTL=(kubectl --context "kind-$CLUSTER_NAME")

say() { echo "kind-up: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

for tool in kind kubectl helm docker; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH"
done
[[ -x $PYTHON ]] || die "no Python at $PYTHON (run 'make setup' or set PYTHON)"

# --- 1. cluster ----------------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    say "reusing kind cluster '$CLUSTER_NAME'"
else
    say "creating kind cluster '$CLUSTER_NAME' ($KIND_NODE_IMAGE)"
    kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
        --config "$ROOT/manifests/kind/cluster.yaml" --wait 5m
fi

# --- 2. gdmix namespace and RBAC -----------------------------------------------------------------
say "applying manifests/kind (namespace $NAMESPACE, RBAC, KFP standalone's launcher binding)"
"${KUBECTL[@]}" apply -k "$ROOT/manifests/kind"

# --- 3. Kubeflow Pipelines standalone ------------------------------------------------------------
say "installing Kubeflow Pipelines $KFP_VERSION"
"${KUBECTL[@]}" apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
"${KUBECTL[@]}" wait --for condition=established --timeout=120s crd/applications.app.k8s.io
"${KUBECTL[@]}" apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"

# --- 4. training operator, TFJob only ------------------------------------------------------------
# The standalone overlay also installs the training operator's MPIJob v1 CRD, which has the same
# name (mpijobs.kubeflow.org) as mpi-operator's v2beta1 CRD; the two cannot coexist. Render the
# overlay, drop that CRD, and start the operator with only the TFJob controller.
say "installing the training operator $TRAINING_OPERATOR_VERSION (TFJob only)"
"${KUBECTL[@]}" kustomize \
    "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=$TRAINING_OPERATOR_VERSION" \
    | "$PYTHON" -c '
import sys, yaml
kept = []
for doc in yaml.safe_load_all(sys.stdin):
    if not doc:
        continue
    meta = doc.get("metadata", {})
    if doc.get("kind") == "CustomResourceDefinition" and meta.get("name") == "mpijobs.kubeflow.org":
        continue
    if doc.get("kind") == "Deployment" and meta.get("name") == "training-operator":
        container = doc["spec"]["template"]["spec"]["containers"][0]
        args = [a for a in container.get("args", []) if not a.startswith("--enable-scheme")]
        container["args"] = args + ["--enable-scheme=tfjob"]
    kept.append(doc)
yaml.safe_dump_all(kept, sys.stdout, sort_keys=False)
' | "${KUBECTL[@]}" apply --server-side --force-conflicts -f -

# --- 5. mpi-operator -----------------------------------------------------------------------------
say "installing mpi-operator $MPI_OPERATOR_VERSION"
"${KUBECTL[@]}" apply --server-side --force-conflicts \
    -f "https://raw.githubusercontent.com/kubeflow/mpi-operator/$MPI_OPERATOR_VERSION/deploy/v2beta1/mpi-operator.yaml"

# --- 6. Spark operator ---------------------------------------------------------------------------
# gdmix brings its own Spark service account and Role (manifests/rbac/spark-rbac.yaml), so the
# chart creates none; its webhook must stay enabled: it applies the driver/executor security
# contexts and envFrom of a SparkApplication to the pods, which the restricted namespace requires.
say "installing the Spark operator chart $SPARK_OPERATOR_CHART_VERSION"
helm repo add spark-operator "$SPARK_OPERATOR_CHART_REPO" --force-update >/dev/null
helm --kube-context "kind-$CLUSTER_NAME" upgrade --install spark-operator spark-operator/spark-operator \
    --version "$SPARK_OPERATOR_CHART_VERSION" \
    --namespace spark-operator --create-namespace \
    --set "spark.jobNamespaces={$NAMESPACE}" \
    --set spark.serviceAccount.create=false \
    --set spark.rbac.create=false \
    --set webhook.enable=true \
    --wait --timeout "$WAIT"

say "waiting for Kubeflow Pipelines and the operators (up to $WAIT)"
"${KUBECTL[@]}" -n kubeflow wait --for=condition=Available deployment --all --timeout="$WAIT"
"${KUBECTL[@]}" -n mpi-operator wait --for=condition=Available deployment --all --timeout="$WAIT"

# --- 7. object-store credentials -----------------------------------------------------------------
# One Secret per namespace that runs gdmix pods: KFP standalone runs the pipeline's step pods in
# "kubeflow" (kfp.kubernetes.use_secret_as_env, optional: a missing Secret would go unnoticed until
# the first object-store access), the launched jobs' pods in "$NAMESPACE" (envFrom).
SECRET_NAME="gdmix-object-store"
SECRET_NAMESPACES=(kubeflow "$NAMESPACE")
# KFP 2.17's object store: SeaweedFS, Service kubeflow/seaweedfs, S3 on port 8333; its credentials
# are Secret kubeflow/mlpipeline-minio-artifact, keys accesskey and secretkey.
KFP_S3_ENDPOINT="http://seaweedfs.kubeflow.svc.cluster.local:8333"
KFP_S3_SECRET="mlpipeline-minio-artifact"
ENV_FILE="${GDMIX_OBJECT_STORE_ENV:-$ROOT/manifests/object-store/object-store.env}"

apply_object_store_secret() {  # $1: namespace, $2: file of KEY=VALUE lines
    "${KUBECTL[@]}" -n "$1" create secret generic "$SECRET_NAME" --from-env-file="$2" \
        --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f -
}

if [[ -f $ENV_FILE ]]; then
    for ns in "${SECRET_NAMESPACES[@]}"; do
        say "creating Secret $ns/$SECRET_NAME from $ENV_FILE"
        apply_object_store_secret "$ns" "$ENV_FILE"
    done
else
    say "no $ENV_FILE: pointing Secret $SECRET_NAME at KFP's SeaweedFS ($KFP_S3_ENDPOINT)"
    kfp_secret_value() {
        "${KUBECTL[@]}" -n kubeflow get secret "$KFP_S3_SECRET" -o "jsonpath={.data.$1}" | base64 -d
    }
    access_key="$(kfp_secret_value accesskey)"
    secret_key="$(kfp_secret_value secretkey)"
    [[ -n $access_key && -n $secret_key ]] || die "could not read KFP's object-store credentials (secret kubeflow/$KFP_S3_SECRET)"
    for ns in "${SECRET_NAMESPACES[@]}"; do
        say "creating Secret $ns/$SECRET_NAME"
        # the values go through a pipe (process substitution), never a file or a command line
        apply_object_store_secret "$ns" <(printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\nAWS_ENDPOINT_URL=%s\n' \
            "$access_key" "$secret_key" "$KFP_S3_ENDPOINT")
    done
    unset access_key secret_key
fi

# --- 8. gdmix images -----------------------------------------------------------------------------
REGISTRY="${GDMIX_IMAGE_REGISTRY:-localhost}"
TAG="${GDMIX_IMAGE_TAG:-$("$PYTHON" -c 'import gdmix; print(gdmix.__version__)')}"
for role in spark trainer detext launcher; do
    image="${REGISTRY%/}/gdmix-$role:$TAG"
    docker image inspect "$image" >/dev/null 2>&1 || die "image $image is not built (build the gdmix images first)"
    say "loading $image into the cluster"
    kind load docker-image "$image" --name "$CLUSTER_NAME"
done

say "ready. Run the pipeline with: make kind-e2e"
