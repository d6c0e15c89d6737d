"""The trio shell: one loop that feeds inputs to the core and carries out its effects.

Theory of operation
-------------------
Adapters turn the outside world into core inputs on one bounded inbox:
gossip and direct messages (``meshd.net``), executor events
(``meshd.exec``), API calls (``meshd.api``) and timers. The loop waits on the
inbox until the core's next deadline, calls ``Node.step``, and carries out the
effects in order:

1. every ``Append`` of the batch goes to the event log in **one synced write**
   (group commit) — before anything else of the batch happens;
2. then messages are sent and published, executions started or cancelled and
   blobs fetched, each as its own task (bounded by ``RuntimeParams``), whose
   outcome comes back as another input.

The loop never blocks on the network or the executor. A peer's bad input is
turned into a rejection by the core; an adapter's failure becomes an input
(``SendFailed``, ``BlobFetched(ok=False)``, ...), never a crash of the loop.

Gossip passes :mod:`.gossipcheck`'s validators (signature, type, freshness,
replay, ban) before libp2p forwards it; the core checks again.

Start order: event log (fails fast if another daemon holds the data dir) →
restore the core from the log → network → executor (reap orphans, health
check) → capabilities → API (``api.addr`` written last, so ``mesh`` sees the
daemon only when it is ready).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import shutil
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from meshd import __version__
from meshd.config import DataDir, NodeConfig, remove_api_addr, write_api_addr
from meshd.core.events import (
    BLOB_PROTOCOL,
    DIRECT_PROTOCOL,
    TOPIC_ADVERTS,
    TOPIC_OFFERS,
    TOPIC_RECEIPTS,
    Append,
    BlobFetched,
    CancelExecution,
    CheckerFinished,
    DirectReceived,
    ExecutionFinished,
    ExecutionProgress,
    ExecutorHealth,
    FetchBlob,
    FetchInputs,
    GossipReceived,
    InboxLoad,
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
from meshd.core.inbox import Inbox, InboxParams, Lane, direct_lane
from meshd.core.interpreter import EffectInterpreter, split_appends
from meshd.core.logrecord import AppendItem
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.ratelimit import PeerBuckets
from meshd.exec.base import ExecParams, ExecRequest, Executor
from meshd.net.errors import PeerUnreachable, RemoteError
from meshd.net.host import MeshHost
from meshd.net.params import NetParams
from meshd.store.blobs import BlobStore, pack_dir
from meshd.store.eventlog import EventLog

from .gossipcheck import CachingCodec, GossipValidator
from .jobio import bare, compare_outputs, fetch_inputs, prefixed, run_checker_container
from .sendq import SendQueueParams, SendQueues

log = logging.getLogger("meshd.daemon")


class InboxBusy(Exception):
    """A peer's direct message met a full inbox: the request is answered busy."""


@dataclass(frozen=True)
class RuntimeParams:
    inbox: InboxParams = field(default_factory=InboxParams)
    """The inbox's lanes and shedding (``meshd.core.inbox``; own table)."""
    sendq: SendQueueParams = field(default_factory=SendQueueParams)
    """The per-peer send queues (``meshd.runtime.sendq``; own table)."""
    max_batch_inputs: int = 64
    """Inputs handled in one turn of the loop, whose log records go to disk in
    one synced write before any of their effects is carried out."""
    load_report_ms: int = 1_000
    """How often the core is told how congested the inbox is (``InboxLoad``)."""
    max_concurrent_fetches: int = 8
    """Blob transfers (inputs, outputs) in flight at once."""
    blob_requests_per_s: float = 20.0
    """Blob requests per second one peer may make of us (a token bucket);
    beyond it a request is refused as busy, before any look-up. An honest
    peer makes one per input of a run it holds, or one per output we made
    for it."""
    blob_request_burst: float = 64.0
    """Size of that bucket: requests one peer may make at once."""
    job_log_lines: int = 2_000
    """Log chunks kept per job for `mesh logs`."""
    capabilities_refresh_s: float = 30.0
    """How often hardware, images and load are re-read for the advert."""
    health_recheck_s: float = 60.0
    """How often a cold node re-runs its executor health check."""
    score_refresh_s: float = 3_600.0
    """How often the compute score is re-measured."""
    price_unit_s: float = 3_600.0
    """config.price is credits per GFLOPS-hour; the core's price is per GFLOP."""
    verified_cache_entries: int = 512
    """Envelopes the gossip validator opened, kept until the core opens them
    (so a signature is verified once); a miss only costs a second check. At
    most this many × ``max_message_bytes`` of memory, typically a few hundred KB."""


