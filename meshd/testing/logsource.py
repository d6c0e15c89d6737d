"""An in-memory :class:`meshd.runtime.joblogs.LogSource`: one job's state, its
runs, real :class:`~meshd.runtime.joblogs.JobLogs` live buffers and a dict of
stored logs, for tests of the `mesh logs` reader without a daemon."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.runtime.joblogs import JobLogBuffer, JobLogs, RunRef


@dataclass
class MemoryLogSource:
    state: str = "running"
    runs: list[RunRef] = field(default_factory=list)
    live: JobLogs = field(
        default_factory=lambda: JobLogs(stream_bytes=1 << 20, total_bytes=1 << 24, max_jobs=16)
    )
    blobs: dict[str, bytes] = field(default_factory=dict)

    def job_state(self, job_id: str) -> str | None:
        return self.state

    def job_runs(self, job_id: str) -> list[RunRef]:
        return list(self.runs)

    def job_log(self, job_id: str) -> JobLogBuffer | None:
        return self.live.get(job_id)

    def stored_log(self, digest: str) -> bytes | None:
        return self.blobs.get(digest)
