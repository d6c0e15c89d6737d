"""The executor interface: what a job run asks for, what it reports, and the bounds.

Rules:
- ``ExecRequest`` / ``ExecResult`` / ``ExecParams`` are frozen values that
  validate on construction; a bad request is the *caller's* fault and raises
  ``ValueError`` (``InvalidRequest``) at once, never half-way through a run.
- ``Executor.run`` never raises for anything the *job* did (non-zero exit,
  timeout, OOM, output flood, fork bomb): that is an ``ExecResult`` with a
  status and a human ``reason``. Engine trouble (image missing, engine gone)
  is also a result, with status ``"error"``. Only our own misuse raises.
- Every failed result says whose fault it is (``ExecResult.fault``): ``job``
  for what the job did (``failed``, ``timeout``, ``oom``, ``output_limit``),
  ``worker`` for what the node did (``error``, ``cancelled``). The origin
  retries a worker's fault elsewhere and fails a job's fault after one
  confirming run (specs/PROTOCOL.md §10).
- ``Executor.decline_reason`` is synchronous and fast (no container start):
  the core asks it before bidding so a node never bids on a job it would fail.
- Every bound has a name and a documented default in ``ExecParams``; the
  effective bound of a run is the tighter of the request's and the node's.

Theory of operation: the runtime shell builds one executor at start-up with
``make_executor`` (``meshd.exec.factory``), calls ``reap_orphans()`` once, and
then, for each ``StartExecution`` effect, ``await executor.run(req, on_log)``
in its own task (``on_log(stream, chunk)`` gets stdout and stderr apart); ``Cancel`` effects become ``await executor.cancel(job_id)``.
The result is fed back to the core as an ``ExecutionFinished`` input.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from meshd.core.wire import fault_of

MiB = 1024 * 1024

ExecStatus = Literal["succeeded", "failed", "timeout", "oom", "output_limit", "cancelled", "error"]
EXEC_STATUSES: tuple[str, ...] = (
    "succeeded",
    "failed",
    "timeout",
    "oom",
    "output_limit",
    "cancelled",
    "error",
)

LogStream = Literal["stdout", "stderr"]
"""Which of the job's two output streams a log chunk came from."""
LOG_STREAMS: tuple[LogStream, ...] = ("stdout", "stderr")
LogCallback = Callable[[LogStream, bytes], None]
"""``on_log(stream, chunk)``: output as it is read, each stream in its own order."""
Fault = Literal["", "job", "worker"]

# Job ids go into container names and cgroup paths (sanitised) and labels (verbatim).
JOB_ID_MAX_LEN = 128
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class InvalidRequest(ValueError):
    """The caller built an impossible request or parameter set (caller's fault)."""


class ExecutorUnavailable(RuntimeError):
    """No executor can be built on this node (e.g. no engine and process executor off)."""


