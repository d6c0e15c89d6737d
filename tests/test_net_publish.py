"""Bursts of our own publishes against py-libp2p's 32-slot per-peer queue.

py-libp2p 0.8.1 enqueues every outbound RPC in a per-peer ``RpcQueue`` of 32
entries and drops silently (DEBUG log only) when it is full; each publish
takes two entries (the message and an IDONTWANT control message), and a
burst of publishes runs without yielding to the task that drains the queue,
so an unpaced burst to one peer used to deliver only 16 messages. MeshHost
now waits for room before it publishes (``publish_wait_s``), bounds the
publishes waiting (``max_pending_publishes``) and counts what it cannot send.

Real hosts on 127.0.0.1, no mocks; conditions are awaited under a deadline.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import RpcQueue

from meshd.core.identity import Identity
from meshd.net import MeshHost, NetParams, PublishDropped
from meshd.testing.nethosts import LINE, connected, make_host, wait_until

TOPIC = "meshd/burst"
N = 100
DELIVERY_DEADLINE_S = 10.0


@asynccontextmanager
async def cluster(*hosts: MeshHost) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for h in hosts:
            await nursery.start(h.run)
        yield
        nursery.cancel_scope.cancel()


async def _burst(
    params_a: NetParams, publish_all: Callable[[MeshHost], Awaitable[int]]
) -> tuple[MeshHost, list[bytes], float]:
    """Start a and b (b bootstrapped from a, both on TOPIC), run
    ``publish_all(a)`` and wait until b has everything a published."""
    a = make_host(params_a)
    got: list[bytes] = []
    a.subscribe(TOPIC, lambda author, data: None)
    async with cluster(a):
        b = make_host(LINE, [a.listen_addrs[0]])
        b.subscribe(TOPIC, lambda author, data: got.append(data))
        async with cluster(b):
            await wait_until(lambda: connected(a, b))
            await wait_until(lambda: b.peer_id in a.mesh_peers(TOPIC))
            t0 = time.monotonic()
            expected = await publish_all(a)
            with trio.move_on_after(DELIVERY_DEADLINE_S):  # the assertions say what is missing
                while len(got) < expected:
                    await trio.sleep(0.02)
            took = time.monotonic() - t0
            await trio.sleep(0.2)  # nothing beyond what was published arrives
            return a, got, took


async def test_an_unpaced_burst_of_100_publishes_reaches_the_peer_in_full() -> None:
    async def publish_all(a: MeshHost) -> int:
        for i in range(N):
            await a.publish(TOPIC, f"burst {i}".encode())
        return N

    a, got, took = await _burst(LINE, publish_all)
    print(f"\n{N} sequential publishes delivered in {took:.2f} s")
    assert len(got) == N, f"{len(got)} of {N} delivered"
    assert sorted(got) == sorted(f"burst {i}".encode() for i in range(N))
    stats = a.statistics()
    assert (stats.published, stats.publish_dropped, stats.dropped_queue_full) == (N, 0, 0)


async def test_100_concurrent_publishes_like_the_daemons_tasks_arrive_in_full() -> None:
    # the daemon starts one task per Publish effect
    async def publish_all(a: MeshHost) -> int:
        async with trio.open_nursery() as nursery:
            for i in range(N):
                nursery.start_soon(a.publish, TOPIC, f"task {i}".encode())
        return N

    a, got, took = await _burst(LINE, publish_all)
    print(f"\n{N} concurrent publishes delivered in {took:.2f} s")
    assert len(got) == N, f"{len(got)} of {N} delivered"
    assert sorted(got) == sorted(f"task {i}".encode() for i in range(N))
    stats = a.statistics()
    assert (stats.published, stats.publish_dropped, stats.dropped_queue_full) == (N, 0, 0)


async def test_publishes_beyond_max_pending_publishes_raise_and_are_counted() -> None:
    params = NetParams(target_peers=1, max_pending_publishes=10)
    refused: list[int] = []

    async def publish_one(a: MeshHost, i: int) -> None:
        try:
            await a.publish(TOPIC, f"task {i}".encode())
        except PublishDropped:
            refused.append(i)

    async def publish_all(a: MeshHost) -> int:
        async with trio.open_nursery() as nursery:
            for i in range(N):
                nursery.start_soon(publish_one, a, i)
        return N - len(refused)

    a, got, _ = await _burst(params, publish_all)
    stats = a.statistics()
    assert refused, "the bound never bit"
    assert stats.publish_dropped == len(refused)
    assert stats.published == len(got) == N - len(refused)  # nothing lost silently
    assert stats.dropped_queue_full == 0


def test_publish_params_are_validated() -> None:
    for bad in ({"publish_wait_s": 0}, {"max_pending_publishes": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NetParams(**bad)


async def test_a_queue_that_does_not_drain_is_waited_for_once_until_it_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # no network: a peer queue nobody drains, as when a peer stops reading; the
    # waits run in virtual time (exact, and no real time passes)
    host = make_host(LINE)
    pubsub = host._pubsub
    peer = ID.from_base58(Identity.generate().peer_id)
    queue = RpcQueue()
    for _ in range(20):
        queue.push(rpc_pb2.RPC())
    pubsub.peer_queues[peer] = queue
    t0 = trio.current_time()
    assert await pubsub.wait_for_room(lambda: [peer], 14, 0.3) == [peer]
    assert trio.current_time() - t0 >= 0.3
    with trio.fail_after(0.1):  # stalled: not waited for again
        assert await pubsub.wait_for_room(lambda: [peer], 14, 0.3) == []
    pubsub._on_queue_pop(peer)  # the sending loop took one: the peer counts again
    assert pubsub.crowded_peers([peer], 14) == [peer]


def test_messages_a_full_outbound_queue_drops_are_counted() -> None:
    host = make_host(LINE)
    peer = ID.from_base58(Identity.generate().peer_id)
    rpc = rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"x"), rpc_pb2.Message(data=b"y")])
    host._gossipsub._handle_dropped_rpc(peer, rpc, "queue_full")
    host._gossipsub._handle_dropped_rpc(
        peer, rpc_pb2.RPC(control=rpc_pb2.ControlMessage()), "queue_full"
    )  # control only: not a message
    assert host.statistics().dropped_queue_full == 2


def test_queue_stats_reports_the_outbound_queues_and_is_zero_when_idle() -> None:
    host = make_host(LINE)
    assert host.queue_stats() == {
        "pubsub_outbound_total": 0,
        "pubsub_outbound_max_peer": 0,
        "pubsub_writing": 0,
        "gossip_inbox": 0,
        "publishes_waiting": 0,
        "requests_in_serving": 0,
        "requests_out_inflight": 0,
        "channels_open": 0,
        "calls_in_serving": 0,
        "calls_out_inflight": 0,
    }
    for entries in (3, 5):  # two peers whose queues nobody drains
        queue = RpcQueue()
        for _ in range(entries):
            queue.push(rpc_pb2.RPC())
        host._pubsub.peer_queues[ID.from_base58(Identity.generate().peer_id)] = queue
    stats = host.queue_stats()
    assert (stats["pubsub_outbound_total"], stats["pubsub_outbound_max_peer"]) == (8, 5)
