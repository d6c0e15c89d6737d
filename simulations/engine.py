"""The discrete-event engine: one event queue in virtual ms driving many core nodes.

Theory of operation
-------------------
Everything that happens is an event ``(kind, payload)`` at a virtual ms in
one queue (:meth:`Engine.at`), run in time order and, within a ms, in the
order scheduled, so a run is a pure function of
its seed (one ``random.Random(seed)`` hierarchy, plus one numpy generator
seeded from it; no wall clock, no set iteration in decisions). Each pop feeds
one input to one node (``Node.step``) and carries out the effects in order
(appends first — checked). A node's timers are one queued event at its
``next_deadline()``, re-armed after every step.

Network model: direct messages get a lognormal latency per message, may be
lost or duplicated, and fail (``SendFailed`` after ``connect_timeout_ms``)
across a partition or to a dead node. Executions last
``actual_work / (speed × 1e9)``; liars return a wrong digest with ``lie_rate``.

Scale (the O(N²) parts of gossip)
---------------------------------
*Offers* are gossiped to every node, and every fitting node bids. But an origin
closes its bid window on the ``bids_enough``-th bid, and a bid or decline that
arrives after the window closed changes nothing (``bid_late``; a worker's
answer to an offer changes no worker state). So for each offer we draw, for
every node, the offer latency ``l1`` and reply latency ``l2``, and walk the
nodes in order of ``r = l1 + l2`` — the order their answers reach the origin —
delivering the offer to node ``k`` at ``max(t0 + l1_k, previous delivery)``
and forcing its reply to arrive at ``t0 + r_k``. The walk stops as soon as the
origin's window for that attempt is closed, or when ``r`` exceeds the bid
window. The bids the origin sees, and when, are those of full delivery; the
only difference is that a node may read its own state up to one round trip
later than the offer reached it (as if it had queued the offer). Cost per
offer: a handful of deliveries instead of N. ``gossip_mode=full`` delivers
every copy (used by a test to check both modes agree). The 2N latencies are
still drawn (the seeded stream stays as it was), but only the first
``OFFER_ORDER_PREFIX`` nodes are put in answer order (:func:`answer_order`);
a walk that gets further sorts the rest then.

*Receipts and attestations* (``TOPIC_RECEIPTS``) are gossiped to every node
in the protocol — two to four per job, each costing every node a hash and a
ledger update. Up to 256 nodes they reach everyone; above, each node hears
them from 16 peers (``receipt_fanout`` knob). This thins the
remote reputation evidence (attestations) a node gets, so it understates how
fast gossip spreads news of a liar; origins' own observations are unaffected.
One node hears every countersignature all the same: the origin of the
receipt it countersigns. In a daemon mesh gossip brings the origin its own
receipts' countersignatures, which stop its re-sends (``receipt_resend_ms``,
``receipt_resend_max``); thinned away, every origin would re-send each
receipt to its worker until it gives up, a cost and a ledger a daemon mesh
does not have. The credit evidence is thinned all the same: a worker's
ledger holds the receipts of ~16 publishers, not of all, so the balances
it reads when it has no free slot (``credit_declines``, CREDITS.md §7.5)
are nearer zero than in a daemon mesh and credit declines are understated.

*Ledger anti-entropy with thinned receipts.* In a daemon mesh gossip
delivers every receipt to every node, so ledgers converge and a sync round
(CREDITS.md §7.4) finds equal summaries and gets an empty answer: it changes
no ledger. Thinned ledgers never converge, so delivered summaries would be
answered with receipts the thinning left out, every round at its ceiling
(``ledger_sync_max_receipts`` × (1 + ``ledger_sync_max_followups``) receipts
per ``ledger_sync_interval_ms``), each node's ledger filling towards
``max_ledger_receipts`` — sync would undo the thinning at a cost the model
exists to avoid (at 10,000 nodes it did not fit memory). So whenever
receipts are thinned, the simulator models ledgers as converged: a node's
core still runs its sync timer and builds its summary, with the daemon's
parameters, but the engine does not deliver a ``ledger_summary`` (counted
in ``stats["ledger_sync_converged"]``), as the equal summary and the empty
answer of a converged mesh would change nothing. What this leaves out: the
answerer's compare and the empty answer's CPU (only with ``cpu_model`` on),
one rate-limit token of the asker's per round at the answerer, and the
repair of a restarted node's ledger (its gossip-only entries stay lost, so
balances it reads after a restart are still nearer zero). Up to 256 nodes
(nothing thinned) sync runs in full, as in the daemon.

*Adverts* are paced, timed, kept and sharded by the core itself, as in the
daemon (specs/PROTOCOL.md §5.2, §6, §7.1): each node heartbeats at the
interval its own estimate of its shard gives, advertises changes within the
same token rate, carries the scaled TTL, keeps a view of at most
``advert_view_max`` peers by the core's eviction rule, and moves between
shard counts by the core's rule, telling the engine its adverts topics
(``AdvertTopics``). An advert reaches the nodes listening on the topic it
was published on when it arrives (one queued event per publish, one shared
decoded object for all of them): its shard, and during a change of shard
count the old shard's topic too. The mesh starts as a grown one: every node
starts in the shard count its size gives (:func:`grown_shards`, the count
the daemon's rule settles on as a mesh grows), so boot adverts reach a
shard (the daemon's mesh would have grown into it; a simulated boot of N
nodes in one shard would cost N² steps). At that start each node's
executor has been checked already: its first health check reaches its core
before its capabilities (``boot(checked=True)``), so its first advert says it
is warm and is its only one at boot. (A starting daemon advertises cold,
then warm seconds later when the check passes; in a simulated boot both
would come in the same millisecond, the cold one superseded at once, at the
cost of a second boot advert to every node of the shard.) The bucket of
adverts on change is one token fuller afterwards than after the daemon's
two. A restarted node boots in the daemon's order, starts afresh in one
shard, as a daemon does, is told of three live peers
(``PeerConnected``), as the daemon reports its first connections, pulls
their adverts (§7.8) and follows the shard count they carry. Bidding does
not read the view: offers reach every node. Because views are partial, an
origin often has no advert for the worker it awarded, and credits it its
bid price (``Ledger.run_credits``).

CPU model (knob ``cpu_model``, off by default)
----------------------------------------------
Off, a node handles every input the instant it arrives (free CPU). On, every
input goes into the node's :class:`meshd.core.inbox.Inbox` (the daemon's own
class): deliveries of direct messages in lane ``DIRECT``, gossip (offers,
adverts, receipts) in ``GOSSIP``, the node's own events (submits, executor,
fetches, ``SendFailed``, timer ticks) in ``LOCAL``. The node handles one
input at a time; one costs its :class:`simulations.costs.CpuCosts` figure
(ticks and ``InboxLoad`` none) times the node's ``cpu_slowdown``, plus one durable append when
the step returned appends and one seal per message it sends. The core steps
when the handling starts and its effects happen when it ends. CPU time is
kept in µs per node (``free_at_us``); one queued event handles every input
that starts within the same ms. A direct message refused by a full lane makes
its sender get ``SendFailed(error="busy")`` one latency later, as the daemon
answers. The inbox sheds and drops by its own rules; its statistics are the
run's per-node waits and sheds. Like the daemon, the engine tells a node's
core its congestion (``InboxLoad``: the longest wait of a peer's message
handled in the last ``LOAD_REPORT_MS``) once a second while it is busy.
Not modelled: the daemon's group commit (one synced write for up to 64
inputs handled in one turn); here each step that appends pays one write.

The lazy offer walk cannot hold under this model: a bid that misses its
window still costs the origin CPU (and may reopen a round by late binding),
which is the very load the model is for. So with ``cpu_model`` on, every
offer copy is delivered (as ``gossip_mode=full``), each through its
receiver's inbox; runs with the model off keep the lazy walk.

Split runs
----------
With ``Engine.part`` set (``python -m simulations run ... --procs N``), this
engine is one of ``N`` processes, each stepping the nodes whose index is its
own modulo ``N``; events for another process's nodes leave through
``part.cross`` at least the lookahead on, and the processes advance a window
of that many ms at a time (``simulations/parallel.py``, which says what
differs from one process).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from meshd.core.events import (
    TOPIC_ADVERTS,
    TOPIC_OFFERS,
    AdvertTopics,
    Append,
    BlobFetched,
    CancelExecution,
    CheckerFinished,
    DirectReceived,
    ExecutionFinished,
    ExecutorHealth,
    FetchBlob,
    FetchInputs,
    FetchLog,
    GossipReceived,
    InboxLoad,
    InputsFetched,
    JobLog,
    JobSubmitted,
    PeerConnected,
    Publish,
    RunChecker,
    Send,
    SendFailed,
    SetPeerScore,
    StartExecution,
    Tick,
)
from meshd.core.identity import Identity
from meshd.core.inbox import Inbox, InboxParams, Lane, direct_lane
from meshd.core.interpreter import EffectInterpreter, UnknownEffect
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.peers import parse_advert_topic, shard_count_for
from meshd.core.wire import Opened

from .codec import SimCodec, as_wire
from .costs import DEFAULT_COSTS, CpuCosts
from .knobs import Knobs
from .workload import Hardware, JobPlan, lie_digest

if TYPE_CHECKING:
    from .parallel import Share

# Event kinds (ints: cheap to compare and to hash into the trace).
(
    EV_INPUT,
    EV_LOCAL,
    EV_TICK,
    EV_FINISH,
    EV_OFFER,
    EV_ADVERT,
    EV_CALL,
    EV_CPU,
    EV_DONE,
    EV_LOAD,
    EV_XOFFER,
) = range(11)
RESTART_CONNECTIONS = 3
"""Live peers a restarted node is told it connected to (``PeerConnected``)."""
OFFER_ORDER_PREFIX = 64
"""Nodes a lazy offer walk puts in answer order at first; it rarely reaches
further (the window closes after ``bids_enough`` bids) and sorts the rest
only if it does (:func:`answer_order`)."""
RECEIPT_SAMPLED_REACH = 16
"""Receipts and attestations reach this many nodes beyond 256 nodes."""
LOAD_REPORT_MS = 1_000
"""How often a busy node's core is told its inbox wait (``InboxLoad``), as the daemon does."""
RunKey = tuple[str, int, int]

