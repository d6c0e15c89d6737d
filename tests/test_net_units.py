"""Unit tests of meshd.net's pure parts: framing, peer-exchange codec, params."""

from __future__ import annotations

import math

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.identity import Identity
from meshd.net import NetParams
from meshd.net.discovery import concrete_addrs, interface_ipv4s, pick_dials
from meshd.net.framing import (
    FrameReader,
    FrameTooLarge,
    FramingError,
    Status,
    encode_request,
    encode_response,
    encode_uvarint,
)
from meshd.net.px import (
    decode_px_request,
    decode_px_response,
    dialable_addr,
    encode_px_request,
    encode_px_response,
)


class FakeStream:
    """Returns the given bytes in chunks of at most ``chunk`` bytes, then raises EOF."""

    def __init__(self, data: bytes, chunk: int = 3) -> None:
        self.data = data
        self.chunk = chunk
        self.reads = 0

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        self.reads += 1
        if not self.data:
            raise EOFError("end of stream")
        take = min(self.chunk, n or self.chunk)
        out, self.data = self.data[:take], self.data[take:]
        return out


# --------------------------------------------------------------------- framing


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_uvarint_round_trip(value: int) -> None:
    async def decode() -> int:
        return await FrameReader(FakeStream(encode_uvarint(value), chunk=1)).read_uvarint()

    assert trio.run(decode) == value


def test_uvarint_known_encodings() -> None:
    assert encode_uvarint(0) == b"\x00"
    assert encode_uvarint(127) == b"\x7f"
    assert encode_uvarint(128) == b"\x80\x01"
    assert encode_uvarint(300) == b"\xac\x02"
    with pytest.raises(ValueError):
        encode_uvarint(-1)


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=700))
@settings(max_examples=50)
def test_request_frame_round_trip_any_chunking(body: bytes, chunk: int) -> None:
    async def decode() -> bytes:
        return await FrameReader(FakeStream(encode_request(body), chunk)).read_frame(2000)

    assert trio.run(decode) == body


async def test_response_round_trip() -> None:
    data = encode_response(Status.ERROR, b"boom")
    assert await FrameReader(FakeStream(data)).read_response(100) == (Status.ERROR, b"boom")


async def test_too_large_frame_is_refused_once_its_length_is_read() -> None:
    """The refusal comes with the length prefix: what else the first read
    brought is at most one chunk (``stream_read_chunk_bytes``), and the rest
    of the body is never read."""
    stream = FakeStream(encode_request(b"x" * 50_000), chunk=4096)
    with pytest.raises(FrameTooLarge) as info:
        await FrameReader(stream, read_chunk_bytes=8192).read_frame(49_999)
    assert (info.value.length, info.value.limit) == (50_000, 49_999)
    assert stream.reads == 1  # the read that brought the length prefix, nothing after it
    assert len(stream.data) == 50_003 - 4096


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # nothing at all
        b"\x05abc",  # truncated body
        b"\x80",  # truncated varint
        b"\xff" * 12,  # varint longer than 9 bytes
        b"\x80\x00",  # non-minimal varint
    ],
)
async def test_malformed_frames_raise_framing_error(wire: bytes) -> None:
    with pytest.raises(FramingError):
        await FrameReader(FakeStream(wire)).read_frame(1 << 20)


async def test_unknown_status_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="unknown response status"):
        await FrameReader(FakeStream(b"\x63\x00")).read_response(10)


# ------------------------------------------------------------------ peer exchange


def test_px_round_trip_strips_p2p_and_keeps_bounds() -> None:
    ids = [Identity.from_seed_int(i + 1).peer_id for i in range(5)]
    entries = [
        (pid, [f"/ip4/10.0.0.{i}/tcp/4001/p2p/{pid}", "/ip4/10.0.0.9/tcp/1", "/ip6/::1/tcp/2"])
        for i, pid in enumerate(ids)
    ]
    body = encode_px_response(entries, max_peers=3, max_addrs_per_peer=2)
    decoded = decode_px_response(body, max_peers=3, max_addrs_per_peer=2)
    assert [pid for pid, _ in decoded] == ids[:3]
    assert decoded[0][1] == ["/ip4/10.0.0.0/tcp/4001", "/ip4/10.0.0.9/tcp/1"]


def test_px_decoder_skips_what_it_cannot_trust() -> None:
    good = Identity.from_seed_int(7).peer_id
    body = msgpack.packb(
        [
            [good, ["/ip4/1.2.3.4/tcp/5"]],
            ["not-a-peer-id", ["/ip4/1.2.3.4/tcp/5"]],
            [good, ["/ip4/1.2.3.4/udp/5/quic-v1", "garbage", 17]],
            [good],
            "string entry",
            [good, "not a list"],
        ]
    )
    assert decode_px_response(body, 10, 4) == [(good, ["/ip4/1.2.3.4/tcp/5"])]


