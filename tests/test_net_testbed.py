"""Real daemons across real (namespaced) networks: meshd/testing/netns.py.

The testbed needs root and network namespaces; without them every test here
is skipped with the reason (see ``netns.unavailable``).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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
