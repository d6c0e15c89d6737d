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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .events import (
    CancelExecution,
    ExecutionFinished,
    ExecutionProgress,
    ExecutorHealth,
    FetchInputs,
    InputsFetched,
    StartExecution,
)
from .jobspec import JobSpec, JobSpecError, parse_job_spec
from .placement import budget_timeout_s, decline_reason, make_bid
from .wire import AwardReply, Decline, Heartbeat, Opened, Result

if TYPE_CHECKING:
    from .node import Node

T_HEARTBEAT, T_RESEND = "heartbeat", "resend"
RunKey = tuple[str, int, int]


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
    log_buf: bytes = b""


class WorkerMixin:
    """Worker-side behaviour of :class:`meshd.core.node.Node`."""

    work: dict[RunKey, Work]
    work_queue: deque[RunKey]
    avg_run_s: float

    def init_worker(self: Node) -> None:
        self.work = {}
        self.work_queue = deque()
        self.avg_run_s = 5.0

    def work_running(self) -> int:
        return sum(1 for w in self.work.values() if w.state in ("fetching", "running"))

    def work_queued(self) -> int:
        return sum(1 for w in self.work.values() if w.state == "queued")

    # ------------------------------------------------------------ offers

    def worker_on_offer(self: Node, msg: Opened) -> None:
        cap = self.capacity()
        if cap is None:
            return
        offer = msg.body
        reason, send = decline_reason(
            cap,
            offer,
            self_id=self.peer_id,
            queue_max=self.params.worker_queue_max,
            overhead_s=self.params.startup_overhead_s,
        )
        if reason is None and (busy := self._busy_reason()) is not None:
            reason, send = busy, True
        if reason is not None:
            self.counters["offers_declined"] += 1
            if send:
                self._send(
                    msg.sender,
                    Decline(job_id=offer.job_id, attempt=offer.attempt, reason=reason[:500]),
                    offer.job_id,
                )
            return
        bid = make_bid(
            cap, offer, avg_run_s=self.avg_run_s, overhead_s=self.params.startup_overhead_s
        )
        self.counters["bids_sent"] += 1
        self._send(msg.sender, bid, offer.job_id)

    # ------------------------------------------------------------ awards

    def on_award(self: Node, msg: Opened) -> None:
        a = msg.body
        key: RunKey = (a.job_id, a.attempt, a.replica)
        if key in self.work:  # a re-sent award: answer the same
            self._send(
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
                reason = f"invalid job descriptor: {exc}"[:500]
        if reason is None and spec is not None and spec.job_id != a.job_id:
            reason = "job descriptor does not match the award"
        if reason is not None or spec is None:
            self.counters["awards_refused"] += 1
            self._send(
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
        cap = self.capacity()
        assert cap is not None
        timeout = budget_timeout_s(
            spec.timeout_s, spec.max_budget, cap.score_gflops, cap.price, spec.credit_rate
        )
        work = Work(
            key, msg.sender, spec, a.price, timeout, self.now_ms, last_contact_ms=self.now_ms
        )
        self.work[key] = work
        self.work_queue.append(key)
        self._append(
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
        self.counters["awards_accepted"] += 1
        self._send(
            msg.sender,
            AwardReply(job_id=a.job_id, attempt=a.attempt, replica=a.replica, accepted=True),
            a.job_id,
        )
        self._at(self.now_ms + self.params.heartbeat_interval_ms, T_HEARTBEAT, key)
        self._start_queued()

    def _award_refusal(self: Node, a: Any) -> str | None:
        cap = self.capacity()
        if cap is None:
            return "node not ready"
        if not cap.warm:
            return f"node is cold: {cap.cold_reason}"
        if cap.running + cap.queued >= cap.capacity + self.params.worker_queue_max:
            return "busy: queue full"
        return self._busy_reason()

    def _busy_reason(self: Node) -> str | None:
        """Our own inbox is congested: say so now rather than take work whose
        acknowledgement and heartbeats would reach the origin too late."""
        if self.inbox_wait_ms > self.params.worker_busy_wait_ms:
            self.counters["busy_refusals"] += 1
            return f"busy: messages wait {self.inbox_wait_ms} ms in this node's inbox"
        return None

    def _start_queued(self: Node) -> None:
        cap = self.caps
        slots = cap.capacity if cap else 1
        while self.work_queue and self.work_running() < slots:
            key = self.work_queue.popleft()
            work = self.work.get(key)
            if work is None or work.state != "queued":
                continue
            work.state = "fetching"
            self._emit(FetchInputs(key[0], key[1], key[2], work.origin, work.spec))

    def _on_InputsFetched(self: Node, inp: InputsFetched) -> None:
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
                    reason=f"input fetch failed: {inp.error}"[:500],
                ),
            )
            return
        work.state, work.started_ms = "running", self.now_ms
        self._append(
            "work_started", {"job_id": inp.job_id, "attempt": inp.attempt, "replica": inp.replica}
        )
        self._emit(StartExecution(inp.job_id, inp.attempt, inp.replica, work.spec, work.timeout_s))
        self._heartbeat(work)

    def _on_ExecutionProgress(self: Node, inp: ExecutionProgress) -> None:
        work = self.work.get((inp.job_id, inp.attempt, inp.replica))
        if work is not None and work.state == "running":
            room = 16 * 1024 - len(work.log_buf)
            work.log_buf += inp.log[: max(0, room)]

    def _on_ExecutionFinished(self: Node, inp: ExecutionFinished) -> None:
        work = self.work.get((inp.job_id, inp.attempt, inp.replica))
        if work is None or work.state != "running":
            return
        if inp.executor_fault:
            self._on_ExecutorHealth(ExecutorHealth(False, inp.reason))
        elif inp.status in ("succeeded", "failed"):
            self.avg_run_s = 0.8 * self.avg_run_s + 0.2 * inp.duration_ms / 1000
        cap = self.caps
        result = Result(
            job_id=inp.job_id,
            attempt=inp.attempt,
            replica=inp.replica,
            status=inp.status,  # type: ignore[arg-type]
            exit_code=inp.exit_code,
            reason=inp.reason[:500],
            output_digest=inp.output_digest,
            output_size=inp.output_size,
            duration_ms=inp.duration_ms,
            cpu_ms=inp.cpu_ms,
            peak_memory_bytes=inp.peak_memory_bytes,
            score_gflops=cap.score_gflops if cap else 0.0,
        )
        self._finish_work(work, result)

    def _finish_work(self: Node, work: Work, result: Result) -> None:
        work.state, work.result = "finished", result
        self._append("work_finished", {**result.model_dump(mode="json"), "origin": work.origin})
        self._send(work.origin, result, result.job_id)
        self._at(self.now_ms + self.params.result_resend_ms, T_RESEND, work.key)
        self._start_queued()
        self._gc_work()

    # ------------------------------------------------------------ talking to the origin

    def _heartbeat(self: Node, work: Work) -> None:
        state = {"queued": "queued", "fetching": "fetching", "running": "running"}.get(
            work.state, "finished"
        )
        log, work.log_buf = work.log_buf, b""
        elapsed = self.now_ms - work.started_ms if work.started_ms else 0
        self._send(
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
        )  # type: ignore[arg-type]

    def _timer_heartbeat(self: Node, key: RunKey) -> None:
        work = self.work.get(key)
        if work is None or work.state in ("finished", "cancelled"):
            return
        if self.now_ms - work.last_contact_ms > 2 * self.params.lease_ms:
            self._cancel_work(work, "origin unreachable for two leases")
            return
        self._heartbeat(work)
        self._at(self.now_ms + self.params.heartbeat_interval_ms, T_HEARTBEAT, key)

    def on_heartbeat_reply(self: Node, msg: Opened) -> None:
        b = msg.body
        work = self.work.get((b.job_id, b.attempt, b.replica))
        if work is None or work.origin != msg.sender:
            return
        work.last_contact_ms = self.now_ms
        if not b.keep and work.state not in ("finished", "cancelled"):
            self._cancel_work(work, "origin no longer wants this run")

    def on_cancel(self: Node, msg: Opened) -> None:
        b = msg.body
        for key, work in list(self.work.items()):
            if key[0] == b.job_id and key[1] == b.attempt and work.origin == msg.sender:
                if work.state not in ("finished", "cancelled"):
                    self._cancel_work(work, b.reason or "cancelled by the origin")

    def _cancel_work(self: Node, work: Work, reason: str) -> None:
        was = work.state
        work.state = "cancelled"
        self._append(
            "work_cancelled",
            {
                "job_id": work.key[0],
                "attempt": work.key[1],
                "replica": work.key[2],
                "reason": reason,
            },
        )
        if was == "running" or was == "fetching":
            self._emit(CancelExecution(work.key[0], work.key[1], work.key[2], reason))
        self._start_queued()
        self._gc_work()

    def _timer_resend(self: Node, key: RunKey) -> None:
        work = self.work.get(key)
        if work is None or work.result is None or work.acked:
            return
        if self.now_ms - work.last_contact_ms > 2 * self.params.lease_ms:
            self._append(
                "work_unacknowledged", {"job_id": key[0], "attempt": key[1], "replica": key[2]}
            )
            work.acked = True
            return
        self._send(work.origin, work.result, key[0])
        self._at(self.now_ms + self.params.result_resend_ms, T_RESEND, key)

    def on_result_ack(self: Node, msg: Opened) -> None:
        b = msg.body
        work = self.work.get((b.job_id, b.attempt, b.replica))
        if work is None or work.origin != msg.sender or work.acked:
            return
        work.acked, work.last_contact_ms = True, self.now_ms
        self._append(
            "work_acked",
            {
                "job_id": b.job_id,
                "attempt": b.attempt,
                "replica": b.replica,
                "accepted": b.accepted,
            },
        )

    def worker_serves(self: Node, peer: str, digest: str) -> bool:
        """We ran a job for origin ``peer`` whose output archive is ``digest``."""
        return any(
            w.origin == peer
            and w.result is not None
            and w.result.output_digest is not None
            and w.result.output_digest.removeprefix("sha256:") == digest
            for w in self.work.values()
        )

    def _gc_work(self) -> None:
        done = [k for k, w in self.work.items() if w.state in ("finished", "cancelled") and w.acked]
        keep = 4096
        for k in done[: max(0, len(self.work) - keep)]:
            del self.work[k]

    # ------------------------------------------------------------ restore

    def restore_worker_record(self: Node, kind: str, body: dict[str, Any]) -> None:
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
                self.now_ms,
                last_contact_ms=self.now_ms,
            )
            return
        key = (body.get("job_id"), body.get("attempt"), body.get("replica"))
        work = self.work.get(key)  # type: ignore[arg-type]
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

    def resume_worker(self: Node) -> None:
        """After a restart: runs that were executing died with us; results not yet
        acknowledged are sent again."""
        for key, work in self.work.items():
            if work.state in ("queued", "fetching", "running"):
                work.state, work.acked = "cancelled", True
                self._append(
                    "work_abandoned",
                    {
                        "job_id": key[0],
                        "attempt": key[1],
                        "replica": key[2],
                        "reason": "node restarted while the run was held",
                    },
                )
            elif work.state == "finished" and not work.acked and work.result is not None:
                work.last_contact_ms = self.now_ms
                self._send(work.origin, work.result, key[0])
                self._at(self.now_ms + self.params.result_resend_ms, T_RESEND, key)
        self.work_queue.clear()
