#!/bin/sh
# Runs inside `docker build` (docker/Dockerfile), as root, with /opt/venv first on PATH.
#
# Build stages (they reach PyPI, with the build machine's CA bundle; never part of a final image):
#   install-gdmix.sh venv           /opt/venv (a venv: PEP 668 forbids pip on Debian's system
#                                   python, and it works the same on python:3.11-slim), pip==$PIP_VERSION
#   install-gdmix.sh deps           pinned dependencies of the gdmix wheel (requirements.txt, written
#                                   by build-images.sh from the wheel's Requires-Dist) minus the names
#                                   in GDMIX_EXCLUDE_DEPS, plus kfp==$KFP_VERSION, from PyPI
#   install-gdmix.sh horovod-dist   /opt/horovod-dist: the Horovod wheel for this venv's TensorFlow
#                                   (the prebuilt one in horovod/ when the context has one, else built
#                                   here from the PyPI sdist by scripts/horovod/build-wheel.sh, with
#                                   cmake/g++ installed in this stage only), its run-time deps as
#                                   wheels, and install.sh + requirements-runtime.txt (scripts/)
#   install-gdmix.sh pip ARGS       pip ARGS, with the build's CA bundle
#
# Final stages (offline: PIP_NO_INDEX, nothing is downloaded, no CA bundle is needed or present):
#   install-gdmix.sh horovod        Horovod from the wheels of horovod-dist (copied to horovod/),
#                                   checked against this TensorFlow by install.sh; fails unless
#                                   horovodrun runs and reports TensorFlow + Gloo
#   install-gdmix.sh package        the gdmix wheel itself (--no-deps), `pip check` (only the
#                                   excluded requirements may be missing), an import check, then
#                                   removes /opt/gdmix-build
#
# ca-bundle.crt (next to this script in build stages): the CA bundle of the machine that runs the
# build, which build-images.sh copies into the context, so that pip trusts what that machine trusts
# (e.g. a TLS-intercepting proxy). Only build stages COPY it; the final images are assembled from a
# clean base with COPY --from of /opt/venv, so no layer of theirs holds it (build-images.sh checks).
set -eu

BUILD=/opt/gdmix-build
EXCLUDE="${GDMIX_EXCLUDE_DEPS:-}"
if [ -s "$BUILD/ca-bundle.crt" ]; then
    export PIP_CERT="$BUILD/ca-bundle.crt"
fi

case "${1:-}" in
venv)
    python3 -m venv /opt/venv
    pip install --no-cache-dir "pip==${PIP_VERSION:-26.3}"
    ;;
pip)
    shift
    pip --no-cache-dir "$@"
    ;;
