"""Misbehaving nodes for cluster tests: lying and noisy executors, an equivocator.

Each fault is a real one, injected where a real bad node would produce it:

- :class:`LyingExecutor` runs the job through the real executor and then
  rewrites some of its output files *before* the daemon packs and digests
  them, so the worker honestly reports the digest of a wrong output (a lie the
  origin can only catch by comparing with another worker's run);
- :class:`NoisyExecutor` perturbs every decimal number in the output files by
  a tiny relative amount — an honest worker on different hardware, whose
  outputs differ bit-wise but agree within a job's ``tolerance``;
- :class:`GlobalPhaseExecutor` rotates complex arrays (statevectors) by a
  global phase: the same physical state, other numbers;
- :func:`publish_equivocation` makes a running daemon sign several different
  records with one sequence number and gossip them from its own host.

Install an executor wrapper with ``Cluster(..., wrap_executor=...)`` (applied
when the daemon is built, so it survives restarts), e.g.::

    wrap = {4: lambda ex: LyingExecutor(ex, lie_rate=0.5, rng=random.Random(1))}
    Cluster.started(nursery, tmp_path, 5, wrap_executor=lambda i, ex: wrap.get(i, lambda e: e)(ex))

The wrappers run the inner executor unchanged (health checks included), so
the node stays warm, bids and is paid like any other.
"""

from __future__ import annotations

import fnmatch
import io
import random
import re
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from meshd.core.events import TOPIC_RECEIPTS
from meshd.core.wire import Body, seal
from meshd.exec.base import ExecRequest, ExecResult, Executor, LogCallback
from meshd.runtime.compare import load_npy, members
from meshd.runtime.daemon import Daemon
from meshd.runtime.jobio import prefixed
from meshd.store.blobs import pack_dir, sha256_hex

_DECIMAL = re.compile(rb"[-+]?\d+\.\d+")


class ExecutorWrapper(Executor):
    """Delegates every call to ``inner``; subclasses change what ``run`` leaves behind.

    Attributes the daemon reads off an executor by name (``name``,
    ``sandboxed``, ``local_images``, ``gpu_runtime``, ...) come from ``inner``.
    """

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.name = inner.name
        self.sandboxed = inner.sandboxed

    def __getattr__(self, attr: str) -> Any:
        if attr == "inner":  # not set yet (copy, pickle): do not recurse
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def decline_reason(
        self,
        *,
        image: str,
        gpus: int,
        gpu_min_memory_mb: int,
        network: bool,
        cpus: float,
        memory_mb: int,
    ) -> str | None:
        return self.inner.decline_reason(
            image=image,
            gpus=gpus,
            gpu_min_memory_mb=gpu_min_memory_mb,
            network=network,
            cpus=cpus,
            memory_mb=memory_mb,
        )

    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        return await self.inner.run(req, on_log)

    async def cancel(self, job_id: str) -> None:
        await self.inner.cancel(job_id)

    async def reap_orphans(self) -> int:
        return await self.inner.reap_orphans()

    async def health_check(self) -> ExecResult:
        return await self.inner.health_check()


def output_files(output_dir: Path) -> list[Path]:
    """Regular files under a run's output dir, in a stable order."""
    return sorted(p for p in output_dir.rglob("*") if p.is_file() and not p.is_symlink())


class LyingExecutor(ExecutorWrapper):
    """Returns a wrong output on a fraction ``lie_rate`` of its successful runs.

    A lie rewrites every output file (``LIE:`` + the reversed content), or
    writes ``lie.txt`` when the job produced none; the run still reports
    success, so the daemon packs and digests the wrong files. ``lies`` and
    ``truths`` hold the executor job ids (``<job>-<attempt>-<replica>``) of
    the runs this wrapper falsified or left alone.
    """

    def __init__(self, inner: Executor, lie_rate: float, rng: random.Random) -> None:
        super().__init__(inner)
        assert 0.0 <= lie_rate <= 1.0
        self.lie_rate = lie_rate
        self.rng = rng
        self.lies: list[str] = []
        self.truths: list[str] = []

    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        result = await self.inner.run(req, on_log)
        if not result.ok:
            return result
        if self.rng.random() < self.lie_rate:
            corrupt_outputs(req.output_dir)
            self.lies.append(req.job_id)
        else:
            self.truths.append(req.job_id)
        return result


def corrupt_outputs(output_dir: Path) -> None:
    """Make the outputs under ``output_dir`` wrong (never equal to what they were)."""
    files = output_files(output_dir)
    if not files:
        (output_dir / "lie.txt").write_bytes(b"LIE\n")
        return
    for f in files:
        f.write_bytes(b"LIE:" + f.read_bytes()[::-1])


