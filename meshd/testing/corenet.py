"""A synchronous, virtual-time network of protocol cores — the core's "fake link".

``CoreNet`` wires several :class:`meshd.core.node.Node` objects together the
way etcd-raft's test ``network`` does: messages are pumped in virtual time,
with one-line faults (``cut``, ``isolate``, ``heal``, ``crash``, ``restart``,
``drop_rate``). Executors are fakes: a job "runs" for a duration derived from
its spec and produces an output digest computed from its command, so honest
workers agree and a configured liar does not. Logs are in memory and survive
``crash``/``restart``. Nothing here touches sockets, threads or the wall clock.

Used by the core's unit tests and as the reference driver for the simulator.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshd.core.events import (
    TOPIC_ADVERTS,
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
    InputsFetched,
    JobLog,
    LocalCapabilities,
    Publish,
    RunChecker,
    Send,
    SendFailed,
    SetPeerScore,
    StartExecution,
    Tick,
)
from meshd.core.identity import Identity
from meshd.core.interpreter import EffectInterpreter
from meshd.core.jobspec import JobSpec
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.peers import parse_advert_topic
from meshd.core.placement import local_image_id


def honest_output(spec: JobSpec) -> str:
    """The digest every honest worker produces for a job (a pure function of the spec)."""
    return (
        "sha256:" + hashlib.sha256(repr((spec.image, spec.command, spec.env)).encode()).hexdigest()
    )


def default_caps(
    cores: int = 4,
    score: float = 50.0,
    price: float = 0.001,
    gpus: tuple = (),
    images: tuple[str, ...] = ("meshd/busybox:1",),
    gpu_gflops: float | None = None,
    gpu_driver: str = "",
    image_ids: tuple[tuple[str, str], ...] = (),
    image_archives: tuple[str, ...] = (),
    image_pieces: tuple[str, ...] = (),
) -> LocalCapabilities:
    return LocalCapabilities(
        cores=cores,
        ram_mb=8192,
        disk_free_mb=100_000,
        gpus=gpus,
        gpu_runtime=bool(gpus),
        runtimes=("docker",),
        images=images,
        score_gflops=score,
        gpu_gflops=gpu_gflops,
        tier="consumer-gpu" if gpus else "cpu",
        price=price,
        capacity=cores,
        network_allowed=False,
        gpu_driver=gpu_driver,
        image_ids=image_ids,
        image_archives=image_archives,
        image_pieces=image_pieces,
    )


@dataclass
class FakeWorker:
    """How a node's fake executor behaves."""

    caps: LocalCapabilities = field(default_factory=default_caps)
    lie_rate: float = 0.0
    """Probability a run returns a wrong output digest."""
    float_noise: bool = False
    """Honest but not bit-exact: every run's digest differs, yet the default
    checker (``CoreNet.checker``) judges it equivalent to the honest output."""
    duration_ms: Callable[[JobSpec], int] = lambda spec: 1_000
    exit_code: Callable[[JobSpec], int] = lambda spec: 0
    healthy: bool = True
    output: Callable[[JobSpec], str] = honest_output
    """The digest an honest run produces (e.g. one per GPU model: honest
    replicas of different determinism classes that disagree)."""
    status: Callable[[JobSpec], str | None] = lambda spec: None
    """A status that overrides the run's outcome (e.g. ``error``: the executor
    failed, the worker's fault; ``oom``: the job's); None: from the exit code."""
    input_failure: Callable[[JobSpec], str | None] = lambda spec: None
    """Whose fault (``job`` or ``worker``) it is that the run's inputs cannot
    be fetched; None: they arrive."""
    writes_log: bool = False
    """Every run reports a stored log (``ExecutionFinished.log_digest``)."""
    reported_share: float = 1.0
    """The share of each run's real duration it reports in its result (a
    worker that lies about its speed reports less)."""


