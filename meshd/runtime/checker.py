"""Comparing two outputs of one job: the core's ``RunChecker``.

The verdict (``CheckerFinished.equivalent``) follows specs/CREDITS.md, from
the effect's own fields:

- ``image`` set: the job's checker container decides (exit 0: equivalent),
  with the two outputs unpacked at ``/mesh/inputs/a`` and ``/mesh/inputs/b``
  (:func:`.jobio.run_checker_container`);
- else ``tolerance`` set: the two archives hold the same files, each pair
  agreeing within the tolerance its path is given — ``.npy`` arrays element
  by element, text (CSV included) outside numbers identical and its numbers
  close (:func:`.compare.archives_close`);
- else: equivalent only if the digests are equal.

A comparison that fails (a missing blob, a crashed checker) is a "different"
verdict, logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from meshd.core.events import CheckerFinished, RunChecker
from meshd.exec.base import Executor
from meshd.store.blobs import BlobStore

from .jobio import compare_outputs, run_checker_container

log = logging.getLogger("meshd.checker")


class Checker:
    """Carries out ``RunChecker`` with the blob store and the executor."""

    def __init__(
        self,
        blobs: BlobStore,
        executor: Executor,
        work_dir: Path,
        feed: Callable[[Any], Awaitable[None]],
    ) -> None:
        self.blobs = blobs
        self.executor = executor
        self.work_dir = work_dir
        self._feed = feed

    async def check(self, eff: RunChecker) -> None:
        """Judge ``eff.a`` against ``eff.b``; the verdict comes back as ``CheckerFinished``."""
        try:
            same = await self.equivalent(eff)
        except Exception as exc:
            log.warning("comparing outputs of %s failed: %s", eff.job_id, exc)
            same = False
        await self._feed(CheckerFinished(eff.job_id, eff.a, eff.b, same))

    async def equivalent(self, eff: RunChecker) -> bool:
        if eff.image:
            return await run_checker_container(
                self.executor, self.blobs, self.work_dir, eff.image, eff.a, eff.b, eff.job_id
            )
        if eff.tolerance is not None:
            return await trio.to_thread.run_sync(
                compare_outputs, self.blobs, eff.a, eff.b, eff.tolerance
            )
        return eff.a == eff.b
