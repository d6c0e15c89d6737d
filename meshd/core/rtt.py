"""Per-peer round-trip estimates and the time-outs derived from them (RFC 6298's rule).

Theory of operation
-------------------
A fixed time-out is wrong twice: too long for a quick peer (a lost award
waits seconds) and too short for a busy one (its replies arrive after we gave
up, and every give-up re-offers, adding load: the burst livelock). So the
origin measures each peer's round trips where the protocol gives them for
free (offer → bid, award → award reply) and keeps, per peer, a smoothed RTT
and its mean deviation, as TCP does (RFC 6298 §2: gains 1/8 and 1/4). The
time-out is ``srtt + 4 × rttvar``, clamped to ``[floor, ceiling]``; a peer
with no samples gets ``initial``. A time-out doubles that peer's time-out
(§5.5, exponential back-off) until its next sample.

The table is bounded (least recently sampled peers are forgotten). Pure.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Estimate:
    srtt_ms: float
    rttvar_ms: float
    backoff: int = 0


class PeerRtt:
    def __init__(self, *, initial_ms: int, floor_ms: int, ceiling_ms: int, peers_kept: int) -> None:
        assert 0 < floor_ms <= ceiling_ms
        self.initial_ms, self.floor_ms, self.ceiling_ms = initial_ms, floor_ms, ceiling_ms
        self.peers_kept = peers_kept
        self._est: OrderedDict[str, _Estimate] = OrderedDict()

    def sample(self, peer: str, rtt_ms: int) -> None:
        """Record one measured round trip to ``peer`` (ms, ≥ 0)."""
        r = float(max(0, rtt_ms))
        e = self._est.get(peer)
        if e is None:
            e = self._est[peer] = _Estimate(r, r / 2)
            while len(self._est) > self.peers_kept:
                self._est.popitem(last=False)
        else:
            e.rttvar_ms = 0.75 * e.rttvar_ms + 0.25 * abs(e.srtt_ms - r)
            e.srtt_ms = 0.875 * e.srtt_ms + 0.125 * r
            e.backoff = 0
            self._est.move_to_end(peer)

    def timed_out(self, peer: str) -> None:
        """A time-out derived from this estimate fired: double the next one."""
        e = self._est.get(peer)
        if e is None:
            e = self._est[peer] = _Estimate(self.initial_ms / 4, self.initial_ms / 8)
        e.backoff = min(e.backoff + 1, 16)

    def timeout_ms(self, peer: str) -> int:
        """The time-out to use for a reply from ``peer`` now."""
        e = self._est.get(peer)
        if e is None:
            return max(self.floor_ms, min(self.ceiling_ms, self.initial_ms))
        base = e.srtt_ms + 4 * e.rttvar_ms
        return int(max(self.floor_ms, min(self.ceiling_ms, base * (1 << e.backoff))))

    def srtt_ms(self, peer: str) -> float | None:
        e = self._est.get(peer)
        return None if e is None else e.srtt_ms

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per peer: smoothed RTT, deviation and current time-out (ms), for ``mesh status``."""
        return {
            p: {
                "srtt_ms": round(e.srtt_ms, 1),
                "rttvar_ms": round(e.rttvar_ms, 1),
                "timeout_ms": self.timeout_ms(p),
            }
            for p, e in self._est.items()
        }
