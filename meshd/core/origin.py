"""The origin role: offering a job, ranking bids, awarding, leases, results, verdicts.

Theory of operation
-------------------
A job needs ``needed`` agreeing results (1, or 2 when it is replicated). The
origin keeps a set of *runs* (one per award: ``(attempt, replica)``) and an at
most one open *offer*. After every event it calls :meth:`_advance`, which

1. settles the job if a group of agreeing results reaches ``needed``;
2. otherwise, if fewer runs are live than are still needed and no offer is
   open, opens one (immediately, or after the back-off when the last window
   found no usable bid);
3. re-derives the user-visible state and logs the change.

Failures never lose a job: a lost lease, a refused award, a failed run each
exclude that worker and count an attempt; past ``max_attempts`` the job fails
with the reason. A run that fails by the *job's* fault (a result whose
``fault`` is ``job``: nonzero exit, its timeout, out of memory, too much
output, an input it named that cannot be fetched) is confirmed by one run
elsewhere: after ``job_fault_runs`` such runs the job fails, the workers are
paid for that work (``Ledger.charge_failed``) and their reputation is left as
it was. A result for a run that is not live is acknowledged but not used, so a
job never has two accepted results from two different attempts.

Budget: ``max_budget`` bounds what the job costs across all its runs. A run
never earns more than its award's price (``Ledger.run_credits``), so the
origin counts every run that may still be paid at its price (or its cost, once
known) and awards only bids within what is left (:meth:`Origin._budget_left`);
the offer's ``max_budget`` is that remainder shared among the round's slots.
``cost.actual`` is what the receipts charged, nothing else.

Self-runs (specs/PROTOCOL.md §8.5): the node's own worker is a candidate for
a round of its own job only when no other live, unbanned, not excluded peer's
advert fits the round, its own capacity does, and the node has been up for
``self_run_grace_ms`` (:meth:`_self_candidate`): a node that has just started
has not heard the mesh's adverts yet, and its job waits for them (or for the
grace to end) instead of running at home. The offer then also goes to it
in-process, and so do the award, heartbeats, result and cancel. Others are
preferred whenever their adverts fit, since a self-run is checked by nobody
else. A self-run earns no credits and no receipt, moves no reputation or
trust, publishes no attestation, is not score-checked or kept for audit, and
its result never verifies itself: a replicated job still needs a second,
distinct worker (the verdict says ``run_by_origin``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .audit import AuditBook
from .context import Context
from .events import (
    TOPIC_OFFERS,
    BlobFetched,
    CancelRequested,
    CheckerFinished,
    FetchBlob,
    FetchLog,
    JobLog,
    JobSubmitted,
    ManifestStored,
    RetryRequested,
    RunChecker,
    SendFailed,
)
from .jobspec import JobSpec, parse_job_spec
from .lifecycle import RUN_LIVE, TERMINAL, check_transition, run_next
from .placement import (
    Capacity,
    WorkHistory,
    fit_reason,
    fit_reasons,
    job_gflops,
    offer_requirements,
    prefer_classes,
    rank_bids,
)
from .rtt import PeerRtt
from .scorecheck import ScoreCheck, judged_duration_ms, observed_duration_ms
from .silence import CANNOT_REACH_US, SilentPeers
from .wire import (
    MAX_ATTEMPT,
    MAX_EXCLUDE,
    MAX_REPLICA,
    Advert,
    Award,
    Bid,
    Cancel,
    HeartbeatReply,
    Offer,
    OfferRequirements,
    Opened,
    ResultAck,
    fault_of,
)

if TYPE_CHECKING:
    from .credits import Ledger
    from .peers import PeerEntry

T_WINDOW, T_REOFFER, T_LEASE, T_AWARD = "window", "reoffer", "lease", "award_timeout"
AWARD_TIMEOUT = "award not acknowledged in time"
MAX_UNFIT_REASONS = 8
"""Distinct reasons an estimate lists for peers that cannot run a job."""
UNFIT_MEMO_REQS = 16
"""Distinct job requirements whose fit per peer capacity an origin keeps
(:meth:`Origin._unfit`; a memo: more are judged afresh)."""
NO_ANSWER = "did not answer the offer"
"""Decline noted for a candidate silent when a window closed (withdrawn if its bid arrives later)."""


@dataclass
class Run:
    attempt: int
    replica: int
    worker: str
    price: float
    score_gflops: float
    state: str = "awarding"
    deadline_ms: int = 0
    """Award-ack deadline while awarding, lease end while active."""
    started: bool = False
    result: dict[str, Any] | None = None
    fetched: bool = False
    awarded_ms: int = 0
    """When the award was sent (its acknowledgement is a round-trip sample)."""
    result_ms: int | None = None
    """When its result reached us (None: not seen live, e.g. restored from the
    log). ``result_ms − awarded_ms`` bounds the run's duration from above on
    our own clock (``_check_claimed_score``)."""
    ack_timeout_ms: int = 0
    """The peer's award time-out when the award was sent (§10.2)."""
    timed_out: bool = False
    """Refused because its acknowledgement did not come in time: an
    acknowledgement or heartbeat arriving later may still revive it."""
    unanswered_until_ms: int = 0
    """An award that timed out still counts against its worker until then
    (``lease_ms`` after the time-out) unless the worker answers first (§8.4):
    its acknowledgement may only be late, and the worker may hold the run."""
    lease_base_ms: int = 0
    """Lease end as set by the last contact (before allowing for our own inbox's wait)."""
    det_class: str = ""
    """The determinism class the worker bid with ("" if it stated none)."""


@dataclass
class OriginJob:
    job_id: str
    spec: JobSpec
    submitted_ms: int
    state: str = "queued"
    updated_ms: int = 0
    attempt: int = 0
    offer_open: bool = False
    waiting_since_ms: int | None = None
    readmit_failed: bool = False
    """Every fitting peer already failed the job: offer it to them again (up to
    ``max_attempts``) rather than wait for a fresh worker that may never come."""
    """Since when the job has waited for a worker (None while a run is active);
    ``max_queue_time_ms`` bounds this wait, not the job's age."""
    next_offer_ms: int = 0
    backoff_ms: int = 0
    needed: int = 1
    replicate_decided: bool = False
    bids: dict[str, Bid] = field(default_factory=dict)
    tried: set[str] = field(default_factory=set)
    declines: deque[tuple[str, str]] = field(default_factory=deque)
    excluded: set[str] = field(default_factory=set)
    failures: int = 0
    last_failure: str = ""
    job_faults: list[tuple[int, int]] = field(default_factory=list)
    """Runs ``(attempt, replica)`` that failed by the job's own fault."""
    runs: dict[tuple[int, int], Run] = field(default_factory=dict)
    equiv: dict[frozenset[str], bool] = field(default_factory=dict)
    pending_checks: set[frozenset[str]] = field(default_factory=set)
    history: list[tuple[int, str, str]] = field(default_factory=list)
    reason: str = ""
    canonical: str | None = None
    exit_code: int | None = None
    cost_estimate: float | None = None
    estimate_basis: str = ""
    """What the estimate rests on: ``estimated_flops``, ``history`` or ``default``."""
    cost_actual: float = 0.0
    """What the ledger charges the job: the sum of the receipts issued for it."""
    verdict: dict[str, Any] | None = None
    next_replica: int = 0
    slow_rounds: int = 0
    """Consecutive rounds that closed with candidates but no bid (widens the window)."""
    offered_ms: int = 0
    """When the current round's offer was published (bid delays count from it)."""
    offer_slots: int = 1
    """Workers the open round asks for."""
    offer_candidates: int = 0
    """Peers whose adverts fit the open round (it closes when all answered)."""
    declined_now: int = 0
    """Declines received in the open round."""
    round_candidates: tuple[str, ...] = ()
    """The other peers counted in this round's ``offer_candidates``."""
    declined_round: set[str] = field(default_factory=set)
    """Peers that declined the open round."""
    queue_timeout_ms: int | None = None
    """The submitter's bound on the wait for a worker (None: ``max_queue_time_ms``)."""
    bid_ms: dict[str, int] = field(default_factory=dict)
    """When each bid in ``bids`` arrived."""
    logged_bids: list[dict[str, Any]] = field(default_factory=list)
    """The last closed round's bids as ``job_view`` shows them (logged as
    ``job_bids``, so they survive a restart with their times)."""
    manifest: str | None = None
    """The blob holding the countersigned manifest of the accepted result
    (specs/JOB.md §3.1), once the shell stored it; None before, and again
    whenever a new verdict replaces the result."""
    audit: dict[str, Any] | None = None
    """While an accepted unverified result is re-verified after its worker's
    conviction (``Origin._audit``): the convicted ``worker``, the ``canonical``
    accepted before, and ``from_replica``, the first replica number of the
    audit's runs (the runs before it were settled already)."""


