"""Node configuration: the data directory, its files, and ``config.toml``.

Data directory layout (``DIR`` is ``--data-dir``; default ``$MESH_DATA_DIR``
or ``~/.meshd``)::

    DIR/node.key      raw 32-byte Ed25519 seed, mode 0600 — the node's identity
    DIR/config.toml   NodeConfig as TOML (optional: absent means all defaults)
    DIR/api.token     64 hex chars (32 random bytes), mode 0600 — control-API secret
    DIR/api.addr      "127.0.0.1:PORT", written by the running daemon, removed on exit
    DIR/log/          the LevelDB event log (meshd.store)
    DIR/blobs/        content-addressed blob store
    DIR/work/         per-job scratch directories
    DIR/daemon.pid    pid of the running daemon

Rules:
- Files holding secrets (``node.key``, ``api.token``) are created 0600 and
  ``load_node`` refuses a key that group or others can read.
- Every write is atomic: temp file in the same directory, fsync, rename,
  fsync the directory. A crash leaves the old file or the new one.
- ``node.key`` is written last by ``init_node``: it marks a data dir as
  initialised, so an init interrupted before it can simply be run again.
- This module prints nothing and never exits; it raises :class:`ConfigError`
  whose message names the file, the key and what to do. Callers print it.

Theory of operation: ``meshd init`` calls :func:`init_node`; ``meshd start``
calls :func:`load_node`, then :func:`apply_overrides` with the command-line
flags, and hands the result to the daemon. The daemon publishes its API port
with :func:`write_api_addr`; ``mesh`` finds it through :func:`read_api_addr`
and :func:`read_api_token`.

Units: the price has two names for its two units. In ``config.toml`` it is
``price_per_gflops_hour`` — what the node asks for one hour of work at one
GFLOPS of its *measured* compute score (a 50-GFLOPS node running 6 minutes at
1.0 asks 5 credits); the older key ``price`` is read as the same thing. On the
wire and in the core it is ``price``, credits per GFLOP
(:attr:`NodeConfig.price_per_gflop` converts, the only place that does).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from meshd.core.identity import Identity
from meshd.datadir import (  # noqa: F401 (re-exported: callers import these from here)
    API_ADDR_FILE,
    BLOBS_DIR,
    CONFIG_FILE,
    DATA_DIR_ENV,
    KEY_FILE,
    LOG_DIR,
    PID_FILE,
    TOKEN_FILE,
    TOKEN_HEX_LEN,
    WORK_DIR,
    ConfigError,
    DataDir,
    default_data_dir,
    read_api_addr,
    read_api_token,
)

DEFAULT_P2P_PORT = 7700
"""libp2p TCP port of a node by default; a second node on one host passes
``--listen /ip4/127.0.0.1/tcp/0`` (any free port) or another fixed port."""
DEFAULT_LISTEN = (f"/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}",)
MAX_ADDRS = 32
"""Most listen or bootstrap addresses a config may name."""
MAX_PRICE = 1e6
MAX_PARAMS = 256
"""Most ``[params]`` overrides a config may carry."""
SEED_LEN = 32
MAX_ALLOW_HOSTS = 64
"""Most ``[inputs] allow_hosts`` entries."""
_URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-.]{0,252})$")

# A light syntactic check; libp2p parses the address for real at start.
_MULTIADDR_RE = re.compile(r"^(/[A-Za-z0-9][A-Za-z0-9\-]*/[^/\s]+)+(/p2p/[1-9A-HJ-NP-Za-km-z]+)?$")
_TCP_ADDR_RE = re.compile(r"^/(ip4|ip6|dns|dns4|dns6)/[^/\s]+/tcp/(\d{1,5})(/.*)?$")


def parse_host_port(addr: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[v6]:PORT"``) as ``(ip, port)``; ValueError naming what is wrong."""
    host, sep, port = addr.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{addr!r} is not HOST:PORT with HOST an IP address") from None
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{addr!r} is not HOST:PORT with PORT in 0..65535")
    return host, int(port)


