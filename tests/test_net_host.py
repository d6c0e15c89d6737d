"""MeshHost against real py-libp2p hosts on 127.0.0.1, all in one trio process.

No mocks: every test starts real hosts (TCP + Noise + yamux + GossipSub).
Conditions are awaited under ``trio.fail_after``; the only sleeps pace a
publisher or play a slow handler, never stand in for synchronisation.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from meshd.core.identity import Identity
from meshd.net import (
    InvalidMessage,
    MeshHost,
    MessageTooLarge,
    NetError,
    NetParams,
    PeerUnreachable,
    RemoteError,
    RequestTimeout,
)
from meshd.testing.nethosts import FAST, LINE, connected, make_host, wait_until


class Running:
    """A host running in its own cancel scope, so a test can stop just it."""

    def __init__(self, host: MeshHost) -> None:
        self.host = host
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.host.run(task_status=task_status)
        finally:
            self.stopped.set()

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(10):
            await self.stopped.wait()


@asynccontextmanager
async def cluster(*hosts: MeshHost) -> AsyncIterator[list[Running]]:
    """Start ``hosts`` in order (each started() before the next); stop all at exit."""
    async with trio.open_nursery() as nursery:
        running = [Running(h) for h in hosts]
        for r in running:
            await nursery.start(r.run)
        yield running
        nursery.cancel_scope.cancel()


async def echo(peer_id: str, data: bytes) -> bytes:
    return data


async def pair(
    params_a: NetParams = LINE, params_b: NetParams = LINE
) -> tuple[MeshHost, Callable[[], MeshHost]]:
    """Host ``a`` and a factory for ``b`` bootstrapped from ``a`` (call after a runs)."""
    a = make_host(params_a)
    return a, lambda: make_host(params_b, [a.listen_addrs[0]])


# ------------------------------------------------------------------- discovery


async def test_five_hosts_find_each_other_from_one_bootstrap_and_all_gossip() -> None:
    seed = make_host()
    received: dict[int, dict[str, bytes]] = {i: {} for i in range(5)}
    async with cluster(seed):
        others = [make_host(FAST, [seed.listen_addrs[0]]) for _ in range(4)]
        hosts = [seed, *others]
        for i, h in enumerate(hosts):
            h.subscribe("meshd/test", lambda author, data, i=i: received[i].update({author: data}))
        t0 = time.monotonic()
        async with cluster(*others):
            await wait_until(lambda: all(len(h.connected_peers()) == 4 for h in hosts))
            formed_s = time.monotonic() - t0
            print(f"\n5-host mesh formed in {formed_s:.2f} s")
            for i, h in enumerate(hosts):
                await h.publish("meshd/test", f"hello from {i}".encode())
            await wait_until(lambda: all(len(r) == 4 for r in received.values()))
            for i, h in enumerate(hosts):
                expected = {
                    o.peer_id: f"hello from {j}".encode() for j, o in enumerate(hosts) if o is not h
                }
                assert received[i] == expected  # every other author, never our own
            # The mesh may form (within one exchange interval) before a
            # newcomer's own exchange is answered: every one answers in time.
            await wait_until(lambda: all(h.statistics().px_rounds > 0 for h in others))


async def test_joining_survives_a_bootstrap_node_that_is_down() -> None:
    """Two bootstrap nodes, the first down when a newcomer joins: the newcomer
    finds the whole mesh through the second and peer exchange."""
    b1 = make_host()
    async with cluster(b1) as (r1,):
        b2 = make_host(FAST, [b1.listen_addrs[0]])
        async with cluster(b2):
            boots = [b1.listen_addrs[0], b2.listen_addrs[0]]
            members = [
                make_host(FAST, [boots[0]]),  # knows only b1
                make_host(FAST, [boots[1]]),  # knows only b2
                make_host(FAST, boots),
            ]
            async with cluster(*members):
                live = [b2, *members]
                await wait_until(lambda: all(len(h.connected_peers()) == 4 for h in live), 30)
                await r1.stop()
                await wait_until(lambda: all(len(h.connected_peers()) == 3 for h in live), 30)
                newcomer = make_host(FAST, boots)  # b1 first, and b1 is down
                async with cluster(newcomer):
                    await wait_until(lambda: all(connected(newcomer, h) for h in live), 30)
                    # the members beyond b2 were learned by asking, not configured
                    assert newcomer.statistics().px_rounds > 0
                    assert newcomer.statistics().dials_failed >= 1  # b1 was tried


async def test_a_newcomer_whose_only_bootstrap_dies_still_finds_later_joiners() -> None:
    """The newcomer's one bootstrap node dies after it joined; a host that joins
    later through the other bootstrap node and dials nobody itself is still
    found by the newcomer, through peer exchange with the peers it met."""
    b1 = make_host()
    async with cluster(b1) as (r1,):
        b2 = make_host(FAST, [b1.listen_addrs[0]])
        async with cluster(b2):
            member = make_host(FAST, [b2.listen_addrs[0]])
            newcomer = make_host(FAST, [b1.listen_addrs[0]])  # only b1
            async with cluster(member, newcomer):
                live = [b2, member]
                await wait_until(lambda: all(connected(newcomer, h) for h in live), 30)
                await r1.stop()
                await wait_until(lambda: b1.peer_id not in newcomer.connected_peers(), 30)
                late = make_host(LINE, [b2.listen_addrs[0]])  # dials b2 and no one else
                async with cluster(late):
                    await wait_until(lambda: connected(newcomer, late), 30)
                    assert set(newcomer.connected_peers()) == {
                        b2.peer_id,
                        member.peer_id,
                        late.peer_id,
                    }


# ------------------------------------------------------------ request/response


async def test_request_round_trip_and_ten_megabyte_response() -> None:
    blob = hashlib.sha256(b"seed").digest() * (10 * 1024 * 1024 // 32)
    a, make_b = await pair()
    seen: list[tuple[str, bytes]] = []

    async def hello(peer_id: str, data: bytes) -> bytes:
        seen.append((peer_id, data))
        return b"hello, " + data

    async def fetch(peer_id: str, data: bytes) -> bytes:
        return blob

    a.handle("/meshd/test/hello/1", hello)
    a.handle("/meshd/test/blob/1", fetch)
    async with cluster(a):
        b = make_b()
        async with cluster(b):
            assert await b.request(a.peer_id, "/meshd/test/hello/1", b"b") == b"hello, b"
            assert seen == [(b.peer_id, b"b")]
            t0 = time.monotonic()
            got = await b.request(a.peer_id, "/meshd/test/blob/1", b"")
            print(f"\n10 MB response in {time.monotonic() - t0:.2f} s")
            assert len(got) == len(blob) and got == blob
            assert b.statistics().requests_out == 2 and a.statistics().requests_in == 2


async def test_oversized_requests_are_refused_by_sender_and_by_receiver() -> None:
    small = NetParams(target_peers=1, max_request_bytes=64 * 1024)
    a, make_b = await pair(params_a=small)
    calls: list[int] = []

    async def count(peer_id: str, data: bytes) -> bytes:
        calls.append(len(data))
        return b"ok"

    a.handle("/meshd/test/count/1", count)
    async with cluster(a):
        b = make_b()  # its own bound is the default 1 MiB
        async with cluster(b):
            with pytest.raises(MessageTooLarge, match="max_request_bytes"):
                await b.request(a.peer_id, "/meshd/test/count/1", b"x" * (1024 * 1024 + 1))
            assert a.statistics().requests_in == 0  # never left the sender
            with pytest.raises(MessageTooLarge, match="refused"):
                await b.request(a.peer_id, "/meshd/test/count/1", b"x" * (512 * 1024))
            assert calls == []  # the receiver's handler never saw it
            assert a.statistics().requests_in_failed == 1
            assert await b.request(a.peer_id, "/meshd/test/count/1", b"x" * 1000) == b"ok"
            assert calls == [1000]


async def test_handler_exception_is_a_remote_error_and_the_host_keeps_serving() -> None:
    a, make_b = await pair()

    async def broken(peer_id: str, data: bytes) -> bytes:
        raise KeyError("no such job")

    a.handle("/meshd/test/broken/1", broken)
    a.handle("/meshd/test/echo/1", echo)
    async with cluster(a):
        b = make_b()
        async with cluster(b):
            with pytest.raises(RemoteError, match="KeyError.*no such job"):
                await b.request(a.peer_id, "/meshd/test/broken/1", b"")
            with pytest.raises(RemoteError, match="does not serve"):
                await b.request(a.peer_id, "/meshd/test/nobody/1", b"")
            assert await b.request(a.peer_id, "/meshd/test/echo/1", b"still here") == b"still here"


async def test_request_timeout() -> None:
    a, make_b = await pair()

    async def slow(peer_id: str, data: bytes) -> bytes:
        await trio.sleep(5)
        return b"late"

    a.handle("/meshd/test/slow/1", slow)
    a.handle("/meshd/test/echo/1", echo)
    async with cluster(a):
        b = make_b()
        async with cluster(b):
            t0 = time.monotonic()
            with pytest.raises(RequestTimeout, match="0.3 s"):
                await b.request(a.peer_id, "/meshd/test/slow/1", b"", timeout_s=0.3)
            assert time.monotonic() - t0 < 1.0
            assert await b.request(a.peer_id, "/meshd/test/echo/1", b"ok") == b"ok"


async def test_request_to_a_stopped_host_fails_fast_and_clean_shutdown_frees_the_port() -> None:
    a = make_host(FAST)
    a.handle("/meshd/test/echo/1", echo)
    got: list[bytes] = []
    async with cluster(a) as (ra,):
        b = make_host(FAST, [a.listen_addrs[0]])
        c = make_host(FAST, [a.listen_addrs[0]])
        c.subscribe("meshd/test", lambda author, data: got.append(data))
        async with cluster(b, c):
            await wait_until(lambda: connected(b, c) and connected(a, b) and connected(a, c))
            assert await b.request(a.peer_id, "/meshd/test/echo/1", b"x") == b"x"
            port = int(a.listen_addrs[0].split("/tcp/")[1].split("/")[0])

            await ra.stop()  # run() returned, without raising

            with socket.socket() as s:  # no listener left (SO_REUSEADDR: TIME_WAIT is fine)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen()
            t0 = time.monotonic()
            with pytest.raises(PeerUnreachable):
                await b.request(a.peer_id, "/meshd/test/echo/1", b"x")
            assert time.monotonic() - t0 < 2.0
            await wait_until(lambda: a.peer_id not in b.connected_peers())
            await b.publish("meshd/test", b"after the stop")  # the others keep gossiping
            await wait_until(lambda: got == [b"after the stop"])


# ------------------------------------------------------------------------ gossip


async def test_topic_validator_drops_invalid_messages_before_forwarding() -> None:
    # line topology a - b - c: c hears a only through b, whose validator rejects b"bad"
    a = make_host(NetParams(target_peers=1, max_gossip_bytes=56 * 1024))
    got_b: list[bytes] = []
    got_c: list[bytes] = []
    a.subscribe("meshd/test", lambda author, data: None)
    async with cluster(a):
        b = make_host(LINE, [a.listen_addrs[0]])
        b.subscribe("meshd/test", lambda author, data: got_b.append(data))
        b.set_topic_validator("meshd/test", lambda author, data: data != b"bad")
        async with cluster(b):
            c = make_host(LINE, [b.listen_addrs[0]])
            c.subscribe("meshd/test", lambda author, data: got_c.append(data))
            async with cluster(c):
                await wait_until(lambda: connected(a, b) and connected(b, c))
                assert not connected(a, c)
                await wait_until(lambda: b.peer_id in a.mesh_peers("meshd/test"))
                await a.publish("meshd/test", b"bad")
                await a.publish("meshd/test", b"x" * (52 * 1024))  # over b's 48 KiB bound
                await a.publish("meshd/test", b"good")
                await wait_until(lambda: got_c == [b"good"])
                assert got_b == [b"good"]
                stats = b.statistics()
                assert (stats.dropped_invalid, stats.dropped_oversize) == (1, 1)
                with pytest.raises(MessageTooLarge, match="max_gossip_bytes"):
                    await b.publish("meshd/test", b"x" * (b.params.max_gossip_bytes + 1))
                with pytest.raises(InvalidMessage):
                    await b.publish("meshd/test", b"bad")


async def test_idontwant_only_for_large_messages_and_sender_records_checked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libp2p_hooks.py: IDONTWANT goes out only for messages of at least
    ``idontwant_min_bytes`` (py-libp2p sends one per mesh peer for every
    message), and a peer's unchanged signed peer record is verified once per
    host, not on every RPC."""
    from meshd.net import libp2p_hooks

    checked: list[str] = []
    library_check = libp2p_hooks._consume_signed_record

    def counting_check(msg: object, host: object, peer_id: object) -> bool:
        checked.append(str(peer_id))
        return library_check(msg, host, peer_id)  # type: ignore[arg-type]

    monkeypatch.setattr(libp2p_hooks, "_consume_signed_record", counting_check)
    a = make_host()
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    async with cluster(a):
        b, c = make_host(FAST, [a.listen_addrs[0]]), make_host(FAST, [a.listen_addrs[0]])
        hosts = [a, b, c]
        sent: dict[int, int] = {0: 0, 1: 0, 2: 0}
        for i, h in enumerate(hosts):
            h.subscribe("meshd/test", lambda author, data, i=i: got[i].append(len(data)))
            emit = h._gossipsub.emit_idontwant

            async def counting_emit(
                msg_ids: list[bytes], to_peer: object, i: int = i, emit=emit
            ) -> None:
                sent[i] += 1
                await emit(msg_ids, to_peer)

            h._gossipsub.emit_idontwant = counting_emit  # type: ignore[method-assign]
        async with cluster(b, c):
            await wait_until(lambda: all(len(h.mesh_peers("meshd/test")) == 2 for h in hosts))
            for n in range(20):
                await hosts[n % 3].publish("meshd/test", b"s" * 200)
            await wait_until(
                lambda: (
                    all(len(g) == 13 or len(g) == 14 for g in got.values())
                    and sum(map(len, got.values())) == 40
                )
            )
            assert sent == {0: 0, 1: 0, 2: 0}
            rpcs_checked = len(checked)
            await a.publish("meshd/test", b"L" * 4096)
            await wait_until(lambda: got[1][-1:] == [4096] and got[2][-1:] == [4096])
            await wait_until(lambda: sent[1] > 0 and sent[2] > 0)
    # 3 hosts x 2 peers: each pair's record once, however many RPCs carried it
    # (40+ messages and their forwards went between them).
    assert rpcs_checked <= 6, checked


