#!/usr/bin/env bash
# Build the gdmix container images, tagged as gdmix/images.py names them
# (localhost/gdmix-<role>:<version>, or $GDMIX_IMAGE_REGISTRY/gdmix-<role>:$GDMIX_IMAGE_TAG;
# `make images REGISTRY=... TAG=...` sets those two). docker/push-images.sh (`make push`) pushes them.
#
#     eval "$(docker/start-dockerd.sh)"              # or any daemon in DOCKER_HOST
#     IMAGES="launcher trainer" make images          # default: spark trainer detext launcher
#
# Steps: (1) `pip wheel --no-deps .` into a build context, plus requirements.txt = the wheel's
# pinned Requires-Dist; (2) pick the base image: $BASE_IMAGE if given, else python:3.11-slim when
# it is present or can be pulled, else a local Debian bookworm base (python3 3.11) made with
# debootstrap and `docker import`ed as localhost/gdmix-base:bookworm (cached: the image is reused,
# and the rootfs tarball is kept in $GDMIX_IMAGE_CACHE); (3) `docker build --network host` of each
# role from docker/Dockerfile cut down to the stages that role needs (the classic builder would
# build every stage above --target), with --build-arg BASE_IMAGE=...; (4) check that no layer of
# the image holds ca-bundle.crt (docker/check-image-layers.py: docker save, every layer's listing).
#
# Environment:
#   IMAGES              roles to build (spark trainer detext launcher)
#   BASE_IMAGE          base image to use, skipping the choice below
#   GDMIX_BASE          auto (default): python:3.11-slim if present/pullable, else the local base;
#                       local: always the debootstrap base; pull: python:3.11-slim or fail
#   GDMIX_IMAGE_CACHE   cache folder (default /var/tmp/gdmix-images): base rootfs tarball, context
#   GDMIX_DEBIAN_MIRROR Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   GDMIX_HOROVOD       where detext's Horovod wheel comes from (detext always has Horovod):
#                       image (default): built from the PyPI sdist in the Dockerfile's build-horovod
#                         stage (scripts/horovod/build-wheel.sh's recipe; cmake/g++ in that stage only);
#                       auto: the prebuilt wheel in $HOROVOD_WHEEL_DIR, else the one
#                         scripts/horovod/build-wheel.sh cached on this machine
#                         (${GDMIX_CACHE:-~/.cache/gdmix}/wheels/horovod-*-tf<pinned TF>-cp311-<arch>-r*),
#                         else built in the image (a shortcut: CI, which has built it on the host);
#                       host: run scripts/horovod/build-wheel.sh here first (cached), then use it
#   HOROVOD_WHEEL_DIR   folder with a prebuilt horovod-*.whl (+ horovod-wheel.key, as build-wheel.sh
#                       --out writes it); setting it implies GDMIX_HOROVOD=auto
#   GDMIX_CA_BUNDLE     CA bundle pip trusts during the build (default $PIP_CERT, $SSL_CERT_FILE or
#                       /etc/ssl/certs/ca-certificates.crt: what this machine trusts); build stages only
#   PYTHON              python with pip, to build the wheel (default .venv/bin/python, else python3)
#   DOCKER_BUILD_ARGS   extra arguments for every `docker build` (e.g. --no-cache)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES="${IMAGES:-spark trainer detext launcher}"
CACHE="${GDMIX_IMAGE_CACHE:-/var/tmp/gdmix-images}"
GDMIX_BASE="${GDMIX_BASE:-auto}"
MIRROR="${GDMIX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOROVOD_WHEEL_DIR="${HOROVOD_WHEEL_DIR:-}"
GDMIX_HOROVOD="${GDMIX_HOROVOD:-image}"
if [[ -n $HOROVOD_WHEEL_DIR && $GDMIX_HOROVOD == image ]]; then GDMIX_HOROVOD=auto; fi
GDMIX_CACHE_ROOT="${GDMIX_CACHE:-$HOME/.cache/gdmix}"
SLIM=python:3.11-slim
LOCAL_BASE=localhost/gdmix-base:bookworm
ROOTFS_TAR="$CACHE/gdmix-base-bookworm.tar"
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export DOCKER_BUILDKIT=0 # the classic builder: works with docker.io 20.10 and a CLI without buildx

