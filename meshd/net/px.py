"""Peer exchange (``/meshd/px/1``): message encoding and validation (pure).

Theory of operation:
    A node that knows one peer asks it, over an ordinary request/response
    stream, for the peers it is connected to, then dials them in parallel.
    Repeated every ``peer_exchange_interval_s`` against a few connected peers,
    this spreads knowledge of every node through the mesh without a server.

    request  body: msgpack uint ``want`` (most peers wanted; the server caps it
                   at its own ``max_px_peers``)
    response body: msgpack array of ``[peer_id: str, [multiaddr: str, ...]]``

Rules:
- Decoding never trusts the peer: sizes are capped before unpacking, entries
  of the wrong shape, peer ids that are not Ed25519 peer ids and addresses
  that are not dialable ``/ip4|ip6|dns*/.../tcp/N`` multiaddrs are skipped.
  Only a body that is not msgpack at all raises ``ValueError``.
- Addresses travel without their ``/p2p/<id>`` suffix; the receiver adds it.
  A relayed address travels as ``<relay tcp addr>/p2p/<relay id>/p2p-circuit``.
"""

from __future__ import annotations

import msgpack
import multiaddr

from meshd.core.identity import public_key_from_peer_id
from meshd.net.params import NetParams

PX_PROTOCOL = "/meshd/px/1"
"""Stream protocol id of peer exchange (reserved: applications cannot handle it)."""

_ADDR_CHARS = NetParams.max_px_addr_chars
_REQUEST_BYTES = NetParams.max_px_request_bytes
# msgpack framing around the strings of a response, generously: array headers
# (the response, each entry, each address list) and str headers.
_RESPONSE_OVERHEAD_BYTES = 64
_ENTRY_OVERHEAD_BYTES = 80  # also covers the peer id text (52 chars)
_ADDR_OVERHEAD_BYTES = 8
_HOST_PROTOCOLS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})


def encode_px_request(want: int) -> bytes:
    return msgpack.packb(want)


def decode_px_request(body: bytes, cap: int, *, max_bytes: int = _REQUEST_BYTES) -> int:
    """The number of peers asked for, capped at ``cap``; ValueError if malformed
    (including a body over ``max_bytes``: a request is one msgpack integer)."""
    if len(body) > max_bytes:
        raise ValueError("peer-exchange request too long")
    try:
        want = msgpack.unpackb(body)
    except Exception as exc:
        raise ValueError(f"malformed peer-exchange request: {exc}") from None
    if not isinstance(want, int) or isinstance(want, bool) or want < 0:
        raise ValueError("peer-exchange request must be a non-negative integer")
    return min(want, cap)


def dialable_addr(text: str, max_chars: int = _ADDR_CHARS) -> str | None:
    """``text`` as a dialable TCP multiaddr without ``/p2p`` (or a relayed
    address ending in ``/p2p-circuit``), or None (also when longer than
    ``max_chars``)."""
    if not isinstance(text, str) or len(text) > max_chars:
        return None
    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
    except Exception:
        return None
    if len(names) < 2 or names[0] not in _HOST_PROTOCOLS or names[1] != "tcp":
        return None
    if names[2:] == ["p2p", "p2p-circuit"] or names[2:] == ["p2p", "p2p-circuit", "p2p"]:
        # a relayed address: the relay's TCP address and id, then /p2p-circuit
        return str(addr).split("/p2p-circuit")[0] + "/p2p-circuit"
    if any(n not in ("p2p",) for n in names[2:]):
        return None  # /ws ...: not dialable by our TCP-only host
    return str(addr).split("/p2p/")[0]


def encode_px_response(
    entries: list[tuple[str, list[str]]],
    max_peers: int,
    max_addrs_per_peer: int,
    *,
    max_addr_chars: int = _ADDR_CHARS,
) -> bytes:
    """Encode at most ``max_peers`` entries with at most ``max_addrs_per_peer`` each."""
    out = []
    for peer_id, addrs in entries[:max_peers]:
        clean = [a for a in (dialable_addr(x, max_addr_chars) for x in addrs) if a is not None]
        if clean:
            out.append([peer_id, clean[:max_addrs_per_peer]])
    return msgpack.packb(out)


def max_px_response_bytes(
    max_peers: int, max_addrs_per_peer: int, max_addr_chars: int = _ADDR_CHARS
) -> int:
    """Bound on an acceptable response body for these caps."""
    per_addr = max_addr_chars + _ADDR_OVERHEAD_BYTES
    return _RESPONSE_OVERHEAD_BYTES + max_peers * (
        _ENTRY_OVERHEAD_BYTES + max_addrs_per_peer * per_addr
    )


def decode_px_response(
    body: bytes,
    max_peers: int,
    max_addrs_per_peer: int,
    *,
    max_addr_chars: int = _ADDR_CHARS,
) -> list[tuple[str, list[str]]]:
    """Valid entries of a response (see module rules). ValueError if not msgpack."""
    if len(body) > max_px_response_bytes(max_peers, max_addrs_per_peer, max_addr_chars):
        raise ValueError("peer-exchange response too long")
    try:
        raw = msgpack.unpackb(
            body,
            max_array_len=max(max_peers, max_addrs_per_peer, 2),
            max_str_len=max_addr_chars,
            max_map_len=0,
            max_bin_len=0,
            max_ext_len=0,
        )
    except Exception as exc:
        raise ValueError(f"malformed peer-exchange response: {exc}") from None
    if not isinstance(raw, list):
        raise ValueError("peer-exchange response must be an array")
    out: list[tuple[str, list[str]]] = []
    for entry in raw[:max_peers]:
        if not (isinstance(entry, list) and len(entry) == 2):
            continue
        peer_id, addrs = entry
        if not isinstance(peer_id, str) or public_key_from_peer_id(peer_id) is None:
            continue
        if not isinstance(addrs, list):
            continue
        clean = [
            a for a in (dialable_addr(x, max_addr_chars) for x in addrs[:max_addrs_per_peer]) if a
        ]
        if clean:
            out.append((peer_id, clean))
    return out
