"""Persistent channels (meshd.net.channels) between real libp2p hosts on loopback:
many calls on one stream, the bound on calls in flight, reopening after a
reset, idle close, the per-request fallback, and a peer's bad frames."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio

from meshd.net import NetParams, RemoteError
from meshd.net.framing import encode_uvarint
from meshd.testing.nethosts import connected, make_host, wait_until
from tests.test_net_host import cluster, echo

CHANNEL = "/meshd/test/chan/2"
SINGLE = "/meshd/test/chan/1"


def params(**kw: float) -> NetParams:
    return NetParams(target_peers=1, peer_exchange_interval_s=0.5, **kw)  # type: ignore[arg-type]


async def test_many_calls_share_one_stream_and_answers_match_their_calls() -> None:
    a = make_host(params())
    a.handle_channel(CHANNEL, echo)
    async with cluster(a):
        b = make_host(params(), [a.listen_addrs[0]])
        async with cluster(b):
            got: dict[int, bytes] = {}

            async def one(i: int) -> None:
                got[i] = await b.call(a.peer_id, CHANNEL, b"%d" % i, fallback=SINGLE)

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(one, i)
            assert got == {i: b"%d" % i for i in range(60)}
            assert b.statistics().channels_out == 1 and a.statistics().channels_in == 1
            assert b.statistics().calls_out == 60 and a.statistics().calls_in == 60
            assert b.statistics().requests_out == 0  # no stream per message
            assert b.queue_stats()["channels_open"] == 1


async def test_a_sender_never_has_more_calls_in_flight_than_the_bound() -> None:
    a = make_host(params())
    running = 0
    most = 0
    release = trio.Event()

    async def slow(peer: str, data: bytes) -> bytes:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return data

    a.handle_channel(CHANNEL, slow)
    async with cluster(a):
        b = make_host(params(channel_max_inflight=3), [a.listen_addrs[0]])
        async with cluster(b):
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(partial(b.call, fallback=SINGLE), a.peer_id, CHANNEL, b"x")
                await wait_until(lambda: running == 3)
                await trio.sleep(0.3)  # the other seven wait in the sender
                assert running == 3 and a.statistics().calls_in == 3
                release.set()
            assert most == 3 and a.statistics().calls_in == 10
            assert a.statistics().calls_in_busy == 0


async def test_a_server_answers_busy_beyond_its_bound() -> None:
    a = make_host(params(channel_max_inflight=2))
    release = trio.Event()

    async def slow(peer: str, data: bytes) -> bytes:
        await release.wait()
        return data

    a.handle_channel(CHANNEL, slow)
    async with cluster(a):
        b = make_host(params(channel_max_inflight=8), [a.listen_addrs[0]])
        async with cluster(b):
            errors: list[str] = []

            async def one() -> None:
                try:
                    await b.call(a.peer_id, CHANNEL, b"x", fallback=SINGLE)
                except RemoteError as exc:
                    errors.append(str(exc))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one)
                await wait_until(lambda: a.statistics().calls_in == 5)
                release.set()
            assert len(errors) == 3 and all("BUSY" in e for e in errors)
            assert a.statistics().calls_in_busy == 3
            assert await b.call(a.peer_id, CHANNEL, b"again", fallback=SINGLE) == b"again"


async def test_a_channel_the_server_resets_is_reopened_by_the_next_call() -> None:
    a = make_host(params(channel_idle_s=0.2))  # resets a channel idle for 0.4 s
    a.handle_channel(CHANNEL, echo)
    async with cluster(a):
        b = make_host(params(channel_idle_s=600), [a.listen_addrs[0]])
        async with cluster(b):
            assert await b.call(a.peer_id, CHANNEL, b"1", fallback=SINGLE) == b"1"
            assert b.queue_stats()["channels_open"] == 1
            await wait_until(lambda: b.queue_stats()["channels_open"] == 0, timeout_s=5)
            assert await b.call(a.peer_id, CHANNEL, b"2", fallback=SINGLE) == b"2"
            assert b.statistics().channels_out == 2 and a.statistics().channels_in == 2
            assert a.statistics().channel_bad_frames == 0  # a reset is no bad frame


async def test_a_channel_ended_on_our_side_is_reopened_by_the_next_call() -> None:
    a = make_host(params())
    a.handle_channel(CHANNEL, echo)
    async with cluster(a):
        b = make_host(params(), [a.listen_addrs[0]])
        async with cluster(b):
            assert await b.call(a.peer_id, CHANNEL, b"1", fallback=SINGLE) == b"1"
            (ch,) = b._channels._out.values()
            await ch.stream.reset()  # as a write that missed its deadline does
            assert await b.call(a.peer_id, CHANNEL, b"2", fallback=SINGLE) == b"2"
            assert b.statistics().channels_out == 2


async def test_an_idle_channel_is_closed_and_reopened_on_demand() -> None:
    a = make_host(params())
    a.handle_channel(CHANNEL, echo)
    async with cluster(a):
        b = make_host(params(channel_idle_s=0.3), [a.listen_addrs[0]])
        async with cluster(b):
            assert await b.call(a.peer_id, CHANNEL, b"1", fallback=SINGLE) == b"1"
            assert b.queue_stats()["channels_open"] == 1
            await wait_until(lambda: b.queue_stats()["channels_open"] == 0, timeout_s=5)
            assert await b.call(a.peer_id, CHANNEL, b"2", fallback=SINGLE) == b"2"
            assert b.statistics().channels_out == 2


async def test_a_peer_without_the_channel_protocol_is_called_per_request() -> None:
    a = make_host(params())
    a.handle(SINGLE, echo)  # an older node: no channel protocol
    async with cluster(a):
        b = make_host(params(), [a.listen_addrs[0]])
        async with cluster(b):
            for i in range(3):
                assert await b.call(a.peer_id, CHANNEL, b"%d" % i, fallback=SINGLE) == b"%d" % i
            s = b.statistics()
            assert s.channel_fallbacks == 3 and s.requests_out == 3 and s.channels_out == 0
            assert a.statistics().requests_in == 3


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 12,  # a request id longer than any uvarint
        b"\x00\x80\x00",  # a non-minimal length
        encode_uvarint(0) + encode_uvarint(2 * 1024 * 1024) + b"x",  # over max_request_bytes
    ],
)
async def test_bad_frames_reset_that_stream_only_and_are_counted(garbage: bytes) -> None:
    a = make_host(params())
    a.handle_channel(CHANNEL, echo)
    async with cluster(a):
        b = make_host(params(), [a.listen_addrs[0]])
        async with cluster(b):
            await wait_until(lambda: connected(a, b))
            assert await b.call(a.peer_id, CHANNEL, b"before", fallback=SINGLE) == b"before"
            stream = await b._host.new_stream(a._pid, [CHANNEL])
            await stream.write(garbage)
            reply = b""
            with trio.move_on_after(5):
                while True:
                    try:
                        chunk = await stream.read(100)
                    except Exception:  # reset by the server: what we wanted
                        break
                    if not chunk:
                        break
                    reply += chunk
            await wait_until(lambda: a.statistics().channel_bad_frames == 1)
            if len(garbage) > 10 and garbage[0] == 0 and garbage[1] != 0x80:
                assert reply[1:2] == b"\x02"  # TOO_LARGE, answered before the stream goes
            assert await b.call(a.peer_id, CHANNEL, b"after", fallback=SINGLE) == b"after"


@pytest.mark.parametrize(
    "answer",
    [
        encode_uvarint(7) + b"\x00" + encode_uvarint(2) + b"ok",  # an id never sent
        encode_uvarint(0) + b"\x09" + encode_uvarint(2) + b"ok",  # an unknown status
    ],
)
async def test_a_bad_answer_ends_the_call_and_the_channel_and_is_counted(answer: bytes) -> None:
    a = make_host(params())

    async def liar(stream: Any) -> None:  # a server that answers wrongly
        await stream.read(100)
        await stream.write(answer)
        await trio.sleep(10)

    a._host.set_stream_handler(CHANNEL, liar)
    async with cluster(a):
        b = make_host(params(), [a.listen_addrs[0]])
        async with cluster(b):
            with pytest.raises(RemoteError, match="broke"):
                await b.call(a.peer_id, CHANNEL, b"x", fallback=SINGLE, timeout_s=5)
            assert b.statistics().channel_bad_frames == 1
            assert b.queue_stats()["channels_open"] == 0


async def test_small_calls_cost_no_window_update_until_half_the_window_is_read() -> None:
    """Receive credit goes back once half a yamux window is consumed, as
    go-yamux does, not in a WINDOW_UPDATE frame after every read
    (``libp2p_hooks.batch_yamux_window_updates``); and it does go back, so a
    stream carrying more than a window keeps flowing."""
    import libp2p.stream_muxer.yamux.yamux as yamux

    updates: list[int] = []
    real = yamux.YamuxStream.send_window_update

    async def spy(self: Any, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await real(self, increment, skip_lock)

    yamux.YamuxStream.send_window_update = spy  # type: ignore[method-assign]
    try:
        a = make_host(params())
        a.handle_channel(CHANNEL, echo)
        async with cluster(a):
            b = make_host(params(), [a.listen_addrs[0]])
            async with cluster(b):
                for _ in range(100):  # ~30 KB each way: well under half a window
                    assert await b.call(a.peer_id, CHANNEL, b"x" * 300, fallback=SINGLE)
                assert updates == []
                payload = b"y" * 60_000
                for _ in range(12):  # 720 KB each way: ~3 windows
                    assert await b.call(a.peer_id, CHANNEL, payload, fallback=SINGLE) == payload
                assert len(updates) >= 4  # both sides gave credit back, more than once
                assert all(n >= yamux.DEFAULT_WINDOW_SIZE // 2 for n in updates)
    finally:
        yamux.YamuxStream.send_window_update = real  # type: ignore[method-assign]
