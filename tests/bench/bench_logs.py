"""How soon a printed line reaches `mesh logs -f` (run by hand, not by pytest).

    python tests/bench/bench_logs.py [--lines 20] [--every 0.3]

Starts two real `meshd start` daemons on loopback (process executor) with the
production heartbeat period (``heartbeat_interval_ms`` 3000; the other
timings shortened as in the tests), submits a job that prints ``--lines``
lines, each holding the wall time it was printed at, ``--every`` seconds
apart (after 3 s, so the follower is attached), and follows it with `mesh
logs -f`. For each line, the latency is the
time the follower read it minus the time in it. Prints the median and the
maximum latency, and their ratio to the baseline measured in the same run:
the heartbeat period, which bounded the latency before output was pushed
within ``log_push_ms`` (target: every line within 1 s on loopback). Every
step has a time-out: a hang is a failure, not a slow result.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshd.core.params import CoreParams  # noqa: E402
from meshd.testing.procs import FAST_PARAMS, _bin, mesh_cli, start_mesh, stop_all  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=20)
    ap.add_argument("--every", type=float, default=0.3)
    ap.add_argument(
        "--log-push-ms",
        type=int,
        default=CoreParams().log_push_ms,
        help="the workers' log_push_ms (the heartbeat period shows the behaviour without the push)",
    )
    args = ap.parse_args()
    heartbeat_ms = CoreParams().heartbeat_interval_ms
    params = {
        **FAST_PARAMS,
        "heartbeat_interval_ms": heartbeat_ms,
        "lease_ms": 4 * heartbeat_ms,
        "log_push_ms": args.log_push_ms,
    }
    script = (
        f"sleep 3; i=0; while [ $i -lt {args.lines} ]; do "
        f'python3 -c "import time; print(time.time(), flush=True)"; sleep {args.every}; '
        "i=$((i+1)); done"
    )
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        procs = start_mesh(Path(tmp), 2, params=params)
        try:
            cp = mesh_cli(
                procs[1].data_dir,
                "submit",
                "--image",
                "x",
                "--runtime",
                "process",
                "--",
                "sh",
                "-c",
                script,
            )
            if cp.returncode != 0 or not cp.stdout.strip():
                print(f"FAIL: mesh submit exited {cp.returncode}: {cp.stderr.strip()}")
                return 1
            job_id = cp.stdout.strip().splitlines()[0]
            follower = subprocess.Popen(
                [*_bin("mesh"), "--data-dir", str(procs[1].data_dir), "logs", "-f", job_id],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert follower.stdout is not None
            latencies = []
            for line in follower.stdout:
                latencies.append(time.time() - float(line))
            follower.wait(timeout=60)
        finally:
            stop_all(procs)
    if len(latencies) != args.lines:
        print(f"FAIL: {len(latencies)} of {args.lines} lines arrived")
        return 1
    med, worst = statistics.median(latencies), max(latencies)
    base = heartbeat_ms / 1000
    print(
        f"lines {len(latencies)}; log_push_ms {args.log_push_ms}; "
        f"baseline heartbeat period {base:.3f} s"
    )
    print(
        f"latency median {med:.3f} s ({med / base:.2f}x), max {worst:.3f} s ({worst / base:.2f}x)"
    )
    print("each line, in print order (s):", " ".join(f"{x:.3f}" for x in latencies))
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
