#!/usr/bin/env bash
# Build a Horovod wheel (TensorFlow + Gloo, no MPI/PyTorch/MXNet) ONCE into a cache directory,
# for the TensorFlow that $PYTHON imports; later runs print the cached wheel and exit at once.
#
#   scripts/horovod/build-wheel.sh [--out DIR] [--force]
#
#   PYTHON        the interpreter to build for; it must import tensorflow (default: .venv/bin/python
#                 of this checkout). Its setuptools/wheel run the build (pip --no-build-isolation).
#   GDMIX_CACHE   cache root (default: $HOME/.cache/gdmix); wheels go to
#                 $GDMIX_CACHE/wheels/horovod-<ver>-tf<tf ver>-<cpXY>-<arch>-r<recipe>/
#   HOROVOD_VERSION  default 0.28.1 (the only version the source patch below is known to fit).
#   JOBS          parallel compile jobs (default: nproc).
#   --out DIR     also copy the wheel into DIR (e.g. a Docker build context; see install.sh --wheel-dir).
#   --force       rebuild even when the cache has the wheel.
#
# Why this recipe (docs: /work/shared/reference/ecosystem.md items 5a-5c): pip's build isolation hides
# TensorFlow from horovod's CMake, so --no-build-isolation; horovod 0.28.1's optional XLA ops
# (horovod/tensorflow/xla_mpi_ops.cc) include XLA headers that TF >= 2.16 no longer ships, so that
# one source is dropped from horovod/tensorflow/CMakeLists.txt. About 6 minutes on 2 cores.
# The last line of stdout is the wheel's path.
set -euo pipefail

RECIPE_REV=1   # bump when the build recipe (flags, patch) changes: it is part of the cache key
HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
CACHE_ROOT="${GDMIX_CACHE:-$HOME/.cache/gdmix}"
JOBS="${JOBS:-$(nproc)}"

