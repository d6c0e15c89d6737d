"""Errors of the libp2p adapter.

Rules:
- Every error a caller of :class:`~meshd.net.host.MeshHost` can see subclasses
  :class:`NetError`; libp2p's own exceptions never cross the adapter boundary.
- Each error says whose fault it is: the remote peer (``RemoteError``), the
  network (``PeerUnreachable``, ``RequestTimeout``), or a size bound that
  either side enforced (``MessageTooLarge``).
"""

from __future__ import annotations


class NetError(Exception):
    """Base class of every error raised by ``meshd.net``."""


class ListenError(NetError):
    """A listen address cannot be taken: another process listens on it (py-libp2p
    sets ``SO_REUSEPORT``, so without a check two daemons would share a port),
    or the address is not one of this machine's. The text is one line for the
    user."""


class NotRunning(NetError):
    """The host is not running (``run()`` not started yet, or already returned)."""


class PeerUnreachable(NetError):
    """No connection to the peer could be made or kept (dial failed, peer gone,
    connection lost mid-request, or the peer is blocked)."""


class RequestTimeout(NetError):
    """The request did not complete within its deadline."""


class RemoteError(NetError):
    """The peer answered with an error: its handler failed, it has no handler
    for the protocol, it was busy, or it broke the framing."""


class StreamBroken(RemoteError):
    """The peer's answer stopped short of its framing (the stream ended or
    was reset mid-frame) while a connection to it was still up: the peer
    broke it, or something on the path did (a relay resetting a circuit)."""


class ProtocolNotServed(RemoteError):
    """The connected peer does not serve the protocol asked (multistream
    negotiation failed): an older or different meshd."""


class MessageTooLarge(NetError):
    """A payload exceeds a size bound: ours (raised before sending) or the
    peer's (it refused our request)."""


class InvalidMessage(NetError):
    """Our own topic validator rejects a message we tried to publish."""


class PublishDropped(NetError):
    """The publish was not sent: ``max_pending_publishes`` publishes were
    already waiting for room in the peers' outbound queues (counted
    ``publish_dropped``)."""
