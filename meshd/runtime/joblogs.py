"""Job output for `mesh logs`: each run's stored log, and its live output until then.

Theory of operation
-------------------
A run's output is two byte streams, ``stdout`` and ``stderr``, each
addressed by byte offset from 0 (specs/JOB.md §6). Every chunk the executor
reads is stamped with the wall clock when it was read.

- **Worker side.** :class:`RunLog` collects the chunks of one run as the
  executor hands them over (``Executions.execute``); each also goes to the
  core as ``ExecutionProgress`` (stream, offset, stamp) for the live path.
  When the run ends, :meth:`RunLog.to_blob` is stored in the blob store and
  its digest reported in the ``Result`` (``log_digest``): the run's stored
  log, everything the executor forwarded (up to the log cap), apart, in
  order, stamped.
- **Live path.** Heartbeats carry the chunks (``LogChunk``); the origin's
  core emits them as ``JobLog``, and :class:`JobLogs` keeps them per run and
  stream (:class:`StreamText`), contiguous from the first offset it saw. A
  chunk that would leave a hole (the worker dropped live output it had no
  room for) marks the stream *gapped*: its rest is shown from the stored
  log, never out of order. At most ``job_log_live_bytes`` per stream (older
  bytes go first) and ``job_log_live_total_bytes`` in all (the oldest job's
  buffers go first).
- **Stored path.** The origin's core emits ``FetchLog`` when a result names a
  log; the daemon fetches it into its blob store (:meth:`.transfer.BlobTransfer.fetch_log`)
  and calls :meth:`JobLogs.stored`, which drops the run's live buffers and
  wakes followers. After a restart the core asks again for the logs of its
  unfinished jobs; the daemon fetches those of finished jobs (within
  ``log_retention_s``) that are not in the store (``NodeView.missing_logs``). Stored logs survive restarts (they are blobs; the digest is
  in the ``run_result`` record) and are collected like other blobs of a
  finished job, after ``log_retention_s`` (:mod:`.diskgc`).
- **Reading.** :func:`follow_logs` turns both into line records for the API:
  per stream it keeps the offset shown so far, takes the stored log when it is
  there and the live buffer otherwise, and merges the streams of all
  selected runs by time (each stream's own order is kept). A run that has
  finished and names a stored log not here yet is waited for, up to
  ``log_fetch_wait_s``; after that what the live path had is shown.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import trio

from meshd.core.lifecycle import TERMINAL
from meshd.core.wire import LogChunk

STREAMS = ("stdout", "stderr")
RUN_LOG_VERSION = 1
"""The stored log's format version (specs/JOB.md §6)."""

NO_OUTPUT_POLL_S = 0.1
"""How often a followed job with no output yet is looked at again (its live
buffer appears with the first chunk; until then there is no event to wait on)."""


@dataclass
class StreamText:
    """One stream of one run: bytes from offset ``base`` on, and when each part was read."""

    base: int = 0
    data: bytearray = field(default_factory=bytearray)
    marks: list[tuple[int, int]] = field(default_factory=list)
    """(offset, wall ms) where each chunk began, offsets increasing."""
    gapped: bool = False
    """Live output went missing: what follows is shown from the stored log."""

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def add(self, offset: int, ts_ms: int, chunk: bytes) -> int:
        """Append the part of ``chunk`` (at ``offset``) beyond what is here;
        returns the bytes added. A chunk past the end marks the stream gapped."""
        if self.gapped:
            return 0
        if not self.data and not self.marks:
            self.base = offset
        if offset > self.end:
            self.gapped = True
            return 0
        new = chunk[self.end - offset :]
        if not new:
            return 0
        self.marks.append((self.end, ts_ms))
        self.data += new
        return len(new)

    def trim(self, keep: int) -> int:
        """Keep only the last ``keep`` bytes; returns the bytes dropped."""
        drop = len(self.data) - keep
        if drop <= 0:
            return 0
        del self.data[:drop]
        self.base += drop
        i = bisect.bisect_right(self.marks, (self.base, 2**63)) - 1
        if i > 0:
            del self.marks[:i]
        return drop

    def ts_at(self, offset: int) -> int:
        i = bisect.bisect_right(self.marks, (offset, 2**63)) - 1
        return self.marks[max(i, 0)][1] if self.marks else 0

    def lines(self, start: int, final: bool) -> tuple[list[tuple[int, str]], int]:
        """The complete lines from offset ``start`` (and, when ``final``, a last
        unterminated one), each ``(wall ms, text)``, and the offset after them.
        Nothing when ``start`` is before what is kept."""
        if start < self.base:
            return [], start
        out: list[tuple[int, str]] = []
        pos = start
        buf = self.data
        while True:
            nl = buf.find(b"\n", pos - self.base)
            if nl < 0:
                break
            out.append((self.ts_at(pos), buf[pos - self.base : nl].decode("utf-8", "replace")))
            pos = self.base + nl + 1
        if final and pos < self.end:
            out.append((self.ts_at(pos), buf[pos - self.base :].decode("utf-8", "replace")))
            pos = self.end
        return out, pos


