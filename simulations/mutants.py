"""Deliberately broken cores, to show the invariants catch real bugs.

Selected with ``--mutant NAME`` so a failing run's replay command is complete.
"""

from __future__ import annotations

from typing import Any

from meshd.core.inbox import InboxParams
from meshd.core.node import Node
from meshd.core.origin import Origin
from meshd.core.worker import Worker


class _NeverStartsWorker(Worker):
    def _start_queued(self) -> None:
        self.work_queue.clear()


class DropQueuedWork(Node):
    """Worker bug: an accepted award is queued but never started (it keeps
    heartbeating "queued", so the origin never re-offers): the job is lost."""

    worker_class = _NeverStartsWorker


class _CredulousOrigin(Origin):
    def _same(self, job: Any, a: str, b: str) -> bool | None:
        return True


class EveryResultAgrees(Node):
    """Origin bug: the replica comparison says every pair of digests agrees, so
    a liar's digest can become the canonical result of a replicated job."""

    origin_class = _CredulousOrigin


UNBOUNDED = 1 << 40


class _ImpatientOrigin(Origin):
    def _revive(self, job: Any, run: Any) -> bool:
        return False  # an acknowledgement (or heartbeat) after the time-out is not honoured

    def _run_refused(self, job: Any, run: Any, reason: str, *, backoff: bool = False) -> None:
        super()._run_refused(job, run, reason)  # re-offered at once, no back-off


class NoOverloadBounds(Node):
    """The burst fix removed (issue "A burst of jobs livelocks the origin"): an
    unbounded inbox that never sheds, so a reply waits behind everything queued
    before it (the engine reads ``sim_inbox_params``), and, on a core that has
    them, no bound on open offer rounds or unacknowledged awards and a fixed
    award time-out (``sim_param_overrides``, applied to the fields that exist),
    bids queued with award replies in one lane, a worker that never declines
    as busy, time-outs that ignore the node's own
    inbox wait, the old 2 s bid-window ceiling, and late acknowledgements not
    honoured (the run is withdrawn and the job placed again)."""

    sim_inbox_params = InboxParams(
        local_max=UNBOUNDED,
        direct_max=UNBOUNDED,
        bid_max=UNBOUNDED,
        gossip_max=UNBOUNDED,
        shed_after_ms=UNBOUNDED,
    )
    sim_bid_lane = False
    """Bids share the DIRECT lane with award replies, heartbeats and results."""
    sim_param_overrides: dict[str, int] = {
        "max_offers_in_flight": UNBOUNDED,
        "max_awards_in_flight": UNBOUNDED,
        "award_ack_timeout_min_ms": 5_000,
        "award_ack_timeout_max_ms": 5_000,
        "worker_busy_wait_ms": UNBOUNDED,
        "bid_window_max_ms": 2_000,
    }

    origin_class = _ImpatientOrigin

    def _on_inbox_load(self, inp: Any) -> None:
        pass  # time-outs do not allow for our own inbox's wait; never busy


MUTANTS: dict[str, type[Node]] = {
    "drop_queued_work": DropQueuedWork,
    "every_result_agrees": EveryResultAgrees,
    "no_overload_bounds": NoOverloadBounds,
}