say() { echo "build-images: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s; }
declare -A TOOK=()

# --- checks ----------------------------------------------------------------------------------
# shellcheck source=docker/lib.sh
. "$REPO/docker/lib.sh"
require_daemon
# shellcheck disable=SC2086  # a list of words
check_roles $IMAGES

tag_of() { PYTHONPATH="$REPO" "$PYTHON" -c 'import sys; from gdmix.images import image; print(image(sys.argv[1]))' "$1"; }

# --- (1) build context: wheel + pinned requirements -------------------------------------------
t0=$(now)
CTX="$CACHE/context"
rm -rf "$CTX"
mkdir -p "$CTX/dist" "$CTX/horovod"
say "building the gdmix wheel ($PYTHON -m pip wheel --no-deps .)"
# setuptools stages the wheel in $REPO/build/lib and never removes what the project no longer
# ships (e.g. components/ from before it installed as gdmix_components): the wheel would carry
# that stale tree, so the build starts from none (build/ is setuptools' scratch, git-ignored)
rm -rf "$REPO/build"
(cd "$REPO" && "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$CTX/dist" .) \
    || die "pip wheel failed"
WHEEL="$(ls "$CTX"/dist/gdmix-*.whl)"
"$PYTHON" - "$WHEEL" >"$CTX/requirements.txt" <<'EOF'
import sys, zipfile
from email.parser import Parser
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    msg = Parser().parsestr(z.read(meta).decode())
for req in msg.get_all("Requires-Dist") or []:
    if "extra ==" not in req:       # runtime pins only, no test extras
        print(req)
EOF
cp "$REPO/docker/install-gdmix.sh" "$CTX/"
# The CA bundle this machine trusts, for pip inside the build (see install-gdmix.sh).
CA_BUNDLE="${GDMIX_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
if [[ -r $CA_BUNDLE ]]; then cp "$CA_BUNDLE" "$CTX/ca-bundle.crt"; else : >"$CTX/ca-bundle.crt"; fi
cp "$REPO/docker/spark-entrypoint.sh" "$CTX/"
# Horovod for detext: scripts/horovod's recipe and installer (the Dockerfile's build-horovod stage
# runs build-wheel.sh, the detext stage install.sh) and, for GDMIX_HOROVOD=auto|host, a prebuilt
# wheel in horovod/ (empty: the build-horovod stage compiles it).
HOROVOD_SOURCE=image
mkdir -p "$CTX/horovod-scripts"
for f in build-wheel.sh install.sh requirements-runtime.txt; do
    [[ -f $REPO/scripts/horovod/$f ]] || die "no scripts/horovod/$f (the detext image builds Horovod with it)"
    cp "$REPO/scripts/horovod/$f" "$CTX/horovod-scripts/"
done
if [[ " $IMAGES " == *" detext "* ]]; then
    case "$GDMIX_HOROVOD" in
    image) ;;
    host)
        say "detext: scripts/horovod/build-wheel.sh --out on this machine (builds once, then cached)"
        PYTHON="$PYTHON" "$REPO/scripts/horovod/build-wheel.sh" --out "$CTX/horovod" >&2 \
            || die "scripts/horovod/build-wheel.sh failed"
        ;;
    auto)
        if [[ -n $HOROVOD_WHEEL_DIR ]]; then
            src_dir="$HOROVOD_WHEEL_DIR"
        else
            # build-wheel.sh's cache, for the TensorFlow this image pins
            tf_pin="$(sed -n 's/^tensorflow-cpu==\([^ ;]*\).*/\1/p' "$CTX/requirements.txt")"
            # shellcheck disable=SC2012  # newest recipe revision first
            src_dir="$(ls -dt "$GDMIX_CACHE_ROOT"/wheels/horovod-*-tf"$tf_pin"-cp311-"$(uname -m)"-r* 2>/dev/null | head -n 1)"
        fi
        if [[ -n $src_dir ]] && compgen -G "$src_dir/horovod-*.whl" >/dev/null; then
            # shellcheck disable=SC2012  # newest wheel first; wheel names have no odd characters
            cp "$(ls -t "$src_dir"/horovod-*.whl | head -n 1)" "$CTX/horovod/"
            if [[ -f $src_dir/horovod-wheel.key ]]; then
                cp "$src_dir/horovod-wheel.key" "$CTX/horovod/"
            elif [[ -z $HOROVOD_WHEEL_DIR ]]; then
                basename "$src_dir" >"$CTX/horovod/horovod-wheel.key" # the cache folder is the key
            fi
        elif [[ -n $HOROVOD_WHEEL_DIR ]]; then
            die "HOROVOD_WHEEL_DIR=$HOROVOD_WHEEL_DIR holds no horovod-*.whl"
        fi
        ;;
    *) die "GDMIX_HOROVOD must be image, auto or host (got '$GDMIX_HOROVOD'; detext always has Horovod)" ;;
    esac
    if compgen -G "$CTX/horovod/horovod-*.whl" >/dev/null; then
        HOROVOD_SOURCE="prebuilt:$(cat "$CTX/horovod/horovod-wheel.key" 2>/dev/null \
            || find "$CTX/horovod" -maxdepth 1 -name 'horovod-*.whl' -printf '%f\n' | sort | head -n 1)"
    fi
