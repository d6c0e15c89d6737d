"""DockerExecutor against a real engine (``eval "$(tests/docker_env.sh start)"``).

Each test states the user-visible behaviour it checks. No mocks: a missing
engine skips these tests with the reason (see meshd.testing.docker_fixtures).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from meshd.exec import ExecParams, ExecRequest, make_executor
from meshd.exec.docker_exec import DockerExecutor
from meshd.exec.gpu import GpuDevice, GpuDiscovery
from meshd.testing.docker_fixtures import TEST_IMAGE, labelled_containers

pytestmark = pytest.mark.docker

MiB = 1024 * 1024


def req(tmp_path: Path, *command: str, job_id: str = "job-1", **kw: object) -> ExecRequest:
    kw.setdefault("output_dir", tmp_path / "out")
    kw.setdefault("memory_mb", 64)
    kw.setdefault("timeout_s", 20.0)
    return ExecRequest(job_id=job_id, image=TEST_IMAGE, command=tuple(command), **kw)  # type: ignore[arg-type]


async def test_outputs_come_back_and_inputs_are_read_only(docker_executor, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "data.txt").write_bytes(b"hello mesh\n")
    script = (
        'sha256sum "$MESH_INPUTS/data.txt" | head -c 64 > "$MESH_OUTPUTS/digest"; '
        'echo "$GREETING" > "$MESH_OUTPUTS/env"; '
        'if touch "$MESH_INPUTS/new" 2>/dev/null; then echo inputs-writable; exit 3; fi; '
        "echo done"
    )
    logs: list[bytes] = []
    res = await docker_executor.run(
        req(tmp_path, "sh", "-c", script, input_dir=inputs, env={"GREETING": "hi"}),
        on_log=lambda _s, b: logs.append(b),
    )
    assert res.status == "succeeded", res
    assert res.exit_code == 0
    out = tmp_path / "out"
    assert (out / "digest").read_text() == hashlib.sha256(b"hello mesh\n").hexdigest()
    assert (out / "env").read_text() == "hi\n"
    assert b"".join(logs) == b"done\n"
    assert res.log_tail == b"done\n"
    assert res.duration_s > 0
    if docker_executor._acct is not None:  # local cgroupfs engine: measured
        assert res.cpu_s is not None and res.cpu_s > 0
        assert res.peak_memory_bytes is not None and res.peak_memory_bytes > 0


async def test_sandbox_is_locked_down(docker_executor, tmp_path):
    # Non-root, no capabilities, no-new-privileges, read-only root, small noexec /tmp.
    script = (
        "id -u > $MESH_OUTPUTS/uid; "
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > $MESH_OUTPUTS/status; "
        "touch /etc/x 2>> $MESH_OUTPUTS/rootfs; touch /x 2>> $MESH_OUTPUTS/rootfs; "
        "touch /tmp/ok && echo tmp-ok > $MESH_OUTPUTS/tmp; "
        "cp /bin/busybox /tmp/bb && /tmp/bb true 2>> $MESH_OUTPUTS/noexec; "
        "exit 0"
    )
    res = await docker_executor.run(req(tmp_path, "sh", "-c", script))
    assert res.status == "succeeded", res
    out = tmp_path / "out"
    assert (out / "uid").read_text().strip() == "65534"
    status = (out / "status").read_text()
    assert "CapEff:\t0000000000000000" in status
    assert "NoNewPrivs:\t1" in status
    assert (out / "rootfs").read_text().count("Read-only file system") == 2
    assert (out / "tmp").read_text() == "tmp-ok\n"
    assert "Permission denied" in (out / "noexec").read_text()


async def test_writing_outside_outputs_fails(docker_executor, tmp_path):
    res = await docker_executor.run(req(tmp_path, "sh", "-c", "echo x > /mesh/escape"))
    assert res.status == "failed"
    assert res.exit_code != 0
    assert b"Read-only file system" in res.log_tail


async def _one_connection(listener: trio.SocketListener, got: list[bytes]) -> None:
    stream = await listener.accept()
    async with stream:
        got.append(await stream.receive_some(100))


def _bridge_gateway(docker_api) -> str | None:
    """The host's address on the engine's default bridge (gateway, else first host of the subnet)."""
    try:
        cfg = docker_api.inspect_network("bridge")["IPAM"]["Config"]
    except Exception:
        return None
    if not cfg:
        return None
    if cfg[0].get("Gateway"):
        return cfg[0]["Gateway"]
    return str(next(ipaddress.ip_network(cfg[0]["Subnet"]).hosts()))


async def test_network_is_off_unless_job_asks_and_node_allows(
    make_docker_executor, docker_api, tmp_path
):
    gateway = _bridge_gateway(docker_api)
    if gateway is None:
        pytest.skip("engine has no bridge network to run the positive control on")
    listeners = await trio.open_tcp_listeners(0, host=gateway)
    port = listeners[0].socket.getsockname()[1]
    probe = f"echo ping | nc -w 3 {gateway} {port} && echo connected"
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_one_connection, listeners[0], got)
        # Default node: no network; a job that does not ask cannot connect...
        closed = make_docker_executor()
        res = await closed.run(req(tmp_path, "sh", "-c", probe, job_id="no-net"))
        assert res.status == "failed"
        assert b"Network is unreachable" in res.log_tail
        # ...and a job that asks is declined, with the reason.
        assert (
            closed.decline_reason(
                image=TEST_IMAGE, gpus=0, gpu_min_memory_mb=0, network=True, cpus=1, memory_mb=64
            )
            == "network not allowed by node"
        )
        res = await closed.run(req(tmp_path, "sh", "-c", probe, job_id="asks", network=True))
        assert res.status == "error" and "network not allowed by node" in res.reason
        assert got == []
        # Positive control: same probe, node allows and job asks -> it connects.
        open_ = make_docker_executor(allow_network=True)
        res = await open_.run(req(tmp_path, "sh", "-c", probe, job_id="net", network=True))
        assert res.status == "succeeded", res
        assert b"connected" in res.log_tail
        nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
    assert got == [b"ping\n"]


async def test_fork_bomb_is_contained_and_node_still_works(docker_executor, docker_api, tmp_path):
    # Every process forks two that do the same, and all of them stay alive.
    bomb = "b() { b & b & wait; }; b"
    res = await docker_executor.run(
        req(tmp_path, "sh", "-c", bomb, pids_limit=32, cpus=0.5, timeout_s=2.0)
    )
    assert res.status in ("timeout", "failed"), res
    if docker_executor._acct is not None:  # pids peak is measured: the limit is named
        assert res.pids_peak == 32
        assert "process limit reached (32/32 pids)" in res.reason
    assert labelled_containers(docker_api, docker_executor.node_label) == []
    after = await docker_executor.run(req(tmp_path, "echo", "alive", job_id="after"))
    assert after.status == "succeeded" and after.log_tail == b"alive\n"


async def test_memory_over_limit_is_oom(docker_executor, tmp_path):
    res = await docker_executor.run(
        req(tmp_path, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", memory_mb=32)
    )
    assert res.status == "oom", res
    assert res.reason == "out of memory (limit 32 MiB)"


async def test_timeout_kills_and_removes_container(docker_executor, docker_api, tmp_path):
    res = await docker_executor.run(req(tmp_path, "sleep", "30", timeout_s=1.0))
    assert res.status == "timeout", res
    assert 1.0 <= res.duration_s < 5.0
    assert "1 s wall-clock limit" in res.reason
    assert labelled_containers(docker_api, docker_executor.node_label) == []


async def test_output_flood_after_exit_is_output_limit(docker_executor, tmp_path):
    cmd = ("dd", "if=/dev/zero", "of=/mesh/outputs/big", "bs=1M", "count=4")
    res = await docker_executor.run(req(tmp_path, *cmd, max_output_bytes=1 * MiB))
    assert res.status == "output_limit", res
    assert "cap is 1048576" in res.reason
    assert list((tmp_path / "out").iterdir()) == []  # discarded


async def test_output_flood_while_running_is_stopped(docker_executor, tmp_path):
    # Never exits by itself: only the running output check can stop it in time.
    flood = (
        "i=0; while true; do i=$((i+1)); "
        "dd if=/dev/zero of=/mesh/outputs/f$i bs=64k count=1 2>/dev/null; done"
    )
    with trio.fail_after(10):
        res = await docker_executor.run(
            req(tmp_path, "sh", "-c", flood, max_output_bytes=2 * MiB, timeout_s=30)
        )
    assert res.status == "output_limit", res
    assert list((tmp_path / "out").iterdir()) == []


async def test_every_byte_of_stdout_and_stderr_arrives_apart_even_when_the_stream_lags(
    make_docker_executor, tmp_path
):
    # No time at all to drain the live streams after exit: what they did not
    # deliver must still come, from the engine's stored streams.
    ex = make_docker_executor(log_drain_timeout_s=0.0)
    got: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    script = (
        'i=1; while [ $i -le 300 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; exit 3'
    )
    res = await ex.run(req(tmp_path, "sh", "-c", script), on_log=lambda s, b: got[s].extend(b))
    assert (res.status, res.exit_code) == ("failed", 3), res
    assert bytes(got["stdout"]) == b"".join(b"out %d\n" % i for i in range(1, 301))
    assert bytes(got["stderr"]) == b"".join(b"err %d\n" % i for i in range(1, 301))


async def test_log_flood_is_capped(docker_executor, tmp_path):
    cap = 64 * 1024
    seen: list[bytes] = []
    res = await docker_executor.run(
        req(tmp_path, "sh", "-c", "yes flood | head -c 5000000; echo END", max_log_bytes=cap),
        on_log=lambda _s, b: seen.append(b),
    )
    assert res.status == "succeeded", res
    streamed = b"".join(seen)
    assert streamed.startswith(b"flood\nflood\n")
    assert streamed.endswith(b"[meshd: log truncated after 65536 bytes]\n")
    assert len(streamed) <= cap + 100
    assert "log truncated" in res.reason
    assert res.log_tail.endswith(b"END\n")  # the engine-side tail is still there
    assert len(res.log_tail) <= docker_executor.params.log_tail_bytes


async def test_cancel_stops_the_job(docker_executor, docker_api, tmp_path):
    started = trio.Event()
    result = []

    async def run() -> None:
        result.append(
            await docker_executor.run(
                req(tmp_path, "sh", "-c", "echo go; sleep 30", job_id="to-cancel"),
                on_log=lambda _s, b: started.set(),
            )
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await started.wait()
            await docker_executor.cancel("to-cancel")
    assert result[0].status == "cancelled"
    assert labelled_containers(docker_api, docker_executor.node_label) == []
    await docker_executor.cancel("unknown-job")  # no-op


async def test_trio_cancellation_of_run_still_removes_container(
    docker_executor, docker_api, tmp_path
):
    started = trio.Event()
    with trio.move_on_after(10) as outer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: docker_executor.run(
                    req(tmp_path, "sh", "-c", "echo go; sleep 30"),
                    on_log=lambda _s, b: started.set(),
                )
            )
            await started.wait()
            nursery.cancel_scope.cancel()
    assert not outer.cancelled_caught
    assert labelled_containers(docker_api, docker_executor.node_label) == []


_OWNER = textwrap.dedent("""
    import sys, trio
    from pathlib import Path
    from meshd.exec import ExecParams, ExecRequest
    from meshd.exec.docker_exec import DockerExecutor

    async def main():
        ex = DockerExecutor(ExecParams(), sys.argv[1])
        def on_log(s, b):
            sys.stdout.write("STARTED\\n"); sys.stdout.flush()
        await ex.run(ExecRequest(job_id="orphan", image=sys.argv[3], output_dir=Path(sys.argv[2]),
                                 command=("sh", "-c", "echo up; sleep 120")), on_log=on_log)

    trio.run(main)
