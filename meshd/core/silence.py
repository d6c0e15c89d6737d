"""Silent candidates: live peers whose answers to our offers never arrive.

Theory of operation:
    A worker whose direct messages cannot reach us (behind a NAT with no
    relay, a one-way partition) still hears our offers by gossip and keeps
    its adverts fresh, so it looks usable: it counts as a candidate, each
    round waits for its answer, and its bids are lost on the way
    (specs/PROTOCOL.md §8.6). The origin notices the silence: a live
    candidate of ``silent_rounds`` of our offer rounds in a row that closed
    without its bid or decline while another candidate's answer did arrive,
    spanning at least ``silent_after_ms``, with no direct message at all
    accepted from it meanwhile, *cannot reach us*. (A round nobody answered
    counts for no one: that is congestion, ours or the mesh's.) For
    ``silent_exclude_ms`` it is no candidate and our offers name it in their
    ``exclude`` list (it is not offered work it could not return); then it is
    a candidate again, and any direct message from it ends the mark at once.

Rules:
- Pure and deterministic; times are the core's ``now_ms``.
- At most ``limit`` peers are tracked; beyond it the oldest entry goes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

CANNOT_REACH_US = "cannot reach us: its answers to our offers do not arrive (§8.6)"
"""The reason an origin gives for a candidate it marked silent (why nobody
bid, §8.3; ``mesh peers``)."""


class SilentPeers:
    """Which candidates cannot reach us (see the module docstring)."""

    def __init__(self, *, rounds: int, after_ms: int, exclude_ms: int, limit: int) -> None:
        self.rounds = rounds
        self.after_ms = after_ms
        self.exclude_ms = exclude_ms
        self.limit = limit
        self.missed: OrderedDict[str, tuple[int, int]] = OrderedDict()
        """Peer -> (rounds in a row it did not answer, when the first of them closed)."""
        self.until: OrderedDict[str, int] = OrderedDict()
        """Peer -> until when it counts as unable to reach us."""

    def heard_from(self, peer: str, now_ms: int) -> bool:
        """A direct message from ``peer`` was accepted; True if it had been
        marked unable to reach us."""
        self.missed.pop(peer, None)
        return self.until.pop(peer, None) is not None

    def round_closed(self, candidates: Iterable[str], answered: set[str], now_ms: int) -> list[str]:
        """An offer round closed; the candidates newly marked unable to reach us.
        A round nobody answered says nothing of anyone (our own node or the
        whole mesh is congested, not one peer cut off)."""
        if not answered:
            return []
        marked = []
        for peer in candidates:
            if peer in answered:
                self.missed.pop(peer, None)
                continue
            n, first = self.missed.get(peer, (0, now_ms))
            self._put(self.missed, peer, (n + 1, first))
            if n + 1 >= self.rounds and now_ms - first >= self.after_ms:
                if not self.excluded(peer, now_ms):
                    marked.append(peer)
                self._put(self.until, peer, now_ms + self.exclude_ms)
                self.missed.pop(peer, None)
        return marked

    def excluded(self, peer: str, now_ms: int) -> bool:
        """Whether ``peer`` counts as unable to reach us now."""
        until = self.until.get(peer)
        return until is not None and now_ms < until

    def _put(self, table: OrderedDict[str, Any], peer: str, value: Any) -> None:
        table[peer] = value
        table.move_to_end(peer)
        while len(table) > self.limit:
            table.popitem(last=False)
