"""Advert shards on many real daemons (specs/PROTOCOL.md §5.2): checks and figures.

Run: ``python tests/bench/bench_shards.py [--nodes 24] [--shards 4]`` (not
collected by pytest: 24 daemons take minutes on a small machine; real
``meshd start`` processes on loopback, :mod:`meshd.testing.procs`, the
process executor, no Docker, no root).

What it builds: ``--nodes`` daemons whose identities are chosen (keys made
in-process until each of the ``--shards`` final shards holds the same number,
``q = nodes / shards``), with ``advert_shard_nodes`` lowered to ``⌊1.5 q⌋`` and
``advert_shard_transition_ms`` to a few heartbeats. Half of them start first
(``q / 2`` of each final shard): that mesh of ``nodes / 2`` splits into
``shards / 2`` shards (``nodes / 2 > (shards / 4) × advert_shard_nodes``, and
no more: ``nodes / 2 ≤ (shards / 2) × advert_shard_nodes``). The other half
then joins, and the mesh must split once more, into ``shards``. Balanced
identities make that the one outcome the rules of §5.2 allow: with random ids
shards may differ in depth, which the spec permits ("Not promised").

What it checks, after each phase (each check is printed PASS or FAIL; any
FAIL exits 1):

- **same S**: every node's ``GET /v1/status`` ``membership`` says the
  expected ``shards``, its change over (``shards_from`` null), and it listens
  on its own shard's topic alone (``advert_topics``);
- **views**: one advert TTL after that (polled for up to 30 s more), every
  node's ``GET /v1/peers`` holds *every* live peer of its shard and none of
  another shard's, all at once. All, not 90 %: on loopback with five
  heartbeats to a TTL, a peer missing from a shard-mate's view means that
  node is deaf to it; and after a TTL an entry can only be held by an advert
  gossiped on the shard's topic (relayed ones and the old topic's are older);
- **gossip**: each shard's nodes form one connected graph of libp2p
  connections (a topic's GossipSub mesh is made of connected subscribers;
  edges from each view's ``reached``), and over a window of ``--window-s``
  every node's ``accepted_advert`` counter grows by at least half the
  heartbeats its shard-mates sent in it (``(q − 1) × window / interval``);
- **wrong_shard**: no node rejected an advert as ``wrong_shard`` (the core's
  ``rejected_wrong_shard``, the gossip validator's
  ``gossip_rejected_wrong_shard``);
- **through the change** (phase two): polled about once a second from the
  newcomers' launch until the split is over, no first-phase node's view ever
  lacked a first-phase peer of its final shard (they shared a shard before
  and after; the double listening of §5.2 keeps them in sight);
- **offers**: after the last phase, one node of each final shard in turn
  submits ``--jobs`` jobs: each succeeds; every worker of another shard bids
  on them (its ``bids_sent`` grows: the offer reached it and it judged it);
  the origin accepts bids from other shards (its ``accepted_bid`` grows by
  more than its own shard's workers sent; which bids make a window is a
  race, since a window closes once the candidates in the origin's view
  answered, §7.3, so they are only counted); at least one job runs on a
  worker of another shard; and every node's ``accepted_offer`` grew by the
  jobs of each origin but itself.

Figures printed: the time each phase took to settle, the adverts received per
node per second in the windows and the shard changes each node went through.

Bounded: every wait has a time-out, a hard limit (``--limit-s``, SIGALRM)
ends the run, and every daemon is stopped in any case.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_testbed import counters, launch_in_waves, run_bounded  # noqa: E402

from meshd.config import init_node, load_node
from meshd.core.peers import advert_topic, shard_of
from meshd.testing.procs import FAST_PARAMS, DaemonProcess

WRONG_SHARD = ("rejected_wrong_shard", "gossip_rejected_wrong_shard")
LIVE = ("direct", "relayed", "hole-punched")
"""``reached`` values of a peer we hold a connection to."""


class Run:
    """One run's daemons, their peer ids and final shards, and the checks' outcomes."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.daemons: list[DaemonProcess] = []
        self.ids: list[str] = []
        self.failed: list[str] = []
        q = args.nodes // args.shards
        self.interval_ms = args.interval_ms
        self.ttl_ms = 5 * args.interval_ms
        self.params: dict[str, Any] = {
            **FAST_PARAMS,
            "advert_interval_ms": self.interval_ms,
            "advert_ttl_ms": self.ttl_ms,
            "advert_rate_budget": 1_000_000.0,  # the interval is advert_interval_ms
            "advert_shard_nodes": q + q // 2,
            "advert_shard_transition_ms": 3 * self.interval_ms,
        }

    # ------------------------------------------------------------ setup

    def choose_identities(self) -> None:
        """Keys made in-process until each final shard holds ``q``; ordered so
        that the first half holds ``q / 2`` of each."""
        args, q = self.args, self.args.nodes // self.args.shards
        buckets: list[list[tuple[Path, str]]] = [[] for _ in range(args.shards)]
        k = 0
        while any(len(b) < q for b in buckets):
            d = self.root / f"cand{k}"
            k += 1
            init_node(d, listen="/ip4/127.0.0.1/tcp/0")
            peer = load_node(d)[1].peer_id
            b = buckets[shard_of(peer, args.shards)]
            if len(b) < q:
                b.append((d, peer))
            else:
                shutil.rmtree(d)
        order = [b[i] for half in (range(q // 2), range(q // 2, q)) for i in half for b in buckets]
        for d, peer in order:
            p = DaemonProcess(d, params=dict(self.params))
            p.configure()
            self.daemons.append(p)
            self.ids.append(peer)
        print(f"identities: {k} keys made for {args.nodes} balanced ones "
              f"({q} per shard of {args.shards}); params {self.params}", flush=True)  # fmt: skip

    def launch(self, idx: Sequence[int]) -> None:
        group = [self.daemons[i] for i in idx]
        for d in group:
            if d is not self.daemons[0]:
                d.bootstrap = [self.daemons[0].addr]
        launch_in_waves(group, self.args.wave, timeout_s=180)

    # ------------------------------------------------------------ reading

    def check(self, name: str, ok: bool, detail: str) -> bool:
        print(f"  {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if not ok:
            self.failed.append(name)
        return ok

    def peers(self, i: int) -> dict[str, str]:
        """Node ``i``'s view: peer id → how it is reached."""
        d = self.daemons[i]
        got = d.call(lambda: d.client().peers())["peers"]
        return {p["peer_id"]: p["reached"] for p in got}

    def mates(self, i: int, idx: Sequence[int], shards: int) -> set[str]:
        """The peers among ``idx`` in node ``i``'s shard of ``shards``."""
        mine = shard_of(self.ids[i], shards)
        return {self.ids[j] for j in idx if j != i and shard_of(self.ids[j], shards) == mine}

    def wait(self, what: str, pred: Callable[[], Any], timeout_s: float) -> float | None:
        """Seconds until ``pred()`` held (polled each second), or None past ``timeout_s``."""
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout_s:
                print(f"  (timed out after {timeout_s:.0f}s waiting for {what})", flush=True)
                return None
            time.sleep(1.0)
        return time.monotonic() - t0

    # ------------------------------------------------------------ checks

    def settled(self, idx: Sequence[int], shards: int) -> bool:
        for i in idx:
            st = self.daemons[i].status()
            m = (st or {}).get("membership") or {}
            if m.get("shards") != shards or m.get("shards_from") is not None:
                return False
        return True

    def check_same_shards(self, idx: Sequence[int], shards: int, timeout_s: float) -> None:
        took = self.wait(
            f"every node in {shards} shards", lambda: self.settled(idx, shards), timeout_s
        )
        seen: dict[tuple[int, Any], int] = {}
        topics_ok = True
        for i in idx:
            m = (self.daemons[i].status() or {})["membership"]
            key = (m["shards"], m["shards_from"])
            seen[key] = seen.get(key, 0) + 1
            topics_ok &= m["advert_topics"] == [advert_topic(self.ids[i], shards)]
        self.check(
            f"same S = {shards}",
            took is not None and topics_ok,
            f"(shards, shards_from) over {len(idx)} nodes {seen}; each on its own shard's "
            f"topic alone: {topics_ok}"
            + (f"; settled {took:.1f}s after the launch was over" if took is not None else ""),
        )

    def view_errors(self, idx: Sequence[int], shards: int) -> list[str]:
        errors = []
        for i in idx:
            view = set(self.peers(i))
            want = self.mates(i, idx, shards)
            if missing := want - view:
                errors.append(f"node {i} lacks {len(missing)} of its {len(want)} shard-mates")
            if foreign := {p for p in view if shard_of(p, shards) != shard_of(self.ids[i], shards)}:
                errors.append(f"node {i} holds {len(foreign)} of other shards")
        return errors

    def check_views(self, idx: Sequence[int], shards: int) -> None:
        errors: list[str] = []

        def clean() -> bool:
            errors[:] = self.view_errors(idx, shards)
            return not errors

        # an advert TTL after every change ended, what a view holds came by
        # gossip on the shard's topic (relayed and old-topic adverts expired)
        time.sleep(self.ttl_ms / 1000)
        took = self.wait("the views", clean, 30)
        q = len(idx) // shards
        self.check(
            "views",
            took is not None,
            f"one advert TTL ({self.ttl_ms / 1000:.0f}s) after same S, every node holds all "
            f"{q - 1} of its shard-mates and none of another shard"
            + (f" ({took:.1f}s later)" if took is not None else f" — NOT: {errors[:6]}"),
        )

    def check_gossip(self, idx: Sequence[int], shards: int) -> None:
        c0 = [counters(self.daemons[i]) for i in idx]
        t0 = time.monotonic()
        edges: set[tuple[str, str]] = set()
        for i in idx:
            for peer, reached in self.peers(i).items():
                if reached in LIVE:
                    edges.add((self.ids[i], peer))
                    edges.add((peer, self.ids[i]))
        parts = []
        for s in range(shards):
            members = {self.ids[i] for i in idx if shard_of(self.ids[i], shards) == s}
            parts.append(len(components(members, edges)))
        self.check(
            "gossip graph",
            all(n == 1 for n in parts),
            f"connected components of each shard's connections {parts}",
        )
        time.sleep(max(0.0, self.args.window_s - (time.monotonic() - t0)))
        window = time.monotonic() - t0
        c1 = [counters(self.daemons[i]) for i in idx]
        got = [b.get("accepted_advert", 0) - a.get("accepted_advert", 0) for a, b in zip(c0, c1, strict=True)]  # fmt: skip
        q = len(idx) // shards
        sent = (q - 1) * window * 1000 / self.interval_ms
        low = [(i, g) for i, g in zip(idx, got, strict=True) if g < 0.5 * sent]
        self.check(
            "adverts heard",
            not low,
            f"over {window:.1f}s each node accepted >= half of its {q - 1} shard-mates' "
            f"~{sent:.0f} heartbeats: median {statistics.median(got) / window:.2f}/s, "
            f"min {min(got)}" + (f"; too few: {low}" if low else ""),
        )
        wrong = {i: sum(c1[k].get(n, 0) for n in WRONG_SHARD) for k, i in enumerate(idx)}
        self.check(
            "wrong_shard",
            not any(wrong.values()),
            f"wrong_shard rejections over all nodes {sum(wrong.values())}",
        )

    def phase(self, idx: Sequence[int], shards: int) -> None:
        self.check_same_shards(idx, shards, self.args.settle_timeout_s)
        self.check_views(idx, shards)
        self.check_gossip(idx, shards)

    def grow(self, old: Sequence[int], new: Sequence[int], shards: int) -> None:
        """Launch ``new`` (in waves) and poll the old nodes' views from the
        first launch until all are in ``shards``: an old node's old
        shard-mates that stay its mates must never leave its view."""
        gaps: list[str] = []
        polls = 0
        everyone = [*old, *new]

        def poll() -> None:
            nonlocal polls
            polls += 1
            for i in old:
                mates = self.mates(i, old, shards)
                if missing := mates - set(self.peers(i)):
                    gaps.append(f"node {i} lost {len(missing)} of {len(mates)}")

        t0 = time.monotonic()
        for k in range(0, len(new), self.args.wave):
            wave = [self.daemons[i] for i in new[k : k + self.args.wave]]
            for d in wave:
                d.bootstrap = [self.daemons[0].addr]
                d.launch()
            while not all(d.status() is not None for d in wave):
                if time.monotonic() - t0 > 180:
                    raise TimeoutError("the newcomers' APIs did not answer within 180s")
                poll()
                time.sleep(0.5)
        print(f"  launched {len(new)} more in {time.monotonic() - t0:.1f}s", flush=True)
        end = time.monotonic() + self.args.settle_timeout_s
        while not (done := self.settled(everyone, shards)) and time.monotonic() < end:
            poll()
            time.sleep(1.0)
        until = f"all were in {shards} shards" if done else "the time-out"
        self.check(
            "through the change",
            not gaps,
            f"{polls} polls of the first {len(old)} nodes' views from the first launch until "
            f"{until} ({time.monotonic() - t0:.1f}s)"
            + (f"; gaps: {gaps[:6]}" if gaps else ", no gap"),
        )

    def offers_from(self, o: int, idx: Sequence[int], shards: int) -> dict[str, Any]:
        """Origin ``o`` submits ``--jobs`` jobs and waits for them; what came of it."""
        spec = {
            "image": "meshd/busybox:1",
            "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/o"],
            "requirements": {"runtime": "process"},
        }
        mine = shard_of(self.ids[o], shards)
        c0 = [counters(self.daemons[i]) for i in idx]
        client = self.daemons[o].client()
        out: dict[str, Any] = {"ok": 0, "in_window": [], "elsewhere": 0}
        for jid in [client.submit(dict(spec))["job_id"] for _ in range(self.args.jobs)]:
            v = self.daemons[o].wait_for(
                lambda j=jid: (v := client.job(j))["state"] in ("succeeded", "failed") and v,
                120,
                f"job {jid}",
            )
            out["ok"] += v["state"] == "succeeded"
            out["in_window"].append(sum(shard_of(b["peer_id"], shards) != mine for b in v["bids"]))
            worker = (v.get("result") or {}).get("worker")
            out["elsewhere"] += worker is not None and shard_of(worker, shards) != mine

        def delta(k: int, name: str) -> int:
            return counters(self.daemons[idx[k]]).get(name, 0) - c0[k].get(name, 0)

        others = [k for k, i in enumerate(idx) if i != o]
        sent: list[int] = []
        took: list[int] = []

        def foreign_taken() -> bool:
            # every bid sent now is for this origin's jobs: it accepted more
            # than its own shard's workers sent, so some came from other shards
            sent[:] = [delta(k, "bids_sent") for k in others]
            took[:] = [delta(idx.index(o), "accepted_bid")]
            ours = sum(
                n for k, n in zip(others, sent, strict=True) if self._mate(idx[k], o, shards)
            )
            return took[0] > ours

        out["no_foreign"] = self.wait("a bid from another shard", foreign_taken, 15.0) is None
        out["bids"] = (took[0], sum(sent))
        out["silent"] = [
            idx[k]
            for k, n in zip(others, sent, strict=True)
            if not self._mate(idx[k], o, shards) and n == 0
        ]
        out["short"] = [idx[k] for k in others if delta(k, "accepted_offer") < self.args.jobs]
        return out

    def _mate(self, i: int, j: int, shards: int) -> bool:
        return shard_of(self.ids[i], shards) == shard_of(self.ids[j], shards)

    def check_offers(self, idx: Sequence[int], shards: int) -> None:
        """One origin per shard, one after the other, submits ``--jobs`` jobs."""
        origins = [
            next(i for i in idx if shard_of(self.ids[i], shards) == s) for s in range(shards)
        ]
        got = {o: self.offers_from(o, idx, shards) for o in origins}
        jobs = self.args.jobs * len(origins)
        ok = sum(g["ok"] for g in got.values())
        silent = {o: g["silent"] for o, g in got.items() if g["silent"]}
        no_foreign = [o for o, g in got.items() if g["no_foreign"]]
        short = {o: g["short"] for o, g in got.items() if g["short"]}
        elsewhere = sum(g["elsewhere"] for g in got.values())
        in_window = [n for g in got.values() for n in g["in_window"]]
        self.check("jobs succeed", ok == jobs, f"{ok} of {jobs} succeeded")
        self.check(
            "bids from other shards",
            not silent and not no_foreign,
            "every worker of another shard than the origin's bid on its jobs, and each "
            "origin accepted bids from other shards (more than its own shard's workers sent; "
            f"(accepted, sent) by origin {[g['bids'] for g in got.values()]}; bids from other "
            f"shards within each job's window {in_window})"
            + (f"; silent workers by origin: {silent}" if silent else "")
            + (f"; origins with no bid from another shard: {no_foreign}" if no_foreign else ""),
        )
        self.check(
            "runs on other shards",
            elsewhere > 0,
            f"{elsewhere} of {jobs} jobs ran on a worker of another shard",
        )
        self.check(
            "offers reach every node",
            not short,
            f"every node accepted the offers of each other origin's {self.args.jobs} jobs"
            + (f"; short, by origin: {short}" if short else ""),
        )

    def report_changes(self, old: Sequence[int], new: Sequence[int]) -> None:
        for name, idx in (("first", old), ("second", new)):
            changes = [counters(self.daemons[i]).get("advert_shard_changes", 0) for i in idx]
            print(f"  shard changes of each {name}-phase node {changes}")


def components(members: set[str], edges: set[tuple[str, str]]) -> list[set[str]]:
    """The connected components of ``members`` over ``edges`` (pairs, both ways)."""
    left, out = set(members), []
    while left:
        todo, part = [left.pop()], set()
        while todo:
            p = todo.pop()
            part.add(p)
            for a, b in edges:
                if a == p and b in left:
                    left.discard(b)
                    todo.append(b)
        out.append(part)
    return out


def run(args: argparse.Namespace, r: Run) -> None:
    r.choose_identities()
    half = args.nodes // 2
    first, second = list(range(half)), list(range(half, args.nodes))
    t0 = time.monotonic()
    r.daemons[0].start(timeout_s=120)
    r.launch(first[1:])
    print(f"phase 1: {half} daemons up in {time.monotonic() - t0:.1f}s; "
          f"expecting {args.shards // 2} shard(s)", flush=True)  # fmt: skip
    r.phase(first, args.shards // 2)
    print(f"phase 2: {len(second)} more join; expecting {args.shards} shards", flush=True)
    r.grow(first, second, args.shards)
    everyone = first + second
    r.phase(everyone, args.shards)
    r.report_changes(first, second)
    print("offers across shards:", flush=True)
    r.check_offers(everyone, args.shards)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=24, help="daemons in the end")
    parser.add_argument("--shards", type=int, default=4, help="shards they end in (>= 2)")
    parser.add_argument("--interval-ms", type=int, default=2000, help="heartbeat interval")
    parser.add_argument("--window-s", type=float, default=10.0, help="window adverts are counted")
    parser.add_argument("--jobs", type=int, default=2, help="jobs each shard's origin submits")
    parser.add_argument("--wave", type=int, default=6, help="daemons started at once")
    parser.add_argument("--settle-timeout-s", type=float, default=120.0)
    parser.add_argument("--limit-s", type=int, default=1200, help="hard limit of the whole run")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs (daemon.log)")
    args = parser.parse_args()
    s = args.shards
    if s < 2 or s & (s - 1) or args.nodes % (2 * s) or args.nodes // s < 4:
        print("--shards must be a power of two >= 2 and --nodes a multiple of twice it "
              "(at least 4 per shard)", file=sys.stderr)  # fmt: skip
        return 2

    def body(root: Path, daemons: list[DaemonProcess]) -> None:
        r = Run(args, root)
        r.daemons = daemons  # the list run_bounded stops
        run(args, r)

    return run_bounded(args.limit_s, "meshd-bench-shards-", body, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
