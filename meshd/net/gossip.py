"""Gossip: topic validation, delivery to the app's handlers, paced publishing.

Theory of operation:
    :class:`Gossip` owns one GossipSub router and one Pubsub service (the
    meshd subclasses in :mod:`meshd.net.libp2p_hooks`). Every inbound
    message passes a per-topic validator (size bound, blocked author or
    forwarder, the caller's ``set_topic_validator`` function) before libp2p
    forwards it. Valid, first-seen messages go into a bounded inbox
    (``inbox_size``; overflow counted ``dropped_inbox_full``); one task hands
    them to the subscribers' handlers, so a slow handler never delays
    forwarding.

    ``publish`` takes turns (call order, at most ``max_pending_publishes``
    waiting) and each publish waits, up to ``publish_wait_s``, for room in
    the per-peer outbound queues it goes to: py-libp2p 0.8.1 drops silently
    when one of those 32-entry queues is full, and an unpaced burst of 100
    reached a peer as 16.

Rules:
- Validators and handlers are the caller's code: an exception from one is
  counted (``handler_errors``) and the message dropped, never raised.
- pubsub also delivers our own publishes to our subscription; they are
  filtered here (and our own validator ran in ``publish`` already).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.score import ScoreParams

from meshd.net.context import HostContext
from meshd.net.errors import InvalidMessage, MessageTooLarge, PublishDropped
from meshd.net.libp2p_hooks import (
    OUTBOUND_QUEUE_SIZE,
    PUBLISH_QUEUE_ENTRIES,
    MeshGossipSub,
    MeshPubsub,
    reuse_local_record,
    verify_sender_records_once,
)
from meshd.net.standing import PROVABLY_INVALID, Standing, TopicVerdict

log = logging.getLogger("meshd.net")

GOSSIP_PROTOCOLS = (PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID)

PEER_TEXT_MEMO = 4_096
"""Peer ids whose base58 text is remembered (each inbound message names its
author and forwarder; py-libp2p re-encodes an ``ID`` on every ``str()``)."""


@lru_cache(maxsize=PEER_TEXT_MEMO)
def _peer_text(raw: bytes) -> str:
    """The base58 text of the peer id whose bytes are ``raw``."""
    return ID(raw).to_base58()


GossipHandler = Callable[[str, bytes], None]
TopicValidator = Callable[[str, bytes], TopicVerdict]
"""``fn(author, data)``: truthy accepts; falsy (False, PROVABLY_INVALID) rejects."""


class Gossip:
    """GossipSub topics of one host: subscribe, validate, deliver, publish."""

    def __init__(self, ctx: HostContext, standing: Standing) -> None:
        p = ctx.params
        self._ctx = ctx
        self._standing = standing
        self._subscriptions: dict[str, GossipHandler] = {}
        self._validators: dict[str, TopicValidator] = {}
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[str, str, bytes]](
            p.inbox_size
        )
        self._publish_turn = trio.Lock()  # FIFO: publishes go out in call order
        self._publishes_pending = 0

        verify_sender_records_once(ctx.libp2p, p.sender_record_memo_peers)
        reuse_local_record(ctx.libp2p, p.local_record_reuse_s)
        self.router = MeshGossipSub(
            list(GOSSIP_PROTOCOLS),
            p.degree,
            p.degree_low,
            p.degree_high,
            heartbeat_interval=p.gossip_heartbeat_s,
            adaptive_gossip_enabled=False,  # keep D/D_lo/D_hi exactly as configured
            score_params=ScoreParams(
                app_specific_score_fn=standing.app_score_of,
                p6_appl_slack_weight=p.app_score_weight,
            ),
            rate_limit_for=p.rate_limit_for,
            rate_window_s=p.topic_rate_window_s,
            on_rate_limited=self._on_rate_limited,
            on_queue_full=self._on_queue_full,
            idontwant_min_bytes=p.idontwant_min_bytes,
        )
        self.pubsub = MeshPubsub(
            ctx.libp2p,
            self.router,
            seen_ttl=p.seen_ttl_s,
            max_inbound_rpc_size=p.max_gossip_bytes + p.gossip_rpc_overhead_bytes,
            deliver=self._on_message,
            on_broken_stream=self._on_broken_stream,
            forwarder_rate_per_s=p.forwarder_rate_per_s,
            forwarder_burst=p.forwarder_burst,
            max_forwarder_buckets=p.tracked_neighbours_per_peer * p.max_peers,
            on_over_budget=lambda peer: ctx.count("dropped_over_budget"),
        )
        standing.on_block(self._blacklist)
        standing.on_unblock(self._unblacklist)

    # ------------------------------------------------------------- lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        """Once pubsub is ready: apply the block list, join topics, start delivery."""
        for peer_id in self._standing.blocked_peers():
            self.pubsub.add_to_blacklist(ID.from_base58(peer_id))
        for topic in list(self._subscriptions):
            await self._join(topic)
        nursery.start_soon(self._dispatch)

    def _blacklist(self, peer_id: str) -> None:
        if self._ctx.running:
            self.pubsub.add_to_blacklist(ID.from_base58(peer_id))

    def _unblacklist(self, peer_id: str) -> None:
        if self._ctx.running:
            self.pubsub.remove_from_blacklist(ID.from_base58(peer_id))

    # --------------------------------------------------------- subscriptions

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        new = topic not in self._subscriptions
        self._subscriptions[topic] = handler
        if new and self._ctx.state == "running":
            self._ctx.spawn(self._join, topic)

    def unsubscribe(self, topic: str) -> None:
        """Leave ``topic``: no more deliveries, and libp2p leaves its mesh."""
        if self._subscriptions.pop(topic, None) is not None and self._ctx.state == "running":
            self._ctx.spawn(self._leave, topic)

    def subscribed(self) -> list[str]:
        """The topics subscribed to, in subscription order."""
        return list(self._subscriptions)

    async def _join(self, topic: str) -> None:
        if topic not in self._subscriptions:
            return  # left again before the join ran
        self.pubsub.set_topic_validator(
            topic, lambda fwd, msg: self._validate(topic, fwd, msg), False
        )
        await self.pubsub.subscribe(topic)

    async def _leave(self, topic: str) -> None:
        if topic in self._subscriptions:
            return  # joined again before the leave ran
        await self.pubsub.unsubscribe(topic)
        self.pubsub.remove_topic_validator(topic)

    def set_topic_validator(self, topic: str, fn: TopicValidator) -> None:
        self._validators[topic] = fn

    def mesh_peers(self, topic: str) -> list[str]:
        return [str(p) for p in self.router.mesh.get(topic, ())]

    # ------------------------------------------------------------- inbound

    def _validate(self, topic: str, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if msg.from_id == self._ctx.pid.to_bytes():
            return True  # checked in publish() already
        if len(msg.data) > self._ctx.params.max_gossip_bytes:
            self._ctx.count("dropped_oversize")
            return False
        author = _peer_text(msg.from_id)
        via = _peer_text(forwarder.to_bytes())
        if self._standing.is_blocked(author) or self._standing.is_blocked(via):
            self._ctx.count("dropped_blocked")
            return False
        fn = self._validators.get(topic)
        if fn is None:
            return True
        try:
            verdict = fn(author, msg.data)
        except Exception as exc:
            log.debug("validator of %s raised %r; message dropped", topic, exc)
            self._ctx.count("handler_errors")
            verdict = False
        if verdict:
            return True
        self._ctx.count("dropped_invalid")
        if verdict is PROVABLY_INVALID:
            self._standing.charge_invalid(via)
        return False

    def _on_message(self, msg: rpc_pb2.Message) -> None:
        if msg.from_id == self._ctx.pid.to_bytes():
            return
        author = _peer_text(msg.from_id)
        for topic in msg.topicIDs:
            if topic not in self._subscriptions:
                continue
            try:
                self._inbox_send.send_nowait((topic, author, msg.data))
            except trio.WouldBlock:
                self._ctx.count("dropped_inbox_full")

    def _on_broken_stream(self, peer: ID, exc: Exception) -> None:
        # Garbage on the pubsub stream: start afresh with a new connection
        # (discovery redials known peers), as the stream's state is unknown.
        self._ctx.count("broken_streams")
        log.debug("undecodable pubsub data from %s: %r; reconnecting", peer, exc)
        self._ctx.spawn(self._ctx.drop_peer, str(peer))

    def _on_rate_limited(self, forwarder: ID, topic: str) -> None:
        self._ctx.count("dropped_rate_limited")
        log.debug("not forwarding %s message from %s: over its budget", topic, forwarder)

    def _on_queue_full(self, peer: ID, messages: int) -> None:
        self._ctx.count("dropped_queue_full", messages)
        log.debug("%d gossip message(s) for %s lost: its outbound queue is full", messages, peer)

    async def _dispatch(self) -> None:
        async for topic, author, data in self._inbox_recv:
            handler = self._subscriptions.get(topic)
            if handler is None:
                continue
            try:
                handler(author, data)
            except Exception:
                self._ctx.count("handler_errors")
                log.exception("gossip handler for %s raised", topic)
            else:
                self._ctx.count("delivered")

    # ------------------------------------------------------------ outbound

    async def publish(self, topic: str, data: bytes) -> None:
        """See :meth:`MeshHost.publish`."""
        p = self._ctx.params
        self._ctx.require_running()
        if len(data) > p.max_gossip_bytes:
            raise MessageTooLarge(
                f"gossip message of {len(data)} bytes exceeds max_gossip_bytes="
                f"{p.max_gossip_bytes}; send large payloads on a stream"
            )
        fn = self._validators.get(topic)
        if fn is not None and not fn(self._ctx.peer_id, data):
            raise InvalidMessage(f"our own validator for {topic!r} rejects this message")
        if self._publishes_pending >= p.max_pending_publishes:
            self._ctx.count("publish_dropped")
            raise PublishDropped(
                f"{self._publishes_pending} publishes already waiting "
                f"(max_pending_publishes={p.max_pending_publishes}); {topic} message dropped"
            )
        self._publishes_pending += 1
        try:
            async with self._publish_turn:
                self._ctx.require_running()
                most = min(p.publish_queue_entries, OUTBOUND_QUEUE_SIZE) - PUBLISH_QUEUE_ENTRIES
                stalled = await self.pubsub.wait_for_room(
                    lambda: self.router.publish_targets(topic), most, p.publish_wait_s
                )
                if stalled:
                    self._ctx.count("publish_wait_timeouts")
                    log.debug(
                        "outbound queues of %s did not drain in %g s",
                        [str(q) for q in stalled],
                        p.publish_wait_s,
                    )
                await self.pubsub.publish(topic, data)
        finally:
            self._publishes_pending -= 1
        self._ctx.count("published")

    # ----------------------------------------------------------- queue stats

    def queue_stats(self) -> dict[str, int]:
        """Gossip's part of :meth:`MeshHost.queue_stats` (keys documented there)."""
        total, most = self.pubsub.outbound_queue_lengths()
        return {
            "pubsub_outbound_total": total,
            "pubsub_outbound_max_peer": most,
            "pubsub_writing": self.pubsub.writing,
            "gossip_inbox": self._inbox_recv.statistics().current_buffer_used,
            "publishes_waiting": self._publishes_pending,
        }

    def services(self) -> tuple[Any, Any]:
        """(pubsub, router): the libp2p services the lifecycle runs, in order."""
        return self.pubsub, self.router