def _check_multiaddr(addr: str, *, tcp_port: bool) -> str:
    if not _MULTIADDR_RE.match(addr):
        raise ValueError(f"{addr!r} is not a multiaddr (like /ip4/1.2.3.4/tcp/7700)")
    if tcp_port:
        m = _TCP_ADDR_RE.match(addr)
        if m is None or int(m.group(2)) > 65535:
            raise ValueError(f"{addr!r} needs /ip4|ip6|dns/HOST/tcp/PORT with PORT 0-65535")
    return addr


SECONDS_PER_HOUR = 3_600


class InputsConfig(BaseModel):
    """``[inputs]``: where URI inputs come from and which addresses a job may
    name (meshd/runtime/inputs.py; defaults in specs/JOB.md §4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    s3_endpoint: str = ""
    """Endpoint of ``s3://`` inputs; empty means AWS's regional endpoint
    ``https://s3.<s3_region>.amazonaws.com``."""
    s3_region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] = "us-east-1"
    s3_addressing: Literal["path", "virtual"] = "path"
    """``path``: ``<endpoint>/<bucket>/<key>``; ``virtual``: ``<bucket>.<endpoint host>/<key>``."""
    s3_anonymous: bool = True
    """Unsigned requests (public buckets). Signed requests are not supported."""
    ipfs_gateway: str = "https://ipfs.io"
    """HTTP gateway of ``ipfs://`` inputs (``<gateway>/ipfs/<cid>``)."""
    allow_hosts: Annotated[tuple[str, ...], Field(max_length=MAX_ALLOW_HOSTS)] = ()
    """Host names or CIDR networks a job's URI may reach although they are not
    public (loopback, private, link-local...)."""
    max_bytes: Annotated[int, Field(ge=1, le=1 << 40)] = 256 * 1024 * 1024
    """Largest input fetched from a URI (a larger one is refused)."""
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    """Time for one input's fetch, redirects included."""
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    """Redirects followed for one input, each checked like the first address."""

    @field_validator("s3_endpoint", "ipfs_gateway")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not _URL_RE.match(v):
            raise ValueError(f"{v!r} must be an http:// or https:// URL")
        return v

    @field_validator("s3_anonymous")
    @classmethod
    def _anonymous(cls, v: bool) -> bool:
        if not v:
            raise ValueError("signed S3 requests are not supported; use public buckets")
        return v

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import ipaddress

        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not _HOST_RE.match(entry):
                    raise ValueError(
                        f"{entry!r} is neither a host name nor a CIDR network"
                    ) from None
        return v