class NoisyExecutor(ExecutorWrapper):
    """Perturbs each decimal number in the output files by a relative amount in
    ``[rel_noise/10, rel_noise]`` (random sign), like an honest worker whose
    floating-point results differ in the last digits. Integers and all other
    text stay as they are; in a ``.npy`` file of floats every element is
    perturbed the same way (other arrays stay). ``only``: output paths to
    perturb (shell-style patterns; empty: every file). ``perturbed`` counts
    the numbers changed."""

    def __init__(
        self,
        inner: Executor,
        rel_noise: float,
        rng: random.Random,
        only: tuple[str, ...] = (),
    ) -> None:
        super().__init__(inner)
        assert 0.0 < rel_noise < 1e-3
        self.rel_noise = rel_noise
        self.rng = rng
        self.only = only
        self.perturbed = 0

    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        result = await self.inner.run(req, on_log)
        if result.ok:
            for f in output_files(req.output_dir):
                rel = f.relative_to(req.output_dir).as_posix()
                if self.only and not any(fnmatch.fnmatchcase(rel, p) for p in self.only):
                    continue
                if f.suffix == ".npy" and self._noisy_array(f):
                    continue
                f.write_bytes(_DECIMAL.sub(self._noisy, f.read_bytes()))
        return result

    def _noisy_array(self, f: Path) -> bool:
        """Perturb a float ``.npy`` array in place; False if ``f`` is not one."""
        arr = load_npy(f.read_bytes())
        if arr is None or arr.dtype.kind not in "fc":
            return False
        size = arr.shape
        eps = np.array(
            [self.rng.uniform(self.rel_noise / 10, self.rel_noise) for _ in range(arr.size)]
        ).reshape(size)
        sign = np.array([self.rng.choice((-1.0, 1.0)) for _ in range(arr.size)]).reshape(size)
        noisy = (arr * (1.0 + sign * eps)).astype(arr.dtype)
        self.perturbed += int(np.count_nonzero(noisy != arr))
        buf = io.BytesIO()
        np.save(buf, noisy, allow_pickle=False)
        f.write_bytes(buf.getvalue())
        return True

    def _noisy(self, m: re.Match[bytes]) -> bytes:
        x = float(m.group(0))
        eps = self.rng.uniform(self.rel_noise / 10, self.rel_noise) * self.rng.choice((-1.0, 1.0))
        y = x * (1.0 + eps)
        self.perturbed += 1
        return repr(y).encode() if y != x else m.group(0)


class GlobalPhaseExecutor(ExecutorWrapper):
    """Multiplies every complex ``.npy`` array in the outputs by ``e^{i phase}``:
    an honest simulator whose statevector carries another global phase, the
    same physical state, which element-wise tolerance cannot see past (a
    checker container comparing fidelity can). ``rotated`` counts the files."""

    def __init__(self, inner: Executor, phase: float) -> None:
        super().__init__(inner)
        self.factor = complex(np.exp(1j * phase))
        self.rotated = 0

    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        result = await self.inner.run(req, on_log)
        if result.ok:
            for f in output_files(req.output_dir):
                arr = load_npy(f.read_bytes()) if f.suffix == ".npy" else None
                if arr is not None and arr.dtype.kind == "c":
                    buf = io.BytesIO()
                    np.save(buf, (arr * self.factor).astype(arr.dtype), allow_pickle=False)
                    f.write_bytes(buf.getvalue())
                    self.rotated += 1
        return result


# ---------------------------------------------------------------- outputs


def expected_digest(files: dict[str, bytes]) -> str:
    """The output digest an honest run that writes exactly ``files`` reports
    (the daemon packs outputs with :func:`meshd.store.blobs.pack_dir`)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        return prefixed(sha256_hex(pack_dir(root)))


def tar_members(archive: bytes) -> dict[str, bytes]:
    """Regular files of an output archive, name -> content (read as the daemon's
    tolerance comparison reads them)."""
    return members(archive)


def log_records(daemon: Daemon, kind: str) -> list[dict[str, Any]]:
    """Bodies of the records of one kind in a daemon's event log, oldest first."""
    assert daemon.log is not None
    return [r.body for r in daemon.log.iter() if r.kind == kind]


# ---------------------------------------------------------------- equivocation


async def publish_equivocation(daemon: Daemon, bodies: Iterable[Body]) -> list[bytes]:
    """Sign each body with ``daemon``'s identity and gossip it on the receipts
    topic from ``daemon``'s own host; returns the envelopes. Bodies that share
    a ``seq`` but differ are an equivocation every receiver can prove."""
    now = daemon.clock.wall_ms()
    raws = [seal(daemon.identity, body, now, secrets.token_bytes(8)) for body in bodies]
    for raw in raws:
        await daemon.host.publish(TOPIC_RECEIPTS, raw)
    return raws
