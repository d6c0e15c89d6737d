"""ProcessExecutor: plain subprocesses for trusted local use and tests. NOT a sandbox.

Rules:
- Refuses to construct unless ``ExecParams.process_executor_enabled``; logs a
  loud WARNING when it does, because a job can read and write anything the
  daemon's user can, and reach the network.
- ``ExecRequest.image`` is ignored: the command runs on the host as is
  (``sh`` etc. must exist on the host). GPU jobs are declined (devices are not
  isolated); network jobs are declined unless the node allows network (jobs
  that do not ask for it are *not* prevented from using it).
- Environment: only ``PATH``, ``HOME``/``TMPDIR`` (= a fresh scratch dir,
  also the cwd, removed afterwards), ``MESH_INPUTS`` (host input dir, or
  empty), ``MESH_OUTPUTS`` (host output dir), ``MESH_JOB_ID``, plus the
  request's env. The daemon's own environment is not passed on.
- Bounds: wall-clock timeout; the job's own process group is SIGKILLed on
  timeout, cancel and after the leader exits (no stragglers); rlimits set by
  a tiny launcher (``_rlimit_exec.py``): ``RLIMIT_AS`` = memory_mb,
  ``RLIMIT_FSIZE`` = output cap (one file cannot outgrow it; SIGXFSZ ->
  ``output_limit``), ``RLIMIT_NOFILE``, and ``RLIMIT_NPROC`` = the user's
  current process count + pids_limit when not root (root ignores NPROC, so
  fork bombs are NOT contained when the daemon runs as root). The output dir
  is polled like Docker's and checked after exit; the log is capped the same.
- Memory exhaustion shows up as allocation failure inside the job: status
  ``failed`` (never ``oom``; there is no OOM killer verdict to read).
- ``cpu_s`` / ``peak_memory_bytes`` come from ``wait4`` rusage of the leader
  (including the children it waited for; the ~10 ms launcher start included).

Theory of operation: spawn the launcher in a new session, pump its stdout
and stderr pipes (kept apart) into one ``LogSink``, and wait for the leader's exit with
``waitid(WNOWAIT)`` in a thread (the zombie keeps the pgid from being reused
while we kill the group), then SIGKILL the group and reap with ``wait4``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from .base import (
    ExecParams,
    ExecRequest,
    ExecResult,
    ExecStatus,
    Executor,
    ExecutorUnavailable,
    InvalidRequest,
    LogCallback,
    LogStream,
    error_result,
)
from .health import health_check
from .outputs import LogSink, discard_outputs, measure_dir, over_cap

log = logging.getLogger(__name__)

LAUNCHER = str(Path(__file__).with_name("_rlimit_exec.py"))
_READ_CHUNK = 64 * 1024
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _ProcState:
    pid: int | None = None
    cancelled: bool = False
    timed_out: bool = False
    output_reason: str | None = None
    reaped: bool = False


class ProcessExecutor(Executor):
    name = "process"
    sandboxed = False

    def __init__(self, params: ExecParams, node_label: str) -> None:
        if not params.process_executor_enabled:
            raise ExecutorUnavailable(
                "the process executor is unsandboxed and disabled; "
                "set `allow_process_executor = true` in config.toml to opt in"
            )
        self.params = params
        self.node_label = node_label
        self.max_cpus = (
            params.max_cpus if params.max_cpus is not None else float(os.cpu_count() or 1)
        )
        total_mb = psutil.virtual_memory().total // (1024 * 1024)
        self.max_memory_mb = params.max_memory_mb if params.max_memory_mb is not None else total_mb
        self._runs: dict[str, _ProcState] = {}
        log.warning(
            "PROCESS EXECUTOR ENABLED on node %s: jobs run UNSANDBOXED as uid %d "
            "(no filesystem, network or fork-bomb isolation). Use only for trusted jobs.",
            node_label,
            os.geteuid(),
        )

    def describe(self) -> str:
        return f"process executor (UNSANDBOXED) as uid {os.geteuid()}"

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
        if gpus > 0:
            return "process executor does not assign GPUs"
        if network and not self.params.allow_network:
            return "network not allowed by node"
        if cpus > self.max_cpus:
            return f"job wants {cpus:g} CPUs, node offers at most {self.max_cpus:g}"
        if memory_mb > self.max_memory_mb:
            return f"job wants {memory_mb} MiB memory, node offers at most {self.max_memory_mb}"
        return None

    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        if req.job_id in self._runs:
            raise InvalidRequest(f"job {req.job_id!r} is already running on this executor")
        reason = self.decline_request(req)
        if reason is not None:
            return error_result(f"declined: {reason}")
        state = _ProcState()
        self._runs[req.job_id] = state
        scratch = Path(tempfile.mkdtemp(prefix="meshd-proc-", dir=self.params.scratch_dir))
        try:
            req.output_dir.mkdir(parents=True, exist_ok=True)
            return await self._run_process(req, on_log, state, scratch)
        finally:
            del self._runs[req.job_id]
            shutil.rmtree(scratch, ignore_errors=True)
            if state.output_reason is not None:
                discard_outputs(req.output_dir)

    def _argv_env(self, req: ExecRequest, scratch: Path) -> tuple[list[str], dict[str, str]]:
        p = self.params
        cap = p.effective_output_cap(req)
        nproc = 0
        if os.geteuid() != 0:
            uid = os.getuid()
            mine = sum(
                1
                for pr in psutil.process_iter(["uids"])
                if pr.info["uids"] and pr.info["uids"].real == uid
            )
            nproc = mine + p.effective_pids_limit(req)
        argv = [
            sys.executable,
            "-I",
            "-S",
            LAUNCHER,
            str(req.memory_mb * 1024 * 1024),
            str(nproc),
            str(cap + 1),
            str(p.nofile_limit),
            "--",
            *req.command,
        ]
        env = {
            "PATH": os.environ.get("PATH", _DEFAULT_PATH),
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "MESH_INPUTS": str(req.input_dir) if req.input_dir is not None else "",
            "MESH_OUTPUTS": str(req.output_dir),
            "MESH_JOB_ID": req.job_id,
        }
        env.update(req.env)
        return argv, env

    async def _run_process(
        self, req: ExecRequest, on_log: LogCallback | None, state: _ProcState, scratch: Path
    ) -> ExecResult:
        p = self.params
        sink = LogSink(on_log, cap=p.effective_log_cap(req), tail_bytes=p.log_tail_bytes)
        argv, env = self._argv_env(req, scratch)
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=scratch,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            return error_result(f"cannot start process: {e}")
        assert proc.stdout is not None and proc.stderr is not None
        state.pid = proc.pid
        out = trio.lowlevel.FdStream(os.dup(proc.stdout.fileno()))
        err = trio.lowlevel.FdStream(os.dup(proc.stderr.fileno()))
        proc.stdout.close()
        proc.stderr.close()
        exited = trio.Event()
        out_done, err_done = trio.Event(), trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, out, "stdout", sink, out_done)
                nursery.start_soon(self._pump, err, "stderr", sink, err_done)
                nursery.start_soon(self._wait_exit, proc.pid, exited)
                nursery.start_soon(self._watch, req, state)
                try:
                    with trio.move_on_after(p.effective_timeout_s(req)):
                        await exited.wait()
                    if not exited.is_set():
                        state.timed_out = True
                        _killpg(proc.pid)
                        await exited.wait()
                finally:
                    _killpg(proc.pid)  # stragglers; also unblocks the waiter if we are cancelled
                duration = time.monotonic() - t0
                with trio.move_on_after(p.log_drain_timeout_s):
                    await out_done.wait()
                    await err_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            await out.aclose()
            await err.aclose()
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            state.reaped = True
        if state.output_reason is None and not (state.cancelled or state.timed_out):
            usage = measure_dir(req.output_dir, max_entries=p.max_output_entries)
            state.output_reason = over_cap(usage, max_bytes=p.effective_output_cap(req))
        return self._classify(
            req,
            state,
            proc.returncode,
            sink,
            duration,
            rusage.ru_utime + rusage.ru_stime,
            rusage.ru_maxrss * 1024,
        )

    async def _wait_exit(self, pid: int, exited: trio.Event) -> None:
        # WNOWAIT: leave the zombie so the process group id cannot be reused yet.
        await trio.to_thread.run_sync(os.waitid, os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        exited.set()

    async def _pump(
        self, stream: trio.lowlevel.FdStream, name: LogStream, sink: LogSink, done: trio.Event
    ) -> None:
        try:
            while True:
                chunk = await stream.receive_some(_READ_CHUNK)
                if not chunk:
                    break
                sink.feed(name, chunk)  # past the cap: keep draining so the job never blocks on us
        except (trio.ClosedResourceError, OSError):
            pass
        finally:
            done.set()

    async def _watch(self, req: ExecRequest, state: _ProcState) -> None:
        p = self.params
        cap = p.effective_output_cap(req)
        while True:
            await trio.sleep(p.output_poll_interval_s)
            usage = await trio.to_thread.run_sync(
                lambda: measure_dir(req.output_dir, max_entries=p.max_output_entries)
            )
            reason = over_cap(usage, max_bytes=cap)
            if reason is not None and state.pid is not None:
                state.output_reason = reason
                _killpg(state.pid)
                return

    def _classify(
        self,
        req: ExecRequest,
        state: _ProcState,
        returncode: int,
        sink: LogSink,
        duration_s: float,
        cpu_s: float,
        peak_rss: int,
    ) -> ExecResult:
        exit_code = 128 - returncode if returncode < 0 else returncode
        if returncode == -signal.SIGXFSZ and state.output_reason is None:
            state.output_reason = (
                f"a file reached the output cap of {self.params.effective_output_cap(req)} bytes"
            )
        status: ExecStatus
        if state.cancelled:
            status, reason = "cancelled", "cancelled by request"
        elif state.timed_out:
            status, reason = (
                "timeout",
                f"killed after the {self.params.effective_timeout_s(req):g} s wall-clock limit",
            )
        elif state.output_reason is not None:
            status, reason = "output_limit", f"{state.output_reason}; outputs discarded"
        elif exit_code == 0:
            status, reason = "succeeded", "exit code 0"
        elif returncode < 0:
            status, reason = "failed", f"exit code {exit_code} (killed by signal {-returncode})"
        else:
            status, reason = "failed", f"exit code {exit_code}"
        if sink.truncated:
            reason += f"; log truncated at {sink.forwarded} of {sink.seen} bytes"
        return ExecResult(
            status=status,
            exit_code=exit_code,
            reason=reason,
            duration_s=duration_s,
            cpu_s=cpu_s,
            peak_memory_bytes=peak_rss,
            log_tail=sink.tail(),
        )

    async def cancel(self, job_id: str) -> None:
        state = self._runs.get(job_id)
        if state is None:
            return
        state.cancelled = True
        if state.pid is not None and not state.reaped:
            _killpg(state.pid)

    async def reap_orphans(self) -> int:
        """Always 0. Groups of a run that ends normally are killed; groups left by a
        daemon that was itself SIGKILLed are not tracked across restarts (known
        limitation of this trusted-use executor)."""
        return 0

    async def health_check(self) -> ExecResult:
        return await health_check(self, self.params)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
