"""URI inputs (issue 13 "Public data"): the public-address rule, redirects,
caps, pinned digests, the digest cache and the ``[inputs]`` configuration.

The HTTP servers are real (``http.server`` on 127.0.0.1 in a thread); the
refusals are checked against a server that *would* answer, so a missing
check shows up as a fetched body, not as a connection error.
"""

from __future__ import annotations

import hashlib
import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.config import ConfigError, InputsConfig, NodeConfig, init_node, load_node
from meshd.core.jobspec import parse_job_spec
from meshd.runtime.inputs import InputError, address_problem, fetch_uri, resolve_uri
from meshd.runtime.jobio import fetch_inputs
from meshd.store.blobs import BlobStore
from meshd.testing.cluster import Cluster

BODY = b"temperature,pressure\n288.15,101325\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        status, headers, body = self.routes.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"routes": {}, "hits": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


LOCAL = InputsConfig(allow_hosts=("127.0.0.1/32",))


@pytest.mark.parametrize(
    ("addr", "word"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not a public"),
        ("198.18.0.1", "private"),
    ],
)
def test_non_public_addresses_are_named(addr: str, word: str) -> None:
    problem = address_problem(ipaddress.ip_address(addr))
    assert problem is not None and word in problem


@pytest.mark.parametrize("addr", ["8.8.8.8", "2606:4700:4700::1111", "151.101.1.1"])
def test_public_addresses_pass(addr: str) -> None:
    assert address_problem(ipaddress.ip_address(addr)) is None


def test_loopback_private_metadata_and_names_are_refused(
    server: tuple[str, type[_Handler]],
) -> None:
    base, handler = server
    handler.routes["/data.csv"] = (200, {}, BODY)
    port = base.rsplit(":", 1)[1]
    cfg = InputsConfig()
    for url, word in [
        (f"{base}/data.csv", "loopback"),
        (f"http://localhost:{port}/data.csv", "localhost (127.0.0.1) is a loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/x", "private"),
        ("http://[::1]/x", "loopback"),
    ]:
        with pytest.raises(InputError) as err:
            fetch_uri(url, cfg)
        assert word in str(err.value), err.value
        assert "allow_hosts" in str(err.value)
    assert handler.hits == []  # refused before any connection


