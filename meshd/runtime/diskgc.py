"""Bounded disk: the blob collector and the sweep of orphaned run directories.

Theory of operation
-------------------
The blob store only counts, lists and deletes; what may go is decided here,
from references the node's state holds, read through the read-only
:class:`~.view.NodeView` (``NodeView.blob_references``), never from the core
directly. Two tiers of reference:

- **pinned** — never collected: the inputs of jobs we originated that are
  not finished, the outputs of their runs (still to be compared or
  accepted), the inputs of runs we hold that are live, and the outputs we
  made whose result the origin has not acknowledged yet;
- **retained** — kept for ``blob_retention_s`` while the store is under its
  cap: the inputs and outputs of finished jobs we originated (counted from
  when the job finished) and the outputs we made for an acknowledged result
  (counted from the acknowledgement; the origin may still be fetching); the
  stored run logs of those jobs and results the same way, for
  ``log_retention_s``. Over the cap, retained logs go like any other
  retained blob, oldest first.

A blob written less than ``blob_grace_s`` ago is never collected (an upload
whose job is not submitted yet, an output packed but not yet reported).

One pass (:meth:`DiskGC.collect`, every ``blob_gc_interval_s`` and at once
when an upload finds the store full) removes the unreferenced blobs, oldest
first; if the store is still over ``blob_store_max_bytes`` (less the size of
the upload waiting for room) it removes retained blobs, oldest first, until
it is under. A pass removes at most
``blob_gc_max_deletes`` blobs (bounded work); listing the store is one
``stat`` per blob, in a worker thread. Pinned blobs are never removed, so the
store can stay over its cap; uploads are then refused by the store
(``BlobStoreFullError``) while the protocol's own writes go through.

At start, before the network is up, :meth:`DiskGC.sweep_run_dirs` removes
every directory under the data dir's ``work/`` that is not the run dir of a
run live in the restored core state (a killed daemon's runs died with it;
their directories would otherwise stay forever), and counts them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshd.store.blobs import BlobEntry, BlobStore

from .params import RuntimeParams

log = logging.getLogger("meshd.diskgc")


@dataclass(frozen=True)
class BlobRefs:
    """The blobs the node's state references (bare hex digests)."""

    pinned: frozenset[str]
    """Never collected."""
    retained: frozenset[str]
    """Kept while the store is under its cap."""
    logs: frozenset[str] = frozenset()
    """The referenced blobs that are run logs (pinned or retained), for ``status``."""


def plan_collection(
    entries: Iterable[BlobEntry],
    refs: BlobRefs,
    *,
    now_wall_ms: int,
    grace_ms: int,
    max_total_bytes: int,
    max_deletes: int,
) -> list[BlobEntry]:
    """The blobs one pass removes, in order: unreferenced ones oldest first,
    then, while the store would still be over ``max_total_bytes``, retained
    ones oldest first; never a pinned one or one younger than ``grace_ms``;
    at most ``max_deletes``."""
    listed = list(entries)
    total = sum(e.size for e in listed)
    old = sorted(
        (e for e in listed if e.digest not in refs.pinned and now_wall_ms - e.mtime_ms >= grace_ms),
        key=lambda e: (e.mtime_ms, e.digest),
    )
    chosen = [e for e in old if e.digest not in refs.retained][:max_deletes]
    total -= sum(e.size for e in chosen)
    for e in old:
        if total <= max_total_bytes or len(chosen) >= max_deletes:
            break
        if e.digest in refs.retained:
            chosen.append(e)
            total -= e.size
    return chosen