@dataclass(frozen=True, kw_only=True)
class ExecRequest:
    """One job run. Paths are host paths; the sandbox decides how the job sees them.

    Docker: ``input_dir`` is bind-mounted read-only at ``/mesh/inputs`` and
    ``output_dir`` read-write at ``/mesh/outputs`` (``MESH_INPUTS`` /
    ``MESH_OUTPUTS`` are set to those). Process executor: the env vars point at
    the host dirs themselves and the cwd is a fresh scratch dir.
    The container runs as ``ExecParams.run_as_user``: input files must be
    readable by it (world-readable); the executor makes ``output_dir``
    writable for it (chown when the daemon is root, else mode 0777).
    """

    job_id: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    input_dir: Path | None = None
    output_dir: Path
    cpus: float = 1.0
    memory_mb: int = 512
    gpus: int = 0
    gpu_min_memory_mb: int = 0
    network: bool = False
    timeout_s: float = 600.0
    max_output_bytes: int = 256 * MiB
    max_log_bytes: int = 1 * MiB
    pids_limit: int = 256

    def __post_init__(self) -> None:
        _check(0 < len(self.job_id) <= JOB_ID_MAX_LEN, f"job_id must be 1..{JOB_ID_MAX_LEN} chars")
        _check("\x00" not in self.job_id, "job_id must not contain NUL")
        _check(bool(self.image), "image must be non-empty")
        _check(len(self.command) > 0, "command must be a non-empty tuple")
        _check(
            all(isinstance(a, str) and "\x00" not in a for a in self.command),
            "command items must be str without NUL",
        )
        for k, v in self.env.items():
            _check(bool(_ENV_KEY_RE.match(k)), f"env key {k!r} is not a valid variable name")
            _check(
                isinstance(v, str) and "\x00" not in v, f"env value of {k} must be str without NUL"
            )
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.input_dir is not None:
            object.__setattr__(self, "input_dir", Path(self.input_dir))
        _check(self.cpus > 0, "cpus must be > 0")
        _check(self.memory_mb >= 6, "memory_mb must be >= 6 (Docker's minimum)")
        _check(
            self.gpus >= 0 and self.gpu_min_memory_mb >= 0, "gpus / gpu_min_memory_mb must be >= 0"
        )
        _check(self.timeout_s > 0, "timeout_s must be > 0")
        _check(self.max_output_bytes >= 0 and self.max_log_bytes >= 0, "byte caps must be >= 0")
        _check(self.pids_limit >= 1, "pids_limit must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ExecResult:
    """What happened. ``None`` means "not measured by this executor/engine" (see module docs)."""

    status: ExecStatus
    exit_code: int | None
    reason: str
    duration_s: float
    cpu_s: float | None = None
    peak_memory_bytes: int | None = None
    gpu_devices: tuple[str, ...] = ()
    gpu_util_pct: float | None = None
    gpu_memory_bytes: int | None = None
    log_tail: bytes = b""
    # How many processes the job had at most (cgroup pids.peak); None if unknown.
    pids_peak: int | None = None
    # The id of the image the job ran ("sha256:..."); "" when there is none (process executor).
    image_id: str = ""
    # Whose fault a failure is: "job" or "worker"; "" derives it from the status
    # (``meshd.core.wire.fault_of``), and is "" for a success.
    fault: Fault = ""

    def __post_init__(self) -> None:
        _check(self.status in EXEC_STATUSES, f"unknown status {self.status!r}")
        object.__setattr__(self, "fault", fault_of(self.status, self.fault))

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True, kw_only=True)
class ExecParams:
    """Node-side bounds for every executor. Defaults are the documented defaults.

    A request's own caps (timeout, output, log, pids) are clamped to these.
    """

    # --- policy
    process_executor_enabled: bool = False  # the unsandboxed executor is opt-in
    allow_network: bool = False  # may a job that asks for network get it?
    pull_images: bool = False  # False: local images only (a missing image is a decline)
    run_as_user: str = "65534:65534"  # uid:gid inside the container (nobody:nogroup)
    label_prefix: str = "meshd"  # container labels <prefix>.node / <prefix>.job; names <prefix>-...
    # --- per-job ceilings (request values above these are clamped)
    max_timeout_s: float = 24 * 3600.0
    max_output_bytes: int = 256 * MiB
    max_output_entries: int = 100_000  # files+dirs in the output dir; more -> output_limit
    max_log_bytes: int = 1 * MiB  # bytes of stdout+stderr streamed to on_log; the rest is dropped
    log_tail_bytes: int = 64 * 1024  # bytes of log kept in ExecResult.log_tail
    max_pids: int = 4096
    max_cpus: float | None = None  # None: the host's logical CPU count
    max_memory_mb: int | None = None  # None: the host's total RAM
    # --- sandbox details (Docker)
    tmpfs_size_mb: int = 64  # writable /tmp (noexec,nosuid,nodev); counts against memory
    nofile_limit: int = 1024  # RLIMIT_NOFILE inside the job
    network_mode_allowed: str = "bridge"  # network used when a job asks and node allows
    # --- mechanics
    output_poll_interval_s: float = 0.5  # how often the output dir size is checked while running
    log_drain_timeout_s: float = 2.0  # after exit, how long to wait for the last log bytes
    docker_api_timeout_s: float = 30.0  # each control call to the engine
    docker_connect_timeout_s: float = 3.0  # "does an engine answer?" probe in make_executor
    image_check_ttl_s: float = 5.0  # decline_reason caches "image present" this long
    cgroup_accounting: bool = True  # read cpu/memory/pids peaks from cgroupfs when possible
    cgroup_root: str = "/sys/fs/cgroup"
    health_check_image: str = "meshd/busybox:1"
    # built from the first static busybox among these when missing (no registry)
    busybox_paths: tuple[str, ...] = ("/bin/busybox", "/usr/bin/busybox")
    health_check_timeout_s: float = 30.0
    scratch_dir: str | None = None
    """Where executors make scratch directories (the health check's, the process
    executor's); None: the system's temp dir. The daemon sets its ``work/`` dir,
    a path a Docker engine outside the node's container can also bind-mount."""
    assume_gpu_runtime: bool = False  # trust that the engine can do GPU device requests

    def __post_init__(self) -> None:
        _check(self.max_timeout_s > 0, "max_timeout_s must be > 0")
        _check(self.max_output_bytes >= 0 and self.max_log_bytes >= 0, "byte caps must be >= 0")
        _check(self.log_tail_bytes >= 0, "log_tail_bytes must be >= 0")
        _check(self.max_output_entries >= 1 and self.max_pids >= 1, "entry/pid caps must be >= 1")
        _check(self.tmpfs_size_mb >= 1 and self.nofile_limit >= 16, "tmpfs/nofile too small")
        _check(self.output_poll_interval_s > 0, "output_poll_interval_s must be > 0")
        _check(
            self.docker_api_timeout_s > 0 and self.docker_connect_timeout_s > 0,
            "docker timeouts must be > 0",
        )
        _check(
            bool(re.match(r"^[a-z][a-z0-9-]{0,31}$", self.label_prefix)),
            "label_prefix must be [a-z][a-z0-9-]{0,31}",
        )
        _check(
            bool(re.match(r"^\d+(:\d+)?$", self.run_as_user)),
            "run_as_user must be numeric uid[:gid]",
        )

    def effective_timeout_s(self, req: ExecRequest) -> float:
        return min(req.timeout_s, self.max_timeout_s)

    def effective_output_cap(self, req: ExecRequest) -> int:
        return min(req.max_output_bytes, self.max_output_bytes)

    def effective_log_cap(self, req: ExecRequest) -> int:
        return min(req.max_log_bytes, self.max_log_bytes)

    def effective_pids_limit(self, req: ExecRequest) -> int:
        return min(req.pids_limit, self.max_pids)

    def run_as_ids(self) -> tuple[int, int]:
        uid, _, gid = self.run_as_user.partition(":")
        return int(uid), int(gid or uid)