horovod-dist)
    out=/opt/horovod-dist
    mkdir -p "$out/scripts"
    cp "$BUILD/horovod-scripts/install.sh" "$BUILD/horovod-scripts/requirements-runtime.txt" "$out/scripts/"
    if ls "$BUILD"/horovod/horovod-*.whl >/dev/null 2>&1; then
        echo "Horovod: using the prebuilt wheel of the build context: $(ls "$BUILD"/horovod/horovod-*.whl)"
        cp "$BUILD"/horovod/horovod-*.whl "$out/"
        if [ -f "$BUILD/horovod/horovod-wheel.key" ]; then cp "$BUILD/horovod/horovod-wheel.key" "$out/"; fi
    else
        echo "Horovod: no prebuilt wheel in the context: building it from source in this stage"
        start=$(date +%s)
        # compilers for this stage only; Python.h ships with python:3.11-slim, Debian needs python3-dev
        pkgs="cmake g++ make"
        include="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
        [ -f "$include/Python.h" ] || pkgs="$pkgs python3-dev"
        apt-get update
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs
        rm -rf /var/lib/apt/lists/*
        # what scripts/horovod/build-wheel.sh builds with (--no-build-isolation), pinned as in .venv
        pip install --no-cache-dir "setuptools==${SETUPTOOLS_VERSION:-65.5.0}" "wheel==${WHEEL_VERSION:-0.48.0}"
        PYTHON=python3 GDMIX_CACHE=/tmp/horovod-cache \
            bash "$BUILD/horovod-scripts/build-wheel.sh" --out "$out"
        rm -rf /tmp/horovod-cache
        echo "Horovod: built in the image in $(($(date +%s) - start)) s"
    fi
    # run-time deps as wheels, so that the final stage installs offline
    pip download --no-cache-dir --only-binary :all: -d "$out" -r "$out/scripts/requirements-runtime.txt"
    ls -l "$out"
    ;;
horovod)
    dist="$BUILD/horovod"
    ls "$dist"/horovod-*.whl >/dev/null 2>&1 || { echo "Horovod: no wheel in $dist" >&2; exit 1; }
    PIP_NO_INDEX=1 PIP_FIND_LINKS="$dist" PIP_NO_CACHE_DIR=1 PYTHON=python3 \
        bash "$dist/scripts/install.sh" --wheel-dir "$dist"
    # horovodrun must exist and see TensorFlow and Gloo: an MPIJob's launcher runs it
    command -v horovodrun >/dev/null 2>&1 || { echo "Horovod: horovodrun is not on PATH" >&2; exit 1; }
    horovodrun --check-build | tee "$BUILD/hvd-check.txt"
    if ! grep -q '\[X\] TensorFlow' "$BUILD/hvd-check.txt" || ! grep -q '\[X\] Gloo' "$BUILD/hvd-check.txt"; then
        echo "Horovod: horovodrun --check-build does not report TensorFlow and Gloo" >&2
        exit 1
    fi
    rm -rf "$dist" "$BUILD/hvd-check.txt"
    ;;
deps)
    python3 - "$BUILD/requirements.txt" "$EXCLUDE" >"$BUILD/requirements.image.txt" <<'EOF'
import re, sys
path, exclude = sys.argv[1], sys.argv[2]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
skip = {norm(n) for n in exclude.replace(",", " ").split()}
for line in open(path):
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if m and norm(m.group(1)) in skip:
        print(f"excluded from this image: {line.strip()}", file=sys.stderr)
        continue
    print(line.rstrip())
EOF
    echo "installing (with kfp==${KFP_VERSION}):"
    cat "$BUILD/requirements.image.txt"
    pip install --no-cache-dir -r "$BUILD/requirements.image.txt" "kfp==${KFP_VERSION}"
    ;;
package)
    set -- "$BUILD"/dist/gdmix-*.whl
    [ -f "$1" ] || { echo "no gdmix wheel in $BUILD/dist" >&2; exit 1; }
    PIP_NO_INDEX=1 pip install --no-cache-dir --no-deps "$@"
    # pip check: the only tolerated complaints are "gdmix ... requires <excluded>, which is not installed".
    pip check >"$BUILD/pip-check.txt" 2>&1 || true
    python3 - "$BUILD/pip-check.txt" "$EXCLUDE" <<'EOF'
import re, sys
path, exclude = sys.argv[1], sys.argv[2]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
skip = {norm(n) for n in exclude.replace(",", " ").split()}
bad = []
for line in open(path):
    line = line.strip()
    m = re.match(r"gdmix \S+ requires ([A-Za-z0-9._-]+), which is not installed", line)
    if not line or line.startswith("No broken requirements") or (m and norm(m.group(1)) in skip):
        continue
    bad.append(line)
if bad:
    sys.exit("pip check failed:\n" + "\n".join(bad))
print("pip check: OK" + (f" (excluded on purpose: {', '.join(sorted(skip))})" if skip else ""))
EOF
    # component bodies import gdmix_components._runtime (components/ installs under that name)
    python3 -c "import gdmix, gdmix.images, gdmix_components._runtime, kfp; print('gdmix', gdmix.__version__, 'kfp', kfp.__version__)"
    rm -rf "$BUILD"
    ;;
*)
    echo "usage: install-gdmix.sh venv|deps|horovod-dist|pip ARGS|horovod|package" >&2
    exit 2
    ;;
esac
