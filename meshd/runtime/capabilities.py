"""What this node offers, as measured, and whether its executor works.

Theory of operation
-------------------
The core learns the node's capabilities only from ``LocalCapabilities``
inputs, and its warmth only from ``ExecutorHealth`` inputs; both come from
here:

- at start the daemon calls :meth:`Capabilities.measure` (hardware profile,
  and the compute score, measured unless ``measure_score`` is off) and
  :meth:`Capabilities.refresh_images` (the executor's local images), then
  feeds :meth:`Capabilities.local`;
- :meth:`Capabilities.refresh_loop` re-reads images (and hardware and score
  every ``score_refresh_s``) every ``capabilities_refresh_s`` and feeds a
  fresh ``LocalCapabilities``;
- :meth:`Capabilities.health_loop` runs the executor's health check every
  ``health_recheck_s`` while the node is cold, ten times less often while it
  is warm, and feeds the outcome.

The config's price is credits per GFLOPS-hour; the core's is per GFLOP
(``NodeConfig.price_per_gflop`` converts). All waits are on the trio clock (the shell's monotonic
timeline).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from meshd import __version__
from meshd.config import NodeConfig
from meshd.core.events import MAX_ERROR_CHARS, ExecutorHealth, LocalCapabilities
from meshd.core.wire import MAX_ADVERT_ARCHIVES, MAX_ADVERT_IMAGES
from meshd.exec.base import Executor

from .params import RuntimeParams

log = logging.getLogger("meshd.capabilities")


class Capabilities:
    """Hardware, compute score and local images of this node; the executor's health."""

    def __init__(
        self,
        executor: Executor,
        data_root: Path,
        config: NodeConfig,
        rp: RuntimeParams,
        *,
        listen_addrs: Callable[[], list[str]],
        warm: Callable[[], bool],
        feed: Callable[[Any], Awaitable[None]],
        monotonic_ms: Callable[[], int],
        measure_score: bool = True,
        image_archives: Callable[[], tuple[str, ...]] = tuple,
        image_pieces: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self.executor = executor
        self.data_root = data_root
        self.config = config
        self.rp = rp
        self._listen_addrs = listen_addrs
        self._warm = warm
        self._feed = feed
        self._monotonic_ms = monotonic_ms
        self.measure_score = measure_score
        self._image_archives = image_archives
        """The image archives we keep and serve (``ImageCache.archives``)."""
        self._image_pieces = image_pieces
        """Their piece lists, served too (``ImageCache.piece_lists``)."""
        self.images: tuple[str, ...] = ()
        self.image_ids: tuple[tuple[str, str], ...] = ()
        """(name, id) of the local images, when the executor can say."""
        self.hardware: Any = None
        """``meshd.exec.hardware.HardwareProfile`` once measured."""
        self.score: Any = None
        """``meshd.exec.score.ComputeScore`` once measured."""

    async def refresh_images(self) -> None:
        lister = getattr(self.executor, "local_images", None)
        if not callable(lister):
            return
        try:
            self.images = tuple(await trio.to_thread.run_sync(lister))[:MAX_ADVERT_IMAGES]
        except Exception as exc:
            log.warning("listing local images failed: %s", exc)
        ids = getattr(self.executor, "local_image_ids", None)
        if callable(ids):
            try:
                found = await trio.to_thread.run_sync(ids)
                self.image_ids = tuple(sorted(found.items()))[:MAX_ADVERT_IMAGES]
            except Exception as exc:
                log.warning("listing local image ids failed: %s", exc)

    async def measure(self) -> None:
        from meshd.exec.hardware import profile_hardware
        from meshd.exec.score import ComputeScore, measure_compute_score

        self.hardware = await trio.to_thread.run_sync(profile_hardware, self.data_root)
        if self.measure_score:
            self.score = await trio.to_thread.run_sync(measure_compute_score, self.hardware.gpus)
        else:
            self.score = ComputeScore(
                cpu_gflops=10.0,
                gpu_gflops=None,
                tier="cpu",
                measured_at_monotonic=time.monotonic(),
                cpu_method="configured (measure_score off)",
            )

    @property
    def measured(self) -> bool:
        """Whether hardware and score are known (``local`` may be called)."""
        return self.hardware is not None and self.score is not None

    def local(self) -> LocalCapabilities:
        """The ``LocalCapabilities`` input for what was measured last."""
        hw, score = self.hardware, self.score
        gpu_runtime = bool(getattr(self.executor, "gpu_runtime", None))
        return LocalCapabilities(
            cores=hw.cpu_logical,
            ram_mb=hw.ram_total_bytes // (1 << 20),
            disk_free_mb=hw.disk_free_bytes // (1 << 20),
            gpus=tuple((g.name, g.memory_total_mb) for g in hw.gpus),
            gpu_runtime=gpu_runtime,
            runtimes=() if self.executor.name == "none" else (self.executor.name,),
            images=self.images,
            score_gflops=round(score.cpu_gflops, 3),
            gpu_gflops=score.gpu_gflops,
            tier=score.tier,
            price=self.config.price_per_gflop,
            capacity=0 if self.executor.name == "none" else max(1, hw.cpu_logical),
            network_allowed=self.config.allow_network_jobs,
            addrs=tuple(self._listen_addrs()),
            version=__version__,
            gpu_driver=hw.gpus[0].driver_version if hw.gpus else "",
            image_ids=self.image_ids,
            image_archives=self._image_archives()[:MAX_ADVERT_ARCHIVES],
            image_pieces=self._image_pieces(),
        )

    async def health_loop(self) -> None:
        """Check the executor's health, now and then for ever; feed each outcome."""
        while True:
            try:
                result = await self.executor.health_check()
                ok, reason = result.status == "succeeded", result.reason
            except Exception as exc:
                ok, reason = False, f"health check crashed: {exc}"
            await self._feed(ExecutorHealth(ok, reason[:MAX_ERROR_CHARS]))
            if not ok:
                log.warning("executor health check failed: %s", reason)
            await trio.sleep(
                self.rp.health_recheck_s if not self._warm() else self.rp.health_recheck_s * 10
            )

    async def refresh_loop(self) -> None:
        """Re-read images (and, now and then, hardware and score); feed the result."""
        last_score = self._monotonic_ms()
        while True:
            await trio.sleep(self.rp.capabilities_refresh_s)
            if self._monotonic_ms() - last_score > self.rp.score_refresh_s * 1000:
                await self.measure()
                last_score = self._monotonic_ms()
            await self.refresh_images()
            await self._feed(self.local())
