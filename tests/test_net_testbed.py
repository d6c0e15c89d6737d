"""Real daemons across real (namespaced) networks: meshd/testing/netns.py.

The testbed needs root and network namespaces; without them every test here
is skipped with the reason (see ``netns.unavailable``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.net.discovery import interface_ipv4s
from meshd.testing import netns
from meshd.testing.netns import Host, NetnsDaemon, Testbed
from meshd.testing.procs import FAST_PARAMS, stop_all

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


def reached(p: NetnsDaemon, other: NetnsDaemon) -> str | None:
    """How ``p`` says it reaches ``other`` (``mesh peers``' column)."""
    other_id = (other.status() or {}).get("peer_id")
    peers = p.call(lambda: p.client().peers())["peers"]
    return next((q["reached"] for q in peers if q["peer_id"] == other_id), None)


def metric(p: NetnsDaemon, name: str) -> float:
    """The sum of a metric family's samples in ``p's`` ``GET /metrics`` (or of one
    sample's, when ``name`` carries its labels)."""
    text = p.call(lambda: p.client().metrics())
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def two_nats_and_a_relay(
    bed: Testbed,
    tmp_path: Path,
    procs: list[NetnsDaemon],
    *,
    relay: dict[str, Any] | None = None,
    a_config: dict[str, Any] | None = None,
    b_config: dict[str, Any] | None = None,
) -> tuple[NetnsDaemon, NetnsDaemon, NetnsDaemon, float]:
    """R public and running no jobs, A and B each behind its own home NAT
    (``relay``, ``a_config``, ``b_config``: more of their config), started
    in that order; returns (R, A, B, when A started). They are appended to
    ``procs`` as they are made, for the caller to stop (``stop_all``), also
    when this fails."""
    r_host, a_host, b_host = bed.public("r"), bed.home("a"), bed.home("b")
    assert b_host.router is not None
    r = NetnsDaemon(  # no Docker engine answers R: a client node
        tmp_path / "r",
        host=r_host,
        executor="auto",
        config={"allow_process_executor": False, **(relay or {})},
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    home = {"allow_process_executor": True}
    a = NetnsDaemon(tmp_path / "a", host=a_host, config={**home, **(a_config or {})})
    b = NetnsDaemon(tmp_path / "b", host=b_host, config={**home, **(b_config or {})})
    procs.extend([r, b, a])
    for p in (r, b, a):
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
    return r, a, b, t0


@pytest.fixture
def procs() -> Iterator[list[NetnsDaemon]]:
    """Daemons a test started, stopped after it (also when it fails)."""
    made: list[NetnsDaemon] = []
    try:
        yield made
    finally:
        stop_all(made)


def test_a_job_crosses_two_home_nats_through_a_public_relay(
    bed: Testbed, tmp_path: Path, procs: list[NetnsDaemon]
) -> None:
    """A and B each behind its own NAT, R public and running no jobs: a job
    submitted on A runs on B, its input and outputs travel A <-> B."""
    r, a, b, t0 = two_nats_and_a_relay(bed, tmp_path, procs)
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
    # A's own dial-back check may still be under way when a quick job ends
    for p in (a, b):
        p.wait_for(lambda p=p: (p.status() or {})["reachability"] == "private", 60, "private")
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


BIG = 6_000_000
"""An input of several ranges (``blob_chunk_bytes``: 4 MiB), six times the
relay's circuit limit below."""
RELAY_LIMIT = 1024 * 1024


def _submit_big(
    a: NetnsDaemon, tmp_path: Path, size: int = BIG
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Submit on A a job whose input is ``size`` random bytes and whose
    output is their sha256 as the worker read them; (the ``mesh submit
    --wait`` run, the input's sha256)."""
    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(size))
    cp = a.mesh(
        "submit",
        "--runtime",
        "process",
        "--image",
        "meshd/busybox:1",
        "--input",
        f"big.bin={data}",
        "--wait",
        "--timeout",
        "60",
        "-o",
        str(tmp_path / "out"),
        "--",
        "sh",
        "-c",
        'sha256sum < "$MESH_INPUTS/big.bin" > "$MESH_OUTPUTS/sum.txt"',
        timeout_s=240,
    )
    return cp, hashlib.sha256(data.read_bytes()).hexdigest()


def test_a_blob_over_the_relays_byte_limit_fails_loudly_never_short(
    bed: Testbed, tmp_path: Path, procs: list[NetnsDaemon]
) -> None:
    """NETWORK.md "Large transfers and relays": A does not punch holes, so
    B's fetch of A's input waits ``blob_direct_wait_s`` for a direct
    connection in vain (``meshd_blob_direct_waits_total{outcome="timeout"}``)
    and then goes through R, whose circuits carry RELAY_LIMIT bytes
    (``relay_circuit_max_bytes``). The relay cuts each circuit mid-range: B
    says so (a WARNING naming the limit, ``meshd_blob_relay_cuts_total``),
    the job fails (the cut takes the whole relayed connection, heartbeats
    included: at A the runs end as lost leases), and no byte of the input is kept as a
    blob or handed to the run."""
    _r, a, b, _t0 = two_nats_and_a_relay(
        bed,
        tmp_path,
        procs,
        relay={"relay_circuit_max_bytes": RELAY_LIMIT},
        # two attempts, each waiting blob_direct_wait_s in vain, are enough
        a_config={"hole_punching": False, "params": {**FAST_PARAMS, "max_attempts": 2}},
    )
    a.wait_for(lambda: reached(a, b) == "relayed", 90, "A to reach B through R")
    cp, digest = _submit_big(a, tmp_path)
    assert cp.returncode != 0, cp.stdout
    assert not (tmp_path / "out" / "sum.txt").exists()
    a_id = (a.status() or {})["peer_id"]
    said = f"blob fetch: the relayed connection to {a_id} broke during a range of blob {digest}"
    log_b = netns.daemon_log(b)
    assert said in log_b, log_b[-3000:]
    assert metric(b, "meshd_blob_relay_cuts_total") >= 1
    assert metric(b, 'meshd_blob_direct_waits_total{outcome="timeout"}') >= 1
    jobs = a.call(lambda: a.client().jobs())["jobs"]
    assert [j["state"] for j in jobs] == ["failed"], jobs
    assert reached(a, b) not in ("direct", "hole-punched")  # it was never direct
    blobs = b.data_dir / "blobs"
    assert not list(blobs.rglob(digest)), "a cut input was kept as a blob"
    assert not list((b.data_dir / "work").rglob("big.bin")), "a cut input reached a run"


def test_a_large_blob_between_two_nats_goes_direct_not_through_the_relay(
    bed: Testbed, tmp_path: Path, procs: list[NetnsDaemon]
) -> None:
    """NETWORK.md "Large transfers and relays": the same input, the same
    relay limit, hole punching on (the default). B's fetch waits for the
    hole-punched connection (``blob_direct_wait_s``) rather than sending the
    input through R, so no range is cut and the run reads the whole input."""
    _r, a, b, t0 = two_nats_and_a_relay(
        bed, tmp_path, procs, relay={"relay_circuit_max_bytes": RELAY_LIMIT}
    )
    a.wait_for(lambda: reached(a, b) in ("relayed", "hole-punched"), 90, "A to reach B")
    how = reached(a, b)
    cp, digest = _submit_big(a, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr + netns.daemon_log(b)[-3000:]
    assert (tmp_path / "out" / "sum.txt").read_text().split()[0] == digest
    assert metric(b, "meshd_blob_relay_cuts_total") == 0
    assert reached(a, b) == "hole-punched"
    print(
        f"\n6 MB input across two NATs (relay limit 1 MiB): A-B {how} at submit; "
        f"done {time.monotonic() - t0:.1f}s after A started; B waited for a direct "
        f"connection {metric(b, 'meshd_blob_direct_waits_total'):.0f} time(s)"
    )


def test_a_blob_crosses_a_relay_range_by_range_over_several_circuits(
    bed: Testbed, tmp_path: Path, procs: list[NetnsDaemon]
) -> None:
    """NETWORK.md "Large transfers and relays": no hole punching, R's
    circuits carry 12 MiB, the input is 40 MB (ten 4 MiB ranges). B asks one
    range at a time over the relay; when R cuts a circuit, the range lost is
    asked again once discovery has connected A and B through a new circuit
    (``blob_relay_reconnect_s``), and the run reads the whole input. Leases
    are as long as by default: the cut takes heartbeats with it too."""
    slow = {**FAST_PARAMS, "lease_ms": 15_000}
    _r, a, b, _t0 = two_nats_and_a_relay(
        bed,
        tmp_path,
        procs,
        relay={"relay_circuit_max_bytes": 12 * 1024 * 1024},
        a_config={"hole_punching": False, "params": slow},
        b_config={"hole_punching": False, "params": slow},
    )
    a.wait_for(lambda: reached(a, b) == "relayed", 90, "A to reach B through R")
    cp, digest = _submit_big(a, tmp_path, 40_000_000)
    assert cp.returncode == 0, cp.stdout + cp.stderr + netns.daemon_log(b)[-3000:]
    assert (tmp_path / "out" / "sum.txt").read_text().split()[0] == digest
    cuts = metric(b, "meshd_blob_relay_cuts_total")
    assert cuts >= 1  # it did cross more than one circuit
    assert reached(a, b) not in ("direct", "hole-punched")
    print(f"\n40 MB across a relay of 12 MiB circuits: {cuts:.0f} range(s) cut and asked again")
