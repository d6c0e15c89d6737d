"""How quickly `mesh` answers (run by hand, not by pytest).

    python tests/bench/bench_cli.py [--runs 15] [--hog]

Starts one real `meshd start` (process executor, loopback), then times, in
the same run and interleaved so load drifts hit both alike:

- the baseline, `python -c pass` (the interpreter's own start-up);
- `mesh --version` (no daemon involved: imports only);
- `mesh status` (a request to the daemon and a rendered table);
- `mesh status --json`.

Prints the median wall time of each and its ratio to the baseline (target:
`mesh status` at most 3×), and beside them the median CPU time (user +
system) of each and its ratio: on a crowded machine the wall ratio grows
with the scheduler's queue (a longer process waits more rounds), the CPU
ratio does not. ``--hog`` runs a bounded busy loop per core beside
it (ended with its process group). Every command has a timeout: a hang is a
failure, not a slow result.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshd.testing.procs import _bin, start_mesh, stop_all  # noqa: E402

TIMEOUT_S = 30.0


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=TIMEOUT_S)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # only reaped children count
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def hog(seconds: float) -> subprocess.Popen[bytes]:
    code = (
        "import multiprocessing as m, time\n"
        "def spin(t):\n    end = time.time() + t\n    while time.time() < end: pass\n"
        f"ps = [m.Process(target=spin, args=({seconds},)) for _ in range(m.cpu_count())]\n"
        "[p.start() for p in ps]; [p.join() for p in ps]\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--hog", action="store_true", help="a busy loop per core beside it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        procs = start_mesh(Path(tmp), 1)
        hogger = hog(600.0) if args.hog else None
        try:
            d = str(procs[0].data_dir)
            commands = {
                "python -c pass (baseline)": [sys.executable, "-c", "pass"],
                "mesh --version": [*_bin("mesh"), "--version"],
                "mesh status": [*_bin("mesh"), "--data-dir", d, "status"],
                "mesh status --json": [*_bin("mesh"), "--data-dir", d, "status", "--json"],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            cpu: dict[str, list[float]] = {name: [] for name in commands}
            for cmd in commands.values():
                timed(cmd)  # warm the page cache once
            for _ in range(args.runs):
                for name, cmd in commands.items():
                    wall, used = timed(cmd)
                    times[name].append(wall)
                    cpu[name].append(used)
        finally:
            if hogger is not None:
                os.killpg(hogger.pid, signal.SIGKILL)
                hogger.wait()
            stop_all(procs)
    base = statistics.median(times["python -c pass (baseline)"])
    cpu_base = statistics.median(cpu["python -c pass (baseline)"])
    print(f"\n`mesh` start-up, median of {args.runs} runs{' beside a CPU hog' if args.hog else ''}")
    print(f"{'command':<28}{'median':>10}{'ratio':>10}{'cpu':>10}{'cpu ratio':>11}")
    for name, xs in times.items():
        med, used = statistics.median(xs), statistics.median(cpu[name])
        print(
            f"{name:<28}{med * 1000:>8.0f}ms{med / base:>9.2f}×"
            f"{used * 1000:>8.0f}ms{used / cpu_base:>10.2f}×"
        )
    status = statistics.median(times["mesh status"]) / base
    print(f"target: mesh status ≤ 3× the baseline: {'OK' if status <= 3 else 'ABOVE TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
