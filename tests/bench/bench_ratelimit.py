"""The per-message cost of the core's rate limiter, cache-cold, against the
``OrderedDict`` LRU it replaced (measured in the same run).

Run: ``python tests/bench/bench_ratelimit.py [--limiters 3000] [--peers 600]
[--messages 400000] [--rounds 5]`` (not collected by pytest; pure Python, a
few seconds and ~1 GB).

``--limiters`` limiters (one per simulated node) each hold buckets for
``--peers`` peers drawn from a population of five times as many; then
``--messages`` messages are charged, each to a random limiter and peer, twice
as the core charges a gossiped message (its transport bucket, then its
class's). Spread over thousands of tables, nearly every charge misses the
cache, as in a large simulation. The baseline is the same limiter with the
table an ``OrderedDict`` moved to its end on every charge to another peer
(meshd before this bench). Printed: microseconds per message for each, in
alternating rounds, and the ratio new / baseline (below 1: faster).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import OrderedDict
from typing import Any

from meshd.core.params import CoreParams
from meshd.core.ratelimit import _AT, CLASSES, RateLimiter


class OrderedDictLimiter(RateLimiter):
    """The baseline: the same buckets and code, the table an ``OrderedDict`` LRU."""

    def __init__(self, params: CoreParams) -> None:
        super().__init__(params)
        self._od: OrderedDict[str, list[Any]] = OrderedDict()

    def allow(self, peer: str, classes: tuple[str, ...], now_ms: int) -> bool:
        if peer == self._last:
            buckets = self._last_buckets
        else:
            got = self._od.get(peer)
            if got is None:
                got = self._od[peer] = [None] * (2 * len(CLASSES))
                while len(self._od) > self.max_peers:
                    self._od.popitem(last=False)
            else:
                self._od.move_to_end(peer)
            buckets = self._last_buckets = got
            self._last = peer
        if len(classes) == 1:  # as RateLimiter.allow's one-bucket path
            at = _AT[classes[0]]
            tokens = buckets[at]
            if tokens is None:
                tokens = self._rate[at + 1]
                buckets[at + 1] = now_ms
            else:
                updated = buckets[at + 1]
                if now_ms > updated:
                    rate = self._rate
                    tokens = min(rate[at + 1], tokens + (now_ms - updated) * rate[at] / 1000.0)
                    buckets[at + 1] = now_ms
            if tokens < 1.0:
                buckets[at] = tokens
                return False
            buckets[at] = tokens - 1.0
            return True
        places = [_AT[c] for c in classes]
        if min([self._refilled(buckets, at, now_ms) for at in places]) < 1.0:
            return False
        for at in places:
            buckets[at] -= 1.0
        return True


def one(kind: type[RateLimiter], a: argparse.Namespace, seed: int) -> float:
    """Microseconds per message (two charges) for limiters of ``kind``."""
    rng = random.Random(seed)
    population = [f"12D3KooW{rng.getrandbits(256):064x}"[:52] for _ in range(5 * a.peers)]
    params = CoreParams()
    limiters = [kind(params) for _ in range(a.limiters)]
    for lim in limiters:
        for p in rng.sample(population, a.peers):
            lim.allow(p, ("transport",), 0)
    msgs = [
        (limiters[rng.randrange(a.limiters)], population[rng.randrange(len(population))])
        for _ in range(a.messages)
    ]
    transport, gossip = ("transport",), ("gossip",)
    t0 = time.perf_counter()
    for now, (lim, peer) in enumerate(msgs, 1):
        lim.allow(peer, transport, now)
        lim.allow(peer, gossip, now)
    return (time.perf_counter() - t0) / a.messages * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_ratelimit.py")
    ap.add_argument("--limiters", type=int, default=3000)
    ap.add_argument("--peers", type=int, default=600)
    ap.add_argument("--messages", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    if min(a.limiters, a.peers, a.messages, a.rounds) < 1:
        print("bench_ratelimit: every count must be at least 1", file=sys.stderr)
        return 2
    new: list[float] = []
    old: list[float] = []
    for r in range(a.rounds):
        new.append(one(RateLimiter, a, r))
        old.append(one(OrderedDictLimiter, a, r))
        print(f"round {r + 1}: dict {new[-1]:.2f} µs, OrderedDict {old[-1]:.2f} µs per message")
    n, o = statistics.median(new), statistics.median(old)
    print(f"median: dict {n:.2f} µs, OrderedDict {o:.2f} µs per message; ratio {n / o:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
