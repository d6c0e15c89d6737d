#!/usr/bin/env bash
# Lifecycle of a private Docker engine for meshd's executor tests.
#
#   eval "$(tests/docker_env.sh start)"   # install if missing, start, build images
#   pytest -m docker tests/               # DOCKER_HOST now points at it
#   tests/docker_env.sh stop              # stop it and remove everything it made
#
# Subcommands:
#   start   install docker.io + busybox-static with apt if missing (as root,
#           non-interactive), start dockerd with its own --data-root,
#           --exec-root, pidfile and unix socket under $MESHD_DOCKER_DIR, wait
#           until it answers, build the test images (tests/images/build.sh),
#           and print `export DOCKER_HOST=unix://.../docker.sock` on stdout.
#           Already running and answering -> only (re)checks images and prints.
#   stop    SIGTERM that dockerd (SIGKILL after $MESHD_DOCKER_STOP_TIMEOUT_S),
#           wait for it and its containerd to exit, unmount whatever is left
#           under the dir and remove it. Not running -> just cleans up.
#   env     print the export line without starting anything.
#   status  exit 0 if the engine answers, 1 otherwise.
#
# Settings (environment, all optional):
#   MESHD_DOCKER_DIR              engine dir          default /tmp/meshd-ci-docker
#   MESHD_DOCKER_START_TIMEOUT_S  wait for readiness  default 60
#   MESHD_DOCKER_STOP_TIMEOUT_S   wait for exit       default 20
#   MESHD_DOCKERD_EXTRA_ARGS      extra dockerd flags default "" (e.g. --bridge=none)
#   MESHD_DOCKER_IMAGES           build test images   default 1 (0: an engine with no
#                                 image at all, as on a fresh machine)
#
# Rules: stdout carries only the export line (so `eval` is safe); progress
# and errors go to stderr. Only the dockerd whose pid is in our pidfile (and
# the containerd it spawned under our exec-root) is ever signalled.
set -euo pipefail

DIR="${MESHD_DOCKER_DIR:-/tmp/meshd-ci-docker}"
START_TIMEOUT_S="${MESHD_DOCKER_START_TIMEOUT_S:-60}"
STOP_TIMEOUT_S="${MESHD_DOCKER_STOP_TIMEOUT_S:-20}"
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/docker.pid"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DOCKER_HOST="unix://$SOCK"

log() { echo "docker_env: $*" >&2; }

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

pid_alive() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

ensure_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    # busybox-static provides a static /bin/busybox; the dynamic `busybox`
    # package would not run inside an image without a libc.
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
    # deploy/build-image.sh and tests/test_deploy.py: the image's Debian root
    # and the compose mesh.
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    # tests/test_dashboard_browser.py drives Debian's Chromium with Playwright
    # (no browser download).
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    if ((${#missing[@]})); then
        [[ $(id -u) -eq 0 ]] || { log "error: need root to apt-get install ${missing[*]}"; exit 1; }
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT_S))
    # Bounded readiness poll: dockerd has no "ready" notification we can
    # block on without systemd, so ask it until it answers or time is up.
    until answers; do
        if ! pid_alive; then
            log "error: dockerd exited during start; last log lines:"
            tail -n 30 "$DIR/dockerd.log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "error: dockerd did not answer within ${START_TIMEOUT_S}s; last log lines:"
            tail -n 30 "$DIR/dockerd.log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}

cmd_start() {
    ensure_packages
    if pid_alive && answers; then
        log "engine already running (pid $(cat "$PIDFILE"))"
    else
        pid_alive && { log "engine pid alive but not answering; restarting"; cmd_stop; }
        cleanup_dir
        mkdir -p "$DIR/root" "$DIR/exec"
        log "starting dockerd under $DIR"
        # setsid: the engine must outlive this shell and not get its signals.
        # shellcheck disable=SC2086
        setsid dockerd \
            --data-root "$DIR/root" --exec-root "$DIR/exec" \
            -H "unix://$SOCK" --pidfile "$PIDFILE" \
            ${MESHD_DOCKERD_EXTRA_ARGS:-} \
            >"$DIR/dockerd.log" 2>&1 </dev/null &
        # dockerd writes the pidfile itself, but only after some setup; record
        # the pid now so a failed start is noticed and can be stopped.
        echo $! >"$PIDFILE.launch"
        local launch_pid=$!
        local deadline=$((SECONDS + START_TIMEOUT_S))
        until [[ -s "$PIDFILE" ]] || ! kill -0 "$launch_pid" 2>/dev/null; do
            ((SECONDS < deadline)) || break
            sleep 0.05
        done
        [[ -s "$PIDFILE" ]] || cp "$PIDFILE.launch" "$PIDFILE"
        wait_ready
        log "engine ready: $(docker version --format '{{.Server.Version}}')"
    fi
    if [[ "${MESHD_DOCKER_IMAGES:-1}" != 0 ]]; then
        bash "$HERE/images/build.sh" >&2
    fi
    echo "export DOCKER_HOST=$DOCKER_HOST"
}

wait_exit() {  # pid timeout_s -> 0 if exited in time
    timeout "$2" tail --pid="$1" -f /dev/null 2>/dev/null
}

cleanup_dir() {
    [[ -d "$DIR" ]] || return 0
    # Unmount anything dockerd left mounted under our dir (overlay layers,
    # netns files, shm), deepest first, then remove it.
    local m
    awk -v d="$DIR" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$DIR"
}

cmd_stop() {
    local pid cpid=""
    if [[ -f "$DIR/exec/containerd/containerd.pid" ]]; then
        cpid="$(cat "$DIR/exec/containerd/containerd.pid" 2>/dev/null || true)"
    fi
    if pid_alive; then
        pid="$(cat "$PIDFILE")"
        log "stopping dockerd pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_exit "$pid" "$STOP_TIMEOUT_S"; then
            log "dockerd did not exit in ${STOP_TIMEOUT_S}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_exit "$pid" 5 || true
        fi
    fi
    if [[ -n "$cpid" ]] && kill -0 "$cpid" 2>/dev/null; then
        # dockerd normally stops the containerd it spawned; make sure.
        kill -TERM "$cpid" 2>/dev/null || true
        wait_exit "$cpid" "$STOP_TIMEOUT_S" || kill -KILL "$cpid" 2>/dev/null || true
    fi
    cleanup_dir
    log "stopped and cleaned $DIR"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    status) answers ;;
    *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