@dataclass
class NodeSlot:
    node: Node
    log: list[tuple[str, dict[str, Any]]]
    worker: FakeWorker
    alive: bool = True
    running: dict[tuple[str, int, int], int] = field(default_factory=dict)
    job_logs: list[JobLog] = field(default_factory=list)
    """The ``JobLog`` effects this node carried out (live output it received)."""
    log_fetches: list[FetchLog] = field(default_factory=list)
    """The ``FetchLog`` effects this node carried out."""
    input_fetches: list[FetchInputs] = field(default_factory=list)
    """The ``FetchInputs`` effects this node carried out."""
    advert_topics: tuple[str, ...] = (TOPIC_ADVERTS,)
    """The adverts topics the node listens on (its last ``AdvertTopics``)."""
    effects: CoreNetEffects = field(init=False)


class CoreNetEffects(EffectInterpreter):
    """Carries out one node's effects on the fake link: appends to its
    in-memory log, messages scheduled after a latency (or ``SendFailed`` across
    a cut), fake executions, transfers and checker verdicts as scheduled inputs."""

    def __init__(self, net: CoreNet, slot: NodeSlot) -> None:
        self.net = net
        self.slot = slot
        self.peer = slot.node.peer_id

    def do_append(self, eff: Append) -> None:
        self.slot.log.append((eff.kind, eff.body))

    def do_publish(self, eff: Publish) -> None:
        net, peer = self.net, self.peer
        advert = parse_advert_topic(eff.topic) is not None
        for other in net.order:
            if advert and eff.topic not in net.slots[other].advert_topics:
                continue  # not subscribed to that adverts shard (§5.2)
            if other != peer and net.reachable(peer, other) and net.rng.random() >= net.drop_rate:
                net._schedule(
                    net.now_ms + net._latency(peer),
                    other,
                    GossipReceived(eff.topic, peer, eff.data),
                )

    def do_send(self, eff: Send) -> None:
        net, peer = self.net, self.peer
        if eff.kind in net.silenced.get(peer, ()):
            return
        if (
            eff.to_peer in net.slots
            and net.reachable(peer, eff.to_peer)
            and net.rng.random() >= net.drop_rate
        ):
            net._schedule(
                net.now_ms + net._latency(peer), eff.to_peer, DirectReceived(peer, eff.data)
            )
        else:
            net._schedule(
                net.now_ms + net._latency(),
                peer,
                SendFailed(eff.to_peer, eff.kind, eff.job_id, "unreachable"),
            )

    def do_fetch_inputs(self, eff: FetchInputs) -> None:
        self.slot.input_fetches.append(eff)
        fault = self.slot.worker.input_failure(eff.spec)
        inp = InputsFetched(eff.job_id, eff.attempt, eff.replica, True)
        if fault is not None:
            inp = InputsFetched(
                eff.job_id, eff.attempt, eff.replica, False, "HTTP Error 404: Not Found", fault
            )
        self.net._schedule(self.net.now_ms + 1, self.peer, inp)

    def do_start_execution(self, eff: StartExecution) -> None:
        self.net._start(self.peer, self.slot, eff)

    def do_cancel_execution(self, eff: CancelExecution) -> None:
        self.slot.running.pop((eff.job_id, eff.attempt, eff.replica), None)

    def do_fetch_blob(self, eff: FetchBlob) -> None:
        net = self.net
        ok = net.reachable(self.peer, eff.from_peer)
        reason = "" if ok else "worker unreachable"
        if ok and net.refuse_outputs > 0:
            net.refuse_outputs -= 1
            ok, reason = False, "worker refused the output"
        net._schedule(
            net.now_ms + net._latency(),
            self.peer,
            BlobFetched(eff.job_id, eff.attempt, eff.replica, eff.digest, ok, reason),
        )

    def do_run_checker(self, eff: RunChecker) -> None:
        net = self.net
        net._schedule(
            net.now_ms + net.checker_delay_ms,
            self.peer,
            CheckerFinished(eff.job_id, eff.a, eff.b, net.checker(eff)),
        )

    def do_job_log(self, eff: JobLog) -> None:
        self.slot.job_logs.append(eff)

    def do_fetch_log(self, eff: FetchLog) -> None:
        self.slot.log_fetches.append(eff)

    def do_advert_topics(self, eff: AdvertTopics) -> None:
        self.slot.advert_topics = eff.topics

    def do_set_peer_score(self, eff: SetPeerScore) -> None:
        pass


