"""Scenarios and the run loop: safety phase with faults, then liveness phase.

A run is identified by ``(scenario, seed, nodes, jobs, pins, mutant)`` plus the
commit; :func:`replay_command` prints it. Phases:

1. boot (nodes start at random offsets within one advert interval) and warm-up
   of two advert intervals, so peer views are filled;
2. **safety phase**: jobs arrive (Poisson, at the scenario's load) at random
   live origins while the scenario's faults run (crashes, partitions, loss,
   duplication, slow nodes, liars, spammers); invariants are checked as it goes;
3. **liveness phase**: partitions heal, crashed nodes restart, loss and
   duplication stop, spammers stop; every job must reach a terminal state
   within ``liveness_ms`` of virtual time, or the run fails with the jobs lost.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from meshd.core.events import DirectReceived, GossipReceived
from meshd.core.jobspec import JobSpec, Speed
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.wire import Offer, OfferRequirements, Result

from . import baselines
from .codec import Forged, as_wire
from .costs import DAEMON_ADVERT_US
from .engine import EV_INPUT, Engine, SimFailure, Slot
from .invariants import Checker
from .knobs import Knobs, draw_network
from .mutants import MUTANTS
from .parallel import MAX_PROCS, Partitions, unsupported
from .workload import IMAGE, REF_GFLOPS, JobPlan, draw_hardware, draw_jobs, honest_digest

GC_OFF_DURING_RUN = True
"""The cyclic garbage collector is off while a run executes (reference
counting frees everything else). A run's state is millions of long-lived
objects (the cores' views, ledgers, logs) that every collection of an older
generation walks, and the young generation fills with survivors (the state
growing), each walked once there and once more in the middle one: with
Python's defaults the collector took a quarter of a 1,200-node run's CPU, and
with thresholds of (50,000, 20, never) still 17 s of a 250 s 10,000-node /
20,000-job run (``gc.callbacks``). The runs make next to no cycles for it to
find (``tests/test_sim.py::test_a_run_leaves_next_to_no_reference_cycles``;
a 2,000-node / 10,000-job run left 129 objects in cycles), so the memory it
would reclaim is nothing next to the run's. A collector that was on is
turned back on once the run's report is made (its first young collection
then walks what the run left; ``python -m simulations run`` keeps it off to
the end instead). Nothing a run decides depends on it."""


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    draw: Callable[[random.Random, Knobs], None]
    default_nodes: int = 50
    default_jobs: int = 500
    burst: bool = False
    """Every job is submitted at once to one origin (instead of Poisson arrivals at random origins)."""


def _draw_load(rng: random.Random, k: Knobs) -> None:
    k.latency_ms_median, k.latency_sigma = 20.0, 0.5
    k.load = 0.8
    k.replication = "off"


def _draw_scale(rng: random.Random, k: Knobs) -> None:
    _draw_load(rng, k)
    k.load = 0.5


def _draw_churn(rng: random.Random, k: Knobs) -> None:
    draw_network(rng, k, faults=True)
    k.crash_fraction = 0.3
    k.down_ms_max = rng.choice([5_000, 20_000, 60_000])
    k.torn_batch = rng.choice([0.0, 0.5, 1.0])
    k.load = rng.uniform(0.2, 0.7)


def _draw_cheaters(rng: random.Random, k: Knobs) -> None:
    draw_network(rng, k, faults=True)
    k.liar_fraction = 0.1
    k.lie_rate = rng.choice([0.1, 0.3, 0.5, 1.0])
    k.spammer_fraction = rng.choice([0.0, 0.05])
    k.load = rng.uniform(0.2, 0.6)


def _draw_partition(rng: random.Random, k: Knobs) -> None:
    draw_network(rng, k, faults=True)
    k.partition = True
    k.partition_fraction = rng.uniform(0.1, 0.5)
    k.partition_ms = rng.choice([10_000, 30_000, 60_000])
    k.load = rng.uniform(0.2, 0.6)


def _draw_swarm(rng: random.Random, k: Knobs) -> None:
    draw_network(rng, k, faults=True)
    k.crash_fraction = rng.choice([0.0, 0.1, 0.3])
    k.torn_batch = rng.random()
    k.liar_fraction = rng.choice([0.0, 0.1])
    k.lie_rate = rng.uniform(0.1, 1.0)
    k.spammer_fraction = rng.choice([0.0, 0.05])
    k.partition = rng.random() < 0.5
    k.partition_fraction = rng.uniform(0.1, 0.5)
    k.partition_ms = rng.choice([10_000, 30_000])
    k.load = rng.uniform(0.1, 0.9)


def _draw_burst(rng: random.Random, k: Knobs) -> None:
    k.latency_ms_median, k.latency_sigma = 20.0, 0.5
    k.replication = "off"
    k.cpu_model = True
    k.cpu_slowdown = 2.0
    k.liveness_ms = 120_000


BURST_JOB_S = (1.0, 5.0)
"""Burst jobs last 1 to 5 s (uniform) on a reference core."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "load",
            "placement vs omniscient and random schedulers at a utilisation (default 80%, "
            "replication off; --set replication=default to include verification)",
            _draw_load,
            200,
            2000,
        ),
        Scenario(
            "scale",
            "the issue-14 size: `load` at 50% utilisation (replication off), "
            "10,000 nodes and 100,000 jobs by default; cpu_s says what the run cost "
            "(above 256 nodes receipts are thinned and ledgers modelled as converged: "
            "engine.py, Scale); --procs 2 splits it over two processes (parallel.py)",
            _draw_scale,
            10_000,
            100_000,
        ),
        Scenario(
            "churn",
            "30% of nodes crash (some mid-batch) and restart; network faults drawn",
            _draw_churn,
        ),
        Scenario(
            "cheaters",
            "10% liars (wrong digests), maybe spammers; detection and verification cost",
            _draw_cheaters,
        ),
        Scenario(
            "partition",
            "the mesh splits in two, then heals; every job must finish after the heal",
            _draw_partition,
        ),
        Scenario("swarm", "every fault knob drawn from the seed", _draw_swarm),
        Scenario(
            "burst",
            "one origin (a CPU hog: cpu_slowdown) gets every job at once, CPU model on; every "
            "job must end within liveness_ms (120 s); completion vs omniscient, awards per job, "
            "the origin's inbox waits and sheds",
            _draw_burst,
            1000,
            200,
            burst=True,
        ),
    ]
}