def test_sender_record_memo_rechecks_changed_records_and_never_keeps_a_rejected_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.pubsub.pb import rpc_pb2

    from meshd.net import libp2p_hooks

    verdicts = {b"good-1": True, b"good-2": True, b"forged": False}
    calls: list[bytes] = []

    def fake_check(msg: rpc_pb2.RPC, host: object, peer_id: object) -> bool:
        calls.append(msg.senderRecord)
        return verdicts[msg.senderRecord]

    class Store:
        pass

    class Host:
        store = Store()

        def get_peerstore(self) -> Store:
            return self.store

    monkeypatch.setattr(libp2p_hooks, "_consume_signed_record", fake_check)
    host = Host()
    libp2p_hooks.remember_sender_records(host, 2)

    def rpc(record: bytes | None) -> rpc_pb2.RPC:
        m = rpc_pb2.RPC()
        if record is not None:
            m.senderRecord = record
        return m

    check = libp2p_hooks._consume_signed_record_once
    assert check(rpc(None), host, "p1") and calls == []  # nothing to check
    assert check(rpc(b"good-1"), host, "p1") and check(rpc(b"good-1"), host, "p1")
    assert calls == [b"good-1"]
    assert check(rpc(b"good-2"), host, "p1") and calls[-1] == b"good-2"  # changed: checked again
    assert not check(rpc(b"forged"), host, "p1") and not check(rpc(b"forged"), host, "p1")
    assert calls.count(b"forged") == 2  # a rejected record is never remembered
    assert check(rpc(b"good-1"), host, "p2") and calls[-1] == b"good-1"  # per peer
    assert check(rpc(b"good-2"), host, "p3")  # over the bound: p1, the oldest, is forgotten
    n = len(calls)
    assert check(rpc(b"good-2"), host, "p1") and len(calls) == n + 1


