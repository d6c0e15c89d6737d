"""DockerExecutor: one locked-down container per job, always removed afterwards.

Sandbox (every setting below is applied to every job; defaults in ``ExecParams``):
- network_mode ``none`` plus ``NetworkDisabled`` (the container gets a bare
  network namespace with only ``lo``, and the engine skips its libnetwork
  sandbox: ~130 ms less per job here); ``ExecParams.network_mode_allowed`` (``bridge``) only
  when the job asks for network *and* ``ExecParams.allow_network`` is True
  (else the job is declined: "network not allowed by node").
- read-only root filesystem; writable ``/tmp`` is a tmpfs of
  ``tmpfs_size_mb`` (64) with noexec,nosuid,nodev; inputs bind-mounted
  read-only at ``/mesh/inputs``; outputs bind-mounted at ``/mesh/outputs``.
- ``cap_drop=ALL``, ``no-new-privileges``, user ``run_as_user``
  (``65534:65534``), the engine's default seccomp profile, ``nofile`` ulimit.
- ``pids_limit`` (request, clamped to ``max_pids``), ``mem_limit`` =
  ``memswap_limit`` = request memory (no swap), ``nano_cpus`` = cpus * 1e9.
- wall-clock timeout (request, clamped to ``max_timeout_s``) -> SIGKILL,
  status ``timeout``; output dir polled every ``output_poll_interval_s`` and
  checked after exit -> over cap: kill, outputs discarded, ``output_limit``;
  log streamed to ``on_log`` up to the log cap, then a marker and the stream
  is dropped (the engine's json-file log is size-capped too -- 2 files of
  max(8 x cap, 1 MiB) -- so a log flood costs neither our memory nor the
  engine's disk).
- labels ``<prefix>.node=<node label>``, ``<prefix>.job=<job id>``; the
  container is removed in a cancellation-shielded ``finally``; containers a
  previous run of this node left behind are removed by ``reap_orphans()``
  (called by the shell at start; ``run`` also does it once, lazily).
- GPUs: specific devices from ``GpuAllocator`` via a Docker device request;
  declined up front when NVML sees none or the engine has no GPU runtime.

Measurements: ``cpu_s``, ``peak_memory_bytes`` and ``pids_peak`` come from the
per-job parent cgroup (see ``meshd.exec.cgroups``); they are None when the
engine is remote or uses the systemd cgroup driver. ``duration_s`` is
container start to exit. ``gpu_util_pct`` / ``gpu_memory_bytes`` are sampled
from NVML at each output poll for the job's devices (None without GPUs).

Theory of operation: all engine calls are blocking SDK calls run with
``trio.to_thread.run_sync``. ``run`` creates and starts the container, then
supervises it with three concurrent pieces: a thread blocked in the engine's
``wait`` (abandoned on timeout/cancel, after which the container is killed and
waited for again), two threads pumping the stdout and stderr log streams
(asked of the engine apart) into one ``LogSink`` -- after exit, whatever of
each stream the live pump had not delivered within ``log_drain_timeout_s`` is
read whole from the engine, so no byte under the log cap is lost -- and a
periodic output-dir check. The outcome is classified in a fixed precedence:
cancelled > timeout > output_limit > oom > exit code; a job whose pids peak
reached its ``pids_limit`` (forks failed) is ``failed`` even with exit code 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import trio
from docker.types import LogConfig, Mount, Ulimit

from .base import (
    LOG_STREAMS,
    ExecParams,
    ExecRequest,
    ExecResult,
    Executor,
    InvalidRequest,
    LogCallback,
    LogStream,
    error_result,
)
from .cgroups import CgroupAccounting, CgroupUsage, safe_component
from .gpu import (
    GpuAllocationError,
    GpuAllocator,
    GpuDevice,
    GpuDiscovery,
    device_request,
    discover_gpus,
    engine_gpu_runtime,
    sample_gpus,
)
from .health import health_check
from .health_image import (
    IMAGE_CHANGES,
    HealthImageUnavailable,
    find_static_busybox,
    health_root_tar,
)
from .outputs import LogSink, discard_outputs, measure_dir, over_cap

log = logging.getLogger(__name__)

CONTAINER_INPUTS = "/mesh/inputs"
CONTAINER_OUTPUTS = "/mesh/outputs"
# Engine-side json-file log: two files of max(_ENGINE_LOG_FACTOR * cap, _MIN)
# bytes. json-file stores each line with ~70 bytes of JSON around it, so a
# flood of short lines needs room for several times the cap before the cap is
# reached in our reader; two files, because with one the engine truncates the
# file under a following reader ("Error grabbing logs").
_ENGINE_LOG_FACTOR = 8
_ENGINE_LOG_MIN_BYTES = 1024 * 1024
# Lines asked from the engine for the tail of a truncated log (each <= 16 KiB).
_LOG_TAIL_LINES = 200
_API_POOL_SIZE = 32


@dataclass
class _RunState:
    job_id: str
    container_id: str | None = None
    cancelled: bool = False
    timed_out: bool = False
    output_reason: str | None = None
    gpu_util_samples: list[float] | None = None
    gpu_mem_peak: int | None = None


class DockerExecutor(Executor):
    name = "docker"
    sandboxed = True

    def __init__(
        self,
        params: ExecParams,
        node_label: str,
        *,
        base_url: str | None = None,
        gpus: GpuDiscovery | None = None,
    ) -> None:
        """Connect to the engine (DOCKER_HOST or ``base_url``). Raises if it does not answer."""
        if not node_label:
            raise InvalidRequest("node_label must be non-empty")
        self.params = params
        self.node_label = node_label
        kwargs: dict[str, Any] = docker.utils.kwargs_from_env()
        if base_url is not None:
            kwargs["base_url"] = base_url
        self._api = docker.APIClient(
            **kwargs,
            version="auto",
            timeout=params.docker_api_timeout_s,
            max_pool_size=_API_POOL_SIZE,
        )
        # Waits and log streams may legitimately block for the job's lifetime.
        self._stream_api = docker.APIClient(
            **kwargs,
            version=self._api.api_version,
            timeout=None,
            max_pool_size=_API_POOL_SIZE,
        )
        self.base_url: str = self._api.base_url
        info = self._api.info()
        self.engine_version: str = str(info.get("ServerVersion", "?"))
        self.gpu_runtime = engine_gpu_runtime(info)
        self._runtimes = sorted((info.get("Runtimes") or {}).keys())
        self.max_cpus = (
            params.max_cpus
            if params.max_cpus is not None
            else float(info.get("NCPU") or os.cpu_count() or 1)
        )
        mem_total_mb = int(info.get("MemTotal") or 0) // (1024 * 1024)
        self.max_memory_mb = (
            params.max_memory_mb if params.max_memory_mb is not None else mem_total_mb
        )
        self.gpus = gpus if gpus is not None else discover_gpus()
        self._alloc = GpuAllocator(self.gpus.devices)
        self._acct = self._make_accounting(info)
        self._runs: dict[str, _RunState] = {}
        self._image_cache: dict[str, tuple[bool, float]] = {}
        self._reaped = False
        self._label_node = f"{params.label_prefix}.node"
        self._label_job = f"{params.label_prefix}.job"

    # ------------------------------------------------------------------ info

    def describe(self) -> str:
        acct = f"cgroup v{self._acct.version} accounting" if self._acct else "no cgroup accounting"
        return (
            f"docker engine {self.engine_version} at {self.base_url}; runtimes "
            f"{','.join(self._runtimes)}; GPUs: {len(self.gpus.devices)} ({self.gpus.reason}); {acct}"
        )

    def _make_accounting(self, info: dict[str, Any]) -> CgroupAccounting | None:
        p = self.params
        if not p.cgroup_accounting:
            return None
        local = self.base_url.startswith("http+docker://localhost") or self.base_url.startswith(
            "http+docker://localunixsocket"
        )
        if not local or info.get("CgroupDriver") != "cgroupfs":
            return None
        acct = CgroupAccounting(p.cgroup_root, f"{p.label_prefix}-{self.node_label}")
        if not acct.usable() or str(acct.version) != str(info.get("CgroupVersion", acct.version)):
            return None
        return acct

    # --------------------------------------------------------------- decline

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
        reason = self._static_decline(gpus, gpu_min_memory_mb, network, cpus, memory_mb)
        if reason is None and not self.params.pull_images and not self._image_present_cached(image):
            reason = f"image {image} not present locally"
        return reason

    def _static_decline(
        self, gpus: int, gpu_min_memory_mb: int, network: bool, cpus: float, memory_mb: int
    ) -> str | None:
        if network and not self.params.allow_network:
            return "network not allowed by node"
        if cpus > self.max_cpus:
            return f"job wants {cpus:g} CPUs, node offers at most {self.max_cpus:g}"
        if memory_mb > self.max_memory_mb:
            return f"job wants {memory_mb} MiB memory, node offers at most {self.max_memory_mb}"
        if gpus > 0:
            if not self.gpus.devices:
                return f"node has no GPU ({self.gpus.reason})"
            if self.gpu_runtime is None and not self.params.assume_gpu_runtime:
                return (
                    f"engine has no GPU runtime (runtimes: {', '.join(self._runtimes) or 'none'})"
                )
            return self._alloc.why_not(gpus, gpu_min_memory_mb)
        return None

    def local_images(self, limit: int = 256) -> list[str]:
        """Tags of the images present in the engine (advertised so origins know
        which jobs this node can run without asking). Blocking: call in a thread."""
        tags: list[str] = []
        for img in self._api.images():
            for tag in img.get("RepoTags") or ():
                if tag and tag != "<none>:<none>":
                    tags.append(tag)
        return sorted(tags)[:limit]

    def local_image_ids(self, limit: int = 256) -> dict[str, str]:
        """Tag -> image id of the images present in the engine (the id is part
        of a job's determinism class). Blocking: call in a thread."""
        ids: dict[str, str] = {}
        for img in self._api.images():
            for tag in img.get("RepoTags") or ():
                if tag and tag != "<none>:<none>" and len(ids) < limit:
                    ids[tag] = str(img.get("Id") or "")
        return ids

    def _image_present_cached(self, image: str) -> bool:
        now = time.monotonic()
        hit = self._image_cache.get(image)
        if hit is not None and now - hit[1] < self.params.image_check_ttl_s:
            return hit[0]
        present = self._image_present(image)
        self._image_cache[image] = (present, now)
        return present

    def _image_present(self, image: str) -> bool:
        try:
            self._api.inspect_image(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException:
            return False

    # ------------------------------------------------------------------- run

    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        if req.job_id in self._runs:
            raise InvalidRequest(f"job {req.job_id!r} is already running on this executor")
        if not self._reaped:
            await self.reap_orphans()
        reason = self._static_decline(
            req.gpus, req.gpu_min_memory_mb, req.network, req.cpus, req.memory_mb
        )
        if reason is not None:
            return error_result(f"declined: {reason}")
        if not await trio.to_thread.run_sync(self._ensure_image, req.image):
            return error_result(f"declined: image {req.image} not present locally")
        state = _RunState(req.job_id)
        self._runs[req.job_id] = state
        try:
            try:
                devices = self._alloc.allocate(req.job_id, req.gpus, req.gpu_min_memory_mb)
            except GpuAllocationError as e:
                return error_result(f"declined: {e}")
            return await self._run_container(req, on_log, state, devices)
        finally:
            self._alloc.release(req.job_id)
            del self._runs[req.job_id]

    def _ensure_image(self, image: str) -> bool:
        if self._image_present(image):
            self._image_cache[image] = (True, time.monotonic())
            return True
        if not self.params.pull_images:
            return False
        try:
            self._api.pull(image)
        except docker.errors.DockerException as e:
            log.warning("pull of %s failed: %s", image, e)
            return False
        return self._image_present(image)

    async def _run_container(
        self,
        req: ExecRequest,
        on_log: LogCallback | None,
        state: _RunState,
        devices: tuple[GpuDevice, ...],
    ) -> ExecResult:
        p = self.params
        sink = LogSink(on_log, cap=p.effective_log_cap(req), tail_bytes=p.log_tail_bytes)
        name = (
            f"{p.label_prefix}-{safe_component(self.node_label, 32)}-"
            f"{safe_component(req.job_id, 64)}-{secrets.token_hex(3)}"
        )
        cgroup_parent = self._acct.parent_for(name) if self._acct else None
        try:
            self._prepare_output_dir(req.output_dir)
        except OSError as e:
            return error_result(f"cannot prepare output dir {req.output_dir}: {e}")
        create_kwargs = self._create_kwargs(req, name, cgroup_parent, devices)
        t_start: float | None = None
        t_end: float | None = None
        try:
            try:
                created = await trio.to_thread.run_sync(
                    lambda: self._api.create_container(**create_kwargs)
                )
            except docker.errors.DockerException as e:
                return error_result(f"engine refused to create the container: {_explain(e)}")
            cid = created["Id"]
            state.container_id = cid
            if state.cancelled:
                return _cancelled(0.0)
            try:
                t_start = time.monotonic()
                await trio.to_thread.run_sync(self._api.start, cid)
            except docker.errors.DockerException as e:
                return error_result(f"container failed to start: {_explain(e)}")
            exit_code = await self._supervise(req, cid, sink, state, devices)
            t_end = time.monotonic()
            inspect = await trio.to_thread.run_sync(self._api.inspect_container, cid)
            if sink.truncated:
                sink.replace_tail(await trio.to_thread.run_sync(self._engine_log_tail, cid))
            usage = (
                self._acct.read(cgroup_parent)
                if self._acct and cgroup_parent
                else CgroupUsage(None, None, None)
            )
            if state.output_reason is None and not (state.cancelled or state.timed_out):
                usage_dir = await trio.to_thread.run_sync(
                    lambda: measure_dir(req.output_dir, max_entries=p.max_output_entries)
                )
                state.output_reason = over_cap(usage_dir, max_bytes=p.effective_output_cap(req))
            result = self._classify(
                req, state, exit_code, inspect, usage, sink, devices, t_end - t_start
            )
            return dataclasses.replace(result, image_id=str(inspect.get("Image") or ""))
        finally:
            with trio.CancelScope(shield=True):
                if state.container_id is not None:
                    await trio.to_thread.run_sync(self._remove, state.container_id)
                if self._acct and cgroup_parent:
                    self._acct.remove(cgroup_parent)
                    if len(self._runs) == 1:  # only us: no other job is creating its cgroup
                        self._acct.remove_node_dir()
                if state.output_reason is not None:
                    await trio.to_thread.run_sync(discard_outputs, req.output_dir)

    def _create_kwargs(
        self, req: ExecRequest, name: str, cgroup_parent: str | None, devices: tuple[GpuDevice, ...]
    ) -> dict[str, Any]:
        p = self.params
        mounts = [
            Mount(
                target=CONTAINER_OUTPUTS, source=str(req.output_dir), type="bind", read_only=False
            )
        ]
        if req.input_dir is not None:
            mounts.append(
                Mount(
                    target=CONTAINER_INPUTS, source=str(req.input_dir), type="bind", read_only=True
                )
            )
        engine_log_bytes = max(_ENGINE_LOG_FACTOR * p.effective_log_cap(req), _ENGINE_LOG_MIN_BYTES)
        host_config = self._api.create_host_config(
            network_mode=p.network_mode_allowed if (req.network and p.allow_network) else "none",
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={p.tmpfs_size_mb}m"},
            mounts=mounts,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=p.effective_pids_limit(req),
            mem_limit=req.memory_mb * 1024 * 1024,
            memswap_limit=req.memory_mb * 1024 * 1024,
            nano_cpus=int(req.cpus * 1e9),
            ulimits=[Ulimit(name="nofile", soft=p.nofile_limit, hard=p.nofile_limit)],
            log_config=LogConfig(
                type="json-file", config={"max-size": str(engine_log_bytes), "max-file": "2"}
            ),
            cgroup_parent=cgroup_parent,
            device_requests=[device_request(devices)] if devices else None,
            ipc_mode="private",
            init=False,
        )
        env = {
            "MESH_INPUTS": CONTAINER_INPUTS,
            "MESH_OUTPUTS": CONTAINER_OUTPUTS,
            "MESH_JOB_ID": req.job_id,
        }
        env.update(req.env)
        return dict(
            image=req.image,
            command=list(req.command),
            name=name,
            user=p.run_as_user,
            environment=env,
            labels={self._label_node: self.node_label, self._label_job: req.job_id},
            host_config=host_config,
            network_disabled=not (req.network and p.allow_network),
            hostname="mesh-job",
        )

    def _prepare_output_dir(self, path: Path) -> None:
        """The container's user must be able to write the bind-mounted output dir."""
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            uid, gid = self.params.run_as_ids()
            os.chown(path, uid, gid)
            os.chmod(path, 0o750)
        else:
            # We cannot chown: open the (per-job) dir to the container's uid.
            os.chmod(path, 0o777)

    async def _supervise(
        self,
        req: ExecRequest,
        cid: str,
        sink: LogSink,
        state: _RunState,
        devices: tuple[GpuDevice, ...],
    ) -> int | None:
        out_done, err_done = trio.Event(), trio.Event()
        taken = dict.fromkeys(LOG_STREAMS, 0)
        closed = False

        def take(name: LogStream, chunk: bytes) -> None:
            """Forward a chunk of the live stream (in the trio thread), unless caught up."""
            if not closed:
                taken[name] += len(chunk)
                sink.feed(name, chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_logs, cid, "stdout", take, sink, out_done)
            nursery.start_soon(self._pump_logs, cid, "stderr", take, sink, err_done)
            nursery.start_soon(self._watch, req, cid, state, devices)
            with trio.move_on_after(self.params.effective_timeout_s(req)) as scope:
                # trio-stubs (from trio-typing, a libp2p dependency) shadow trio's inline types
                # and still name this argument `cancellable`, its pre-0.23 name.
                code = await trio.to_thread.run_sync(self._wait, cid, abandon_on_cancel=True)  # type: ignore[call-arg]
            if scope.cancelled_caught:
                state.timed_out = True
                await self._kill(cid)
                code = await trio.to_thread.run_sync(self._wait, cid)
            with trio.move_on_after(self.params.log_drain_timeout_s):
                await out_done.wait()
                await err_done.wait()
            nursery.cancel_scope.cancel()
        closed = True
        for name in LOG_STREAMS:  # what the live streams had not delivered yet
            if sink.truncated:
                break
            whole = await trio.to_thread.run_sync(self._engine_stream, cid, name)
            if len(whole) > taken[name]:
                sink.feed(name, whole[taken[name] :])
        return code

    def _engine_stream(self, cid: str, name: LogStream) -> bytes:
        """One whole stream of an exited container, as the engine stored it."""
        try:
            return bytes(self._api.logs(cid, stdout=name == "stdout", stderr=name == "stderr"))
        except docker.errors.DockerException:
            return b""

    def _wait(self, cid: str) -> int | None:
        try:
            return int(self._stream_api.wait(cid)["StatusCode"])
        except docker.errors.NotFound:
            return None

    async def _pump_logs(
        self,
        cid: str,
        name: LogStream,
        take: LogCallback,
        sink: LogSink,
        done: trio.Event,
    ) -> None:
        holder: list[Any] = []

        def pump() -> None:
            try:
                stream = self._stream_api.logs(
                    cid,
                    stream=True,
                    follow=True,
                    stdout=name == "stdout",
                    stderr=name == "stderr",
                )
                holder.append(stream)
                for chunk in stream:
                    trio.from_thread.run_sync(take, name, chunk)
                    if sink.truncated:
                        break  # stop reading: the engine's own log file is capped
            except Exception as e:  # stream closed under us, container gone
                log.debug("log stream of %s ended: %s", cid[:12], e)
            finally:
                if holder:
                    holder[0].close()

        try:
            # trio-stubs name `abandon_on_cancel` by its pre-0.23 name (see _supervise).
            await trio.to_thread.run_sync(pump, abandon_on_cancel=True)  # type: ignore[call-arg]
        finally:
            if holder:
                try:
                    holder[0].close()
                except Exception:
                    pass
            done.set()

    async def _watch(
        self, req: ExecRequest, cid: str, state: _RunState, devices: tuple[GpuDevice, ...]
    ) -> None:
        """Periodic output-dir check (and GPU sampling) while the job runs."""
        p = self.params
        cap = p.effective_output_cap(req)
        uuids = [d.uuid for d in devices]
        while True:
            await trio.sleep(p.output_poll_interval_s)
            usage = await trio.to_thread.run_sync(
                lambda: measure_dir(req.output_dir, max_entries=p.max_output_entries)
            )
            reason = over_cap(usage, max_bytes=cap)
            if reason is not None:
                state.output_reason = reason
                await self._kill(cid)
                return
            if uuids:
                sample = await trio.to_thread.run_sync(sample_gpus, uuids)
                if sample is not None:
                    state.gpu_util_samples = (state.gpu_util_samples or []) + [sample[0]]
                    state.gpu_mem_peak = max(state.gpu_mem_peak or 0, sample[1])

    async def _kill(self, cid: str) -> None:
        def kill() -> None:
            try:
                self._api.kill(cid)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:  # 409: not running any more
                if e.status_code != 409:
                    raise

        await trio.to_thread.run_sync(kill)

    def _remove(self, cid: str) -> None:
        try:
            self._api.remove_container(cid, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            # 409 "removal already in progress" is fine; anything else is logged,
            # and reap_orphans() will find the container by its labels.
            if e.status_code != 409:
                log.error("could not remove container %s: %s", cid[:12], e)

    def _engine_log_tail(self, cid: str) -> bytes:
        try:
            return bytes(self._api.logs(cid, stdout=True, stderr=True, tail=_LOG_TAIL_LINES))
        except docker.errors.DockerException:
            return b""

    def _classify(
        self,
        req: ExecRequest,
        state: _RunState,
        exit_code: int | None,
        inspect: dict[str, Any],
        usage: CgroupUsage,
        sink: LogSink,
        devices: tuple[GpuDevice, ...],
        duration_s: float,
    ) -> ExecResult:
        st = inspect.get("State") or {}
        pids_limit = self.params.effective_pids_limit(req)
        notes = []
        pids_hit = usage.pids_peak is not None and usage.pids_peak >= pids_limit
        if pids_hit:
            notes.append(f"process limit reached ({usage.pids_peak}/{pids_limit} pids)")
        if sink.truncated:
            notes.append(f"log truncated at {sink.forwarded} of {sink.seen}+ bytes")
        mem_limit = req.memory_mb * 1024 * 1024
        oom = bool(st.get("OOMKilled")) or (
            exit_code == 137
            and usage.peak_memory_bytes is not None
            and usage.peak_memory_bytes >= mem_limit * 0.98
        )
        if state.cancelled:
            status, reason = "cancelled", "cancelled by request"
        elif state.timed_out:
            status, reason = (
                "timeout",
                f"killed after the {self.params.effective_timeout_s(req):g} s wall-clock limit",
            )
        elif state.output_reason is not None:
            status, reason = "output_limit", f"{state.output_reason}; outputs discarded"
        elif oom:
            status, reason = "oom", f"out of memory (limit {req.memory_mb} MiB)"
        elif exit_code == 0 and not pids_hit:
            status, reason = "succeeded", "exit code 0"
        else:
            # A job that ran into its process limit had forks fail; shells and
            # many programs swallow that, so its exit code 0 proves nothing.
            status = "failed"
            reason = "exit code 0 not trusted" if exit_code == 0 else _exit_reason(exit_code)
        if notes:
            reason = f"{reason}; {'; '.join(notes)}"
        util = state.gpu_util_samples
        return ExecResult(
            status=status,  # type: ignore[arg-type]
            exit_code=exit_code,
            reason=reason,
            duration_s=duration_s,
            cpu_s=usage.cpu_s,
            peak_memory_bytes=usage.peak_memory_bytes,
            gpu_devices=tuple(d.uuid for d in devices),
            gpu_util_pct=(sum(util) / len(util)) if util else None,
            gpu_memory_bytes=state.gpu_mem_peak,
            log_tail=sink.tail(),
            pids_peak=usage.pids_peak,
        )

    # ------------------------------------------------------ cancel / reaping

    async def cancel(self, job_id: str) -> None:
        state = self._runs.get(job_id)
        if state is None:
            return
        state.cancelled = True
        if state.container_id is not None:
            await self._kill(state.container_id)

    async def reap_orphans(self) -> int:
        self._reaped = True

        def reap() -> int:
            found = self._api.containers(
                all=True, filters={"label": f"{self._label_node}={self.node_label}"}
            )
            n = 0
            for c in found:
                # A job of ours registers in _runs before its container exists,
                # so a run starting while we list is never mistaken for an orphan.
                if (c.get("Labels") or {}).get(self._label_job) in self._runs:
                    continue
                self._remove(c["Id"])
                n += 1
            return n

        n = await trio.to_thread.run_sync(reap)
        if self._acct is not None and not self._runs:
            self._acct.reap()
        if n:
            log.warning("removed %d orphaned container(s) of node %s", n, self.node_label)
        return n

    async def health_check(self) -> ExecResult:
        """Build the health-check image if it is missing (no registry), then run
        the health job with it; a reason that names the fix when neither works."""
        problem = await trio.to_thread.run_sync(self.ensure_health_image)
        if problem is not None:
            return error_result(problem)
        return await health_check(self, self.params)

    # ------------------------------------------------------------ images

    def ensure_health_image(self) -> str | None:
        """Import ``health_check_image`` from the host's static busybox when the
        engine lacks it (``meshd.exec.health_image``). None when it is there
        (now), else why not, with the command that fixes it. Blocking."""
        image = self.params.health_check_image
        if self._image_present(image):
            return None
        repo, _, tag = image.rpartition(":")
        if not repo or "/" in tag:
            repo, tag = image, "latest"
        try:
            busybox = find_static_busybox(self.params.busybox_paths)
            root = health_root_tar(busybox)
            self._api.import_image_from_data(
                root, repository=repo, tag=tag, changes=list(IMAGE_CHANGES)
            )
        except HealthImageUnavailable as exc:
            return f"health-check image {image} missing; {exc}"
        except (OSError, docker.errors.DockerException) as exc:
            return f"health-check image {image} is missing; building it failed: {_explain(exc)}"
        log.info("built health-check image %s from %s", image, busybox)
        self._image_cache.pop(image, None)
        return None if self._image_present(image) else f"health-check image {image} missing"

    def image_id(self, ref: str) -> str | None:
        """The engine's id of image ``ref`` (a name or an id), or None. Blocking."""
        try:
            return str(self._api.inspect_image(ref).get("Id") or "") or None
        except docker.errors.DockerException:
            return None

    def image_size(self, ref: str) -> int:
        """Bytes the image takes in the engine (0 if unknown). Blocking."""
        try:
            return int(self._api.inspect_image(ref).get("Size") or 0)
        except docker.errors.DockerException:
            return 0

    def save_image(self, ref: str) -> Any:
        """``docker save`` of one image: an iterator of byte chunks. Blocking."""
        return self._stream_api.get_image(ref)

    def load_image(self, data: bytes) -> None:
        """``docker load`` of an archive; raises RuntimeError with the engine's
        reason when it refuses (e.g. a layer that does not match its digest)."""
        try:
            for msg in self._stream_api.load_image(data, quiet=True):
                if isinstance(msg, dict) and msg.get("error"):
                    raise RuntimeError(str(msg["error"]).strip())
        except docker.errors.DockerException as exc:
            raise RuntimeError(_explain(exc)) from None
        self._image_cache.clear()

    def remove_image(self, image_id: str) -> str | None:
        """Remove an image: its tags one by one, then the id, never forced (an
        image a container uses stays). None when removed, else why not. Blocking."""
        try:
            tags = self._api.inspect_image(image_id).get("RepoTags") or []
            for ref in [*tags, image_id]:
                self._api.remove_image(ref, force=False)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as exc:
            return _explain(exc)
        finally:
            self._image_cache.clear()
        return None

    def pull_image(self, ref: str) -> str | None:
        """Pull ``ref`` from its registry (only where ``pull_images`` allows);
        the pulled image's id, or None. Blocking."""
        if not self.params.pull_images:
            return None
        try:
            self._api.pull(ref)
        except docker.errors.DockerException as exc:
            log.warning("pull of %s failed: %s", ref, _explain(exc))
            return None
        self._image_cache.clear()
        return self.image_id(ref)

    def close(self) -> None:
        """Close the engine connections (runs must have finished)."""
        self._api.close()
        self._stream_api.close()


def _cancelled(duration_s: float) -> ExecResult:
    return ExecResult(
        status="cancelled", exit_code=None, reason="cancelled by request", duration_s=duration_s
    )


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exit code unknown (container vanished)"
    if code > 128:
        return f"exit code {code} (killed by signal {code - 128})"
    return f"exit code {code}"


def _explain(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip()
