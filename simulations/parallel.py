"""One run over several processes: conservative windows of the lookahead.

Theory of operation
-------------------
``python -m simulations run ... --procs N`` builds the mesh once, then forks
it into ``N`` processes (:meth:`Partitions.fork`). Process ``p`` owns the
nodes whose index is ``p`` modulo ``N``: it alone steps them, and it holds
the rest only as identities (their copies stay as they were at the fork and
are never stepped).

A message between nodes of two processes takes at least the *lookahead*
``W`` (:func:`lookahead_ms`), so what a process does in the ms ``[T, T + W)``
reaches another no earlier than ``T + W``. The processes therefore advance
together a window of ``W`` ms at a time: at each window's end each one sends
every other its events for them (direct messages, receipts gossiped to its
nodes, advert casts, offer casts) and its *facts* (below), receives theirs,
and all agree on the next window: it starts at the earliest event anywhere,
so empty ms are skipped. Each process schedules what it received after its
own events of the same ms, in the order of the sending process's index, so
a run is a pure function of its seed and ``N`` (a different ``N`` is a
different trace; one process is the plain :class:`simulations.engine.Engine`).

``W`` is where the latency model's lognormal puts one message in a thousand
(``LOOKAHEAD_QUANTILE_Z`` standard deviations below the median; at least 1):
4 ms for the ``load`` and ``scale`` scenarios' 20 ms median and shape 0.5,
where a message draws less than 4 ms once in ~1,600. A message across
processes that draws less arrives ``W`` after it was sent instead. One ms
windows (the latency's floor) cost a window of synchronisation per virtual ms
(131,000 at the issue-14 size), which a busy machine, descheduling one
process while the other waits, multiplies.

What the engine does differently with ``N`` > 1 (``Engine.part`` set):

- each process draws from its own random streams (latencies, executions),
  seeded from the run's seed and its index;
- a message across processes takes at least ``W`` (above);
- an advert is cast in every process at the same virtual ms (another
  process's copy at least ``W`` after it was published), each delivering it to
  its own listeners of the topic;
- an offer's lazy walk (engine.py, "Scale") runs in every process over its own
  nodes, each drawing their latencies; in another process than the origin's
  it starts ``W`` after the offer. The origin's process reads the origin's bid
  window as the single engine does; another learns that the window closed
  from a ``closed`` fact, at the end of the window it closed in, and where a
  walk waits for enough bids in flight to close it (each process counts its
  own, and waits at its share of them) it waits ``W`` more before reading it.
  It may still deliver the offer to a few more nodes than one process would:
  they bid late (``bid_late``), which changes nothing at the origin.

Facts (one process's news every other needs, shipped with the window's events):
``token`` (a sealed receipt, countersignature, attestation or reversal that
other nodes may open from its token, ``SimCodec``), ``produced`` (a digest
an execution returned: the checker's "no fabricated result"), ``verdict``,
``finished`` and ``audit`` (the checker's per-job state, so a credit record
anywhere is checked against the verdict, and every process agrees when all
jobs are terminal) and ``closed`` (an offer's bid window).

Supported runs: those without crashes, partitions, spammers, liars, the CPU
model or full gossip (``load`` and ``scale``); :func:`unsupported` says why
not. Limits: ``MAX_PROCS`` processes; a window's batch to one process is
bounded by memory only (at 10,000 nodes, a few hundred messages).
"""

from __future__ import annotations

import math
import os
import pickle
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from typing import Any

import numpy as np

from .engine import Engine, OfferCast, SimFailure

MAX_PROCS = 8
"""Most processes one run may use."""
LOOKAHEAD_QUANTILE_Z = 3.09
"""The lookahead is the latency this many standard deviations of its
lognormal below the median: the 0.1 % quantile (:func:`lookahead_ms`)."""


def lookahead_ms(knobs: Any) -> int:
    """The least latency of a message across processes, in ms: the 0.1 %
    quantile of the latency model (``Engine.latency``), at least 1 and at
    most ``latency_ms_max``."""
    q = knobs.latency_ms_median * math.exp(-LOOKAHEAD_QUANTILE_Z * knobs.latency_sigma)
    return max(1, min(int(knobs.latency_ms_max), int(q)))


def unsupported(knobs: Any, *, burst: bool, mutant: str | None) -> str | None:
    """Why a run with these knobs cannot be split over processes (None: it can)."""
    why = []
    if knobs.crash_fraction > 0:
        why.append("crashes")
    if knobs.partition:
        why.append("partitions")
    if knobs.spammer_fraction > 0:
        why.append("spammers")
    if knobs.liar_fraction > 0:
        why.append("liars")
    if knobs.cpu_model:
        why.append("the CPU model")
    if knobs.gossip_mode != "lazy":
        why.append("gossip_mode=full")
    if burst:
        why.append("a burst")
    if mutant:
        why.append("a mutant")
    return ", ".join(why) or None


