"""The network layer as real `meshd start` processes see it (specs/NETWORK.md
"Listening"): a taken listen address is refused with one line; mDNS runs only
where a node can be reached from its link.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import multiaddr

from meshd.net.host import uses_mdns
from meshd.net.params import NetParams
from meshd.testing.procs import DaemonProcess, stop_all


def test_a_second_daemon_on_a_taken_port_fails_with_one_line(tmp_path: Path) -> None:
    first = DaemonProcess(tmp_path / "first")
    second = DaemonProcess(tmp_path / "second")
    first.init()
    second.init()
    first.start()
    try:
        taken = first.addr.split("/p2p/")[0]  # /ip4/127.0.0.1/tcp/PORT
        cp = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshd.cli",
                "start",
                "--data-dir",
                str(second.data_dir),
                "--executor",
                "process",
                "--listen",
                taken,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        said = cp.stdout + cp.stderr
        assert cp.returncode == 1, said  # mesh_cli/CLI.md: 1 = the daemon failed
        errors = [line for line in said.splitlines() if line.startswith("meshd: error:")]
        assert errors == [
            f"meshd: error: cannot listen on {taken}: the address is already "
            "in use (another meshd or program listens there; choose another "
            "port with --listen)"
        ], said
        assert "Traceback" not in said and "ExceptionGroup" not in said, said
        assert not (second.data_dir / "api.addr").exists()  # it never reported ready
        assert first.status() is not None  # the running daemon is unharmed
    finally:
        stop_all([first, second])


def test_mdns_runs_only_with_an_address_off_loopback() -> None:
    on, off = NetParams(mdns=True), NetParams(mdns=False)
    lo = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    lan = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"), multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/0")]
    assert uses_mdns(on, lan)
    assert not uses_mdns(on, lo)  # a loopback node would only find strangers on this machine
    assert not uses_mdns(off, lan)