class NodeConfig(BaseModel):
    """What ``config.toml`` holds. Every field has a default; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Annotated[tuple[str, ...], Field(min_length=1, max_length=MAX_ADDRS)] = DEFAULT_LISTEN
    """libp2p listen multiaddrs (TCP). Port 0 picks a free port at each start."""
    bootstrap: Annotated[tuple[str, ...], Field(max_length=MAX_ADDRS)] = ()
    """Peers dialled at start: full multiaddrs ending in ``/p2p/<peer id>``."""
    executor: Literal["auto", "docker", "process"] = "auto"
    """``auto``: Docker if an engine answers, else process if allowed, else none."""
    allow_process_executor: bool = False
    """Permit unsandboxed subprocess execution (trusted, local use only)."""
    allow_network_jobs: bool = False
    """Permit jobs that ask for network access."""
    pull_images: bool = False
    """Let the Docker engine pull a job's image from its registry (by digest,
    where the job names one) instead of only using local or travelling images."""
    price_per_gflops_hour: Annotated[
        float,
        Field(
            ge=0,
            le=MAX_PRICE,
            validation_alias=AliasChoices("price_per_gflops_hour", "price"),
        ),
    ] = 1.0
    """Credits per GFLOPS-hour of measured compute (see the module header;
    ``price`` is accepted as the older name)."""
    api_port: Annotated[int, Field(ge=0, le=65535)] = 0
    """Loopback port of the control API; 0 picks a free one (published in api.addr)."""
    metrics_listen: str | None = None
    """``HOST:PORT`` (an IP literal; IPv6 in brackets) where ``GET /metrics`` is
    also served *without* the API token, for a Prometheus scraper; None: only
    on the control API. Port 0 picks a free one."""
    log_format: Literal["human", "json"] = "human"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mdns: bool = True
    """Discover peers on the local network with mDNS."""
    dht: bool = True
    """Also discover peers with the Kademlia DHT (``NetParams.dht``)."""
    relay_service: bool = True
    """Relay connections for peers behind NATs (circuit relay v2) once this node
    is found publicly reachable (``NetParams.relay_service``)."""
    relay_circuit_max_bytes: Annotated[int | None, Field(ge=1)] = None
    """Bytes one connection we relay may carry before we reset it (None:
    ``NetParams.relay_circuit_max_bytes``, 256 MiB)."""
    hole_punching: bool = True
    """Try to turn each relayed connection into a direct one (DCUtR,
    ``NetParams.hole_punching``); False: relayed connections stay relayed."""
    direct_channels: bool = True
    """Send direct messages on persistent channels (``/meshd/direct/2``);
    False: one stream per message (``RuntimeParams.direct_channels``)."""
    reachability: Literal["auto", "public", "private"] = "auto"
    """``auto``: a dial-back check by peers decides; ``public``/``private``: fixed
    (``NetParams.reachability``)."""
    blob_store_max_bytes: Annotated[int | None, Field(ge=1)] = None
    """Cap on the blob store's bytes (None: ``RuntimeParams.blob_store_max_bytes``,
    20 GiB); above it unreferenced blobs are collected and uploads refused."""
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    """Where URI inputs come from, and which non-public addresses they may name."""
    params: Annotated[dict[str, Any], Field(max_length=MAX_PARAMS)] = Field(default_factory=dict)
    """Overrides of protocol bounds (``CoreParams`` names); the daemon validates them."""

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_host_port(v)
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_multiaddr(a, tcp_port=True) for a in v)

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            _check_multiaddr(a, tcp_port=False)
            if "/p2p/" not in a:
                raise ValueError(f"{a!r} must end in /p2p/<peer id>")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not isinstance(value, int | float | bool | str):
                raise ValueError(
                    f"[params] {key} must be a number, boolean or string, not {type(value).__name__}"
                )
        return v

    @property
    def price_per_gflop(self) -> float:
        """The price in the protocol's unit (credits per GFLOP), as adverts carry it."""
        return self.price_per_gflops_hour / SECONDS_PER_HOUR

    def to_toml(self) -> str:
        """The config as TOML text, with a comment pointing at the docs."""
        body = tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))
        return "# meshd node configuration (see meshd/config.py for every key).\n" + body


