"""The trio shell: one loop that feeds inputs to the core and carries out its effects.

Theory of operation
-------------------
Adapters turn the outside world into core inputs on one bounded inbox:
gossip and direct messages (``meshd.net``), executor events
(``meshd.exec``), API calls (``meshd.api``) and timers. The loop waits on the
inbox until the core's next deadline, calls ``Node.step``, and carries out the
effects in order (``Daemon`` is the shell's
:class:`meshd.core.interpreter.EffectInterpreter`):

1. every ``Append`` of the batch goes to the event log in **one synced write**
   (group commit) — before anything else of the batch happens;
2. then messages are sent and published, executions started or cancelled and
   blobs fetched, each as its own task (bounded by ``RuntimeParams``), whose
   outcome comes back as another input.

The loop never blocks on the network or the executor. A peer's bad input is
turned into a rejection by the core; an adapter's failure becomes an input
(``SendFailed``, ``BlobFetched(ok=False)``, ...), never a crash of the loop.

The daemon holds the loop and nothing else; its parts do the I/O:

- :mod:`.sendq` — per-peer send queues for ``Send``;
- :mod:`.execution` — ``FetchInputs``, ``StartExecution``, ``CancelExecution``;
- :mod:`.transfer` — the blob protocol (serving, ``FetchBlob``, ``FetchLog``);
- :mod:`.checker` — ``RunChecker``;
- :mod:`.joblogs` — runs' stored logs and ``JobLog`` live buffers for ``mesh logs``;
- :mod:`.capabilities` — hardware, score, images, executor health (inputs);
- :mod:`.diskgc` — the blob collector and the sweep of orphaned run dirs;
- :mod:`.gossipcheck` — gossip validation before libp2p forwards a message
  (signature, type, freshness, replay, ban; the core checks again);
- :mod:`.view` and :mod:`.api_routes` — the control API, which reads the node
  only through the read-only ``NodeView`` and acts only through
  :meth:`Daemon.submit` and :meth:`Daemon.put_blob`.

Start order: event log (fails fast if another daemon holds the data dir) →
restore the core from the log → remove orphaned run dirs → network → executor (reap orphans, health
check) → capabilities → API (``api.addr`` written last, so ``mesh`` sees the
daemon only when it is ready).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import random
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshd import __version__
from meshd.config import DataDir, NodeConfig, remove_api_addr, write_api_addr, write_atomic
from meshd.core.events import (
    BLOB_PROTOCOL,
    DIRECT_CHANNEL_PROTOCOL,
    DIRECT_PROTOCOL,
    MAX_ERROR_CHARS,
    TOPIC_ADVERTS,
    TOPIC_OFFERS,
    TOPIC_RECEIPTS,
    AdvertTopics,
    Append,
    CancelExecution,
    DirectReceived,
    FetchBlob,
    FetchInputs,
    FetchLog,
    GossipReceived,
    InboxLoad,
    JobLog,
    ManifestStored,
    PeerConnected,
    Publish,
    RunChecker,
    Send,
    SendFailed,
    SetPeerScore,
    ShutdownRequested,
    StartExecution,
    Tick,
)
from meshd.core.identity import Identity
from meshd.core.inbox import Inbox, Lane, direct_lane
from meshd.core.interpreter import EffectInterpreter, split_appends
from meshd.core.logrecord import AppendItem
from meshd.core.manifest import ManifestError, countersign, manifest_body
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.peers import parse_advert_topic, shard_of
from meshd.exec.base import ExecParams, Executor
from meshd.net.errors import PeerUnreachable, RemoteError
from meshd.net.host import MeshHost
from meshd.net.params import NetParams
from meshd.store.blobs import BlobParams, BlobStore, BlobStoreFullError
from meshd.store.eventlog import EventLog

from .capabilities import Capabilities
from .checker import Checker
from .clock import Clock, SystemClock
from .clock import now_ms as now_ms  # re-exported: tools and tests stamp messages with it
from .diskgc import BlobRefs, DiskGC
from .eventlogger import EventLogger
from .execution import Executions
from .gossipcheck import CachingCodec, GossipValidator
from .images import ImageCache
from .jobio import prefixed
from .joblogs import JobLogs
from .metrics import Metrics
from .params import RuntimeParams
from .sendq import SendQueues
from .transfer import SIZE_HEADER_BYTES, BlobTransfer
from .view import NodeView

log = logging.getLogger("meshd.daemon")


class InboxBusy(Exception):
    """A peer's direct message met a full inbox: the request is answered busy."""


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
        host: MeshHost | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.dirs = DataDir(Path(data_dir))
        self.config = config
        self.identity = identity
        self.core_params = core_params or CoreParams().with_overrides(
            {k: v for k, v in config.params.items()}
        )
        self.net_params = net_params or NetParams(
            mdns=config.mdns,
            dht=config.dht,
            relay_service=config.relay_service,
            reachability=config.reachability,
            hole_punching=config.hole_punching,
        )
        if config.relay_circuit_max_bytes is not None:
            self.net_params = dataclasses.replace(
                self.net_params, relay_circuit_max_bytes=config.relay_circuit_max_bytes
            )
        self.exec_params = exec_params or ExecParams()
        self.rp = runtime_params or RuntimeParams()
        if config.blob_store_max_bytes is not None:
            self.rp = dataclasses.replace(self.rp, blob_store_max_bytes=config.blob_store_max_bytes)
        if not config.direct_channels:
            self.rp = dataclasses.replace(self.rp, direct_channels=False)
        self.executor = executor
        self.executor_reason = executor_reason
        self.clock: Clock = clock or SystemClock()
        """Timers run on ``clock.monotonic_ms()``; ``clock.wall_ms()`` only stamps."""
        self.started_ms = 0
        """When ``run`` started, on the monotonic timeline."""
        self.node: Node | None = None
        self.view: NodeView | None = None
        self.events = EventLogger()
        """INFO lines for what the node does (records appended, peers joining/leaving)."""
        self._peers_logged_ms = -(10**12)
        self._connected_seen: set[str] = set()
        """Peers connected at the last look (``_log_peers`` reports the new ones)."""
        self.metrics = Metrics(lambda: self.view, self.clock.monotonic_ms)
        """Prometheus families (``GET /metrics``)."""
        """The read-only view the API answers from (set once the core is restored)."""
        self.codec = CachingCodec(self.rp.verified_cache_entries)
        self.gossip_check: GossipValidator | None = None
        self.log: EventLog | None = None
        self.blobs = BlobStore(
            self.dirs.blobs, BlobParams(max_total_bytes=self.rp.blob_store_max_bytes)
        )
        self.disk = DiskGC(
            self.blobs, self.dirs.work, self.dirs.log, self.rp, wall_ms=self.clock.wall_ms
        )
        self.host = host or MeshHost(
            identity, self.net_params, list(config.listen), list(config.bootstrap)
        )
        self.inbox: Inbox[Any] = Inbox(self.rp.inbox)
        self._inbox_nonempty = trio.Event()
        self._inbox_room = trio.Event()
        self.sendq = SendQueues(
            self.rp.sendq,
            request=self._request_direct,
            on_failed=self._send_failed,
            clock_ms=self.clock.monotonic_ms,
            retryable=(PeerUnreachable, RemoteError),
            metrics=self.metrics,
        )
        if self.rp.blob_chunk_bytes + SIZE_HEADER_BYTES > self.net_params.max_response_bytes:
            raise ValueError("blob_chunk_bytes must leave room in the network's max_response_bytes")
        self.transfer = BlobTransfer(
            self.blobs,
            self.host,
            may_serve=self._may_serve_blob,
            feed=self._feed,
            monotonic_ms=self.clock.monotonic_ms,
            requests_per_s=self.rp.blob_requests_per_s,
            request_burst=self.rp.blob_request_burst,
            max_peers=4 * self.net_params.max_peers,
            max_concurrent_fetches=self.rp.max_concurrent_fetches,
            metrics=self.metrics,
            chunk_bytes=self.rp.blob_chunk_bytes,
            chunks_in_flight=self.rp.blob_chunks_in_flight,
            chunk_retries=self.rp.blob_chunk_retries,
            chunk_timeout_s=self.rp.blob_chunk_timeout_s,
            retry_pause_s=self.rp.blob_retry_pause_s,
            direct_wait_s=self.rp.blob_direct_wait_s,
            relay_reconnect_s=self.rp.blob_relay_reconnect_s,
        )
        self.counts: Counter[str] = Counter()
        """The image cache's counts (``image_*``), also counted in the registry."""
        self.images = ImageCache(
            executor,
            self.blobs,
            self.dirs.root / "images.json",
            fetch_blob=self.transfer.fetch_from,
            in_use=self._images_in_use,
            counts=self.counts,
            max_image_bytes=self.core_params.max_image_bytes,
            cache_max_bytes=self.rp.image_cache_max_bytes,
            archives_max_bytes=self.rp.image_archives_max_bytes,
            pull_images=self.exec_params.pull_images,
            on_count=lambda name: self.metrics.images.labels(
                event=name.removeprefix("image_")
            ).inc(),
            on_archives=self._image_archives_changed,
            piece_bytes=self.rp.image_piece_bytes,
            fetch_piece_max=self.rp.blob_chunk_bytes,
            load_buffer_pieces=self.rp.image_load_buffer_pieces,
        )
        self.executions = Executions(
            self.dirs.work,
            executor,
            self.blobs,
            fetch_blob=self.transfer.fetch_from,
            ensure_image=self.images.ensure,
            feed=self._feed,
            feed_nowait=self.feed_nowait,
            allow_network=config.allow_network_jobs,
            inputs=config.inputs,
            signer=(identity.peer_id, identity.sign),
            wall_ms=self.clock.wall_ms,
        )
        self.checker = Checker(self.blobs, executor, self.dirs.work, self._feed)
        self.job_logs = JobLogs(
            stream_bytes=self.rp.job_log_live_bytes,
            total_bytes=self.rp.job_log_live_total_bytes,
            max_jobs=self.rp.job_log_jobs,
        )
        self.capabilities = Capabilities(
            executor,
            self.dirs.root,
            config,
            self.rp,
            listen_addrs=lambda: self.host.listen_addrs,
            warm=self._warm,
            feed=self._feed,
            monotonic_ms=self.clock.monotonic_ms,
            measure_score=measure_score,
            image_archives=self.images.archives,
            image_pieces=self.images.piece_lists,
        )
        self.core_errors = 0
        self.api: Any = None
        self.api_port: int | None = None
        self.metrics_port: int | None = None
        """Port of ``metrics_listen`` (the token-less ``/metrics``), once bound."""
        self.ready = trio.Event()
        self._publishing = 0
        """Publishes under way (a clean shutdown waits for them, ``leave``)."""
        self._nursery: trio.Nursery | None = None
        self._reputation: dict[str, float] = {}
        self._staged: list[Append] = []
        self._last_load_report = 0
        self._last_congestion = 0

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
        self.started_ms = self.clock.monotonic_ms()
        node = self.node = Node(
            self.core_params,
            self.identity,
            random.Random(secrets.randbits(64)),
            self.started_ms,
            codec=self.codec,
            version=__version__,
        )
        records = [(r.kind, r.body, r.ts_ms) for r in self.log.iter() if r.kind != "genesis"]
        restore_effects = node.restore(records)
        log.info("event log: %d records, head seq %d", len(records) + 1, self.log.head[0])
        from meshd.api.server import ApiServer
        from meshd.config import ensure_api_token, parse_host_port

        from .api_routes import api_metrics_route, install_routes
        from .dashboard import Dashboard

        api = self.api = ApiServer(ensure_api_token(self.dirs.root), metrics=self.metrics)
        # Gossip validation judges message stamps: the wall clock.
        self.gossip_check = GossipValidator(
            node, self.codec, self.clock.wall_ms, metrics=self.metrics
        )
        self.view = NodeView(
            node,
            log=self.log,
            identity=self.identity,
            config=self.config,
            rp=self.rp,
            host=self.host,
            executor=self.executor,
            executor_reason=self.executor_reason,
            capabilities=self.capabilities,
            inbox=self.inbox,
            sendq=self.sendq,
            transfer=self.transfer,
            gossip_check=self.gossip_check,
            job_logs=self.job_logs,
            blobs=self.blobs,
            metrics=self.metrics,
            started_ms=self.started_ms,
            monotonic_ms=self.clock.monotonic_ms,
            disk=self.disk,
        )
        self.disk.set_references(self._blob_references)
        live_dirs = {self.executions.run_dir(*k).name for k in self.view.live_run_keys()}
        await trio.to_thread.run_sync(self.disk.sweep_run_dirs, live_dirs)
        install_routes(api, self.view, self)
        Dashboard(self.view, self.rp, self.log).install(api)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.sendq.start(nursery)
            for topic in (TOPIC_ADVERTS, TOPIC_OFFERS, TOPIC_RECEIPTS):
                self._subscribe(topic)
            self.host.handle(DIRECT_PROTOCOL, self._on_direct)
            self.host.handle_channel(DIRECT_CHANNEL_PROTOCOL, self._on_direct)
            self.host.handle(BLOB_PROTOCOL, self.transfer.serve)
            self.host.set_app_score(lambda peer: self._reputation.get(peer, 0.0))
            await nursery.start(self.host.run)
            reaped = await self.executor.reap_orphans()
            if reaped:
                log.info("reaped %d orphaned containers from a previous run", reaped)
            await self.capabilities.measure()
            await self.capabilities.refresh_images()
            await self._apply(restore_effects)
            for eff in self.view.missing_logs():  # fetches a restart cut short
                self.do_fetch_log(eff)
            await self._feed(self.capabilities.local())
            nursery.start_soon(self.capabilities.health_loop)
            nursery.start_soon(self.capabilities.refresh_loop)
            nursery.start_soon(self.disk.loop)
            if self.config.metrics_listen is not None:
                scrape = ApiServer(None, metrics=self.metrics, public=True)
                scrape.route("GET", "/metrics", api_metrics_route(self))
                host, want = parse_host_port(self.config.metrics_listen)
                self.metrics_port = await nursery.start(scrape.serve, host, want)
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

    # ------------------------------------------------------------ the inbox

    async def _feed(self, inp: Any) -> None:
        """Queue one of our own inputs, waiting for room in the inbox's local lane."""
        while not self.inbox.put(inp, Lane.LOCAL, self.clock.monotonic_ms()):
            if self._inbox_room.is_set():
                self._inbox_room = trio.Event()
            await self._inbox_room.wait()
        self._inbox_nonempty.set()

    def feed_nowait(self, inp: Any) -> bool:
        """Queue an input from a sync callback; False (and counted) if the lane is full."""
        if self._feed_peer(inp, Lane.LOCAL):
            return True
        self.metrics.inbox_dropped.inc()
        return False

    def _feed_peer(self, inp: Any, lane: Lane) -> bool:
        """Queue an input without waiting: gossip always (the oldest may be
        dropped); other lanes only if they have room."""
        ok = self.inbox.put(inp, lane, self.clock.monotonic_ms())
        if ok:
            self._inbox_nonempty.set()
        return ok

    def _on_gossip(self, topic: str) -> Any:
        def handler(from_peer: str, data: bytes) -> None:
            log.debug("gossip on %s from %s (%d bytes)", topic, from_peer[-8:], len(data))
            self._feed_peer(GossipReceived(topic, from_peer, data), Lane.GOSSIP)

        return handler

    async def _on_direct(self, from_peer: str, data: bytes) -> bytes:
        log.debug("direct from %s (%d bytes)", from_peer[-8:], len(data))
        lane = direct_lane(data, self.core_params.max_message_bytes)
        if not self._feed_peer(DirectReceived(from_peer, data), lane):
            raise InboxBusy(f"busy: {self.rp.inbox.bound(lane)} {lane.name.lower()} messages wait")
        return b"ok"

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        """Handle inputs in batches of up to ``max_batch_inputs``: step the core
        on each, then make all their log records durable in one synced write,
        then carry out their other effects in order."""
        assert self.node is not None
        while True:
            if not len(self.inbox):
                deadline = self.node.next_deadline()
                wait_s = (
                    max(0.0, (deadline - self.clock.monotonic_ms()) / 1000)
                    if deadline is not None
                    else 3600.0
                )
                self._inbox_nonempty = trio.Event()
                with trio.move_on_after(wait_s):
                    await self._inbox_nonempty.wait()
            effects: list[Any] = []
            awaited: list[trio.Event] = []
            handled = 0
            while handled < self.rp.max_batch_inputs:
                popped = self.inbox.pop(self.clock.monotonic_ms())
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
            self._log_peers()
            for done in awaited:
                done.set()
            await trio.sleep(0)  # let adapters queue more work between batches

    def _log_peers(self) -> None:
        """Log peers joining and leaving, at most once per advert interval."""
        assert self.node is not None
        t = self.clock.monotonic_ms()
        if t - self._peers_logged_ms >= self.core_params.advert_interval_ms:
            self._peers_logged_ms = t
            self.events.peers(e.peer_id for e in self.node.peers.alive(self.node.now_ms))
            # New connections go to the core: a newcomer asks its first peers
            # for the adverts they hold (specs/PROTOCOL.md §7.8).
            connected = set(self.host.connected_peers())
            for peer in sorted(connected - self._connected_seen):
                self.feed_nowait(PeerConnected(peer))
            self._connected_seen = connected

    def _step(self, inp: Any, effects: list[Any], awaited: list[trio.Event]) -> None:
        assert self.node is not None
        if isinstance(inp, _Awaited):
            awaited.append(inp.done)
            inp = inp.inp
        try:
            effects.extend(self.node.step(inp, self.clock.monotonic_ms(), self.clock.wall_ms()))
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
        t = self.clock.monotonic_ms()
        congestion = self.inbox.congestion_ms(t)
        busy = self.core_params.worker_busy_wait_ms
        crossed = (congestion > busy) != (self._last_congestion > busy)
        if crossed or t - self._last_load_report >= self.rp.load_report_ms:
            self._last_load_report, self._last_congestion = t, congestion
            effects.extend(self.node.step(InboxLoad(congestion), t, self.clock.wall_ms()))

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
        ts = self.clock.wall_ms()  # records are stamped with the wall clock
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
        if eff.kind == "job_finished" and eff.body.get("state") == "succeeded":
            self._spawn(self._store_manifest, eff.body["job_id"])
        self.events.record(eff.kind, eff.body)
        self.metrics.record(eff.kind, eff.body)

    def do_publish(self, eff: Publish) -> None:
        self._publishing += 1  # counted from now: the task may start later
        self._spawn(self._publish, eff)

    def do_send(self, eff: Send) -> None:
        self.sendq.put(eff)

    def do_fetch_inputs(self, eff: FetchInputs) -> None:
        self._spawn(self.executions.fetch_inputs, eff)

    def do_start_execution(self, eff: StartExecution) -> None:
        self._spawn(self.executions.execute, eff)

    def do_cancel_execution(self, eff: CancelExecution) -> None:
        self.executions.cancel(eff)

    def do_fetch_blob(self, eff: FetchBlob) -> None:
        self._spawn(self.transfer.fetch, eff)

    def do_run_checker(self, eff: RunChecker) -> None:
        self._spawn(self.checker.check, eff)

    def do_job_log(self, eff: JobLog) -> None:
        self.job_logs.add(eff.job_id, eff.attempt, eff.replica, eff.chunks)

    def do_fetch_log(self, eff: FetchLog) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(
            self.transfer.fetch_log,
            eff,
            self.rp.log_fetch_attempts,
            lambda: self.job_logs.stored(eff.job_id, eff.attempt, eff.replica),
        )

    def do_advert_topics(self, eff: AdvertTopics) -> None:
        """Listen on the adverts topics the core names (its shard's, §5.2),
        and leave the adverts topics it no longer does."""
        for topic in self.host.subscribed():
            if topic not in eff.topics and parse_advert_topic(topic) is not None:
                self.host.unsubscribe(topic)
        for topic in eff.topics:
            if topic not in self.host.subscribed():
                self._subscribe(topic)
        shards = [s for s in map(parse_advert_topic, eff.topics) if s is not None]
        # a topic's GossipSub mesh is made of connected peers: keep some of our shard's
        self.host.want_peers(lambda peer: any(shard_of(peer, n) == i for n, i in shards))
        log.info("advert topics now %s", ", ".join(eff.topics))

    def _subscribe(self, topic: str) -> None:
        assert self.gossip_check is not None  # made before the core's first effect
        self.host.set_topic_validator(topic, self.gossip_check.for_topic(topic))
        self.host.subscribe(topic, self._on_gossip(topic))

    def do_set_peer_score(self, eff: SetPeerScore) -> None:
        self._reputation[eff.peer_id] = eff.reputation
        if eff.banned:
            self.host.block_peer(eff.peer_id)

    def _spawn(self, fn: Callable[[Any], Awaitable[None]], eff: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, eff)

    async def _publish(self, eff: Publish) -> None:
        try:
            await self.host.publish(eff.topic, eff.data)
        except Exception as exc:  # a publish failure is not fatal: adverts repeat, offers re-offer
            log.warning("publish on %s failed: %s", eff.topic, exc)
        finally:
            self._publishing -= 1

    async def _request_direct(self, peer: str, data: bytes) -> None:
        if self.rp.direct_channels:
            await self.host.call(peer, DIRECT_CHANNEL_PROTOCOL, data, fallback=DIRECT_PROTOCOL)
        else:
            await self.host.request(peer, DIRECT_PROTOCOL, data)

    def _send_failed(self, eff: Send, error: str) -> None:
        """A direct message that will not be delivered becomes ``SendFailed``
        (an award's matters to the core; others are counted there)."""
        self.metrics.send_failed(error)
        self.feed_nowait(SendFailed(eff.to_peer, eff.kind, eff.job_id, error[:MAX_ERROR_CHARS]))

    # ------------------------------------------------------------ the core, for the parts

    def _may_serve_blob(self, peer: str, digest: str) -> bool:
        assert self.node is not None
        return self.node.may_serve_blob(peer, digest)

    def _warm(self) -> bool:
        assert self.view is not None
        return self.view.warm()

    def _images_in_use(self) -> set[str]:
        return set() if self.view is None else self.view.live_images()

    def _blob_references(self) -> BlobRefs:
        """What the collector keeps: the state's references, and the image
        archives the image cache keeps and serves (pinned, bounded by the
        cache, specs/PROTOCOL.md §5.1)."""
        assert self.view is not None
        refs = self.view.blob_references()
        kept = frozenset(self.images.pinned())
        return dataclasses.replace(refs, pinned=refs.pinned | kept, retained=refs.retained - kept)

    async def _image_archives_changed(self) -> None:
        """The image archives we serve changed: tell the core (it re-advertises)."""
        if self.capabilities.measured:
            await self._feed(self.capabilities.local())

    # ------------------------------------------------------------ commands (the API's)

    async def submit(self, inp: Any) -> None:
        """Queue an API input and return once the core has processed it (and its
        records are durable), so the caller's next read sees its effect."""
        done = trio.Event()
        await self._feed(_Awaited(inp, done))
        await done.wait()

    async def leave(self) -> None:
        """A clean shutdown's first step: the core publishes our leave notice
        (specs/PROTOCOL.md §7.1), and we wait until it and every publish
        before it left our gossip queues, at most ``leave_timeout_s``. A
        daemon that is not running yet just stops."""
        if self.node is None or not self.ready.is_set():
            return
        with trio.move_on_after(self.rp.leave_timeout_s) as scope:
            await self.submit(ShutdownRequested())
            while self._publishing or self._gossip_unsent():
                await trio.sleep(LEAVE_POLL_S)
        sent = self.node.counters.get("leave_notices_sent", 0)
        log.info(
            "leaving the mesh: leave notice %s",
            "not published" if not sent else "still queued" if scope.cancelled_caught else "sent",
        )

    def _gossip_unsent(self) -> int:
        """Gossip RPCs queued for our peers or being written to them."""
        stats = self.host.queue_stats()
        return stats["pubsub_outbound_total"] + stats["pubsub_writing"]

    async def result_manifest(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}/manifest``: the accepted result's manifest, the
        worker's signature checked and this origin's countersignature added
        (specs/JOB.md §3.1): the stored one (``result_manifest`` record), else
        made now. Raises ManifestError when there is none to give."""
        assert self.view is not None
        stored = self.view.job_manifest(job_id)
        if stored is not None and self.view.has_blob(stored):
            data = await trio.to_thread.run_sync(self.view.read_blob, stored)
            doc: dict[str, Any] = json.loads(data)
            return doc
        found = self.view.accepted_run(job_id)  # the core's state: read here, not in a thread
        if found is None:
            raise ManifestError(f"job {job_id} has no accepted result")
        return await trio.to_thread.run_sync(self._countersigned, job_id, *found)

    def _countersigned(
        self, job_id: str, run: dict[str, Any], verdict: dict[str, Any]
    ) -> dict[str, Any]:
        """The manifest document of an accepted run (blocking: reads its archive)."""
        assert self.view is not None
        if not run.get("manifest_sig"):
            raise ManifestError("the worker sent no manifest signature (an older peer)")
        body = manifest_body(
            job_id=job_id,
            attempt=run["attempt"],
            replica=run["replica"],
            worker=run["worker"],
            archive=self.view.read_blob(run["output_digest"]),
        )
        summary = {
            "state": "succeeded",
            "verdict": verdict.get("verdict"),
            "replicas": verdict.get("replicas"),
            "needed": verdict.get("needed"),
            "valid": verdict.get("valid", []),
        }
        return countersign(
            body,
            run["manifest_sig"],
            summary,
            peer_id=self.identity.peer_id,
            sign=self.identity.sign,
        )

    async def _store_manifest(self, job_id: str) -> None:
        """Store a job's countersigned manifest beside its accepted archive (a
        blob, named to the core by ``ManifestStored``) once it succeeded."""
        assert self.view is not None
        found = self.view.accepted_run(job_id)
        if found is None:
            return
        try:
            doc = await trio.to_thread.run_sync(self._countersigned, job_id, *found)
            data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
            digest = await trio.to_thread.run_sync(self.blobs.put, data)
        except (ManifestError, OSError) as exc:
            log.info("job %s: no result manifest stored: %s", job_id, exc)
            return
        await self._feed(ManifestStored(job_id, found[0]["output_digest"], prefixed(digest)))

    def metrics_text(self) -> bytes:
        """``GET /metrics``: the node's Prometheus families in text format."""
        return self.metrics.exposition()

    async def put_blob(self, data: bytes) -> str:
        """Store a blob (an upload for a job's inputs); returns its bare digest.
        An upload is not essential: if the store is full, one collector pass
        runs and the upload is tried again; then BlobStoreFullError."""
        try:
            return await trio.to_thread.run_sync(self._put_upload, data)
        except BlobStoreFullError:
            await self.disk.collect(room=len(data))
        try:
            return await trio.to_thread.run_sync(self._put_upload, data)
        except BlobStoreFullError:
            self.disk.refused_uploads += 1
            raise

    async def attach_image(self, spec: Any) -> Any:
        """The descriptor with ``image_blob`` set when our engine has its image
        (:meth:`.images.ImageCache.attach`)."""
        return await self.images.attach(spec)

    def _put_upload(self, data: bytes) -> str:
        return self.blobs.put(data, essential=False)


