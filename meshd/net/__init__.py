"""meshd.net: the libp2p adapter (gossip, request/response streams, discovery).

No protocol logic lives here; see :mod:`meshd.net.host` for the theory of
operation and ``meshd/net/PROTOCOL-net.md`` for the wire format.
"""

from meshd.net.errors import (
    InvalidMessage,
    ListenError,
    MessageTooLarge,
    NetError,
    NotRunning,
    PeerUnreachable,
    ProtocolNotServed,
    PublishDropped,
    RemoteError,
    RequestTimeout,
)
from meshd.net.host import MeshHost
from meshd.net.logs import quiet_libp2p_logs
from meshd.net.params import NetParams
from meshd.net.px import PX_PROTOCOL
from meshd.net.standing import PROVABLY_INVALID
from meshd.net.stats import NetStats

__all__ = [
    "PROVABLY_INVALID",
    "PX_PROTOCOL",
    "InvalidMessage",
    "ListenError",
    "MeshHost",
    "MessageTooLarge",
    "NetError",
    "NetParams",
    "NetStats",
    "NotRunning",
    "PeerUnreachable",
    "ProtocolNotServed",
    "PublishDropped",
    "RemoteError",
    "RequestTimeout",
    "quiet_libp2p_logs",
]