def _describe_errors(where: Path | str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            known = ", ".join(NodeConfig.model_fields)
            lines.append(f"unknown key `{loc}` (known keys: {known})")
        else:
            lines.append(
                f"`{loc}`: {err['msg'].removeprefix('Value error, ')} (got {err['input']!r})"
            )
    return f"{where}: " + "; ".join(lines)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically (temp, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or widened nothing; be exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def init_node(
    data_dir: str | os.PathLike[str],
    *,
    listen: str | tuple[str, ...] | list[str] | None = None,
    force: bool = False,
) -> NodeConfig:
    """Create a data dir: config, API token, then a fresh node key (written last).

    Refuses (ConfigError) to replace an existing key unless ``force``: a new key
    is a new identity, and the old one's credits and reputation stay with it.
    """
    d = DataDir(Path(data_dir))
    if d.key.exists() and not force:
        raise ConfigError(
            f"{d.root} is already initialised ({d.key} exists); "
            "pass --force to replace it with a NEW identity (the old peer id is lost)"
        )
    fields: dict[str, Any] = {}
    if listen is not None:
        fields["listen"] = (listen,) if isinstance(listen, str) else tuple(listen)
    try:
        config = NodeConfig(**fields)
    except ValidationError as exc:
        raise ConfigError(_describe_errors("--listen", exc)) from None
    try:
        d.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(d.config, config.to_toml().encode(), mode=0o644)
        write_atomic(d.token, secrets.token_hex(TOKEN_HEX_LEN // 2).encode() + b"\n")
        write_atomic(d.key, Identity.generate().private_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot initialise {d.root}: {exc.strerror} ({exc.filename})") from None
    return config


def _read_key(d: DataDir) -> Identity:
    try:
        st = d.key.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"{d.root} is not initialised (no {KEY_FILE}); run `meshd init --data-dir {d.root}` first"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{d.key} is readable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"it holds the node's private key: run `chmod 600 {d.key}`"
        )
    seed = d.key.read_bytes()
    if len(seed) != SEED_LEN:
        raise ConfigError(
            f"{d.key} is corrupt: expected {SEED_LEN} bytes, found {len(seed)}; restore it from "
            f"a backup, or `meshd init --force --data-dir {d.root}` for a NEW identity"
        )
    return Identity.from_private_bytes(seed)


def parse_config(text: str, *, where: str | Path = CONFIG_FILE) -> NodeConfig:
    """Parse and validate config TOML text; ConfigError names the key at fault."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    try:
        return NodeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(where, exc)) from None


def load_node(data_dir: str | os.PathLike[str]) -> tuple[NodeConfig, Identity]:
    """Read and check a data dir; ConfigError says what is wrong and how to fix it."""
    d = DataDir(Path(data_dir))
    if not d.root.is_dir():
        raise ConfigError(
            f"data dir {d.root} does not exist; run `meshd init --data-dir {d.root}` first"
        )
    try:
        identity = _read_key(d)
        text = d.config.read_text(encoding="utf-8") if d.config.exists() else ""
    except PermissionError as exc:
        raise ConfigError(f"cannot read {exc.filename}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{d.config} is not UTF-8 text") from None
    return parse_config(text, where=d.config), identity


OLD_NAMES = {"price": "price_per_gflops_hour"}
"""Keys read under an older name (config files and overrides)."""


def _new_names(values: dict[str, Any]) -> dict[str, Any]:
    return {OLD_NAMES.get(k, k): v for k, v in values.items()}


def apply_overrides(config: NodeConfig, overrides: dict[str, Any]) -> NodeConfig:
    """``config`` with command-line values replacing its fields, validated again."""
    merged = {**config.model_dump(), **_new_names(overrides)}
    try:
        return NodeConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_errors("command line", exc)) from None


def update_config(data_dir: str | os.PathLike[str], changes: dict[str, Any]) -> NodeConfig:
    """Rewrite ``config.toml`` with ``changes`` applied (validated; atomic)."""
    d = DataDir(Path(data_dir))
    config, _ = load_node(d.root)
    config = apply_overrides(config, changes)
    write_atomic(d.config, config.to_toml().encode(), mode=0o644)
    return config


def ensure_api_token(data_dir: str | os.PathLike[str]) -> str:
    """The API token, creating ``api.token`` (0600) if it is missing."""
    d = DataDir(Path(data_dir))
    if not d.token.exists():
        write_atomic(d.token, secrets.token_hex(TOKEN_HEX_LEN // 2).encode() + b"\n")
    return read_api_token(data_dir)


def write_api_addr(data_dir: str | os.PathLike[str], host: str, port: int) -> None:
    """Publish the bound API address for ``mesh`` (the daemon calls this once bound)."""
    write_atomic(DataDir(Path(data_dir)).api_addr, f"{host}:{port}\n".encode(), mode=0o644)


def remove_api_addr(data_dir: str | os.PathLike[str]) -> None:
    """Withdraw ``api.addr`` (the daemon calls this when it stops)."""
    DataDir(Path(data_dir)).api_addr.unlink(missing_ok=True)
