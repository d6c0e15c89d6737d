#!/bin/sh
# meshd-entrypoint: prepare the data dir, find the bootstrap peer, run meshd.
#
#   meshd-entrypoint start [meshd start flags]   initialise if needed, then `meshd start`
#   meshd-entrypoint CMD [ARGS]                  run CMD as given (e.g. `mesh status`)
#
# Environment (all optional):
#   MESH_DATA_DIR           the data dir (default /data)
#   MESHD_P2P_PORT          libp2p TCP port (default 7700)
#   MESHD_NODE_KEY_FILE     a node.key adopted at first start, if the file exists:
#                           a fixed identity (e.g. the bootstrap node's, from a Secret)
#   MESHD_NODE_KEY_FOR_HOST adopt it only on the host of this name (a StatefulSet's
#                           pod 0); default: on any host
#   MESHD_PUBLISH_ID        a file to write this node's peer id to (a shared volume)
#   MESHD_BOOTSTRAP         full bootstrap multiaddrs, space-separated, used as given
#   MESHD_BOOTSTRAP_HOST    the bootstrap node's host name; resolved here to an
#                           address (libp2p dials addresses), port MESHD_P2P_PORT
#   MESHD_BOOTSTRAP_ID      its peer id, or MESHD_BOOTSTRAP_ID_FILE: a file holding
#                           it, waited for up to MESHD_BOOTSTRAP_WAIT_S (default 120)
#   MESHD_CONFIG_FILE       a config.toml copied into the data dir at every start
#                           (e.g. from a ConfigMap); listen/bootstrap flags still apply
#   MESHD_MDNS              true|false: set `mdns` in config.toml at every start
set -eu

DATA="${MESH_DATA_DIR:-/data}"
PORT="${MESHD_P2P_PORT:-7700}"
export MESH_DATA_DIR="$DATA"

say() { echo "meshd-entrypoint: $*" >&2; }

# wait_for WHAT CMD...: run CMD each second until it succeeds, at most
# MESHD_BOOTSTRAP_WAIT_S (default 120) seconds; then fail saying WHAT.
wait_for() {
    what="$1"
    shift
    waited=0
    until "$@"; do
        if [ "$waited" -ge "${MESHD_BOOTSTRAP_WAIT_S:-120}" ]; then
            say "error: $what after ${waited}s"
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

bootstrap_ip() {
    ip="$(getent ahostsv4 "$MESHD_BOOTSTRAP_HOST" | awk 'NR==1 {print $1}')" && [ -n "$ip" ]
}

if [ "${1:-start}" != "start" ]; then
    exec "$@"
fi
[ "$#" -gt 0 ] && shift

if [ ! -f "$DATA/node.key" ]; then
    meshd init --data-dir "$DATA" --listen "/ip4/0.0.0.0/tcp/$PORT" >/dev/null
    if [ -n "${MESHD_NODE_KEY_FILE:-}" ] && [ -s "$MESHD_NODE_KEY_FILE" ] \
        && { [ -z "${MESHD_NODE_KEY_FOR_HOST:-}" ] || [ "$MESHD_NODE_KEY_FOR_HOST" = "$(hostname)" ]; }; then
        say "adopting the identity in $MESHD_NODE_KEY_FILE"
        cp "$MESHD_NODE_KEY_FILE" "$DATA/node.key.new"
        chmod 0600 "$DATA/node.key.new"
        mv "$DATA/node.key.new" "$DATA/node.key"
    fi
fi
if [ -n "${MESHD_CONFIG_FILE:-}" ]; then
    cp "$MESHD_CONFIG_FILE" "$DATA/config.toml.new"
    mv "$DATA/config.toml.new" "$DATA/config.toml"
fi
if [ -n "${MESHD_MDNS:-}" ]; then
    /opt/meshd/bin/python -c 'import sys; from meshd.config import update_config
update_config(sys.argv[1], {"mdns": sys.argv[2] == "true"})' "$DATA" "$MESHD_MDNS"
fi
SELF="$(/opt/meshd/bin/python -c \
    'import sys; from meshd.config import load_node; print(load_node(sys.argv[1])[1].peer_id)' "$DATA")"
say "peer id $SELF"
if [ -n "${MESHD_PUBLISH_ID:-}" ]; then
    printf '%s\n' "$SELF" >"$MESHD_PUBLISH_ID.tmp"
    mv "$MESHD_PUBLISH_ID.tmp" "$MESHD_PUBLISH_ID"
fi

set -- --listen "/ip4/0.0.0.0/tcp/$PORT" "$@"
for addr in ${MESHD_BOOTSTRAP:-}; do
    set -- "$@" --bootstrap "$addr"
done
if [ -n "${MESHD_BOOTSTRAP_HOST:-}" ]; then
    id="${MESHD_BOOTSTRAP_ID:-}"
    if [ -z "$id" ] && [ -n "${MESHD_BOOTSTRAP_ID_FILE:-}" ]; then
        wait_for "no peer id in $MESHD_BOOTSTRAP_ID_FILE" test -s "$MESHD_BOOTSTRAP_ID_FILE"
        id="$(head -n1 "$MESHD_BOOTSTRAP_ID_FILE")"
    fi
    if [ -z "$id" ]; then
        say "error: MESHD_BOOTSTRAP_HOST needs MESHD_BOOTSTRAP_ID or MESHD_BOOTSTRAP_ID_FILE"
        exit 2
    fi
    if [ "$id" != "$SELF" ]; then
        ip=""
        wait_for "cannot resolve $MESHD_BOOTSTRAP_HOST" bootstrap_ip
        set -- "$@" --bootstrap "/ip4/$ip/tcp/$PORT/p2p/$id"
        say "bootstrap $MESHD_BOOTSTRAP_HOST ($ip) $id"
    fi
fi
exec meshd start --data-dir "$DATA" "$@"
