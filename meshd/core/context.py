"""What a role of the core may see and do: the narrow :class:`Context`.

Theory of operation
-------------------
A node plays three roles — :class:`~meshd.core.origin.Origin`,
:class:`~meshd.core.worker.Worker` and :class:`~meshd.core.credits.Ledger` —
each owning its own state. What they share is here and nowhere else:

- **read**: ``params``, ``identity``/``peer_id``, the injected ``rng``, the
  current time (``now_ms`` on the monotonic timeline that timers run on,
  ``wall_ms`` for stamps), ``counters``, the ``peers`` table, ``trust``, and
  ``inbox_wait_ms`` (how congested our own shell is);
- **do**: ``append`` a log record, ``send`` a direct message, ``publish`` on a
  topic, ``emit`` any other effect, ``seal`` a body, set a timer with ``at``,
  and count a ``reject``.

A message one role sends to this node itself (the origin to its own worker,
which may run the node's own jobs: specs/PROTOCOL.md §8.5, and back) never
becomes a ``Send``: ``send`` to our own peer id queues it unsealed (no
signature, no network), and ``Node.step`` takes it with ``pop_local`` and
hands it to its handler within the same step, at most
``local_messages_per_step`` of them.

Effects leave in the order ``Node.step`` promises (``events.py``): every
``append`` of a step before any other effect of that step. Timers are keyed
by a *kind* (a constant of the role that owns it) and dispatched by the
node's timer table; the context only keeps the heap.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Protocol

from .events import Append, Effect, Publish, Send
from .identity import Identity
from .params import CoreParams
from .peers import PeerTable
from .trust import Trust
from .wire import TYPE_OF, Body, Opened, Rejected


class Codec(Protocol):
    """How messages are sealed and opened. The real one signs; the simulator's may not."""

    def seal(self, identity: Identity, body: Body, ts_ms: int, nonce: bytes) -> Any: ...
    def open(self, data: Any, max_bytes: int) -> Opened | Rejected: ...


MAX_DETAIL = 300
"""Characters of a rejection's detail kept (a peer chooses what it contains)."""


@dataclass(frozen=True)
class Rejection:
    """A peer's input the core refused, as h11 reports a remote protocol
    error: what rule it broke, the detail, and whose fault it is — always the
    ``peer`` (the transport peer, or the signed author once known)."""

    reason: str
    peer: str
    detail: str
    at_ms: int


class Context:
    """The members a role may use; one per node, shared by its roles."""

    def __init__(
        self,
        params: CoreParams,
        identity: Identity,
        rng: random.Random,
        codec: Codec,
        now_ms: int,
    ) -> None:
        self.params = params
        self.identity = identity
        self.peer_id = identity.peer_id
        self.rng = rng
        self.codec = codec
        self.now_ms = now_ms
        """The monotonic timeline (ms): timers, leases, windows, ages."""
        self.wall_ms = now_ms
        """The wall clock (ms): only stamps what we sign and judges stamps."""
        self.counters: Counter[str] = Counter()
        self.peers = PeerTable(params.advert_view_max, params.mesh_size_sketch)
        self.trust = Trust(params)
        self.inbox_wait_ms = 0
        """How long messages wait in our shell's inbox (``InboxLoad``)."""
        self.rejections: deque[Rejection] = deque(maxlen=params.rejections_kept)
        """The newest peer inputs refused, with why and whose fault (``reject``)."""
        self._timers: list[tuple[int, int, str, Any]] = []
        self._timer_seq = 0
        self._appends: list[Append] = []
        self._out: list[Effect] = []
        self._local: deque[Opened] = deque()
        """Messages from one of our roles to another, not yet delivered."""

    # ------------------------------------------------------------ verbs

    def append(self, kind: str, body: dict[str, Any], key: bytes | None = None) -> None:
        """Record ``kind`` in the node's log (durable before this step's other effects)."""
        self._appends.append(Append(kind, body, key))

    def emit(self, effect: Effect) -> None:
        self._out.append(effect)

    def seal(self, body: Body) -> Any:
        nonce = self.rng.getrandbits(64).to_bytes(8, "big")
        return self.codec.seal(self.identity, body, self.wall_ms, nonce)

    def send(
        self,
        to_peer: str,
        body: Body,
        job_id: str | None = None,
        *,
        ttl_ms: int | None = None,
        coalesce: bool = True,
    ) -> None:
        if to_peer == self.peer_id:
            # To our own roles: in-process, unsealed, stamped now.
            self._local.append(
                Opened(TYPE_OF[type(body)], self.peer_id, b"", self.wall_ms, b"", body, b"")
            )
            return
        kind = type(body).__name__.lower()
        if ttl_ms is None:
            ttl_ms = self._useful_for_ms(kind)
        self.emit(Send(to_peer, self.seal(body), kind, job_id, ttl_ms, coalesce))

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

    def publish(self, topic: str, body: Body) -> None:
        self.emit(Publish(topic, self.seal(body)))

    def at(self, when_ms: int, kind: str, key: Any) -> None:
        """Run the ``kind`` timer with ``key`` once ``now_ms`` reaches ``when_ms``."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (when_ms, self._timer_seq, kind, key))

    def reject(self, reason: str, peer: str, detail: str = "") -> None:
        """A peer's input refused: counted by ``reason`` and kept, with its
        ``detail`` and the ``peer`` at fault, among the newest
        ``rejections_kept`` (``Node.rejections``). Our own misuse is never a
        rejection: it is an assertion."""
        self.counters["rejected_" + reason] += 1
        self.rejections.append(Rejection(reason, peer, detail[:MAX_DETAIL], self.now_ms))

    # ------------------------------------------------------------ for the node

    def pop_due(self) -> tuple[str, Any] | None:
        """The next timer due at ``now_ms`` (kind, key), removed; None when none is."""
        if self._timers and self._timers[0][0] <= self.now_ms:
            _, _, kind, key = heapq.heappop(self._timers)
            return kind, key
        return None

    def pop_local(self) -> Opened | None:
        """The oldest message ``send`` addressed to this node itself, removed;
        None when there is none."""
        return self._local.popleft() if self._local else None

    def next_deadline(self) -> int | None:
        if self._local:
            return self.now_ms  # local messages left over from the last step
        return self._timers[0][0] if self._timers else None

    def take_effects(self) -> list[Effect]:
        """This step's effects, appends first, and forget them."""
        out = self._out
        self._out = []
        if not self._appends:  # most steps: no list to build
            return out
        appends, self._appends = self._appends, []
        return [*appends, *out]