class RunLog:
    """The stored log of one run, built on the worker as the executor reads output."""

    def __init__(self) -> None:
        self.chunks: list[tuple[str, int, int, bytes]] = []
        """(stream, offset, wall ms, bytes) in the order they were read."""
        self._ends = dict.fromkeys(STREAMS, 0)

    def add(self, stream: str, ts_ms: int, data: bytes) -> int:
        """Keep one chunk; returns its offset in its stream."""
        offset = self._ends[stream]
        self.chunks.append((stream, offset, ts_ms, bytes(data)))
        self._ends[stream] = offset + len(data)
        return offset

    def to_blob(self) -> bytes:
        """The stored form: msgpack ``{"v": 1, "chunks": [[stream, offset, ts_ms, data], ...]}``."""
        return msgpack.packb(
            {"v": RUN_LOG_VERSION, "chunks": [list(c) for c in self.chunks]}, use_bin_type=True
        )


def decode_run_log(blob: bytes) -> dict[str, StreamText] | None:
    """A stored log's streams, or None when it is not one (a peer's bad blob never raises)."""
    try:
        doc = msgpack.unpackb(blob, raw=False, strict_map_key=True)
    except Exception:
        return None
    if not isinstance(doc, dict) or doc.get("v") != RUN_LOG_VERSION:
        return None
    chunks = doc.get("chunks")
    if not isinstance(chunks, list):
        return None
    streams = {s: StreamText() for s in STREAMS}
    for c in chunks:
        if not (isinstance(c, list) and len(c) == 4):
            return None
        stream, offset, ts, data = c
        st = streams.get(stream) if isinstance(stream, str) else None
        if (
            st is None
            or not isinstance(offset, int)
            or not isinstance(ts, int)
            or not isinstance(data, bytes)
            or offset != st.end
        ):
            return None
        st.add(offset, ts, data)
    return streams


@dataclass
class JobLogBuffer:
    """Live output of one job's runs, and the event that wakes its followers."""

    runs: dict[tuple[int, int], dict[str, StreamText]] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)
    """Set (and replaced) whenever output or a stored log arrives."""

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class JobLogs:
    """The live output of the jobs we originated, bounded."""

    def __init__(self, *, stream_bytes: int, total_bytes: int, max_jobs: int) -> None:
        self.stream_bytes = stream_bytes
        self.total_bytes = total_bytes
        self.max_jobs = max_jobs
        self.bytes = 0
        self._buffers: dict[str, JobLogBuffer] = {}

    def buffer(self, job_id: str) -> JobLogBuffer:
        """The job's buffer (made, and the oldest job's evicted, when new)."""
        buf = self._buffers.get(job_id)
        if buf is None:
            while len(self._buffers) >= self.max_jobs:
                self._evict_oldest()
            buf = self._buffers[job_id] = JobLogBuffer()
        return buf

    def get(self, job_id: str) -> JobLogBuffer | None:
        return self._buffers.get(job_id)

    def add(self, job_id: str, attempt: int, replica: int, chunks: Iterable[LogChunk]) -> None:
        """Keep a run's live chunks (``JobLog``) and wake the job's followers."""
        buf = self.buffer(job_id)
        streams = buf.runs.setdefault((attempt, replica), {s: StreamText() for s in STREAMS})
        for c in chunks:
            st = streams[c.stream]
            self.bytes += st.add(c.offset, c.ts_ms, c.data)
            self.bytes -= st.trim(self.stream_bytes)
        while self.bytes > self.total_bytes and len(self._buffers) > 1:
            self._evict_oldest()
        buf.wake()

    def stored(self, job_id: str, attempt: int, replica: int) -> None:
        """A run's stored log arrived: its live buffers are no longer needed."""
        buf = self._buffers.get(job_id)
        if buf is None:
            return
        streams = buf.runs.pop((attempt, replica), None)
        if streams:
            self.bytes -= sum(len(s.data) for s in streams.values())
        buf.wake()

    def _evict_oldest(self) -> None:
        old = self._buffers.pop(next(iter(self._buffers)))
        self.bytes -= sum(len(s.data) for r in old.runs.values() for s in r.values())
        old.wake()


# ------------------------------------------------------------ reading


