"""Runs on this node: the core's ``FetchInputs``, ``StartExecution`` and ``CancelExecution``.

Theory of operation
-------------------
Each run ``(job, attempt, replica)`` gets its own directory under the data
dir's ``work/`` (:meth:`Executions.run_dir`): ``inputs/`` (placed by
``FetchInputs``: blobs from the origin, or URIs; :func:`.jobio.fetch_inputs`;
before them a travelling image, :meth:`.images.ImageCache.ensure`)
and ``outputs/`` (world-writable: the job runs as an unprivileged user).

``StartExecution`` runs the job through the executor in a cancel scope held
by run key, so ``CancelExecution`` stops it (the executor is told to cancel;
no ``ExecutionFinished`` comes back for a cancelled run). A finished run's
outputs are packed into one deterministic tar (``pack_dir``) and stored in
the blob store; its digest and size go back to the core in
``ExecutionFinished``, with ``status="output_limit"`` when they cannot be
packed. The job's stdout and stderr are kept apart in a
:class:`.joblogs.RunLog`, each chunk stamped with the wall clock when read;
each chunk also goes back as ``ExecutionProgress`` (its stream, offset and
stamp) without waiting (a full local lane drops it from the live path only,
counted by the daemon). When the run ends, the run log is stored as a blob
(the run's stored log) and its digest goes back in ``ExecutionFinished``,
whatever the run's status. The run dir is removed after;
the dirs of runs a killed daemon left behind are removed at its next start
(:meth:`.diskgc.DiskGC.sweep_run_dirs`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from meshd.config import InputsConfig
from meshd.core.events import (
    MAX_ERROR_CHARS,
    CancelExecution,
    ExecutionFinished,
    ExecutionProgress,
    FetchInputs,
    InputsFetched,
    StartExecution,
)
from meshd.core.manifest import ManifestError, manifest_body, worker_payload
from meshd.exec.base import ExecRequest, Executor, LogStream
from meshd.store.blobs import (
    BlobLimitError,
    BlobStore,
    BlobStoreFullError,
    UnsafeArchiveError,
    pack_dir,
)

from .inputs import InputError
from .jobio import fetch_inputs, prefixed
from .joblogs import RunLog

log = logging.getLogger(__name__)


class Executions:
    """The runs this node executes, from inputs to packed outputs."""

    def __init__(
        self,
        work_dir: Path,
        executor: Executor,
        blobs: BlobStore,
        *,
        fetch_blob: Callable[[str, str], Awaitable[None]],
        ensure_image: Callable[[str, Any, tuple[str, ...]], Awaitable[None]],
        feed: Callable[[Any], Awaitable[None]],
        feed_nowait: Callable[[Any], bool],
        allow_network: bool,
        wall_ms: Callable[[], int],
        inputs: InputsConfig | None = None,
        signer: tuple[str, Callable[[bytes], bytes]] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.executor = executor
        self.blobs = blobs
        self._fetch_blob = fetch_blob
        self._ensure_image = ensure_image
        self._feed = feed
        self._feed_nowait = feed_nowait
        self.allow_network = allow_network
        """Whether jobs that ask for the network get it (``allow_network_jobs``)."""
        self.inputs = inputs or InputsConfig()
        """Where URI inputs come from and which addresses they may name."""
        self.signer = signer
        """This node's peer id and signing function, for output manifests."""
        self._wall_ms = wall_ms
        self._runs: dict[tuple[str, int, int], trio.CancelScope] = {}
        self.log_store_failures = 0
        """Run logs the blob store could not take (the run is reported without one)."""

    def run_dir(self, job_id: str, attempt: int, replica: int) -> Path:
        return self.work_dir / f"{job_id}-{attempt}-{replica}"

    async def fetch_inputs(self, eff: FetchInputs) -> None:
        """Carry out ``FetchInputs`` (the job's image first, where it must
        travel here): the outcome comes back as ``InputsFetched``."""
        d = self.run_dir(eff.job_id, eff.attempt, eff.replica)
        try:
            await self._ensure_image(eff.origin, eff.spec, eff.image_holders)
            await fetch_inputs(
                self._fetch_blob, self.blobs, eff.origin, eff.spec, d / "inputs", self.inputs
            )
            inp = InputsFetched(eff.job_id, eff.attempt, eff.replica, True)
        except Exception as exc:
            # A URI the submitter named that cannot be fetched is the job's
            # fault; a blob from the origin that does not arrive is ours.
            fault = "job" if isinstance(exc, InputError) else "worker"
            inp = InputsFetched(
                eff.job_id, eff.attempt, eff.replica, False, str(exc)[:MAX_ERROR_CHARS], fault
            )
        await self._feed(inp)

    async def execute(self, eff: StartExecution) -> None:
        """Carry out ``StartExecution``: run, pack the outputs, report
        ``ExecutionFinished`` (nothing when cancelled)."""
        key = (eff.job_id, eff.attempt, eff.replica)
        d = self.run_dir(*key)
        out_dir = d / "outputs"
        out_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(out_dir, 0o777)  # the job runs as an unprivileged user
        spec = eff.spec
        req = ExecRequest(
            job_id=f"{eff.job_id}-{eff.attempt}-{eff.replica}",
            image=spec.image,
            command=tuple(spec.command),
            env=dict(spec.env),
            input_dir=d / "inputs" if (d / "inputs").exists() else None,
            output_dir=out_dir,
            cpus=spec.requirements.cpus,
            memory_mb=spec.requirements.memory_mb,
            gpus=spec.requirements.gpus,
            gpu_min_memory_mb=spec.requirements.gpu_min_memory_mb,
            network=spec.requirements.network and self.allow_network,
            timeout_s=eff.timeout_s,
        )

        run_log = RunLog()

        def on_log(stream: LogStream, data: bytes) -> None:
            ts = self._wall_ms()
            offset = run_log.add(stream, ts, data)
            self._feed_nowait(
                ExecutionProgress(eff.job_id, eff.attempt, eff.replica, stream, offset, ts, data)
            )

        with trio.CancelScope() as scope:
            self._runs[key] = scope
            try:
                result = await self.executor.run(req, on_log)
            finally:
                self._runs.pop(key, None)
        if scope.cancelled_caught:
            await self.executor.cancel(req.job_id)
            shutil.rmtree(d, ignore_errors=True)
            return
        digest, size, manifest_sig = None, 0, None
        if result.status == "succeeded":
            try:
                # only the paths the job names (``--output``), or everything
                archive = await trio.to_thread.run_sync(
                    partial(pack_dir, out_dir, only=tuple(spec.outputs))
                )
                digest = prefixed(await trio.to_thread.run_sync(self.blobs.put, archive))
                size = len(archive)
                manifest_sig = await trio.to_thread.run_sync(self._sign_manifest, eff, archive)
            except Exception as exc:
                # Too much output, or entries no archive may hold, is the
                # job's doing; a full store or a disk error is this node's.
                job_made = isinstance(exc, (BlobLimitError, UnsafeArchiveError)) and not isinstance(
                    exc, BlobStoreFullError
                )
                result = type(result)(
                    status="output_limit" if job_made else "error",
                    exit_code=result.exit_code,
                    reason=f"outputs could not be packed: {exc}"[:MAX_ERROR_CHARS],
                    duration_s=result.duration_s,
                    image_id=result.image_id,
                )
        log_digest, log_size = await self._store_log(run_log)
        await self._feed(
            ExecutionFinished(
                eff.job_id,
                eff.attempt,
                eff.replica,
                result.status,
                result.exit_code,
                result.reason,
                int(result.duration_s * 1000),
                None if result.cpu_s is None else int(result.cpu_s * 1000),
                result.peak_memory_bytes,
                digest,
                size,
                executor_fault=result.status == "error",
                image_id=result.image_id,
                fault=result.fault,
                manifest_sig=manifest_sig,
                log_digest=log_digest,
                log_size=log_size,
            )
        )
        shutil.rmtree(d, ignore_errors=True)

    def _sign_manifest(self, eff: StartExecution, archive: bytes) -> str | None:
        """The worker's signature of the archive's manifest (specs/JOB.md §3.1),
        hex; None when unsigned (no signer, or an archive it cannot describe)."""
        if self.signer is None:
            return None
        peer_id, sign = self.signer
        try:
            body = manifest_body(
                job_id=eff.job_id,
                attempt=eff.attempt,
                replica=eff.replica,
                worker=peer_id,
                archive=archive,
            )
        except ManifestError as exc:
            log.warning("job %s: output manifest not signed: %s", eff.job_id, exc)
            return None
        return sign(worker_payload(body)).hex()

    async def _store_log(self, run_log: RunLog) -> tuple[str | None, int]:
        """Store a finished run's log as a blob: (digest, size), or (None, 0)
        when the run wrote nothing or the store refused it (the run's result
        stands either way)."""
        if not run_log.chunks:
            return None, 0
        blob = run_log.to_blob()
        try:
            return prefixed(await trio.to_thread.run_sync(self.blobs.put, blob)), len(blob)
        except OSError:
            self.log_store_failures += 1
            return None, 0

    def cancel(self, eff: CancelExecution) -> None:
        """Carry out ``CancelExecution``: stop the run if it is running here."""
        scope = self._runs.get((eff.job_id, eff.attempt, eff.replica))
        if scope is not None:
            scope.cancel()