def _tree_bytes(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total


class DiskGC:
    """The blob collector and the run-dir sweep of one daemon."""

    def __init__(
        self,
        blobs: BlobStore,
        work_dir: Path,
        log_dir: Path,
        rp: RuntimeParams,
        *,
        wall_ms: Callable[[], int],
    ) -> None:
        self.blobs = blobs
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.rp = rp
        self._wall_ms = wall_ms
        self._references: Callable[[], BlobRefs] | None = None
        self._lock = trio.Lock()
        self.passes = 0
        self.collected_blobs = 0
        self.collected_bytes = 0
        self.orphan_run_dirs_removed = 0
        self.refused_uploads = 0
        """Uploads refused because the store stayed full after a pass (counted
        by the daemon, which tries them)."""
        self.log_blobs = 0
        self.log_bytes = 0
        """Run logs kept in the store, and their bytes, as of the last pass."""

    def set_references(self, references: Callable[[], BlobRefs]) -> None:
        """Where the live references come from (the view, once the core is restored)."""
        self._references = references

    # ------------------------------------------------------------ blobs

    async def collect(self, room: int = 0) -> int:
        """One pass; returns the blobs removed. With ``room``, retained blobs
        go until that many bytes fit under the cap (an upload waiting for
        space). References are read in the trio thread (one consistent
        snapshot), the store is listed and pruned in a worker thread."""
        assert self._references is not None
        async with self._lock:
            refs = self._references()
            removed, freed = await trio.to_thread.run_sync(self._collect_sync, refs, room)
            self.passes += 1
            self.collected_blobs += removed
            self.collected_bytes += freed
        if removed:
            log.info("blob collector: removed %d blobs, %d bytes", removed, freed)
        return removed

    def _collect_sync(self, refs: BlobRefs, room: int) -> tuple[int, int]:
        entries = list(self.blobs.entries())
        plan = plan_collection(
            entries,
            refs,
            now_wall_ms=self._wall_ms(),
            grace_ms=int(self.rp.blob_grace_s * 1000),
            max_total_bytes=max(0, self.rp.blob_store_max_bytes - room),
            max_deletes=self.rp.blob_gc_max_deletes,
        )
        removed = freed = 0
        for e in plan:
            if self.blobs.delete(e.digest, unless_written_after_ms=e.mtime_ms):
                removed += 1
                freed += e.size
        gone = {e.digest for e in plan}
        kept_logs = [e for e in entries if e.digest in refs.logs and e.digest not in gone]
        self.log_blobs, self.log_bytes = len(kept_logs), sum(e.size for e in kept_logs)
        return removed, freed

    async def loop(self) -> None:
        """Collect every ``blob_gc_interval_s``; a failed pass is logged, not fatal."""
        while True:
            await trio.sleep(self.rp.blob_gc_interval_s)
            try:
                await self.collect()
            except OSError as exc:
                log.warning("blob collector pass failed: %s", exc)

    # ------------------------------------------------------------ run dirs

    def sweep_run_dirs(self, live: Collection[str]) -> int:
        """Remove every entry of ``work/`` whose name is not in ``live`` (the
        run dir names of live runs); returns how many were removed."""
        removed = 0
        if not self.work_dir.is_dir():
            return 0
        for entry in sorted(self.work_dir.iterdir()):
            if entry.name in live:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        self.orphan_run_dirs_removed += removed
        if removed:
            log.info("removed %d orphaned run directories from a previous run", removed)
        return removed

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The ``disk`` section of ``GET /v1/status`` (a few ``stat`` calls)."""
        try:
            run_dirs = sum(1 for _ in self.work_dir.iterdir())
        except FileNotFoundError:
            run_dirs = 0
        return {
            "blobs": {
                "bytes": self.blobs.total_bytes,
                "files": self.blobs.file_count,
                "max_bytes": self.rp.blob_store_max_bytes,
                "collected_blobs": self.collected_blobs,
                "collected_bytes": self.collected_bytes,
                "refused_uploads": self.refused_uploads,
                "gc_passes": self.passes,
                "log_blobs": self.log_blobs,
                "log_bytes": self.log_bytes,
            },
            "run_dirs": {
                "count": run_dirs,
                "orphans_removed": self.orphan_run_dirs_removed,
            },
            "event_log": {"bytes": _tree_bytes(self.log_dir)},
        }
