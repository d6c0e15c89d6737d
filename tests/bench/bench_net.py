"""libp2p adapter benchmark: figures as ratios against baselines from the same run.

Run: ``python tests/bench/bench_net.py [--runs R]`` (not collected by pytest).

(a) baseline: one ``MeshHost.connect`` between two fresh hosts (py-libp2p's
    dial, including its fixed ~250 ms happy-eyeballs delay);
(b) 5 hosts, each bootstrapped only from host 0, until every host is connected
    to all 4 others (bootstrap + peer exchange); ratio b/a — peer exchange
    dials in parallel, so this should stay near 2 (bootstrap dial, then one
    round of parallel dials), not 4+;
(c) request/response round trip p50 on a warm connection vs (d) one gossip
    hop p50 between the same two hosts; ratio d/c; (e) one call on a
    persistent channel (``MeshHost.call``) between them, p50; ratio e/c;
(f) process CPU per channel call (both hosts live in this process) vs (g)
    per request on a fresh stream, over 2,000 of each one after another;
    ratio f/g.
Each figure is the median over ``--runs`` runs on fresh hosts on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

from meshd.core.identity import Identity
from meshd.net import MeshHost, NetParams

PARAMS = NetParams(peer_exchange_interval_s=0.5)
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def fresh(bootstrap: list[str] | None = None) -> MeshHost:
    return MeshHost(Identity.generate(), PARAMS, [LOOPBACK], bootstrap or [])


async def wait_until(cond, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout_s):
        while not cond():
            await trio.sleep(0.005)


async def one_connect() -> float:
    a, b = fresh(), fresh()
    async with trio.open_nursery() as n:
        await n.start(a.run)
        await n.start(b.run)
        t0 = time.perf_counter()
        await b.connect(a.listen_addrs[0])
        elapsed = time.perf_counter() - t0
        n.cancel_scope.cancel()
    return elapsed


async def five_host_mesh() -> float:
    seed = fresh()
    async with trio.open_nursery() as n:
        await n.start(seed.run)
        others = [fresh([seed.listen_addrs[0]]) for _ in range(4)]
        t0 = time.perf_counter()
        for h in others:
            await n.start(h.run)
        hosts = [seed, *others]
        await wait_until(lambda: all(len(h.connected_peers()) == 4 for h in hosts))
        elapsed = time.perf_counter() - t0
        n.cancel_scope.cancel()
    return elapsed


async def request_vs_gossip(samples: int = 50) -> tuple[float, float, float]:
    a, b = fresh(), fresh()
    arrived: dict[bytes, float] = {}

    async def echo(peer: str, data: bytes) -> bytes:
        return data

    a.handle("/meshd/bench/echo/1", echo)
    a.handle_channel("/meshd/bench/echo/2", echo)
    b.subscribe("bench", lambda author, data: arrived.__setitem__(data, time.perf_counter()))
    a.subscribe("bench", lambda author, data: None)
    async with trio.open_nursery() as n:
        await n.start(a.run)
        await n.start(b.run)
        await b.connect(a.listen_addrs[0])
        await wait_until(lambda: b.peer_id in a.mesh_peers("bench"))
        rtts, hops, calls = [], [], []
        for i in range(samples):
            t0 = time.perf_counter()
            await b.request(a.peer_id, "/meshd/bench/echo/1", b"x" * 100)
            rtts.append(time.perf_counter() - t0)
            key = f"m{i}".encode()
            t0 = time.perf_counter()
            await a.publish("bench", key)
            await wait_until(lambda key=key: key in arrived)
            hops.append(arrived[key] - t0)
            t0 = time.perf_counter()
            await b.call(
                a.peer_id, "/meshd/bench/echo/2", b"x" * 100, fallback="/meshd/bench/echo/1"
            )
            calls.append(time.perf_counter() - t0)
        n.cancel_scope.cancel()
    return statistics.median(rtts), statistics.median(hops), statistics.median(calls)


async def cpu_per_message(samples: int = 2000) -> tuple[float, float]:
    """Process CPU seconds per channel call and per stream request (both ends)."""
    a, b = fresh(), fresh()

    async def echo(peer: str, data: bytes) -> bytes:
        return data

    a.handle("/meshd/bench/echo/1", echo)
    a.handle_channel("/meshd/bench/echo/2", echo)
    async with trio.open_nursery() as n:
        await n.start(a.run)
        await n.start(b.run)
        await b.connect(a.listen_addrs[0])
        out = []
        for channel in (True, False):
            t0 = time.process_time()
            for _ in range(samples):
                if channel:
                    await b.call(
                        a.peer_id, "/meshd/bench/echo/2", b"x" * 300, fallback="/meshd/bench/echo/1"
                    )
                else:
                    await b.request(a.peer_id, "/meshd/bench/echo/1", b"x" * 300)
            out.append((time.process_time() - t0) / samples)
        n.cancel_scope.cancel()
    return out[0], out[1]


async def main(runs: int) -> None:
    connects = [await one_connect() for _ in range(runs)]
    meshes = [await five_host_mesh() for _ in range(runs)]
    pairs = [await request_vs_gossip() for _ in range(runs)]
    a, b = statistics.median(connects), statistics.median(meshes)
    c = statistics.median(p[0] for p in pairs)
    d = statistics.median(p[1] for p in pairs)
    print(f"(a) one connect            {a * 1000:8.1f} ms")
    print(f"(b) 5-host mesh formation  {b * 1000:8.1f} ms   b/a = {b / a:.2f}")
    print(f"(c) request round trip p50 {c * 1000:8.2f} ms")
    e = statistics.median(p[2] for p in pairs)
    print(f"(d) gossip hop p50         {d * 1000:8.2f} ms   d/c = {d / c:.2f}")
    print(f"(e) channel call p50       {e * 1000:8.2f} ms   e/c = {e / c:.2f}")
    cpus = [await cpu_per_message() for _ in range(runs)]
    f = statistics.median(x[0] for x in cpus)
    g = statistics.median(x[1] for x in cpus)
    print(f"(f) CPU per channel call   {f * 1e6:8.0f} us   f/g = {f / g:.2f}")
    print(f"(g) CPU per request        {g * 1e6:8.0f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    trio.run(main, parser.parse_args().runs)