@dataclass
class JobLogBuffer:
    chunks: deque[tuple[int, bytes]]
    changed: trio.Event = field(default_factory=trio.Event)


def now_ms() -> int:
    return int(time.time() * 1000)


def mono_ms() -> int:
    return int(time.monotonic() * 1000)


class Daemon(EffectInterpreter):
    """One meshd node: event log, protocol core, libp2p host, executor, control API."""

    def __init__(
        self,
        data_dir: Path,
        config: NodeConfig,
        identity: Identity,
        *,
        executor: Executor,
        executor_reason: str,
        core_params: CoreParams | None = None,
        net_params: NetParams | None = None,
        exec_params: ExecParams | None = None,
        runtime_params: RuntimeParams | None = None,
        measure_score: bool = True,
    ) -> None:
        self.dirs = DataDir(Path(data_dir))
        self.config = config
        self.identity = identity
        self.core_params = core_params or CoreParams().with_overrides(
            {k: v for k, v in config.params.items()}
        )
        self.net_params = net_params or NetParams()
        self.exec_params = exec_params or ExecParams()
        self.rp = runtime_params or RuntimeParams()
        self.executor = executor
        self.executor_reason = executor_reason
        self.measure_score = measure_score
        self.started_ms = now_ms()
        self.node: Node | None = None
        self.codec = CachingCodec(self.rp.verified_cache_entries)
        self.gossip_check: GossipValidator | None = None
        self.log: EventLog | None = None
        self.blobs = BlobStore(self.dirs.blobs)
        self.host = MeshHost(identity, self.net_params, list(config.listen), list(config.bootstrap))
        self.inbox: Inbox[Any] = Inbox(self.rp.inbox)
        self._inbox_nonempty = trio.Event()
        self._inbox_room = trio.Event()
        self.sendq = SendQueues(
            self.rp.sendq,
            request=self._request_direct,
            on_failed=self._send_failed,
            clock_ms=mono_ms,
            retryable=(PeerUnreachable, RemoteError),
        )
        self._last_load_report = 0
        self.api: Any = None
        self._last_congestion = 0
        self._fetch_limit = trio.Semaphore(self.rp.max_concurrent_fetches)
        self._runs: dict[tuple[str, int, int], trio.CancelScope] = {}
        self.job_logs: dict[str, JobLogBuffer] = {}
        self.images: tuple[str, ...] = ()
        self.hardware: Any = None
        self.score: Any = None
        self.dropped_inputs = 0
        self.api_port: int | None = None
        self._nursery: trio.Nursery | None = None
        self.ready = trio.Event()
        self._reputation: dict[str, float] = {}
        self.drop_peers: set[str] = set()
        """Fault injection for tests: all traffic with these peers is dropped."""
        self.core_errors = 0
        self.send_errors: dict[str, int] = {}
        self._blob_bucket = PeerBuckets(
            self.rp.blob_requests_per_s, self.rp.blob_request_burst, 4 * self.net_params.max_peers
        )
        self.blob_requests_refused: Counter[str] = Counter()
        self._staged: list[Append] = []

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started(self)`` once the API is up."""
        for d in (self.dirs.work,):
            d.mkdir(parents=True, exist_ok=True)
        self.log = EventLog.open(self.dirs.log, self.identity)
        try:
            await self._run_opened(task_status)
        finally:
            remove_api_addr(self.dirs.root)
            self.log.close()

    async def _run_opened(self, task_status: Any) -> None:
        assert self.log is not None
        t = now_ms()
        self.node = Node(
            self.core_params,
            self.identity,
            random.Random(secrets.randbits(64)),
            t,
            codec=self.codec,
            version=__version__,
        )
        records = [(r.kind, r.body) for r in self.log.iter() if r.kind != "genesis"]
        restore_effects = self.node.restore(records)
        log.info("event log: %d records, head seq %d", len(records) + 1, self.log.head[0])
        from meshd.api.server import ApiServer
        from meshd.config import ensure_api_token

        from .api_routes import install_routes

        api = self.api = ApiServer(ensure_api_token(self.dirs.root))
        install_routes(api, self)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.sendq.start(nursery)
            self.gossip_check = GossipValidator(self.node, self.codec, now_ms)
            for topic in (TOPIC_ADVERTS, TOPIC_OFFERS, TOPIC_RECEIPTS):
                self.host.set_topic_validator(topic, self.gossip_check.for_topic(topic))
                self.host.subscribe(topic, self._on_gossip(topic))
            self.host.handle(DIRECT_PROTOCOL, self._on_direct)
            self.host.handle(BLOB_PROTOCOL, self._on_blob_request)
            self.host.set_app_score(lambda peer: self._reputation.get(peer, 0.0))
            await nursery.start(self.host.run)
            reaped = await self.executor.reap_orphans()
            if reaped:
                log.info("reaped %d orphaned containers from a previous run", reaped)
            await self._measure()
            await self._refresh_images()
            await self._apply(restore_effects)
            await self._feed(self._capabilities())
            nursery.start_soon(self._health_loop)
            nursery.start_soon(self._capabilities_loop)
            port: int = await nursery.start(api.serve, "127.0.0.1", self.config.api_port)
            self.api_port = port
            write_api_addr(self.dirs.root, "127.0.0.1", port)
            log.info(
                "meshd %s ready: peer %s, api 127.0.0.1:%d, listening on %s, executor: %s",
                __version__,
                self.identity.peer_id,
                self.api_port,
                ", ".join(self.host.listen_addrs),
                self.executor_reason,
            )
            self.ready.set()
            task_status.started(self)
            try:
                await self._loop()
            finally:
                nursery.cancel_scope.cancel()

    # ------------------------------------------------------------ the loop

    async def _feed(self, inp: Any) -> None:
        """Queue one of our own inputs, waiting for room in the inbox's local lane."""
        while not self.inbox.put(inp, Lane.LOCAL, mono_ms()):
            if self._inbox_room.is_set():
                self._inbox_room = trio.Event()
            await self._inbox_room.wait()
        self._inbox_nonempty.set()

    def feed_nowait(self, inp: Any) -> bool:
        """Queue an input from a sync callback; False (and counted) if the lane is full."""
        if self._feed_peer(inp, Lane.LOCAL):
            return True
        self.dropped_inputs += 1
        return False

    def _feed_peer(self, inp: Any, lane: Lane) -> bool:
        """Queue an input without waiting: gossip always (the oldest may be
        dropped); other lanes only if they have room."""
        ok = self.inbox.put(inp, lane, mono_ms())
        if ok:
            self._inbox_nonempty.set()
        return ok

    async def _loop(self) -> None:
        """Handle inputs in batches of up to ``max_batch_inputs``: step the core
        on each, then make all their log records durable in one synced write,
        then carry out their other effects in order."""
        assert self.node is not None
        while True:
            if not len(self.inbox):
                deadline = self.node.next_deadline()
                wait_s = max(0.0, (deadline - now_ms()) / 1000) if deadline is not None else 3600.0
                self._inbox_nonempty = trio.Event()
                with trio.move_on_after(wait_s):
                    await self._inbox_nonempty.wait()
            effects: list[Any] = []
            awaited: list[trio.Event] = []
            handled = 0
            while handled < self.rp.max_batch_inputs:
                popped = self.inbox.pop(mono_ms())
                if popped is None:
                    break
                handled += 1
                self._step(popped[0], effects, awaited)
            if not handled:
                self._step(Tick(), effects, awaited)
            self._inbox_room.set()
            self._report_load(effects)
            if effects:
                await self._apply(effects)
            for done in awaited:
                done.set()
            await trio.sleep(0)  # let adapters queue more work between batches

    def _step(self, inp: Any, effects: list[Any], awaited: list[trio.Event]) -> None:
        assert self.node is not None
        if isinstance(inp, _Awaited):
            awaited.append(inp.done)
            inp = inp.inp
        try:
            effects.extend(self.node.step(inp, now_ms()))
        except Exception:
            if not isinstance(inp, (GossipReceived, DirectReceived)):
                raise
            # A peer's input must never take the daemon down: a core bug
            # it triggers is logged with the input's origin and counted.
            self.core_errors += 1
            log.exception("core failed on input from peer %s (dropped)", inp.from_peer)

    def _report_load(self, effects: list[Any]) -> None:
        """Tell the core how congested our inbox is, once per ``load_report_ms``
        and whenever it crosses the busy threshold."""
        assert self.node is not None
        t = mono_ms()
        congestion = self.inbox.congestion_ms(t)
        busy = self.node.params.worker_busy_wait_ms
        crossed = (congestion > busy) != (self._last_congestion > busy)
        if crossed or t - self._last_load_report >= self.rp.load_report_ms:
            self._last_load_report, self._last_congestion = t, congestion
            effects.extend(self.node.step(InboxLoad(congestion), now_ms()))

    async def _apply(self, effects: list[Any]) -> None:
        """Carry out one batch: appends durably first (one synced write), then
        everything else in order."""
        assert self.log is not None and self._nursery is not None
        appends, rest = split_appends(effects)
        if appends:
            self.carry_out(appends)
            await self._commit()
        self.carry_out(rest)

    async def _commit(self) -> None:
        """Write the staged appends in one synced ``EventLog.append_batch``."""
        ts = now_ms()
        items = [(a.kind, a.body, ts, a.key) for a in self._staged]
        self._staged = []
        await trio.to_thread.run_sync(self._append_items, items)

    def _append_items(self, items: list[tuple[str, Any, int, bytes | None]]) -> None:
        assert self.log is not None
        self.log.append_batch(
            [AppendItem(kind=k, body=b, ts_ms=t, key=key) for k, b, t, key in items]
        )

    # ------------------------------------------------------------ effects

    def do_append(self, eff: Append) -> None:
        """Stage the record for the batch's group commit (``_commit``)."""
        self._staged.append(eff)

    def do_publish(self, eff: Publish) -> None:
        self._spawn(self._publish, eff)

    def do_send(self, eff: Send) -> None:
        if eff.to_peer in self.drop_peers:
            self._send_failed(eff, "partitioned (test fault)")
        else:
            self.sendq.put(eff)

    def do_fetch_inputs(self, eff: FetchInputs) -> None:
        self._spawn(self._fetch_inputs, eff)

    def do_start_execution(self, eff: StartExecution) -> None:
        self._spawn(self._execute, eff)

    def do_cancel_execution(self, eff: CancelExecution) -> None:
        scope = self._runs.get((eff.job_id, eff.attempt, eff.replica))
        if scope is not None:
            scope.cancel()

    def do_fetch_blob(self, eff: FetchBlob) -> None:
        self._spawn(self._fetch_blob, eff)

    def do_run_checker(self, eff: RunChecker) -> None:
        self._spawn(self._check, eff)

    def do_job_log(self, eff: JobLog) -> None:
        self._job_log(eff.job_id, eff.data)

    def do_set_peer_score(self, eff: SetPeerScore) -> None:
        self._reputation[eff.peer_id] = eff.reputation
        if eff.banned:
            self.host.block_peer(eff.peer_id)

    def _spawn(self, fn: Callable[[Any], Awaitable[None]], eff: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, eff)

    # ------------------------------------------------------------ network adapters

    def _on_gossip(self, topic: str) -> Any:
        def handler(from_peer: str, data: bytes) -> None:
            if from_peer not in self.drop_peers:
                log.debug("gossip on %s from %s (%d bytes)", topic, from_peer[-8:], len(data))
                self._feed_peer(GossipReceived(topic, from_peer, data), Lane.GOSSIP)

        return handler

    async def _on_direct(self, from_peer: str, data: bytes) -> bytes:
        if from_peer in self.drop_peers:
            raise ConnectionError("partitioned (test fault)")
        log.debug("direct from %s (%d bytes)", from_peer[-8:], len(data))
        lane = direct_lane(data, self.core_params.max_message_bytes)
        if not self._feed_peer(DirectReceived(from_peer, data), lane):
            raise InboxBusy(f"busy: {self.rp.inbox.bound(lane)} {lane.name.lower()} messages wait")
        return b"ok"

    async def _on_blob_request(self, from_peer: str, data: bytes) -> bytes:
        """Serve a blob to a peer entitled to it (``Node.may_serve_blob``: a
        worker holding a run of our job that has it as input, the origin of a
        run whose output it is), at most ``blob_requests_per_s`` per peer. A
        blob the peer may not have is answered exactly like a missing one."""
        if from_peer in self.drop_peers:
            raise ConnectionError("partitioned (test fault)")
        if not self._blob_bucket.take(from_peer, int(time.monotonic() * 1000)):
            self.blob_requests_refused["rate"] += 1
            raise LookupError("busy: too many blob requests; retry later")
        digest = bare(data.decode("ascii", "replace"))
        assert self.node is not None
        if not self.node.may_serve_blob(from_peer, digest):
            self.blob_requests_refused["not_entitled"] += 1
            raise LookupError(f"no blob {digest[:80]}")
        try:
            if self.blobs.has(digest):
                return await trio.to_thread.run_sync(self.blobs.get, digest)
        except Exception as exc:  # a malformed digest from a peer
            raise LookupError(f"bad blob request: {exc}") from None
        raise LookupError(f"no blob {digest[:80]}")

    async def _publish(self, eff: Publish) -> None:
        try:
            await self.host.publish(eff.topic, eff.data)
        except Exception as exc:  # a publish failure is not fatal: adverts repeat, offers re-offer
            log.warning("publish on %s failed: %s", eff.topic, exc)

    async def _request_direct(self, peer: str, data: bytes) -> None:
        if peer in self.drop_peers:
            raise ConnectionError("partitioned (test fault)")
        await self.host.request(peer, DIRECT_PROTOCOL, data)

    def _send_failed(self, eff: Send, error: str) -> None:
        """A direct message that will not be delivered becomes ``SendFailed``
        (an award's matters to the core; others are counted there)."""
        key = error.split(":")[0][:60]
        self.send_errors[key] = self.send_errors.get(key, 0) + 1
        self.feed_nowait(SendFailed(eff.to_peer, eff.kind, eff.job_id, error[:300]))

    async def fetch_blob_from(self, peer: str, digest: str) -> None:
        """Fetch a blob from a peer into the local store (sha256-checked)."""
        if self.blobs.has(bare(digest)):
            return
        if peer in self.drop_peers:
            raise ConnectionError("partitioned (test fault)")
        async with self._fetch_limit:
            data = await self.host.request(
                peer,
                BLOB_PROTOCOL,
                digest.encode("ascii"),
                timeout_s=max(60.0, self.net_params.request_timeout_s),
            )
        await trio.to_thread.run_sync(
            lambda: self.blobs.put_stream([data], expected_digest=bare(digest))
        )

    async def _fetch_blob(self, eff: FetchBlob) -> None:
        try:
            await self.fetch_blob_from(eff.from_peer, eff.digest)
            inp = BlobFetched(eff.job_id, eff.attempt, eff.replica, eff.digest, True)
        except Exception as exc:
            inp = BlobFetched(
                eff.job_id, eff.attempt, eff.replica, eff.digest, False, str(exc)[:300]
            )
        await self._feed(inp)

    # ------------------------------------------------------------ execution

    def run_dir(self, job_id: str, attempt: int, replica: int) -> Path:
        return self.dirs.work / f"{job_id}-{attempt}-{replica}"

    async def _fetch_inputs(self, eff: FetchInputs) -> None:
        d = self.run_dir(eff.job_id, eff.attempt, eff.replica)
        try:
            await fetch_inputs(self, eff.origin, eff.spec, d / "inputs")
            inp = InputsFetched(eff.job_id, eff.attempt, eff.replica, True)
        except Exception as exc:
            inp = InputsFetched(eff.job_id, eff.attempt, eff.replica, False, str(exc)[:300])
        await self._feed(inp)

    async def _execute(self, eff: StartExecution) -> None:
        key = (eff.job_id, eff.attempt, eff.replica)
        d = self.run_dir(*key)
        out_dir = d / "outputs"
        out_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(out_dir, 0o777)  # the job runs as an unprivileged user
        spec = eff.spec
        req = ExecRequest(
            job_id=f"{eff.job_id}-{eff.attempt}-{eff.replica}",
            image=spec.image,
            command=tuple(spec.command),
            env=dict(spec.env),
            input_dir=d / "inputs" if (d / "inputs").exists() else None,
            output_dir=out_dir,
            cpus=spec.requirements.cpus,
            memory_mb=spec.requirements.memory_mb,
            gpus=spec.requirements.gpus,
            gpu_min_memory_mb=spec.requirements.gpu_min_memory_mb,
            network=spec.requirements.network and self.config.allow_network_jobs,
            timeout_s=eff.timeout_s,
        )

        def on_log(data: bytes) -> None:
            self.feed_nowait(ExecutionProgress(eff.job_id, eff.attempt, eff.replica, data))

        with trio.CancelScope() as scope:
            self._runs[key] = scope
            try:
                result = await self.executor.run(req, on_log)
            finally:
                self._runs.pop(key, None)
        if scope.cancelled_caught:
            await self.executor.cancel(req.job_id)
            shutil.rmtree(d, ignore_errors=True)
            return
        digest, size = None, 0
        if result.status == "succeeded":
            try:
                archive = await trio.to_thread.run_sync(pack_dir, out_dir)
                digest = prefixed(await trio.to_thread.run_sync(self.blobs.put, archive))
                size = len(archive)
            except Exception as exc:
                result = type(result)(
                    status="output_limit",
                    exit_code=result.exit_code,
                    reason=f"outputs could not be packed: {exc}"[:300],
                    duration_s=result.duration_s,
                )
        await self._feed(
            ExecutionFinished(
                eff.job_id,
                eff.attempt,
                eff.replica,
                result.status,
                result.exit_code,
                result.reason,
                int(result.duration_s * 1000),
                None if result.cpu_s is None else int(result.cpu_s * 1000),
                result.peak_memory_bytes,
                digest,
                size,
                executor_fault=result.status == "error",
            )
        )
        shutil.rmtree(d, ignore_errors=True)

    async def _check(self, eff: RunChecker) -> None:
        assert self.node is not None
        job = self.node.jobs.get(eff.job_id)
        try:
            if job is not None and job.spec.checker_image:
                same = await run_checker_container(
                    self, job.spec.checker_image, eff.a, eff.b, eff.job_id
                )
            elif job is not None and job.spec.tolerance is not None:
                same = await trio.to_thread.run_sync(
                    compare_outputs,
                    self.blobs,
                    eff.a,
                    eff.b,
                    job.spec.tolerance.rel,
                    job.spec.tolerance.abs,
                )
            else:
                same = eff.a == eff.b
        except Exception as exc:
            log.warning("comparing outputs of %s failed: %s", eff.job_id, exc)
            same = False
        await self._feed(CheckerFinished(eff.job_id, eff.a, eff.b, same))

    def _job_log(self, job_id: str, data: bytes) -> None:
        buf = self.job_logs.get(job_id)
        if buf is None:
            if len(self.job_logs) >= 10_000:
                self.job_logs.pop(next(iter(self.job_logs)))
            buf = self.job_logs[job_id] = JobLogBuffer(deque(maxlen=self.rp.job_log_lines))
        buf.chunks.append((now_ms(), data))
        buf.changed.set()
        buf.changed = trio.Event()

    # ------------------------------------------------------------ capabilities and health

    async def _refresh_images(self) -> None:
        lister = getattr(self.executor, "local_images", None)
        if not callable(lister):
            return
        try:
            self.images = tuple(await trio.to_thread.run_sync(lister))[:256]
        except Exception as exc:
            log.warning("listing local images failed: %s", exc)

    async def _measure(self) -> None:
        from meshd.exec.hardware import profile_hardware
        from meshd.exec.score import ComputeScore, measure_compute_score

        self.hardware = await trio.to_thread.run_sync(profile_hardware, self.dirs.root)
        if self.measure_score:
            self.score = await trio.to_thread.run_sync(measure_compute_score, self.hardware.gpus)
        else:
            self.score = ComputeScore(
                cpu_gflops=10.0, gpu_gflops=None, tier="cpu", measured_at_monotonic=time.monotonic()
            )

    def _capabilities(self) -> LocalCapabilities:
        hw, score = self.hardware, self.score
        gpu_runtime = bool(getattr(self.executor, "gpu_runtime", None))
        images = self.images
        runtimes = (self.executor.name,)
        return LocalCapabilities(
            cores=hw.cpu_logical,
            ram_mb=hw.ram_total_bytes // (1 << 20),
            disk_free_mb=hw.disk_free_bytes // (1 << 20),
            gpus=tuple((g.name, g.memory_total_mb) for g in hw.gpus),
            gpu_runtime=gpu_runtime,
            runtimes=runtimes,
            images=images,
            score_gflops=round(score.cpu_gflops, 3),
            gpu_gflops=score.gpu_gflops,
            tier=score.tier,
            price=self.config.price / self.rp.price_unit_s,
            capacity=max(1, hw.cpu_logical),
            network_allowed=self.config.allow_network_jobs,
            addrs=tuple(self.host.listen_addrs),
            version=__version__,
        )

    async def _health_loop(self) -> None:
        while True:
            try:
                result = await self.executor.health_check()
                ok, reason = result.status == "succeeded", result.reason
            except Exception as exc:
                ok, reason = False, f"health check crashed: {exc}"
            await self._feed(ExecutorHealth(ok, reason[:300]))
            if not ok:
                log.warning("executor health check failed: %s", reason)
            assert self.node is not None
            await trio.sleep(
                self.rp.health_recheck_s if not self.node.warm else self.rp.health_recheck_s * 10
            )

    async def _capabilities_loop(self) -> None:
        last_score = time.monotonic()
        while True:
            await trio.sleep(self.rp.capabilities_refresh_s)
            if time.monotonic() - last_score > self.rp.score_refresh_s:
                await self._measure()
                last_score = time.monotonic()
            await self._refresh_images()
            await self._feed(self._capabilities())

    # ------------------------------------------------------------ API helpers

    async def submit(self, inp: Any) -> None:
        """Queue an API input and return once the core has processed it (and its
        records are durable), so the caller's next read sees its effect."""
        done = trio.Event()
        await self._feed(_Awaited(inp, done))
        await done.wait()


