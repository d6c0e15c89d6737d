"""The Kademlia DHT as a discovery source (meshd/net/dht.py), on real hosts.

Real py-libp2p hosts on 127.0.0.1 in one trio process. Peer exchange is
switched off (``peer_exchange_fanout=0``) where a test shows what the DHT
finds, so every peer beyond the configured bootstrap peers was found by it.
"""

from __future__ import annotations

import dataclasses

import multiaddr
import pytest
import trio
from libp2p.abc import INetStream
from libp2p.kad_dht.common import PROTOCOL_ID
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from meshd.core.identity import Identity
from meshd.net import MeshHost, NetParams
from meshd.net.dht import DHT_PROTOCOL
from meshd.net.framing import encode_uvarint
from meshd.testing.nethosts import connected, make_host, wait_until
from tests.test_net_host import cluster

NO_PX = NetParams(
    peer_exchange_interval_s=0.5,
    peer_exchange_fanout=0,
    dht_interval_s=0.5,
    dht_min_gap_s=0.2,
)
"""Discovery by bootstrap and the DHT only."""


async def test_a_peer_two_hops_away_is_found_through_the_dht() -> None:
    """A - B - C in a line, no peer exchange: A knows only B, C only B; A's
    lookups through B find C, and discovery dials it."""
    b = make_host(NO_PX)
    async with cluster(b):
        a = make_host(NO_PX, [b.listen_addrs[0]])
        c = make_host(NO_PX, [b.listen_addrs[0]])
        async with cluster(a, c):
            await wait_until(lambda: connected(a, c), 30)
            assert a.statistics().px_rounds == 0
            assert a.statistics().dht_lookups > 0
            assert b.statistics().dht_served > 0


async def test_joining_survives_a_dead_bootstrap_node_through_the_dht() -> None:
    """Two bootstrap nodes, the first down when a newcomer joins, no peer
    exchange: the newcomer reaches the second and finds, through the DHT,
    the members that joined through it."""
    b1 = make_host(NO_PX)
    async with cluster(b1) as (r1,):
        b2 = make_host(NO_PX, [b1.listen_addrs[0]])
        async with cluster(b2):
            members = [make_host(NO_PX, [b2.listen_addrs[0]]) for _ in range(2)]
            async with cluster(*members):
                await wait_until(lambda: all(connected(b2, m) for m in members), 30)
                boots = [b1.listen_addrs[0], b2.listen_addrs[0]]
                await r1.stop()
                newcomer = make_host(NO_PX, boots)  # b1 first, and b1 is down
                async with cluster(newcomer):
                    live = [b2, *members]
                    await wait_until(lambda: all(connected(newcomer, h) for h in live), 30)
                    stats = newcomer.statistics()
                    assert stats.dials_failed >= 1  # b1 was tried
                    assert stats.px_rounds == 0
                    assert stats.dht_found > 0


async def _exchange(host_a: MeshHost, b: MeshHost, raw: bytes) -> bytes:
    """Write ``raw`` on a new DHT stream from ``host_a`` to ``b``; what comes back
    (b"" when the stream is reset or closed without an answer)."""
    stream = await host_a._host.new_stream(b._pid, [DHT_PROTOCOL])
    try:
        await stream.write(raw)
        out = b""
        with trio.fail_after(10):
            while True:
                try:
                    chunk = await stream.read(65536)
                except Exception:
                    break
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        try:
            await stream.reset()
        except Exception:
            pass


def _framed(msg: Message) -> bytes:
    body = msg.SerializeToString()
    return encode_uvarint(len(body)) + body


def _unframed(raw: bytes) -> bytes:
    """The body of one uvarint-prefixed frame (the whole frame must be there)."""
    length, shift, i = 0, 0, 0
    while True:
        length |= (raw[i] & 0x7F) << shift
        shift += 7
        i += 1
        if raw[i - 1] < 0x80:
            break
    assert len(raw) == i + length
    return raw[i:]


