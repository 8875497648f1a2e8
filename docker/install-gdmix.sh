#!/bin/sh
# Runs inside `docker build` (every gdmix Dockerfile), as root, with /opt/venv first on PATH.
#
#   install-gdmix.sh venv      /opt/venv (a venv: PEP 668 forbids pip on Debian's system python,
#                              and it works the same on python:3.11-slim), pip==$PIP_VERSION, and
#                              the non-root user gdmix (uid/gid 1000, home /home/gdmix)
#   install-gdmix.sh pip ARGS  pip ARGS (e.g. a prebuilt wheel), with the build's CA bundle
#   install-gdmix.sh horovod   the prebuilt Horovod wheel named by HOROVOD_WHEEL (in horovod/), with
#                              scripts/horovod/install.sh (copied to horovod-scripts/), which installs
#                              its pinned run-time deps and checks it against this TensorFlow; with
#                              HOROVOD_WHEEL empty, nothing (the image is built without Horovod)
#   install-gdmix.sh deps      pinned dependencies of the gdmix wheel (requirements.txt, written by
#                              build-images.sh from the wheel's Requires-Dist) minus the names in
#                              GDMIX_EXCLUDE_DEPS, plus kfp==$KFP_VERSION, from PyPI
#   install-gdmix.sh package   the gdmix wheel itself (--no-deps), `pip check` (only the excluded
#                              requirements may be missing), an import check, then cleans up
#
# deps and package are two steps so that the big dependency layer stays cached while the package
# changes.
#
# ca-bundle.crt (next to this script): the CA bundle of the machine that runs the build, which
# build-images.sh copies into the context, so that pip trusts what that machine trusts (e.g. a
# TLS-intercepting proxy). It is used for the build only and removed with the rest of
# /opt/gdmix-build by the last step; the image's own trust store is left as the base has it.
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
    groupadd --gid 1000 gdmix
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/gdmix --shell /bin/bash gdmix
    ;;
pip)
    shift
    pip --no-cache-dir "$@"
    ;;
horovod)
    if [ -z "${HOROVOD_WHEEL:-}" ]; then
        echo "Horovod: no prebuilt wheel given (HOROVOD_WHEEL empty): image built WITHOUT Horovod"
    elif [ -f "$BUILD/horovod-scripts/install.sh" ]; then
        PYTHON=python3 bash "$BUILD/horovod-scripts/install.sh" --wheel-dir "$BUILD/horovod"
    else
        pip install --no-cache-dir "$BUILD/horovod/${HOROVOD_WHEEL}"
        python3 -c "import horovod, horovod.tensorflow; print('horovod', horovod.__version__)"
    fi
    rm -rf "$BUILD/horovod" "$BUILD/horovod-scripts"
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
    pip install --no-cache-dir --no-deps "$@"
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
    python3 -c "import gdmix, gdmix.images, kfp; print('gdmix', gdmix.__version__, 'kfp', kfp.__version__)"
    rm -rf "$BUILD"
    ;;
*)
    echo "usage: install-gdmix.sh venv|pip ARGS|horovod|deps|package" >&2
    exit 2
    ;;
esac