async def test_a_neighbour_over_its_budget_is_dropped_before_any_check() -> None:
    """libp2p_hooks.py push_msg: each neighbour has a token bucket
    (``forwarder_rate_per_s``, ``forwarder_burst``) charged before py-libp2p's
    signature check and our validator; the excess is dropped unchecked and
    counted, and the neighbour is heard again once its bucket refills."""
    b_params = NetParams(target_peers=1, forwarder_rate_per_s=20.0, forwarder_burst=30.0)
    a = make_host(LINE)
    at_a: list[bytes] = []
    a.subscribe("meshd/test", lambda author, data: at_a.append(data))
    checked: list[bytes] = []
    got: list[bytes] = []
    async with cluster(a):
        b = make_host(b_params, [a.listen_addrs[0]])
        b.subscribe("meshd/test", lambda author, data: got.append(data))
        b.set_topic_validator("meshd/test", lambda author, data: checked.append(data) is None)
        async with cluster(b):
            await wait_until(lambda: b.peer_id in a.mesh_peers("meshd/test"))
            t0 = time.monotonic()
            for i in range(300):
                await a.publish("meshd/test", b"m%d" % i)
            await wait_until(lambda: len(got) + b.statistics().dropped_over_budget == 300)
            elapsed = time.monotonic() - t0
            # the burst, plus 20/s while the flood lasted (and a little slack)
            assert 30 <= len(got) <= 30 + 20 * elapsed + 5, (len(got), elapsed)
            assert checked == got  # nothing over the budget reached the validator
            assert b.statistics().dropped_over_budget == 300 - len(got)
            await trio.sleep(0.5)  # refills ~10 tokens
            await a.publish("meshd/test", b"after")
            await wait_until(lambda: got[-1:] == [b"after"])
            for i in range(50):  # b's own publishes are never charged to a bucket (burst 30)
                await b.publish("meshd/test", b"b%d" % i)
            await wait_until(lambda: len(at_a) == 50)


