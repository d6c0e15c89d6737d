"""One mesh node's protocol state machine (sans-I/O).

Theory of operation
-------------------
``Node.step(input, now_ms) -> list[effect]`` is the only way state changes.
The shell (trio daemon, in-process cluster, simulator) feeds inputs — gossip
and direct messages as bytes, timer ticks, executor and API events — and
carries out the returned effects in order. Appends come first in every batch
(see ``events.py``), so a record is durable before anything it describes is
said to a peer or started. ``next_deadline()`` tells the shell when to send
the next :class:`Tick`.

A node plays two roles at once:

- **origin** of the jobs submitted to it (``origin.py``): it offers them on
  the offers topic, collects bids, awards, watches leases, collects results,
  compares replicas and settles credit;
- **worker** for other nodes' jobs (``worker.py``): it bids on offers it can
  run, accepts awards, runs them through the executor and returns results.

Rules:
- A peer's bad input is data: it is rejected with a reason code, counted in
  ``counters`` and never raised.
- Time arrives with each input; randomness only from the injected ``rng``.
- Everything a node says is signed (the codec seals with the node's key).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, OrderedDict
from collections.abc import Collection
from typing import Any, Protocol, cast

from .credits import CreditsMixin
from .events import (
    TOPIC_ADVERTS,
    TOPIC_OFFERS,
    TOPIC_RECEIPTS,
    Append,
    DirectReceived,
    ExecutorHealth,
    GossipReceived,
    InboxLoad,
    LocalCapabilities,
    Publish,
    Send,
    SendFailed,
    Tick,
)
from .identity import Identity
from .origin import OriginMixin
from .params import CoreParams
from .peers import PeerTable
from .placement import Capacity
from .ratelimit import TRANSPORT, classes_of
from .trust import Trust
from .wire import Advert, Body, GpuInfo, Opened, Rejected, open_envelope, seal
from .worker import WorkerMixin


class Codec(Protocol):
    """How messages are sealed and opened. The real one signs; the simulator's may not."""

    def seal(self, identity: Identity, body: Body, ts_ms: int, nonce: bytes) -> Any: ...
    def open(self, data: Any, max_bytes: int) -> Opened | Rejected: ...


class WireCodec:
    """The real codec: msgpack envelopes signed with Ed25519 (``wire.py``)."""

    def seal(self, identity: Identity, body: Body, ts_ms: int, nonce: bytes) -> bytes:
        return seal(identity, body, ts_ms, nonce)

    def open(self, data: Any, max_bytes: int) -> Opened | Rejected:
        return open_envelope(data, max_bytes)


GOSSIP_TYPES = {
    TOPIC_ADVERTS: {"advert"},
    TOPIC_OFFERS: {"offer"},
    TOPIC_RECEIPTS: {"receipt_cosign", "attestation"},
}
DIRECT_TYPES = {
    "bid",
    "decline",
    "award",
    "award_reply",
    "heartbeat",
    "heartbeat_reply",
    "result",
    "result_ack",
    "cancel",
    "receipt",
}
# Deadline kinds kept in the timer heap.
T_ADVERT, T_EXPIRE = "advert", "expire"