@dataclass
class Share:
    """What the engine of one process of a split run needs (``Engine.part``)."""

    index: int
    count: int
    lookahead: int
    """The least latency across processes, ms (:func:`lookahead_ms`)."""
    outbox: list[list[tuple[int, int, Any]]]
    """Per process, the events for it since the last exchange: (ms, kind, payload)."""
    facts: list[tuple[Any, ...]] = field(default_factory=list)
    """News for every other process since the last exchange (see the module's doc)."""
    min_sent: int | None = None
    """The earliest ms among the events in ``outbox``."""
    closed: set[tuple[int, int]] = field(default_factory=set)
    """Other processes' offer casts whose bid window closed (their ids)."""
    open_casts: list[OfferCast] = field(default_factory=list)
    """This process's own offer casts whose bid window is still open."""
    casts: int = 0
    """Offer casts this process made (their ids are (index, n))."""
    own: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """The indices of the nodes this process owns."""

    def cross(self, proc: int, when: int, kind: int, payload: Any, now: int) -> None:
        """An event for process ``proc``'s node at ``when``, sent at ``now``:
        at least the lookahead later."""
        when = max(when, now + self.lookahead)
        self.outbox[proc].append((when, kind, payload))
        if self.min_sent is None or when < self.min_sent:
            self.min_sent = when