@dataclass(frozen=True)
class _Awaited:
    inp: Any
    done: trio.Event


def build_daemon(
    config: NodeConfig,
    identity: Identity,
    data_dir: Path,
    *,
    measure_score: bool = True,
    **kwargs: Any,
) -> Daemon:
    """A daemon with the executor chosen by the configuration (raises ExecutorUnavailable)."""
    import dataclasses

    from meshd.exec.factory import make_executor

    exec_params = kwargs.pop("exec_params", None) or ExecParams()
    exec_params = dataclasses.replace(
        exec_params,
        process_executor_enabled=config.allow_process_executor or config.executor == "process",
        allow_network=config.allow_network_jobs,
    )
    executor, reason = make_executor(config.executor, exec_params, identity.peer_id[-12:])
    if not executor.sandboxed:
        log.warning("UNSANDBOXED: jobs run as plain processes of this user (%s)", reason)
    return Daemon(
        data_dir,
        config,
        identity,
        executor=executor,
        executor_reason=reason,
        exec_params=exec_params,
        measure_score=measure_score,
        **kwargs,
    )


def run(config: NodeConfig, identity: Identity, data_dir: Path, overrides: dict[str, Any]) -> int:
    """``meshd start``: run the daemon until SIGINT/SIGTERM; returns the exit code."""
    import signal

    from meshd.exec.base import ExecutorUnavailable

    if overrides:
        log.info("command-line overrides: %s", ", ".join(sorted(overrides)))
    try:
        daemon = build_daemon(config, identity, data_dir)
    except ExecutorUnavailable as exc:
        log.error("%s", exc)
        return 1

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(daemon.run)
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        return 0

    return trio.run(main)