@dataclass
class RunConfig:
    scenario: str
    seed: int
    nodes: int
    jobs: int
    pins: dict[str, str] = field(default_factory=dict)
    mutant: str | None = None
    procs: int = 1
    """Processes the run is split over (``simulations.parallel``); the trace
    depends on it."""


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "meshd/core", "simulations"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def replay_command(cfg: RunConfig) -> str:
    parts = [
        "python -m simulations run",
        cfg.scenario,
        f"--seed {cfg.seed}",
        f"--nodes {cfg.nodes}",
        f"--jobs {cfg.jobs}",
    ]
    parts += [f"--set {k}={v}" for k, v in sorted(cfg.pins.items())]
    if cfg.mutant:
        parts.append(f"--mutant {cfg.mutant}")
    if cfg.procs != 1:
        parts.append(f"--procs {cfg.procs}")
    return " ".join(parts)


def core_params(k: Knobs, nodes: int) -> CoreParams:
    p = CoreParams()  # advert pacing, TTLs and the view as the daemon's (§7.1, §6)
    if k.replication == "off":
        p = dataclasses.replace(p, replication_fraction=0.0, untrusted_replication=0.0)
    return p


class Run:
    """One simulation run: builds the mesh, runs both phases, collects metrics."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        sc = SCENARIOS[cfg.scenario]
        master = random.Random(cfg.seed)
        rng_knobs = random.Random(master.getrandbits(64))
        rng_hw = random.Random(master.getrandbits(64))
        self.rng_work = random.Random(master.getrandbits(64))
        self.rng_fault = random.Random(master.getrandbits(64))
        engine_seed = master.getrandbits(62)
        k = Knobs()
        sc.draw(rng_knobs, k)
        self.knobs = k = k.with_overrides(cfg.pins)
        if cfg.procs != 1:
            if not 2 <= cfg.procs <= min(MAX_PROCS, cfg.nodes):
                raise ValueError(
                    f"procs: give 1 to {min(MAX_PROCS, cfg.nodes)} processes, got {cfg.procs}"
                )
            why = unsupported(k, burst=sc.burst, mutant=cfg.mutant)
            if why:
                raise ValueError(
                    f"procs {cfg.procs}: a run split over processes cannot have {why} "
                    "(simulations/parallel.py; the load and scale scenarios can)"
                )
        self.part: Partitions | None = None
        """This process's part of a split run (``cfg.procs`` > 1), once forked."""
        self.params = core_params(k, cfg.nodes).with_overrides(
            {
                n[5:]: float(v) if "." in v else int(v)
                for n, v in cfg.pins.items()
                if n.startswith("core.")
            }
        )
        hw = draw_hardware(
            rng_hw, cfg.nodes, slow_fraction=k.slow_fraction, slow_factor=k.slow_factor
        )
        order = list(range(cfg.nodes))
        rng_hw.shuffle(order)
        n_liars = round(k.liar_fraction * cfg.nodes)
        n_spam = round(k.spammer_fraction * cfg.nodes)
        for i in order[:n_liars]:
            hw[i].liar, hw[i].lie_rate = True, k.lie_rate
        for i in order[n_liars : n_liars + n_spam]:
            hw[i].spammer = True
        factory = MUTANTS[cfg.mutant] if cfg.mutant else None
        if factory is not None:
            self.params = mutant_params(factory, self.params)
        self.engine = Engine(
            engine_seed,
            hw,
            k,
            self.params,
            node_factory=factory or Node,  # Node: the engine's default
            inbox_params=getattr(factory, "sim_inbox_params", None),
        )
        self.hw = hw
        self.burst_origin: int | None = None
        n_hogs = round(k.cpu_hog_fraction * cfg.nodes)
        for i in rng_hw.sample(range(cfg.nodes), n_hogs):
            self.engine.slots[i].cpu_slowdown = k.cpu_slowdown
        warm_ms = 2 * min(self.params.advert_interval_ms, 10_000)
        self.t0 = self.engine.now
        """When the mesh started (virtual ms)."""
        self.t_start = self.t0 + warm_ms
        self.progress_ms = 0
        """Print a progress line every this many virtual ms of the submission phase (0: none)."""
        if sc.burst:
            self.burst_origin = self.rng_work.randrange(cfg.nodes)
            self.engine.slots[self.burst_origin].cpu_slowdown = k.cpu_slowdown
            # Its own worker would take the jobs whose awards time out (§8.5),
            # hiding what the burst does to the mesh's placement: a client.
            self.engine.slots[self.burst_origin].hw = dataclasses.replace(
                self.engine.slots[self.burst_origin].hw, client=True
            )
            self.plans = burst_jobs(self.rng_work, cfg.jobs, self.t_start, k.speed)
        else:
            self.plans = draw_jobs(
                self.rng_work,
                cfg.jobs,
                hw,
                load=k.load,
                start_ms=self.t_start,
                job_s_median=k.job_s_median,
                job_sigma=k.job_sigma,
                estimate_noise=k.estimate_noise,
                speed=k.speed,
            )
        self.engine.jobs_by_id = {p.job_id: p for p in self.plans}
        self.t_safety_end = self.plans[-1].submit_ms + 1 if self.plans else self.t_start
        self.checker = Checker(self.engine, self.plans, liars=n_liars > 0)
        self.engine.hooks.append(self.checker)
        self.awards = AwardWatch()
        self.engine.hooks.append(self.awards)
        self.submitted: set[str] = set()
        self.origin_of: dict[str, int] = {}
        self.spamming = True
        self.result: dict[str, Any] = {}
        self._adverts_at_start: tuple[int, int] | None = None
        """(adverts received, adverts sent) over all nodes when the warm-up ended."""

    # ------------------------------------------------------------ scripting

    def _schedule(self) -> None:
        e, k = self.engine, self.knobs
        for s in e.slots:
            delay = self.rng_fault.randrange(min(self.params.advert_interval_ms, 2_000))
            if e.owns(s.idx):
                e.boot(s, delay, checked=True)
        e.call_at(self.t_start, self._note_adverts)
        for plan in self.plans:
            e.call_at(plan.submit_ms, functools.partial(self._submit, plan))
        span = max(1, self.t_safety_end - self.t_start)
        n = len(e.slots)
        for i in self.rng_fault.sample(range(n), round(k.crash_fraction * n)):
            at = self.t_start + self.rng_fault.randrange(span)
            down = self.rng_fault.randrange(1_000, max(1_001, k.down_ms_max))
            torn = self.rng_fault.random() < k.torn_batch
            slot = e.slots[i]
            e.call_at(at, functools.partial(e.crash, slot, torn))
            e.call_at(at + down, functools.partial(self._restart_if_safety, slot))
        if k.partition:
            side = set(self.rng_fault.sample(range(n), max(1, round(k.partition_fraction * n))))
            at = self.t_start + self.rng_fault.randrange(max(1, span // 2))
            e.call_at(at, lambda: self._split(side))
            e.call_at(at + k.partition_ms, self._heal)
        for s in e.slots:
            if s.hw.spammer:
                e.call_at(
                    self.t_start + self.rng_fault.randrange(1000), functools.partial(self._spam, s)
                )

    def _submit(self, plan: JobPlan) -> None:
        e = self.engine
        if self.burst_origin is not None:
            slot = e.slots[self.burst_origin]
            self.submitted.add(plan.job_id)
            self.origin_of[plan.job_id] = slot.idx
            e.submit(slot, plan)
            return
        for _ in range(64):
            slot = e.slots[self.rng_work.randrange(len(e.slots))]
            if slot.alive and not slot.dying:
                break
        else:
            slot = next(s for s in e.slots if s.alive)
        self.submitted.add(plan.job_id)
        self.origin_of[plan.job_id] = slot.idx
        if e.owns(slot.idx):  # a split run draws every origin in every process
            e.submit(slot, plan)

    def _restart_if_safety(self, slot: Slot) -> None:
        if slot.dying:
            self.engine._die(slot)
        self.engine.restart(slot)

    def _split(self, side: set[int]) -> None:
        for s in self.engine.slots:
            s.group = 1 if s.idx in side else 0
        self.engine.partitioned = True

    def _heal(self) -> None:
        self.engine.partitioned = False

    def _spam(self, s: Slot) -> None:
        """One injection by a spammer; garbage, forgeries, replays, fake offers, fake results."""
        e = self.engine
        if not self.spamming or not s.alive:
            return
        rng = self.rng_fault
        victim = e.slots[rng.randrange(len(e.slots))]
        if victim.idx != s.idx and e.reachable(s.idx, victim.idx):
            what = rng.randrange(6)
            if what == 0:
                inp: Any = GossipReceived(
                    "/meshd/offers/1", s.peer_id, bytes(rng.getrandbits(8) for _ in range(40))
                )
            elif what == 1:
                inp = DirectReceived(s.peer_id, b"\x00" * (self.params.max_message_bytes + 1))
            elif what == 2:
                inp = DirectReceived(s.peer_id, as_wire(Forged(victim.peer_id, "result")))
            elif what == 3 and e.recent:
                inp = DirectReceived(s.peer_id, as_wire(e.recent[rng.randrange(len(e.recent))]))
            elif what == 4:
                jid = f"spam-{rng.getrandbits(40):010x}"
                offer = Offer(
                    job_id=jid,
                    attempt=1,
                    spec_digest=honest_digest(jid),
                    requirements=OfferRequirements(image=IMAGE),
                    timeout_s=60.0,
                    bid_window_ms=250,
                    estimated_flops=1e9,
                )
                data = e.codec.seal(
                    s.identity, offer, e.now, rng.getrandbits(64).to_bytes(8, "big")
                )
                inp = GossipReceived("/meshd/offers/1", s.peer_id, as_wire(data))
            else:
                jid = self.plans[rng.randrange(len(self.plans))].job_id
                res = Result(
                    job_id=jid,
                    attempt=1,
                    replica=0,
                    status="succeeded",
                    output_digest=honest_digest(jid),
                )
                inp = DirectReceived(
                    s.peer_id,
                    as_wire(
                        e.codec.seal(s.identity, res, e.now, rng.getrandbits(64).to_bytes(8, "big"))
                    ),
                )
            e.at(e.now + e.latency(), EV_INPUT, (victim.idx, inp))
        e.call_at(
            e.now + 1 + int(rng.expovariate(1.0 / self.knobs.spam_interval_ms)),
            lambda: self._spam(s),
        )

    def _liveness(self) -> None:
        e, k = self.engine, self.knobs
        self.spamming = False
        self._heal()
        k.gossip_loss = k.direct_loss = k.direct_dup = 0.0
        for s in e.slots:
            if s.dying:
                e._die(s)
            if not s.alive:
                e.restart(s)

    def all_terminal(self) -> bool:
        return len(self.checker.finished) >= len(self.plans)

    # ------------------------------------------------------------ running

    def execute(self) -> dict[str, Any]:
        e = self.engine
        wall0, cpu0 = time.perf_counter(), time.process_time()
        collecting = gc.isenabled()
        if GC_OFF_DURING_RUN:
            gc.disable()
        if self.cfg.procs > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            self.part = Partitions.fork(e, self.cfg.procs)
            self.part.apply_fact = self.checker.apply_fact
            self.checker.share = self.part.share.facts
        try:
            self._execute(wall0, cpu0)
        except BaseException as exc:
            if self.part is not None and self.part.is_child:
                self.part.child_exit(exc)
            raise
        finally:
            if collecting:
                gc.enable()
        return self.result

    def _execute(self, wall0: float, cpu0: float) -> None:
        e = self.engine
        try:
            self._schedule()
            self._run_main_phase(cpu0)
            self._liveness()
            self._run_until(e.now + self.knobs.liveness_ms, stop=self.all_terminal)
            self._progress(cpu0, "the end")
            lost = self.checker.lost_jobs(self.submitted)
            if lost:
                self.checker.fail(
                    f"{len(lost)} job(s) lost: not terminal {self.knobs.liveness_ms} ms into "
                    f"the liveness phase: " + "; ".join(self._job_story(j) for j in lost[:5])
                )
            self.checker.check_logs()
            ok, failure = True, None
        except SimFailure as exc:
            ok, failure = False, str(exc)
        wall = time.perf_counter() - wall0
        summary = self._summary(ok, failure, time.process_time() - cpu0)
        if self.part is None:
            parts = [summary]
        else:
            parts = self.part.gather(summary)
            if self.part.is_child:
                self.part.child_exit(None)  # process 0 makes the report
        merged = merge_summaries(parts)
        self.checker.runs_per_job = merged["runs_per_job"]  # the workers' starts, every process's
        self.result = self._metrics(merged["ok"], merged["failure"], wall, merged)
        self.result["cpu_s"] = round(merged["cpu_s"], 2)
        if self.part is not None:
            self.result["procs"] = self.cfg.procs
            self.result["windows"] = self.part.windows
            self.result["split"] = [p.get("split") for p in parts]

    def _run_until(self, end_ms: int, stop: Callable[[], bool] | None = None) -> None:
        """Run the engine, or this process's part of a split run, to ``end_ms``."""
        if self.part is not None:
            self.part.run_until(end_ms, stop)
        else:
            self.engine.run_until(end_ms, stop=stop, check_every=500)

    def _summary(self, ok: bool, failure: str | None, cpu_s: float) -> dict[str, Any]:
        """What the report needs from this process's nodes (all of them unless
        the run is split; :func:`merge_summaries` adds up the processes')."""
        e, c = self.engine, self.checker
        counters: Counter[str] = Counter()
        for s in e.owned_slots():
            counters.update(s.node.counters)
        live = [s.node for s in e.owned_slots() if s.alive]
        reasons: Counter[str] = Counter()
        for jid, (st, _) in c.finished.items():
            if st == "failed" and jid in self.submitted and e.owns(self.origin_of[jid]):
                job = e.slots[self.origin_of[jid]].node.origin.jobs.get(jid)
                reasons[(job.reason if job else "?")[:60]] += 1
        return {
            "ok": ok,
            "failure": failure,
            "cpu_s": cpu_s,
            "counters": counters,
            "events": e.events,
            "trace": e.trace,
            "stats": Counter(e.stats),
            "work_started": c.counts.get("work_started", 0),
            "runs_per_job": c.runs_per_job,
            "escapes": list(c.escapes),
            "adverts_at_start": self._adverts_at_start,
            "adverts": self._advert_totals(),
            "est_nodes": [node.peers.est_nodes() for node in live],
            "intervals": [node.worker.advert_interval() for node in live],
            "shards": [node.peers.shards for node in live],
            "view_max": max((len(node.peers) for node in live), default=0),
            "fail_reasons": reasons,
            "split": None
            if self.part is None
            else {
                "windows": self.part.windows,
                "sent": self.part.sent,
                "exchange_s": round(self.part.exchange_s, 2),
                "cpu_s": round(cpu_s, 2),
            },
        }

    def _run_main_phase(self, cpu0: float) -> None:
        """Run to the end of the submission phase (``t_safety_end``); with
        ``progress_ms`` set, in slices of that much virtual time, each followed
        by a progress line. Slicing changes nothing: no event runs between
        two slices, and the phase has no stop condition."""
        e = self.engine
        if self.progress_ms <= 0:
            self._run_until(self.t_safety_end)
            return
        while e.now < self.t_safety_end:
            self._run_until(min(self.t_safety_end, e.now + self.progress_ms))
            self._progress(cpu0, "")

    def _progress(self, cpu0: float, label: str) -> None:
        """One progress line on stderr (``--progress``): virtual time since the
        mesh started, the run's CPU so far, core steps, jobs terminal."""
        if self.progress_ms <= 0 or (self.part is not None and self.part.is_child):
            return
        e = self.engine
        steps = e.events + (self.part.events_elsewhere if self.part is not None else 0)
        print(
            f"progress: virtual {(e.now - self.t0) / 1000:9.3f} s  "
            f"cpu {time.process_time() - cpu0:8.1f} s  steps {steps:>11,}  "
            f"terminal {len(self.checker.finished):,}/{len(self.plans):,}"
            + (f"  ({label})" if label else ""),
            file=sys.stderr,
            flush=True,
        )

    def _advert_totals(self) -> tuple[int, int]:
        """Adverts received (gossiped or relayed) and sent, over this process's nodes."""
        got = sent = 0
        for s in self.engine.owned_slots():
            c = s.node.counters
            got += c["accepted_advert"] + c["relayed_adverts"]
            sent += c["adverts_sent"]
        return got, sent

    def _note_adverts(self) -> None:
        self._adverts_at_start = self._advert_totals()

    def _membership_metrics(self, m: dict[str, Any]) -> dict[str, Any]:
        """Advert traffic after the warm-up (the boot adverts excluded), per
        node, and what the core's pacing says for this mesh: membership's CPU
        as % of one core is adverts received per second times what one costs
        a real daemon (``costs.DAEMON_ADVERT_US``, measured by
        ``tests/bench/bench_advert_cost.py``). ``m``: the merged summaries."""
        e = self.engine
        span_s = (e.now - self.t_start) / 1000
        if m["adverts_at_start"] is None or span_s <= 0:
            return {}
        got, sent = m["adverts"]
        n = len(e.slots)
        recv_rate = (got - m["adverts_at_start"][0]) / n / span_s
        est, intervals, shards = sorted(m["est_nodes"]), sorted(m["intervals"]), sorted(m["shards"])
        return {
            "adverts_received_per_node_per_s": round(recv_rate, 3),
            "adverts_sent_per_node_per_s": round((sent - m["adverts_at_start"][1]) / n / span_s, 5),
            "membership_cpu_pct_of_core": round(recv_rate * DAEMON_ADVERT_US / 10_000, 2),
            "daemon_us_per_advert": DAEMON_ADVERT_US,
            "est_nodes_median": est[len(est) // 2] if est else 0,
            "advert_interval_ms_median": intervals[len(intervals) // 2] if intervals else 0,
            "advert_shards_median": shards[len(shards) // 2] if shards else 0,
            "view_size_max": m["view_max"],
        }

    def _job_story(self, jid: str) -> str:
        slot = self.engine.slots[self.origin_of[jid]]
        if not self.engine.owns(slot.idx):
            return f"{jid} (origin {slot.idx}, stepped by another process)"
        job = slot.node.origin.jobs.get(jid) if slot.alive else None
        if job is None:
            return f"{jid} (origin {slot.idx} {'down' if not slot.alive else 'forgot it'})"
        runs = ",".join(f"{r.state}@{self.engine.by_peer.get(r.worker)}" for r in job.runs.values())
        return f"{jid} at origin {slot.idx}: {job.state} runs[{runs}] failures={job.failures}"

    # ------------------------------------------------------------ metrics

    def _metrics(
        self, ok: bool, failure: str | None, wall: float, merged: dict[str, Any]
    ) -> dict[str, Any]:
        e, c, cfg = self.engine, self.checker, self.cfg
        done = {j: v for j, v in c.finished.items() if j in self.submitted}
        plans = {p.job_id: p for p in self.plans}
        ct = np.array(
            [t - plans[j].submit_ms for j, (st, t) in done.items() if st == "succeeded"],
            dtype=float,
        )
        counters: Counter[str] = merged["counters"]
        runs_started = merged["work_started"]
        res: dict[str, Any] = {
            "scenario": cfg.scenario,
            "seed": cfg.seed,
            "nodes": cfg.nodes,
            "jobs": cfg.jobs,
            "mutant": cfg.mutant,
            "commit": commit(),
            "ok": ok,
            "failure": failure,
            "replay": replay_command(cfg),
            "knobs": dataclasses.asdict(self.knobs),
            "wall_s": round(wall, 2),
            "virtual_s": round((e.now - self.t_start) / 1000, 1),
            "events": merged["events"],
            "events_per_s": round(merged["events"] / max(wall, 1e-9)),
            "trace": f"{merged['trace'] & 0xFFFFFFFFFFFFFFFF:016x}",
            "submitted": len(self.submitted),
            "succeeded": sum(1 for st, _ in done.values() if st == "succeeded"),
            "failed": sum(1 for st, _ in done.values() if st == "failed"),
            "lost": len(self.submitted) - len(done),
            "runs_started": runs_started,
            "completion_mean_s": float(ct.mean() / 1000) if len(ct) else None,
            "completion_p50_s": float(np.percentile(ct, 50) / 1000) if len(ct) else None,
            "completion_p99_s": float(np.percentile(ct, 99) / 1000) if len(ct) else None,
            "crashes": merged["stats"].get("crashes", 0),
            "restarts": merged["stats"].get("restarts", 0),
            "rejected": {k[9:]: v for k, v in counters.items() if k.startswith("rejected_")},
            "counters": {
                k: counters[k]
                for k in (
                    "offers_sent",
                    "bids_sent",
                    "bid_late",
                    "awards_sent",
                    "awards_refused",
                    "offers_unanswered",
                    "result_ignored",
                    "send_failed",
                    "adverts_applied",
                    "credit_declines",
                )
            },
            "escapes": len(merged["escapes"]),
        }
        if "ledger_sync_converged" in merged["stats"]:  # receipts thinned (engine.py, "Scale")
            res["ledger_sync_converged"] = merged["stats"]["ledger_sync_converged"]
        res["membership"] = self._membership_metrics(merged)
        res["fail_reasons"] = dict(merged["fail_reasons"].most_common(5))
        if cfg.scenario in ("load", "scale"):
            res.update(self._baselines(ct))
        if self.knobs.cpu_model:
            res.update(self._cpu_metrics())
        if self.burst_origin is not None:
            res.update(self._burst_metrics(ct, done, counters))
        if self.params.replication_fraction > 0 or self.params.untrusted_replication > 0:
            res["verification_overhead_by_quarter"] = self._overhead_by_quarter()
        if self.knobs.liar_fraction > 0:
            res.update(self._cheater_metrics(runs_started))
        self._completions = ct
        return res

    def _cpu_metrics(self) -> dict[str, Any]:
        stats = [self.engine.inbox_statistics(s) for s in self.engine.slots]
        return {
            "inbox_wait_max_ms_any": max(st["wait_max_ms"] for st in stats),
            "inbox_shed_total": sum(st["shed"] for st in stats),
            "inbox_refused_total": sum(st["refused"] for st in stats),
            "inbox_dropped_total": sum(st["dropped_oldest"] for st in stats),
        }

    def _burst_metrics(
        self, ct: np.ndarray, done: dict[str, tuple[str, int]], counters: Counter[str]
    ) -> dict[str, Any]:
        """What the `burst` scenario reports; the verdict line sums it up."""
        assert self.burst_origin is not None
        o = self.engine.slots[self.burst_origin]
        ost = self.engine.inbox_statistics(o)
        omni = baselines.omniscient(self.hw, self.plans)
        self._omni = omni
        awards = self.awards.per_job
        most = max(awards.values(), default=0)
        n, ok_jobs = len(self.submitted), sum(1 for st, _ in done.values() if st == "succeeded")
        out: dict[str, Any] = {
            "all_terminal": len(done) == n,
            "ratio_mean_vs_omniscient": float(ct.mean() / omni.mean()) if len(ct) else None,
            "ratio_p99_vs_omniscient": (
                float(np.percentile(ct, 99) / np.percentile(omni, 99)) if len(ct) else None
            ),
            "awards_max_per_job": most,
            "awards_total": sum(awards.values()),
            "award_ack_timeouts": self.awards.refused.get("award not acknowledged in time", 0),
            "refusal_reasons": dict(self.awards.refused.most_common(4)),
            "stale_rejected": counters.get("rejected_stale", 0),
            "origin_inbox": ost,
            "origin_offers_sent": o.node.counters.get("offers_sent", 0),
            "origin_bid_late": o.node.counters.get("bid_late", 0),
        }
        ratio = out["ratio_mean_vs_omniscient"]
        verdict = (
            "COLLAPSE"
            if len(done) < n
            else "COMPLETES"
            if ok_jobs == n and most <= 2
            else "DEGRADED"
        )
        out["verdict"] = (
            f"{verdict}: {ok_jobs}/{n} succeeded, "
            f"{n - len(done)} not terminal after {self.knobs.liveness_ms // 1000} s; "
            f"mean {ratio if ratio is not None else float('nan'):.2f}x omniscient; "
            f"most awards per job {most}; origin inbox wait max {ost['wait_max_ms']} ms, "
            f"shed {ost['shed']}, refused {ost['refused']}"
        )
        return out

    def _baselines(self, ct: np.ndarray) -> dict[str, Any]:
        if not len(ct):
            return {}
        omni = baselines.omniscient(self.hw, self.plans)
        rnd = baselines.random_placement(self.hw, self.plans, self.cfg.seed)
        self._omni, self._rnd = omni, rnd
        return {
            "omniscient_mean_s": float(omni.mean() / 1000),
            "omniscient_p99_s": float(np.percentile(omni, 99) / 1000),
            "random_mean_s": float(rnd.mean() / 1000),
            "random_p99_s": float(np.percentile(rnd, 99) / 1000),
            "ratio_mean_vs_omniscient": float(ct.mean() / omni.mean()),
            "ratio_p99_vs_omniscient": float(np.percentile(ct, 99) / np.percentile(omni, 99)),
            "ideal_mean_s": float(
                np.mean([p.actual_flops for p in self.plans])
                / np.mean([h.speed_gflops * 1e9 for h in self.hw])
            ),
        }

    def _overhead_by_quarter(self) -> str:
        """Extra runs per job for the jobs submitted in each quarter of the run:
        the first quarter pays for getting strangers trusted, the last shows
        the steady state."""
        plans = sorted(
            (p for p in self.plans if p.job_id in self.submitted), key=lambda p: p.submit_ms
        )
        out = []
        for q in range(4):
            part = plans[q * len(plans) // 4 : (q + 1) * len(plans) // 4]
            if part:
                runs = sum(self.checker.runs_per_job[p.job_id] for p in part)
                out.append(f"{runs / len(part) - 1:.3f}")
        return " / ".join(out)

    def _cheater_metrics(self, runs_started: int) -> dict[str, Any]:
        """Verification overhead and, per liar, accepted results before it was first caught."""
        e, c = self.engine, self.checker
        liars = {s.peer_id: s for s in e.slots if s.hw.liar}
        accepted_before: dict[str, int] = dict.fromkeys(liars, 0)
        first_invalid: dict[str, int] = {}
        for t, _, body in c.verdicts:
            for w in body.get("invalid", []):
                if w in liars and w not in first_invalid:
                    first_invalid[w] = t
            for w in body.get("valid", []):
                if w in liars and w not in first_invalid:
                    accepted_before[w] += 1
        banned_by = {
            p: sum(1 for s in e.slots if s.alive and s.node.trust.banned(p, e.now)) for p in liars
        }
        caught = [p for p in liars if p in first_invalid]
        n_jobs = max(1, len(self.submitted))
        return {
            "liars": len(liars),
            "liars_caught": len(caught),
            "verification_overhead": round((runs_started - n_jobs) / n_jobs, 3),
            "liar_accepted_before_caught_mean": (
                float(np.mean([accepted_before[p] for p in caught])) if caught else None
            ),
            "liar_accepted_before_caught_max": max(
                (accepted_before[p] for p in caught), default=None
            ),
            "liar_detect_time_s_mean": (
                float(np.mean([(first_invalid[p] - self.t_start) / 1000 for p in caught]))
                if caught
                else None
            ),
            "liar_banned_by_origins_mean": float(np.mean(list(banned_by.values())))
            if liars
            else None,
            "wrong_results_accepted_unverified": len(c.escapes),
        }


class AwardWatch:
    """Counts awards per job and why awards were refused (from the origins' appends)."""

    def __init__(self) -> None:
        self.per_job: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def on_append(self, slot: Slot, kind: str, body: dict[str, Any]) -> None:
        if kind == "run_awarded":
            self.per_job[body["job_id"]] += 1
        elif kind == "run_refused":
            self.refused[str(body.get("reason", "")).split(" (")[0][:60]] += 1

    def on_start(self, slot: Slot, eff: Any) -> None:
        pass


def burst_jobs(rng: random.Random, n: int, at_ms: int, speed: str) -> list[JobPlan]:
    """``n`` short jobs (BURST_JOB_S on a reference core), all submitted at ``at_ms``."""
    out = []
    for i in range(n):
        secs = rng.uniform(*BURST_JOB_S)
        flops = secs * REF_GFLOPS * 1e9
        job_id = f"job-{i:07d}"
        spec = JobSpec(
            image=IMAGE,
            command=["work", job_id],
            estimated_flops=flops,
            timeout_s=600.0,
            speed=cast(Speed, speed),  # a knob's text: JobSpec validates it
        )
        out.append(JobPlan(job_id, at_ms, flops, flops, spec))
    return out


def merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from the processes' (``Run._summary``; one process: its own).
    Counts add up; a split run's trace is the hash of the processes' traces."""
    if len(parts) == 1:
        return parts[0]
    out = dict(parts[0])
    for k in ("counters", "stats", "fail_reasons", "runs_per_job"):
        out[k] = sum((Counter(p[k]) for p in parts), Counter())
    for k in ("cpu_s", "events", "work_started"):
        out[k] = sum(p[k] for p in parts)
    for k in ("escapes", "est_nodes", "intervals", "shards"):
        out[k] = [x for p in parts for x in p[k]]
    out["view_max"] = max(p["view_max"] for p in parts)
    out["trace"] = hash(tuple(p["trace"] for p in parts))
    out["adverts"] = tuple(map(sum, zip(*(p["adverts"] for p in parts), strict=True)))
    starts = [p["adverts_at_start"] for p in parts]
    out["adverts_at_start"] = None if None in starts else tuple(map(sum, zip(*starts, strict=True)))
    failed = [p for p in parts if not p["ok"]]
    out["ok"] = not failed
    out["failure"] = failed[0]["failure"] if failed else None
    return out


def mutant_params(factory: Any, params: CoreParams) -> CoreParams:
    """A mutant's ``sim_param_overrides``, for the CoreParams fields this core has."""
    over = getattr(factory, "sim_param_overrides", {})
    known = {f.name for f in dataclasses.fields(params)}
    return dataclasses.replace(params, **{k: v for k, v in over.items() if k in known})


def run(cfg: RunConfig, progress_s: float = 0.0) -> Run:
    """Build and execute one run; ``progress_s`` > 0 prints a progress line
    on stderr every that many virtual seconds of the submission phase and
    one at the end (the run itself is the same)."""
    r = Run(cfg)
    r.progress_ms = int(progress_s * 1000)
    r.execute()
    return r