class Partitions:
    """This process's part of a split run: its pipes to the others and the window loop."""

    def __init__(self, engine: Engine, index: int, count: int, conns: dict[int, Connection]):
        self.engine = engine
        self.index = index
        self.count = count
        self.conns = conns
        self.share = Share(index, count, lookahead_ms(engine.knobs), [[] for _ in range(count)])
        self.window_end = -1
        """The last ms of the last window run (events from others come after it)."""
        self.apply_fact: Callable[[tuple[Any, ...]], None] = lambda fact: None
        """Set by the run: applies a checker fact from another process."""
        self.events_elsewhere = 0
        """Core steps the other processes had made at the last exchange."""
        self.windows = 0
        """Windows run (each up to the lookahead's ms from an event somewhere)."""
        self.children: list[int] = []
        """Process 0: its children's pids, reaped once they sent their summaries."""
        self.sent = 0
        """Events sent to other processes."""
        self.exchange_s = 0.0
        """Wall time spent exchanging: pickling, the pipes, waiting for the others."""
        self.failure: str | None = None

    # ------------------------------------------------------------ setup

    @classmethod
    def fork(cls, engine: Engine, count: int) -> Partitions:
        """Fork ``count`` − 1 children; returns, in each process, its own part.
        Index 0 is the calling process."""
        if not 2 <= count <= MAX_PROCS:
            raise ValueError(f"procs: give 2 to {MAX_PROCS} processes, got {count}")
        pipes = {(a, b): Pipe(duplex=True) for a in range(count) for b in range(a + 1, count)}
        index = 0
        children: list[int] = []
        for child in range(1, count):
            pid = os.fork()
            if pid == 0:
                index, children = child, []
                break
            children.append(pid)
        conns: dict[int, Connection] = {}
        for (a, b), (ca, cb) in pipes.items():
            if a == index:
                conns[b] = ca
                cb.close()
            elif b == index:
                conns[a] = cb
                ca.close()
            else:
                ca.close()
                cb.close()
        part = cls(engine, index, count, conns)
        part.children = children
        part._take_over()
        return part

    def _take_over(self) -> None:
        """Make the forked engine this process's: its own random streams, its
        nodes' advert topics only, its codec's tokens tagged, routing on."""
        e, i, n = self.engine, self.index, self.count
        master = random.Random(f"{e.seed}/{i}/{n}")
        e.rng_net = random.Random(master.getrandbits(64))
        e.rng_exec = random.Random(master.getrandbits(64))
        e.np = np.random.default_rng(master.getrandbits(64))
        for members in e.advert_members.values():
            for idx in [m for m in members if m % n != i]:
                del members[idx]
        e.codec.tag = bytes([i])
        e.codec.fresh = self.share.facts
        self.share.own = np.arange(i, len(e.slots), n, dtype=np.int64)
        e.part = self.share

    @property
    def is_child(self) -> bool:
        return self.index != 0

    # ------------------------------------------------------------ the window loop

    def run_until(self, end_ms: int, stop: Callable[[], bool] | None = None) -> None:
        """Run windows until the next event anywhere is past ``end_ms`` or
        ``stop()`` holds (it reads only what every process agrees on at a
        window's end, so every process stops at the same window). A window
        runs the lookahead's ms from the earliest event anywhere, no further
        than ``end_ms``."""
        e = self.engine
        while True:
            nxt = self._exchange()
            if stop is not None and stop():
                return
            if nxt is None or nxt > end_ms:
                break
            self.windows += 1
            self.window_end = min(end_ms, nxt + self.share.lookahead - 1)
            try:
                e.run_until(self.window_end)
            except SimFailure as exc:
                self.failure = str(exc)
            self._poll_casts()
        e.now = max(e.now, end_ms)

    def _poll_casts(self) -> None:
        """Tell the others which of our offer casts' bid windows closed."""
        share = self.share
        if not share.open_casts:
            return
        still = []
        is_open = self.engine._window_open
        for cast in share.open_casts:
            if is_open(cast):
                still.append(cast)
            else:
                share.facts.append(("closed", cast.cast_id))
        share.open_casts = still

    def _exchange(self) -> int | None:
        """Send each other process its events and everyone our facts; receive
        theirs; return the next window's ms (None: no events anywhere). Pairs
        talk in a fixed order (the lower index sends first), so two large
        batches never wait on each other."""
        e, share = self.engine, self.share
        t_start = time.perf_counter()
        own_next = e._times[0] if e._times else None
        nexts = [t for t in (own_next, share.min_sent) if t is not None]
        facts = share.facts
        got: dict[int, tuple[Any, ...]] = {}
        for j in sorted(self.conns):
            conn = self.conns[j]
            out = (share.outbox[j], facts, own_next, share.min_sent, e.events, self.failure)
            if j < self.index:
                got[j] = self._recv(j, conn)
                conn.send_bytes(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
            else:
                conn.send_bytes(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
                got[j] = self._recv(j, conn)
        self.sent += sum(map(len, share.outbox))
        share.outbox = [[] for _ in range(self.count)]
        facts.clear()  # the codec appends to this same list
        share.min_sent = None
        failures = [self.failure] if self.failure else []
        elsewhere = 0
        for j in sorted(got):
            items, their_facts, their_next, their_min, their_events, their_failure = got[j]
            elsewhere += their_events
            if their_failure:
                failures.append(their_failure)
            for t in (their_next, their_min):
                if t is not None:
                    nexts.append(t)
            for fact in their_facts:
                self._fact(fact)
            for when, kind, payload in items:
                if when <= self.window_end:  # the window rule broken: it lands in our past
                    failures.append(
                        f"invariant violated at t={e.now} ms: process {j} sent an event for "
                        f"t={when} ms, in the window that ended at {self.window_end} ms"
                    )
                e.at(when, kind, payload)
        self.events_elsewhere = elsewhere
        self.exchange_s += time.perf_counter() - t_start
        if failures:
            raise SimFailure(failures[0])
        return min(nexts) if nexts else None

    def _recv(self, j: int, conn: Connection) -> Any:
        try:
            got: Any = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise SimFailure(f"simulation process {j} of {self.count} died ({exc!r})") from exc
        if type(got) is dict and "crashed" in got:
            raise SimFailure(f"simulation process {j} of {self.count} crashed:\n{got['crashed']}")
        return got

    def _fact(self, fact: tuple[Any, ...]) -> None:
        kind = fact[0]
        if kind == "token":
            opened = fact[1]
            self.engine.codec.register(opened)
        elif kind == "closed":
            self.share.closed.add(fact[1])
        elif kind == "produced":
            self.engine.produced.setdefault(fact[1], set()).add(fact[2])
        else:
            self.apply_fact(fact)

    # ------------------------------------------------------------ the end

    def gather(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        """Process 0: every process's summary, ours first. A child sends its
        own and returns an empty list."""
        if self.is_child:
            self.conns[0].send_bytes(pickle.dumps(summary, protocol=pickle.HIGHEST_PROTOCOL))
            return []
        out = [summary]
        for j in sorted(self.conns):
            try:
                out.append(self._recv(j, self.conns[j]))
            except SimFailure as exc:  # its counts are missing; the run failed anyway
                out[0] = {**out[0], "ok": False, "failure": out[0]["failure"] or str(exc)}
        for conn in self.conns.values():
            conn.close()
        for pid in self.children:  # each exits once its summary is sent (or it died)
            os.waitpid(pid, 0)
        return out

    def child_exit(self, exc: BaseException | None) -> None:
        """End a child process: tell process 0 what went wrong, if anything
        that is not a run's own failure did, and exit without tearing down."""
        code = 0
        if exc is not None:
            code = 1
            text = "".join(traceback.format_exception(exc))
            try:
                self.conns[0].send_bytes(
                    pickle.dumps({"crashed": text}, protocol=pickle.HIGHEST_PROTOCOL)
                )
            except OSError:
                pass
        os._exit(code)