INPUT_CODES = {
    name: i
    for i, name in enumerate(
        [
            "Tick",
            "GossipReceived",
            "DirectReceived",
            "SendFailed",
            "LocalCapabilities",
            "ExecutorHealth",
            "JobSubmitted",
            "InputsFetched",
            "ExecutionFinished",
            "BlobFetched",
            "CheckerFinished",
            "PeerConnected",
        ]
    )
}
MSG_CODES = {
    name: i
    for i, name in enumerate(
        [
            "advert",
            "offer",
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
            "attestation",
            "ledger_summary",
            "ledger_delta",
            "receipt_reversal",
            "advert_pull",
            "advert_table",
        ]
    )
}


def grown_shards(params: CoreParams, nodes: int) -> int:
    """The shard count a mesh of ``nodes`` nodes settles on as it grows: the
    core's rule (:func:`shard_count_for`) applied from one shard until it
    keeps the count."""
    shards = 1
    while (nxt := shard_count_for(params, nodes, shards)) > shards:
        shards = nxt
    return shards


def answer_order(r: np.ndarray, m: int) -> tuple[list[int], bool]:
    """The first (at least ``m``) node indices of ``np.argsort(r, kind="stable")``,
    and whether they are all of them: the ``m`` smallest answer times and every
    tie of the largest, ordered by (time, index) as the stable sort orders
    them, without sorting all N."""
    if m >= len(r):
        return np.argsort(r, kind="stable").tolist(), True
    cut = np.partition(r, m - 1)[m - 1]
    first = np.flatnonzero(r <= cut)  # ascending index: the stable sort keeps ties so
    return first[np.argsort(r[first], kind="stable")].tolist(), False


class SimFailure(Exception):
    """An invariant broke; ``str()`` carries the replay command."""


