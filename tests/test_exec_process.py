"""ProcessExecutor: opt-in, unsandboxed subprocesses with the same result contract."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil
import pytest
import trio

from meshd.exec import ExecParams, ExecRequest, ExecutorUnavailable, make_executor
from meshd.exec.process_exec import ProcessExecutor

MiB = 1024 * 1024


@pytest.fixture
def pex() -> ProcessExecutor:
    return ProcessExecutor(
        ExecParams(process_executor_enabled=True, output_poll_interval_s=0.1), "t-proc"
    )


def req(tmp_path: Path, script: str, job_id: str = "p-1", **kw: object) -> ExecRequest:
    kw.setdefault("output_dir", tmp_path / "out")
    kw.setdefault("timeout_s", 20.0)
    return ExecRequest(job_id=job_id, image="ignored", command=("sh", "-c", script), **kw)  # type: ignore[arg-type]


def test_refuses_unless_opted_in():
    # The message names the real configuration key (issue 12).
    with pytest.raises(ExecutorUnavailable, match="allow_process_executor = true"):
        ProcessExecutor(ExecParams(), "n")


def test_warns_loudly_that_it_is_unsandboxed(caplog):
    with caplog.at_level(logging.WARNING):
        ProcessExecutor(ExecParams(process_executor_enabled=True), "n")
    assert any("UNSANDBOXED" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_factory_process_kind():
    ex, why = make_executor("process", ExecParams(process_executor_enabled=True), "n")
    assert isinstance(ex, ProcessExecutor) and "UNSANDBOXED" in why
    with pytest.raises(ExecutorUnavailable):
        make_executor("process", ExecParams(), "n")


async def test_outputs_env_and_logs(pex, tmp_path, monkeypatch):
    monkeypatch.setenv("MESHD_SECRET_FOR_TEST", "leak")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a").write_text("A")
    logs: list[bytes] = []
    script = (
        'cat "$MESH_INPUTS/a" > "$MESH_OUTPUTS/copy"; echo "[$MESHD_SECRET_FOR_TEST]"; '
        'echo "$GREETING"; pwd > "$MESH_OUTPUTS/cwd"'
    )
    res = await pex.run(
        req(tmp_path, script, input_dir=inputs, env={"GREETING": "hi"}),
        on_log=lambda _s, b: logs.append(b),
    )
    assert res.status == "succeeded", res
    assert (tmp_path / "out" / "copy").read_text() == "A"
    assert b"".join(logs) == b"[]\nhi\n"  # the daemon's environment is not passed on
    cwd = Path((tmp_path / "out" / "cwd").read_text().strip())
    assert cwd.name.startswith("meshd-proc-") and not cwd.exists()  # scratch removed
    assert res.cpu_s is not None and res.peak_memory_bytes is not None and res.peak_memory_bytes > 0


async def test_stdout_and_stderr_stay_apart(pex, tmp_path):
    got: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    script = 'for i in 1 2 3; do echo "out $i"; echo "err $i" >&2; done; exit 3'
    res = await pex.run(req(tmp_path, script), on_log=lambda stream, data: got[stream].extend(data))
    assert (res.status, res.exit_code) == ("failed", 3)
    assert bytes(got["stdout"]) == b"out 1\nout 2\nout 3\n"
    assert bytes(got["stderr"]) == b"err 1\nerr 2\nerr 3\n"


async def test_exit_codes(pex, tmp_path):
    res = await pex.run(req(tmp_path, "exit 3"))
    assert (res.status, res.exit_code, res.reason) == ("failed", 3, "exit code 3")
    res = await pex.run(req(tmp_path, "kill -TERM $$"))
    assert (res.status, res.exit_code) == ("failed", 143)
    assert "killed by signal 15" in res.reason
    res = await pex.run(
        ExecRequest(
            job_id="nx", image="x", command=("/nonexistent/cmd",), output_dir=tmp_path / "o"
        )
    )
    assert res.status == "failed" and res.exit_code == 127
    assert b"cannot execute" in res.log_tail


async def test_timeout_kills_the_whole_process_group(pex, tmp_path):
    script = 'echo $$ > "$MESH_OUTPUTS/pgid"; sleep 30 & sleep 31 & wait'
    res = await pex.run(req(tmp_path, script, timeout_s=0.5))
    assert res.status == "timeout", res
    assert 0.5 <= res.duration_s < 3
    pgid = int((tmp_path / "out" / "pgid").read_text())
    left = []
    for p in psutil.process_iter():
        try:
            # Zombies are dead; reaping them is their new parent's (init's) job.
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    assert left == []


async def test_output_cap_single_file(pex, tmp_path):
    res = await pex.run(
        req(
            tmp_path,
            'dd if=/dev/zero of="$MESH_OUTPUTS/big" bs=1M count=5 2>/dev/null',
            max_output_bytes=1 * MiB,
        )
    )
    assert res.status == "output_limit", res
    assert list((tmp_path / "out").iterdir()) == []


async def test_output_cap_many_files_while_running(pex, tmp_path):
    flood = (
        "i=0; while true; do i=$((i+1)); "
        'dd if=/dev/zero of="$MESH_OUTPUTS/f$i" bs=64k count=1 2>/dev/null; done'
    )
    with trio.fail_after(10):
        res = await pex.run(req(tmp_path, flood, max_output_bytes=2 * MiB, timeout_s=30))
    assert res.status == "output_limit", res
    assert list((tmp_path / "out").iterdir()) == []


async def test_log_cap(pex, tmp_path):
    seen: list[bytes] = []
    res = await pex.run(
        req(tmp_path, "yes flood | head -c 3000000; echo END", max_log_bytes=4096),
        on_log=lambda _s, b: seen.append(b),
    )
    assert res.status == "succeeded"
    streamed = b"".join(seen)
    assert streamed.endswith(b"[meshd: log truncated after 4096 bytes]\n")
    assert len(streamed) < 4096 + 100
    assert res.log_tail.endswith(b"END\n")


async def test_cancel(pex, tmp_path):
    started = trio.Event()
    out = []

    async def run() -> None:
        out.append(
            await pex.run(
                req(tmp_path, "echo go; sleep 30", job_id="c"), on_log=lambda _s, b: started.set()
            )
        )

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(run)
            await started.wait()
            await pex.cancel("c")
    assert out[0].status == "cancelled"


async def test_declines_gpu_and_network(pex, tmp_path):
    assert (
        pex.decline_reason(
            image="x", gpus=1, gpu_min_memory_mb=0, network=False, cpus=1, memory_mb=64
        )
        == "process executor does not assign GPUs"
    )
    assert (
        pex.decline_reason(
            image="x", gpus=0, gpu_min_memory_mb=0, network=True, cpus=1, memory_mb=64
        )
        == "network not allowed by node"
    )
    res = await pex.run(req(tmp_path, "true", gpus=1))
    assert res.status == "error" and res.reason.startswith("declined:")


async def test_health_check(pex):
    assert (await pex.health_check()).status == "succeeded"
    assert await pex.reap_orphans() == 0
