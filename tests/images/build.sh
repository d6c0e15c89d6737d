#!/usr/bin/env bash
# Build the local test images meshd's executor tests use. No registry is
# needed or reachable: every image is made with `docker import` from files on
# this machine.
#
#   meshd/busybox:1  static busybox (Debian package busybox-static) with the
#                    applets the tests call linked in /bin; a /tmp and
#                    /mesh/{inputs,outputs} mount points; nothing else.
#
# Usage: DOCKER_HOST=unix:///... tests/images/build.sh [--force]
# Idempotent: an image that already exists is left alone unless --force.
# Rules: needs the `docker` CLI and /bin/busybox (static); writes only to a
# temp dir it removes; messages go to stderr.
set -euo pipefail

IMAGE_BUSYBOX="${MESHD_TEST_IMAGE_BUSYBOX:-meshd/busybox:1}"
BUSYBOX_BIN="${MESHD_BUSYBOX_BIN:-/bin/busybox}"
# Applets the tests and health checks use (busybox dispatches on argv[0]).
APPLETS="sh cat echo true false sleep sha256sum head dd yes ls mkdir rm touch
 wc id env grep nc seq tr printf test kill"

force=0
[[ "${1:-}" == "--force" ]] && force=1

log() { echo "images: $*" >&2; }

if [[ $force -eq 0 ]] && docker image inspect "$IMAGE_BUSYBOX" >/dev/null 2>&1; then
    log "$IMAGE_BUSYBOX present"
    exit 0
fi
if ! file_out="$(LC_ALL=C file -b "$BUSYBOX_BIN" 2>/dev/null)" || [[ "$file_out" != *static* ]]; then
    # `file` may be absent on a fresh machine; fall back to ldd's verdict.
    if ldd "$BUSYBOX_BIN" >/dev/null 2>&1; then
        log "error: $BUSYBOX_BIN is not a static binary (install busybox-static)"
        exit 1
    fi
fi

root="$(mktemp -d /tmp/meshd-image-root.XXXXXX)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/mesh/inputs" "$root/mesh/outputs" "$root/etc"
chmod 1777 "$root/tmp"
cp "$BUSYBOX_BIN" "$root/bin/busybox"
for a in $APPLETS; do ln -s busybox "$root/bin/$a"; done
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
echo "nobody:x:65534:65534:nobody:/:/bin/sh" >>"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "nogroup:x:65534:" >>"$root/etc/group"
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/bin' \
    --change 'CMD ["/bin/sh"]' \
    --message "meshd test image from busybox-static" \
    - "$IMAGE_BUSYBOX" >/dev/null
log "built $IMAGE_BUSYBOX"