class CoreNet:
    def __init__(
        self,
        n: int,
        *,
        seed: int = 1,
        params: CoreParams | None = None,
        latency_ms: tuple[int, int] = (5, 20),
        workers: list[FakeWorker] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.params = params or CoreParams()
        self.latency_ms = latency_ms
        self.now_ms = 1_000_000
        self.drop_rate = 0.0
        self.refuse_outputs = 0
        """Fault: this many output transfers (FetchBlob) fail as if the worker
        would not serve them, then transfers work again."""
        self._cut: set[frozenset[str]] = set()
        self._queue: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        self.slots: dict[str, NodeSlot] = {}
        self.order: list[str] = []
        self.delivered = 0
        self.noisy: dict[str, str] = {}
        """Digest of a float-noisy run -> the honest digest it is equivalent to."""
        self.checker: Callable[[RunChecker], bool] = self.tolerance_checker
        """Answers ``RunChecker`` effects (the shell's tolerance/checker comparison)."""
        self.checker_delay_ms = 1
        """How long a comparison takes (a checker container takes seconds)."""
        self.sender_latency_ms: dict[str, tuple[int, int]] = {}
        self.silenced: dict[str, set[str]] = {}
        """Fault: message kinds (``Send.kind``) a sender's messages of which
        vanish without a trace (no ``SendFailed``): a peer that never answers."""
        """Fault: messages a peer sends (gossip and direct) take this long
        instead of ``latency_ms`` (a loaded node that answers late)."""
        for i in range(n):
            worker = workers[i] if workers else FakeWorker()
            self.add_node(Identity.from_seed_int(seed * 1000 + i + 1), worker)

    # ------------------------------------------------------------ topology

    def add_node(self, identity: Identity, worker: FakeWorker) -> str:
        node = Node(self.params, identity, random.Random(self.rng.random()), self.now_ms)
        slot = NodeSlot(node, [], worker)
        slot.effects = CoreNetEffects(self, slot)
        self.slots[node.peer_id] = slot
        self.order.append(node.peer_id)
        self._boot(slot)
        return node.peer_id

    def _boot(self, slot: NodeSlot) -> None:
        self._feed(slot.node.peer_id, slot.worker.caps)
        self._feed(
            slot.node.peer_id,
            ExecutorHealth(
                slot.worker.healthy, "" if slot.worker.healthy else "health check failed"
            ),
        )

    def node(self, i: int | str) -> Node:
        return self.slots[self.order[i] if isinstance(i, int) else i].node

    def cut(self, a: str, b: str) -> None:
        self._cut.add(frozenset((a, b)))

    def isolate(self, a: str) -> None:
        for b in self.slots:
            if b != a:
                self.cut(a, b)

    def heal(self) -> None:
        self._cut.clear()

    def crash(self, peer: str) -> None:
        slot = self.slots[peer]
        slot.alive = False
        slot.running.clear()

    def restart(self, peer: str) -> None:
        slot = self.slots[peer]
        old = slot.node
        node = Node(self.params, old.identity, random.Random(self.rng.random()), self.now_ms)
        slot.node, slot.alive = node, True
        slot.advert_topics = (TOPIC_ADVERTS,)  # a new process listens on the plain topic
        effects = node.restore(list(slot.log))
        self._apply(peer, effects)
        self._boot(slot)

    def reachable(self, a: str, b: str) -> bool:
        return self.slots[b].alive and frozenset((a, b)) not in self._cut

    # ------------------------------------------------------------ pumping

    def _schedule(self, at_ms: int, peer: str, inp: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at_ms, self._seq, peer, inp))

    def _latency(self, sender: str | None = None) -> int:
        return self.rng.randint(*self.sender_latency_ms.get(sender or "", self.latency_ms))

    def _feed(self, peer: str, inp: Any) -> None:
        slot = self.slots[peer]
        if not slot.alive:
            return
        self._apply(peer, slot.node.step(inp, self.now_ms))

    def submit(self, i: int | str, spec: JobSpec, job_id: str | None = None) -> str:
        from meshd.core.events import JobSubmitted

        peer = self.order[i] if isinstance(i, int) else i
        job_id = job_id or f"job-{self.rng.getrandbits(48):012x}"
        self._feed(peer, JobSubmitted(spec, job_id))
        return job_id

    def input(self, i: int | str, inp: Any) -> None:
        self._feed(self.order[i] if isinstance(i, int) else i, inp)

    def _apply(self, peer: str, effects: list[Any]) -> None:
        self.slots[peer].effects.carry_out(effects)

    def _start(self, peer: str, slot: NodeSlot, eff: StartExecution) -> None:
        key = (eff.job_id, eff.attempt, eff.replica)
        token = self.rng.getrandbits(32)
        slot.running[key] = token
        w = slot.worker
        duration = min(w.duration_ms(eff.spec), int(eff.timeout_s * 1000))
        timed_out = w.duration_ms(eff.spec) > eff.timeout_s * 1000
        code = w.exit_code(eff.spec)
        digest = w.output(eff.spec)
        if self.rng.random() < w.lie_rate:
            digest = "sha256:" + hashlib.sha256(b"lie" + token.to_bytes(4, "big")).hexdigest()
        elif w.float_noise:
            noisy = "sha256:" + hashlib.sha256(b"noise" + token.to_bytes(4, "big")).hexdigest()
            self.noisy[noisy] = digest
            digest = noisy
        status = w.status(eff.spec) or (
            "timeout" if timed_out else ("succeeded" if code == 0 else "failed")
        )
        fin = ExecutionFinished(
            eff.job_id,
            eff.attempt,
            eff.replica,
            status,
            None if timed_out else code,
            f"exit code {code}" if status == "failed" else "",
            int(duration * w.reported_share),
            int(duration * w.reported_share),
            1 << 20,
            digest if status == "succeeded" else None,
            1024,
            image_id=local_image_id(eff.spec.image, w.caps.image_ids),
            log_digest=(
                "sha256:" + hashlib.sha256(b"log" + token.to_bytes(4, "big")).hexdigest()
                if w.writes_log
                else None
            ),
        )
        self._schedule(self.now_ms + duration, peer, ("finish", key, token, fin))

    def tolerance_checker(self, eff: RunChecker) -> bool:
        """Default verdict: equivalent iff both outputs are (noisy forms of) one honest output."""
        return self.noisy.get(eff.a, eff.a) == self.noisy.get(eff.b, eff.b)

    def step(self) -> bool:
        """Deliver the next event (or due tick); False if nothing is pending."""
        pending = [(s.node.next_deadline(), p) for p, s in self.slots.items() if s.alive]
        deadlines = [(d, p) for d, p in pending if d is not None]
        next_tick = min(deadlines, default=None)
        if not self._queue and next_tick is None:
            return False
        if self._queue and (next_tick is None or self._queue[0][0] <= next_tick[0]):
            at, _, peer, inp = heapq.heappop(self._queue)
            self.now_ms = max(self.now_ms, at)
            if isinstance(inp, tuple) and inp[0] == "finish":
                _, key, token, fin = inp
                slot = self.slots[peer]
                if not slot.alive or slot.running.get(key) != token:
                    return True
                del slot.running[key]
                inp = fin
            self.delivered += 1
            self._feed(peer, inp)
        else:
            assert next_tick is not None
            self.now_ms = max(self.now_ms, next_tick[0])
            self._feed(next_tick[1], Tick())
        return True

    def run_for(self, ms: int) -> None:
        end = self.now_ms + ms
        while self.step():
            if self.now_ms >= end:
                break

    def run_until(self, pred: Callable[[], bool], max_ms: int = 120_000) -> bool:
        end = self.now_ms + max_ms
        while not pred():
            if not self.step() or self.now_ms > end:
                return pred()
        return True

    def job(self, origin: int | str, job_id: str) -> Any:
        return self.node(origin).origin.jobs[job_id]