async def test_a_neighbour_passing_on_provably_invalid_messages_is_blocked() -> None:
    """host.py PROVABLY_INVALID: a neighbour that hands over
    ``invalid_forwarder_limit`` messages the validator calls provably invalid
    within the window is blocked; plain rejections (a verdict that depends on
    local state) never count against it."""
    from meshd.net import PROVABLY_INVALID

    b_params = NetParams(
        target_peers=1, invalid_forwarder_limit=10, invalid_forwarder_window_s=10.0
    )
    a = make_host(LINE)
    a.subscribe("meshd/test", lambda author, data: None)
    async with cluster(a):
        b = make_host(b_params, [a.listen_addrs[0]])
        b.subscribe("meshd/test", lambda author, data: None)
        b.set_topic_validator(
            "meshd/test",
            lambda author, data: (
                PROVABLY_INVALID if data.startswith(b"forged") else not data.startswith(b"stale")
            ),
        )
        async with cluster(b):
            await wait_until(lambda: b.peer_id in a.mesh_peers("meshd/test"))
            for i in range(40):
                await a.publish("meshd/test", b"stale %d" % i)
            await wait_until(lambda: b.statistics().dropped_invalid == 40)
            assert connected(a, b) and b.statistics().forwarders_blocked == 0
            for i in range(9):
                await a.publish("meshd/test", b"forged %d" % i)
            await wait_until(lambda: b.statistics().dropped_invalid == 49)
            assert connected(a, b) and b.statistics().forwarders_blocked == 0
            await a.publish("meshd/test", b"forged 9")
            await wait_until(lambda: b.statistics().forwarders_blocked == 1)
            await wait_until(lambda: not connected(a, b))
            with pytest.raises(PeerUnreachable):
                await b.request(a.peer_id, "/meshd/test/echo/1", b"x")


