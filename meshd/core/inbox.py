"""The node's inbox: bounded lanes with a policy for when each is full (pure, no I/O).

Theory of operation
-------------------
Everything a node must handle waits here between its arrival (a socket, the
executor, the API) and ``Node.step``. Under a burst a node receives work
faster than it can handle it; an unbounded queue then turns into delay, the
delay makes every peer's timeout fire, and every timeout re-sends, adding
work: congestion collapse. So the inbox is three bounded *lanes*, each with a
policy for when it is full, and it sheds work that has waited too long:

- ``LOCAL``: inputs this node made (executor events, API calls, fetch
  results, ``SendFailed``). Never dropped: the producer waits for room
  (back-pressure on our own tasks, which are bounded elsewhere).
- ``DIRECT``: a peer's direct message. When the lane is full the message is
  refused at once, and the shell answers the request *busy*, so the sender
  learns of it now (``SendFailed``) instead of waiting for a time-out.
- ``BID``: a peer's bid or decline (new work), told apart from other direct
  messages by the type its envelope claims (a hint: the core still verifies
  it). Refused as busy when full, like ``DIRECT``. Kept apart so that award
  replies, heartbeats and results never wait behind a burst's bids.
- ``GOSSIP``: gossip (adverts, offers, receipts). When full, the oldest is
  dropped: adverts repeat and supersede each other, and an offer that waited
  longest is the one most likely re-offered already.

Lanes are served in that order (our own events settle work already placed;
a direct message answers work in flight; bids and gossip ask for new work). A peer's
message (``DIRECT`` or ``GOSSIP``) that waited longer than ``shed_after_ms``
is *shed* when popped if newer work waits behind it: its sender has already
given up on it or sent it again. Alone in the inbox it is still handled.

The same class drives the daemon (:mod:`meshd.runtime.daemon`) and the
simulator's node model, so both shed load by the same rules.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .wire import peek_type

T = TypeVar("T")


class Lane(enum.IntEnum):
    LOCAL = 0
    DIRECT = 1
    BID = 2
    GOSSIP = 3


NEW_WORK_TYPES = frozenset({"bid", "decline"})


def direct_lane(data: Any, max_bytes: int) -> Lane:
    """``BID`` for a direct message that claims to be a bid or decline, else
    ``DIRECT``. ``data`` is an envelope's bytes, or (in the simulator) an
    already-opened message with a ``type``."""
    mtype = getattr(data, "type", None)
    if mtype is None and isinstance(data, bytes | bytearray):
        mtype = peek_type(bytes(data), max_bytes)
    return Lane.BID if mtype in NEW_WORK_TYPES else Lane.DIRECT


@dataclass(frozen=True)
class InboxParams:
    local_max: int = 1_024
    """Inputs of our own making that may wait; a producer waits for room beyond it."""
    direct_max: int = 1_024
    """Peers' direct messages that may wait; beyond it a new one is refused as busy."""
    bid_max: int = 256
    """Bids and declines that may wait (a round uses at most ``bids_enough``
    per slot); beyond it a new one is refused as busy."""
    gossip_max: int = 2_048
    """Gossip messages that may wait; beyond it the oldest is dropped."""
    shed_after_ms: int = 5_000
    """A peer's message that waited longer is dropped when newer work waits
    behind it (its sender's time-outs, 2 to 5 s for awards and bids, have fired)."""
    wait_samples: int = 512
    """Recent waits kept per lane for the percentiles in ``mesh status``."""
    congestion_window_ms: int = 5_000
    """Peers' messages handled within this window make up ``congestion_ms``."""

    def bound(self, lane: Lane) -> int:
        return (self.local_max, self.direct_max, self.bid_max, self.gossip_max)[lane]


@dataclass
class LaneStats:
    queued: int = 0
    high_water: int = 0
    handled: int = 0
    refused: int = 0
    dropped_oldest: int = 0
    shed: int = 0
    wait_max_ms: int = 0