LEAVE_POLL_S = 0.01
"""How often a clean shutdown looks whether its leave notice left the gossip queues."""


@dataclass(frozen=True)
class _Awaited:
    inp: Any
    done: trio.Event


def make_executor(
    config: NodeConfig,
    identity: Identity,
    exec_params: ExecParams | None = None,
    *,
    scratch_dir: Path | None = None,
) -> tuple[Executor, str, ExecParams]:
    """The executor the configuration chooses (raises ExecutorUnavailable), why,
    and the executor parameters the configuration implies (scratch directories
    under ``scratch_dir``, the data dir's ``work/``, when given)."""
    import dataclasses

    from meshd.exec.factory import make_executor as choose

    exec_params = dataclasses.replace(
        exec_params or ExecParams(),
        # A flag alone never enables it: only `allow_process_executor = true` does.
        process_executor_enabled=config.allow_process_executor,
        allow_network=config.allow_network_jobs,
        pull_images=config.pull_images,
    )
    if scratch_dir is not None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        exec_params = dataclasses.replace(exec_params, scratch_dir=str(scratch_dir))
    executor, reason = choose(config.executor, exec_params, identity.peer_id[-12:])
    if executor.name == "none":
        log.warning("this node is a client and runs no jobs: %s", reason)
    elif not executor.sandboxed:
        log.warning("UNSANDBOXED: jobs run as plain processes of this user (%s)", reason)
    return executor, reason, exec_params