""")


async def test_orphan_of_killed_owner_is_reaped(
    make_docker_executor, docker_api, node_label, tmp_path
):
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _OWNER, node_label, str(tmp_path / "out"), TEST_IMAGE],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        with trio.fail_after(20):
            buf = b""
            while b"STARTED" not in buf:
                chunk = await proc.stdout.receive_some(100)
                assert chunk, "owner process exited before the job started"
                buf += chunk
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    left = labelled_containers(docker_api, node_label)
    assert len(left) == 1 and left[0]["State"] == "running"
    successor = make_docker_executor()
    assert await successor.reap_orphans() == 1
    assert labelled_containers(docker_api, node_label) == []
    assert await successor.reap_orphans() == 0


async def test_gpu_job_is_declined_on_gpu_less_node(docker_executor, tmp_path):
    reason = docker_executor.decline_reason(
        image=TEST_IMAGE, gpus=1, gpu_min_memory_mb=0, network=False, cpus=1, memory_mb=64
    )
    assert reason is not None and reason.startswith("node has no GPU (NVML:")
    res = await docker_executor.run(req(tmp_path, "true", gpus=1))
    assert res.status == "error" and "node has no GPU" in res.reason


async def test_gpu_job_declined_when_engine_has_no_gpu_runtime(make_docker_executor, node_label):
    # NVML would see a card, but this engine cannot hand it to a container.
    fake = GpuDiscovery(
        (GpuDevice(index=0, uuid="GPU-0", name="NVIDIA A100", memory_total_mb=40960),), "ok"
    )
    ex = DockerExecutor(ExecParams(), node_label, gpus=fake)
    try:
        reason = ex.decline_reason(
            image=TEST_IMAGE, gpus=1, gpu_min_memory_mb=0, network=False, cpus=1, memory_mb=64
        )
        assert reason is not None and reason.startswith("engine has no GPU runtime (runtimes: ")
    finally:
        ex.close()


async def test_declines_missing_image_and_oversized_jobs(docker_executor, tmp_path):
    d = docker_executor.decline_reason
    assert (
        d(
            image="meshd/does-not-exist:1",
            gpus=0,
            gpu_min_memory_mb=0,
            network=False,
            cpus=1,
            memory_mb=64,
        )
        == "image meshd/does-not-exist:1 not present locally"
    )
    assert (
        d(image=TEST_IMAGE, gpus=0, gpu_min_memory_mb=0, network=False, cpus=1, memory_mb=64)
        is None
    )
    assert "CPUs" in d(
        image=TEST_IMAGE, gpus=0, gpu_min_memory_mb=0, network=False, cpus=1000, memory_mb=64
    )
    assert "memory" in d(
        image=TEST_IMAGE, gpus=0, gpu_min_memory_mb=0, network=False, cpus=1, memory_mb=10**9
    )
    res = await docker_executor.run(
        ExecRequest(
            job_id="j", image="meshd/does-not-exist:1", command=("true",), output_dir=tmp_path
        )
    )
    assert res.status == "error" and "not present locally" in res.reason


async def test_exit_code_is_reported(docker_executor, tmp_path):
    res = await docker_executor.run(req(tmp_path, "sh", "-c", "exit 7"))
    assert (res.status, res.exit_code, res.reason) == ("failed", 7, "exit code 7")


async def test_health_check_and_factory(docker_executor, node_label):
    res = await docker_executor.health_check()
    assert res.status == "succeeded", res
    ex, why = make_executor("auto", ExecParams(), node_label)
    try:
        assert isinstance(ex, DockerExecutor)
        assert why.startswith("docker executor (auto: engine answered)")
    finally:
        ex.close()


async def test_result_names_the_image_id_it_ran(docker_executor, tmp_path):
    """The determinism class (specs/CREDITS.md §5) uses the id of the image a
    run used, and a bid the id listed for the job's tag: the two are one id."""
    ids = await trio.to_thread.run_sync(docker_executor.local_image_ids)
    assert ids[TEST_IMAGE].startswith("sha256:")
    res = await docker_executor.run(req(tmp_path, "true"))
    assert res.ok, res.reason
    assert res.image_id == ids[TEST_IMAGE]
