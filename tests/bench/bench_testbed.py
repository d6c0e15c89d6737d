"""Membership cost on the network testbed: many real daemons, idle.

Run as root: ``python tests/bench/bench_testbed.py [--nodes 30] [--homes 4]``
(not collected by pytest; needs the testbed of ``meshd/testing/netns.py``).

What it builds: ``--nodes`` real ``meshd start`` processes (the process
executor; no Docker), most on the public segment and ``--homes`` of them each
behind its own home NAT, all bootstrapped from the first public node. They
start in waves of ``--wave``, each wave waited for (control API up) before the
next, since the machine's cores are shared. Protocol parameters are the
daemon's defaults unless ``--fast`` (the tests' shortened timings).

What it measures, and how:

(a) mesh formed: seconds until every node's ``GET /v1/status`` ``peers``
    (peers with a live advert) is at least 90 % of the others;
(b) CPU per idle node: ``utime + stime`` of each daemon's process from
    ``/proc/<pid>/stat`` (all its threads) over an idle window of
    ``--idle-s`` seconds after the mesh formed (and ``--settle-s`` more), as %
    of one core; median, p90 and max over the nodes;
(c) CPU per advert received: each node's idle CPU seconds divided by the
    adverts it received in the same window, read from its counters
    (``accepted_advert``: adverts that passed acceptance and reached the
    core; gossip's duplicate suppression drops copies before that) — whatever
    the advert rate is, the figure divides by what was really received; the
    median over nodes, and the total over all nodes (sum of CPU / sum of
    adverts). It charges everything an idle daemon does to adverts (also
    heartbeats, peer exchange, capability refresh), so it is an upper bound;
(d) join time: a new public node, bootstrapped from the first node, is
    started; seconds from its launch until its ``GET /v1/peers`` lists at
    least 90 % of the mesh (and until its API answered, for comparison).

Bounded: a hard limit (``--limit-s``) raises in the main thread (SIGALRM);
every daemon is then stopped and the testbed removed, and the run exits 1
with "FAILED". Exit 0 prints the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from meshd.testing import netns
from meshd.testing.netns import NetnsDaemon, Testbed
from meshd.testing.procs import FAST_PARAMS, DaemonProcess

CLK_TCK = os.sysconf("SC_CLK_TCK")
ADVERTS_RECEIVED = "accepted_advert"
"""The core's counter of adverts received (accepted, handed to the core)."""


