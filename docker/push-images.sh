#!/usr/bin/env bash
# Push the gdmix images to a registry, under the names gdmix/images.py gives them
# ($GDMIX_IMAGE_REGISTRY/gdmix-<role>:$GDMIX_IMAGE_TAG), which are also the names the compiled
# pipelines use. What `make push REGISTRY=... TAG=...` runs:
#
#     make images push REGISTRY=ghcr.io/acme/gdmix TAG=0.1.0   # build under those names, push them
#     make push REGISTRY=ghcr.io/acme/gdmix TAG=0.1.0          # tag what `make images` built, push
#     make compile REGISTRY=ghcr.io/acme/gdmix TAG=0.1.0       # pipelines that pull those images
#
# For each role: when the target name is not a local image yet, the image built under the source
# name (default localhost/gdmix-<role>:<version>, what a plain `make images` tags) is tagged with
# it first; then `docker push`. Log in to the registry beforehand (docker login); a registry on
# 127.0.0.0/8 may speak plain HTTP, others need TLS or the daemon's insecure-registries.
#
# Environment:
#   GDMIX_IMAGE_REGISTRY  the registry (and namespace) to push to; required, not "localhost"
#   GDMIX_IMAGE_TAG       the tag (default: the package version)
#   IMAGES                roles to push (default: spark trainer detext launcher)
#   GDMIX_PUSH_FROM_REGISTRY / GDMIX_PUSH_FROM_TAG   the source names (default localhost / version)
#   PYTHON                python that imports this checkout's gdmix (default .venv/bin/python)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES="${IMAGES:-spark trainer detext launcher}"
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

say() { echo "push-images: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

registry="${GDMIX_IMAGE_REGISTRY:-}"
registry="${registry%/}"
[[ -n $registry ]] || die "no registry: make push REGISTRY=<registry>[/<namespace>] [TAG=<tag>] (GDMIX_IMAGE_REGISTRY)"
[[ $registry != localhost ]] || die "localhost is the local build's name, not a registry: give REGISTRY=<registry>"
# shellcheck source=docker/lib.sh
. "$REPO/docker/lib.sh"
require_daemon
# shellcheck disable=SC2086  # a list of words
check_roles $IMAGES

# gdmix.images.image(role) is the one place that names images: the target with this environment,
# the source with the source registry/tag (unset: its defaults).
name_of() { # role registry tag
    env -u GDMIX_IMAGE_REGISTRY -u GDMIX_IMAGE_TAG ${2:+GDMIX_IMAGE_REGISTRY=$2} ${3:+GDMIX_IMAGE_TAG=$3} \
        PYTHONPATH="$REPO" "$PYTHON" -c 'import sys; from gdmix.images import image; print(image(sys.argv[1]))' "$1"
}
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

pushed=()
for role in $IMAGES; do
    target="$(name_of "$role" "$registry" "${GDMIX_IMAGE_TAG:-}")" || die "cannot name the $role image"
    if ! have_image "$target"; then
        source="$(name_of "$role" "${GDMIX_PUSH_FROM_REGISTRY:-}" "${GDMIX_PUSH_FROM_TAG:-}")"
        have_image "$source" || die "$role: neither $target nor $source is a local image: build it first (make images)"
        say "$role: docker tag $source $target"
        docker tag "$source" "$target"
    fi
    say "$role: docker push $target"
    docker push "$target" >&2 || die "docker push $target failed (logged in? docker login ${registry%%/*})"
    digest="$(docker image inspect --format '{{join .RepoDigests " "}}' "$target" | tr ' ' '\n' \
        | grep -F "${target%:*}@" | head -n 1 || true)"
    pushed+=("$target ${digest#*@}")
done
say "pushed:"
printf '  %s\n' "${pushed[@]}" >&2