fi
VERSION="$(PYTHONPATH="$REPO" "$PYTHON" -c 'import gdmix; print(gdmix.__version__)')"
VCS_REF="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ $VCS_REF != unknown ]] && [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    VCS_REF="$VCS_REF-dirty"
fi
TOOK[context]=$(($(now) - t0))
say "context ready in ${TOOK[context]}s: $(basename "$WHEEL"), $(wc -l <"$CTX/requirements.txt") pinned requirements"

# --- (2) base image --------------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_local_base() {
    if have_image "$LOCAL_BASE"; then
        say "base: reusing $LOCAL_BASE"
        return
    fi
    local t
    t=$(now)
    if [[ ! -s $ROOTFS_TAR ]]; then
        [[ $(id -u) == 0 ]] || die "debootstrap needs root (or provide $ROOTFS_TAR / BASE_IMAGE)"
        command -v debootstrap >/dev/null 2>&1 || die "no debootstrap (apt-get install debootstrap, or run docker/start-dockerd.sh)"
        local rootfs="$CACHE/rootfs.tmp"
        rm -rf "$rootfs"
        say "base: debootstrap bookworm from $MIRROR (about a minute)"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        # apt sources with updates and security, as in the python:3.11-slim images.
        local sec="${MIRROR%/debian}/debian-security"
        cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $sec bookworm-security main