@given(st.binary(max_size=300))
def test_px_decoder_only_raises_value_error(junk: bytes) -> None:
    try:
        out = decode_px_response(junk, 8, 4)
    except ValueError:
        return
    assert isinstance(out, list) and len(out) <= 8


def test_px_request_caps_and_rejects() -> None:
    assert decode_px_request(encode_px_request(1000), cap=32) == 32
    assert decode_px_request(encode_px_request(5), cap=32) == 5
    for bad in (b"", b"\xc1", msgpack.packb(-1), msgpack.packb("x"), msgpack.packb(True)):
        with pytest.raises(ValueError):
            decode_px_request(bad, cap=32)


def test_dialable_addr() -> None:
    assert dialable_addr("/ip4/127.0.0.1/tcp/4001") == "/ip4/127.0.0.1/tcp/4001"
    assert dialable_addr("/dns4/example.org/tcp/1") == "/dns4/example.org/tcp/1"
    assert dialable_addr("/ip4/127.0.0.1/udp/4001") is None
    assert dialable_addr("/ip4/127.0.0.1/tcp/4001/ws") is None
    assert dialable_addr("nonsense") is None
    assert dialable_addr("/ip4/1.1.1.1/tcp/1" + "/p2p/x" * 100) is None


# ------------------------------------------------------------------------ params


def test_params_defaults_are_consistent_and_rate_overrides_apply() -> None:
    p = NetParams(topic_rate_limits_per_s={"adverts": 5.0})
    assert p.degree_low <= p.degree <= p.degree_high
    assert p.rate_limit_for("adverts") == 5.0
    assert p.rate_limit_for("offers") == p.topic_rate_limit_per_s
    assert p.app_score_disconnect_below == -math.inf


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_gossip_bytes": 0},
        {"degree_low": 7},
        {"target_peers": 100, "max_peers": 10},
        {"topic_rate_limits_per_s": {"t": 0.0}},
        {"request_timeout_s": -1.0},
    ],
)
def test_params_reject_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        NetParams(**kwargs)


# ----------------------------------------------------------- mDNS addresses


def test_mdns_advertises_each_interface_address_for_a_wildcard_listen_address() -> None:
    ips = ["198.18.0.10", "172.17.0.2"]
    assert concrete_addrs(["/ip4/0.0.0.0/tcp/4001"], ips) == [
        "/ip4/198.18.0.10/tcp/4001",
        "/ip4/172.17.0.2/tcp/4001",
    ]
    # concrete addresses stay, /ip6/:: goes, duplicates collapse
    assert concrete_addrs(
        ["/ip4/198.18.0.10/tcp/4001", "/ip6/::/tcp/4001", "/ip4/0.0.0.0/tcp/4001"], ips
    ) == ["/ip4/198.18.0.10/tcp/4001", "/ip4/172.17.0.2/tcp/4001"]
    assert concrete_addrs(["/ip4/0.0.0.0/tcp/4001"], []) == []  # nothing dialable to say


def test_interface_addresses_leave_out_loopback() -> None:
    ips = interface_ipv4s()
    assert all(not ip.startswith("127.") for ip in ips)
    assert all(len(ip.split(".")) == 4 for ip in ips)


def test_discovery_dials_wanted_peers_beyond_the_target_within_max_peers() -> None:
    """A node keeps ``wanted_peers`` of the peers it wants (its advert
    shard's, specs/PROTOCOL.md §5.2) connected even when it has
    ``target_peers`` connections already, and never dials past ``max_peers``."""
    p = NetParams(target_peers=4, wanted_peers=2, max_peers=6)
    wanted = {"w1", "w2", "w3"}.__contains__
    known = ["a", "w1", "b", "w2", "c", "w3"]  # newest first
    # short of both: the wanted first, then the newest others up to the target
    assert pick_dials(known, set(), wanted, p) == ["w1", "w2", "a", "b"]
    # at the target with no wanted peer: only wanted ones are dialled
    assert pick_dials(known, {"x", "y", "z", "v"}, wanted, p) == ["w1", "w2"]
    # at max_peers: nothing
    assert pick_dials(known, {"x", "y", "z", "v", "u", "t"}, wanted, p) == []
    # enough wanted connected: the plain target rule
    assert pick_dials(known, {"w9", "w8"}, {"w9", "w8"}.__contains__, p) == ["a", "w1"]


def test_discovery_with_no_wanted_peers_named_keeps_to_the_target() -> None:
    """Until the app names the peers it wants, ``wanted_peers`` asks for
    nothing: a host with ``target_peers = 1`` connections dials no one more
    (a line of hosts in a test stays a line)."""
    p = NetParams(target_peers=1, wanted_peers=6, max_peers=8)
    known = ["a", "b", "c"]
    assert pick_dials(known, set(), None, p) == ["a"]
    assert pick_dials(known, {"x"}, None, p) == []