def build_daemon(
    config: NodeConfig,
    identity: Identity,
    data_dir: Path,
    *,
    measure_score: bool = True,
    **kwargs: Any,
) -> Daemon:
    """A daemon with the executor chosen by the configuration (raises ExecutorUnavailable)."""
    executor, reason, exec_params = make_executor(
        config, identity, kwargs.pop("exec_params", None), scratch_dir=DataDir(data_dir).work
    )
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
    """``meshd start``: run the daemon until SIGINT (exit 130) or SIGTERM (exit 0).

    ``daemon.pid`` is written once the daemon holds its data dir (its event
    log's lock) and is ready, and removed when it stops."""
    import signal

    from meshd.exec.base import ExecutorUnavailable

    if overrides:
        log.info("command-line overrides: %s", ", ".join(sorted(overrides)))
    try:
        daemon = build_daemon(config, identity, data_dir)
    except ExecutorUnavailable as exc:
        log.error("%s", exc)
        return 1
    pid_file = DataDir(data_dir).pid

    async def main() -> int:
        code = 0
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(daemon.run)
                freeze_startup_heap()
                write_atomic(pid_file, f"{os.getpid()}\n".encode(), mode=0o644)
                try:
                    async for signum in signals:
                        log.info("received %s: shutting down", signal.Signals(signum).name)
                        code = EXIT_INTERRUPTED if signum == signal.SIGINT else 0
                        await daemon.leave()
                        nursery.cancel_scope.cancel()
                        break
                finally:
                    _remove_own_pid_file(pid_file)
        return code

    return trio.run(main)


def freeze_startup_heap() -> None:
    """Leave what start-up built (modules, the host, the restored node) out of
    every later garbage collection: collect once, then ``gc.freeze()``.

    Each full collection otherwise walks that whole heap again and stops
    every task meanwhile. Measured on bench_award's 6-process loopback mesh
    (jobs one at a time for 90 s, pauses timed by ``gc.callbacks``): the
    origin's one full collection mid-run took 129 ms, during which its loop
    handled no bid or award; with the start-up heap frozen it took 6.9 ms.
    Only for the process's one daemon (``meshd start``): the in-process
    harness runs many daemons and tests in one process, where frozen objects
    that died later in cycles would never be freed."""
    gc.collect()
    gc.freeze()


EXIT_INTERRUPTED = 130
"""``meshd start``'s exit code after SIGINT (mesh_cli/CLI.md)."""


def _remove_own_pid_file(path: Path) -> None:
    """Remove ``daemon.pid`` if it still names this process."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass
