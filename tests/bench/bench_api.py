"""Whether idle unauthenticated connections slow the control API (run by hand).

    python tests/bench/bench_api.py [--runs 20] [--idle 64]

Starts one real `meshd start` (process executor, loopback), then, in the
same run and interleaved so load drifts hit both alike, times an
authenticated `GET /v1/status` through the CLI's client (`ApiClient`):

- the baseline: with no other connection open;
- the crowd: with ``--idle`` connections open that never authenticate (half
  of them idle, half stuck in an unfinished request head), opened afresh
  before each timed request.

Prints the median of each, their ratio and their difference (target: the
crowd's request within 100 ms of the baseline's). Every wait is bounded: a
request that hangs fails the run instead of timing it.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshd.api.client import ApiClient  # noqa: E402
from meshd.datadir import read_api_addr  # noqa: E402
from meshd.testing.procs import start_mesh, stop_all  # noqa: E402

TIMEOUT_S = 10.0
HALF_HEAD = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"  # a head that never ends


def timed_status(client: ApiClient) -> float:
    start = time.perf_counter()
    client.status()
    return time.perf_counter() - start


def open_crowd(addr: tuple[str, int], n: int) -> list[socket.socket]:
    crowd = []
    for i in range(n):
        s = socket.create_connection(addr, timeout=TIMEOUT_S)
        if i % 2:
            s.sendall(HALF_HEAD)
        crowd.append(s)
    time.sleep(0.05)  # let the daemon accept them all before the timed request
    return crowd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle", type=int, default=64)
    args = ap.parse_args()
    base: list[float] = []
    crowd_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        procs = start_mesh(Path(tmp), 1)
        try:
            data_dir = procs[0].data_dir
            addr = read_api_addr(data_dir)
            assert addr is not None
            client = ApiClient.from_data_dir(data_dir, timeout_s=TIMEOUT_S)
            timed_status(client)  # warm up (imports, first connection)
            for _ in range(args.runs):
                base.append(timed_status(client))
                crowd = open_crowd(addr, args.idle)
                try:
                    crowd_times.append(timed_status(client))
                finally:
                    for s in crowd:
                        s.close()
                time.sleep(0.05)
        finally:
            stop_all(procs)
    b, c = statistics.median(base), statistics.median(crowd_times)
    print(f"\nGET /v1/status via ApiClient, median of {args.runs} interleaved runs")
    print(f"{'case':<40}{'median':>10}{'ratio':>10}")
    print(f"{'no other connection (baseline)':<40}{b * 1000:>8.1f}ms{1.0:>9.2f}×")
    label = f"{args.idle} idle unauthenticated connections"
    print(f"{label:<40}{c * 1000:>8.1f}ms{c / b:>9.2f}×")
    print(
        f"difference: {(c - b) * 1000:+.1f} ms (worst with the crowd: {max(crowd_times) * 1000:.1f} ms)"
    )
    print(f"target: within 100 ms of the baseline: {'OK' if c - b <= 0.1 else 'ABOVE TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
