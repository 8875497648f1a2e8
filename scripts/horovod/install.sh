#!/usr/bin/env bash
# Install Horovod (TensorFlow + Gloo) into $PYTHON's environment: the wheel from build-wheel.sh's
# cache (built there first when missing, ~6 minutes on 2 cores) or from a directory of prebuilt
# wheels, plus horovod's pinned run-time deps (requirements-runtime.txt).
#
#   scripts/horovod/install.sh                     # build once (cached), then install into .venv
#   scripts/horovod/install.sh --wheel-dir DIR     # install a prebuilt wheel from DIR, never build
#
#   PYTHON   target interpreter (default: .venv/bin/python of this checkout); for a build it must
#            import tensorflow. GDMIX_CACHE / HOROVOD_VERSION / JOBS: see build-wheel.sh.
#
# In a Dockerfile (no compiler in the image): on the host
#   scripts/horovod/build-wheel.sh --out <context>/horovod-wheels
# then in the Dockerfile, after TensorFlow is installed:
#   COPY horovod-wheels/ /tmp/horovod-wheels/
#   COPY scripts/horovod/ /tmp/horovod/
#   RUN PYTHON=python3 /tmp/horovod/install.sh --wheel-dir /tmp/horovod-wheels && rm -rf /tmp/horovod*
# --out also writes horovod-wheel.key (horovod/TF/python versions); --wheel-dir refuses a wheel whose
# key does not match the TensorFlow that $PYTHON has (the op library is tied to the TF version).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export PYTHON="${PYTHON:-$repo/.venv/bin/python}"
HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"

wheel_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel-dir) wheel_dir="${2:?--wheel-dir needs a directory}"; shift 2 ;;
    --wheel-dir=*) wheel_dir="${1#--wheel-dir=}"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { echo "[horovod install] $*" >&2; }
die() { echo "[horovod install] ERROR: $*" >&2; exit 1; }
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable (run 'make setup' first, or set PYTHON)"

if [ -n "$wheel_dir" ]; then
  [ -d "$wheel_dir" ] || die "--wheel-dir $wheel_dir is not a directory"
  py_tag="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  whl="$(find "$wheel_dir" -maxdepth 1 -name "horovod-${HOROVOD_VERSION}-${py_tag}-*.whl" | sort | head -n 1)"
  [ -n "$whl" ] || die "no horovod-${HOROVOD_VERSION}-${py_tag}-*.whl in $wheel_dir (build one with: scripts/horovod/build-wheel.sh --out $wheel_dir)"
  if [ -f "$wheel_dir/horovod-wheel.key" ]; then
    want="$(cat "$wheel_dir/horovod-wheel.key")"
    have="$("$PYTHON" - "$HOROVOD_VERSION" <<'EOF'
import importlib.metadata as md, platform, sys
dists = md.packages_distributions().get("tensorflow") or []
tf = sorted({md.version(d) for d in dists})
print(f"horovod-{sys.argv[1]}-tf{','.join(tf) or 'NONE'}-cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")
EOF
)"
    [ "${want%-r*}" = "$have" ] || die "the wheel in $wheel_dir was built for ${want%-r*}, but $PYTHON has $have: rebuild it"
  else
    log "no horovod-wheel.key in $wheel_dir: cannot check that the wheel matches this TensorFlow"
  fi
else
  whl="$("$here/build-wheel.sh" | tail -n 1)"
  [ -f "$whl" ] || die "build-wheel.sh did not give a wheel"
fi

# Skip the reinstall when this very wheel is what is installed (a stamp with its sha256 in sys.prefix;
# a rebuilt wheel with the same version, e.g. after a TF upgrade, has another hash and is reinstalled).
sha="$(sha256sum "$whl" | cut -d' ' -f1)"
stamp="$("$PYTHON" -c 'import sys; print(sys.prefix)')/.gdmix-horovod-wheel.sha256"
installed="$("$PYTHON" -c 'import importlib.metadata as md
try: print(md.version("horovod"))
except md.PackageNotFoundError: print("")')"
log "run-time deps: $(grep -v '^#' "$here/requirements-runtime.txt" | tr '\n' ' ')"
"$PYTHON" -m pip install --quiet -r "$here/requirements-runtime.txt"
if [ "$installed" = "$HOROVOD_VERSION" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
  log "horovod $installed from $(basename "$whl") is already installed"
else
  log "installing $whl"
  "$PYTHON" -m pip install --quiet --no-deps --force-reinstall "$whl"
  echo "$sha" >"$stamp"
fi

# Check: the TF op library loads against this TF, Gloo is built in, and horovodrun is on the path.
"$PYTHON" - <<'EOF' || die "horovod does not import/work with this TensorFlow"
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import horovod
import horovod.tensorflow as hvd
assert hvd.gloo_built(), "horovod was built without Gloo"
print(f"[horovod install] OK: horovod {horovod.__version__}, gloo_built={hvd.gloo_built()}, mpi_built={hvd.mpi_built()}")
EOF
bin_dir="$(dirname "$(command -v "$PYTHON")")"
if [ -x "$bin_dir/horovodrun" ]; then
  log "horovodrun: $bin_dir/horovodrun"
else
  log "horovodrun: $("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/horovodrun"
fi
