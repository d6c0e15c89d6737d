"""Live job logs for `mesh logs`: a bounded buffer of output chunks per job.

The origin's core emits ``JobLog`` with the output a worker reported for one
of its jobs; :class:`JobLogs` keeps the latest ``job_log_lines`` chunks of
each job, stamped with the wall clock (they are shown to a person), and wakes
whoever follows the job (``JobLogBuffer.changed``). At most ``max_jobs`` jobs
are kept; the oldest job's buffer goes first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio


@dataclass
class JobLogBuffer:
    chunks: deque[tuple[int, bytes]]
    """(wall ms, bytes), oldest first."""
    changed: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) whenever a chunk arrives."""


class JobLogs:
    """The buffers of the jobs whose output arrived here."""

    def __init__(self, lines: int, wall_ms: Callable[[], int], max_jobs: int) -> None:
        self.lines = lines
        self.max_jobs = max_jobs
        self._wall_ms = wall_ms
        self._buffers: dict[str, JobLogBuffer] = {}

    def add(self, job_id: str, data: bytes) -> None:
        """Keep one chunk of ``job_id``'s output and wake its followers."""
        buf = self._buffers.get(job_id)
        if buf is None:
            if len(self._buffers) >= self.max_jobs:
                self._buffers.pop(next(iter(self._buffers)))
            buf = self._buffers[job_id] = JobLogBuffer(deque(maxlen=self.lines))
        buf.chunks.append((self._wall_ms(), data))
        buf.changed.set()
        buf.changed = trio.Event()

    def get(self, job_id: str) -> JobLogBuffer | None:
        return self._buffers.get(job_id)