async def test_burst_of_40_per_second_for_2_seconds_reaches_every_host() -> None:
    await _burst_through_line(NetParams(target_peers=1), expect_all=True)


async def test_a_low_topic_budget_stops_forwarding_and_is_counted() -> None:
    await _burst_through_line(
        NetParams(target_peers=1, topic_rate_limits_per_s={"meshd/burst": 10.0}),
        expect_all=False,
    )


async def _burst_through_line(middle: NetParams, *, expect_all: bool) -> None:
    """a publishes 80 messages at 40/s; b forwards them to c (a - b - c)."""
    got: dict[str, set[bytes]] = {"b": set(), "c": set()}
    a = make_host(LINE)
    async with cluster(a):
        b = make_host(middle, [a.listen_addrs[0]])
        b.subscribe("meshd/burst", lambda author, data: got["b"].add(data))
        async with cluster(b):
            c = make_host(LINE, [b.listen_addrs[0]])
            c.subscribe("meshd/burst", lambda author, data: got["c"].add(data))
            a.subscribe("meshd/burst", lambda author, data: None)
            async with cluster(c):
                await wait_until(lambda: connected(a, b) and connected(b, c))
                await wait_until(
                    lambda: (
                        b.peer_id in a.mesh_peers("meshd/burst")
                        and c.peer_id in b.mesh_peers("meshd/burst")
                    )
                )
                sent = {f"burst {i}".encode() for i in range(80)}
                for i in range(80):
                    await a.publish("meshd/burst", f"burst {i}".encode())
                    await trio.sleep(1 / 40)  # pacing the publisher, not synchronisation
                await wait_until(lambda: got["b"] == sent)  # direct neighbour: always all
                if expect_all:
                    await wait_until(lambda: got["c"] == sent)
                    assert b.statistics().dropped_rate_limited == 0
                else:
                    await wait_until(lambda: b.statistics().dropped_rate_limited > 0)
                    assert len(got["c"]) < len(sent)


