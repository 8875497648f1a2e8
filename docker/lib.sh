# shellcheck shell=bash
# Sourced by docker/build-images.sh and docker/push-images.sh (which define say and die first):
# the checks both make before touching images.

# A docker CLI and a daemon that answers in DOCKER_HOST.
require_daemon() {
    command -v docker >/dev/null 2>&1 || die "no docker CLI (run docker/start-dockerd.sh)"
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
        || die "no Docker daemon answers${DOCKER_HOST:+ on $DOCKER_HOST}; start one with: eval \"\$(docker/start-dockerd.sh)\""
}

# Every argument is one of the image roles of gdmix/images.py.
check_roles() {
    local role
    for role in "$@"; do
        [[ " spark trainer detext launcher " == *" $role "* ]] || die "unknown image '$role' (spark trainer detext launcher)"
    done
}
