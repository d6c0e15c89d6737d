"""Deliberately broken cores, to show the invariants catch real bugs.

Selected with ``--mutant NAME`` so a failing run's replay command is complete.
"""

from __future__ import annotations

from typing import Any

from meshd.core.node import Node


class DropQueuedWork(Node):
    """Worker bug: an accepted award is queued but never started (it keeps
    heartbeating "queued", so the origin never re-offers): the job is lost."""

    def _start_queued(self) -> None:
        self.work_queue.clear()


class EveryResultAgrees(Node):
    """Origin bug: the replica comparison says every pair of digests agrees, so
    a liar's digest can become the canonical result of a replicated job."""

    def _same(self, job: Any, a: str, b: str) -> bool | None:
        return True


MUTANTS: dict[str, type[Node]] = {
    "drop_queued_work": DropQueuedWork,
    "every_result_agrees": EveryResultAgrees,
}