class HardLimit(Exception):
    """The run's time limit passed."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command name: state is field 3, utime 14 and stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def daemon_pid(d: NetnsDaemon) -> int:
    """The pid of the daemon itself (``ip netns exec`` execs it in place)."""
    assert d.proc is not None
    pid = d.proc.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert b"start" in cmdline and b"netns" not in cmdline, cmdline
    return pid


def counters(d: DaemonProcess) -> dict[str, int]:
    st = d.status()
    assert st is not None, d.data_dir
    return dict(st["counters"])


def diagnosis(c: dict[str, int]) -> dict[str, int]:
    """The counters that say why adverts might not arrive."""
    keys = ("advert", "reject", "rate", "gossip", "dial", "px", "peers", "drop", "inbox")
    return {k: v for k, v in sorted(c.items()) if v and any(x in k for x in keys)}


def stop_together(daemons: list[DaemonProcess], timeout_s: float = 20.0) -> None:
    """SIGTERM every daemon at once, then wait for them all (up to ``timeout_s``
    together); SIGKILL any still running then."""
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.terminate()
    deadline = time.monotonic() + timeout_s
    for d in daemons:
        if d.proc is not None:
            try:
                d.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()


def run_bounded(
    limit_s: int,
    prefix: str,
    body: Callable[[Path, list[Any]], None],
    *,
    keep: bool = False,
    cleanup: Callable[[], None] | None = None,
) -> int:
    """Run ``body(root, daemons)`` under a hard limit of ``limit_s`` seconds
    (SIGALRM raises :class:`HardLimit` in the main thread), in a fresh
    temporary directory ``root`` named by ``prefix``. ``body`` appends every
    daemon it starts to ``daemons``; whatever happens, they are stopped
    together, ``cleanup`` runs (a testbed's removal) and ``root`` is removed
    unless ``keep``. Exit status: 0 done, 1 failed (said on stderr)."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise HardLimit(f"hard limit of {limit_s}s reached")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit_s)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    daemons: list[Any] = []
    t0 = time.monotonic()
    try:
        body(root, daemons)
    except (HardLimit, TimeoutError, RuntimeError, AssertionError) as exc:
        print(f"FAILED after {time.monotonic() - t0:.0f}s: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        stop_together(daemons)
        if cleanup is not None:
            cleanup()
        if keep:
            print(f"data dirs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"done in {time.monotonic() - t0:.0f}s")
    return 0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def wait_all(what: str, pred: Any, timeout_s: float, poll_s: float = 2.0) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - t0


def launch_in_waves(daemons: Sequence[DaemonProcess], wave: int, timeout_s: float) -> None:
    for i in range(0, len(daemons), wave):
        batch = daemons[i : i + wave]
        for d in batch:
            d.launch()
        for d in batch:
            d.wait_for(lambda d=d: d.status() is not None, timeout_s, "the daemon's API")
        print(f"  started {min(i + wave, len(daemons))}/{len(daemons)}", flush=True)


def run(args: argparse.Namespace, bed: Testbed, root: Path, daemons: list[NetnsDaemon]) -> None:
    params: dict[str, Any] = dict(FAST_PARAMS) if args.fast else {}
    n_public = args.nodes - args.homes
    hosts = [bed.public(f"p{i}") for i in range(n_public)]
    hosts += [bed.home(f"h{i}") for i in range(args.homes)]
    for i, h in enumerate(hosts):
        daemons.append(NetnsDaemon(root / f"n{i}", host=h, params=params))
    for d in daemons:
        d.init()
    seed = daemons[0]
    seed.start(timeout_s=120)
    for d in daemons[1:]:
        d.bootstrap = [seed.addr]
    t_launch = time.monotonic()
    launch_in_waves(daemons[1:], args.wave, timeout_s=180)
    want = math.ceil(0.9 * (len(daemons) - 1))

    seen: list[int] = []

    def formed() -> bool:
        seen[:] = [(d.status() or {}).get("peers", 0) for d in daemons]
        return min(seen) >= want

    try:
        formed_s = wait_all("the mesh to form", formed, args.form_timeout_s)
        print(f"(a) mesh formed: every node sees >= {want} of {len(daemons) - 1} others "
              f"{time.monotonic() - t_launch:.1f}s after the first wave "
              f"({formed_s:.1f}s after the last wave was up)", flush=True)  # fmt: skip
    except TimeoutError:
        # measured all the same: a mesh that cannot form is the finding
        print(
            f"(a) mesh NOT formed {args.form_timeout_s:.0f}s after the last wave was up: "
            f"peers with a live advert per node {sorted(seen)} (want >= {want})",
            flush=True,
        )
    print(f"    first node's counters: {diagnosis(counters(seed))}", flush=True)
    if seen and min(seen) < want:
        worst = daemons[seen.index(min(seen))]
        print(f"    counters of a node that sees {min(seen)}: {diagnosis(counters(worst))}")
    time.sleep(args.settle_s)

    pids = [daemon_pid(d) for d in daemons]
    c0 = [counters(d) for d in daemons]
    cpu0 = [cpu_seconds(p) for p in pids]
    w0 = time.monotonic()
    time.sleep(args.idle_s)
    cpu1 = [cpu_seconds(p) for p in pids]
    w1 = time.monotonic()
    c1 = [counters(d) for d in daemons]
    window = w1 - w0
    cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    got = [
        b.get(ADVERTS_RECEIVED, 0) - a.get(ADVERTS_RECEIVED, 0) for a, b in zip(c0, c1, strict=True)
    ]
    sent = [
        b.get("adverts_sent", 0) - a.get("adverts_sent", 0) for a, b in zip(c0, c1, strict=True)
    ]
    share = [100.0 * c / window for c in cpu]
    per_advert = [1000.0 * c / g for c, g in zip(cpu, got, strict=True) if g > 0]
    print(
        f"(b) CPU per idle node over {window:.1f}s ({len(daemons)} daemons, "
        f"{args.homes} behind NATs; /proc/<pid>/stat utime+stime / window): "
        f"median {statistics.median(share):.2f} %, p90 {pct(share, 0.9):.2f} %, "
        f"max {max(share):.2f} % of a core; all nodes together {sum(share):.1f} %"
    )
    print(f"    adverts received per node ({ADVERTS_RECEIVED}): median "
          f"{statistics.median(got)} ({statistics.median(got) / window:.2f}/s); "
          f"sent per node (adverts_sent): median {statistics.median(sent)} "
          f"({statistics.median(sent) / window:.2f}/s)")  # fmt: skip
    if not per_advert:
        raise RuntimeError("no node received an advert in the idle window")
    total_ms = 1000.0 * sum(cpu) / max(1, sum(got))
    print(f"(c) CPU per advert received (idle CPU / adverts received, per node): "
          f"median {statistics.median(per_advert):.2f} ms, p90 {pct(per_advert, 0.9):.2f} ms; "
          f"all nodes {total_ms:.2f} ms ({sum(cpu):.1f} CPU-s / {sum(got)} adverts)")  # fmt: skip

    newcomer = NetnsDaemon(root / "new", host=bed.public("new"), params=params)
    newcomer.bootstrap = [seed.addr]
    daemons.append(newcomer)
    newcomer.init()
    mesh = len(daemons) - 1
    want_new = math.ceil(0.9 * mesh)
    t0 = time.monotonic()
    newcomer.launch()
    newcomer.wait_for(lambda: newcomer.status() is not None, 120, "the newcomer's API")
    api_s = time.monotonic() - t0

    def listed() -> int:
        return len(newcomer.call(lambda: newcomer.client().peers())["peers"])

    try:
        newcomer.wait_for(lambda: listed() >= want_new, args.form_timeout_s, "its view")
    except TimeoutError:
        print(
            f"(d) a new public node did NOT list {want_new} of {mesh} peers (90 %) within "
            f"{args.form_timeout_s:.0f}s (it listed {listed()}; API up after {api_s:.1f}s)"
        )
        raise
    join_s = time.monotonic() - t0
    print(f"(d) a new public node lists >= {want_new} of {mesh} peers (90 %) in `GET /v1/peers` "
          f"{join_s:.1f}s after launch (its API answered after {api_s:.1f}s)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=30, help="daemons in the mesh")
    parser.add_argument("--homes", type=int, default=4, help="of them behind home NATs")
    parser.add_argument("--wave", type=int, default=5, help="daemons started at once")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle window measured")
    parser.add_argument("--settle-s", type=float, default=15.0, help="wait before the window")
    parser.add_argument("--form-timeout-s", type=float, default=300.0)
    parser.add_argument("--limit-s", type=int, default=1500, help="hard limit of the whole run")
    parser.add_argument("--fast", action="store_true", help="the tests' shortened timings")
    args = parser.parse_args()
    why = netns.unavailable()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    if not 0 <= args.homes < args.nodes:
        print("--homes must be less than --nodes (the first node is public)", file=sys.stderr)
        return 2

    bed = Testbed()
    return run_bounded(
        args.limit_s,
        "meshd-bench-bed-",
        lambda root, daemons: run(args, bed, root, daemons),
        cleanup=bed.close,  # after stop_together; it SIGKILLs what is left
    )


if __name__ == "__main__":
    sys.exit(main())
