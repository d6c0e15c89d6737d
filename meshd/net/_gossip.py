"""Two narrow subclasses of py-libp2p's pubsub classes (private to meshd.net).

- :class:`MeshGossipSub` replaces libp2p's single spam limit (10 msg/s for
  every topic, own publishes included, drops logged only) with a per-topic
  budget from :class:`~meshd.net.params.NetParams`, exempts our own
  publishes, and reports every drop to a callback so it is counted.
- :class:`MeshPubsub` hands each validated, first-seen message straight to a
  callback instead of libp2p's per-topic 32-slot channel, which drops
  silently (with a WARNING) when a reader falls behind; and it contains the
  exceptions a peer's undecodable RPC raises, which in 0.8.1 kill the host.

Rules: the callbacks are synchronous and must not raise; the host owns them.
Both classes override documented hook methods of py-libp2p 0.8.1 only
(``_check_spam_protection``, ``remove_peer``, ``notify_subscriptions``,
``stream_handler``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

RATE_WINDOW_S = 1.0
"""Length of the sliding window the per-topic budget counts messages in."""


class MeshGossipSub(GossipSub):
    """GossipSub with per-topic forwarding budgets and counted drops."""

    def __init__(
        self,
        *args: Any,
        rate_limit_for: Callable[[str], float],
        on_rate_limited: Callable[[ID, str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._rate_limit_for = rate_limit_for
        self._on_rate_limited = on_rate_limited
        # (forwarder, topic) -> arrival times within the window
        self._windows: dict[tuple[ID, str], collections.deque[float]] = {}

    def _check_spam_protection(self, peer_id: ID, msg: rpc_pb2.Message) -> bool:
        if self.pubsub is not None and peer_id == self.pubsub.my_id:
            return True  # our own publishes are never throttled here
        now = time.monotonic()
        for topic in msg.topicIDs:
            window = self._windows.setdefault((peer_id, topic), collections.deque())
            while window and window[0] <= now - RATE_WINDOW_S:
                window.popleft()
            if len(window) >= self._rate_limit_for(topic):
                self._on_rate_limited(peer_id, topic)
                return False
            window.append(now)
        return True

    def remove_peer(self, peer_id: ID) -> None:
        super().remove_peer(peer_id)
        for key in [k for k in self._windows if k[0] == peer_id]:
            del self._windows[key]


class MeshPubsub(Pubsub):
    """Pubsub that delivers to one synchronous callback, never to a channel,
    and survives a peer's garbage on the pubsub stream."""

    def __init__(
        self,
        *args: Any,
        deliver: Callable[[rpc_pb2.Message], None],
        on_broken_stream: Callable[[ID, Exception], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._deliver = deliver
        self._on_broken_stream = on_broken_stream

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._deliver(publish_message)

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        # py-libp2p 0.8.1's add_to_blacklist schedules this teardown, which
        # resets the peer's stream and then does ``del self.peers[peer_id]``.
        # When the peer disconnects meanwhile (MeshHost.block_peer hangs up on
        # it at the same moment) the disconnect has already removed the entry,
        # the del raises KeyError, pubsub's task manager fails and takes the
        # host down - the daemon died as soon as it banned a lying worker.
        # Tolerate the race and also clear the router and queue state the
        # library's own teardown leaves behind.
        stream = self.peers.get(peer_id)
        if stream is not None:
            try:
                await stream.reset()
            except Exception:
                pass
        if self.peers.pop(peer_id, None) is not None:
            queue = self.peer_queues.pop(peer_id, None)
            if queue is not None:
                queue.close()
            if self.router is not None:
                self.router.remove_peer(peer_id)
        self._forget_all_subscriptions(peer_id)

    async def stream_handler(self, stream: INetStream) -> None:
        # py-libp2p 0.8.1 catches only its own parse errors here; protobuf's
        # DecodeError (any undecodable RPC) escapes and takes the whole swarm
        # down. It also happens between honest py-libp2p peers: two of its
        # writers can interleave yamux frames of one RPC on the same stream.
        try:
            await super().stream_handler(stream)
        except Exception as exc:
            peer_id = stream.muxed_conn.peer_id
            try:
                await stream.reset()
            except Exception:
                pass
            self._handle_dead_peer(peer_id)
            self._on_broken_stream(peer_id, exc)