class Node(OriginMixin, WorkerMixin, CreditsMixin):
    def __init__(
        self,
        params: CoreParams,
        identity: Identity,
        rng: random.Random,
        now_ms: int,
        *,
        codec: Codec | None = None,
        version: str = "",
    ) -> None:
        self.params = params
        self.identity = identity
        self.peer_id = identity.peer_id
        self.rng = rng
        self.codec: Codec = codec if codec is not None else WireCodec()
        self.version = version
        self.started_ms = now_ms
        self.now_ms = now_ms
        self.wall_ms = now_ms
        self.counters: Counter[str] = Counter()
        self.peers = PeerTable(params.max_peers_tracked)
        self.trust = Trust(params)
        self.caps: LocalCapabilities | None = None
        self.warm = False
        self.cold_reason: str | None = "health check pending"
        self.executor_failures = 0
        self.inbox_wait_ms = 0
        """How long messages wait in our shell's inbox (``InboxLoad``)."""
        self._advert_seq = 0
        self._replay: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._timers: list[tuple[int, int, str, Any]] = []
        self._timer_seq = 0
        self._out: list[Any] = []
        self._appends: list[Append] = []
        self.init_origin()
        self.init_worker()
        self.init_credits()
        self._at(now_ms, T_ADVERT, None)
        self._at(now_ms + params.advert_ttl_ms, T_EXPIRE, None)

    # ------------------------------------------------------------ driving

    def step(self, inp: Any, now_ms: int, wall_ms: int | None = None) -> list[Any]:
        """Feed one input; returns the effects to carry out, appends first.

        ``now_ms`` is the shell's monotonic timeline: every timer, lease and
        window runs on it, and it never goes back (a value behind the last
        one is taken as the last one). ``wall_ms`` is the wall clock, used
        only to stamp what we sign and to judge the stamps of what we
        receive; a wall clock that jumps moves neither. Shells without a
        separate wall clock (the simulator) pass only ``now_ms``.
        """
        self.now_ms = max(self.now_ms, now_ms)
        self.wall_ms = self.now_ms if wall_ms is None else wall_ms
        handler = getattr(self, "_on_" + type(inp).__name__, None)
        assert handler is not None, f"unknown input {type(inp).__name__}"
        handler(inp)
        self._run_timers()
        out = [*self._appends, *self._out]
        self._appends, self._out = [], []
        return out

    def next_deadline(self) -> int | None:
        """When the next Tick is due (ms), or None if nothing is scheduled."""
        return self._timers[0][0] if self._timers else None

    # ------------------------------------------------------------ helpers for mixins

    def _append(self, kind: str, body: dict[str, Any], key: bytes | None = None) -> None:
        self._appends.append(Append(kind, body, key))

    def _emit(self, effect: Any) -> None:
        self._out.append(effect)

    def _seal(self, body: Body) -> Any:
        nonce = self.rng.getrandbits(64).to_bytes(8, "big")
        return self.codec.seal(self.identity, body, self.wall_ms, nonce)

    def _send(
        self, to_peer: str, body: Body, job_id: str | None = None, *, ttl_ms: int | None = None
    ) -> None:
        kind = type(body).__name__.lower()
        if ttl_ms is None:
            ttl_ms = self._useful_for_ms(kind)
        self._emit(Send(to_peer, self._seal(body), kind, job_id, ttl_ms))

    def _useful_for_ms(self, kind: str) -> int | None:
        """How long a message of ``kind`` is worth sending: a heartbeat (or its
        reply) is superseded by the next one; a bid is worth something while
        its round, or a late-bid window after it, may still use it."""
        p = self.params
        if kind in ("heartbeat", "heartbeatreply"):
            return p.heartbeat_interval_ms
        if kind in ("bid", "decline"):
            return 2 * p.bid_window_max_ms
        return None

    def _publish(self, topic: str, body: Body) -> None:
        self._emit(Publish(topic, self._seal(body)))

    def _at(self, when_ms: int, kind: str, key: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when_ms, self._timer_seq, kind, key))

    def _run_timers(self) -> None:
        while self._timers and self._timers[0][0] <= self.now_ms:
            _, _, kind, key = heapq.heappop(self._timers)
            getattr(self, "_timer_" + kind)(key)

    def _reject(self, reason: str, detail: str = "") -> None:
        self.counters["rejected_" + reason] += 1

    # ------------------------------------------------------------ inputs

    def _on_Tick(self, inp: Tick) -> None:
        pass  # timers run after every input

    def _on_InboxLoad(self, inp: InboxLoad) -> None:
        self.inbox_wait_ms = max(0, inp.wait_ms)

    def _on_LocalCapabilities(self, inp: LocalCapabilities) -> None:
        first = self.caps is None
        self.caps = inp
        if first:
            self._timer_advert(None, reschedule=False)

    def _on_ExecutorHealth(self, inp: ExecutorHealth) -> None:
        was = self.warm
        if inp.ok:
            self.warm, self.cold_reason, self.executor_failures = True, None, 0
        else:
            self.executor_failures += 1
            if self.executor_failures >= 3 or not self.warm:
                self.warm, self.cold_reason = False, inp.reason or "executor failing"
        if was != self.warm:
            self._append("node_warmth", {"warm": self.warm, "reason": self.cold_reason or ""})
            self._timer_advert(None, reschedule=False)

    def may_serve_blob(self, peer: str, digest: str) -> bool:
        """Whether ``peer`` may fetch blob ``digest`` from us (specs/PROTOCOL.md
        §5): the inputs of a job we originated, to a worker holding a live run
        of it; the output of a run we executed, to that run's origin. Digests
        compare without their ``sha256:`` prefix. Read-only."""
        want = digest.removeprefix("sha256:")
        return self.origin_serves(peer, want) or self.worker_serves(peer, want)

    def acceptance_reason(
        self, opened: Opened, allowed: Collection[str], now_ms: int
    ) -> str | None:
        """Why a correctly signed message is not accepted, or None: its type does
        not belong on the channel, it is outside the clock window, a replay, or
        from a banned peer. Reads state only (rate limits are charged in
        ``_open``); the shell's gossip validator asks the same before libp2p
        forwards a message, so neither can drift from the other."""
        p = self.params
        if opened.type not in allowed:
            return "wrong_channel"
        if opened.ts_ms > now_ms + p.max_clock_skew_ms:
            return "future"
        if opened.ts_ms < now_ms - p.max_message_age_ms:
            return "stale"
        if (opened.sender, opened.nonce) in self._replay:
            return "replay"
        if opened.sender != self.peer_id and self.trust.banned(opened.sender, now_ms):
            return "banned"
        return None

    def _open(self, data: Any, allowed: set[str]) -> Opened | None:
        opened = self.codec.open(data, self.params.max_message_bytes)
        if isinstance(opened, Rejected):
            self._reject(opened.reason, opened.detail)
            return None
        reason = self.acceptance_reason(opened, allowed, self.wall_ms)
        if reason is not None:
            self._reject(reason)
            return None
        # Charged to the signed author, after the cheap checks (a replay or a
        # banned peer's message costs no tokens) and before it is remembered.
        if opened.sender != self.peer_id and not self.ratelimit.allow(
            opened.sender, classes_of(opened.type, allowed is not DIRECT_TYPES), self.now_ms
        ):
            self._reject("rate_limited")
            return None
        self._replay[(opened.sender, opened.nonce)] = opened.ts_ms
        while len(self._replay) > self.params.replay_cache_size:
            self._replay.popitem(last=False)
        return opened

    def _transport_allows(self, from_peer: str) -> bool:
        """Charge one inbound message to the peer that carried it, before decoding."""
        if from_peer == self.peer_id or self.ratelimit.allow(from_peer, TRANSPORT, self.now_ms):
            return True
        self._reject("rate_limited_transport")
        return False

    def _on_GossipReceived(self, inp: GossipReceived) -> None:
        if not self._transport_allows(inp.from_peer):
            return
        allowed = GOSSIP_TYPES.get(inp.topic)
        if allowed is None:
            self._reject("unknown_topic")
            return
        msg = self._open(inp.data, allowed)
        if msg is None or msg.sender == self.peer_id:
            return
        self.counters["accepted_" + msg.type] += 1
        if msg.type == "advert":
            self._on_advert(msg)
        elif msg.type == "offer":
            self.worker_on_offer(msg)
        else:
            self.on_receipt_gossip(msg)

    def _on_DirectReceived(self, inp: DirectReceived) -> None:
        if not self._transport_allows(inp.from_peer):
            return
        msg = self._open(inp.data, DIRECT_TYPES)
        if msg is None:
            return
        if msg.sender != inp.from_peer:
            self._reject("wrong_sender")
            return
        self.counters["accepted_" + msg.type] += 1
        handler = getattr(self, "on_" + msg.type)
        handler(msg)

    def _on_SendFailed(self, inp: SendFailed) -> None:
        self.counters["send_failed"] += 1
        if inp.kind == "award":
            self.origin_award_failed(inp)

    # ------------------------------------------------------------ adverts

    def _on_advert(self, msg: Opened) -> None:
        if self.peers.update(msg.sender, msg.body, self.now_ms):
            self.counters["adverts_applied"] += 1

    def _timer_expire(self, _key: Any) -> None:
        gone = self.peers.expire(self.now_ms)
        self.counters["peers_gone"] += len(gone)
        self._at(self.now_ms + max(1, self.params.advert_ttl_ms // 2), T_EXPIRE, None)

    def capacity(self) -> Capacity | None:
        if self.caps is None:
            return None
        return Capacity.from_local(
            self.caps,
            warm=self.warm,
            cold_reason=self.cold_reason,
            running=self.work_running(),
            queued=self.work_queued(),
        )

    def make_advert(self) -> Advert | None:
        c = self.caps
        if c is None:
            return None
        # Seeded from the clock so a restarted node's adverts outrank the ones
        # it sent before the restart (peers ignore a seq they have seen).
        self._advert_seq = max(self._advert_seq + 1, self.now_ms)
        return Advert(
            seq=self._advert_seq,
            ttl_ms=self.params.advert_ttl_ms,
            addrs=list(c.addrs)[:16],
            cores=c.cores,
            ram_mb=c.ram_mb,
            disk_free_mb=c.disk_free_mb,
            gpus=[GpuInfo(model=m, memory_mb=mem) for m, mem in c.gpus],
            gpu_runtime=c.gpu_runtime,
            # pydantic checks both against the wire's literals when the advert is built
            runtimes=cast(Any, list(c.runtimes)),
            images=list(c.images)[:256],
            score_gflops=c.score_gflops,
            gpu_gflops=c.gpu_gflops,
            tier=cast(Any, c.tier),
            price=c.price,
            running=self.work_running(),
            queued=self.work_queued(),
            capacity=c.capacity,
            warm=self.warm,
            cold_reason=self.cold_reason,
            network_allowed=c.network_allowed,
            version=c.version,
        )

    def _timer_advert(self, _key: Any, reschedule: bool = True) -> None:
        advert = self.make_advert()
        if advert is not None:
            self._publish(TOPIC_ADVERTS, advert)
            self.counters["adverts_sent"] += 1
        if reschedule:
            self._at(self.now_ms + self.params.advert_interval_ms, T_ADVERT, None)

    # ------------------------------------------------------------ restore

    def restore(self, records: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Rebuild state from this node's own log records (kind, body), oldest first.

        Returns effects to carry out after a restart (e.g. re-sending results,
        recording runs the crash abandoned).
        """
        for kind, body in records:
            self.restore_origin_record(kind, body)
            self.restore_worker_record(kind, body)
            self.restore_credits_record(kind, body)
        self.resume_origin()
        self.resume_worker()
        self.resume_credits()
        out = [*self._appends, *self._out]
        self._appends, self._out = [], []
        return out