EOF
        chroot "$rootfs" apt-get clean
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
            "$rootfs"/tmp/* "$rootfs"/root/.cache
        tar -C "$rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
        mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
        rm -rf "$rootfs"
    fi
    say "base: docker import $ROOTFS_TAR as $LOCAL_BASE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change 'LABEL org.opencontainers.image.description="Debian bookworm minbase + python3 (debootstrap), gdmix local base"' \
        "$ROOTFS_TAR" "$LOCAL_BASE" >/dev/null || die "docker import failed"
    TOOK[base]=$(($(now) - t))
    say "base: $LOCAL_BASE ready in ${TOOK[base]}s"
}

t0=$(now)
if [[ -n ${BASE_IMAGE:-} ]]; then
    have_image "$BASE_IMAGE" || docker pull "$BASE_IMAGE" >&2 || die "base image $BASE_IMAGE: not present and cannot be pulled"
    say "base: $BASE_IMAGE (given)"
else
    case "$GDMIX_BASE" in
    auto | pull)
        if have_image "$SLIM" || timeout 60 docker pull "$SLIM" >/dev/null 2>&1; then
            BASE_IMAGE="$SLIM"
            say "base: $SLIM"
        elif [[ $GDMIX_BASE == pull ]]; then
            die "cannot pull $SLIM (GDMIX_BASE=pull)"
        else
            say "base: cannot pull $SLIM (no registry?): using the local debootstrap base"
            build_local_base
            BASE_IMAGE="$LOCAL_BASE"
        fi
        ;;
    local)
        build_local_base
        BASE_IMAGE="$LOCAL_BASE"
        ;;
    *) die "GDMIX_BASE must be auto, local or pull (got '$GDMIX_BASE')" ;;
    esac
fi

# --- (3) images ------------------------------------------------------------------------------
# trainer before detext: detext reuses trainer's layers up to the dependencies.
ordered=()
for role in spark trainer detext launcher; do
    [[ " $IMAGES " == *" $role "* ]] && ordered+=("$role")
done
for role in "${ordered[@]}"; do
    tag="$(tag_of "$role")"
    # the classic builder builds every stage above --target: give it only the stages $role needs
    "$PYTHON" "$REPO/docker/dockerfile-for-target.py" "$REPO/docker/Dockerfile" "$role" >"$CACHE/Dockerfile.$role" \
        || die "cannot cut docker/Dockerfile down to $role"
    args=(--network host --force-rm -f "$CACHE/Dockerfile.$role" --target "$role" -t "$tag"
        --build-arg "BASE_IMAGE=$BASE_IMAGE"
        --label "org.opencontainers.image.title=gdmix-$role" --label "org.opencontainers.image.version=$VERSION"
        --label "org.opencontainers.image.revision=$VCS_REF" --label "org.opencontainers.image.licenses=BSD-2-Clause"
        --label "org.opencontainers.image.base.name=$BASE_IMAGE" --label "io.gdmix.role=$role")
    if [[ $role == detext ]]; then
        args+=(--build-arg "HOROVOD_SOURCE=$HOROVOD_SOURCE")
        if [[ $HOROVOD_SOURCE == image ]]; then
            say "detext: Horovod built from source in the image (build-horovod stage; minutes, then cached)"
        else
            say "detext: Horovod from the prebuilt wheel ($HOROVOD_SOURCE)"
        fi
    fi
    say "$role: docker build -t $tag (log: $CACHE/build-$role.log)"
    t=$(now)
    # shellcheck disable=SC2086
    if ! docker build "${args[@]}" ${DOCKER_BUILD_ARGS:-} "$CTX" >"$CACHE/build-$role.log" 2>&1; then
        tail -n 40 "$CACHE/build-$role.log" >&2
        die "docker build of $role failed (log: $CACHE/build-$role.log)"
    fi
    TOOK[$role]=$(($(now) - t))
    size="$(docker image inspect --format '{{.Size}}' "$tag")"
    say "$role: $tag built in ${TOOK[$role]}s, $((size / 1000000)) MB"
    # (4) the CA bundle lives in build stages only: no layer of the image may hold it
    t=$(now)
    "$PYTHON" "$REPO/docker/check-image-layers.py" "$tag" >&2 \
        || die "$role: $tag has ca-bundle.crt in a layer (see above); it must stay in build stages"
    say "$role: layer check in $(($(now) - t))s"
done

# earlier builds of these tags, now untagged
docker image prune -f --filter "label=io.gdmix.role" >/dev/null || true
say "done (base $BASE_IMAGE):"
for role in "${ordered[@]}"; do
    tag="$(tag_of "$role")"
    printf '  %-36s %6s MB  %4ss\n' "$tag" "$(($(docker image inspect --format '{{.Size}}' "$tag") / 1000000))" \
        "${TOOK[$role]}" >&2
done
