"""Reachability and relays on loopback hosts (meshd/net/relay.py; specs/NETWORK.md
"Reachability and relays"). Across real NATs: tests/test_net_testbed.py."""

from __future__ import annotations

import dataclasses
import logging

import msgpack
import pytest
import trio
from multiaddr import Multiaddr

from meshd.core.identity import Identity
from meshd.net import MeshHost, NetError, RemoteError
from meshd.net.px import dialable_addr
from meshd.net.relay import AUTONAT_PROTOCOL
from meshd.testing.nethosts import FAST, LOOPBACK, connected, wait_until

R = Identity.generate().peer_id
B = Identity.generate().peer_id


def test_peer_exchange_carries_relayed_addresses() -> None:
    circuit = f"/ip4/198.18.0.10/tcp/4001/p2p/{R}/p2p-circuit"
    assert dialable_addr(circuit) == circuit
    assert dialable_addr(f"{circuit}/p2p/{B}") == circuit  # the target's id is added back
    assert dialable_addr("/ip4/198.18.0.10/tcp/4001/p2p-circuit") is None  # which relay?
    assert dialable_addr(f"/ip4/198.18.0.10/tcp/4001/ws/p2p/{R}/p2p-circuit") is None


async def _two_hosts(relay_service: bool) -> tuple[MeshHost, MeshHost]:
    params = dataclasses.replace(FAST, relay_service=relay_service, autonat_retry_s=0.2)
    a = MeshHost(Identity.generate(), params, [LOOPBACK])
    return a, MeshHost(Identity.generate(), params, [LOOPBACK])


@pytest.mark.parametrize("relay_service", [True, False])
async def test_hosts_that_can_dial_each_other_are_public_and_relay_only_if_allowed(
    relay_service: bool,
) -> None:
    a, b = await _two_hosts(relay_service)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await b.connect(a.listen_addrs[0])
        await wait_until(lambda: connected(a, b))
        await wait_until(lambda: a.reachability == b.reachability == "public", 20)
        assert a.reached(b.peer_id) == b.reached(a.peer_id) == "direct"
        served = "/libp2p/circuit/relay/0.2.0/hop" in a._host.get_mux().handlers
        assert served is relay_service
        nursery.cancel_scope.cancel()


async def test_a_malformed_dial_back_request_is_refused_and_the_host_serves_on() -> None:
    a, b = await _two_hosts(True)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await b.connect(a.listen_addrs[0])
        for bad in (
            b"\xc1",
            msgpack.packb(0),
            msgpack.packb(70000),
            msgpack.packb("x"),
            b"\x00" * 17,
        ):
            with pytest.raises(RemoteError):
                await b.request(a.peer_id, AUTONAT_PROTOCOL, bad)
        answer = msgpack.unpackb(await b.request(a.peer_id, AUTONAT_PROTOCOL, msgpack.packb(9)))
        assert answer == [False, "127.0.0.1"]  # nothing listens on port 9: not reachable there
        nursery.cancel_scope.cancel()


async def test_a_relay_byte_limit_fails_a_transfer_loudly_never_short() -> None:
    limit = 256 * 1024
    r = MeshHost(
        Identity.generate(),
        dataclasses.replace(FAST, reachability="public", relay_circuit_max_bytes=limit),
        [LOOPBACK],
    )
    b = MeshHost(
        Identity.generate(),
        dataclasses.replace(FAST, reachability="private", target_peers=1, hole_punching=False),
        [LOOPBACK],
    )
    # target_peers=1: A and B dial no one beyond R (on loopback they could),
    # and no hole punching: the circuit must stay relayed
    a = MeshHost(
        Identity.generate(),
        dataclasses.replace(FAST, target_peers=1, hole_punching=False),
        [LOOPBACK],
    )

    async def sized(peer_id: str, body: bytes) -> bytes:
        return b"x" * int(body)

    b.handle("/meshd/test/sized/1", sized)
    async with trio.open_nursery() as nursery:
        for h in (r, b, a):
            await nursery.start(h.run)
        await b.connect(r.listen_addrs[0])
        await wait_until(lambda: b.relays == [r.peer_id], 20)
        await a.connect(r.listen_addrs[0])
        await a._relay.dial_circuit(b.peer_id, [Multiaddr(f"{r.listen_addrs[0]}/p2p-circuit")])
        assert a.reached(b.peer_id) == "relayed"
        small = await a.request(b.peer_id, "/meshd/test/sized/1", b"1000")
        assert small == b"x" * 1000
        with pytest.raises(NetError):  # the relay cuts the circuit: an error, not a short body
            await a.request(b.peer_id, "/meshd/test/sized/1", str(4 * limit).encode())
        nursery.cancel_scope.cancel()


async def test_a_peer_that_cannot_be_reached_is_marked_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = await _two_hosts(True)
    b.handle("/meshd/test/echo/1", _echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        b_scope = trio.CancelScope()

        async def run_b(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with b_scope:
                await b.run(task_status=task_status)

        await nursery.start(run_b)
        await a.connect(b.listen_addrs[0])
        assert await a.request(b.peer_id, "/meshd/test/echo/1", b"hi") == b"hi"
        assert a.reached(b.peer_id) == "direct"
        b_scope.cancel()  # b goes away: its listener closes
        await wait_until(lambda: b.peer_id not in a.connected_peers())
        caplog.set_level(logging.INFO, logger="meshd.net")
        for _ in range(2):
            with pytest.raises(NetError):
                await a.request(b.peer_id, "/meshd/test/echo/1", b"hi")
        assert a.reached(b.peer_id) == "unreachable"
        assert a.statistics().peers_unreachable == 1
        said = [r.getMessage() for r in caplog.records if "cannot reach peer" in r.getMessage()]
        assert len(said) == 1 and b.peer_id in said[0], said
        nursery.cancel_scope.cancel()


async def _echo(peer_id: str, body: bytes) -> bytes:
    return body