# ------------------------------------------------------- blocking, scores, garbage


async def test_block_peer_disconnects_and_refuses_it() -> None:
    a, make_b = await pair()
    a.handle("/meshd/test/echo/1", echo)
    async with cluster(a):
        b = make_b()
        b.handle("/meshd/test/echo/1", echo)
        async with cluster(b):
            await wait_until(lambda: connected(a, b))
            a.block_peer(b.peer_id)
            await wait_until(
                lambda: (
                    b.peer_id not in a.connected_peers() and a.peer_id not in b.connected_peers()
                )
            )
            with pytest.raises(PeerUnreachable, match="blocked"):
                await a.request(b.peer_id, "/meshd/test/echo/1", b"x")
            with pytest.raises(NetError):  # b dials again: a drops the connection
                await b.request(a.peer_id, "/meshd/test/echo/1", b"x")
            assert a.statistics().refused_peers >= 1
            await wait_until(lambda: not connected(a, b))


async def test_peers_below_the_app_score_threshold_are_disconnected() -> None:
    strict = NetParams(
        target_peers=1, peer_exchange_interval_s=0.2, app_score_disconnect_below=-1.0
    )
    a, make_b = await pair(params_a=strict)
    async with cluster(a):
        b = make_b()
        async with cluster(b):
            await wait_until(lambda: connected(a, b))
            a.set_app_score(lambda peer_id: -5.0 if peer_id == b.peer_id else 0.0)
            await wait_until(lambda: b.peer_id not in a.connected_peers())
            assert a._gossipsub.scorer.score(b._pid, []) == pytest.approx(-5.0)