@dataclass
class Slot:
    """One simulated machine: its identity, hardware, durable log and current core."""

    idx: int
    identity: Identity
    hw: Hardware
    node: Node
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    log_keys: set[bytes] = field(default_factory=set)
    alive: bool = True
    dying: bool = False
    incarnation: int = 0
    running: dict[RunKey, int] = field(default_factory=dict)
    tick_at: int | None = None
    group: int = 0
    # --- CPU model (engine.py, "CPU model"); unused when it is off
    cpu_slowdown: float = 1.0
    inbox: Inbox[Any] | None = None
    local_waiting: list[tuple[Any, int]] = field(default_factory=list)
    """Own events that found the LOCAL lane full (the producer waits for room)."""
    free_at_us: int = 0
    cpu_armed: bool = False
    tick_queued: bool = False
    cpu_us: int = 0
    wait_window_ms: int = 0
    """Longest wait of a peer's message handled since the last ``InboxLoad`` report."""
    load_reported_ms: int = 0
    load_armed: bool = False

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id


class SlotEffects(EffectInterpreter):
    """Carries out one simulated node's effects through the engine: its log,
    the network model, the fake executor and transfers. The engine's ``apply``
    checks the batch (append-first, torn crashes) and dispatches each effect here."""

    def __init__(self, engine: Engine, slot: Slot) -> None:
        self.engine = engine
        self.slot = slot

    def do_append(self, eff: Append) -> None:
        self.engine._append(self.slot, eff)

    def do_publish(self, eff: Publish) -> None:
        self.engine._publish(self.slot, eff)

    def do_send(self, eff: Send) -> None:
        self.engine._send(self.slot, eff)

    def do_fetch_inputs(self, eff: FetchInputs) -> None:
        e = self.engine
        e._local(
            self.slot,
            1 + e.rng_exec.randrange(20),
            InputsFetched(eff.job_id, eff.attempt, eff.replica, True),
        )

    def do_start_execution(self, eff: StartExecution) -> None:
        self.engine._start(self.slot, eff)

    def do_cancel_execution(self, eff: CancelExecution) -> None:
        self.slot.running.pop((eff.job_id, eff.attempt, eff.replica), None)

    def do_fetch_blob(self, eff: FetchBlob) -> None:
        self.engine._fetch_blob(self.slot, eff)

    def do_run_checker(self, eff: RunChecker) -> None:
        self.engine._local(self.slot, 1, CheckerFinished(eff.job_id, eff.a, eff.b, False))

    def do_job_log(self, eff: JobLog) -> None:
        self._count(eff)

    def do_fetch_log(self, eff: FetchLog) -> None:
        self._count(eff)

    def do_set_peer_score(self, eff: SetPeerScore) -> None:
        self._count(eff)

    def do_advert_topics(self, eff: AdvertTopics) -> None:
        self.engine.set_advert_topics(self.slot.idx, eff.topics)

    def _count(self, eff: Any) -> None:
        stats, name = self.engine.stats, type(eff).__name__
        stats[name] = stats.get(name, 0) + 1


@dataclass
class OfferCast:
    origin: int
    incarnation: int
    t0: int
    job_id: str
    attempt: int
    data: Opened
    order: list[int]
    l1: np.ndarray
    r: np.ndarray
    k: int = 0
    last_ms: int = 0
    stop_early: bool = True
    complete: bool = True
    """False while ``order`` holds only the first nodes of the answer order
    (:func:`answer_order`); :meth:`Engine._offer_next` sorts the rest when it
    gets there."""
    bids_in_flight: int = 0
    """Bids sent to the origin by earlier candidates (they arrive no later than the next answer)."""
    cast_id: tuple[int, int] = (0, 0)
    """In a split run (``simulations.parallel``): the cast's id in every process."""