@dataclass(frozen=True)
class RunRef:
    """What the reader needs to know of one run of a job."""

    attempt: int
    replica: int
    finished: bool
    """The origin has the run's result."""
    log_digest: str | None
    """The stored log the result names (None: none)."""


class LogSource(Protocol):
    """What :func:`follow_logs` reads (the daemon's read-only view)."""

    def job_state(self, job_id: str) -> str | None: ...

    def job_runs(self, job_id: str) -> list[RunRef]: ...

    def job_log(self, job_id: str) -> JobLogBuffer | None: ...

    def stored_log(self, digest: str) -> bytes | None: ...


@dataclass(frozen=True)
class LogQuery:
    """``GET /v1/jobs/{id}/logs``'s options (mesh_cli/CLI.md)."""

    follow: bool = False
    replica: int | None = None
    tail: int | None = None
    """Only the last this many lines of what is there when asked."""
    since_ms: int | None = None
    """Only lines read at or after this wall time."""
    fetch_wait_s: float = 10.0
    """How long a finished run's stored log is waited for before the live output stands in."""


async def follow_logs(
    src: LogSource,
    job_id: str,
    q: LogQuery,
    *,
    monotonic_s: Callable[[], float] = trio.current_time,
) -> AsyncIterator[dict[str, Any]]:
    """Line records ``{ts_ms, attempt, replica, stream, data}``, merged by
    time across streams and runs, then ``{"end": true, "state": ...,
    "incomplete": [...]}`` (runs whose stored log did not arrive)."""
    pos: dict[tuple[int, int, str], int] = {}
    waiting_since: dict[tuple[int, int], float] = {}
    gave_up: set[int] = set()
    decoded: dict[str, dict[str, StreamText]] = {}
    first = True
    while True:
        state = src.job_state(job_id) or "unknown"
        done = state in TERMINAL or state == "unknown"
        now = monotonic_s()
        batches: list[list[tuple[int, int, int, int, str, str]]] = []
        waiting: list[RunRef] = []
        live = src.job_log(job_id)
        for ref in src.job_runs(job_id):
            if q.replica is not None and ref.replica != q.replica:
                continue
            streams, final = _streams_of(src, ref, live, decoded)
            if ref.finished and ref.log_digest and not final:
                since = waiting_since.setdefault((ref.attempt, ref.replica), now)
                if now - since < q.fetch_wait_s:
                    waiting.append(ref)
                    continue  # hold this run back until its stored log is here
                final = True  # it did not come: the live output stands in
                gave_up.add(ref.replica)
            if streams is None:
                continue
            for order, name in enumerate(STREAMS):
                key = (ref.attempt, ref.replica, name)
                lines, pos[key] = streams[name].lines(pos.get(key, 0), final)
                batches.append(
                    [(ts, ref.attempt, ref.replica, order, name, text) for ts, text in lines]
                )
        merged = list(heapq.merge(*batches, key=lambda r: r[0]))
        if q.since_ms is not None:
            merged = [r for r in merged if r[0] >= q.since_ms]
        if first and q.tail is not None:
            merged = merged[-q.tail :] if q.tail > 0 else []
        first = False
        for ts, attempt, replica, _, name, text in merged:
            yield {
                "ts_ms": ts,
                "attempt": attempt,
                "replica": replica,
                "stream": name,
                "data": text,
            }
        if (done or not q.follow) and not waiting:
            yield {"end": True, "state": state, "incomplete": sorted(gave_up)}
            return
        timeout = max(0.05, q.fetch_wait_s / 20) if waiting else 1.0
        with trio.move_on_after(timeout):
            buf = src.job_log(job_id)
            if buf is not None:
                await buf.changed.wait()
            else:
                # no output has come yet, so there is nothing to wait on: look
                # again soon, so a job's first line is not held back a second
                await trio.sleep(min(timeout, NO_OUTPUT_POLL_S))


def _streams_of(
    src: LogSource,
    ref: RunRef,
    live: JobLogBuffer | None,
    decoded: dict[str, dict[str, StreamText]],
) -> tuple[dict[str, StreamText] | None, bool]:
    """A run's streams and whether they are final: its stored log when here
    (decoded once per reader, into ``decoded``), else the live buffer (final
    when the run finished and names no stored log)."""
    if ref.log_digest:
        if ref.log_digest not in decoded:
            blob = src.stored_log(ref.log_digest)
            stored = decode_run_log(blob) if blob is not None else None
            if stored is not None:
                decoded[ref.log_digest] = stored
        if ref.log_digest in decoded:
            return decoded[ref.log_digest], True
    streams = live.runs.get((ref.attempt, ref.replica)) if live else None
    final = ref.finished and not ref.log_digest
    if streams is None:
        return ({s: StreamText() for s in STREAMS} if final else None), final
    return streams, final
