"""Audit on conviction: which accepted results to re-verify when a worker is convicted.

Theory of operation
-------------------
A result accepted unreplicated (``completed``: the spot-check floor did not
pick it) may be a lie that got through. The origin notes each such result
here (:meth:`AuditBook.note`). When one of its own verdicts convicts the
worker (trust.py, one-strike), :meth:`AuditBook.take` hands back the
worker's noted results accepted within ``audit_window_ms`` before the
conviction; the origin re-runs each on other workers and retracts the ones a
majority proves wrong (origin.py ``_audit``, specs/CREDITS.md §4.1).

With the floor ``f`` a patient liar gets ``(1−f)/f`` lies accepted before it
is caught (9 at 10%); the audit turns those into *accepted then retracted*,
and what stands at the end is only what the liars not yet caught hold. A
result accepted unreplicated is *provisional* for ``result_hold_ms``
(origin.py ``final``, specs/CREDITS.md §4.2): an audit that starts within
the hold re-runs the job before the result was ever final.

Bounds: ``audit_max_per_worker`` results per worker (oldest dropped first),
``audit_max_workers`` workers (the one whose newest note is oldest is
forgotten first). Pure and deterministic: the simulator
(simulations/spotcheck.py) drives the same object.
"""

from __future__ import annotations

from collections import deque

from .params import CoreParams


class AuditBook:
    """Per worker, the jobs whose result this origin accepted unreplicated."""

    def __init__(self, params: CoreParams) -> None:
        self.params = params
        self._by_worker: dict[str, deque[tuple[int, str]]] = {}

    def note(self, worker: str, job_id: str, now_ms: int) -> None:
        """``worker``'s result for ``job_id`` was accepted without a replica."""
        p = self.params
        notes = self._by_worker.pop(worker, None)
        if notes is None:
            if len(self._by_worker) >= p.audit_max_workers:
                self._by_worker.pop(next(iter(self._by_worker)))
            notes = deque(maxlen=p.audit_max_per_worker)
        notes.append((now_ms, job_id))
        self._by_worker[worker] = notes  # re-inserted: dict order is by newest note

    def take(self, worker: str, now_ms: int) -> list[str]:
        """The jobs to audit now that ``worker`` is convicted (oldest first),
        forgetting them all: a job is audited at most once per conviction."""
        notes = self._by_worker.pop(worker, None)
        if not notes:
            return []
        since = now_ms - self.params.audit_window_ms
        return [job_id for ms, job_id in notes if ms >= since]

    def noted(self, worker: str) -> int:
        return len(self._by_worker.get(worker, ()))
