"""Real `meshd start` processes on loopback: the mesh forms, survives a SIGKILL,
and `mesh submit --wait` from one node runs the job on another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshd.core.logrecord import verify_records
from meshd.store.eventlog import EventLog
from meshd.testing.procs import mesh_cli, start_mesh, stop_all, wait_mesh

pytestmark = pytest.mark.slow


def test_killed_daemon_rejoins_and_its_log_verifies(tmp_path: Path) -> None:
    procs = start_mesh(tmp_path, 3)
    try:
        victim = procs[1]
        head_before = victim.status()["log"]["head_seq"]  # type: ignore[index]
        victim.kill()
        # The others notice it is gone once its advert expires (advert_ttl_ms = 4 s).
        procs[0].wait_for(lambda: procs[0].status()["peers"] == 1, 20, "node 1 to be marked gone")  # type: ignore[index]
        victim.bootstrap = [procs[0].addr]
        victim.start()
        wait_mesh(procs, 30)
        status = victim.status()
        assert status is not None and status["log"]["head_seq"] >= head_before
        # The log on disk (while the daemon runs) verifies end to end through the API,
        # with the real CLI: links and every signature.
        cp = mesh_cli(victim.data_dir, "log", "verify")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "OK" in cp.stdout
    finally:
        stop_all(procs)
    # And offline, straight from LevelDB, with the third-party verifier.
    from meshd.config import load_node

    _, identity = load_node(victim.data_dir)
    with EventLog.open(victim.data_dir / "log", identity) as log:
        report = verify_records(log.iter_raw(), identity.public_key)
    assert report.ok, report
    assert report.count >= head_before


def test_a_second_daemon_on_the_same_data_dir_fails_fast(tmp_path: Path) -> None:
    procs = start_mesh(tmp_path, 2)
    try:
        import subprocess
        import sys

        cp = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshd.cli",
                "start",
                "--data-dir",
                str(procs[0].data_dir),
                "--executor",
                "process",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cp.returncode == 1
        said = cp.stdout + cp.stderr
        assert "another meshd" in said.lower() or "in use" in said.lower(), said
        # One clean line, no traceback or exception group (issue 12).
        assert "Traceback" not in said and "ExceptionGroup" not in said, said
        assert procs[0].status() is not None  # the running daemon is unharmed
        pid_file = procs[0].data_dir / "daemon.pid"
        assert procs[0].proc is not None
        assert pid_file.read_text().strip() == str(procs[0].proc.pid)  # not overwritten
    finally:
        stop_all(procs)


def test_submit_wait_from_one_node_runs_on_another(tmp_path: Path) -> None:
    procs = start_mesh(tmp_path, 3)
    try:
        data = tmp_path / "numbers.txt"
        data.write_text("\n".join(str(i) for i in range(1, 101)) + "\n")
        out = tmp_path / "out"
        cp = mesh_cli(
            procs[2].data_dir,
            "submit",
            "--image",
            "meshd/busybox:1",
            "--runtime",
            "process",  # the workers run the process executor
            "--input",
            f"numbers.txt={data}",
            "--wait",
            "-o",
            str(out),
            "--",
            "sh",
            "-c",
            'awk "{s+=\\$1} END {print s}" "$MESH_INPUTS/numbers.txt" > "$MESH_OUTPUTS/sum.txt"',
        )
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert (out / "sum.txt").read_text().strip() == "5050"
        jobs = json.loads(mesh_cli(procs[2].data_dir, "jobs", "--json").stdout)["jobs"]
        job = json.loads(mesh_cli(procs[2].data_dir, "job", jobs[0]["job_id"], "--json").stdout)
        assert job["state"] == "succeeded"
        me = procs[2].status()["peer_id"]  # type: ignore[index]
        assert job["result"]["worker"] != me
    finally:
        stop_all(procs)


def test_twenty_jobs_spread_over_five_workers(tmp_path: Path) -> None:
    procs = start_mesh(tmp_path, 6)
    try:
        client = procs[0].client()
        job = {
            "image": "meshd/busybox:1",
            "command": ["sh", "-c", "sleep 1; echo ok > $MESH_OUTPUTS/o"],
            "replicas": 1,
            "requirements": {"runtime": "process"},
        }
        ids = [client.submit(dict(job))["job_id"] for _ in range(20)]
        views = {}
        for jid in ids:
            views[jid] = procs[0].wait_for(
                lambda jid=jid: (v := client.job(jid))["state"] in ("succeeded", "failed") and v,
                120,
                f"job {jid}",
            )
        assert all(v["state"] == "succeeded" for v in views.values()), [
            v["reason"] for v in views.values()
        ]
        counts: dict[str, int] = {}
        for v in views.values():
            counts[v["result"]["worker"]] = counts.get(v["result"]["worker"], 0) + 1
        origin = procs[0].status()["peer_id"]  # type: ignore[index]
        assert origin not in counts
        # 20 one-second jobs over 5 equal workers: the fair share is 4. Piling up
        # queues jobs behind one worker while others idle: before the learned
        # bid window, the saturated-bidder hold and unit-price ranking, up to 18
        # went to the quickest bidder or to the one whose benchmark came out
        # low (it looked cheapest); in CI once 9/9/2 on three workers.
        assert len(counts) >= 4, counts
        assert max(counts.values()) <= 8, counts
        # What must not happen is queueing: at no moment does one worker hold
        # more of these jobs than its slots plus two waiting (the fair share).
        # Slots + 3 was seen in about one run in three while the ranking
        # min-max scaled bid finishes: benchmarks a few per cent apart made
        # the quickest worker's edge worth one queued run (placement.spread_scaled).
        slots = procs[1].status()["load"]["capacity"]  # type: ignore[index]
        held: dict[str, list[tuple[int, int]]] = {}
        for v in views.values():
            # Held by the worker from the award until its result arrived (the
            # origin's output fetch and settlement after that are not the
            # worker's queue).
            hist = v["history"]
            start = next(h["ts_ms"] for h in reversed(hist) if h["state"] == "awarded")
            end = next(
                h["ts_ms"]
                for h in hist
                if h["ts_ms"] >= start and h["state"] in ("verifying", "succeeded")
            )
            held.setdefault(v["result"]["worker"], []).append((start, end))
        for worker, spans in held.items():
            most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
            assert most <= slots + 2, (worker[-6:], most, slots, sorted(spans))
    finally:
        stop_all(procs)


def test_daemon_pid_meshd_stop_and_sigint(tmp_path: Path) -> None:
    """``daemon.pid`` names the running daemon; ``meshd stop`` ends it (exit 0)
    and removes the file; SIGINT ends a daemon with exit 130 (CLI.md)."""
    import signal
    import subprocess

    from meshd.testing.procs import _bin

    (a,) = start_mesh(tmp_path, 1)
    try:
        assert a.proc is not None
        pid_file = a.data_dir / "daemon.pid"
        assert pid_file.read_text().strip() == str(a.proc.pid)
        cp = subprocess.run(
            [*_bin("meshd"), "stop", "--data-dir", str(a.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert a.proc.wait(timeout=30) == 0
        assert not pid_file.exists()
        cp = subprocess.run(
            [*_bin("meshd"), "stop", "--data-dir", str(a.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cp.returncode == 1 and "no daemon is running" in cp.stderr, cp.stderr
        a.start()
        a.proc.send_signal(signal.SIGINT)
        assert a.proc.wait(timeout=30) == 130
        assert not pid_file.exists()
    finally:
        stop_all([a])
