"""A network testbed of Linux network namespaces, for tests across real networks.

Theory of operation:
    A :class:`Testbed` builds, as root, one namespace per machine and wires
    them with veth pairs: a *switch* namespace holds the bridge of the public
    segment (198.18.0.0/24); a *public* host sits on that segment with its
    own address; a *home* is two namespaces, a NAT router with one leg on the
    public segment (its WAN address) and one on its own LAN (198.19.K.0/24),
    and the host behind it, whose default route is the router. The router
    behaves like a home gateway: outbound traffic is masqueraded to its WAN
    address (iptables ``MASQUERADE``), answers to it come back (conntrack
    ESTABLISHED,RELATED), and unsolicited inbound packets are dropped. The
    public segment has no route to any LAN, so a home host is reachable only
    through connections it opened itself.

    Real ``meshd start`` processes run inside a namespace
    (:class:`NetnsDaemon`, a :class:`~meshd.testing.procs.DaemonProcess`
    started under ``ip netns exec``); the test talks to a daemon's control
    API, which listens on that namespace's loopback, from a short-lived
    thread that has joined the namespace (``setns``), so the real
    :class:`~meshd.api.client.ApiClient` is used unchanged.

Rules:
- Addresses only inside 198.18.0.0/15 (the benchmarking range, RFC 2544).
- Everything the testbed makes is named ``mshn-<pid>-...`` (namespaces) or
  ``mv<pid>...`` (veth ends before they move), so what a testbed leaves
  behind is found by name. Deleting a namespace removes its interfaces and
  iptables rules; processes in it are killed first. ``close()`` runs on
  exit, also on failure; a new testbed first removes the namespaces of
  testbeds whose process is gone (a crash, SIGKILL).
- :func:`unavailable` says why the testbed cannot run here (not root, no
  ``ip``/``iptables``, no namespaces); tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from meshd.testing.procs import DaemonProcess

T = TypeVar("T")

PREFIX = "mshn-"
"""Prefix of every namespace a testbed creates (then the owner's pid)."""
PUBLIC_NET = "198.18.0"
"""The public segment, /24; the switch and routers' WAN legs live on it."""
LAN_NET = "198.19"
"""Home LANs are ``198.19.K.0/24``, K = 1, 2, ..."""
CLONE_NEWNET = 0x40000000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], text=True, capture_output=True, check=check)


def _in_ns(ns: str, *cmd: str) -> None:
    cp = subprocess.run(["ip", "netns", "exec", ns, *cmd], text=True, capture_output=True)
    if cp.returncode != 0:
        raise RuntimeError(f"in {ns}: {' '.join(cmd)}: {cp.stderr.strip()}")


def unavailable() -> str | None:
    """Why the testbed cannot run on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "the network testbed needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"the network testbed needs `{tool}` (apt-get install iproute2 iptables)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"network namespaces are unavailable: {made.stderr.strip()}"
    try:
        cp = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L"],
            text=True,
            capture_output=True,
        )
        if cp.returncode != 0:
            return f"iptables NAT is unavailable in a namespace: {cp.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_ns(ns: str) -> None:
    """Kill the processes in ``ns`` (started there by a testbed), then delete it."""
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", ns, check=False)


def remove_stale() -> list[str]:
    """Delete the namespaces of testbeds whose owning process is gone."""
    removed = []
    for ns in _namespaces():
        if not ns.startswith(PREFIX):
            continue
        owner = ns[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            _delete_ns(ns)
            removed.append(ns)
    return removed


def run_in_netns(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` in a fresh thread that has joined network namespace ``ns``:
    sockets it opens live there (``setns`` changes only the calling thread)."""
    result: list[Any] = []

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{ns}") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            result.append((True, fn()))
        except BaseException as exc:  # handed back to the caller's thread
            result.append((False, exc))

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


@dataclass
class Host:
    """One machine of the testbed: a namespace and its address."""

    ns: str
    ip: str
    router: Host | None = None
    """The NAT router in front of it (home hosts)."""
    wan_ip: str | None = None
    """A router's address on the public segment."""

    def run(self, *cmd: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this host's namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *cmd],
            text=True,
            capture_output=True,
            timeout=timeout_s,
        )

    def can_connect(self, ip: str, port: int, timeout_s: float = 3.0) -> bool:
        """Whether a TCP connection from this host to ``ip:port`` opens."""
        import socket

        def attempt() -> bool:
            try:
                with socket.create_connection((ip, port), timeout=timeout_s):
                    return True
            except OSError:
                return False

        return run_in_netns(self.ns, attempt)


