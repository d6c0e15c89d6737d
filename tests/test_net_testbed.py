"""Real daemons across real (namespaced) networks: meshd/testing/netns.py.

The testbed needs root and network namespaces; without them every test here
is skipped with the reason (see ``netns.unavailable``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.net.discovery import interface_ipv4s
from meshd.testing import netns
from meshd.testing.netns import Host, NetnsDaemon, Testbed
from meshd.testing.procs import stop_all

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture
def bed() -> Iterator[Testbed]:
    with netns.testbed() as b:
        yield b


def _listener(host: Host, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.bind((host.ip, port))
        s.listen(8)
        return s

    return netns.run_in_netns(host.ns, make)


def test_home_nat_lets_out_and_drops_unsolicited_inbound(bed: Testbed) -> None:
    r = bed.public("r")
    a = bed.home("a")
    b = bed.home("b")
    assert a.router is not None and b.router is not None
    servers = [_listener(h, 5000) for h in (r, a, b)]
    try:
        for home in (a, b):  # out through the NAT; R sees the router's WAN address
            assert home.router is not None
            assert home.can_connect(r.ip, 5000)
            conn, (seen_ip, _) = servers[0].accept()
            conn.close()
            assert seen_ip == home.router.wan_ip
        assert not r.can_connect(a.ip, 5000, timeout_s=1)  # no route to a LAN
        assert not r.can_connect(a.router.wan_ip or "", 5000, timeout_s=1)  # dropped
        assert not a.can_connect(b.ip, 5000, timeout_s=1)
        assert not a.can_connect(b.router.wan_ip or "", 5000, timeout_s=1)
    finally:
        for s in servers:
            s.close()


def test_the_testbed_leaves_nothing_behind_even_after_a_crash() -> None:
    bed = Testbed(tag="999999")  # an owner pid that cannot be alive
    bed.home("a")
    made = [ns for ns in netns._namespaces() if ns.startswith(f"{netns.PREFIX}999999-")]
    assert len(made) == 3  # switch, router, host
    bed._made.clear()  # as if the owner died before close()
    other = Testbed()  # removes the stale namespaces by name at start
    try:
        assert not [ns for ns in netns._namespaces() if ns.startswith(f"{netns.PREFIX}999999-")]
    finally:
        other.close()
    assert not [ns for ns in netns._namespaces() if ns.startswith(f"{netns.PREFIX}{other.tag}-")]
    links = subprocess.run(["ip", "-o", "link"], text=True, capture_output=True).stdout
    assert "mv999999" not in links and f"mv{other.tag}x" not in links


def test_mdns_setting_finds_a_peer_on_the_segment_without_bootstrap(
    bed: Testbed, tmp_path: Path
) -> None:
    hosts = [bed.public("m1"), bed.public("m2")]
    procs = [
        NetnsDaemon(tmp_path / f"n{i}", host=h, config={"mdns": True}) for i, h in enumerate(hosts)
    ]
    try:
        for p in procs:
            p.init()
            p.start()
        for p in procs:
            p.wait_for(lambda p=p: (p.status() or {}).get("peers", 0) >= 1, 60, "an mDNS peer")
    finally:
        stop_all(procs)


@pytest.mark.parametrize("bootstrap", [False, True], ids=["mdns-only", "mdns-and-bootstrap"])
def test_mdns_between_hosts_that_listen_on_the_wildcard_address_and_one_port(
    bed: Testbed, tmp_path: Path, bootstrap: bool
) -> None:
    """As in containers (deploy/compose.yaml): every node listens on
    ``/ip4/0.0.0.0/tcp/4001``. mDNS must advertise the interface address (a
    peer that dials ``0.0.0.0:4001`` reaches its own listener and fails the
    security handshake), and a bootstrap dial must not be spoiled by it."""
    hosts = [bed.public("w1"), bed.public("w2")]
    procs = [
        NetnsDaemon(tmp_path / f"n{i}", host=h, config={"mdns": True}) for i, h in enumerate(hosts)
    ]
    for p in procs:
        p.listen = "/ip4/0.0.0.0/tcp/4001"
    assert netns.run_in_netns(hosts[0].ns, interface_ipv4s) == [hosts[0].ip]
    try:
        for p in procs:
            p.init()
        procs[0].start()
        if bootstrap:
            first = (procs[0].status() or {})["peer_id"]
            procs[1].bootstrap = [f"/ip4/{hosts[0].ip}/tcp/4001/p2p/{first}"]
        procs[1].start()
        for p in procs:
            p.wait_for(
                lambda p=p: (p.status() or {}).get("peers", 0) >= 1,
                60,
                "a peer found by mDNS or bootstrap",
            )
        for p in procs:
            assert "dial failed" not in netns.daemon_log(p)
    finally:
        stop_all(procs)


def test_a_job_crosses_two_home_nats_through_a_public_relay(bed: Testbed, tmp_path: Path) -> None:
    """A and B each behind its own NAT, R public and running no jobs: a job
    submitted on A runs on B, its input and outputs travel A <-> B."""
    r_host, a_host, b_host = bed.public("r"), bed.home("a"), bed.home("b")
    assert b_host.router is not None
    r = NetnsDaemon(  # no Docker engine answers R: a client node
        tmp_path / "r",
        host=r_host,
        executor="auto",
        config={"allow_process_executor": False},
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    a = NetnsDaemon(tmp_path / "a", host=a_host)
    b = NetnsDaemon(tmp_path / "b", host=b_host)
    procs = [r, b, a]
    try:
        for p in procs:
            p.init()
        r.start()
        st_r = r.status() or {}
        assert st_r["role"] == "client", st_r["executor"]  # R runs no jobs
        a.bootstrap = b.bootstrap = [r.addr]
        b.start()
        # the NAT is real: A cannot open a connection to B, neither at B's
        # listen address nor at its router's public address
        assert not a_host.can_connect(b_host.ip, b.port, timeout_s=1)
        assert not a_host.can_connect(b_host.router.wan_ip or "", b.port, timeout_s=1)
        t0 = time.monotonic()
        a.start()

        def reached(p: NetnsDaemon, other: NetnsDaemon) -> str | None:
            other_id = (other.status() or {}).get("peer_id")
            peers = p.call(lambda: p.client().peers())["peers"]
            return next((q["reached"] for q in peers if q["peer_id"] == other_id), None)

        a.wait_for(lambda: reached(a, b) in ("relayed", "hole-punched"), 90, "A to reach B")
        data = tmp_path / "numbers.txt"
        data.write_text("\n".join(str(i) for i in range(1, 101)) + "\n")
        out = tmp_path / "out"
        cp = a.mesh(
            "submit",
            "--runtime",
            "process",
            "--image",
            "meshd/busybox:1",
            "--input",
            f"numbers.txt={data}",
            "--wait",
            "--timeout",
            "60",
            "-o",
            str(out),
            "--",
            "sh",
            "-c",
            'awk "{s+=\\$1} END {print s}" "$MESH_INPUTS/numbers.txt" > "$MESH_OUTPUTS/sum.txt"',
            timeout_s=180,
        )
        took = time.monotonic() - t0
        assert cp.returncode == 0, cp.stdout + cp.stderr + netns.daemon_log(a)[-3000:]
        assert (out / "sum.txt").read_text().strip() == "5050"
        job_id = cp.stdout.strip().splitlines()[-1]
        job = a.call(lambda: a.client().job(job_id))
        assert job["result"]["worker"] == (b.status() or {})["peer_id"]
        st_a, st_b = a.status() or {}, b.status() or {}
        assert st_a["reachability"] == st_b["reachability"] == "private"
        assert (r.status() or {})["reachability"] == "public"
        how = reached(a, b)
        # DCUtR then upgrades the relayed connection: these NATs keep the
        # source port, so a simultaneous open from both listen ports gets through
        a.wait_for(lambda: reached(a, b) == "hole-punched", 60, "A's hole punch to B")
        punched = time.monotonic() - t0
        # B learns of the upgrade from its side of the same connection; under
        # load that can lag, and only A's view is asserted
        try:
            b.wait_for(lambda: reached(b, a) == "hole-punched", 30, "B's hole punch to A")
        except TimeoutError:
            pass
        print(
            f"\njob across two NATs: outputs on A {took:.1f}s after A started (A-B {how}); "
            f"A-B hole-punched after {punched:.1f}s (B sees {reached(b, a)})"
        )
    finally:
        stop_all(procs)