class Engine:
    """Holds the nodes, the event queue and the network; scenarios script it."""

    def __init__(
        self,
        seed: int,
        hw: list[Hardware],
        knobs: Knobs,
        params: CoreParams,
        node_factory: Callable[..., Node] = Node,
        start_ms: int = 1_000_000,
        costs: CpuCosts = DEFAULT_COSTS,
        inbox_params: InboxParams | None = None,
    ) -> None:
        self.seed = seed
        self.knobs = knobs
        self.params = params
        self.node_factory = node_factory
        self.cpu = knobs.cpu_model
        self.costs = costs
        self.inbox_params = inbox_params or InboxParams()
        master = random.Random(seed)
        self.rng_net = random.Random(master.getrandbits(64))
        self.rng_exec = random.Random(master.getrandbits(64))
        self.rng_nodes = random.Random(master.getrandbits(64))
        self.rng_adv = random.Random(master.getrandbits(64))
        self.np = np.random.default_rng(master.getrandbits(64))
        self.codec = SimCodec()
        self.now = start_ms
        self._due: dict[int, deque[tuple[int, Any]]] = {}
        """The events of each virtual ms that has any, in the order they were
        scheduled (see :meth:`at`)."""
        self._times: list[int] = []
        """A heap of the ms that have events (a key of ``_due`` each)."""
        self.trace = 0
        self.events = 0
        self.partitioned = False
        self.hooks: list[
            Any
        ] = []  # observers with on_append(slot, kind, body) / on_start(slot, eff)
        self.stats: dict[str, int] = {}
        self.jobs_by_id: dict[str, JobPlan] = {}
        self.produced: dict[str, set[str]] = {}
        self.recent: list[Opened] = []  # envelopes a spammer can replay
        self.slots: list[Slot] = []
        self.by_peer: dict[str, int] = {}
        for i, h in enumerate(hw):
            ident = Identity.from_seed_int(seed * 1_000_003 + i + 1)
            slot = Slot(i, ident, h, self._new_node(ident))
            if self.cpu:
                slot.inbox = Inbox(self.inbox_params)
            self.slots.append(slot)
            self.by_peer[ident.peer_id] = i
        self.interpreters = [SlotEffects(self, slot) for slot in self.slots]
        """Each node's effect interpreter, by slot index."""
        self.advert_members: dict[str, dict[int, None]] = {}
        """Per adverts topic, the nodes listening on it (in the order they joined)."""
        self.advert_topics_of: list[tuple[str, ...]] = [()] * len(hw)
        """Per node, the adverts topics it listens on (its last ``AdvertTopics``)."""
        shards = grown_shards(params, len(hw))
        for slot in self.slots:
            self.set_advert_topics(slot.idx, (TOPIC_ADVERTS,))
            if shards > 1:
                self.apply(slot, slot.node.start_in_shards(shards))
        rf = (
            knobs.receipt_fanout
            if knobs.receipt_fanout >= 0
            else (0 if len(hw) <= 256 else RECEIPT_SAMPLED_REACH)
        )
        self.receipt_subscribers = self._draw_views(len(hw), rf) if rf else None
        self._forced: tuple[str, int] | None = (
            None  # (to_peer, arrival) while a node answers an offer
        )
        self._forced_bids = 0
        self.part: Share | None = None
        """In a split run, this process's ``simulations.parallel.Share``: the
        nodes it owns (index modulo count), where events for the others go."""

    # ------------------------------------------------------------ setup

    def owns(self, idx: int) -> bool:
        """Whether this process steps node ``idx`` (always, unless the run is split)."""
        part = self.part
        return part is None or idx % part.count == part.index

    def owned_slots(self) -> list[Slot]:
        """The nodes this process steps: all of them, or its share of a split run."""
        part = self.part
        return self.slots if part is None else self.slots[part.index :: part.count]

    def _new_node(self, ident: Identity) -> Node:
        rng = random.Random(self.rng_nodes.getrandbits(64))
        return self.node_factory(self.params, ident, rng, self.now, codec=self.codec, version="sim")

    def _draw_views(self, n: int, fanout: int) -> list[list[int]]:
        """subscribers[j]: the nodes whose peer view includes j (each node tracks ``fanout`` peers)."""
        subs: list[list[int]] = [[] for _ in range(n)]
        k = min(max(0, fanout), n - 1)
        for i in range(n):
            for j in self.rng_adv.sample(range(n - 1), k):
                subs[j if j < i else j + 1].append(i)
        return subs

    def set_advert_topics(self, idx: int, topics: tuple[str, ...]) -> None:
        """Node ``idx`` listens on exactly ``topics`` among the adverts topics."""
        for t in self.advert_topics_of[idx]:
            if t not in topics:
                self.advert_members[t].pop(idx, None)
        for t in topics:
            self.advert_members.setdefault(t, {})[idx] = None
        self.advert_topics_of[idx] = topics

    def boot(self, slot: Slot, delay_ms: int, *, checked: bool = False) -> None:
        """Give ``slot``'s core its capabilities and its executor's first
        health check ``delay_ms`` from now: in the daemon's order (capabilities,
        then the check, so it advertises cold, then warm), or, ``checked``, the
        check first, so its first advert says it is warm and is its only one
        at boot (see "Scale": the grown mesh's start)."""
        caps = (slot.idx, slot.incarnation, slot.hw.caps())
        health = (slot.idx, slot.incarnation, ExecutorHealth(True))
        for inp in (health, caps) if checked else (caps, health):
            self.at(self.now + delay_ms, EV_LOCAL, inp)

    # ------------------------------------------------------------ event queue

    def at(self, when_ms: int, kind: int, payload: Any) -> None:
        """Schedule an event at ``when_ms``. Events run in (time, order
        scheduled): a heap of the distinct ms and, for each, a queue in the
        order of scheduling, so most events cost an append and a pop instead
        of a heap operation (a large run keeps hundreds of thousands in
        flight); the order is the one a heap of (time, sequence) gives."""
        due = self._due.get(when_ms)
        if due is None:
            due = self._due[when_ms] = deque()
            heapq.heappush(self._times, when_ms)
        due.append((kind, payload))

    def call_at(self, when_ms: int, fn: Callable[[], None]) -> None:
        self.at(when_ms, EV_CALL, fn)

    def run_until(
        self, end_ms: int, stop: Callable[[], bool] | None = None, check_every: int = 2_000
    ) -> None:
        times, by_ms, pop = self._times, self._due, heapq.heappop
        n = 0
        while times and times[0] <= end_ms:
            t = times[0]
            due = by_ms[t]
            kind, payload = due.popleft()
            if not due:  # an event it schedules for this ms opens a new queue, after it
                pop(times)
                del by_ms[t]
            self.now = t
            self._dispatch(kind, payload)
            n += 1
            if stop is not None and n % check_every == 0 and stop():
                return
        self.now = max(self.now, end_ms)

    def _dispatch(self, kind: int, p: Any) -> None:
        if kind == EV_INPUT:
            slot = self.slots[p[0]]
            if slot.alive and slot.inbox is None:  # CPU model off: no lane to pick
                self.feed(slot, p[1])
            elif slot.alive:
                inp = p[1]
                lane = (
                    Lane.GOSSIP
                    if type(inp) is GossipReceived
                    else direct_lane(inp.data, slot.node.params.max_message_bytes)
                    if type(inp) is DirectReceived and getattr(slot.node, "sim_bid_lane", True)
                    else Lane.DIRECT
                )
                self.deliver(slot, inp, lane, p)
        elif kind == EV_LOCAL:
            slot = self.slots[p[0]]
            if slot.alive and slot.incarnation == p[1]:
                self.deliver(slot, p[2], Lane.LOCAL)
        elif kind == EV_TICK:
            slot = self.slots[p[0]]
            if slot.alive and slot.incarnation == p[1] and slot.tick_at == self.now:
                slot.tick_at = None
                if not slot.tick_queued:
                    slot.tick_queued = self.cpu
                    self.deliver(slot, Tick(), Lane.LOCAL)
        elif kind == EV_CPU:
            self._cpu_run(p)
        elif kind == EV_DONE:
            self._cpu_done(p)
        elif kind == EV_LOAD:
            self._report_load(p)
        elif kind == EV_FINISH:
            self._finish(p)
        elif kind == EV_OFFER:
            self._offer_step(p)
        elif kind == EV_ADVERT:
            self._advert_cast(p)
        elif kind == EV_XOFFER:
            self._remote_cast(p)
        else:
            p()

    # ------------------------------------------------------------ stepping

    def feed(self, slot: Slot, inp: Any) -> None:
        """Step ``slot`` with ``inp`` now and carry out its effects (free CPU)."""
        self.apply(slot, self._step(slot, inp))
        self._arm(slot)

    def _step(self, slot: Slot, inp: Any, codes: tuple[int, int] | None = None) -> list[Any]:
        """Step ``slot``'s core with ``inp`` and fold the step into the trace
        (``codes``: the input's and message's trace codes when the caller knows them)."""
        node = slot.node
        self.events += 1
        if codes is None:
            code = INPUT_CODES.get(type(inp).__name__, 99)
            data = getattr(inp, "data", None)
            mcode = MSG_CODES.get(data.type, 50) if type(data) is Opened else -1
        else:
            code, mcode = codes
        self.trace = hash((self.trace, self.now, slot.idx, code, mcode))
        try:
            effects = node.step(inp, self.now)
        except Exception as exc:  # a core must never raise on any input
            raise SimFailure(
                f"node {slot.idx} raised {type(exc).__name__}: {exc} on {type(inp).__name__}"
            ) from exc
        return effects

    # ------------------------------------------------------------ CPU model

    def deliver(self, slot: Slot, inp: Any, lane: Lane, sent: Any = None) -> None:
        """An input reaches ``slot``: handled now (CPU model off) or queued in its inbox.
        ``sent`` is the EV_INPUT payload of a direct message (to refuse it as busy)."""
        inbox = slot.inbox
        if inbox is None:
            self.feed(slot, inp)
            return
        if lane is Lane.LOCAL and (slot.local_waiting or not inbox.has_room(lane)):
            slot.local_waiting.append((inp, self.now))
        elif not inbox.put(inp, lane, self.now):
            self._refuse_busy(slot, inp, sent)
            return
        self._cpu_arm(slot)

    def _refuse_busy(self, slot: Slot, inp: Any, sent: Any) -> None:
        """A full DIRECT lane: the sender hears "busy" one latency later (as the daemon answers)."""
        self.stats["direct_refused_busy"] = self.stats.get("direct_refused_busy", 0) + 1
        src = self.by_peer.get(inp.from_peer)
        if src is None or sent is None or len(sent) < 4:
            return  # injected traffic: nobody to tell
        s = self.slots[src]
        fail = SendFailed(slot.peer_id, sent[2], sent[3], "busy")
        self.at(self.now + self.latency(), EV_LOCAL, (src, s.incarnation, fail))

    def _cpu_arm(self, slot: Slot) -> None:
        if not slot.cpu_armed:
            slot.cpu_armed = True
            self.at(max(self.now, slot.free_at_us // 1000), EV_CPU, (slot.idx, slot.incarnation))

    def _cpu_run(self, p: tuple[int, int]) -> None:
        """Handle every queued input that starts within this ms, one at a time."""
        slot = self.slots[p[0]]
        if not slot.alive or slot.incarnation != p[1]:
            return
        slot.cpu_armed = False
        inbox = slot.inbox
        assert inbox is not None
        end_of_ms = (self.now + 1) * 1000
        while slot.free_at_us < end_of_ms:
            while slot.local_waiting and inbox.has_room(Lane.LOCAL):
                item, arrived = slot.local_waiting.pop(0)
                inbox.put(item, Lane.LOCAL, arrived)
            got = inbox.pop(self.now)
            if got is None:
                return
            inp, lane, waited = got
            if type(inp) is Tick:
                slot.tick_queued = False
            elif lane is not Lane.LOCAL:
                slot.wait_window_ms = max(slot.wait_window_ms, waited)
                if not slot.load_armed:
                    slot.load_armed = True
                    self.at(self.now + LOAD_REPORT_MS, EV_LOAD, (slot.idx, slot.incarnation))
            effects = self._step(slot, inp)
            cost = self._cost_us(slot, inp, effects)
            slot.cpu_us += cost
            slot.free_at_us = max(slot.free_at_us, self.now * 1000) + cost
            done_ms = -(-slot.free_at_us // 1000)
            if done_ms <= self.now:
                self.apply(slot, effects)
            else:
                self.at(done_ms, EV_DONE, (slot.idx, slot.incarnation, effects))
            self._arm(slot)
            if not slot.alive:
                return
        if len(inbox) or slot.local_waiting:
            self._cpu_arm(slot)

    def _report_load(self, p: tuple[int, int]) -> None:
        """Tell the core how long peers' messages waited lately (only when that changed);
        armed by the next message handled, so an idle node costs nothing."""
        slot = self.slots[p[0]]
        if not slot.alive or slot.incarnation != p[1]:
            return
        slot.load_armed = False
        wait, slot.wait_window_ms = slot.wait_window_ms, 0
        if wait != slot.load_reported_ms:
            slot.load_reported_ms = wait
            self.deliver(slot, InboxLoad(wait_ms=wait), Lane.LOCAL)

    def _cpu_done(self, p: tuple[int, int, list[Any]]) -> None:
        slot = self.slots[p[0]]
        if slot.alive and slot.incarnation == p[1]:
            self.apply(slot, p[2])

    def _cost_us(self, slot: Slot, inp: Any, effects: list[Any]) -> int:
        c = self.costs
        t = type(inp)
        if t is Tick or t is InboxLoad:
            base = 0
        elif t is GossipReceived:
            mtype = getattr(inp.data, "type", "")
            base = (
                c.gossip_offer_us
                if mtype == "offer"
                else c.gossip_advert_us
                if mtype == "advert"
                else c.gossip_other_us
            )
        elif t is DirectReceived:
            mtype = getattr(inp.data, "type", "")
            base = (
                c.direct_bid_us
                if mtype in ("bid", "decline")
                else c.direct_award_us
                if mtype == "award"
                else c.direct_other_us
            )
        elif t is JobSubmitted:
            base = c.job_submitted_us
        else:
            base = c.local_event_us
        appends = sends = 0
        for eff in effects:
            te = type(eff)
            if te is Append:
                appends += 1
            elif te is Send or te is Publish:
                sends += 1
        cpu = (base + sends * c.seal_per_message_us) * slot.cpu_slowdown
        return int(cpu) + c.append_us(appends)

    def inbox_statistics(self, slot: Slot) -> dict[str, int]:
        """One node's inbox, all lanes together: max wait, sheds, drops, refusals, CPU used."""
        if slot.inbox is None:
            return {}
        lanes = slot.inbox.statistics().values()
        return {
            "wait_max_ms": max(v["wait_max_ms"] for v in lanes),
            "wait_p99_ms": max(v["wait_p99_ms"] for v in lanes),
            "shed": sum(v["shed"] for v in lanes),
            "dropped_oldest": sum(v["dropped_oldest"] for v in lanes),
            "refused": sum(v["refused"] for v in lanes),
            "high_water": max(v["high_water"] for v in lanes),
            "handled": sum(v["handled"] for v in lanes),
            "cpu_ms": slot.cpu_us // 1000,
        }

    def _arm(self, slot: Slot) -> None:
        d = slot.node.next_deadline()
        if d is not None and (slot.tick_at is None or d < slot.tick_at):
            d = max(d, self.now)
            slot.tick_at = d
            self.at(d, EV_TICK, (slot.idx, slot.incarnation))

    def apply(self, slot: Slot, effects: list[Any]) -> None:
        if not effects:
            return
        seen_other = False
        for eff in effects:  # invariant "append-first", checked on every batch
            if type(eff) is not Append:
                seen_other = True
            elif seen_other:
                raise SimFailure(
                    f"invariant violated at t={self.now} ms: node {slot.idx} returned an Append "
                    "after a message/execution in one batch"
                )
        fx = self.interpreters[slot.idx]
        for eff in effects:
            if type(eff) is not Append and slot.dying:
                # torn batch: appends are durable, the rest never happened
                self._die(slot)
                return
            try:
                fx.dispatch(eff)
            except UnknownEffect as exc:
                raise SimFailure(f"node {slot.idx} returned an unknown effect {eff!r}") from exc
        if slot.dying:
            self._die(slot)

    def _append(self, slot: Slot, eff: Append) -> None:
        if eff.key is not None:
            if eff.key in slot.log_keys:  # idempotency key: the store returns the existing record
                return
            slot.log_keys.add(eff.key)
        slot.log.append((eff.kind, eff.body))
        for h in self.hooks:
            h.on_append(slot, eff.kind, eff.body)

    def _local(self, slot: Slot, delay_ms: int, inp: Any) -> None:
        self.at(self.now + delay_ms, EV_LOCAL, (slot.idx, slot.incarnation, inp))

    # ------------------------------------------------------------ network

    def latency(self) -> int:
        k = self.knobs
        v = k.latency_ms_median * math.exp(k.latency_sigma * self.rng_net.gauss(0.0, 1.0))
        return max(1, min(k.latency_ms_max, int(v)))

    def reachable(self, a: int, b: int) -> bool:
        return self.slots[b].alive and (
            not self.partitioned or self.slots[a].group == self.slots[b].group
        )

    def _send(self, slot: Slot, eff: Send) -> None:
        to = self.by_peer.get(eff.to_peer)
        if to is None or not self.reachable(slot.idx, to):
            fail = SendFailed(eff.to_peer, eff.kind, eff.job_id, "unreachable")
            self._local(slot, self.knobs.connect_timeout_ms, fail)
            return
        if eff.kind == "ledgersummary" and self.receipt_subscribers is not None:
            # converged ledgers: nothing to send (see "Scale")
            self.stats["ledger_sync_converged"] = self.stats.get("ledger_sync_converged", 0) + 1
            return
        rng = self.rng_net
        if self.knobs.direct_loss and rng.random() < self.knobs.direct_loss:
            self.stats["direct_lost"] = self.stats.get("direct_lost", 0) + 1
            return
        forced = self._forced
        if forced is not None and forced[0] == eff.to_peer:
            arrive = forced[1]
            self._forced_bids += eff.kind == "bid"
        else:
            arrive = self.now + self.latency()
        inp = DirectReceived(slot.peer_id, eff.data)
        sent = (to, inp, eff.kind, eff.job_id)
        dup = self.knobs.direct_dup and rng.random() < self.knobs.direct_dup
        part = self.part
        if part is not None and to % part.count != part.index:
            # another process's node: at least the lookahead on (simulations/parallel.py)
            part.cross(to % part.count, arrive, EV_INPUT, sent, self.now)
            if dup:
                part.cross(to % part.count, arrive + self.latency(), EV_INPUT, sent, self.now)
            return
        self.at(arrive, EV_INPUT, sent)
        if dup:
            self.at(arrive + self.latency(), EV_INPUT, sent)

    def _publish(self, slot: Slot, eff: Publish) -> None:
        data = eff.data
        if parse_advert_topic(eff.topic) is not None:
            when = self.now + self.latency()
            cast = (slot.idx, GossipReceived(eff.topic, slot.peer_id, data))
            self.at(when, EV_ADVERT, cast)
            part = self.part
            if part is not None:  # cast in every process, each to its own listeners
                for j in range(part.count):
                    if j != part.index:
                        part.cross(j, when, EV_ADVERT, cast, self.now)
        elif eff.topic == TOPIC_OFFERS and type(data) is Opened:
            self.cast_offer(slot, data)
        else:  # receipts and attestations: to the publisher's view subscribers (see "Scale")
            inp = GossipReceived(eff.topic, slot.peer_id, data)
            targets: Sequence[int] = range(len(self.slots))
            if self.receipt_subscribers:
                targets = self.receipt_subscribers[slot.idx]
                concerned = self._cosigned_origin(data)
                if concerned is not None and concerned not in targets:
                    targets = [*targets, concerned]
            part = self.part
            for i in targets:
                if (
                    i != slot.idx
                    and self.reachable(slot.idx, i)
                    and not (
                        self.knobs.gossip_loss and self.rng_net.random() < self.knobs.gossip_loss
                    )
                ):
                    if part is None or i % part.count == part.index:
                        self.at(self.now + self.latency(), EV_INPUT, (i, inp))
                    else:
                        part.cross(
                            i % part.count, self.now + self.latency(), EV_INPUT, (i, inp), self.now
                        )

    def _cosigned_origin(self, data: Any) -> int | None:
        """The node whose receipt a gossiped countersignature carries (None
        for anything else): with receipts thinned it hears it all the same
        (see "Scale")."""
        if type(data) is not Opened or data.type != "receipt_cosign":
            return None
        inner = self.codec.open(data.body.receipt, self.params.max_message_bytes)
        return self.by_peer.get(inner.sender) if type(inner) is Opened else None

    def _advert_cast(self, p: tuple[int, GossipReceived]) -> None:
        """One advert reaches every node listening on its topic (``reachable``
        and the loss draw inline: this runs for most of a large run's steps)."""
        src, inp = p
        loss = self.knobs.gossip_loss
        slots, rng = self.slots, self.rng_net
        group = slots[src].group
        data = inp.data
        codes = (
            INPUT_CODES["GossipReceived"],
            MSG_CODES.get(data.type, 50) if type(data) is Opened else -1,
        )
        step, apply, arm = self._step, self.apply, self._arm
        for i in list(self.advert_members.get(inp.topic, ())):
            if i == src:
                continue
            slot = slots[i]
            if not slot.alive or (self.partitioned and slot.group != group):
                continue
            if loss and rng.random() < loss:
                continue
            if slot.inbox is None:  # feed(), inline
                effects = step(slot, inp, codes)
                if effects:
                    apply(slot, effects)
                arm(slot)
            else:
                self.deliver(slot, inp, Lane.GOSSIP)

    def _offer_latencies(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per node, an offer's latency to it (``l1``) and the latency of its
        answer plus ``l1`` (``r``). In a split run only this process's nodes
        are drawn; the others get an ``r`` past any bid window, so a walk
        never reaches them (simulations/parallel.py)."""
        k, part = self.knobs, self.part
        m = n if part is None else len(part.own)
        l1 = np.maximum(
            1,
            np.minimum(
                k.latency_ms_max,
                k.latency_ms_median * np.exp(k.latency_sigma * self.np.standard_normal(m)),
            ),
        ).astype(np.int64)
        l2 = np.maximum(
            1,
            np.minimum(
                k.latency_ms_max,
                k.latency_ms_median * np.exp(k.latency_sigma * self.np.standard_normal(m)),
            ),
        ).astype(np.int64)
        if part is None:
            return l1, l1 + l2
        full_l1 = np.zeros(n, dtype=np.int64)
        full_l1[part.own] = l1
        r = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        r[part.own] = l1 + l2
        return full_l1, r

    def cast_offer(self, slot: Slot, data: Opened, *, stop_early: bool | None = None) -> None:
        k = self.knobs
        l1, r = self._offer_latencies(len(self.slots))
        lazy = k.gossip_mode == "lazy" if stop_early is None else stop_early
        lazy = lazy and not self.cpu  # see "CPU model": every copy costs its receiver
        part = self.part
        if lazy:
            order, complete = answer_order(r, OFFER_ORDER_PREFIX)
        else:
            order, complete = np.argsort(l1, kind="stable").tolist(), True
        body = data.body
        if len(self.recent) < 64:
            self.recent.append(data)
        cast = OfferCast(
            slot.idx,
            slot.incarnation,
            self.now,
            body.job_id,
            body.attempt,
            data,
            order,
            l1,
            r,
            last_ms=self.now,
            stop_early=lazy,
            complete=complete,
        )
        if part is not None:
            part.casts += 1
            cast.cast_id = (part.index, part.casts)
            part.open_casts.append(cast)
            job = (slot.idx, slot.incarnation, self.now, data, cast.cast_id)
            for j in range(part.count):
                if j != part.index:
                    part.cross(j, self.now, EV_XOFFER, job, self.now)
        self._offer_next(cast)

    def _remote_cast(self, p: tuple[int, int, int, Opened, tuple[int, int]]) -> None:
        """Another process's offer cast (a split run): walk this process's nodes,
        their latencies drawn here, from the cast's start ``t0``."""
        origin, incarnation, t0, data, cast_id = p
        l1, r = self._offer_latencies(len(self.slots))
        order, complete = answer_order(r, OFFER_ORDER_PREFIX)
        body = data.body
        cast = OfferCast(
            origin,
            incarnation,
            t0,
            body.job_id,
            body.attempt,
            data,
            order,
            l1,
            r,
            last_ms=self.now,
            complete=complete,
            cast_id=cast_id,
        )
        self._offer_next(cast)

    def _offer_next(self, cast: OfferCast) -> None:
        while True:
            if cast.k >= len(cast.order):
                if cast.complete:
                    return
                # past the prefix: sort them all (the prefix stays as it was)
                cast.order, cast.complete = np.argsort(cast.r, kind="stable").tolist(), True
                continue
            c = cast.order[cast.k]
            if c == cast.origin:
                cast.k += 1
                continue
            if cast.stop_early and cast.r[c] > self.params.bid_window_ms:
                return
            when = max(cast.last_ms, cast.t0 + int(cast.l1[c]))
            if cast.stop_early and cast.bids_in_flight >= self._bids_share(cast):
                # Enough bids arrive by t0 + r[c] to close the window before c's answer could;
                # look again then (a bid may have been dropped, e.g. rate-limited). Another
                # process's origin: a lookahead later, when its window's state at t0 + r[c]
                # is known here (simulations/parallel.py).
                later = 0 if self.part is None or self.owns(cast.origin) else self.part.lookahead
                when = max(when, cast.t0 + int(cast.r[c]) + later)
                cast.bids_in_flight = 0
            cast.last_ms = when
            self.at(when, EV_OFFER, cast)
            return

    def _bids_share(self, cast: OfferCast) -> int:
        """Bids in flight after which a lazy walk waits for the window to be
        read again: enough to close it, or in a split run this process's share
        of that (each process walks its own nodes, simulations/parallel.py)."""
        enough = self.params.bids_enough * cast.data.body.slots
        part = self.part
        return enough if part is None else -(-enough // part.count)

    def _window_open(self, cast: OfferCast) -> bool:
        part = self.part
        if part is not None and cast.origin % part.count != part.index:
            return cast.cast_id not in part.closed  # told at the window after it closed
        o = self.slots[cast.origin]
        if not o.alive or o.incarnation != cast.incarnation:
            return False
        job = o.node.origin.jobs.get(
            cast.job_id
        )  # peeking is safe: a closed window ignores every later answer
        return job is not None and job.offer_open and job.attempt == cast.attempt

    def _offer_step(self, cast: OfferCast) -> None:
        if cast.stop_early and not self._window_open(cast):
            return
        c = cast.order[cast.k]
        cast.k += 1
        if self.reachable(cast.origin, c) and not (
            self.knobs.gossip_loss and self.rng_net.random() < self.knobs.gossip_loss
        ):
            origin_peer = self.slots[cast.origin].peer_id
            if self.cpu:
                self.deliver(
                    self.slots[c],
                    GossipReceived(TOPIC_OFFERS, origin_peer, as_wire(cast.data)),
                    Lane.GOSSIP,
                )
                self._offer_next(cast)
                return
            self._forced = (origin_peer, cast.t0 + int(cast.r[c]))
            self._forced_bids = 0
            try:
                self.feed(
                    self.slots[c], GossipReceived(TOPIC_OFFERS, origin_peer, as_wire(cast.data))
                )
            finally:
                self._forced = None
            cast.bids_in_flight += self._forced_bids
        self._offer_next(cast)

    # ------------------------------------------------------------ executor

    def _start(self, slot: Slot, eff: StartExecution) -> None:
        key = (eff.job_id, eff.attempt, eff.replica)
        for h in self.hooks:
            h.on_start(slot, eff)
        token = self.rng_exec.getrandbits(32)
        slot.running[key] = token
        plan: JobPlan | None = self.jobs_by_id.get(eff.job_id)
        work = plan.actual_flops if plan is not None else (eff.spec.estimated_flops or 1e9)
        dur = max(1, int(work / (slot.hw.speed_gflops * 1e9) * 1000))
        timed_out = dur > eff.timeout_s * 1000
        if timed_out:
            dur = int(eff.timeout_s * 1000)
        digest = plan.honest_digest if plan is not None else lie_digest(eff.job_id, "?", 0, 0)
        if slot.hw.liar and self.rng_exec.random() < slot.hw.lie_rate:
            digest = lie_digest(eff.job_id, slot.peer_id, eff.attempt, eff.replica)
        status = "timeout" if timed_out else "succeeded"
        self.produced.setdefault(eff.job_id, set()).add(digest)
        if self.part is not None:
            self.part.facts.append(("produced", eff.job_id, digest))
        fin = ExecutionFinished(
            eff.job_id,
            eff.attempt,
            eff.replica,
            status,
            None if timed_out else 0,
            "",
            dur,
            dur,
            1 << 20,
            digest if not timed_out else None,
            1024,
        )
        self.at(self.now + dur, EV_FINISH, (slot.idx, slot.incarnation, key, token, fin))

    def _finish(self, p: tuple[int, int, RunKey, int, ExecutionFinished]) -> None:
        idx, inc, key, token, fin = p
        slot = self.slots[idx]
        if not slot.alive or slot.incarnation != inc or slot.running.get(key) != token:
            return
        del slot.running[key]
        self.deliver(slot, fin, Lane.LOCAL)

    def _fetch_blob(self, slot: Slot, eff: FetchBlob) -> None:
        src = self.by_peer.get(eff.from_peer)
        ok = src is not None and self.reachable(slot.idx, src)
        delay = 2 * self.latency() + 5 if ok else self.knobs.connect_timeout_ms
        self._local(
            slot,
            delay,
            BlobFetched(
                eff.job_id,
                eff.attempt,
                eff.replica,
                eff.digest,
                ok,
                "" if ok else "worker unreachable",
            ),
        )

    # ------------------------------------------------------------ faults

    def crash(self, slot: Slot, torn: bool) -> None:
        """Crash now, or (torn) at the node's next step after its appends."""
        if not slot.alive:
            return
        if torn:
            slot.dying = True
        else:
            self._die(slot)

    def _die(self, slot: Slot) -> None:
        slot.alive, slot.dying = False, False
        slot.running.clear()
        slot.tick_at = None
        slot.incarnation += 1
        if slot.inbox is not None:  # what waited dies with the process; statistics restart
            slot.inbox = Inbox(self.inbox_params)
            slot.local_waiting.clear()
            slot.free_at_us, slot.cpu_armed, slot.tick_queued = 0, False, False
            slot.wait_window_ms = slot.load_reported_ms = 0
            slot.load_armed = False
        self.stats["crashes"] = self.stats.get("crashes", 0) + 1

    def restart(self, slot: Slot) -> None:
        if slot.alive:
            return
        import pickle

        slot.incarnation += 1
        slot.node = self._new_node(slot.identity)
        slot.alive = True
        self.set_advert_topics(slot.idx, (TOPIC_ADVERTS,))  # a new process: one shard
        records = pickle.loads(pickle.dumps(slot.log))  # a fresh read of the durable log
        try:
            effects = slot.node.restore(records)
        except Exception as exc:
            raise SimFailure(
                f"node {slot.idx} raised {type(exc).__name__} in restore: {exc}"
            ) from exc
        self.apply(slot, effects)
        self._arm(slot)
        self.boot(slot, 1)
        live = [s.idx for s in self.slots if s.alive and s.idx != slot.idx]
        for j in self.rng_adv.sample(live, min(RESTART_CONNECTIONS, len(live))):
            # the daemon reports its first connections; the core pulls adverts (§7.8)
            self._local(slot, 2, PeerConnected(self.slots[j].peer_id))
        self.stats["restarts"] = self.stats.get("restarts", 0) + 1

    def submit(self, slot: Slot, plan: JobPlan) -> None:
        self.deliver(slot, JobSubmitted(plan.spec, plan.job_id), Lane.LOCAL)