class Executor(ABC):
    """Runs one job at a time per call; many calls may run concurrently."""

    name: str
    sandboxed: bool

    @abstractmethod
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
        """Why this node cannot run such a job, or None if it can. Fast and sync."""

    @abstractmethod
    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        """Run the job to completion; stream its stdout and stderr, apart, to
        ``on_log(stream, chunk)`` while it runs."""

    @abstractmethod
    async def cancel(self, job_id: str) -> None:
        """Stop a running job; its ``run`` returns status ``cancelled``. Unknown id: no-op."""

    @abstractmethod
    async def reap_orphans(self) -> int:
        """Remove what a previous run of this node left behind; return how many jobs."""

    @abstractmethod
    async def health_check(self) -> ExecResult:
        """Run a tiny known job and check its output; status ``succeeded`` if healthy."""

    def decline_request(self, req: ExecRequest) -> str | None:
        """``decline_reason`` for a whole request."""
        return self.decline_reason(
            image=req.image,
            gpus=req.gpus,
            gpu_min_memory_mb=req.gpu_min_memory_mb,
            network=req.network,
            cpus=req.cpus,
            memory_mb=req.memory_mb,
        )


def error_result(reason: str, duration_s: float = 0.0) -> ExecResult:
    """An engine/node-side failure that is not the job's fault."""
    return ExecResult(status="error", exit_code=None, reason=reason, duration_s=duration_s)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidRequest(message)
