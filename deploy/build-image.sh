#!/usr/bin/env bash
# Build meshd's container image on this machine, with no registry.
#
#   deploy/build-image.sh [--force]        -> meshd/meshd:<version> and meshd/meshd:latest
#
# Two steps, both from packages this machine can reach:
#   1. a base image, meshd/debian-python:bookworm: a minimal Debian bookworm
#      root with python3, python3-venv, tini, ca-certificates and
#      busybox-static (the daemon builds its health-check image from it), made
#      by mmdebstrap and `docker import`ed. The root is made reproducibly
#      (fixed suite, SOURCE_DATE_EPOCH, sorted tar) and cached as a tarball
#      under $MESHD_IMAGE_CACHE keyed by its inputs, so a rebuild costs an import.
#   2. deploy/Dockerfile (multi-stage): a build stage installs meshd and its
#      dependencies from wheels made here (`pip wheel`, in
#      deploy/.build/wheels, no compiler in the image) into /opt/meshd; the
#      final stage copies only that venv and runs as an unprivileged user.
#
# Settings (environment): DOCKER_HOST (which engine), MESHD_IMAGE_CACHE
# (default /var/cache/meshd-images), MESHD_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), PYTHON (the interpreter that runs `pip
# wheel`; default .venv/bin/python, else python3).
# Installs mmdebstrap with apt if missing (as root). Messages go to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUITE=bookworm
PACKAGES="python3,python3-venv,ca-certificates,tini,busybox-static"
MIRROR="${MESHD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${MESHD_IMAGE_CACHE:-/var/cache/meshd-images}"
BASE_TAG="meshd/debian-python:$SUITE"
EPOCH=1700000000  # fixed timestamps in the root (SOURCE_DATE_EPOCH)
PY="${PYTHON:-}"
[[ -n "$PY" ]] || { [[ -x .venv/bin/python ]] && PY=.venv/bin/python || PY=python3; }
VERSION="$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
IMAGE="meshd/meshd:$VERSION"

log() { echo "build-image: $*" >&2; }

force=0
[[ "${1:-}" == "--force" ]] && force=1

if ! command -v mmdebstrap >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || { log "error: mmdebstrap is missing (apt-get install mmdebstrap)"; exit 1; }
    log "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >&2
fi

key="$(printf '%s\n' "$SUITE" "$PACKAGES" "$MIRROR" "$EPOCH" v1 | sha256sum | cut -c1-16)"
root_tar="$CACHE/debian-python-$SUITE-$key.tar"
if [[ $force -eq 1 ]] || ! docker image inspect "$BASE_TAG" >/dev/null 2>&1 \
    || [[ "$(docker image inspect -f '{{index .Config.Labels "org.meshd.base-key"}}' "$BASE_TAG" 2>/dev/null)" != "$key" ]]; then
    if [[ $force -eq 1 || ! -s "$root_tar" ]]; then
        mkdir -p "$CACHE"
        log "making the $SUITE root with mmdebstrap (cached as $root_tar)"
        SOURCE_DATE_EPOCH=$EPOCH mmdebstrap --quiet --format=tar --variant=minbase --include="$PACKAGES" \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            "$SUITE" "$root_tar.tmp" "$MIRROR" >&2
        mv "$root_tar.tmp" "$root_tar"
    fi
    log "importing $BASE_TAG"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL org.meshd.base-key=$key" \
        "$root_tar" "$BASE_TAG" >/dev/null
fi

build=deploy/.build
rm -rf "$build"
mkdir -p "$build/wheels"
log "making wheels of meshd and its dependencies"
"$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$build/wheels" . 2>&1 \
    | { grep -v "^WARNING: Location .* is ignored" || true; } >&2
cp deploy/entrypoint.sh "$build/entrypoint.sh"
log "building $IMAGE"
DOCKER_BUILDKIT=0 docker build -q --network=none -f deploy/Dockerfile --build-arg "BASE=$BASE_TAG" \
    --label "org.opencontainers.image.version=$VERSION" \
    -t "$IMAGE" -t meshd/meshd:latest "$build" >&2
rm -rf "$build"
echo "$IMAGE"
