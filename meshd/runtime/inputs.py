"""Fetching a job's URI inputs: public data without server-side request forgery.

A submitter names inputs by URI (``https://``, ``http://``, ``s3://``,
``ipfs://``); the worker fetches them. The worker's network is not the
submitter's to explore, so every fetch follows these rules (specs/JOB.md §4):

- ``s3://bucket/key`` and ``ipfs://cid`` resolve through endpoints the
  *operator* configures (``[inputs]`` in ``config.toml``, :class:`meshd.config.InputsConfig`);
  those endpoints' hosts are trusted as configured (a lab's MinIO on
  ``10.0.0.5`` or a local IPFS node on ``127.0.0.1`` are fine there).
- Every other host is resolved once, and the fetch is refused if any of its
  addresses is not a public unicast address — loopback, link-local (cloud
  metadata lives at ``169.254.169.254``), private, shared (CGNAT), multicast,
  reserved or unspecified — unless the operator allow-lists it
  (``allow_hosts``: host names or CIDR networks). The connection goes to the
  address that was checked (no second lookup a DNS rebinding could change).
- Redirects are followed by hand, at most ``max_redirects``, each hop checked
  by the same rules; a redirect from ``https`` to ``http`` is refused.
- A response is read up to ``max_bytes`` (a larger one is refused, never
  truncated), within ``timeout_s`` in all.
- An input may pin its content: ``digest: sha256:<hex>`` beside the URI. A
  pinned input already in the blob store is not fetched again (the cache is
  the blob store, keyed by digest, collected by :mod:`.diskgc`); fetched
  content whose sha256 differs is refused.

Every refusal raises :class:`InputError` with one sentence naming the input,
the address and the setting that would allow it; the run then fails as the
job's own fault (the submitter named the input).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

from meshd.config import InputsConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[IPAddress]]

REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 1 << 16
USER_AGENT = "meshd-input-fetch"


class InputError(Exception):
    """An input that cannot or may not be fetched (the message says why)."""


def s3_base(cfg: InputsConfig) -> str:
    return cfg.s3_endpoint.rstrip("/") or f"https://s3.{cfg.s3_region}.amazonaws.com"


def trusted_hosts(cfg: InputsConfig) -> frozenset[str]:
    """Hosts of the configured endpoints (trusted as the operator set them)."""
    hosts = {urlsplit(cfg.ipfs_gateway).hostname, urlsplit(s3_base(cfg)).hostname}
    return frozenset(h.lower() for h in hosts if h)


def allowed(cfg: InputsConfig, host: str, ip: IPAddress | None = None) -> bool:
    """The operator allow-lists ``host`` (by name) or ``ip`` (by network)."""
    names, nets = set(), []
    for entry in cfg.allow_hosts:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    if host.lower().rstrip(".") in names:
        return True
    return ip is not None and any(ip in net for net in nets)


def resolve_uri(uri: str, cfg: InputsConfig) -> str:
    """The HTTP(S) URL an input URI is fetched from."""
    if uri.startswith("ipfs://"):
        return f"{cfg.ipfs_gateway.rstrip('/')}/ipfs/{uri[len('ipfs://') :]}"
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        base = s3_base(cfg)
        if cfg.s3_addressing == "virtual":
            parts = urlsplit(base)
            return f"{parts.scheme}://{bucket}.{parts.netloc}/{key}"
        return f"{base}/{bucket}/{key}"
    return uri


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be fetched from (None: a public unicast address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (raises :class:`InputError`)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"cannot resolve {host}: {exc}") from None
    out: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    if not out:
        raise InputError(f"cannot resolve {host}")
    return out


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to an address checked beforehand; the certificate
    is still checked against the host name."""

    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def _checked_address(
    uri: str, host: str, port: int, cfg: InputsConfig, resolver: Resolver
) -> IPAddress:
    """The address to connect to, after the public-address rule."""
    try:
        ips: Sequence[IPAddress] = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        ips = resolver(host, port)
    if host.lower() in trusted_hosts(cfg) or allowed(cfg, host):
        return ips[0]
    for ip in ips:
        problem = address_problem(ip)
        if problem is not None and not allowed(cfg, host, ip):
            shown = host if str(ip) == host.strip("[]") else f"{host} ({ip})"
            raise InputError(
                f"input {uri} refused: {shown} is {problem}; "
                f"a worker's operator may allow it with [inputs] allow_hosts"
            )
    return ips[0]


def fetch_uri(
    uri: str,
    cfg: InputsConfig,
    *,
    resolver: Resolver = system_resolver,
    clock: Callable[[], float] = time.monotonic,
) -> bytes:
    """GET an input URI by the rules in the module header (blocking; run it
    in a thread). Raises :class:`InputError` with the reason."""
    url = resolve_uri(uri, cfg)
    deadline = clock() + cfg.timeout_s
    for _hop in range(cfg.max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"input {uri}: cannot fetch {url!r} (only http and https)")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = _checked_address(uri, host, port, cfg, resolver)
        left = deadline - clock()
        if left <= 0:
            raise InputError(f"input {uri}: timed out after {cfg.timeout_s:g} s")
        conn_class = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = conn_class(host, port, str(ip), left)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": USER_AGENT})
            resp = conn.getresponse()
            if resp.status in REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise InputError(f"input {uri}: HTTP {resp.status} without a Location")
                nxt = urljoin(url, location)
                if parts.scheme == "https" and urlsplit(nxt).scheme == "http":
                    raise InputError(f"input {uri}: refused a redirect from https to {nxt}")
                url = nxt
                continue
            if resp.status != 200:
                raise InputError(f"input {uri}: HTTP {resp.status} {resp.reason}".rstrip())
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > cfg.max_bytes:
                raise InputError(f"input {uri} is {length} bytes, over the {cfg.max_bytes} cap")
            return _read_capped(resp, uri, cfg, deadline, clock)
        except (OSError, http.client.HTTPException) as exc:
            raise InputError(f"input {uri}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
    raise InputError(f"input {uri}: more than {cfg.max_redirects} redirects")


def _read_capped(
    resp: http.client.HTTPResponse,
    uri: str,
    cfg: InputsConfig,
    deadline: float,
    clock: Callable[[], float],
) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if clock() > deadline:
            raise InputError(f"input {uri}: timed out after {cfg.timeout_s:g} s")
        chunk = resp.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > cfg.max_bytes:
            raise InputError(f"input {uri} is over the {cfg.max_bytes} byte cap")
        chunks.append(chunk)


def check_pin(uri: str, data: bytes, digest: str | None) -> str:
    """The content's ``sha256:<hex>``; raises when it differs from ``digest``."""
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest is not None and got != digest:
        raise InputError(f"input {uri}: content is {got}, not the pinned {digest}")
    return got
