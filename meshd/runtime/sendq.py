"""Per-peer bounded send queues for direct messages.

Theory of operation
-------------------
The core's ``Send`` effects are sealed (signed and time-stamped) when the
core makes them. Before this module, each became its own task waiting on a
per-peer semaphore: under a burst a worker held hundreds of bids for a
congested origin, each sent long after its round had closed, and an origin
received bids and award replies minutes late (``rejected_stale``), timed out,
re-offered and so made more of them: congestion collapse. Now each peer has a
bounded queue drained by at most ``max_sends_per_peer`` requests at once,
in two classes: messages about work already placed (awards and their
replies, heartbeats, results, cancels, receipts) go before answers about new
work (bids, declines), FIFO within each class. And:

- a message not sent within its useful life (``Send.ttl_ms``, else
  ``send_max_age_ms``) is dropped unsent (``expired``);
- a newer heartbeat, heartbeat reply, bid or decline for the same job
  replaces one still queued (``coalesced``): only the latest says anything
  (unless the queued one says ``Send.coalesce=False``: a heartbeat carrying
  live output is never replaced);
- a full peer queue drops its oldest message (``dropped_full``); past
  ``max_queued_sends`` in all, the new message is refused (``refused_full``).

Every message that is not delivered is reported through ``on_failed`` (the
daemon turns it into ``SendFailed``), so the core's award bookkeeping never
waits on a message that will never leave.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from meshd.core.events import MAX_ERROR_CHARS, Send

from .metrics import Metrics, by_label

OUTCOMES = ("sent", "failed", "expired", "coalesced", "dropped_full", "refused_full")
"""What becomes of a queued message (``meshd_send_queue_messages_total{outcome}``)."""

log = logging.getLogger("meshd.sendq")

COALESCING_KINDS = frozenset({"heartbeat", "heartbeatreply", "bid", "decline"})
"""Kinds of which only the newest queued message per (peer, job) is worth sending."""
NEW_WORK_KINDS = frozenset({"bid", "decline"})
"""Answers about new work; everything else concerns work already placed and is
sent first (finishing placed work frees the capacity new work needs)."""


@dataclass(frozen=True)
class SendQueueParams:
    max_sends_per_peer: int = 4
    """Direct messages in flight to one peer; more wait in its queue (py-libp2p
    stalls stream negotiation under a burst of concurrent opens to one peer)."""
    max_concurrent_sends: int = 128
    """Direct messages in flight at once, all peers together."""
    send_queue_per_peer: int = 256
    """Messages waiting for one peer; beyond it the oldest is dropped."""
    max_queued_sends: int = 8_192
    """Messages waiting for all peers together; beyond it a new one is refused."""
    send_max_age_ms: int = 30_000
    """Useful life of a message whose ``Send.ttl_ms`` is unset: one that could
    not be sent within it is dropped."""
    send_retries: int = 1
    """Extra attempts for a message whose stream could not be opened."""
    send_retry_delay_s: float = 0.2
    """Pause before such a retry."""


@dataclass
class _Item:
    eff: Send
    queued_ms: int


class SendQueues:
    def __init__(
        self,
        params: SendQueueParams,
        *,
        request: Callable[[str, bytes], Awaitable[Any]],
        on_failed: Callable[[Send, str], None],
        clock_ms: Callable[[], int],
        retryable: tuple[type[BaseException], ...] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.params = params
        self._request = request
        self._on_failed = on_failed
        self._clock_ms = clock_ms
        self._retryable = retryable
        self._queues: dict[str, deque[_Item]] = {}
        self._drainers: dict[str, int] = {}
        self._queued = 0
        self._in_flight = 0
        self._global = trio.Semaphore(params.max_concurrent_sends)
        self._nursery: trio.Nursery | None = None
        self._metrics = metrics if metrics is not None else Metrics()
        self._count = self._metrics.send_queue.labels
        self.wait_max_ms = 0
        self.high_water = 0
        """Most messages ever queued at once, all peers together."""
        self.high_water_peer = 0
        """Most messages ever queued at once for one peer."""

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    # ------------------------------------------------------------ producing

    def put(self, eff: Send) -> None:
        """Queue one message (never blocks)."""
        assert self._nursery is not None, "start() first"
        now = self._clock_ms()
        q = self._queues.setdefault(eff.to_peer, deque())
        if eff.kind in COALESCING_KINDS and eff.job_id is not None:
            for i, item in enumerate(q):
                if (
                    item.eff.kind == eff.kind
                    and item.eff.job_id == eff.job_id
                    and item.eff.coalesce
                ):
                    q[i] = _Item(eff, item.queued_ms)  # keeps its place, says the newest
                    self._count("coalesced").inc()
                    return
        if self._queued >= self.params.max_queued_sends:
            self._fail(eff, "refused_full", "send queues full")
            return
        if len(q) >= self.params.send_queue_per_peer:
            old = q.popleft()
            self._queued -= 1
            self._fail(old.eff, "dropped_full", "send queue to peer full")
        if eff.kind in NEW_WORK_KINDS:
            q.append(_Item(eff, now))
        else:  # ahead of every queued bid or decline, behind the other placed-work messages
            i = len(q)
            while i > 0 and q[i - 1].eff.kind in NEW_WORK_KINDS:
                i -= 1
            q.insert(i, _Item(eff, now))
        self._queued += 1
        self.high_water = max(self.high_water, self._queued)
        self.high_water_peer = max(self.high_water_peer, len(q))
        if self._drainers.get(eff.to_peer, 0) < self.params.max_sends_per_peer:
            self._drainers[eff.to_peer] = self._drainers.get(eff.to_peer, 0) + 1
            self._nursery.start_soon(self._drain, eff.to_peer)

    def _fail(self, eff: Send, count: str, why: str) -> None:
        self._count(count).inc()
        self._on_failed(eff, why)

    # ------------------------------------------------------------ draining

    async def _drain(self, peer: str) -> None:
        try:
            while True:
                q = self._queues.get(peer)
                if not q:
                    return
                item = q.popleft()
                self._queued -= 1
                waited = self._clock_ms() - item.queued_ms
                self.wait_max_ms = max(self.wait_max_ms, waited)
                ttl = item.eff.ttl_ms
                if waited > (ttl if ttl is not None else self.params.send_max_age_ms):
                    self._fail(item.eff, "expired", f"not sent within {waited} ms (expired)")
                    continue
                async with self._global:
                    self._in_flight += 1
                    try:
                        await self._send_one(item.eff)
                    finally:
                        self._in_flight -= 1
        finally:
            self._drainers[peer] -= 1
            if not self._drainers[peer]:
                del self._drainers[peer]
                if not self._queues.get(peer):
                    self._queues.pop(peer, None)

    async def _send_one(self, eff: Send) -> None:
        for attempt in range(self.params.send_retries + 1):
            try:
                await self._request(eff.to_peer, eff.data)
                self._count("sent").inc()
                return
            except self._retryable as exc:
                if attempt == self.params.send_retries:
                    self._fail_exc(eff, exc)
                    return
                await trio.sleep(self.params.send_retry_delay_s)
            except Exception as exc:
                self._fail_exc(eff, exc)
                return

    def _fail_exc(self, eff: Send, exc: BaseException) -> None:
        log.debug("send %s to %s failed: %s (%r)", eff.kind, eff.to_peer, exc, exc.__cause__)
        self._fail(eff, "failed", str(exc)[:MAX_ERROR_CHARS])

    # ------------------------------------------------------------ reading

    def counts(self) -> dict[str, int]:
        """Messages by what became of them (:data:`OUTCOMES`), from the registry."""
        done = by_label(self._metrics.send_queue, "outcome")
        return {outcome: done[outcome] for outcome in OUTCOMES}

    def statistics(self) -> dict[str, int]:
        """Queued now (all peers, and the longest one queue), in flight, and
        the running counts of sent, failed, expired, coalesced and dropped."""
        return {
            "queued": self._queued,
            "queued_max_peer": max((len(q) for q in self._queues.values()), default=0),
            "peers": len(self._queues),
            "in_flight": self._in_flight,
            "high_water": self.high_water,
            "high_water_peer": self.high_water_peer,
            "bound": self.params.max_queued_sends,
            "bound_peer": self.params.send_queue_per_peer,
            "wait_max_ms": self.wait_max_ms,
            **self.counts(),
        }
