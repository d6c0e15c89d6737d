"""What the dashboard costs the daemon (run by hand, not by pytest).

    python tests/bench/bench_dashboard.py [--jobs 50] [--requests 40] [--idle-s 5]

Starts two real `meshd start` daemons on loopback (process executor), runs
``--jobs`` small jobs from the first (submitted through the control API, so
the origin holds that many jobs, receipts and log records), then times
``--requests`` sequential ``GET /v1/dashboard`` on the origin against the
baseline measured in the same run: as many ``GET /v1/status``, the route
`mesh status` polls (a snapshot includes a status). Prints the medians and
their ratio. Then holds one live stream open on the idle mesh for
``--idle-s`` seconds and prints how many events and bytes it sent (an idle
mesh should send the first snapshot and nothing more). Every step has a
time-out: a hang is a failure, not a slow result.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshd.testing.procs import start_mesh, stop_all  # noqa: E402

JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/ok.txt"],
    "requirements": {"runtime": "process"},
}


def _median_ms(h: httpx.Client, path: str, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = h.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--idle-s", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp:
        procs = start_mesh(Path(tmp), 2)
        try:
            origin = procs[0]
            client = origin.client()
            ids = [client.submit(JOB)["job_id"] for _ in range(args.jobs)]
            deadline = time.monotonic() + 300
            while any(client.job(j)["state"] != "succeeded" for j in ids):
                if time.monotonic() > deadline:
                    print("jobs did not all succeed within 300 s", file=sys.stderr)
                    return 1
                time.sleep(1)
            time.sleep(3)  # receipts countersigned, the mesh idle
            token = (origin.data_dir / "api.token").read_text().strip()
            base = f"http://{client.host}:{client.port}"
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=auth, timeout=30) as h:
                snap = h.get("/v1/dashboard").json()
                _median_ms(h, "/v1/status", 5)  # warm both routes
                _median_ms(h, "/v1/dashboard", 5)
                status_ms = _median_ms(h, "/v1/status", args.requests)
                dash_ms = _median_ms(h, "/v1/dashboard", args.requests)
                events = nbytes = 0
                t_end = time.monotonic() + args.idle_s
                quiet = httpx.Timeout(10.0, read=args.idle_s)
                with h.stream("GET", "/v1/dashboard/stream", timeout=quiet) as r:
                    try:
                        for chunk in r.iter_bytes():
                            events += chunk.count(b"event: snapshot")
                            nbytes += len(chunk)
                            if time.monotonic() >= t_end:
                                break
                    except httpx.ReadTimeout:
                        pass  # nothing more within the idle window: what an idle mesh should do
            print(
                f"jobs {len(snap['jobs'])} shown of {args.jobs}, contributors "
                f"{len(snap['contributors'])}, receipts {snap['receipts']}, "
                f"log {snap['log']['state']} through seq {snap['log']['verified_seq']}"
            )
            print(f"GET /v1/status    median {status_ms:.2f} ms (baseline)")
            print(f"GET /v1/dashboard median {dash_ms:.2f} ms  ratio {dash_ms / status_ms:.2f}x")
            print(f"idle stream over {args.idle_s:g} s: {events} event(s), {nbytes} bytes")
        finally:
            stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
