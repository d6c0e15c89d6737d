"""Peer standing: meshd's reputation score, the block list, and forgery charges.

Theory of operation:
    Three things decide whether this host still deals with a peer:

    * the application score ``fn(peer_id) -> float`` (``set_app_score``), fed
      into GossipSub's peer score and compared with
      ``app_score_disconnect_below`` on connect and every discovery round;
    * the block list (``block_peer``): bounded, oldest block lifted first;
    * provably-invalid gossip: a neighbour that hands over
      ``invalid_forwarder_limit`` messages a validator called
      :data:`PROVABLY_INVALID` within ``invalid_forwarder_window_s`` is
      blocked (honest nodes validate before they forward).

    Other parts ask :meth:`Standing.refuses` / :meth:`Standing.is_blocked`;
    those that keep per-peer state (the pubsub blacklist, discovery's dial
    candidates) register with :meth:`Standing.on_block` / ``on_unblock``.

Rules: the app-score function is the caller's code: an exception from it
counts ``handler_errors`` and reads as 0 (neutral), never more.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TypeAlias

from libp2p.peer.id import ID

from meshd.net.context import HostContext, parse_peer_id

log = logging.getLogger("meshd.net")

AppScore = Callable[[str], float]
PeerListener = Callable[[str], None]


class _ProvablyInvalid:
    """A validator's verdict: reject, and hold it against the neighbour that
    handed the message over (see :data:`PROVABLY_INVALID`). Falsy."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "PROVABLY_INVALID"


PROVABLY_INVALID = _ProvablyInvalid()
"""What a topic validator returns for a message no honest neighbour would have
passed on: honest nodes validate before they forward, so a forged signature,
undecodable bytes or another author's message re-published under a new id
can only come from a neighbour that made it or forwards blindly. Such a
neighbour is blocked after ``invalid_forwarder_limit`` of them within
``invalid_forwarder_window_s``. Never use it for a verdict that depends on
local state or clocks (stale, replayed, banned author): an honest neighbour
may see those differently."""

TopicVerdict: TypeAlias = bool | _ProvablyInvalid
"""A topic validator's answer: True accepts; False or :data:`PROVABLY_INVALID` rejects."""


class Standing:
    """App score, block list and provably-invalid counts of one host."""

    def __init__(self, ctx: HostContext) -> None:
        self._ctx = ctx
        self._app_score: AppScore | None = None
        self._blocked: collections.OrderedDict[str, None] = collections.OrderedDict()
        # neighbour -> times of its recent provably invalid messages (bounded)
        self._invalid_from: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._block_listeners: list[PeerListener] = []
        self._unblock_listeners: list[PeerListener] = []

    # ------------------------------------------------------------ app score

    def set_app_score(self, fn: AppScore) -> None:
        self._app_score = fn

    def app_score_of(self, peer: ID) -> float:
        """The app score of ``peer`` (0.0 without a score function)."""
        fn = self._app_score
        if fn is None:
            return 0.0
        try:
            return float(fn(str(peer)))
        except Exception:
            self._ctx.count("handler_errors")
            return 0.0

    def refuses(self, peer_id: str) -> bool:
        """True if ``peer_id`` is blocked or scores below the disconnect threshold."""
        if peer_id in self._blocked:
            return True
        threshold = self._ctx.params.app_score_disconnect_below
        return (
            self._app_score is not None and self.app_score_of(ID.from_base58(peer_id)) < threshold
        )

    def enforce_app_score(self) -> None:
        """Hang up on connected peers that :meth:`refuses`."""
        if self._app_score is None or self._ctx.nursery is None:
            return
        for peer_id in self._ctx.connected_peers():
            if self.refuses(peer_id):
                self._ctx.count("refused_peers")
                self._ctx.spawn(self._ctx.drop_peer, peer_id)

    # ----------------------------------------------------------- block list

    def on_block(self, fn: PeerListener) -> None:
        """Call ``fn(peer_id)`` whenever a peer is blocked."""
        self._block_listeners.append(fn)

    def on_unblock(self, fn: PeerListener) -> None:
        """Call ``fn(peer_id)`` whenever the bound lifts an old block."""
        self._unblock_listeners.append(fn)

    def is_blocked(self, peer_id: str) -> bool:
        return peer_id in self._blocked

    def blocked_peers(self) -> list[str]:
        return list(self._blocked)

    def block_peer(self, peer_id: str) -> None:
        """Block ``peer_id`` for the life of the host (see MeshHost.block_peer)."""
        parse_peer_id(peer_id)
        self._blocked[peer_id] = None
        self._blocked.move_to_end(peer_id)
        while len(self._blocked) > self._ctx.params.max_blocked_peers:
            oldest, _ = self._blocked.popitem(last=False)
            for fn in self._unblock_listeners:
                fn(oldest)
        for fn in self._block_listeners:
            fn(peer_id)
        if self._ctx.running:
            self._ctx.spawn(self._ctx.drop_peer, peer_id)

    # ------------------------------------------------ provably invalid gossip

    def charge_invalid(self, forwarder: str) -> None:
        """``forwarder`` handed us a provably invalid message; block it at the limit."""
        p = self._ctx.params
        times = self._invalid_from.get(forwarder)
        if times is None:
            times = self._invalid_from[forwarder] = collections.deque(
                maxlen=p.invalid_forwarder_limit
            )
            while len(self._invalid_from) > p.tracked_neighbours_per_peer * p.max_peers:
                self._invalid_from.popitem(last=False)
        self._invalid_from.move_to_end(forwarder)
        now = time.monotonic()
        times.append(now)
        if (
            len(times) == p.invalid_forwarder_limit
            and now - times[0] <= p.invalid_forwarder_window_s
        ):
            del self._invalid_from[forwarder]
            self._ctx.count("forwarders_blocked")
            log.warning(
                "blocking %s: it handed us %d provably invalid gossip messages within %.1f s",
                forwarder,
                p.invalid_forwarder_limit,
                now - times[0],
            )
            self.block_peer(forwarder)
