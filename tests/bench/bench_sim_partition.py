"""What a simulator split over two processes would have to exchange.

Run: ``python tests/bench/bench_sim_partition.py [--nodes 2000] [--jobs 4000]
[--seed 1]`` (not collected by pytest; one ``scale`` run, about a minute at
the defaults, and ~1.5 GB).

The 10,000-node / 100,000-job simulation of issue 14 runs on one core. A
conservative parallel engine would give each of two processes the nodes of
half the advert shards (``grown_shards``; a node's shard is the hash of its
id, ``meshd.core.peers.shard_of``), run both in windows of the smallest
latency, and exchange the messages that cross between the halves at each
window's end. This bench runs the serial engine unchanged, watching it, and
prints what such a split would cost:

- every message the engine schedules between two nodes (``EV_INPUT``: direct
  messages and gossiped receipts) and every offer the offer walk hands a
  worker, by type, within a half or across;
- advert casts whose topic has members in both halves (none while every
  node's shard is fixed, as in ``scale``: adverts, most of a run's steps,
  stay inside their half);
- the messages crossing, per job and as a share of the run's core steps;
- what pickling costs: ``pickle.dumps`` and ``loads`` (protocol 5) per
  crossing message, on a sample of 1 in 500 of them, and their mean size.

It decides nothing and changes no run (the trace printed is the run's own).
"""

from __future__ import annotations

import argparse
import collections
import pickle
import random
import sys
import time
from typing import Any

from meshd.core.peers import shard_of
from simulations import engine as E
from simulations.scenarios import Run, RunConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_sim_partition.py")
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.nodes < 4 or a.jobs < 1:
        print("bench_sim_partition: --nodes at least 4, --jobs at least 1", file=sys.stderr)
        return 2
    r = Run(RunConfig("scale", a.seed, a.nodes, a.jobs))
    e = r.engine
    shards = E.grown_shards(e.params, len(e.slots))
    half = [0 if shard_of(s.peer_id, shards) < max(1, shards // 2) else 1 for s in e.slots]
    counts: collections.Counter[tuple[Any, ...]] = collections.Counter()
    samples: list[Any] = []
    pick = random.Random(a.seed)

    at, feed, cast = E.Engine.at, E.Engine.feed, E.Engine._advert_cast

    def watch_at(self: E.Engine, when_ms: int, kind: int, payload: Any) -> None:
        if kind == E.EV_INPUT:
            to, inp = payload[0], payload[1]
            src = self.by_peer.get(inp.from_peer)
            mtype = getattr(getattr(inp, "data", None), "type", "?")
            across = src is not None and half[src] != half[to]
            counts[("message", mtype, across)] += 1
            if across and pick.random() < 0.002:
                samples.append(payload)
        at(self, when_ms, kind, payload)

    def watch_feed(self: E.Engine, slot: E.Slot, inp: Any) -> None:
        if getattr(getattr(inp, "data", None), "type", "") == "offer":
            src = self.by_peer[inp.from_peer]
            counts[("message", "offer (walk)", half[src] != half[slot.idx])] += 1
        feed(self, slot, inp)

    def watch_cast(self: E.Engine, p: tuple[int, Any]) -> None:
        src, inp = p
        members = self.advert_members.get(inp.topic, ())
        counts[("advert cast", any(half[i] != half[src] for i in members))] += 1
        cast(self, p)

    E.Engine.at = watch_at  # type: ignore[method-assign]
    E.Engine.feed = watch_feed  # type: ignore[method-assign]
    E.Engine._advert_cast = watch_cast  # type: ignore[method-assign]
    try:
        res = r.execute()
    finally:
        E.Engine.at, E.Engine.feed, E.Engine._advert_cast = at, feed, cast  # type: ignore[method-assign]
    if not res["ok"]:
        print(f"the run failed: {res['failure']}", file=sys.stderr)
        return 1
    sizes = collections.Counter(half)
    print(
        f"scale seed {a.seed}: {a.nodes} nodes in {shards} advert shards, halves of "
        f"{sizes[0]} and {sizes[1]} nodes; {a.jobs} jobs; {e.events:,} core steps; "
        f"trace {res['trace']}"
    )
    print(f"{'kind':<14} {'type':<18} {'within':>10} {'across':>10}")
    kinds = sorted({k[:2] for k in counts if k[0] == "message"}, key=lambda k: -counts[(*k, True)])
    for kind, mtype in kinds:
        print(
            f"{kind:<14} {mtype:<18} {counts[(kind, mtype, False)]:>10,} "
            f"{counts[(kind, mtype, True)]:>10,}"
        )
    print(
        f"{'advert cast':<14} {'(topic)':<18} {counts[('advert cast', False)]:>10,} "
        f"{counts[('advert cast', True)]:>10,}"
    )
    across = sum(v for k, v in counts.items() if k[0] == "message" and k[2])
    print(
        f"messages across: {across:,}, {across / a.jobs:.1f} per job, "
        f"{across / max(1, e.events):.3f} of the core steps"
    )
    if samples:
        t0 = time.perf_counter()
        blobs = [pickle.dumps(s, protocol=5) for s in samples]
        t1 = time.perf_counter()
        for b in blobs:
            pickle.loads(b)
        t2 = time.perf_counter()
        print(
            f"pickling {len(samples)} sampled crossing messages: dumps "
            f"{(t1 - t0) / len(samples) * 1e6:.1f} µs, loads {(t2 - t1) / len(samples) * 1e6:.1f} µs "
            f"each, {sum(map(len, blobs)) / len(blobs):.0f} bytes on average"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