class Inbox(Generic[T]):
    """Three bounded FIFO lanes of ``(item, arrived_ms)``; times are any
    monotonic milliseconds the caller chooses (the daemon's monotonic clock,
    the simulator's virtual time)."""

    def __init__(self, params: InboxParams | None = None) -> None:
        self.params = params or InboxParams()
        self._lanes: tuple[deque[tuple[T, int]], ...] = tuple(deque() for _ in Lane)
        self._stats = tuple(LaneStats() for _ in Lane)
        self._waits: tuple[deque[int], ...] = tuple(
            deque(maxlen=self.params.wait_samples) for _ in Lane
        )
        self._recent: deque[tuple[int, int]] = deque(maxlen=self.params.wait_samples)

    def __len__(self) -> int:
        return sum(len(q) for q in self._lanes)

    def has_room(self, lane: Lane) -> bool:
        return len(self._lanes[lane]) < self.params.bound(lane)

    def put(self, item: T, lane: Lane, now_ms: int) -> bool:
        """Queue ``item``. False when it was not queued: ``DIRECT`` or ``LOCAL``
        full (refuse as busy / wait for room). ``GOSSIP`` always queues, dropping
        the oldest gossip when full."""
        q, st = self._lanes[lane], self._stats[lane]
        if len(q) >= self.params.bound(lane):
            if lane is not Lane.GOSSIP:
                st.refused += 1
                return False
            q.popleft()
            st.dropped_oldest += 1
        q.append((item, now_ms))
        st.high_water = max(st.high_water, len(q))
        return True

    def pop(self, now_ms: int) -> tuple[T, Lane, int] | None:
        """The next item to handle, its lane and how long it waited (ms), or
        None when empty. Sheds peers' messages that waited too long while
        newer work waits."""
        for lane in Lane:
            q = self._lanes[lane]
            while q:
                item, arrived = q.popleft()
                waited = max(0, now_ms - arrived)
                if lane is not Lane.LOCAL and waited > self.params.shed_after_ms and len(self) > 0:
                    self._stats[lane].shed += 1
                    continue
                st = self._stats[lane]
                st.handled += 1
                st.wait_max_ms = max(st.wait_max_ms, waited)
                self._waits[lane].append(waited)
                if lane is not Lane.LOCAL:
                    self._recent.append((now_ms, waited))
                return item, lane, waited
        return None

    def congestion_ms(self, now_ms: int) -> int:
        """How long peers' messages wait here now: the 90th percentile of the
        waits of those handled in the last ``congestion_window_ms``, or the age
        of the oldest one still queued if that is more. 0 when idle."""
        since = now_ms - self.params.congestion_window_ms
        recent = self._recent
        while recent and recent[0][0] < since:  # oldest first: drop what left the window
            recent.popleft()
        waits = sorted(w for _, w in recent)
        p90 = waits[(len(waits) * 9) // 10] if waits else 0
        oldest = max(
            (now_ms - q[0][1] for lane, q in enumerate(self._lanes) if lane and q), default=0
        )
        return max(p90, oldest)

    def statistics(self) -> dict[str, dict[str, int]]:
        """Per lane: queued now, bound, high-water mark, handled, refused,
        dropped (oldest gossip), shed (waited too long), and the wait p50/p99
        over recent items and max since start, in ms."""
        out: dict[str, dict[str, int]] = {}
        for lane in Lane:
            st, waits = self._stats[lane], sorted(self._waits[lane])

            def pct(p: int, waits: list[int] = waits) -> int:
                return waits[min(len(waits) - 1, (len(waits) * p) // 100)] if waits else 0

            out[lane.name.lower()] = {
                "queued": len(self._lanes[lane]),
                "bound": self.params.bound(lane),
                "high_water": st.high_water,
                "handled": st.handled,
                "refused": st.refused,
                "dropped_oldest": st.dropped_oldest,
                "shed": st.shed,
                "wait_p50_ms": pct(50),
                "wait_p99_ms": pct(99),
                "wait_max_ms": st.wait_max_ms,
            }
        return out
