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

A node plays three roles at once, each an object owning its own state and
sharing only the narrow :class:`~meshd.core.context.Context`:

- **origin** of the jobs submitted to it (:class:`~meshd.core.origin.Origin`):
  it offers them on the offers topic, collects bids, awards, watches leases,
  collects results, compares replicas and settles credit;
- **worker** for other nodes' jobs (:class:`~meshd.core.worker.Worker`): it
  advertises what it can run, bids on offers, accepts awards, runs them
  through the executor and returns results;
- **ledger** (:class:`~meshd.core.credits.Ledger`): receipts, countersigned
  credit entries, attestations and equivocation proofs.

``Node`` itself checks every message (signature, channel, clock window,
replay, ban, rate limit), keeps the peer table and peer standing, and routes
with dispatch tables built once: by input class, by message type and by timer
kind. A message one of its roles addresses to the node itself (its origin to
its own worker and back, specs/PROTOCOL.md §8.5) is delivered in-process
within the same step (``Context.send``, ``Node._run_due``): no
signature, no network, no acceptance checks. A role calls another only by an explicit method (origin -> ledger on
settlement, ledger -> worker to check a receipt).

Rules:
- A peer's bad input is data: it is rejected with a reason code, counted in
  ``counters`` and never raised.
- Time arrives with each input; randomness only from the injected ``rng``.
- Everything a node says is signed (the codec seals with the node's key).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar, get_args

from .context import Codec, Context, Rejection
from .credits import Ledger
from .events import (
    TOPIC_ADVERTS,
    TOPIC_OFFERS,
    TOPIC_RECEIPTS,
    AdvertTopics,
    BlobFetched,
    CancelRequested,
    CheckerFinished,
    DirectReceived,
    Effect,
    ExecutionFinished,
    ExecutionProgress,
    ExecutorHealth,
    GossipReceived,
    InboxLoad,
    Input,
    InputsFetched,
    JobSubmitted,
    LocalCapabilities,
    ManifestStored,
    PeerConnected,
    RetryRequested,
    SendFailed,
    SetPeerScore,
    ShutdownRequested,
    Tick,
)
from .identity import Identity
from .origin import Origin
from .params import CoreParams
from .peers import (
    PeerTable,
    parse_advert_topic,
    shard_count_fits,
    shard_count_for,
    shard_of,
)
from .ratelimit import TRANSPORT, RateLimiter, classes_of
from .trust import Trust
from .wire import (
    MAX_RELAYED_ADVERT_BYTES,
    AdvertPull,
    AdvertTable,
    Body,
    Opened,
    Rejected,
    open_envelope,
    seal,
)
from .worker import Worker

__all__ = ["Codec", "Node", "WireCodec"]


class WireCodec:
    """The real codec: msgpack envelopes signed with Ed25519 (``wire.py``)."""

    def seal(self, identity: Identity, body: Body, ts_ms: int, nonce: bytes) -> bytes:
        return seal(identity, body, ts_ms, nonce)

    def open(self, data: Any, max_bytes: int) -> Opened | Rejected:
        return open_envelope(data, max_bytes)


GOSSIP_TYPES = {
    TOPIC_ADVERTS: {"advert"},
    TOPIC_OFFERS: {"offer"},
    TOPIC_RECEIPTS: {"receipt_cosign", "attestation", "receipt_reversal"},
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
    "ledger_summary",
    "ledger_delta",
    "advert_pull",
    "advert_table",
}
# Timer kinds the node itself owns (each role names its own).
T_EXPIRE, T_STANDING, T_SHARDS = "expire", "standing", "shards"


_ADVERT_TYPES = GOSSIP_TYPES[TOPIC_ADVERTS]


def gossip_types(topic: str) -> set[str] | None:
    """The message types ``topic`` carries, or None for a topic we do not
    know: :data:`GOSSIP_TYPES`, and adverts on every adverts shard's topic
    (specs/PROTOCOL.md §5.2)."""
    if parse_advert_topic(topic) is not None:
        return _ADVERT_TYPES
    return GOSSIP_TYPES.get(topic)


H = TypeVar("H")


def _merge(*tables: Mapping[str, H]) -> dict[str, H]:
    """One table from several; a key claimed twice is our bug."""
    out: dict[str, H] = {}
    for t in tables:
        for k, v in t.items():
            assert k not in out, f"{k!r} is handled twice"
            out[k] = v
    return out


class Node:
    origin_class: type[Origin] = Origin
    worker_class: type[Worker] = Worker
    ledger_class: type[Ledger] = Ledger
    """The role classes (the simulator's deliberately broken cores replace one)."""

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
        self.ctx = Context(params, identity, rng, codec or WireCodec(), now_ms)
        self.identity = identity
        self.version = version
        self.started_ms = now_ms
        self._shards_since_ms = now_ms
        """When our shard count last changed (or we started): a smaller count
        is followed only on adverts issued since (§5.2)."""
        self.ratelimit = RateLimiter(params)
        self._replay: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._pulls_left = params.advert_pull_peers
        """Peers we may still ask for their adverts (a newcomer asks its first ones)."""
        self._pulled: set[str] = set()
        """Peers asked whose ``advert_table`` has not come yet."""
        self.worker = self.worker_class(self.ctx)
        self.ledger = self.ledger_class(self.ctx, self.worker)
        self.worker.balance_of = self.ledger.balance  # saturated workers prefer origins in credit
        self.origin = self.origin_class(self.ctx, self.ledger)
        self.origin.own_capacity = self.worker.capacity  # a lone node may run its own jobs
        self.ledger.on_conviction = self.origin.audit  # a conviction elsewhere audits here too
        self.ctx.trust.listener = self._standing_changed

        self._inputs: dict[type, Callable[[Any], None]] = {
            Tick: self._on_tick,
            GossipReceived: self._on_gossip,
            DirectReceived: self._on_direct,
            SendFailed: self._on_send_failed,
            InboxLoad: self._on_inbox_load,
            PeerConnected: self._on_peer_connected,
            LocalCapabilities: self.worker.on_local_capabilities,
            ExecutorHealth: self.worker.on_executor_health,
            JobSubmitted: self.origin.on_job_submitted,
            CancelRequested: self.origin.on_cancel_requested,
            RetryRequested: self.origin.on_retry_requested,
            InputsFetched: self.worker.on_inputs_fetched,
            ExecutionProgress: self.worker.on_execution_progress,
            ExecutionFinished: self.worker.on_execution_finished,
            BlobFetched: self.origin.on_blob_fetched,
            CheckerFinished: self.origin.on_checker_finished,
            ManifestStored: self.origin.on_manifest_stored,
            ShutdownRequested: self.worker.on_shutdown_requested,
        }
        """Input class -> handler; every class of ``events.Input``, no other."""
        self._direct: dict[str, Callable[[Opened], None]] = _merge(
            self.origin.direct_handlers(),
            self.worker.direct_handlers(),
            self.ledger.direct_handlers(),
            {"advert_pull": self._on_advert_pull, "advert_table": self._on_advert_table},
        )
        """Direct message type -> handler; exactly :data:`DIRECT_TYPES`."""
        self._gossip: dict[str, Callable[[Opened], None]] = _merge(
            {"advert": self._on_advert, "offer": self.worker.on_offer},
            self.ledger.gossip_handlers(),
        )
        """Gossip message type -> handler; every type of :data:`GOSSIP_TYPES`."""
        self._timers: dict[str, Callable[[Any], None]] = _merge(
            {
                T_EXPIRE: self._timer_expire,
                T_STANDING: self._timer_standing,
                T_SHARDS: self._timer_shards,
            },
            self.origin.timers(),
            self.worker.timers(),
            self.ledger.timers(),
        )
        """Timer kind -> handler."""
        self._local: dict[str, Callable[[Opened], None]] = {
            **self._direct,
            "offer": self.worker.on_offer,
        }
        """Message type -> handler for messages between our own roles."""
        assert set(self._inputs) == set(get_args(Input)), "an input without a handler"
        assert set(self._direct) == DIRECT_TYPES, "a direct message type without a handler"
        assert set(self._gossip) == set().union(*GOSSIP_TYPES.values())

        self.ctx.at(now_ms + params.advert_ttl_ms, T_EXPIRE, None)
        self.ctx.at(now_ms + params.peer_score_interval_ms, T_STANDING, None)

    # ------------------------------------------------------------ read-only views of the context

    @property
    def params(self) -> CoreParams:
        return self.ctx.params

    @property
    def peer_id(self) -> str:
        return self.ctx.peer_id

    @property
    def now_ms(self) -> int:
        return self.ctx.now_ms

    @property
    def counters(self) -> Mapping[str, int]:
        return self.ctx.counters

    @property
    def peers(self) -> PeerTable:
        return self.ctx.peers

    @property
    def trust(self) -> Trust:
        return self.ctx.trust

    @property
    def rejections(self) -> Collection[Rejection]:
        """The newest peer inputs refused (reason, peer at fault, detail)."""
        return self.ctx.rejections

    # ------------------------------------------------------------ driving

    def step(self, inp: Input, now_ms: int, wall_ms: int | None = None) -> list[Effect]:
        """Feed one input; returns the effects to carry out, appends first.

        ``now_ms`` is the shell's monotonic timeline: every timer, lease and
        window runs on it, and it never goes back (a value behind the last
        one is taken as the last one). ``wall_ms`` is the wall clock, used
        only to stamp what we sign and to judge the stamps of what we
        receive; a wall clock that jumps moves neither. Shells without a
        separate wall clock (the simulator) pass only ``now_ms``.
        """
        ctx = self.ctx
        if now_ms > ctx.now_ms:
            ctx.now_ms = now_ms
        ctx.wall_ms = ctx.now_ms if wall_ms is None else wall_ms
        self._inputs[type(inp)](inp)
        due = ctx.next_deadline()
        if due is not None and due <= ctx.now_ms:  # most steps run no timer
            self._run_due()
        return ctx.take_effects()

    def _run_due(self) -> None:
        """Run the timers due and deliver our own roles' messages to each
        other, at most ``local_messages_per_step`` of them (the rest make the
        next step due at once)."""
        ctx = self.ctx
        delivered = 0
        while True:
            while (due := ctx.pop_due()) is not None:
                kind, key = due
                self._timers[kind](key)
            if delivered >= ctx.params.local_messages_per_step:
                return
            msg = ctx.pop_local()
            if msg is None:
                return
            delivered += 1
            ctx.counters["local_" + msg.type] += 1
            self._local[msg.type](msg)

    def next_deadline(self) -> int | None:
        """When the next Tick is due (ms), or None if nothing is scheduled."""
        return self.ctx.next_deadline()

    # ------------------------------------------------------------ inputs

    def _on_tick(self, inp: Tick) -> None:
        pass  # timers run after every input

    def _on_inbox_load(self, inp: InboxLoad) -> None:
        self.ctx.inbox_wait_ms = max(0, inp.wait_ms)

    def _on_send_failed(self, inp: SendFailed) -> None:
        self.ctx.counters["send_failed"] += 1
        if inp.kind == "award":
            self.origin.on_award_failed(inp)

    def may_serve_blob(self, peer: str, digest: str) -> bool:
        """Whether ``peer`` may fetch blob ``digest`` from us (specs/PROTOCOL.md
        §5): the inputs of a job we originated, to a worker holding a live run
        of it; the output of a run we executed, to that run's origin; an image
        archive we advertise, to anyone (§5.1). Digests
        compare without their ``sha256:`` prefix. Read-only."""
        want = digest.removeprefix("sha256:")
        return self.origin.serves(peer, want) or self.worker.serves(peer, want)

    def acceptance_reason(
        self, opened: Opened, allowed: Collection[str], now_ms: int
    ) -> str | None:
        """Why a correctly signed message is not accepted, or None: its type does
        not belong on the channel, it is outside the clock window, a replay, or
        from a banned peer. ``now_ms`` is the wall clock (it judges the sender's
        stamp). Reads state only (rate limits are charged in ``_open``); the
        shell's gossip validator asks the same before libp2p forwards a
        message, so neither can drift from the other."""
        ctx = self.ctx
        p = ctx.params
        if opened.type not in allowed:
            return "wrong_channel"
        if opened.ts_ms > now_ms + p.max_clock_skew_ms:
            return "future"
        if opened.ts_ms < now_ms - p.max_message_age_ms:
            return "stale"
        if (opened.sender, opened.nonce) in self._replay:
            return "replay"
        if opened.sender != ctx.peer_id and ctx.trust.banned(opened.sender, ctx.now_ms):
            return "banned"
        return None

    def _open(self, data: Any, allowed: set[str], from_peer: str) -> Opened | None:
        ctx = self.ctx
        opened = ctx.codec.open(data, ctx.params.max_message_bytes)
        if isinstance(opened, Rejected):
            ctx.reject(opened.reason, from_peer, opened.detail)
            return None
        reason = self.acceptance_reason(opened, allowed, ctx.wall_ms)
        if reason is not None:
            ctx.reject(reason, opened.sender, f"type {opened.type!r}, stamped {opened.ts_ms}")
            return None
        # Charged to the signed author, after the cheap checks (a replay or a
        # banned peer's message costs no tokens) and before it is remembered.
        if opened.sender != ctx.peer_id and not self.ratelimit.allow(
            opened.sender, classes_of(opened.type, allowed is not DIRECT_TYPES), ctx.now_ms
        ):
            ctx.reject("rate_limited", opened.sender, opened.type)
            return None
        replay = self._replay
        replay[(opened.sender, opened.nonce)] = opened.ts_ms
        while len(replay) > ctx.params.replay_cache_size:
            replay.popitem(last=False)
        return opened

    def _transport_allows(self, from_peer: str) -> bool:
        """Charge one inbound message to the peer that carried it, before decoding."""
        ctx = self.ctx
        if from_peer == ctx.peer_id or self.ratelimit.allow(from_peer, TRANSPORT, ctx.now_ms):
            return True
        self.ctx.reject("rate_limited_transport", from_peer)
        return False

    def _on_gossip(self, inp: GossipReceived) -> None:
        if not self._transport_allows(inp.from_peer):
            return
        shard = parse_advert_topic(inp.topic)  # gossip_types, with the shard kept
        allowed = _ADVERT_TYPES if shard is not None else GOSSIP_TYPES.get(inp.topic)
        if allowed is None:
            self.ctx.reject("unknown_topic", inp.from_peer, inp.topic[:64])
            return
        msg = self._open(inp.data, allowed, inp.from_peer)
        if msg is None or msg.sender == self.ctx.peer_id:
            return
        if shard is not None and shard[0] > 1 and shard_of(msg.sender, shard[0]) != shard[1]:
            self.ctx.reject("wrong_shard", msg.sender, inp.topic[:64])
            return
        self.ctx.counters["accepted_" + msg.type] += 1
        self._gossip[msg.type](msg)

    def _on_direct(self, inp: DirectReceived) -> None:
        if not self._transport_allows(inp.from_peer):
            return
        msg = self._open(inp.data, DIRECT_TYPES, inp.from_peer)
        if msg is None:
            return
        if msg.sender != inp.from_peer:
            self.ctx.reject("wrong_sender", inp.from_peer, f"signed by {msg.sender}")
            return
        self.ctx.counters["accepted_" + msg.type] += 1
        self.origin.heard_from(msg.sender)
        self._direct[msg.type](msg)

    # ------------------------------------------------------------ peers and their standing

    def _on_advert(self, msg: Opened, age_ms: int = 0) -> None:
        peers = self.ctx.peers
        if msg.body.leaving:  # a leave notice (§7.1): signed by the peer that leaves
            if peers.leave(msg.sender, msg.body.seq):
                self.ctx.counters["peers_left"] += 1
            return
        evicted = peers.evicted
        if peers.update(msg.sender, msg.body, self.now_ms, raw=msg.raw, age_ms=age_ms):
            self.ctx.counters["adverts_applied"] += 1
        self.ctx.counters["view_evictions"] += peers.evicted - evicted

    def _on_peer_connected(self, inp: PeerConnected) -> None:
        """A newcomer asks its first ``advert_pull_peers`` peers for their
        view (§7.8); later connections ask nothing."""
        peer = inp.peer_id
        if self._pulls_left <= 0 or peer == self.peer_id or peer in self._pulled:
            return
        self._pulls_left -= 1
        self._pulled.add(peer)
        self.ctx.counters["advert_pulls_sent"] += 1
        self.ctx.send(peer, AdvertPull(max_adverts=max(1, self.params.advert_pull_max)))

    def _on_advert_pull(self, msg: Opened) -> None:
        """Answer with the freshest adverts we hold, as their authors signed
        them: at most the asked number and ``advert_pull_max``, within
        ``max_message_bytes``; ours among them."""
        p, ctx = self.params, self.ctx
        limit = min(msg.body.max_adverts, p.advert_pull_max)
        room = p.max_message_bytes - 1024  # the envelope and the list's framing
        relayed: list[bytes] = []
        own = self.worker.last_advert
        entries = sorted(ctx.peers.alive(ctx.now_ms), key=lambda e: -e.last_seen_ms)
        for raw in [own, *(e.raw for e in entries if e.peer_id != msg.sender)]:
            if len(relayed) >= limit:
                break
            if not raw or len(raw) > MAX_RELAYED_ADVERT_BYTES or len(raw) + 8 > room:
                continue
            relayed.append(raw)
            room -= len(raw) + 8
        ctx.counters["advert_pulls_answered"] += 1
        ctx.send(msg.sender, AdvertTable(adverts=relayed))

    def _on_advert_table(self, msg: Opened) -> None:
        """Adverts relayed to us as a newcomer: each checked as if gossiped
        (signature, type, ban) except that its age is judged by its own
        ``ttl_ms`` (a heartbeat may be many minutes old), and valid for what
        is left of it. Only an answer to our own ``advert_pull`` is read."""
        ctx = self.ctx
        if msg.sender not in self._pulled:
            ctx.reject("unsolicited", msg.sender, "advert_table")
            return
        self._pulled.discard(msg.sender)
        for raw in msg.body.adverts:
            advert = ctx.codec.open(raw, ctx.params.max_message_bytes)
            if isinstance(advert, Rejected):
                ctx.reject(advert.reason, msg.sender, "relayed advert: " + advert.detail)
                continue
            age = ctx.wall_ms - advert.ts_ms
            if advert.type != "advert":
                ctx.reject("wrong_channel", msg.sender, f"relayed {advert.type!r}")
            elif age < -ctx.params.max_clock_skew_ms:
                ctx.reject("future", msg.sender, f"relayed advert stamped {advert.ts_ms}")
            elif advert.sender == self.peer_id or ctx.trust.banned(advert.sender, ctx.now_ms):
                continue
            elif age >= advert.body.ttl_ms:
                ctx.counters["relayed_adverts_expired"] += 1
            else:
                ctx.counters["relayed_adverts"] += 1
                self._on_advert(advert, age_ms=max(0, age))
        self._review_shards()

    def _timer_expire(self, _key: Any) -> None:
        gone = self.ctx.peers.expire(self.now_ms)
        self.ctx.counters["peers_gone"] += len(gone)
        self.ctx.at(self.now_ms + max(1, self.params.advert_ttl_ms // 2), T_EXPIRE, None)
        self._review_shards()

    # ------------------------------------------------------------ advert shards (§5.2)

    def _shards_heard(self) -> int:
        """The shard count most live adverts in our view carry (ties: ours,
        then the larger); a count below ours counts only the adverts issued
        since we moved to ours (§5.2: those issued before say what the mesh
        was when we decided, and would take a newcomer back and forth)."""
        ctx = self.ctx
        ours = ctx.peers.shards
        votes = ctx.peers.shard_votes(ctx.now_ms)
        if any(s < ours for s in votes):
            fresh = ctx.peers.shard_votes(ctx.now_ms, since_ms=self._shards_since_ms)
            votes = {s: v for s, v in votes.items() if s >= ours}
            votes.update((s, v) for s, v in fresh.items() if s < ours)
        if not votes:
            return ours
        return max(votes, key=lambda s: (votes[s], s == ours, s))

    def _review_shards(self) -> None:
        """Change our shard count when our estimate says so (one step, with
        hysteresis: :func:`shard_count_for`), or to the count most of our
        shard's adverts carry when that one fits our estimate too, so a
        shard's nodes move together; a node younger than
        ``advert_shard_transition_ms`` follows a larger count heard at once
        (it has not heard the mesh yet: a newcomer told of it by
        ``advert_table``). Never during a change."""
        p, peers = self.params, self.ctx.peers
        if p.advert_shard_nodes <= 0 or peers.shards_from is not None:
            return
        est, now = peers.est_nodes(), peers.shards
        heard = self._shards_heard()
        if heard != now and shard_count_fits(p, est, heard):
            # a merge, or a newcomer's first move: the new shard has not heard of us
            self._change_shards(heard, announce=heard < now or self._young())
        elif heard > now and self._young():
            self._change_shards(heard, announce=True)  # a newcomer: nobody heard us yet
        elif (target := shard_count_for(p, est, now)) != now:
            self._change_shards(target, announce=target < now)

    def _change_shards(self, shards: int, *, announce: bool) -> None:
        """Move to ``shards`` shards: publish and listen on the new shard's
        topic and, until ``advert_shard_transition_ms`` passed, the old one's
        too. ``announce``: advertise at once, as the new shard has not heard
        of us (after a merge, or as a newcomer; after a split it has: it is
        half of the old one)."""
        ctx = self.ctx
        ctx.peers.set_shards(self.peer_id, shards, ctx.peers.shards)
        self._shards_since_ms = ctx.now_ms
        ctx.counters["advert_shard_changes"] += 1
        ctx.emit(AdvertTopics(ctx.peers.advert_topics(self.peer_id)))
        ctx.at(ctx.now_ms + max(1, self.params.advert_shard_transition_ms), T_SHARDS, None)
        if announce:
            self.worker.advertise_now()

    def _young(self) -> bool:
        """Started less than ``advert_shard_transition_ms`` ago: we may not
        have heard the mesh's shard count yet."""
        return self.now_ms - self.started_ms < self.params.advert_shard_transition_ms

    def start_in_shards(self, shards: int) -> list[Effect]:
        """Begin in ``shards`` shards at once, with no change to go through:
        for a shell that starts the node into a mesh already that large (the
        simulator's grown mesh, ``simulations/engine.py`` "Scale"). A daemon
        starts in one and follows what it hears (:meth:`_review_shards`)."""
        ctx = self.ctx
        ctx.peers.set_shards(self.peer_id, shards, None)
        self._shards_since_ms = ctx.now_ms
        ctx.emit(AdvertTopics(ctx.peers.advert_topics(self.peer_id)))
        return ctx.take_effects()

    def _timer_shards(self, _key: Any) -> None:
        """A change of shard count is over: leave the old shard's topic."""
        ctx = self.ctx
        if ctx.peers.shards_from is None:
            return
        ctx.peers.set_shards(self.peer_id, ctx.peers.shards, None)
        ctx.emit(AdvertTopics(ctx.peers.advert_topics(self.peer_id)))
        self._review_shards()

    def _standing_changed(self, peer: str, reputation: float, banned: bool) -> None:
        self.ctx.emit(SetPeerScore(peer, reputation, banned))
        self.ctx.counters["peer_score_updates"] += 1

    def _timer_standing(self, _key: Any) -> None:
        ctx = self.ctx
        alive = {e.peer_id for e in ctx.peers.alive(ctx.now_ms)}
        for peer in alive.union(ctx.trust.uptime_sampled()):
            if peer != ctx.peer_id:
                ctx.trust.sample_uptime(peer, peer in alive, ctx.now_ms)
        ctx.trust.refresh(ctx.now_ms)
        ctx.at(ctx.now_ms + ctx.params.peer_score_interval_ms, T_STANDING, None)

    # ------------------------------------------------------------ restore

    def restore(
        self, records: Sequence[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], int]]
    ) -> list[Effect]:
        """Rebuild state from this node's own log records, oldest first: (kind,
        body) or (kind, body, ts_ms), where ``ts_ms`` is when the record was
        written (a job's history keeps its original times).

        Returns effects to carry out after a restart (e.g. re-sending results,
        recording runs the crash abandoned).
        """
        for record in records:
            kind, body = record[0], record[1]
            self.origin.restore_record(kind, body, record[2] if len(record) > 2 else None)
            self.worker.restore_record(kind, body)
            self.ledger.restore_record(kind, body)
        self.origin.resume()
        self.worker.resume()
        self.ledger.resume()
        return self.ctx.take_effects()