async def test_garbage_on_a_stream_gets_an_error_and_the_host_survives() -> None:
    a, make_b = await pair()
    a.handle("/meshd/test/echo/1", echo)
    async with cluster(a):
        b = make_b()
        async with cluster(b):
            await wait_until(lambda: connected(a, b))
            for garbage in (b"\xff" * 16, b"\x05ab", b""):
                stream = await b._host.new_stream(a._pid, ["/meshd/test/echo/1"])
                await stream.write(garbage or b"\x80")
                await stream.close_write()
                reply = await stream.read(100)
                assert reply[:1] == b"\x04"  # Status.BAD_REQUEST
                await stream.reset()
            assert await b.request(a.peer_id, "/meshd/test/echo/1", b"ok") == b"ok"
            assert a.statistics().requests_in_failed == 3


async def test_garbage_on_the_pubsub_stream_does_not_take_the_host_down() -> None:
    a, make_b = await pair()
    a.handle("/meshd/test/echo/1", echo)
    async with cluster(a):
        b = make_b()
        async with cluster(b):
            await wait_until(lambda: connected(a, b))
            stream = await b._host.new_stream(a._pid, ["/meshsub/1.2.0"])
            await stream.write(b"\x08" + b"\xff" * 8)  # an RPC protobuf cannot decode
            await wait_until(lambda: a.statistics().broken_streams == 1)
            # a dropped the connection to start afresh; b reconnects on demand
            assert await b.request(a.peer_id, "/meshd/test/echo/1", b"ok") == b"ok"


async def test_mdns_finds_a_peer_without_bootstrap() -> None:
    # mDNS advertises the machine's interface addresses, so listen on all of them
    params = NetParams(mdns=True, peer_exchange_interval_s=0.5)
    a = MeshHost(Identity.generate(), params, ["/ip4/0.0.0.0/tcp/0"])
    b = MeshHost(Identity.generate(), params, ["/ip4/0.0.0.0/tcp/0"])
    async with cluster(a, b):
        await wait_until(lambda: connected(a, b))


def test_own_record_is_reused_within_its_age_and_asked_for_again_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libp2p_hooks.py: py-libp2p asks for our signed peer record (rebuilding
    our listen addresses) on every RPC gossipsub sends; a host with a memo
    asks once per ``local_record_reuse_s``, a host without asks every time."""
    import libp2p.pubsub.gossipsub as gossipsub_module

    from meshd.net import libp2p_hooks

    calls: list[object] = []

    def library(host: object) -> tuple[bytes, bool]:
        calls.append(host)
        return f"record-{len(calls)}".encode(), True

    class Host:
        pass

    monkeypatch.setattr(libp2p_hooks, "_env_to_send", library)
    monkeypatch.setattr(gossipsub_module, "env_to_send_in_RPC", library)
    reused, plain = Host(), Host()
    libp2p_hooks.reuse_local_record(reused, 0.2)
    libp2p_hooks.reuse_local_record(plain, 0)
    lookup = gossipsub_module.env_to_send_in_RPC
    assert lookup is libp2p_hooks._env_to_send_reused  # installed where gossipsub looks
    assert [lookup(reused) for _ in range(5)] == [(b"record-1", True)] + [(b"record-1", False)] * 4
    assert len(calls) == 1
    lookup(plain), lookup(plain)
    assert calls[1:] == [plain, plain]
    time.sleep(0.25)
    assert lookup(reused) == (b"record-4", True)  # aged out: the library again