async def test_bad_dht_requests_are_rejected_and_counted_and_the_host_serves_on() -> None:
    params = dataclasses.replace(NO_PX, reachability="public")
    b = make_host(params)
    async with cluster(b):
        a = make_host(params, [b.listen_addrs[0]])
        c = make_host(params, [b.listen_addrs[0]])
        async with cluster(a, c):
            await wait_until(lambda: connected(a, b) and connected(c, b), 30)
            assert b._dht is not None
            await wait_until(lambda: b._dht.table.peer_in_table(c._pid), 30)
            put = Message()
            put.type = Message.MessageType.PUT_VALUE
            put.key = b"/x/key"
            empty = Message()
            empty.type = Message.MessageType.FIND_NODE
            long_key = Message()
            long_key.type = Message.MessageType.FIND_NODE
            long_key.key = b"k" * (params.dht_max_key_bytes + 1)
            bad = [
                b"\x05\xff\xff\xff\xff\xff",  # five bytes that are not a protobuf message
                encode_uvarint(params.dht_max_message_bytes + 1) + b"x",  # over the bound
                _framed(put),  # values are not served
                _framed(empty),
                _framed(long_key),
            ]
            for raw in bad:
                assert await _exchange(a, b, raw) == b""
            assert b.statistics().dht_rejected == len(bad)
            ask = Message()
            ask.type = Message.MessageType.FIND_NODE
            ask.key = c._pid.to_bytes()
            reply_raw = await _exchange(a, b, _framed(ask))
            reply = Message()
            reply.ParseFromString(_unframed(reply_raw))
            named = {bytes(p.id) for p in reply.closerPeers}
            assert c._pid.to_bytes() in named
            assert a._pid.to_bytes() not in named  # the asker is left out
            assert b.statistics().dht_rejected == len(bad)


async def test_a_private_node_asks_but_does_not_serve() -> None:
    b = make_host(dataclasses.replace(NO_PX, reachability="private"))
    async with cluster(b):
        a = make_host(dataclasses.replace(NO_PX, reachability="public"), [b.listen_addrs[0]])
        async with cluster(a):
            await wait_until(lambda: connected(a, b), 30)
            await wait_until(lambda: b.statistics().dht_lookups > 0, 30)
            assert b._dht is not None and not b._dht.serving
            with pytest.raises(Exception):  # noqa: B017 - multistream refuses the protocol
                await a._host.new_stream(b._pid, [DHT_PROTOCOL])
            await wait_until(lambda: a._dht is not None and a._dht.serving, 30)
            await b._host.new_stream(a._pid, [DHT_PROTOCOL])


def test_peer_exchange_can_be_switched_off_but_not_made_negative() -> None:
    assert NetParams(peer_exchange_fanout=0).peer_exchange_fanout == 0
    with pytest.raises(ValueError, match="peer_exchange_fanout"):
        NetParams(peer_exchange_fanout=-1)


async def test_bad_answers_to_a_lookup_are_dropped_and_oversized_ones_store_nothing() -> None:
    """A peer answers our FIND_NODE with what the test sets: garbage, then a
    well-formed answer over ``dht_max_message_bytes`` naming 2,000 peers,
    then a small one naming one peer. The host keeps looking up; nothing of
    the oversized answer reaches its peerstore; the small answer's peer
    becomes a dial candidate."""
    answer: list[bytes] = [b"\x05garbage-not-protobuf"]
    asked = trio.Event()

    async def serve(stream: INetStream) -> None:
        try:
            await read_varint_prefixed_bytes_limited(stream, 65536)
            await stream.write(answer[0])
            await stream.close()
            asked.set()
        except Exception:
            await stream.reset()

    def naming(n: int) -> tuple[bytes, list[ID]]:
        msg = Message()
        msg.type = Message.MessageType.FIND_NODE
        ids = [ID.from_base58(Identity.generate().peer_id) for _ in range(n)]
        for pid in ids:
            entry = msg.closerPeers.add()
            entry.id = pid.to_bytes()
            entry.addrs.append(multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/9").to_bytes())
        return _framed(msg), ids

    liar = make_host(dataclasses.replace(NO_PX, dht=False))
    liar._host.set_stream_handler(PROTOCOL_ID, serve)
    async with cluster(liar):
        a = make_host(NO_PX, [liar.listen_addrs[0]])
        async with cluster(a):

            async def next_answer() -> None:
                nonlocal asked
                asked = trio.Event()
                with trio.fail_after(30):
                    await asked.wait()

            await next_answer()  # garbage
            big, big_ids = naming(2000)
            assert len(big) > NO_PX.dht_max_message_bytes
            answer[0] = big
            await next_answer()
            await next_answer()  # the one after the big answer was read, too
            store = a._host.get_peerstore()
            assert not any(pid in store.peer_ids() for pid in big_ids)
            small, _ = naming(1)
            answer[0] = small
            await wait_until(lambda: a.statistics().dht_found > 0, 30)  # only it counts
            await wait_until(lambda: a.statistics().dials_failed > 0, 30)  # discovery tried it
            assert connected(a, liar)
