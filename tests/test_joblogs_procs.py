"""`mesh logs` against real `meshd start` daemons (the process executor, and the
Docker sandbox when an engine is up): every line of stdout and stderr, apart
and in order, after the job ended and after both daemons restarted; `-f`
shows a line while the job still runs (process executor: the job waits for a
file on the host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from meshd.testing.procs import DaemonProcess, mesh_cli, start_mesh, stop_all

pytestmark = pytest.mark.slow

N = 1000
NUMBERED = (
    f'i=1; while [ $i -le {N} ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; exit 3'
)


def _submit(node: DaemonProcess, script: str, *extra: str) -> str:
    runtime = ("--runtime", "process") if node.executor == "process" else ()
    cp = mesh_cli(
        node.data_dir,
        "submit",
        *runtime,
        *extra,
        "--image",
        "meshd/busybox:1",
        "--",
        "sh",
        "-c",
        script,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return cp.stdout.strip().splitlines()[0]


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _records(node: DaemonProcess, job_id: str, *args: str) -> list[dict]:
    cp = mesh_cli(node.data_dir, "logs", job_id, "--json", *args)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return [json.loads(line) for line in cp.stdout.splitlines()]


def _assert_every_line(node: DaemonProcess, job_id: str) -> None:
    records = _records(node, job_id)
    assert records[-1]["end"] and records[-1]["incomplete"] == [], records[-1]
    lines = records[:-1]
    replicas = {r["replica"] for r in lines}
    assert replicas, "no output at all"
    for rep in replicas:  # a failed run may be retried: each run keeps its whole output
        for stream, word in (("stdout", "out"), ("stderr", "err")):
            got = [r["data"] for r in lines if r["replica"] == rep and r["stream"] == stream]
            assert got == [f"{word} {i}" for i in range(1, N + 1)], (rep, stream, got[:3], len(got))
    # the human form: stdout's lines on stdout, stderr's on stderr, nothing else
    cp = mesh_cli(node.data_dir, "logs", job_id, "--replica", str(min(replicas)))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "".join(f"out {i}\n" for i in range(1, N + 1))
    assert cp.stderr == "".join(f"err {i}\n" for i in range(1, N + 1))


def test_a_failed_job_shows_every_line_of_both_streams_after_it_ended_and_after_restarts(
    tmp_path: Path,
) -> None:
    _every_line_after_the_end_and_restarts(tmp_path, "process")


@pytest.mark.docker
def test_the_same_in_the_docker_sandbox(tmp_path: Path, docker_api: Any) -> None:
    _every_line_after_the_end_and_restarts(tmp_path, "docker")


def _every_line_after_the_end_and_restarts(tmp_path: Path, executor: str) -> None:
    procs = start_mesh(tmp_path, 2, executor=executor)
    origin = procs[1]
    try:
        job_id = _submit(origin, NUMBERED)
        cp = mesh_cli(origin.data_dir, "wait", job_id, "--timeout", "120")
        assert cp.returncode == 1, cp.stdout + cp.stderr  # the job exits 3: failed
        job = json.loads(mesh_cli(origin.data_dir, "job", job_id, "--json").stdout)
        assert job["state"] == "failed" and "exit code 3" in job["reason"], job
        _assert_every_line(origin, job_id)

        whole = _records(origin, job_id, "--replica", "0")[:-1]
        tail = _records(origin, job_id, "--tail", "2", "--replica", "0")[:-1]
        assert len(whole) == 2 * N and tail == whole[-2:]
        # merged by the time each chunk was read; each stream keeps its own order
        assert [r["ts_ms"] for r in whole] == sorted(r["ts_ms"] for r in whole)
        first, last = min(r["ts_ms"] for r in tail), max(r["ts_ms"] for r in tail)
        # --since the earlier tail line's time: both tail lines (and the end record)
        assert len(_records(origin, job_id, "--replica", "0", "--since", _iso(first))) >= 3
        assert _records(origin, job_id, "--replica", "0", "--since", _iso(last + 1))[:-1] == []

        # Both daemons go down; the origin comes back alone: its stored copy answers.
        procs[0].stop()
        origin.stop()
        origin.start()
        _assert_every_line(origin, job_id)
    finally:
        stop_all(procs)


def _follow(node: DaemonProcess, job_id: str) -> subprocess.Popen[str]:
    from meshd.testing.procs import _bin

    return subprocess.Popen(
        [*_bin("mesh"), "--data-dir", str(node.data_dir), "logs", "-f", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def test_follow_shows_a_line_while_the_job_waits_for_it_to_be_seen(tmp_path: Path) -> None:
    """The job prints a line, then waits for a file the test creates only once
    `mesh logs -f` has shown that line: the job can only finish if the line
    arrived while it was still running (no wall-clock bound is asserted)."""
    procs = start_mesh(tmp_path, 2)
    origin = procs[1]
    go = tmp_path / "go"
    follower = None
    try:
        script = f'echo ready; while [ ! -e "{go}" ]; do sleep 0.05; done; echo after; echo bye >&2'
        job_id = _submit(origin, script, "--timeout", "120")
        follower = _follow(origin, job_id)
        assert follower.stdout is not None
        seen: list[str] = []

        def watch() -> None:
            assert follower is not None and follower.stdout is not None
            for line in follower.stdout:
                seen.append(line)
                if line == "ready\n":
                    go.touch()

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        t.join(timeout=120)
        assert not t.is_alive(), f"`mesh logs -f` stopped showing lines: {seen}"
        assert follower.wait(timeout=30) == 0
        assert seen == ["ready\n", "after\n"], seen
        assert follower.stderr is not None
        err = follower.stderr.read()
        assert err.startswith("bye\n") and "ended: succeeded" in err, err
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        stop_all(procs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
