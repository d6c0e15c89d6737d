#!/usr/bin/env bash
# Build the example image, meshd/sci:1, on this machine from Debian's packages.
# No registry is used or needed.
#
#   DOCKER_HOST=unix:///... examples/build-images.sh [--force]
#
#   1. rootfs: `mmdebstrap` of a minimal Debian ($SUITE, variant essential)
#      with python3-numpy (reference BLAS: one thread, deterministic), docs,
#      man pages and locales left out; SOURCE_DATE_EPOCH fixed below, so the
#      same suite state gives the same tarball, byte for byte. The tarball is
#      cached under $MESHD_IMAGE_CACHE keyed by every input of this step
#      (suite, mirror, variant, packages, excludes, epoch, architecture,
#      mmdebstrap's version): a rebuild with a warm cache costs seconds.
#   2. layer: the rootfs plus the examples' programs (examples/sci/ at
#      /opt/sci, its `run` and `check` at /mesh/run and /mesh/check, empty
#      /mesh/inputs and /mesh/outputs), appended sorted, owned by 0:0, with
#      mtime SOURCE_DATE_EPOCH.
#   3. image: wrapped by examples/image/docker_archive.py into a `docker save`
#      archive whose config carries the epoch as its creation time, then
#      `docker load`ed. The image id is thus a function of the layer's bytes:
#      the same inputs give the same image id on every machine (`docker
#      import` would stamp the current time). Already loaded -> nothing to do.
#
# Settings (environment, all optional):
#   MESHD_SCI_IMAGE     image tag                   default meshd/sci:1
#   MESHD_IMAGE_CACHE   rootfs cache dir            default ${XDG_CACHE_HOME:-~/.cache}/meshd-images
#   MESHD_DEBIAN_MIRROR Debian mirror               default http://deb.debian.org/debian
#                       (a snapshot.debian.org URL pins the package versions too)
# Needs: docker CLI, python3, GNU tar, and mmdebstrap (installed with apt when
# missing and running as root). Progress goes to stderr; stdout prints the
# image id only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${MESHD_SCI_IMAGE:-meshd/sci:1}"
CACHE="${MESHD_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshd-images}"
MIRROR="${MESHD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="bookworm"
VARIANT="essential"
PACKAGES="python3-minimal,python3-numpy"
# 2025-01-01T00:00:00Z: every timestamp in the rootfs, the layer and the image config.
export SOURCE_DATE_EPOCH=1735689600
EXCLUDES=(
    "path-exclude=/usr/share/doc/*"
    "path-exclude=/usr/share/man/*"
    "path-exclude=/usr/share/info/*"
    "path-exclude=/usr/share/locale/*"
    "path-exclude=/usr/share/lintian/*"
)
ENV=(PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1)

force=0
[[ "${1:-}" == "--force" ]] && force=1
log() { echo "build-images: $*" >&2; }

command -v docker >/dev/null || { log "error: the docker CLI is missing"; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    { log "error: no Docker engine answers at ${DOCKER_HOST:-the default socket}"; exit 1; }
if ! command -v mmdebstrap >/dev/null; then
    [[ $(id -u) -eq 0 ]] || { log "error: mmdebstrap is missing (apt-get install mmdebstrap)"; exit 1; }
    log "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >&2
fi

ARCH="$(dpkg --print-architecture)"
key_text="suite=$SUITE mirror=$MIRROR variant=$VARIANT packages=$PACKAGES epoch=$SOURCE_DATE_EPOCH"
key_text+=" arch=$ARCH excludes=${EXCLUDES[*]} mmdebstrap=$(mmdebstrap --version 2>/dev/null | head -1)"
KEY="$(printf '%s' "$key_text" | sha256sum | cut -c1-16)"
ROOTFS="$CACHE/rootfs-$SUITE-$KEY.tar"
mkdir -p "$CACHE"

if [[ ! -s "$ROOTFS" ]]; then
    log "building the rootfs ($SUITE + $PACKAGES) into $ROOTFS"
    dpkgopts=()
    for e in "${EXCLUDES[@]}"; do dpkgopts+=(--dpkgopt="$e"); done
    mmdebstrap --quiet --format=tar --variant="$VARIANT" --include="$PACKAGES" --architectures="$ARCH" \
        "${dpkgopts[@]}" "$SUITE" "$ROOTFS.part" "$MIRROR" >&2
    mv "$ROOTFS.part" "$ROOTFS"
else
    log "rootfs cached: $ROOTFS"
fi

work="$(mktemp -d /tmp/meshd-sci-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
stage="$work/stage"
mkdir -p "$stage/opt/sci" "$stage/mesh/inputs" "$stage/mesh/outputs"
install -m 0644 "$HERE"/sci/*.py "$stage/opt/sci/"
install -m 0755 "$HERE/sci/run" "$stage/mesh/run"
install -m 0755 "$HERE/sci/check" "$stage/mesh/check"
cp "$ROOTFS" "$work/layer.tar"
tar --append -f "$work/layer.tar" -C "$stage" --sort=name --format=gnu \
    --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    ./opt/sci ./mesh

args=(--tag "$IMAGE" --created "$SOURCE_DATE_EPOCH" --arch "$ARCH" --cmd /mesh/run)
for e in "${ENV[@]}"; do args+=(--env "$e"); done
want="$(python3 "$HERE/image/docker_archive.py" "$work/layer.tar" "$work/image.tar" "${args[@]}")"
have="$(docker image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)"
if [[ $force -eq 0 && "$have" == "$want" ]]; then
    log "$IMAGE present ($want)"
else
    docker load -q -i "$work/image.tar" >&2
    have="$(docker image inspect "$IMAGE" --format '{{.Id}}')"
    [[ "$have" == "$want" ]] || { log "error: loaded $have, expected $want"; exit 1; }
    log "loaded $IMAGE ($want)"
fi
echo "$want"