out_dir="" force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out_dir="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) out_dir="${1#--out=}"; shift ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "build-wheel.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { echo "[horovod build-wheel] $*" >&2; }
die() { echo "[horovod build-wheel] ERROR: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable (run 'make setup' first, or set PYTHON)"

# Cache key: horovod version + TF version + python tag + arch (+ recipe revision). Found without
# importing TF (which takes seconds), from the distribution that owns the 'tensorflow' package.
key_info="$("$PYTHON" - <<'EOF'
import importlib.metadata as md, importlib.util, platform, sys
if importlib.util.find_spec("tensorflow") is None:
    sys.exit("tensorflow is not importable from " + sys.executable)
dists = md.packages_distributions().get("tensorflow") or []
versions = sorted({md.version(d) for d in dists})
if len(versions) != 1:
    sys.exit(f"cannot tell the TensorFlow version (distributions {dists}, versions {versions})")
print(versions[0], f"cp{sys.version_info[0]}{sys.version_info[1]}", platform.machine())
EOF
)" || die "the build needs TensorFlow importable from $PYTHON"
read -r tf_version py_tag arch <<<"$key_info"
key="horovod-${HOROVOD_VERSION}-tf${tf_version}-${py_tag}-${arch}-r${RECIPE_REV}"
wheel_dir="$CACHE_ROOT/wheels/$key"

find_wheel() {
  [ -d "$wheel_dir" ] || return 0
  find "$wheel_dir" -maxdepth 1 -name "horovod-${HOROVOD_VERSION}-*.whl" | sort | head -n 1
}
finish() {
  local whl="$1"
  if [ -n "$out_dir" ]; then
    mkdir -p "$out_dir"
    cp -f "$whl" "$out_dir/"
    echo "$key" >"$out_dir/horovod-wheel.key"   # install.sh --wheel-dir checks it against its TF
    log "copied to $out_dir/$(basename "$whl") (+ horovod-wheel.key)"
  fi
  echo "$whl"
  exit 0
}

whl="$(find_wheel)"
if [ -n "$whl" ] && [ "$force" = 0 ]; then
  log "cached: $whl"
  finish "$whl"
fi

# One build at a time per cache key (a second caller waits, then finds the wheel).
mkdir -p "$wheel_dir"
exec 9>"$wheel_dir/.lock"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it"
  flock 9
  whl="$(find_wheel)"
  if [ -n "$whl" ] && [ "$force" = 0 ]; then log "cached: $whl"; finish "$whl"; fi
fi

# Build prerequisites.
command -v cmake >/dev/null 2>&1 || die "cmake (>= 3.13) is required: apt-get install -y cmake"
cmake_version="$(cmake --version | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')"
printf '%s\n%s\n' 3.13 "$cmake_version" | sort -V -C || die "cmake >= 3.13 is required (found $cmake_version)"
command -v g++ >/dev/null 2>&1 || die "a C++17 compiler (g++) is required: apt-get install -y g++"
command -v make >/dev/null 2>&1 || die "make is required: apt-get install -y make"
"$PYTHON" -c "import setuptools, wheel" 2>/dev/null \
  || die "setuptools and wheel must be importable from $PYTHON (--no-build-isolation uses them): $PYTHON -m pip install setuptools wheel"
# horovod's setup.py lists its run-time deps as setup_requires for bdist_wheel; have them present so
# setuptools does not try to fetch them as eggs during the build.
if ! "$PYTHON" -c "import cloudpickle, psutil, yaml, packaging" 2>/dev/null; then
  log "installing horovod's setup_requires into $PYTHON ($here/requirements-runtime.txt)"
  "$PYTHON" -m pip install --quiet -r "$here/requirements-runtime.txt"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

log "downloading the horovod==$HOROVOD_VERSION sdist"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work/sdist"
sdist="$(find "$work/sdist" -maxdepth 1 -name "horovod-${HOROVOD_VERSION}.tar.gz" | head -n 1)"
[ -n "$sdist" ] || die "pip download gave no horovod-${HOROVOD_VERSION}.tar.gz"
tar -xzf "$sdist" -C "$work"
src="$work/horovod-$HOROVOD_VERSION"
[ -d "$src" ] || die "unexpected sdist layout: no $src"

# The one-line patch: drop the optional XLA ops source, which does not compile against TF >= 2.16.
cml="$src/horovod/tensorflow/CMakeLists.txt"
# shellcheck disable=SC2016  # a literal CMake line, not a shell expansion
xla_line='list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")'
n="$(grep -cxF "$xla_line" "$cml" || true)"
[ "$n" = 1 ] || die "patch does not apply: expected exactly one line '$xla_line' in horovod/tensorflow/CMakeLists.txt of horovod $HOROVOD_VERSION, found $n (upstream changed; revisit the recipe)"
grep -vxF "$xla_line" "$cml" >"$cml.new" && mv "$cml.new" "$cml"
! grep -q 'xla_mpi_ops' "$cml" || die "patch failed: xla_mpi_ops still referenced in $cml"
log "patched horovod/tensorflow/CMakeLists.txt (xla_mpi_ops.cc removed)"

log "building (TF $tf_version, $py_tag, $arch, -j$JOBS; about 4-6 minutes on 2 cores)"
mkdir -p "$work/dist"
env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    MAKEFLAGS="-j$JOBS" \
    "$PYTHON" -m pip wheel -v --no-build-isolation --no-deps --no-cache-dir \
    -w "$work/dist" "$src" >"$work/build.log" 2>&1 \
  || { grep -n -m 20 -E 'error|Error' "$work/build.log" >&2 || true; tail -n 60 "$work/build.log" >&2; die "pip wheel failed (first errors and last 60 lines of the build log above)"; }
built="$(find "$work/dist" -maxdepth 1 -name 'horovod-*.whl' | head -n 1)"
[ -n "$built" ] || die "pip wheel produced no wheel"

# Sanity: the TF op library is in the wheel (a build that silently skipped TF is useless).
"$PYTHON" - "$built" <<'EOF' || die "the wheel has no horovod/tensorflow/mpi_lib*.so"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(0 if any(n.startswith("horovod/tensorflow/mpi_lib") and n.endswith(".so") for n in names) else 1)
EOF

rm -f "$wheel_dir"/horovod-*.whl
cp "$built" "$wheel_dir/.tmp-$(basename "$built")"
mv "$wheel_dir/.tmp-$(basename "$built")" "$wheel_dir/$(basename "$built")"
cp "$work/build.log" "$wheel_dir/build.log"
whl="$wheel_dir/$(basename "$built")"
log "built in $((SECONDS - start)) s: $whl ($(du -h "$whl" | cut -f1))"
finish "$whl"