@dataclass
class Testbed:
    """Namespaces, veths, a bridge and NAT routers; removed by :meth:`close`."""

    __test__ = False  # not a pytest class

    tag: str = field(default_factory=lambda: str(os.getpid()))
    _made: list[str] = field(default_factory=list)
    _next_public: int = 10
    _next_lan: int = 1
    _next_veth: int = 0
    switch: str = ""

    def __post_init__(self) -> None:
        remove_stale()
        try:
            self.switch = self._ns("sw")
            _in_ns(self.switch, "ip", "link", "add", "br0", "type", "bridge")
            _in_ns(self.switch, "ip", "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill what runs in the testbed's namespaces and delete them."""
        for ns in reversed(self._made):
            _delete_ns(ns)
        self._made.clear()

    # ------------------------------------------------------------- building

    def _ns(self, name: str) -> str:
        ns = f"{PREFIX}{self.tag}-{name}"
        _ip("netns", "add", ns)
        self._made.append(ns)
        _in_ns(ns, "ip", "link", "set", "lo", "up")
        return ns

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair, one end ``name_a`` in ``ns_a``, the other ``name_b`` in ``ns_b``."""
        self._next_veth += 1
        tmp_a, tmp_b = f"mv{self.tag}x{self._next_veth}a", f"mv{self.tag}x{self._next_veth}b"
        _ip("link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp, ns, name in ((tmp_a, ns_a, name_a), (tmp_b, ns_b, name_b)):
            _ip("link", "set", tmp, "netns", ns)
            _in_ns(ns, "ip", "link", "set", tmp, "name", name)
            _in_ns(ns, "ip", "link", "set", name, "up")

    def _on_switch(self, ns: str, ifname: str) -> str:
        """Plug ``ns`` into the public segment as ``ifname``; return its address."""
        ip = f"{PUBLIC_NET}.{self._next_public}"
        port = f"p{self._next_public}"
        self._next_public += 1
        self._veth(ns, ifname, self.switch, port)
        _in_ns(self.switch, "ip", "link", "set", port, "master", "br0")
        _in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", ifname)
        return ip

    def public(self, name: str) -> Host:
        """A host on the public segment, reachable by every other host."""
        ns = self._ns(name)
        return Host(ns, self._on_switch(ns, "eth0"))

    def home(self, name: str) -> Host:
        """A host behind its own NAT router (home-style: outbound masqueraded,
        unsolicited inbound dropped)."""
        lan = f"{LAN_NET}.{self._next_lan}"
        self._next_lan += 1
        gw = self._ns(f"{name}gw")
        wan_ip = self._on_switch(gw, "wan")
        ns = self._ns(name)
        self._veth(gw, "lan", ns, "eth0")
        _in_ns(gw, "ip", "addr", "add", f"{lan}.1/24", "dev", "lan")
        _in_ns(ns, "ip", "addr", "add", f"{lan}.2/24", "dev", "eth0")
        _in_ns(ns, "ip", "route", "add", "default", "via", f"{lan}.1")
        _in_ns(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = [
            ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"],
            ["-P", "FORWARD", "DROP"],
            ["-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
            ["-A", "FORWARD", "-i", "wan", "-o", "lan", "-m", "conntrack",
             "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", "wan", "-m", "conntrack",
             "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", "wan", "-j", "DROP"],
        ]  # fmt: skip
        for rule in rules:
            _in_ns(gw, "iptables", *rule)
        router = Host(gw, f"{lan}.1", wan_ip=wan_ip)
        return Host(ns, f"{lan}.2", router=router)


@dataclass
class NetnsDaemon(DaemonProcess):
    """A real ``meshd start`` in a testbed host's namespace, listening on its address."""

    host: Host | None = None
    port: int = 4001

    def __post_init__(self) -> None:
        assert self.host is not None
        self.listen = f"/ip4/{self.host.ip}/tcp/{self.port}"

    def wrap(self, cmd: list[str]) -> list[str]:
        assert self.host is not None
        return ["ip", "netns", "exec", self.host.ns, *cmd]

    def call(self, fn: Callable[[], T]) -> T:
        assert self.host is not None
        return run_in_netns(self.host.ns, fn)


@contextlib.contextmanager
def testbed() -> Iterator[Testbed]:
    """A :class:`Testbed`, closed on exit (also when the body fails)."""
    bed = Testbed()
    try:
        yield bed
    finally:
        bed.close()


def daemon_log(d: DaemonProcess) -> str:
    """The daemon's log so far (for assertion messages)."""
    p = Path(d.data_dir) / "daemon.log"
    return p.read_text(errors="replace") if p.exists() else ""