class Origin:
    """The origin role: the jobs submitted to this node, from offer to settlement.

    Owns its jobs, their runs and the flow-control state of its offer rounds;
    shares only the :class:`~meshd.core.context.Context`; settles credit by
    calling the :class:`~meshd.core.credits.Ledger` role.
    """

    def __init__(self, ctx: Context, ledger: Ledger) -> None:
        self.ctx = ctx
        self.ledger = ledger
        self.jobs: dict[str, OriginJob] = {}
        self._capacities: dict[str, tuple[Advert, Capacity]] = {}
        """peer -> the advert of it we last read and its :class:`Capacity`
        (:meth:`_capacity`; at most twice ``advert_view_max`` peers)."""
        self._unfit_memo: dict[OfferRequirements, dict[str, tuple[Capacity, tuple[str, ...]]]] = {}
        """requirements -> peer -> the capacity judged and why it fails them
        (:meth:`_unfit`; at most ``UNFIT_MEMO_REQS`` requirements)."""
        self.audits = AuditBook(ctx.params)
        """Unreplicated accepted results per worker, audited on its conviction."""
        self.scores = ScoreCheck(ctx.params)
        """Achieved against claimed score per worker (``_check_claimed_score``)."""
        self.bid_delays: deque[int] = deque(maxlen=self.ctx.params.bid_delay_samples)
        self.holding_jobs: set[str] = set()
        """Jobs whose open round is held for a less loaded worker (``_close_window``)."""
        self.open_rounds: set[str] = set()
        """Jobs with an offer round open (at most ``max_offers_in_flight``)."""
        self.awarding: set[tuple[str, int, int]] = set()
        """Runs awarded and not yet acknowledged (at most ``max_awards_in_flight``)."""
        self.admission: OrderedDict[str, None] = OrderedDict()
        """Jobs ready for an offer round, waiting for room, oldest first."""
        self._admitting = False
        p = self.ctx.params
        self.round_limit = float(p.max_offers_in_flight)
        """Open rounds allowed now (AIMD between 1 and ``max_offers_in_flight``)."""
        self._last_cut_ms = -(10**12)
        self.work_history = WorkHistory(p.work_history_images, p.work_history_runs)
        """GFLOP of earlier runs per image: the guess for jobs without ``estimated_flops``."""
        self.own_capacity: Callable[[], Capacity | None] = lambda: None
        """This node's own worker's capacity (``Worker.capacity``; set by ``Node``)."""
        self.self_run_from_ms = ctx.now_ms + p.self_run_grace_ms
        """Before this time our own worker is no candidate (``self_run_grace_ms``
        after the node started: it has not heard the mesh's adverts yet, §8.5)."""
        self.silent = SilentPeers(
            rounds=p.silent_rounds,
            after_ms=p.silent_after_ms,
            exclude_ms=p.silent_exclude_ms,
            limit=p.advert_view_max,
        )
        """Candidates that cannot reach us (§8.6)."""
        self.rtt = PeerRtt(
            initial_ms=p.award_ack_timeout_ms,
            floor_ms=p.award_ack_timeout_min_ms,
            ceiling_ms=p.award_ack_timeout_max_ms,
            peers_kept=p.rtt_peers_kept,
        )

    def timers(self) -> dict[str, Callable[[Any], None]]:
        """This role's timer kinds and what runs when one is due."""
        return {
            T_WINDOW: self.timer_window,
            T_REOFFER: self.timer_reoffer,
            T_LEASE: self.timer_lease,
            T_AWARD: self.timer_award_timeout,
        }

    def direct_handlers(self) -> dict[str, Callable[[Opened], None]]:
        """The direct messages this role answers, by wire type."""
        return {
            "bid": self.on_bid,
            "decline": self.on_decline,
            "award_reply": self.on_award_reply,
            "heartbeat": self.on_heartbeat,
            "result": self.on_result,
        }

    # ------------------------------------------------------------ bounded work in flight

    def _set_open(self, job: OriginJob, is_open: bool) -> None:
        job.offer_open = is_open
        if is_open:
            self.open_rounds.add(job.job_id)
        else:
            self.open_rounds.discard(job.job_id)

    def _add_run(self, job: OriginJob, run: Run) -> None:
        """A new run, just awarded (state ``awarding``)."""
        assert run.state == "awarding"
        job.runs[(run.attempt, run.replica)] = run
        self.awarding.add((job.job_id, run.attempt, run.replica))

    def _set_run_state(self, job: OriginJob, run: Run, event: str) -> None:
        """Move ``run`` on ``event`` through ``lifecycle.RUN_TRANSITIONS``."""
        run.state = run_next(run.state, event)
        key = (job.job_id, run.attempt, run.replica)
        if run.state == "awarding":
            self.awarding.add(key)
        else:
            self.awarding.discard(key)

    def _room_for_round(self) -> bool:
        return (
            len(self.open_rounds) < int(self.round_limit)
            and len(self.awarding) < self.ctx.params.max_awards_in_flight
        )

    def _congested(self, why: str) -> None:
        """A sign that we ask the mesh faster than it answers: halve the open-round limit."""
        if self.ctx.now_ms - self._last_cut_ms < self.ctx.params.congestion_cooldown_ms:
            return
        self._last_cut_ms = self.ctx.now_ms
        self.round_limit = max(1.0, self.round_limit / 2)
        self.ctx.counters["congestion_" + why] += 1

    def _relieved(self) -> None:
        """An award was acknowledged in time: allow a little more in flight."""
        cap = float(self.ctx.params.max_offers_in_flight)
        self.round_limit = min(cap, self.round_limit + 1.0 / self.round_limit)

    def _defer(self, job: OriginJob) -> None:
        if job.job_id not in self.admission:
            self.admission[job.job_id] = None
            self.ctx.counters["offers_deferred"] += 1

    def _admit(self) -> None:
        """Open rounds for waiting jobs, oldest first, while there is room."""
        if self._admitting:
            return
        self._admitting = True
        try:
            while self.admission and self._room_for_round():
                job_id, _ = self.admission.popitem(last=False)
                job = self.jobs.get(job_id)
                if job is not None and job.state not in TERMINAL and not job.offer_open:
                    self._advance(job, admitted=True)
        finally:
            self._admitting = False

    def _backoff(self, job: OriginJob) -> None:
        """Double the job's re-offer delay (jittered) after a round or award that failed."""
        p = self.ctx.params
        job.backoff_ms = min(p.reoffer_max_ms, max(p.reoffer_base_ms, job.backoff_ms * 2))
        spread = p.reoffer_jitter * job.backoff_ms
        job.next_offer_ms = self.ctx.now_ms + int(
            job.backoff_ms + self.ctx.rng.uniform(-spread, spread)
        )

    # ------------------------------------------------------------ API-facing

    def expected_work(self, spec: JobSpec) -> tuple[float, str]:
        """The work (flops) a job is expected to take and what that rests on:
        its ``estimated_flops``, else the median of earlier runs of its image
        (``history``), else ``default_job_gflop`` (``default``)."""
        if spec.estimated_flops:
            return spec.estimated_flops, "estimated_flops"
        learned = self.work_history.guess(spec.image)
        if learned is not None:
            return learned * 1e9, "history"
        return self.ctx.params.default_job_gflop * 1e9, "default"

    def estimate(self, spec: JobSpec) -> dict[str, Any]:
        """Cost/time estimate from the adverts we hold: the cheapest fitting peer.

        The work is :meth:`expected_work` (``basis`` says what it rests on),
        its duration capped at the job's timeout. Also says how many live
        peers are ``known`` and, for those that cannot run the job at all, why:
        ``unfit`` maps each failed requirement's reason to how many peers fail
        it (a peer failing two counts under both). When no other peer fits, our
        own worker counts among the ``candidates`` if it fits, at no cost (a
        self-run, §8.5); it is never among ``known`` or ``unfit``. ``partial``:
        the mesh is sharded and we know only our shard (§5.2), so "no known
        peer fits" does not mean no peer does."""
        work, basis = self.expected_work(spec)
        req = offer_requirements(spec)
        best: tuple[float, float] | None = None
        candidates = known = 0
        unfit: dict[str, int] = {}

        def consider(cap: Capacity, price: float) -> None:
            nonlocal best, candidates
            candidates += 1
            gflops = job_gflops(cap, req.gpus)
            secs = min(spec.timeout_s, work / (gflops * 1e9)) if gflops > 0 else spec.timeout_s
            if basis == "estimated_flops":
                cost = work / 1e9 * price * spec.credit_rate
            else:
                cost = secs * gflops * price * spec.credit_rate
            if best is None or cost < best[0]:
                best = (cost, secs)

        memo = self._unfit_memo_of(req)
        for entry in self.ctx.peers.alive(self.ctx.now_ms):
            known += 1
            cap = self._capacity(entry)
            whys = self._unfit(entry, req, memo)
            for why in whys:
                unfit[why] = unfit.get(why, 0) + 1
            if not whys:
                consider(cap, cap.price)
        own = self.own_capacity()
        if not candidates and own is not None and self._own_fits(req):
            consider(own, 0.0)  # a run of our own costs nothing (§8.5)
        return {
            "credits": best[0] if best else None,
            "seconds": best[1] if best else None,
            "basis": basis,
            "candidates": candidates,
            "known": known,
            "partial": self.ctx.peers.shards > 1,
            "unfit": dict(sorted(unfit.items(), key=lambda kv: -kv[1])[:MAX_UNFIT_REASONS]),
        }

    def on_job_submitted(self, inp: JobSubmitted) -> None:
        if inp.job_id in self.jobs:
            self.ctx.counters["duplicate_submit"] += 1
            return
        self._evict_jobs()
        spec = inp.spec.model_copy(update={"job_id": inp.job_id})
        job = OriginJob(inp.job_id, spec, self.ctx.now_ms, updated_ms=self.ctx.now_ms)
        est = self.estimate(spec)
        job.cost_estimate, job.estimate_basis = est["credits"], est["basis"]
        job.queue_timeout_ms = inp.queue_timeout_ms
        if spec.replicas is not None:
            job.needed, job.replicate_decided = min(spec.replicas, 2), True
        self.jobs[job.job_id] = job
        job.history.append((self.ctx.now_ms, "queued", "submitted"))
        self.ctx.append(
            "job_submitted",
            {
                "job_id": job.job_id,
                "spec": spec.model_dump(mode="json"),
                "estimate": job.cost_estimate,
                "estimate_basis": job.estimate_basis,
                "ts_ms": job.submitted_ms,
                **({"queue_timeout_ms": inp.queue_timeout_ms} if inp.queue_timeout_ms else {}),
            },
            key=b"submit:" + job.job_id.encode(),
        )
        self._advance(job)

    def on_cancel_requested(self, inp: CancelRequested) -> None:
        job = self.jobs.get(inp.job_id)
        if job is None or job.state in TERMINAL:
            return
        freed = []
        for run in job.runs.values():
            if run.state in RUN_LIVE:
                self._set_run_state(job, run, "cancelled")
                freed.append(run.worker)
                self.ctx.send(
                    run.worker,
                    Cancel(job_id=job.job_id, attempt=run.attempt, reason="cancelled by the user"),
                    job.job_id,
                )
        self._finish(job, "cancelled", "cancelled by the user")
        for worker in freed:
            self._freed(worker)

    def on_retry_requested(self, inp: RetryRequested) -> None:
        job = self.jobs.get(inp.job_id)
        if job is None or job.state not in ("failed", "cancelled"):
            return
        job.failures, job.reason, job.excluded, job.readmit_failed = 0, "", set(), False
        job.job_faults = []
        job.waiting_since_ms = None
        job.runs = {k: r for k, r in job.runs.items() if r.state == "done" and r.fetched}
        job.next_offer_ms, job.backoff_ms = self.ctx.now_ms, 0
        self._set_state(job, "queued", "retried by the user")
        self.ctx.append("job_retried", {"job_id": job.job_id})
        self._advance(job)

    # ------------------------------------------------------------ offering

    def _advance(self, job: OriginJob, *, admitted: bool = False) -> None:
        if job.state in TERMINAL:
            return
        if self._try_settle(job):
            return
        if job.failures >= self.ctx.params.max_attempts:
            self._finish(
                job, "failed", f"gave up after {job.failures} failed attempts: {job.last_failure}"
            )
            return
        if (
            not self._busy_runs(job)
            and not job.pending_checks
            and len(groups := self._result_groups(job)) > 1
            and self._all_fitting_ran(job)
        ):
            # A tie-breaker is wanted but every worker that could run the job
            # already has: waiting max_queue_time_ms would change nothing.
            # (Not while a comparison is pending: its verdict may settle it.)
            self._finish(
                job,
                "failed",
                f"{sum(len(g) for g in groups)} results disagree and every fitting "
                "worker has run the job; no tie-breaker is possible (nondeterministic job?)",
            )
            return
        if self._wanted_runs(job) > self._busy_runs(job) and not job.offer_open:
            left = self._budget_left(job)
            if left is not None and left <= 0:
                self._finish(
                    job,
                    "failed",
                    f"budget spent: its runs cost or may still cost {self._committed(job):.4g} "
                    f"of max_budget {job.spec.max_budget:.4g} credits",
                )
                return
            if job.attempt >= MAX_ATTEMPT or job.next_replica > MAX_REPLICA:
                self._finish(
                    job,
                    "failed",
                    f"gave up after {job.attempt} offer rounds and {job.next_replica} "
                    "awards (refused, unanswered or lost): " + summarize_declines(job),
                )
                return
            if job.waiting_since_ms is None:
                job.waiting_since_ms = self.ctx.now_ms
            limit_ms = self._queue_limit_ms(job)
            if self.ctx.now_ms - self._waiting_from(job) > limit_ms:
                self._finish(
                    job,
                    "failed",
                    f"no worker took the job within its queue timeout ({limit_ms / 1000:g} s): "
                    + summarize_declines(job),
                )
                return
            if self.ctx.now_ms >= job.next_offer_ms:
                if self._room_for_round() and (admitted or not self.admission):
                    self.admission.pop(job.job_id, None)
                    self._open_offer(job)
                else:
                    self._defer(job)
            else:
                self.ctx.at(job.next_offer_ms, T_REOFFER, job.job_id)
        self._derive_state(job)

    def _queue_limit_ms(self, job: OriginJob) -> int:
        """How long ``job`` may wait for a worker: its submitter's queue
        timeout, at most the node's ``max_queue_time_ms``."""
        limit = self.ctx.params.max_queue_time_ms
        return limit if job.queue_timeout_ms is None else min(job.queue_timeout_ms, limit)

    def _waiting_from(self, job: OriginJob) -> int:
        """Since when ``job`` counts as waiting for a worker: its
        ``waiting_since_ms``, or the end of the self-run grace when our own
        worker fits it (the grace is no part of its queue timeout, §8.5)."""
        since = job.waiting_since_ms
        assert since is not None
        if since < self.self_run_from_ms and self._own_fits(offer_requirements(job.spec)):
            return self.self_run_from_ms
        return since

    def _busy_runs(self, job: OriginJob) -> int:
        """Runs that may still yield a result: live, or succeeded with the output in transfer."""
        return sum(
            1
            for r in job.runs.values()
            if r.state in RUN_LIVE
            or (
                r.state == "done"
                and not r.fetched
                and r.result is not None
                and r.result.get("status") == "succeeded"
            )
        )

    def _wanted_runs(self, job: OriginJob) -> int:
        """Runs that must be live so that ``needed`` agreeing results can appear."""
        results = self._result_groups(job)
        best = max((len(g) for g in results), default=0)
        if results and len(results) > 1 and best < job.needed:
            return job.needed - best  # disagreement: one tie-breaker per missing vote
        return max(0, job.needed - sum(len(g) for g in results))

    def _open_offer(self, job: OriginJob) -> None:
        slots = max(1, self._wanted_runs(job) - self._busy_runs(job))
        if not job.replicate_decided:
            slots = 1  # replication is decided when the first worker is chosen
        job.attempt += 1
        self._set_open(job, True)
        job.bids, job.bid_ms, job.tried = {}, {}, set()
        job.declined_round = set()
        exclude = set(job.excluded) | self._ran(job) | self._silent_peers()
        spec = job.spec
        left = self._budget_left(job)
        offer = Offer(
            job_id=job.job_id,
            attempt=job.attempt,
            spec_digest=spec.digest(),
            requirements=offer_requirements(spec),
            estimated_flops=spec.estimated_flops,
            expected_flops=None if spec.estimated_flops else self.expected_work(spec)[0],
            timeout_s=spec.timeout_s,
            max_budget=None if left is None else left / min(slots, 5),
            credit_rate=spec.credit_rate,
            speed=spec.speed,
            bid_window_ms=self._window_ms(job),
            slots=min(slots, 5),
            exclude=sorted(exclude)[:MAX_EXCLUDE],
        )
        job.offer_slots = offer.slots
        job.offered_ms = self.ctx.now_ms
        job.round_candidates = tuple(self._candidate_ids(offer))
        job.offer_candidates = len(job.round_candidates)
        here = self._self_candidate(job, offer)
        job.offer_candidates += here
        self.ctx.append(
            "job_offered", {"job_id": job.job_id, "attempt": job.attempt, "slots": offer.slots}
        )
        self.ctx.publish(TOPIC_OFFERS, offer)
        if here:
            self.ctx.counters["offers_to_self"] += 1
            self.ctx.send(self.ctx.peer_id, offer, job.job_id)  # in-process
        self.ctx.counters["offers_sent"] += 1
        self.ctx.at(self.ctx.now_ms + self._window_ms(job), T_WINDOW, (job.job_id, job.attempt))

    def _window_ms(self, job: OriginJob) -> int:
        """The bid window doubles after each round that closed with candidates
        known but no bid in (bids were late: the mesh is loaded); it is back to
        ``bid_window_ms`` after an award. It is never shorter than the learned
        window (:meth:`_learned_window_ms`), nor longer than ``bid_window_max_ms``."""
        p = self.ctx.params
        return min(
            p.bid_window_max_ms, max(p.bid_window_ms << job.slow_rounds, self._learned_window_ms())
        )

    def _learned_window_ms(self) -> int:
        """``bid_window_factor`` × the 90th percentile of recent bid delays
        (0 until a few bids were seen)."""
        if len(self.bid_delays) < 4:
            return 0
        ordered = sorted(self.bid_delays)
        p90 = ordered[min(len(ordered) - 1, (len(ordered) * 9) // 10)]
        return int(self.ctx.params.bid_window_factor * p90)

    def _self_candidate(self, job: OriginJob, offer: Offer) -> bool:
        """Our own worker takes part in this round: no other peer's advert
        fits it (``job.offer_candidates`` is 0), we are not excluded, our own
        capacity fits, and the self-run grace is over (§8.5). Within the grace
        the round is the peers' alone (one we have not heard of yet may bid on
        the published offer), and the next round is due when the grace ends
        at the latest (:meth:`_no_bids`)."""
        if job.offer_candidates or self.ctx.peer_id in offer.exclude:
            return False
        if not self._own_fits(offer.requirements):
            return False
        if self.ctx.now_ms < self.self_run_from_ms:
            self.ctx.counters["self_run_grace_waits"] += 1
            return False
        return True

    def _capacity(self, entry: PeerEntry) -> Capacity:
        """``Capacity.from_advert`` of the advert we hold for a peer, built
        once per advert: every job's estimate and offer reads every peer's."""
        hit = self._capacities.get(entry.peer_id)
        # Adverts are frozen: the same object says the same thing.
        if hit is not None and hit[0] is entry.advert:
            return hit[1]
        cap = Capacity.from_advert(entry.advert)
        if len(self._capacities) >= 2 * max(1, self.ctx.params.advert_view_max):
            self._capacities.clear()  # peers left the view; the ones still there come back
        self._capacities[entry.peer_id] = (entry.advert, cap)
        return cap

    def _unfit_memo_of(self, req: OfferRequirements) -> dict[str, tuple[Capacity, tuple[str, ...]]]:
        """The :meth:`_unfit` memo for requirements ``req`` (equal requirements
        share one: most jobs ask the same)."""
        memo = self._unfit_memo.get(req)
        if memo is None:
            if len(self._unfit_memo) >= UNFIT_MEMO_REQS:
                self._unfit_memo.clear()
            memo = self._unfit_memo[req] = {}
        return memo

    def _unfit(
        self,
        entry: PeerEntry,
        req: OfferRequirements,
        memo: dict[str, tuple[Capacity, tuple[str, ...]]],
    ) -> tuple[str, ...]:
        """``fit_reasons`` of a peer's capacity for ``req`` (empty: it fits),
        judged once per capacity (``memo``: :meth:`_unfit_memo_of`); every
        submit's estimate and every offer's candidates read every peer's."""
        cap = self._capacity(entry)
        hit = memo.get(entry.peer_id)
        if hit is not None and hit[0] is cap:  # the same capacity object: the same answer
            return hit[1]
        whys = tuple(fit_reasons(cap, req))
        if len(memo) >= 2 * max(1, self.ctx.params.advert_view_max):
            memo.clear()  # peers left the view; the ones still there come back
        memo[entry.peer_id] = (cap, whys)
        return whys

    def _own_fits(self, req: OfferRequirements) -> bool:
        """Our own worker's capacity fits requirements ``req`` (§8.1)."""
        own = self.own_capacity()
        return own is not None and fit_reason(own, req) is None

    def _candidate_ids(self, offer: Offer) -> list[str]:
        """Other live, unbanned, not excluded peers whose adverts fit ``offer``
        (peers that cannot reach us, §8.6, are in ``offer.exclude``)."""
        out = []
        req = offer.requirements
        memo = self._unfit_memo_of(req)
        for entry in self.ctx.peers.alive(self.ctx.now_ms):
            if entry.peer_id in offer.exclude or self.ctx.trust.banned(
                entry.peer_id, self.ctx.now_ms
            ):
                continue
            if not self._unfit(entry, req, memo):
                out.append(entry.peer_id)
        return out

    # ------------------------------------------------------------ silent candidates (§8.6)

    def heard_from(self, peer: str) -> None:
        """A direct message from ``peer`` was accepted: it reaches us."""
        if self.silent.heard_from(peer, self.ctx.now_ms):
            self.ctx.counters["peers_reach_us_again"] += 1

    def _silent_peers(self) -> set[str]:
        """Live peers that cannot reach us now (left out of our offers)."""
        now = self.ctx.now_ms
        return {
            e.peer_id for e in self.ctx.peers.alive(now) if self.silent.excluded(e.peer_id, now)
        }

    def _round_closed(self, job: OriginJob) -> None:
        answered = set(job.bids) | job.declined_round
        newly = self.silent.round_closed(job.round_candidates, answered, self.ctx.now_ms)
        self.ctx.counters["peers_cannot_reach_us"] += len(newly)

    def on_bid(self, msg: Opened) -> None:
        bid: Bid = msg.body
        job = self.jobs.get(bid.job_id)
        if job is None or job.state in TERMINAL or bid.attempt > job.attempt:
            self.ctx.counters["bid_unknown"] += 1
            return
        if msg.sender in job.excluded or len(job.bids) >= self.ctx.params.max_bids_kept:
            return
        if bid.attempt == job.attempt and msg.sender != self.ctx.peer_id:
            delay = max(0, self.ctx.now_ms - job.offered_ms)
            self.bid_delays.append(delay)
            self.rtt.sample(msg.sender, delay)  # offer out, bid back: about one round trip
        if (msg.sender, NO_ANSWER) in job.declines:  # it did answer, late
            job.declines = deque(d for d in job.declines if d != (msg.sender, NO_ANSWER))
        if job.offer_open:
            # A bid for an earlier round of this job is as good as one for
            # this round: the worker judged the same job (exclusions are
            # re-checked above and when awarding).
            if bid.attempt != job.attempt:
                self.ctx.counters["bid_carried_over"] += 1
            job.bids[msg.sender] = bid
            job.bid_ms[msg.sender] = self.ctx.now_ms
            if job.job_id in self.holding_jobs:
                self._close_window(job)  # closes unless this bidder is saturated too
            else:
                self._maybe_close_window(job)
            return
        # Late binding: a bid that missed its window is still an offer of
        # work. If the job is waiting for a worker, award it now instead of
        # waiting for the next round's back-off.
        self.ctx.counters["bid_late"] += 1
        if len(self.awarding) >= self.ctx.params.max_awards_in_flight:
            return  # the job keeps its place among those waiting for a round
        if not job.offer_open and self._wanted_runs(job) > self._busy_runs(job):
            # Collect late bids for a short window (no new offer is published),
            # so that the first late bidder does not win by arriving first:
            # ranking among several bids is what spreads load.
            job.bids, job.bid_ms = {msg.sender: bid}, {msg.sender: self.ctx.now_ms}
            job.tried = set()
            job.declined_round = set()
            self._set_open(job, True)
            self.admission.pop(job.job_id, None)
            p = self.ctx.params
            until = max(
                self.ctx.now_ms + p.late_bid_window_ms, job.offered_ms + self._learned_window_ms()
            )
            self.ctx.at(
                min(until, self.ctx.now_ms + p.bid_window_max_ms),
                T_WINDOW,
                (job.job_id, job.attempt),
            )
            self._derive_state(job)

    def on_decline(self, msg: Opened) -> None:
        job = self.jobs.get(msg.body.job_id)
        if job is None or msg.body.attempt != job.attempt:
            return
        self._note_decline(job, msg.sender, msg.body.reason)
        if msg.body.reason.startswith("busy"):
            self._congested("busy_decline")
        job.declined_now += 1
        job.declined_round.add(msg.sender)
        self._maybe_close_window(job)

    def _note_decline(self, job: OriginJob, peer: str, reason: str) -> None:
        job.declines.append((peer, reason))
        while len(job.declines) > self.ctx.params.max_declines_kept:
            job.declines.popleft()

    def _maybe_close_window(self, job: OriginJob) -> None:
        slots, candidates = job.offer_slots, job.offer_candidates
        answered = len(job.bids) + job.declined_now
        if len(job.bids) >= self.ctx.params.bids_enough * slots or (
            candidates and answered >= candidates
        ):
            self._close_window(job)

    def timer_window(self, key: tuple[str, int]) -> None:
        job = self.jobs.get(key[0])
        if job is not None and job.offer_open and job.attempt == key[1]:
            self._close_window(job)

    def timer_reoffer(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and not job.offer_open and self.ctx.now_ms >= job.next_offer_ms:
            self._advance(job)

    def _close_window(self, job: OriginJob) -> None:
        hold_until = job.offered_ms + self.ctx.params.saturated_hold_max_ms
        if self.ctx.now_ms < hold_until and self._only_saturated_bids(job):
            # Every bidder in hand already holds as many of our runs as it has
            # slots, while a less loaded candidate has not answered yet: wait
            # for its bid, or for one of our runs on a bidder to end (then
            # that bidder could start this job at once; ``_freed``), instead
            # of queueing the job behind our own work on the quickest responder.
            if job.job_id not in self.holding_jobs:
                self.holding_jobs.add(job.job_id)
                self.ctx.counters["rounds_held"] += 1
                self.ctx.at(hold_until, T_WINDOW, (job.job_id, job.attempt))
            return
        self.holding_jobs.discard(job.job_id)
        self._set_open(job, False)
        self._round_closed(job)
        job.declined_now = 0
        self._log_bids(job)
        self._award_next(job)
        self._advance(job)
        self._admit()

    def _log_bids(self, job: OriginJob) -> None:
        """Record the closed round's bids (``job_bids``), with when each arrived,
        so that ``mesh job`` shows them after a restart too."""
        if not job.bids:
            return
        job.logged_bids = [
            bid_view(p, b, job.bid_ms.get(p, self.ctx.now_ms)) for p, b in job.bids.items()
        ]
        self.ctx.append(
            "job_bids", {"job_id": job.job_id, "attempt": job.attempt, "bids": job.logged_bids}
        )

    def _freed(self, worker: str) -> None:
        """A run of ours on ``worker`` ended: rounds held while ``worker`` was
        saturated are ranked again (it may now be the best bid)."""
        for job_id in list(self.holding_jobs):
            job = self.jobs.get(job_id)
            if job is not None and worker in job.bids:
                self._close_window(job)

    def _only_saturated_bids(self, job: OriginJob) -> bool:
        """Every usable bidder of the round already holds at least as many of
        our live runs as it has slots, and some fitting candidate that has not
        answered holds fewer of them than the least loaded bidder."""
        bidders = [p for p in job.bids if p not in job.tried and p not in job.excluded]
        inflight = self._inflight()
        if not self._all_saturated(bidders, inflight):
            return False
        least = min(inflight.get(p, 0) for p in bidders)
        req = offer_requirements(job.spec)
        ran = job.excluded | self._ran(job)
        for entry in self.ctx.peers.alive(self.ctx.now_ms):
            p = entry.peer_id
            if (
                p in job.bids
                or p in job.declined_round
                or p in ran
                or inflight.get(p, 0) >= least
                or self.ctx.trust.banned(p, self.ctx.now_ms)
            ):
                continue
            if fit_reason(self._capacity(entry), req) is None:
                return True
        return False

    def _all_saturated(self, peers: list[str], inflight: dict[str, int]) -> bool:
        """``peers`` is not empty and each holds at least as many of our runs
        (``inflight``) as its advert has slots."""

        def slots(peer: str) -> int:
            entry = self.ctx.peers.get(peer)
            return max(1, entry.advert.capacity if entry is not None else 1)

        return bool(peers) and all(inflight.get(p, 0) >= slots(p) for p in peers)

    def _usable_bids(self, job: OriginJob) -> dict[str, Bid]:
        """The round's bids still to be tried: not from a worker that holds or
        ran the job, excluded or banned, and within the budget left."""
        busy = self._ran(job)
        left = self._budget_left(job)
        return {
            p: b
            for p, b in job.bids.items()
            if p not in job.tried
            and p not in busy
            and p not in job.excluded
            and not self.ctx.trust.banned(p, self.ctx.now_ms)
            and (left is None or b.price <= left)
        }

    def _award_next(self, job: OriginJob) -> None:
        """Award as many untried bids of this round as runs are still wanted."""
        live = self._busy_runs(job)
        want = self._wanted_runs(job) - live
        left = self._budget_left(job)
        usable = self._usable_bids(job)
        if want > 0 and not usable:
            self._no_bids(job)
            return
        ranked = rank_bids(
            usable,
            job.spec.speed,
            {p: self.ctx.trust.rank_reputation(p, self.ctx.now_ms) for p in usable},
            self._inflight(),
            {p: self.ctx.rng.random() for p in usable},
            per_gflop=not job.spec.estimated_flops,
            bound_s=job.spec.timeout_s,
        )
        while ranked:
            if want <= 0 or job.next_replica > MAX_REPLICA:
                break
            # An exact-hash job's results are compared within a determinism
            # class: bidders of the classes its runs already have go first.
            classes = self._run_classes(job)
            group = want if self._exact(job) and job.replicate_decided else 1
            peer = prefer_classes(ranked, usable, classes, group=group)[0]
            ranked.remove(peer)
            bid = usable[peer]
            if left is not None and bid.price > left:
                continue  # the runs awarded before it took what the budget had left
            if not job.replicate_decided:
                job.replicate_decided = True
                # A second, distinct worker must exist for replication to mean
                # anything; in a mesh with one candidate the result is accepted
                # unverified (and says so in the verdict). So must the budget:
                # a job priced by its flops whose budget cannot pay two runs
                # at this price is not replicated.
                enough = len(usable) >= 2 or job.offer_candidates >= 2
                if left is not None and job.spec.estimated_flops and 2 * bid.price > left:
                    enough = False
                job.needed = (
                    2 if enough and self.ctx.trust.should_replicate(peer, self.ctx.rng) else 1
                )
                want = self._wanted_runs(job) - live
            price = bid.price
            if left is not None:
                # The runs still wanted share what is left: a bid priced by
                # flops must fit its share; a bound (no flops) is cut to it,
                # and the worker stops the run at the award's price.
                share = left / max(1, want)
                if price > share and job.spec.estimated_flops:
                    continue
                price = min(price, share)
                left -= price
            self._award(job, peer, bid, price)
            want -= 1

    def _no_bids(self, job: OriginJob) -> None:
        left = self._budget_left(job)
        over_budget = [
            (p, b.price) for p, b in job.bids.items() if left is not None and b.price > left
        ]
        for p, price in over_budget:
            self._note_decline(
                job, p, f"bid {price:.4g} credits exceeds the budget left, {left:.4g}"
            )
        self._derive_declines(job)
        if not job.bids and job.offer_candidates > 0:
            job.slow_rounds = min(job.slow_rounds + 1, 8)
            if not job.declined_round:
                self._congested("silent_round")
        self._backoff(job)
        if self.ctx.now_ms < self.self_run_from_ms and self._own_fits(offer_requirements(job.spec)):
            # Our own worker may take the job once the grace is over: offer it
            # again then, not a whole back-off later.
            job.next_offer_ms = min(job.next_offer_ms, self.self_run_from_ms)
        self.ctx.counters["offers_unanswered"] += 1
        self.ctx.append(
            "job_no_bids",
            {"job_id": job.job_id, "attempt": job.attempt, "reasons": summarize_declines(job)},
        )
        if self._nobody_left(job):
            job.readmit_failed, job.excluded = True, set()
            job.next_offer_ms = self.ctx.now_ms

    def _ran(self, job: OriginJob) -> set[str]:
        """Workers not to offer the job to: live runs, and runs with a result
        (only successful ones once every fitting peer has failed the job)."""
        return {
            r.worker
            for r in job.runs.values()
            if r.state in RUN_LIVE
            or (r.result and (not job.readmit_failed or r.result.get("status") == "succeeded"))
        }

    def _nobody_left(self, job: OriginJob) -> bool:
        """The job failed before and every known peer that fits it already ran it."""
        return bool(job.failures) and self._all_fitting_ran(job)

    def _all_fitting_ran(self, job: OriginJob) -> bool:
        """Every live peer that fits the job already ran it (or is banned) —
        our own worker too, when it fits (a lone node whose own run was lost
        offers the job to itself again, §8.5). Never on a full view: peers
        outside it may fit (§8)."""
        if self.ctx.peers.full():
            return False
        req = offer_requirements(job.spec)
        ran = job.excluded | self._ran(job)
        fitting = [
            e.peer_id
            for e in self.ctx.peers.alive(self.ctx.now_ms)
            if fit_reason(self._capacity(e), req) is None
        ]
        if self._own_fits(req):
            fitting.append(self.ctx.peer_id)
        return bool(fitting) and all(
            p in ran or self.ctx.trust.banned(p, self.ctx.now_ms) for p in fitting
        )

    def _derive_declines(self, job: OriginJob) -> None:
        """Reasons we can read off adverts for peers that did not bid."""
        req = offer_requirements(job.spec)
        seen = {p for p, _ in job.declines} | set(job.bids)
        for entry in self.ctx.peers.alive(self.ctx.now_ms):
            if entry.peer_id in seen:
                continue
            if entry.peer_id in job.excluded:
                reason = "excluded after an earlier failure"
            elif entry.peer_id in self._ran(job):
                reason = "already ran this job (replicas must run on distinct workers)"
            elif self.ctx.trust.banned(entry.peer_id, self.ctx.now_ms):
                reason = "banned for misbehaviour"
            elif self.silent.excluded(entry.peer_id, self.ctx.now_ms):
                reason = CANNOT_REACH_US
            else:
                reason = fit_reason(self._capacity(entry), req) or NO_ANSWER
            self._note_decline(job, entry.peer_id, reason)
        if not self.ctx.peers.alive(self.ctx.now_ms):
            self._note_decline(job, "-", "no peers known (is this node connected to the mesh?)")

    def serves(self, peer: str, digest: str) -> bool:
        """``peer`` holds a live run of a job of ours that has input ``digest``
        (or whose travelling image archive, or its piece list, is ``digest``)."""
        for job in self.jobs.values():
            if job.state in TERMINAL or not any(
                r.worker == peer and r.state in RUN_LIVE for r in job.runs.values()
            ):
                continue
            if any(
                i.digest is not None and i.digest.removeprefix("sha256:") == digest
                for i in job.spec.inputs
            ):
                return True
            blob = job.spec.image_blob
            if blob is not None and digest in (
                blob.digest.removeprefix("sha256:"),
                (blob.pieces or "").removeprefix("sha256:"),
            ):
                return True
        return False

    def _inflight(self) -> dict[str, int]:
        """Per worker, the runs of our unsettled jobs it may hold: live ones,
        and awards that timed out with no answer yet (``Run.unanswered_until_ms``).

        Not counting the latter let a burst overshoot: the award's
        acknowledgement was only late, the worker looked one run lighter, won
        another of our jobs, and then the late one was revived as well (a
        worker held slots + 3 in a burst with replies of 50–800 ms, 7 of 20
        seeds; ``_run_refused`` holds back the re-award for the rest)."""
        counts: dict[str, int] = {}
        now = self.ctx.now_ms
        for job in self.jobs.values():
            if job.state in TERMINAL:
                continue
            for r in job.runs.values():
                if r.state in RUN_LIVE or now < r.unanswered_until_ms:
                    counts[r.worker] = counts.get(r.worker, 0) + 1
        return counts

    def _award(self, job: OriginJob, peer: str, bid: Bid, price: float) -> None:
        """Award ``bid`` at ``price`` (the bid's, or less: the job's share of
        its budget; a run never earns more than its award's price)."""
        job.tried.add(peer)
        job.slow_rounds = 0
        replica = job.next_replica
        job.next_replica += 1
        run = Run(
            job.attempt,
            replica,
            peer,
            price,
            bid.score_gflops,
            det_class=bid.det_class,
            deadline_ms=self.ctx.now_ms + self.rtt.timeout_ms(peer) + self.ctx.inbox_wait_ms,
            awarded_ms=self.ctx.now_ms,
            ack_timeout_ms=self.rtt.timeout_ms(peer),
        )
        self._add_run(job, run)
        self.ctx.append(
            "run_awarded",
            {
                "job_id": job.job_id,
                "attempt": run.attempt,
                "replica": replica,
                "worker": peer,
                "price": price,
                "score": bid.score_gflops,
                "det_class": bid.det_class,
            },
        )
        self.ctx.send(
            peer,
            Award(
                job_id=job.job_id,
                attempt=run.attempt,
                replica=replica,
                spec=job.spec.model_dump(mode="json"),
                price=price,
                lease_ms=self.ctx.params.lease_ms,
            ),
            job.job_id,
            ttl_ms=run.deadline_ms - self.ctx.now_ms,
        )
        self.ctx.counters["awards_sent"] += 1
        self.ctx.at(run.deadline_ms, T_AWARD, (job.job_id, run.attempt, replica))

    def _run_of(
        self, job_id: str, attempt: int, replica: int, sender: str
    ) -> tuple[OriginJob, Run] | None:
        job = self.jobs.get(job_id)
        run = job.runs.get((attempt, replica)) if job else None
        if job is None or run is None or run.worker != sender:
            return None
        return job, run

    def on_award_reply(self, msg: Opened) -> None:
        b = msg.body
        found = self._run_of(b.job_id, b.attempt, b.replica, msg.sender)
        if found is None:
            return
        job, run = found
        run.unanswered_until_ms = 0  # answered: it holds the run or does not
        if run.state == "refused" and run.timed_out and b.accepted:
            self.ctx.counters["award_ack_late"] += 1
            if not self._revive(job, run):
                self._withdraw(job, run, "award withdrawn: acknowledged after its time-out")
            return
        if run.state != "awarding":
            return
        if msg.sender != self.ctx.peer_id:
            self.rtt.sample(msg.sender, self.ctx.now_ms - run.awarded_ms)
        if b.accepted:
            self._relieved()
            self._activate(job, run)
            self._admit()
        else:
            if (b.reason or "").startswith("busy"):
                self._congested("busy_decline")
            self._run_refused(job, run, b.reason or "refused")

    def _lease_end(self, run: Run) -> int:
        """A lease runs ``lease_ms`` from the last contact, plus the worker's
        round-trip time-out (a busy peer's heartbeat takes longer to arrive)."""
        return self.ctx.now_ms + self.ctx.params.lease_ms + self.rtt.timeout_ms(run.worker)

    def _activate(self, job: OriginJob, run: Run) -> None:
        self._set_run_state(job, run, "accepted")
        run.timed_out = False
        run.deadline_ms = run.lease_base_ms = self._lease_end(run)
        job.waiting_since_ms = None
        job.backoff_ms = 0
        self.ctx.append(
            "run_accepted",
            {"job_id": job.job_id, "attempt": run.attempt, "replica": run.replica},
        )
        self.ctx.at(run.deadline_ms, T_LEASE, (job.job_id, run.attempt, run.replica))
        self._derive_state(job)

    def _revive(self, job: OriginJob, run: Run) -> bool:
        """A run refused for a late acknowledgement turns out to be under way
        (its acknowledgement or heartbeat came after all): keep it rather than
        place the job again, when the job still wants a run, or when the run
        that replaced it has not been acknowledged itself (that one is
        withdrawn). True if revived. Either way the worker has answered:
        the award no longer counts against it unless revived (``_inflight``)."""
        run.unanswered_until_ms = 0
        if job.state in TERMINAL:
            return False
        if self._wanted_runs(job) <= self._busy_runs(job):
            pending = [
                r for r in job.runs.values() if r.state == "awarding" and r.worker != run.worker
            ]
            if not pending:
                return False
            self._withdraw(job, pending[-1], "award withdrawn: an earlier award is under way")
        self.ctx.counters["award_late_honoured"] += 1
        late = "refused award: " + AWARD_TIMEOUT
        job.declines = deque(
            d for d in job.declines if not (d[0] == run.worker and d[1].startswith(late))
        )
        self._activate(job, run)
        return True

    def _log_refused(self, job: OriginJob, run: Run, reason: str) -> None:
        body = {"job_id": job.job_id, "attempt": run.attempt, "replica": run.replica}
        self.ctx.append("run_refused", {**body, "reason": reason})

    def _withdraw(self, job: OriginJob, run: Run, reason: str) -> None:
        """Tell a worker to drop a run we no longer want (acknowledged too late)."""
        if run.state == "awarding":
            self._set_run_state(job, run, "refused")
            self._log_refused(job, run, reason)
        self.ctx.counters["awards_withdrawn"] += 1
        self.ctx.send(
            run.worker, Cancel(job_id=job.job_id, attempt=run.attempt, reason=reason), job.job_id
        )

    def on_award_failed(self, inp: SendFailed) -> None:
        job = self.jobs.get(inp.job_id or "")
        if job is None:
            return
        for run in list(job.runs.values()):  # _run_refused may award (add runs)
            if run.worker == inp.to_peer and run.state == "awarding":
                self._run_refused(job, run, f"unreachable: {inp.error}", backoff=True)

    def timer_award_timeout(self, key: tuple[str, int, int]) -> None:
        job = self.jobs.get(key[0])
        run = job.runs.get((key[1], key[2])) if job else None
        if (
            job is not None
            and run is not None
            and run.state == "awarding"
            and self.ctx.now_ms >= run.deadline_ms
        ):
            # The reply may be waiting in our own inbox: time out only once the
            # peer's time-out plus our inbox's current wait has passed.
            due = run.awarded_ms + run.ack_timeout_ms + self.ctx.inbox_wait_ms
            if self.ctx.now_ms < due:
                run.deadline_ms = due
                self.ctx.at(due, T_AWARD, key)
                return
            run.timed_out = True
            run.unanswered_until_ms = self.ctx.now_ms + self.ctx.params.lease_ms
            self.rtt.timed_out(run.worker)
            self._congested("award_timeout")
            self.ctx.counters["award_timeouts"] += 1
            self._run_refused(
                job, run, f"{AWARD_TIMEOUT} ({run.deadline_ms - run.awarded_ms} ms)", backoff=True
            )

    def _run_refused(self, job: OriginJob, run: Run, reason: str, *, backoff: bool = False) -> None:
        self._set_run_state(job, run, "refused")
        if backoff and self._wanted_runs(job) > self._busy_runs(job):
            self._backoff(job)  # the mesh is slow to answer: do not re-offer at once
        self._note_decline(job, run.worker, "refused award: " + reason)
        self._log_refused(job, run, reason)
        if job.state not in TERMINAL:
            if run.timed_out and self._all_saturated(
                list(self._usable_bids(job)), self._inflight()
            ):
                # Its acknowledgement may only be late (the worker then holds
                # the run, and is revived): awarded now, the job would give
                # one of the saturated bidders a run more than its slots'
                # worth. Wait for the answer, or re-offer after the back-off.
                self.ctx.counters["reaward_deferred"] += 1
            else:
                self._award_next(job)  # next best bid of the same round, if any
            self._advance(job)
        self._freed(run.worker)
        self._admit()

    # ------------------------------------------------------------ leases

    def on_heartbeat(self, msg: Opened) -> None:
        b = msg.body
        found = self._run_of(b.job_id, b.attempt, b.replica, msg.sender)
        if found is not None and found[1].state == "refused" and found[1].timed_out:
            self._revive(*found)  # its acknowledgement was late or lost: it runs
        keep = found is not None and found[1].state in RUN_LIVE and found[0].state not in TERMINAL
        if found is not None and keep:
            job, run = found
            if run.state == "awarding":  # heartbeat overtook the award reply
                self._set_run_state(job, run, "accepted")
                job.waiting_since_ms = None
                self._admit()
            run.deadline_ms = run.lease_base_ms = self._lease_end(run)
            self.ctx.at(run.deadline_ms, T_LEASE, (job.job_id, run.attempt, run.replica))
            if b.state == "running" and not run.started:
                run.started = True
                self.ctx.append(
                    "run_started",
                    {"job_id": job.job_id, "attempt": run.attempt, "replica": run.replica},
                )
            if b.log:
                self.ctx.emit(JobLog(job.job_id, run.attempt, run.replica, tuple(b.log)))
            self._derive_state(job)
        self.ctx.send(
            msg.sender,
            HeartbeatReply(job_id=b.job_id, attempt=b.attempt, replica=b.replica, keep=keep),
            b.job_id,
        )

    def timer_lease(self, key: tuple[str, int, int]) -> None:
        job = self.jobs.get(key[0])
        run = job.runs.get((key[1], key[2])) if job else None
        if job is None or run is None or run.state != "active" or self.ctx.now_ms < run.deadline_ms:
            return
        due = run.lease_base_ms + self.ctx.inbox_wait_ms
        if self.ctx.now_ms < due:  # a heartbeat may be waiting in our own congested inbox
            self.ctx.at(due, T_LEASE, key)
            return
        self._set_run_state(job, run, "lease_lost")
        self._observe(run.worker, "abandoned", self.ctx.now_ms)
        self._run_failed(
            job,
            run,
            f"lease lost: no heartbeat from {run.worker[-8:]} for {self.ctx.params.lease_ms} ms",
            exclude=True,
        )
        self._freed(run.worker)

    def _run_failed(
        self, job: OriginJob, run: Run, reason: str, *, exclude: bool, fault: str = "worker"
    ) -> None:
        self._note_failed(job, run, reason, fault)
        if exclude:
            job.excluded.add(run.worker)
        job.history.append((self.ctx.now_ms, job.state, reason))
        self._advance(job)

    def _note_failed(self, job: OriginJob, run: Run, reason: str, fault: str) -> None:
        """Count a failed run and log it (``run_failed``, with whose fault it is)."""
        job.failures += 1
        job.last_failure = reason
        self.ctx.append(
            "run_failed",
            {
                "job_id": job.job_id,
                "attempt": run.attempt,
                "replica": run.replica,
                "worker": run.worker,
                "reason": reason,
                "fault": fault,
            },
        )

    def _job_fault(self, job: OriginJob, run: Run, why: str) -> None:
        """A run failed by the job's own doing: no mark against the worker.
        The first such run is confirmed on another worker; after
        ``job_fault_runs`` of them the job fails, naming the cause once."""
        job.job_faults.append((run.attempt, run.replica))
        if len(job.job_faults) >= self.ctx.params.job_fault_runs:
            self._note_failed(job, run, f"run on {run.worker[-8:]}: {why}", "job")
            workers = ", ".join(job.runs[k].worker[-8:] for k in job.job_faults)
            self._finish(
                job, "failed", f"the job failed on {len(job.job_faults)} workers ({workers}): {why}"
            )
            return
        self._run_failed(job, run, f"run on {run.worker[-8:]}: {why}", exclude=True, fault="job")

    def _committed(self, job: OriginJob) -> float:
        """Credits the job's runs on other workers have cost or may still cost:
        a live run at its price (it never earns more), a result that may be
        paid (succeeded, or failed by the job's fault) at what it earns."""
        total = 0.0
        for key, r in job.runs.items():
            if r.worker == self.ctx.peer_id:
                continue  # nobody pays themselves
            if r.state in RUN_LIVE:
                total += r.price
            elif (
                r.state == "done"
                and r.result is not None
                and (r.result.get("status") == "succeeded" or key in job.job_faults)
            ):
                total += self.ledger.run_credits(job, r)
        return total

    def _budget_left(self, job: OriginJob) -> float | None:
        """What a further run may cost within ``max_budget`` (less the bounty,
        which is paid on top of the runs); None without a budget."""
        if job.spec.max_budget is None:
            return None
        return job.spec.max_budget - job.spec.bounty - self._committed(job)

    # ------------------------------------------------------------ results

    def on_result(self, msg: Opened) -> None:
        b = msg.body
        found = self._run_of(b.job_id, b.attempt, b.replica, msg.sender)
        if found is not None and found[1].state == "refused" and found[1].timed_out:
            self._revive(*found)  # it ran although its acknowledgement was late or lost
        usable = found is not None and found[1].state in RUN_LIVE and found[0].state not in TERMINAL
        self.ctx.send(
            msg.sender,
            ResultAck(
                job_id=b.job_id,
                attempt=b.attempt,
                replica=b.replica,
                accepted=usable,
                reason="" if usable else "run not live",
            ),
            b.job_id,
        )
        if not usable:
            self.ctx.counters["result_ignored"] += 1
            return
        job, run = found  # type: ignore[misc]
        self._set_run_state(job, run, "result")
        run.result = b.model_dump(mode="json")
        run.result_ms = self.ctx.now_ms
        self.ctx.append("run_result", {"job_id": job.job_id, "worker": run.worker, **run.result})
        self._fetch_log(job, run)
        if b.status == "succeeded":
            self.work_history.learn(job.spec.image, b.duration_ms / 1000 * run.score_gflops)
        if fault_of(b.status, b.fault) == "job":
            self._job_fault(job, run, failure_text(b.status, b.exit_code, b.reason))
        elif b.status != "succeeded" or b.output_digest is None:
            self._observe(
                run.worker, "abandoned" if b.status == "error" else "completed", self.ctx.now_ms
            )
            self._run_failed(
                job,
                run,
                f"run on {run.worker[-8:]}: {failure_text(b.status, b.exit_code, b.reason)}",
                exclude=b.status == "error",
            )
        else:
            self.ctx.emit(
                FetchBlob(job.job_id, run.attempt, run.replica, run.worker, b.output_digest)
            )
            self._advance(job)
        self._freed(run.worker)

    def _observe(
        self, worker: str, outcome: str, now_ms: int, *, weight: float | None = None
    ) -> None:
        """Record an observation of ``worker`` — never of ourselves (a self-run
        moves no reputation, §8.5)."""
        if worker != self.ctx.peer_id:
            self.ctx.trust.observe(worker, outcome, now_ms, weight=weight)

    def _fetch_log(self, job: OriginJob, run: Run) -> None:
        """Ask the shell to fetch a run's stored log (specs/JOB.md §6), if it has one."""
        digest = run.result.get("log_digest") if run.result else None
        if digest:
            self.ctx.emit(FetchLog(job.job_id, run.attempt, run.replica, run.worker, digest))

    def _check_claimed_score(self, job: OriginJob, run: Run) -> None:
        """Cross-check the score an accepted run's worker bid with (its measured,
        advertised GFLOPS) against what it achieved on a job of known size
        (scorecheck.py: the best of its recent runs, beyond a tolerance); an
        over-claim is logged and counts against its reputation, more the larger.

        The duration judged is the larger of the worker's report and what we
        saw ourselves less ``score_check_slack_ms`` (``judged_duration_ms``),
        so a worker cannot look faster than our own clock allows; a run whose result we did not see live (it
        came before a restart) is not judged."""
        flops = job.spec.estimated_flops
        reported_ms = int((run.result or {}).get("duration_ms", 0))
        if run.worker == self.ctx.peer_id or not flops or run.score_gflops <= 0:
            return
        if run.result_ms is None:
            return
        observed_ms = observed_duration_ms(run.awarded_ms, run.result_ms)
        duration_ms = judged_duration_ms(
            reported_ms, observed_ms, self.ctx.params.score_check_slack_ms
        )
        if duration_ms <= 0:
            return
        achieved = flops / (duration_ms / 1000) / 1e9
        v = self.scores.sample(run.worker, run.score_gflops, achieved)
        if v.weight > 0:
            self.ctx.counters["score_overclaims"] += 1
            self._observe(run.worker, "overclaimed", self.ctx.now_ms, weight=v.weight)
            self.ctx.append(
                "score_mismatch",
                {
                    "job_id": job.job_id,
                    "worker": run.worker,
                    "claimed_gflops": run.score_gflops,
                    "achieved_gflops": round(achieved, 3),
                    "reported_ms": reported_ms,
                    "observed_ms": observed_ms,
                    "best_gflops": round(run.score_gflops * v.best, 3),
                    "ratio": round(v.gap, 2),
                    "samples": v.samples,
                    "weight": round(v.weight, 3),
                },
            )

    def on_blob_fetched(self, inp: BlobFetched) -> None:
        job = self.jobs.get(inp.job_id)
        run = job.runs.get((inp.attempt, inp.replica)) if job else None
        if job is None or run is None or run.result is None or job.state in TERMINAL:
            return
        if not inp.ok:
            self._set_run_state(job, run, "output_lost")
            self._run_failed(
                job,
                run,
                f"output transfer from {run.worker[-8:]} failed: {inp.error}",
                exclude=True,
            )
            return
        run.fetched = True
        self.ctx.append(
            "run_output",
            {
                "job_id": job.job_id,
                "attempt": run.attempt,
                "replica": run.replica,
                "digest": inp.digest,
            },
        )
        self._request_checks(job)
        self._advance(job)

    def _fetched_runs(self, job: OriginJob) -> list[Run]:
        return [r for r in job.runs.values() if r.state == "done" and r.fetched and r.result]

    def _same(self, job: OriginJob, a: str, b: str) -> bool | None:
        """Whether two output digests agree under the job's rule; None: not judged yet.

        Exact digests agree; with ``tolerance`` or ``checker_image`` different
        digests are judged by the shell (``RunChecker`` -> ``CheckerFinished``,
        specs/CREDITS.md "Comparison rules")."""
        if a == b:
            return True
        if job.spec.tolerance is None and job.spec.checker_image is None:
            return False
        return job.equiv.get(frozenset((a, b)))

    def _request_checks(self, job: OriginJob) -> None:
        """Ask the shell to judge every pair of distinct fetched outputs not yet judged."""
        digests = sorted({r.result["output_digest"] for r in self._fetched_runs(job)})  # type: ignore[index]
        for i, a in enumerate(digests):
            for b in digests[i + 1 :]:
                pair = frozenset((a, b))
                if self._same(job, a, b) is None and pair not in job.pending_checks:
                    job.pending_checks.add(pair)
                    self.ctx.emit(
                        RunChecker(
                            job.job_id, job.spec.checker_image or "", a, b, job.spec.tolerance
                        )
                    )

    def on_manifest_stored(self, inp: ManifestStored) -> None:
        """The shell stored the accepted result's countersigned manifest: name
        it in the log (``result_manifest``), so it is served, and kept with the
        job's outputs, after a restart."""
        job = self.jobs.get(inp.job_id)
        if job is None or job.state != "succeeded" or job.canonical != inp.canonical:
            return  # re-opened or replaced meanwhile: the next verdict stores its own
        if job.manifest == inp.manifest:
            return
        job.manifest = inp.manifest
        self.ctx.append(
            "result_manifest",
            {"job_id": job.job_id, "canonical": inp.canonical, "manifest": inp.manifest},
        )

    def on_checker_finished(self, inp: CheckerFinished) -> None:
        job = self.jobs.get(inp.job_id)
        pair = frozenset((inp.a, inp.b))
        if job is None or job.state in TERMINAL or pair not in job.pending_checks:
            self.ctx.counters["checker_verdict_unsolicited"] += 1
            return
        job.pending_checks.discard(pair)
        job.equiv[pair] = inp.equivalent
        self._advance(job)

    def _result_groups(self, job: OriginJob) -> list[list[Run]]:
        """Fetched results grouped by agreement with each group's first member.

        A pair not judged yet counts as agreeing (provisionally): no tie-breaker
        is started before the checker has said the outputs differ."""
        groups: list[list[Run]] = []
        for run in self._fetched_runs(job):
            d = run.result["output_digest"]  # type: ignore[index]
            for g in groups:
                if self._same(job, g[0].result["output_digest"], d) is not False:  # type: ignore[index]
                    g.append(run)
                    break
            else:
                groups.append([run])
        return groups

    def _try_settle(self, job: OriginJob) -> bool:
        self._request_checks(job)  # judgements lost in a restart are asked for again
        if job.pending_checks:
            return False
        groups = self._result_groups(job)
        if not groups:
            return False
        best = max(groups, key=len)
        if len(best) < job.needed:
            if sum(len(g) for g in groups) >= self.ctx.params.max_disagreeing_results:
                self._finish(
                    job,
                    "failed",
                    f"{sum(len(g) for g in groups)} results disagree; "
                    "no majority of " + str(job.needed),
                )
                return True
            return False
        if self._second_opinion_wanted(job, best[0]):
            job.needed = 2
            return False
        canonical = best[0].result["output_digest"]  # type: ignore[index]
        valid = [r.worker for r in best]
        # A result outside the canonical group is a lie only if it is
        # comparable with it; from another determinism class it is not judged.
        outside = [r for g in groups if g is not best for r in g]
        invalid = [r.worker for r in outside if any(self._comparable(job, r, b) for b in best)]
        other_class = [r.worker for r in outside if r.worker not in invalid]
        replicated = job.needed > 1
        now = self.ctx.now_ms
        for w in valid:
            self._observe(w, "valid" if replicated else "completed", now)
            if not replicated and w != self.ctx.peer_id:
                self.audits.note(w, job.job_id, now)
        for w in invalid:
            self._observe(w, "invalid", now)
        job.canonical, job.manifest = canonical, None
        job.exit_code = best[0].result.get("exit_code")  # type: ignore[union-attr]
        job.verdict = {
            "replicas": sum(len(g) for g in groups),
            "needed": job.needed,
            "verdict": "agreed" if replicated else "unverified",
            "valid": valid,
            "invalid": invalid,
            "other_class": other_class,
            "run_by_origin": self.ctx.peer_id in valid,
        }
        hold = min(self.ctx.params.result_hold_ms, self.ctx.params.audit_window_ms)
        if not replicated and hold > 0 and self.ctx.peer_id not in valid:
            # Accepted unreplicated: provisional until the hold ends (CREDITS.md §4.2).
            job.verdict["provisional_until_ms"] = now + hold
        self.ctx.append(
            "job_verdict", {"job_id": job.job_id, "canonical": canonical, **job.verdict}
        )
        for r in job.runs.values():  # stop anything still running for this job
            if r.state in RUN_LIVE:
                self._set_run_state(job, r, "cancelled")
                self.ctx.send(
                    r.worker,
                    Cancel(job_id=job.job_id, attempt=r.attempt, reason="result settled"),
                    job.job_id,
                )
        if replicated:
            self.ledger.publish_attestations(job, valid, invalid)  # none about ourselves
        audit, job.audit = job.audit, None
        # The runs settled before an audit were paid and score-checked then.
        fresh = best if audit is None else [r for r in best if r.replica >= audit["from_replica"]]
        for r in fresh:
            self._check_claimed_score(job, r)
        job.cost_actual += self.ledger.settle_credits(job, fresh)
        if audit is not None:
            if canonical != audit["canonical"]:
                self._retract(job, audit)
        self._finish(job, "succeeded", self._audit_outcome(job, audit))
        for w in invalid:
            if self.ctx.trust.convicted(w, now):
                self.audit(w, self.ctx.peer_id)
        return True

    def audit(self, worker: str, by: str) -> None:
        """``worker`` was just convicted — by this node's own verdict, or by
        ``by``, a fully credible origin whose ``invalid`` attestation we
        applied: re-verify the results this origin accepted from it
        unreplicated within ``audit_window_ms`` (specs/CREDITS.md §4.1). Each
        such job is reopened with its accepted result kept as one vote and two
        agreeing results needed; the worker is excluded, so others decide.
        Evicted or since-replicated jobs are skipped; a job is audited at most
        once per note (``AuditBook.take`` forgets what it hands out)."""
        for job_id in self.audits.take(worker, self.ctx.now_ms):
            job = self.jobs.get(job_id)
            if (
                job is None
                or job.state != "succeeded"
                or job.audit is not None
                or (job.verdict or {}).get("verdict") != "unverified"
            ):
                continue
            self.ctx.counters["audits_started"] += 1
            body = {
                "job_id": job_id,
                "worker": worker,
                "by": by,
                "canonical": job.canonical,
                "from_replica": job.next_replica,
                "final": self.final(job, self.ctx.now_ms) is True,
            }
            self.ctx.append("job_audit", body)
            self._reopen_for_audit(job, body)
            where = "here" if by == self.ctx.peer_id else f"by {by[-8:]}"
            self._set_state(job, "queued", f"audit: worker {worker[-8:]} was convicted {where}")
            self._advance(job)

    @staticmethod
    def _reopen_for_audit(job: OriginJob, body: dict[str, Any]) -> None:
        """The state change a ``job_audit`` record makes (live and on restore)."""
        job.audit = {k: body[k] for k in ("worker", "canonical", "from_replica")}
        # Records from before the hold existed carry no ``final``: the result was final.
        job.audit["final"] = body.get("final", True)
        job.needed, job.replicate_decided = 2, True
        job.excluded = {body["worker"]}
        job.failures, job.reason, job.waiting_since_ms = 0, "", None
        job.runs = {k: r for k, r in job.runs.items() if r.state == "done" and r.fetched}
        job.next_offer_ms, job.backoff_ms = 0, 0

    @staticmethod
    def _audit_outcome(job: OriginJob, audit: dict[str, Any] | None) -> str:
        """The finished job's reason: what an audit found, if one ran."""
        if audit is None:
            return ""
        who = f"convicted worker {audit['worker'][-8:]}"
        if job.canonical == audit["canonical"]:
            return f"audit confirmed the result accepted from {who}"
        if not audit["final"]:
            return (
                f"audit RETRACTED the provisional result accepted from {who} "
                f"({str(audit['canonical'])[:12]}) within its hold, before it was final; "
                "the re-run's verified result replaces it"
            )
        return (
            f"audit RETRACTED the final result accepted from {who} "
            f"({str(audit['canonical'])[:12]}); the re-verified result replaces it"
        )

    def _retract(self, job: OriginJob, audit: dict[str, Any]) -> None:
        """An audit's majority overturned a result accepted unverified: log it
        (the job's history and ``verification`` show it to the submitter) and
        take back what the worker was paid for it (a receipt reversal). Within
        the result's hold it was still provisional (``final`` false): the
        re-run replaced it before it was ever final (specs/CREDITS.md §4.2)."""
        final = audit["final"]
        self.ctx.counters["results_retracted"] += 1
        self.ctx.counters[
            "final_results_retracted" if final else "provisional_results_replaced"
        ] += 1
        if job.verdict is not None:
            job.verdict["retracted"] = audit["canonical"]
            job.verdict["retracted_final"] = final
        self.ctx.append(
            "job_retracted",
            {
                "job_id": job.job_id,
                "worker": audit["worker"],
                "retracted": audit["canonical"],
                "canonical": job.canonical,
                "final": final,
            },
        )
        self.ledger.reverse_receipt(job.job_id, audit["worker"])

    @staticmethod
    def final(job: OriginJob, now_ms: int) -> bool | None:
        """Whether ``job``'s result is final at ``now_ms``: None while the job
        has no accepted result (not ``succeeded``: also while an audit re-runs
        it); False while a result accepted unreplicated is within its hold
        (``provisional_until_ms``, specs/CREDITS.md §4.2); True otherwise."""
        if job.state != "succeeded" or job.verdict is None:
            return None
        until = job.verdict.get("provisional_until_ms")
        return until is None or now_ms >= until

    @staticmethod
    def _exact(job: OriginJob) -> bool:
        """The job's outputs agree only when their digests are equal (no tolerance, no checker)."""
        return job.spec.tolerance is None and job.spec.checker_image is None

    @staticmethod
    def _class_of(run: Run) -> str:
        """The determinism class of a run: the one its result states, else its bid's."""
        stated = run.result.get("det_class") if run.result else None
        return stated or run.det_class

    def _comparable(self, job: OriginJob, a: Run, b: Run) -> bool:
        """Whether a disagreement between ``a`` and ``b`` is evidence: always
        for a job with a tolerance or checker; for an exact-hash job only
        within one determinism class (or when either class is unknown)."""
        if not self._exact(job):
            return True
        ca, cb = self._class_of(a), self._class_of(b)
        return not ca or not cb or ca == cb

    def _run_classes(self, job: OriginJob) -> set[str]:
        """The known determinism classes of an exact-hash job's runs that are
        live or have a successful result (empty for other jobs)."""
        if not self._exact(job):
            return set()
        return {
            c
            for r in job.runs.values()
            if r.state in RUN_LIVE
            or (r.result is not None and r.result.get("status") == "succeeded")
            if (c := self._class_of(r))
        }

    def _second_opinion_wanted(self, job: OriginJob, run: Run) -> bool:
        """An unverified result from a worker other than the one the replication
        decision was made for (the first award; later ones are re-offers) gets
        its own decision, so a retry cannot slip an untrusted result through."""
        if job.needed != 1 or job.spec.replicas is not None or not job.runs:
            return False
        if job.runs[min(job.runs)].worker == run.worker:
            return False
        others = [
            e
            for e in self.ctx.peers.alive(self.ctx.now_ms)
            if e.peer_id != run.worker
            and e.peer_id not in job.excluded
            and not self.ctx.trust.banned(e.peer_id, self.ctx.now_ms)
        ]
        return bool(others) and self.ctx.trust.should_replicate(run.worker, self.ctx.rng)

    # ------------------------------------------------------------ state

    def _finish(self, job: OriginJob, state: str, reason: str) -> None:
        if state == "failed" and job.job_faults:
            # The submitter pays for the runs its job failed on (at most
            # ``job_fault_runs``); other failed runs are not paid.
            job.cost_actual += self.ledger.charge_failed(
                job, [job.runs[k] for k in job.job_faults if k in job.runs]
            )
        job.reason = reason
        self._set_open(job, False)
        self.holding_jobs.discard(job.job_id)
        self.admission.pop(job.job_id, None)
        for r in job.runs.values():
            if r.state == "awarding":  # its acknowledgement, if any, is answered with a cancel
                self._set_run_state(job, r, "refused")
        self._set_state(job, state, reason)
        self.ctx.append(
            "job_finished",
            {
                "job_id": job.job_id,
                "state": state,
                "reason": reason,
                "canonical": job.canonical,
                "cost": job.cost_actual,
            },
            key=b"finish:" + job.job_id.encode() + b":" + str(len(job.history)).encode(),
        )
        self._admit()

    def _derive_state(self, job: OriginJob) -> None:
        """The user-visible state follows from the runs and the open offer."""
        if job.state in TERMINAL:
            return
        live = [r for r in job.runs.values() if r.state in RUN_LIVE]
        has_result = any(
            r.state == "done" and r.result and r.result.get("status") == "succeeded"
            for r in job.runs.values()
        )
        if has_result:
            new = "verifying"
        elif any(r.started for r in live):
            new = "running"
        elif live:
            new = "awarded"
        elif job.offer_open:
            new = "offered"
        else:
            new = "queued"
        self._set_state(job, new, "")

    def _set_state(self, job: OriginJob, new: str, detail: str) -> None:
        if new == job.state:
            return
        check_transition(job.state, new)
        old, job.state, job.updated_ms = job.state, new, self.ctx.now_ms
        job.history.append((self.ctx.now_ms, new, detail))
        self.ctx.append(
            "job_state",
            {
                "job_id": job.job_id,
                "from": old,
                "to": new,
                "detail": detail,
                "ts_ms": self.ctx.now_ms,
            },
        )

    def _evict_jobs(self) -> None:
        if len(self.jobs) < self.ctx.params.max_jobs_tracked:
            return
        done = sorted(
            (j for j in self.jobs.values() if j.state in TERMINAL), key=lambda j: j.updated_ms
        )
        for j in done[: max(1, len(done) // 10)]:
            del self.jobs[j.job_id]

    # ------------------------------------------------------------ restore

    def restore_record(self, kind: str, body: dict[str, Any], ts_ms: int | None = None) -> None:
        """Take one of our own log records (oldest first) into account after a
        restart. A job's history keeps its original times: the time the record
        carries in its body, else ``ts_ms`` (when the record was written), else now."""
        jid: str = body.get("job_id", "")
        t = body.get("ts_ms", self.ctx.now_ms if ts_ms is None else ts_ms)
        if kind == "job_submitted":
            spec = parse_job_spec(body["spec"])
            self.jobs[jid] = OriginJob(jid, spec, t, updated_ms=t)
            self.jobs[jid].history.append((t, "queued", "submitted"))
            self.jobs[jid].cost_estimate = body.get("estimate")
            self.jobs[jid].estimate_basis = body.get("estimate_basis", "")
            self.jobs[jid].queue_timeout_ms = body.get("queue_timeout_ms")
            if spec.replicas is not None:
                self.jobs[jid].needed, self.jobs[jid].replicate_decided = (
                    min(spec.replicas, 2),
                    True,
                )
            return
        job = self.jobs.get(jid) if jid else None
        if job is None:
            return
        if kind == "job_offered":
            job.attempt = body["attempt"]
        elif kind == "job_bids":
            job.logged_bids = list(body["bids"])
        elif kind == "run_awarded":
            job.runs[(body["attempt"], body["replica"])] = Run(
                body["attempt"],
                body["replica"],
                body["worker"],
                body["price"],
                body.get("score", 0.0),
                det_class=body.get("det_class", ""),
            )
            job.next_replica = max(job.next_replica, body["replica"] + 1)
            if not job.replicate_decided:
                job.replicate_decided, job.needed = True, 1
        elif kind in ("run_accepted", "run_started"):
            run = job.runs.get((body["attempt"], body["replica"]))
            if run is not None:
                run.state = "active"
                run.started = run.started or kind == "run_started"
        elif kind in ("run_refused", "run_failed"):
            run = job.runs.get((body["attempt"], body["replica"]))
            if run is not None:
                run.state = (
                    "refused"
                    if kind == "run_refused"
                    else ("failed" if run.state != "done" else "done")
                )
            if kind == "run_failed":
                job.failures += 1
                job.last_failure = body["reason"]
                if body.get("worker"):
                    job.excluded.add(body["worker"])
                if body.get("fault") == "job":
                    job.job_faults.append((body["attempt"], body["replica"]))
        elif kind == "run_result":
            run = job.runs.get((body["attempt"], body["replica"]))
            if run is not None:
                run.state = "done"
                run.result = {k: v for k, v in body.items() if k not in ("job_id", "worker")}
                if body.get("status") == "succeeded":
                    self.work_history.learn(
                        job.spec.image, body.get("duration_ms", 0) / 1000 * run.score_gflops
                    )
        elif kind == "run_output":
            run = job.runs.get((body["attempt"], body["replica"]))
            if run is not None:
                run.fetched = True
        elif kind == "job_verdict":
            job.canonical, job.manifest = body["canonical"], None
            job.verdict = {
                k: body[k] for k in ("replicas", "needed", "verdict", "valid", "invalid")
            }
            job.verdict["other_class"] = body.get("other_class", [])
            job.verdict["run_by_origin"] = body.get("run_by_origin", False)
            if body.get("provisional_until_ms") is not None:
                job.verdict["provisional_until_ms"] = body["provisional_until_ms"]
            job.audit = None
            if body["verdict"] == "unverified":
                for w in body["valid"]:
                    if w != self.ctx.peer_id:
                        self.audits.note(w, jid, t)
        elif kind == "job_state":
            job.state, job.updated_ms = body["to"], t
            job.history.append((t, body["to"], body.get("detail", "")))
        elif kind == "job_finished":
            job.state, job.reason, job.cost_actual, job.updated_ms = (
                body["state"],
                body["reason"],
                body.get("cost", 0.0),
                t,
            )
        elif kind == "job_retried":
            job.failures, job.excluded, job.job_faults = 0, set(), []
        elif kind == "result_manifest":
            if body.get("canonical") == job.canonical:
                job.manifest = body.get("manifest")
        elif kind == "job_audit":
            self._reopen_for_audit(job, body)
        elif kind == "job_retracted" and job.verdict is not None:
            job.verdict["retracted"] = body["retracted"]
            job.verdict["retracted_final"] = body.get("final", True)

    def resume(self) -> None:
        """After a restart: renew leases (workers get a fresh lease) and resume offering."""
        for job in self.jobs.values():
            if job.state in TERMINAL:
                continue
            self._set_open(job, False)
            for run in job.runs.values():
                self._fetch_log(job, run)  # the shell skips a log it has
                if run.state in RUN_LIVE:
                    run.state = "active"
                    run.deadline_ms = run.lease_base_ms = self.ctx.now_ms + self.ctx.params.lease_ms
                    self.ctx.at(run.deadline_ms, T_LEASE, (job.job_id, run.attempt, run.replica))
                elif run.state == "done" and run.result and not run.fetched:
                    if run.result.get("status") == "succeeded" and run.result.get("output_digest"):
                        self.ctx.emit(
                            FetchBlob(
                                job.job_id,
                                run.attempt,
                                run.replica,
                                run.worker,
                                run.result["output_digest"],
                            )
                        )
            self.ctx.append("job_resumed", {"job_id": job.job_id, "state": job.state})
            self._advance(job)


FAILURE_WORDS = {
    "failed": "failed",
    "timeout": "hit its timeout",
    "oom": "ran out of memory",
    "output_limit": "wrote more output than allowed",
    "error": "failed on the worker",
    "cancelled": "was cancelled by the worker",
}


def failure_text(status: str, exit_code: int | None, reason: str) -> str:
    """One phrase for a failed run that names its cause once: the worker's
    reason, with the status's words, and the exit code of a ``failed`` run
    only when the reason does not say it already (``exit code 3``, not
    ``exit code 3: exit code 3``; a run killed at its timeout or memory
    limit is named by that, not by the kill's exit code)."""
    words = FAILURE_WORDS.get(status, status)
    text = reason.strip()
    if status == "failed" and exit_code not in (None, 0) and f"exit code {exit_code}" not in text:
        text = f"exit code {exit_code}" + (f": {text}" if text else "")
    if not text:
        return words
    if status == "failed":
        return text
    return f"{words}: {text}"


def summarize_declines(job: OriginJob) -> str:
    if not job.declines:
        return "no peer answered"
    counts: dict[str, int] = {}
    for _, reason in job.declines:
        counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(f"{n}× {r}" for r, n in sorted(counts.items(), key=lambda x: -x[1]))


def bid_view(peer: str, b: Bid, ts_ms: int | None) -> dict[str, Any]:
    """One bid as ``GET /v1/jobs/{id}`` shows it and ``job_bids`` records it."""
    return {
        "peer_id": peer,
        "price": b.price,
        "est_finish_s": (b.est_start_ms + b.est_duration_ms) / 1000,
        "score": b.score_gflops,
        "queue": b.queued,
        "gpu": [g.model for g in b.gpus],
        "ts_ms": ts_ms,
    }


def job_view(job: OriginJob, now_ms: int | None = None) -> dict[str, Any]:
    """The JSON shape of ``GET /v1/jobs/{id}``; ``final`` is judged at
    ``now_ms`` (None: not judged, null in the view)."""
    runs = sorted(job.runs.values(), key=lambda r: (r.attempt, r.replica))
    result = None
    for r in runs:
        if r.result and (job.canonical is None or r.result.get("output_digest") == job.canonical):
            result = {
                "exit_code": r.result.get("exit_code"),
                "status": r.result.get("status"),
                "output_digest": r.result.get("output_digest"),
                "duration_s": r.result.get("duration_ms", 0) / 1000,
                "worker": r.worker,
                "reason": r.result.get("reason", ""),
            }
    return {
        "job_id": job.job_id,
        "state": job.state,
        "reason": job.reason,
        "spec": job.spec.model_dump(mode="json"),
        "submitted_at": job.submitted_ms,
        "updated_at": job.updated_ms,
        "history": [{"ts_ms": t, "state": s, "detail": d} for t, s, d in job.history],
        "bids": [bid_view(p, b, job.bid_ms.get(p)) for p, b in job.bids.items()]
        if job.bids
        else job.logged_bids,
        "declines": [{"peer_id": p, "reason": r} for p, r in job.declines],
        "awards": [
            {"peer_id": r.worker, "attempt": r.attempt, "replica": r.replica, "state": r.state}
            for r in runs
        ],
        "worker": next((r.worker for r in reversed(runs) if r.state in ("active", "done")), None),
        "result": result if job.state in TERMINAL or result else None,
        "cost": {
            "estimate": job.cost_estimate,
            "basis": job.estimate_basis,
            "actual": job.cost_actual,
            "budget": job.spec.max_budget,
        },
        "verification": job.verdict,
        "provisional_until_ms": (job.verdict or {}).get("provisional_until_ms")
        if job.state == "succeeded"
        else None,
        "final": None if now_ms is None else Origin.final(job, now_ms),
        "manifest": job.manifest,
        "attempts": job.attempt,
        "failures": job.failures,
    }


_ = (CancelRequested, RetryRequested)