def test_a_name_is_checked_by_what_it_resolves_to(server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.routes["/x"] = (200, {}, BODY)

    def resolver(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("169.254.169.254")]

    with pytest.raises(InputError, match=r"data\.example \(169\.254\.169\.254\) is a link-local"):
        fetch_uri("http://data.example/x", InputsConfig(), resolver=resolver)


def test_allow_listed_hosts_are_fetched(server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.routes["/data.csv"] = (200, {}, BODY)
    assert fetch_uri(f"{base}/data.csv", LOCAL) == BODY
    port = base.rsplit(":", 1)[1]
    by_name = InputsConfig(allow_hosts=("localhost",))
    assert fetch_uri(f"http://localhost:{port}/data.csv", by_name) == BODY


def test_every_redirect_is_checked(server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.routes["/ok"] = (302, {"Location": "/data.csv"}, b"")
    handler.routes["/data.csv"] = (200, {}, BODY)
    handler.routes["/meta"] = (
        302,
        {"Location": "http://169.254.169.254/latest/meta-data/iam"},
        b"",
    )
    handler.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    assert fetch_uri(f"{base}/ok", LOCAL) == BODY
    with pytest.raises(InputError, match="169.254.169.254 is a link-local"):
        fetch_uri(f"{base}/meta", LOCAL)
    with pytest.raises(InputError, match="more than 3 redirects"):
        fetch_uri(f"{base}/loop", LOCAL.model_copy(update={"max_redirects": 3}))
    assert handler.hits.count("/loop") == 4


def test_size_cap_refuses_rather_than_truncates(server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.routes["/big"] = (200, {}, b"x" * 5000)
    handler.routes["/liar"] = (200, {"Connection": "close", "Content-Length": ""}, b"y" * 5000)
    small = LOCAL.model_copy(update={"max_bytes": 4096})
    with pytest.raises(InputError, match="5000 bytes, over the 4096 cap"):
        fetch_uri(f"{base}/big", small)
    with pytest.raises(InputError, match="over the 4096 byte cap"):
        fetch_uri(f"{base}/liar", small)  # no length given: counted while reading
    assert fetch_uri(f"{base}/big", LOCAL) == b"x" * 5000


def test_http_errors_are_named(server: tuple[str, type[_Handler]]) -> None:
    base, _ = server
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_uri(f"{base}/missing", LOCAL)


def test_gateways_are_operator_config_and_trusted(server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    handler.routes["/ipfs/bafyexample"] = (200, {}, BODY)
    handler.routes["/era5/2020/t2m.csv"] = (200, {}, BODY)
    cfg = InputsConfig(ipfs_gateway=base, s3_endpoint=base)  # no allow_hosts
    assert fetch_uri("ipfs://bafyexample", cfg) == BODY
    assert fetch_uri("s3://era5/2020/t2m.csv", cfg) == BODY
    # ... but a redirect away from the trusted gateway is checked again
    handler.routes["/ipfs/bafyevil"] = (302, {"Location": "http://10.9.9.9/"}, b"")
    with pytest.raises(InputError, match="10.9.9.9 is a private"):
        fetch_uri("ipfs://bafyevil", cfg)


def test_s3_addressing_styles() -> None:
    assert resolve_uri("s3://b/k/x.nc", InputsConfig(s3_region="eu-west-1")) == (
        "https://s3.eu-west-1.amazonaws.com/b/k/x.nc"
    )
    virtual = InputsConfig(s3_endpoint="https://s3.example.org", s3_addressing="virtual")
    assert resolve_uri("s3://b/k", virtual) == "https://b.s3.example.org/k"
    assert resolve_uri("ipfs://Qm1", InputsConfig()) == "https://ipfs.io/ipfs/Qm1"


def _spec(inputs: list[dict[str, Any]]) -> Any:
    return parse_job_spec({"image": "i", "command": ["true"], "inputs": inputs})


async def _no_blob_fetch(peer: str, digest: str) -> None:
    raise AssertionError("URI inputs never come from the origin's blob store")


async def test_pinned_inputs_are_checked_and_cached_by_digest(
    tmp_path: Path, server: tuple[str, type[_Handler]]
) -> None:
    base, handler = server
    handler.routes["/data.csv"] = (200, {}, BODY)
    blobs = BlobStore(tmp_path / "blobs")
    good = "sha256:" + hashlib.sha256(BODY).hexdigest()
    bad = "sha256:" + hashlib.sha256(b"other").hexdigest()
    spec = _spec([{"path": "d/data.csv", "uri": f"{base}/data.csv", "digest": good}])
    await fetch_inputs(_no_blob_fetch, blobs, "o", spec, tmp_path / "run1", LOCAL)
    assert (tmp_path / "run1/d/data.csv").read_bytes() == BODY
    assert blobs.has(good.removeprefix("sha256:"))
    # the second run is served from the cache: the server is not asked again
    await fetch_inputs(_no_blob_fetch, blobs, "o", spec, tmp_path / "run2", LOCAL)
    assert (tmp_path / "run2/d/data.csv").read_bytes() == BODY
    assert handler.hits == ["/data.csv"]
    wrong = _spec([{"path": "x.csv", "uri": f"{base}/data.csv", "digest": bad}])
    with pytest.raises(InputError, match="not the pinned " + bad):
        await fetch_inputs(_no_blob_fetch, blobs, "o", wrong, tmp_path / "run3", LOCAL)
    assert not blobs.has(bad.removeprefix("sha256:"))
    assert not (tmp_path / "run3/x.csv").exists()


def test_inputs_section_of_config(tmp_path: Path) -> None:
    cfg = NodeConfig.model_validate(
        {
            "inputs": {
                "ipfs_gateway": "http://127.0.0.1:8080",
                "allow_hosts": ["10.0.0.0/8", "minio.lab"],
            }
        }
    )
    assert cfg.inputs.allow_hosts == ("10.0.0.0/8", "minio.lab")
    init_node(tmp_path / "n")
    (tmp_path / "n/config.toml").write_text("[inputs]\ns3_anonymous = false\n")
    with pytest.raises(ConfigError, match="signed S3 requests are not supported"):
        load_node(tmp_path / "n")
    (tmp_path / "n/config.toml").write_text('[inputs]\nallow_hosts = ["not a host!"]\n')
    with pytest.raises(ConfigError, match="neither a host name nor a CIDR"):
        load_node(tmp_path / "n")
    (tmp_path / "n/config.toml").write_text('[inputs]\ngateway = "x"\n')
    with pytest.raises(ConfigError, match="gateway"):
        load_node(tmp_path / "n")


async def test_a_job_naming_a_loopback_input_is_refused_with_the_reason(
    tmp_path: Path, nursery: trio.Nursery, server: tuple[str, type[_Handler]]
) -> None:
    """On real daemons: the worker refuses to fetch, and the reason reaches
    the submitter's job; the server never sees a request."""
    base, handler = server
    handler.routes["/secret"] = (200, {}, b"token")
    async with Cluster.started(nursery, tmp_path, 2) as c:
        job_id = await c.submit(
            0,
            {
                "image": "meshd/busybox:1",
                "command": ["cat", "/mesh/inputs/s"],
                "inputs": [{"path": "s", "uri": f"{base}/secret"}],
            },
        )
        await c.wait_for(
            lambda: "loopback address" in (c.job(0, job_id).last_failure or ""),
            30,
            "the refusal reason",
        )
    assert handler.hits == []
