"""The worker role: bidding on offers, holding awards, running jobs, returning results.

Theory of operation
-------------------
An offer is judged locally (``placement.decline_reason``); a fitting, warm
node with room answers with a signed bid on a direct stream. An award is
accepted only if there is still room (several origins may award at once);
accepted runs wait in a bounded queue for a free slot, then inputs are
fetched, the executor runs the job under a timeout capped by the job's budget,
and a signed result goes back to the origin. The result is re-sent until the
origin acknowledges it or the origin has been silent for two leases.

While a run is held the worker heartbeats the origin; a heartbeat reply with
``keep=False`` or a ``cancel`` stops the run. After a restart, runs that were
executing are recorded as abandoned (the executor's containers are reaped by
the shell) — the origin's lease expires and it re-offers the job elsewhere.

The node's own jobs come to this role in-process when no other peer can run
them (specs/PROTOCOL.md §8.5); they are judged and run like any other, priced
at nothing (:meth:`Worker.capacity_for`: nobody pays themselves).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from .context import Context
from .events import (
    CancelExecution,
    ExecutionFinished,
    ExecutionProgress,
    ExecutorHealth,
    FetchInputs,
    InputsFetched,
    LocalCapabilities,
    Publish,
    ShutdownRequested,
    StartExecution,
)
from .jobspec import JobSpec, JobSpecError, parse_job_spec
from .lifecycle import work_next
from .peers import advert_interval_for, advert_ttl_for
from .placement import (
    Capacity,
    budget_timeout_s,
    decline_reason,
    determinism_class,
    fit_reason,
    job_gflops,
    local_image_id,
    make_bid,
    offer_requirements,
    run_budget,
)
from .wire import (
    LEAVE_TTL_MS,
    MAX_ADVERT_ADDRS,
    MAX_ADVERT_ARCHIVES,
    MAX_ADVERT_IMAGES,
    MAX_HEARTBEAT_LOG_BYTES,
    MAX_HEARTBEAT_LOG_CHUNKS,
    MAX_SHORT_TEXT,
    Advert,
    AwardReply,
    Decline,
    GpuInfo,
    Heartbeat,
    LogChunk,
    Opened,
    Result,
    fault_of,
)

T_HEARTBEAT, T_RESEND, T_ADVERT, T_LOG_PUSH = "heartbeat", "resend", "advert", "log_push"
RunKey = tuple[str, int, int]
_HEARTBEAT_STATE: dict[str, Literal["queued", "fetching", "running", "finished"]] = {
    "queued": "queued",
    "fetching": "fetching",
    "running": "running",
}
"""What a heartbeat says of a held run (a cancelled one says finished)."""


@dataclass
class Work:
    key: RunKey
    origin: str
    spec: JobSpec
    price: float
    timeout_s: float
    accepted_ms: int
    state: str = "queued"
    started_ms: int = 0
    last_contact_ms: int = 0
    result: Result | None = None
    acked: bool = False
    log_buf: list[LogChunk] = field(default_factory=list)
    """Live output not yet sent to the origin (at most ``MAX_HEARTBEAT_LOG_BYTES``)."""
    log_buf_bytes: int = 0
    log_push_due: bool = False
    """A ``T_LOG_PUSH`` timer is set for this run."""


class Worker:
    """The worker role: what this node offers, its bids, and the runs it holds.

    Owns the local capabilities and warmth (and so the adverts that announce
    them), the runs awarded to this node (``work``) and their queue; shares
    only the :class:`~meshd.core.context.Context`.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.work: dict[RunKey, Work] = {}
        self.work_queue: deque[RunKey] = deque()
        self.avg_run_s = ctx.params.run_time_initial_s
        """Moving average of our runs' durations (s): how long a queued award waits."""
        self.caps: LocalCapabilities | None = None
        self.warm = False
        self.cold_reason: str | None = "health check pending"
        self.executor_failures = 0
        self._advert_seq = 0
        self._advert_tokens = float(ctx.params.advert_burst)
        """Adverts we may publish now (refilled one per heartbeat interval)."""
        self._tokens_ms = ctx.now_ms
        self._advert_due: int = ctx.now_ms
        """When the next advert is due (a heartbeat, or a change waiting for a token)."""
        self._advert_armed: int | None = None
        """The time of the one ``T_ADVERT`` timer that counts (older ones are stale)."""
        self.last_advert = b""
        """Our newest advert as sealed (relayed to a newcomer with the others, §7.8)."""
        self._advertised: tuple[Any, ...] | None = None
        """What the last advert said of the things whose change is news (``_news``)."""
        self.leaving = False
        """The node is shutting down: its leave notice is out, no advert follows."""
        self.balance_of: Callable[[str], float] = lambda peer: 0.0
        """A peer's credit balance: the Node wires in ``Ledger.balance`` (the
        ledger role owns the receipts); until then everyone counts as 0."""
        self._arm_advert(ctx.now_ms)

    def timers(self) -> dict[str, Callable[[Any], None]]:
        """This role's timer kinds and what runs when one is due."""
        return {
            T_HEARTBEAT: self.timer_heartbeat,
            T_RESEND: self.timer_resend,
            T_ADVERT: self.timer_advert,
            T_LOG_PUSH: self.timer_log_push,
        }

    def direct_handlers(self) -> dict[str, Callable[[Opened], None]]:
        """The direct messages this role answers, by wire type."""
        return {
            "award": self.on_award,
            "heartbeat_reply": self.on_heartbeat_reply,
            "cancel": self.on_cancel,
            "result_ack": self.on_result_ack,
        }

    # ------------------------------------------------------------ what we offer

    def on_local_capabilities(self, inp: LocalCapabilities) -> None:
        self.caps = inp
        self._changed()

    def on_executor_health(self, inp: ExecutorHealth) -> None:
        p = self.ctx.params
        was = self.warm
        if inp.ok:
            self.warm, self.cold_reason, self.executor_failures = True, None, 0
        else:
            self.executor_failures += 1
            if self.executor_failures >= p.executor_failures_cold or not self.warm:
                self.warm, self.cold_reason = False, inp.reason or "executor failing"
        if was != self.warm:
            self.ctx.append("node_warmth", {"warm": self.warm, "reason": self.cold_reason or ""})
        self._changed()

    def capacity(self) -> Capacity | None:
        if self.caps is None:
            return None
        return Capacity.from_local(
            self.caps,
            warm=self.warm,
            cold_reason=self.cold_reason,
            running=self.work_running(),
            queued=self.work_queued(),
        )

    def capacity_for(self, origin: str) -> Capacity | None:
        """Our capacity as ``origin``'s offers and awards are judged with: at
        price 0 for our own jobs (a self-run earns nothing, so neither the
        budget nor its bound on the run's time applies, §8.5)."""
        cap = self.capacity()
        if cap is None or origin != self.ctx.peer_id:
            return cap
        return replace(cap, price=0.0)

    def make_advert(self) -> Advert | None:
        c = self.caps
        if c is None:
            return None
        p = self.ctx.params
        # Seeded from the clock so a restarted node's adverts outrank the ones
        # it sent before the restart (peers ignore a seq they have seen).
        self._advert_seq = max(self._advert_seq + 1, self.ctx.wall_ms)
        return Advert(
            seq=self._advert_seq,
            ttl_ms=advert_ttl_for(p, self.advert_interval()),
            addrs=list(c.addrs)[:MAX_ADVERT_ADDRS],
            cores=c.cores,
            ram_mb=c.ram_mb,
            disk_free_mb=c.disk_free_mb,
            gpus=[GpuInfo(model=m, memory_mb=mem) for m, mem in c.gpus],
            gpu_runtime=c.gpu_runtime,
            # pydantic checks both against the wire's literals when the advert is built
            runtimes=cast(Any, list(c.runtimes)),
            images=list(c.images)[:MAX_ADVERT_IMAGES],
            image_archives=list(c.image_archives)[:MAX_ADVERT_ARCHIVES],
            score_gflops=c.score_gflops,
            gpu_gflops=c.gpu_gflops,
            tier=cast(Any, c.tier),
            price=c.price,
            running=self.work_running(),
            queued=self.work_queued(),
            capacity=c.capacity,
            warm=self.warm,
            cold_reason=self.cold_reason,
            network_allowed=c.network_allowed,
            version=c.version,
            shards=self.ctx.peers.shards,
        )

    # ------------------------------------------------------------ advert pacing (§7.1)

    def advert_interval(self) -> int:
        """The heartbeat interval in force, from the size our view estimates
        of our shard (the whole mesh while it has one shard, §5.2)."""
        return advert_interval_for(self.ctx.params, self.ctx.peers.shard_nodes())

    def _news(self) -> tuple[Any, ...] | None:
        """What peers must hear about at once when it changes: warmth, whether a
        slot is free, images, the image archives we serve, price, runtimes
        (None before capabilities)."""
        c = self.caps
        if c is None:
            return None
        free = self.work_running() + self.work_queued() < c.capacity
        return (
            self.warm,
            free,
            c.images,
            c.image_archives,
            c.price,
            c.runtimes,
            c.gpu_runtime,
            c.tier,
        )

    def _changed(self) -> None:
        """Advertise now if something peers place by changed since our last
        advert, as soon as the rate allows (:meth:`_refill`)."""
        news = self._news()
        if news is None or news == self._advertised:
            return
        self.ctx.counters["adverts_on_change"] += 1
        if self._refill() >= 1.0:
            self._advertise()
            return
        self.ctx.counters["adverts_deferred"] += 1
        wait = int((1.0 - self._advert_tokens) * 2 * self.advert_interval()) + 1
        self._arm_advert(min(self._advert_due, self.ctx.now_ms + wait))

    def _refill(self) -> float:
        """Tokens now: one per two heartbeat intervals since the last refill, at
        most ``advert_burst``. An advert on change takes one (a heartbeat, sent
        only after an interval of silence, none), so a node sends at most
        ``advert_burst + 1.5 t / interval`` adverts in ``t`` ms."""
        now = self.ctx.now_ms
        if now > self._tokens_ms:
            self._advert_tokens = min(
                float(self.ctx.params.advert_burst),
                self._advert_tokens + (now - self._tokens_ms) / (2 * self.advert_interval()),
            )
            self._tokens_ms = now
        return self._advert_tokens

    def on_shutdown_requested(self, inp: ShutdownRequested) -> None:
        """Publish our leave notice once (§7.1: our advert, numbered on, with
        ``ttl_ms = LEAVE_TTL_MS``) so peers drop us at once rather than after
        our TTL; then advertise no more. A node that never advertised has no
        one to tell."""
        if self.leaving:
            return
        self.leaving = True
        advert = self.make_advert() if self.last_advert else None
        if advert is None:
            return
        notice = self.ctx.seal(advert.model_copy(update={"ttl_ms": LEAVE_TTL_MS}))
        for topic in self.ctx.peers.advert_topics(self.ctx.peer_id):  # our shard's (§5.2)
            self.ctx.emit(Publish(topic, notice))
        self.ctx.counters["leave_notices_sent"] += 1

    def _advertise(self, *, change: bool = True) -> None:
        """Publish our advert now (a change takes a token, a heartbeat none)
        and set the next heartbeat; nothing once we are leaving."""
        if self.leaving:
            return
        advert = self.make_advert()
        interval = self.advert_interval()
        if advert is not None:
            if change or self._news() != self._advertised:
                self._refill()
                self._advert_tokens = max(0.0, self._advert_tokens - 1.0)
            self._advertised = self._news()
            sealed = self.ctx.seal(advert)
            # what a newcomer is relayed: the sealed bytes (the simulator's
            # codec hands objects around, whose ``raw`` plays that part)
            self.last_advert = sealed if isinstance(sealed, bytes) else sealed.raw
            for topic in self.ctx.peers.advert_topics(self.ctx.peer_id):
                self.ctx.emit(Publish(topic, sealed))
            self.ctx.counters["adverts_sent"] += 1
        self._arm_advert(self.ctx.now_ms + interval)

    def advertise_now(self) -> None:
        """Publish our advert at once, taking no token (our shard count
        changed: the new shard must hear of us, §5.2)."""
        self._advertise(change=False)

    def _arm_advert(self, when_ms: int) -> None:
        """The next advert is due at ``when_ms``; one timer entry counts at a
        time (``_advert_armed``), re-armed when it fires early."""
        self._advert_due = when_ms
        if self._advert_armed is None or when_ms < self._advert_armed:
            self._advert_armed = when_ms
            self.ctx.at(when_ms, T_ADVERT, when_ms)

    def timer_advert(self, armed_ms: Any) -> None:
        if armed_ms != self._advert_armed:
            return  # superseded by an earlier one
        self._advert_armed = None
        if self.ctx.now_ms < self._advert_due:
            self._arm_advert(self._advert_due)
            return
        self._advertise(change=False)

    # ------------------------------------------------------------ runs held

    def work_running(self) -> int:
        return sum(1 for w in self.work.values() if w.state in ("fetching", "running"))

    def work_queued(self) -> int:
        return sum(1 for w in self.work.values() if w.state == "queued")

    def runs_of(self, origin: str) -> int:
        """Runs we hold for ``origin``, queued or under way (its bids leave
        them out of the expected wait: the origin counts them itself)."""
        return sum(
            1
            for w in self.work.values()
            if w.origin == origin and w.state in ("queued", "fetching", "running")
        )

    def det_class(self, uses_gpu: bool, image: str, image_id: str = "") -> str:
        """The determinism class a job runs in here ("" before capabilities are
        known); ``image_id`` is the id a run used, else the local id of ``image``."""
        c = self.caps
        if c is None:
            return ""
        return determinism_class(
            c.runtimes,
            tuple(m for m, _ in c.gpus),
            c.gpu_driver,
            uses_gpu=uses_gpu,
            image_id=image_id or local_image_id(image, c.image_ids),
        )

    # ------------------------------------------------------------ offers

    def on_offer(self, msg: Opened) -> None:
        cap = self.capacity_for(msg.sender)
        if cap is None:
            return
        offer = msg.body
        reason, send = decline_reason(
            cap,
            offer,
            self_id=self.ctx.peer_id,
            queue_max=self.ctx.params.worker_queue_max,
            overhead_s=self.ctx.params.startup_overhead_s,
            max_image_bytes=self.ctx.params.max_image_bytes,
        )
        if reason is None and (busy := self._busy_reason()) is not None:
            reason, send = busy, True
        if reason is None and (debt := self._credit_reason(cap, msg.sender)) is not None:
            reason, send = debt, True
        if reason is not None:
            self.ctx.counters["offers_declined"] += 1
            if send:
                self.ctx.send(
                    msg.sender,
                    Decline(
                        job_id=offer.job_id, attempt=offer.attempt, reason=reason[:MAX_SHORT_TEXT]
                    ),
                    offer.job_id,
                )
            return
        bid = make_bid(
            cap,
            offer,
            avg_run_s=self.avg_run_s,
            overhead_s=self.ctx.params.startup_overhead_s,
            # a travelling image runs as the id the offer pins
            det_class=self.det_class(
                offer.requirements.gpus > 0,
                offer.requirements.image,
                offer.requirements.image_id or "",
            ),
            image_bytes_per_s=self.ctx.params.image_transfer_bytes_per_s,
            origin_runs=self.runs_of(msg.sender),
        )
        self.ctx.counters["bids_sent"] += 1
        self.ctx.send(msg.sender, bid, offer.job_id)

    # ------------------------------------------------------------ awards

    def on_award(self, msg: Opened) -> None:
        a = msg.body
        key: RunKey = (a.job_id, a.attempt, a.replica)
        if key in self.work:  # a re-sent award: answer the same
            self.ctx.send(
                msg.sender,
                AwardReply(job_id=a.job_id, attempt=a.attempt, replica=a.replica, accepted=True),
                a.job_id,
            )
            return
        reason = self._award_refusal(a)
        spec: JobSpec | None = None
        if reason is None:
            try:
                spec = parse_job_spec(a.spec)
            except JobSpecError as exc:
                reason = f"invalid job descriptor: {exc}"[:MAX_SHORT_TEXT]
        if reason is None and spec is not None and spec.job_id != a.job_id:
            reason = "job descriptor does not match the award"
        if reason is None and spec is not None and (cap := self.capacity()) is not None:
            # An award is checked like an offer: a peer cannot hand us, unoffered,
            # a job we could not honour (an image job to the process executor).
            reason = fit_reason(cap, offer_requirements(spec))
        if reason is not None or spec is None:
            self.ctx.counters["awards_refused"] += 1
            self.ctx.send(
                msg.sender,
                AwardReply(
                    job_id=a.job_id,
                    attempt=a.attempt,
                    replica=a.replica,
                    accepted=False,
                    reason=reason or "invalid",
                ),
                a.job_id,
            )
            return
        cap = self.capacity_for(msg.sender)
        assert cap is not None
        timeout = budget_timeout_s(
            spec.timeout_s,
            run_budget(spec.max_budget, spec.estimated_flops, a.price),
            job_gflops(cap, spec.requirements.gpus),
            cap.price,
            spec.credit_rate,
        )
        work = Work(
            key,
            msg.sender,
            spec,
            a.price,
            timeout,
            self.ctx.now_ms,
            last_contact_ms=self.ctx.now_ms,
        )
        self.work[key] = work
        self.work_queue.append(key)
        self.ctx.append(
            "work_accepted",
            {
                "job_id": a.job_id,
                "attempt": a.attempt,
                "replica": a.replica,
                "origin": msg.sender,
                "price": a.price,
                "timeout_s": timeout,
                "spec": a.spec,
            },
            key=b"work:%s:%d:%d" % (a.job_id.encode(), a.attempt, a.replica),
        )
        self.ctx.counters["awards_accepted"] += 1
        self.ctx.send(
            msg.sender,
            AwardReply(job_id=a.job_id, attempt=a.attempt, replica=a.replica, accepted=True),
            a.job_id,
        )
        self.ctx.at(self.ctx.now_ms + self.ctx.params.heartbeat_interval_ms, T_HEARTBEAT, key)
        self._start_queued()
        self._changed()  # our last free slot may just have gone

    def _award_refusal(self, a: Any) -> str | None:
        cap = self.capacity()
        if cap is None:
            return "node not ready"
        if not cap.warm:
            return f"node is cold: {cap.cold_reason}"
        if cap.running + cap.queued >= cap.capacity + self.ctx.params.worker_queue_max:
            return "busy: queue full"
        return self._busy_reason()

    def _credit_reason(self, cap: Capacity, origin: str) -> str | None:
        """No free slot, and ``origin`` owes more than the free allowance in our
        ledger: leave the queue to origins in credit (specs/CREDITS.md §7.5).
        A worker with a free slot serves everyone, so newcomers can start."""
        if cap.running + cap.queued < cap.capacity:
            return None
        allowance = self.ctx.params.credit_free_allowance
        balance = self.balance_of(origin)
        if balance >= -allowance:
            return None
        self.ctx.counters["credit_declines"] += 1
        return (
            f"credit: origin balance {balance:.4g} is below the free allowance "
            f"-{allowance:.4g} and this worker has no free slot"
        )

    def _busy_reason(self) -> str | None:
        """Our own inbox is congested: say so now rather than take work whose
        acknowledgement and heartbeats would reach the origin too late."""
        if self.ctx.inbox_wait_ms > self.ctx.params.worker_busy_wait_ms:
            self.ctx.counters["busy_refusals"] += 1
            return f"busy: messages wait {self.ctx.inbox_wait_ms} ms in this node's inbox"
        return None

    def _start_queued(self) -> None:
        cap = self.caps
        slots = cap.capacity if cap else 1
        while self.work_queue and self.work_running() < slots:
            key = self.work_queue.popleft()
            work = self.work.get(key)
            if work is None or work.state != "queued":
                continue
            work.state = work_next(work.state, "start")
            holders = self._image_holders(work.origin, work.spec)
            self.ctx.emit(FetchInputs(key[0], key[1], key[2], work.origin, work.spec, holders))

    def _image_holders(self, origin: str, spec: JobSpec) -> tuple[str, ...]:
        """Live peers besides the origin (and us) whose advert lists the job's
        image archive, at most ``max_image_holders``, fewest runs first (the
        least loaded serve), then by peer id (deterministic)."""
        blob = spec.image_blob
        if blob is None:
            return ()
        ctx = self.ctx
        found = sorted(
            (
                e
                for e in ctx.peers.alive(ctx.now_ms)
                if e.peer_id not in (origin, ctx.peer_id) and blob.digest in e.advert.image_archives
            ),
            key=lambda e: (e.advert.running, e.peer_id),
        )
        return tuple(e.peer_id for e in found[: ctx.params.max_image_holders])

    def on_inputs_fetched(self, inp: InputsFetched) -> None:
        work = self.work.get((inp.job_id, inp.attempt, inp.replica))
        if work is None or work.state != "fetching":
            return
        if not inp.ok:
            self._finish_work(
                work,
                Result(
                    job_id=inp.job_id,
                    attempt=inp.attempt,
                    replica=inp.replica,
                    status="error",
                    reason=f"input fetch failed: {inp.error}"[:MAX_SHORT_TEXT],
                    fault="job" if inp.fault == "job" else "worker",
                ),
            )
            return
        work.state, work.started_ms = work_next(work.state, "inputs_fetched"), self.ctx.now_ms
        self.ctx.append(
            "work_started", {"job_id": inp.job_id, "attempt": inp.attempt, "replica": inp.replica}
        )
        self.ctx.emit(
            StartExecution(inp.job_id, inp.attempt, inp.replica, work.spec, work.timeout_s)
        )
        self._heartbeat(work)

    def on_execution_progress(self, inp: ExecutionProgress) -> None:
        """Keep a running job's output for the origin (live only: what does not
        fit before the next heartbeat is dropped here, never from the run's
        stored log) and make sure it leaves within ``log_push_ms``."""
        work = self.work.get((inp.job_id, inp.attempt, inp.replica))
        if work is None or work.state != "running" or inp.stream not in ("stdout", "stderr"):
            return
        data = inp.log[: max(0, MAX_HEARTBEAT_LOG_BYTES - work.log_buf_bytes)]
        if not data:
            return
        last = work.log_buf[-1] if work.log_buf else None
        if last and last.stream == inp.stream and last.offset + len(last.data) == inp.offset:
            work.log_buf[-1] = last.model_copy(update={"data": last.data + data})
        elif len(work.log_buf) < MAX_HEARTBEAT_LOG_CHUNKS:
            stream: Literal["stdout", "stderr"] = "stdout" if inp.stream == "stdout" else "stderr"
            work.log_buf.append(
                LogChunk(stream=stream, offset=inp.offset, ts_ms=inp.ts_ms, data=data)
            )
        else:
            return
        work.log_buf_bytes += len(data)
        if not work.log_push_due:
            work.log_push_due = True
            self.ctx.at(self.ctx.now_ms + self.ctx.params.log_push_ms, T_LOG_PUSH, work.key)

    def timer_log_push(self, key: RunKey) -> None:
        work = self.work.get(key)
        if work is None:
            return
        work.log_push_due = False
        if work.log_buf and work.state == "running":
            self._heartbeat(work)

    def on_execution_finished(self, inp: ExecutionFinished) -> None:
        work = self.work.get((inp.job_id, inp.attempt, inp.replica))
        if work is None or work.state != "running":
            return
        if inp.executor_fault:
            self.on_executor_health(ExecutorHealth(False, inp.reason))
        elif inp.status in ("succeeded", "failed"):
            w = self.ctx.params.run_time_weight
            self.avg_run_s = (1 - w) * self.avg_run_s + w * inp.duration_ms / 1000
        cap = self.capacity()
        result = Result(
            job_id=inp.job_id,
            attempt=inp.attempt,
            replica=inp.replica,
            status=inp.status,  # type: ignore[arg-type]
            exit_code=inp.exit_code,
            reason=inp.reason[:MAX_SHORT_TEXT],
            output_digest=inp.output_digest,
            output_size=inp.output_size,
            duration_ms=inp.duration_ms,
            cpu_ms=inp.cpu_ms,
            peak_memory_bytes=inp.peak_memory_bytes,
            score_gflops=job_gflops(cap, work.spec.requirements.gpus) if cap else 0.0,
            det_class=self.det_class(
                work.spec.requirements.gpus > 0, work.spec.image, inp.image_id
            ),
            fault=fault_of(inp.status, inp.fault),  # type: ignore[arg-type]
            manifest_sig=inp.manifest_sig,
            log_digest=inp.log_digest,
            log_size=inp.log_size,
        )
        self._finish_work(work, result)

    def _finish_work(self, work: Work, result: Result) -> None:
        work.state, work.result = work_next(work.state, "finished"), result
        self.ctx.append("work_finished", {**result.model_dump(mode="json"), "origin": work.origin})
        self.ctx.send(work.origin, result, result.job_id)
        self.ctx.at(self.ctx.now_ms + self.ctx.params.result_resend_ms, T_RESEND, work.key)
        self._start_queued()
        self._gc_work()
        self._changed()  # a slot may have come free

    # ------------------------------------------------------------ talking to the origin

    def _heartbeat(self, work: Work) -> None:
        state = _HEARTBEAT_STATE.get(work.state, "finished")
        log, work.log_buf, work.log_buf_bytes = work.log_buf, [], 0
        elapsed = self.ctx.now_ms - work.started_ms if work.started_ms else 0
        self.ctx.send(
            work.origin,
            Heartbeat(
                job_id=work.key[0],
                attempt=work.key[1],
                replica=work.key[2],
                state=state,
                elapsed_ms=elapsed,
                log=log,
            ),
            work.key[0],
            coalesce=not log,
        )

    def timer_heartbeat(self, key: RunKey) -> None:
        work = self.work.get(key)
        if work is None or work.state in ("finished", "cancelled"):
            return
        if self.ctx.now_ms - work.last_contact_ms > 2 * self.ctx.params.lease_ms:
            self._cancel_work(work, "origin unreachable for two leases")
            return
        self._heartbeat(work)
        self.ctx.at(self.ctx.now_ms + self.ctx.params.heartbeat_interval_ms, T_HEARTBEAT, key)

    def on_heartbeat_reply(self, msg: Opened) -> None:
        b = msg.body
        work = self.work.get((b.job_id, b.attempt, b.replica))
        if work is None or work.origin != msg.sender:
            return
        work.last_contact_ms = self.ctx.now_ms
        if not b.keep and work.state not in ("finished", "cancelled"):
            self._cancel_work(work, "origin no longer wants this run")

    def on_cancel(self, msg: Opened) -> None:
        b = msg.body
        for key, work in list(self.work.items()):
            if key[0] == b.job_id and key[1] == b.attempt and work.origin == msg.sender:
                if work.state not in ("finished", "cancelled"):
                    self._cancel_work(work, b.reason or "cancelled by the origin")

    def _cancel_work(self, work: Work, reason: str) -> None:
        was = work.state
        work.state = work_next(work.state, "cancelled")
        self.ctx.append(
            "work_cancelled",
            {
                "job_id": work.key[0],
                "attempt": work.key[1],
                "replica": work.key[2],
                "reason": reason,
            },
        )
        if was == "running" or was == "fetching":
            self.ctx.emit(CancelExecution(work.key[0], work.key[1], work.key[2], reason))
        self._start_queued()
        self._gc_work()
        self._changed()  # a slot may have come free

    def timer_resend(self, key: RunKey) -> None:
        work = self.work.get(key)
        if work is None or work.result is None or work.acked:
            return
        if self.ctx.now_ms - work.last_contact_ms > 2 * self.ctx.params.lease_ms:
            self.ctx.append(
                "work_unacknowledged", {"job_id": key[0], "attempt": key[1], "replica": key[2]}
            )
            work.acked = True
            return
        self.ctx.send(work.origin, work.result, key[0])
        self.ctx.at(self.ctx.now_ms + self.ctx.params.result_resend_ms, T_RESEND, key)

    def on_result_ack(self, msg: Opened) -> None:
        b = msg.body
        work = self.work.get((b.job_id, b.attempt, b.replica))
        if work is None or work.origin != msg.sender or work.acked:
            return
        work.acked, work.last_contact_ms = True, self.ctx.now_ms
        self.ctx.append(
            "work_acked",
            {
                "job_id": b.job_id,
                "attempt": b.attempt,
                "replica": b.replica,
                "accepted": b.accepted,
            },
        )

    def serves(self, peer: str, digest: str) -> bool:
        """We ran a job for origin ``peer`` whose output archive or stored log
        is ``digest``; or ``digest`` is an image archive we advertise (served
        to any peer, specs/PROTOCOL.md §5.1), or the piece list of one."""
        caps, want = self.caps, "sha256:" + digest
        if caps is not None and (want in caps.image_archives or want in caps.image_pieces):
            return True
        return any(
            w.origin == peer
            and w.result is not None
            and any(
                d is not None and d.removeprefix("sha256:") == digest
                for d in (w.result.output_digest, w.result.log_digest)
            )
            for w in self.work.values()
        )

    def _gc_work(self) -> None:
        done = [k for k, w in self.work.items() if w.state in ("finished", "cancelled") and w.acked]
        keep = 4096
        for k in done[: max(0, len(self.work) - keep)]:
            del self.work[k]

    # ------------------------------------------------------------ restore

    def restore_record(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "work_accepted":
            key = (body["job_id"], body["attempt"], body["replica"])
            try:
                spec = parse_job_spec(body["spec"])
            except JobSpecError:
                return
            self.work[key] = Work(
                key,
                body["origin"],
                spec,
                body["price"],
                body["timeout_s"],
                self.ctx.now_ms,
                last_contact_ms=self.ctx.now_ms,
            )
            return
        key = (body.get("job_id"), body.get("attempt"), body.get("replica"))
        work = self.work.get(key)
        if work is None:
            return
        if kind == "work_started":
            work.state = "running"
        elif kind == "work_finished":
            fields = {k: v for k, v in body.items() if k != "origin"}
            work.state, work.result = "finished", Result.model_validate(fields)
        elif kind == "work_cancelled":
            work.state = "cancelled"
        elif kind in ("work_acked", "work_unacknowledged", "work_abandoned"):
            work.acked = True
            if kind == "work_abandoned":
                work.state = "cancelled"

    def resume(self) -> None:
        """After a restart: runs that were executing died with us; results not yet
        acknowledged are sent again."""
        for key, work in self.work.items():
            if work.state in ("queued", "fetching", "running"):
                work.state, work.acked = "cancelled", True
                self.ctx.append(
                    "work_abandoned",
                    {
                        "job_id": key[0],
                        "attempt": key[1],
                        "replica": key[2],
                        "reason": "node restarted while the run was held",
                    },
                )
            elif work.state == "finished" and not work.acked and work.result is not None:
                work.last_contact_ms = self.ctx.now_ms
                self.ctx.send(work.origin, work.result, key[0])
                self.ctx.at(self.ctx.now_ms + self.ctx.params.result_resend_ms, T_RESEND, key)
        self.work_queue.clear()
