"""The control API server (meshd.api.server) and its client (meshd.api.client),
on real loopback sockets: auth, bounds, errors, streaming, connection cap."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from meshd.api.client import ApiClient, ApiHttpError, AuthError, DaemonUnreachable
from meshd.api.server import (
    ApiError,
    ApiParams,
    ApiServer,
    Request,
    Response,
    json_response,
    ndjson_response,
)
from meshd.config import init_node, write_api_addr

TOKEN = "ab" * 32
AUTH = ("Authorization", f"Bearer {TOKEN}")


class Probe:
    """State the test handlers share with the tests."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = trio.Event()
        self.stream_closed = trio.Event()
        self.blobs: dict[str, bytes] = {}


def make_server(probe: Probe, params: ApiParams | None = None) -> ApiServer:
    server = ApiServer(TOKEN, params or ApiParams(max_body_bytes=1024, max_upload_bytes=4096))

    async def ok(req: Request) -> Response:
        probe.calls.append(f"{req.method} {req.path}")
        return json_response({"ok": True, "query": req.query})

    async def job(req: Request) -> Response:
        if req.path_params["job_id"] == "missing":
            raise ApiError(404, "unknown_job", "no job 'missing'")
        return json_response({"job_id": req.path_params["job_id"]})

    async def boom(req: Request) -> Response:
        raise KeyError("surprise")

    async def echo(req: Request) -> Response:
        probe.calls.append("echo")
        return json_response({"got": req.json()})

    async def blob(req: Request) -> Response:
        probe.calls.append("blob")
        digest = "sha256:" + hashlib.sha256(req.body).hexdigest()
        probe.blobs[digest] = req.body
        return json_response({"digest": digest, "size": len(req.body)})

    async def invalid(req: Request) -> Response:
        raise ApiError(
            400,
            "invalid_job",
            "bad descriptor",
            fields=[{"loc": "requirements.gpus", "msg": "must be >= 0"}],
        )

    async def slowish(req: Request) -> Response:
        await trio.sleep(0.2)
        return json_response({"slept": True})

    async def slow(req: Request) -> Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def lines() -> Any:
        try:
            yield {"n": 1}
            await probe.release.wait()
            yield {"n": 2}
            yield {"end": True, "state": "succeeded"}
        finally:
            probe.stream_closed.set()

    async def logs(req: Request) -> Response:
        return ndjson_response(lines())

    server.route("GET", "/v1/ok", ok)
    server.route("GET", "/v1/jobs/{job_id}", job)
    server.route("GET", "/v1/boom", boom)
    server.route("POST", "/v1/echo", echo)
    server.route("POST", "/v1/blobs", blob, max_body_bytes=server.params.max_upload_bytes)
    server.route("POST", "/v1/jobs", invalid)
    server.route("GET", "/v1/slow", slow)
    server.route("GET", "/v1/slowish", slowish)
    server.route("GET", "/v1/jobs/{job_id}/logs", logs)
    return server


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def port(nursery: trio.Nursery, probe: Probe) -> int:
    return await nursery.start(make_server(probe).serve, "127.0.0.1", 0)


class RawClient:
    """A minimal HTTP/1.1 client on one trio connection (h11 client side)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: tuple[tuple[str, str], ...] = (AUTH,),
        body: bytes = b"",
    ) -> None:
        hdrs = [("Host", "127.0.0.1"), *headers]
        if body:
            hdrs.append(("Content-Length", str(len(body))))
        await self.stream.send_all(
            self.conn.send(h11.Request(method=method, target=path, headers=hdrs))
        )
        if body:
            await self.stream.send_all(self.conn.send(h11.Data(data=body)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))

    async def event(self) -> Any:
        while True:
            ev = self.conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await self.event()
        assert isinstance(head, h11.Response), head
        body = b""
        while not isinstance(ev := await self.event(), h11.EndOfMessage):
            body += ev.data
        headers = {k.decode(): v.decode() for k, v in head.headers}
        return head.status_code, headers, body

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        await self.send(method, path, **kw)
        status, headers, body = await self.response()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status, headers, json.loads(body)


async def get(port: int, path: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
    client = await RawClient.connect(port)
    async with client.stream:
        return await client.request("GET", path, **kw)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


# ------------------------------------------------------------------ auth


async def test_requests_without_the_right_token_get_401(port: int, probe: Probe) -> None:
    status, headers, body = await get(port, "/v1/ok", headers=())
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert headers["www-authenticate"] == "Bearer"
    status, _, _ = await get(port, "/v1/ok", headers=(("Authorization", "Bearer " + "x" * 64),))
    assert status == 401
    status, _, _ = await get(port, "/v1/ok", headers=(("Authorization", TOKEN),))  # no scheme
    assert status == 401
    assert probe.calls == []
    status, _, body = await get(port, "/v1/ok?a=1")
    assert (status, body) == (200, {"ok": True, "query": {"a": "1"}})


# ------------------------------------------------------------------ binding


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "::", "example.com"])
async def test_refuses_to_bind_a_non_loopback_address(host: str, probe: Probe) -> None:
    with pytest.raises(ValueError, match="loopback"):
        await make_server(probe).serve(host, 0)


async def test_serves_on_ipv6_loopback_too(nursery: trio.Nursery, probe: Probe) -> None:
    try:
        bound = await nursery.start(make_server(probe).serve, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    stream = await trio.open_tcp_stream("::1", bound)
    client = RawClient(stream)
    async with stream:
        assert (await client.request("GET", "/v1/ok"))[0] == 200


# ------------------------------------------------------------------ routing and errors


async def test_unknown_route_is_404_and_wrong_method_405(port: int) -> None:
    status, _, body = await get(port, "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, headers, body = await get(port, "/v1/echo")
    assert status == 405 and headers["allow"] == "POST"


async def test_any_method_is_authenticated_first_and_answered_in_json(port: int) -> None:
    client = await RawClient.connect(port)
    async with client.stream:
        status, _, body = await client.request("OPTIONS", "/v1/ok", headers=())
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, headers, body = await client.request("OPTIONS", "/v1/ok")
        assert (status, body["error"]["code"], headers["allow"]) == (
            405,
            "method_not_allowed",
            "GET",
        )


async def test_handler_api_error_keeps_its_status_and_fields(port: int) -> None:
    status, _, body = await get(port, "/v1/jobs/missing")
    assert (status, body["error"]["code"]) == (404, "unknown_job")
    client = await RawClient.connect(port)
    async with client.stream:
        status, _, body = await client.request("POST", "/v1/jobs", body=b"{}")
    assert status == 400
    assert body["error"]["fields"] == [{"loc": "requirements.gpus", "msg": "must be >= 0"}]


async def test_handler_exception_is_a_500_and_the_server_keeps_serving(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = await RawClient.connect(port)
    with caplog.at_level(logging.ERROR, logger="meshd.api"):
        async with client.stream:
            status, _, body = await client.request("GET", "/v1/boom")
            assert status == 500
            assert body["error"]["code"] == "internal"
            assert "KeyError" in body["error"]["message"]
            # same connection, then a new one: both still served
            assert (await client.request("GET", "/v1/ok"))[0] == 200
    assert (await get(port, "/v1/ok"))[0] == 200
    assert any("GET /v1/boom" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_bad_json_body_is_a_400(port: int) -> None:
    client = await RawClient.connect(port)
    async with client.stream:
        status, _, body = await client.request("POST", "/v1/echo", body=b"{not json")
        assert (status, body["error"]["code"]) == (400, "bad_json")
        status, _, body = await client.request("POST", "/v1/echo", body=b'{"a": [1]}')
        assert (status, body) == (200, {"got": {"a": [1]}})


async def test_keep_alive_serves_many_requests_on_one_connection(port: int, probe: Probe) -> None:
    client = await RawClient.connect(port)
    async with client.stream:
        for i in range(5):
            assert (await client.request("GET", f"/v1/ok?i={i}"))[2]["query"] == {"i": str(i)}
    assert len(probe.calls) == 5


# ------------------------------------------------------------------ bounds


async def test_oversize_body_gets_413_before_it_is_sent(port: int, probe: Probe) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        # Declares 200 MiB but sends 1 KiB: the answer must not wait for the rest.
        head = (
            f"POST /v1/blobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {200 * 1024 * 1024}\r\n\r\n"
        ).encode()
        await stream.send_all(head + b"x" * 1024)
        with trio.fail_after(5):
            data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b'"body_too_large"' in data and b"4096-byte limit" in data
    assert "blob" not in probe.calls


async def test_body_within_the_upload_limit_is_accepted_but_not_on_json_routes(port: int) -> None:
    client = await RawClient.connect(port)
    async with client.stream:
        status, _, body = await client.request("POST", "/v1/blobs", body=b"a" * 4000)
    assert status == 200 and body["size"] == 4000
    client = await RawClient.connect(port)
    async with client.stream:
        await client.send("POST", "/v1/echo", body=b"[" + b"1," * 600 + b"1]")  # > 1024 bytes
        status, _, _ = await client.response()
    assert status == 413


async def test_chunked_body_over_the_limit_is_cut_off(port: int, probe: Probe) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = (
            f"POST /v1/blobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"1000\r\n" + b"z" * 4096 + b"\r\n"
        await stream.send_all(head + chunk + chunk)
        with trio.fail_after(5):
            data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert "blob" not in probe.calls


async def test_oversize_headers_get_431(port: int) -> None:
    status, _, body = await get(port, "/v1/ok", headers=(AUTH, ("X-Big", "a" * 20_000)))
    assert status == 431 and body["error"]["code"] == "headers_too_large"


async def test_slow_handler_times_out_with_503(nursery: trio.Nursery, probe: Probe) -> None:
    server = make_server(probe, ApiParams(request_timeout_s=0.2))
    bound = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(5):
        status, _, body = await get(bound, "/v1/slow")
    assert (status, body["error"]["code"]) == (503, "timeout")


async def test_idle_keep_alive_connection_is_closed(nursery: trio.Nursery, probe: Probe) -> None:
    server = make_server(probe, ApiParams(keepalive_idle_s=0.2))
    bound = await nursery.start(server.serve, "127.0.0.1", 0)
    stream = await trio.open_tcp_stream("127.0.0.1", bound)
    async with stream:
        with trio.fail_after(5):
            assert await read_until_closed(stream) == b""  # closed without a word


async def test_connections_over_the_cap_get_503(nursery: trio.Nursery, probe: Probe) -> None:
    server = make_server(probe, ApiParams(max_connections=2))
    bound = await nursery.start(server.serve, "127.0.0.1", 0)
    first, second = await RawClient.connect(bound), await RawClient.connect(bound)
    for c in (first, second):  # both served and held open (keep-alive)
        assert (await c.request("GET", "/v1/ok"))[0] == 200
    third = await RawClient.connect(bound)
    async with third.stream:
        status, _, body = await third.request("GET", "/v1/ok")
    assert (status, body["error"]["code"]) == (503, "busy")
    assert server.statistics().rejected_busy == 1
    await first.stream.aclose()
    with trio.fail_after(5):
        while server.statistics().connections_open > 1:
            await trio.sleep(0.01)
    assert (await get(bound, "/v1/ok"))[0] == 200
    await second.stream.aclose()


async def test_idle_unauthenticated_connections_cannot_lock_out_the_operator(
    nursery: trio.Nursery, probe: Probe
) -> None:
    server = make_server(probe)  # the default cap: fewer connections than the idle crowd
    bound = await nursery.start(server.serve, "127.0.0.1", 0)
    idle = [await trio.open_tcp_stream("127.0.0.1", bound) for _ in range(64)]
    half = b"GET /v1/ok HTTP/1.1\r\nHost: x\r\n"  # a head that never ends
    for stream in idle[::2]:
        await stream.send_all(half)
    await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(5):  # a hang guard: the old server made this wait 60 s
        status, _, body = await get(bound, "/v1/ok")
    assert (status, body["ok"]) == (200, True)
    stats = server.statistics()
    assert stats.rejected_busy == 0
    assert stats.evicted_unauthenticated >= 64 + 1 - server.params.max_connections
    assert stats.connections_open <= server.params.max_connections
    for stream in idle:
        await stream.aclose()


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(
    port: int,
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = f"GET /v1/slowish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        await stream.send_all(head.encode())
        await stream.send_eof()  # done sending (as `nc -N` does); still reading
        with trio.fail_after(5):
            data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b'{"slept":true}'), data


async def test_deeply_nested_json_is_a_400_not_a_500(
    nursery: trio.Nursery, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    params = ApiParams(max_body_bytes=1024 * 1024, max_json_depth=64)
    bound = await nursery.start(make_server(probe, params).serve, "127.0.0.1", 0)
    client = await RawClient.connect(bound)
    with caplog.at_level(logging.ERROR, logger="meshd.api"):
        async with client.stream:
            for depth in (100_000, 65):  # past the parser's recursion limit; one level too deep
                nested = b"[" * depth + b"]" * depth
                status, _, body = await client.request("POST", "/v1/echo", body=nested)
                assert (status, body["error"]["code"]) == (400, "bad_json"), depth
                assert "deeper than 64 levels" in body["error"]["message"]
            status, _, body = await client.request("POST", "/v1/echo", body=b"[" * 64 + b"]" * 64)
            assert status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ streaming


async def test_ndjson_stream_delivers_lines_as_they_are_produced(port: int, probe: Probe) -> None:
    client = await RawClient.connect(port)
    async with client.stream:
        await client.send("GET", "/v1/jobs/j1/logs?follow=1")
        head = await client.event()
        assert head.status_code == 200
        headers = dict(head.headers)
        assert headers[b"content-type"] == b"application/x-ndjson"
        assert headers[b"transfer-encoding"] == b"chunked"
        first = await client.event()
        # The handler is blocked until release: line 1 arrived before the stream finished.
        assert json.loads(first.data) == {"n": 1}
        probe.release.set()
        rest = b""
        while not isinstance(ev := await client.event(), h11.EndOfMessage):
            rest += ev.data
    lines = [json.loads(x) for x in rest.splitlines()]
    assert lines == [{"n": 2}, {"end": True, "state": "succeeded"}]


async def test_stream_stops_when_the_client_hangs_up(port: int, probe: Probe) -> None:
    client = await RawClient.connect(port)
    await client.send("GET", "/v1/jobs/j1/logs?follow=1")
    await client.event()
    await client.event()  # first line
    await client.stream.aclose()
    with trio.fail_after(5):
        await probe.stream_closed.wait()  # the generator was closed, not left waiting


# ------------------------------------------------------------------ the sync client


@pytest.fixture
async def data_dir(tmp_path: Path, port: int) -> Path:
    d = tmp_path / "node"
    init_node(d, listen="/ip4/127.0.0.1/tcp/0")
    (d / "api.token").write_text(TOKEN + "\n")
    write_api_addr(d, "127.0.0.1", port)
    return d


async def test_client_calls_routes_and_maps_errors(data_dir: Path, probe: Probe) -> None:
    def work() -> dict[str, Any]:
        client = ApiClient.from_data_dir(data_dir)
        out: dict[str, Any] = {"job": client.job("j 1/x")}
        try:
            client.job("missing")
        except ApiHttpError as exc:
            out["missing"] = (exc.status, exc.code, exc.message)
        try:
            client.submit({"image": "x"})
        except ApiHttpError as exc:
            out["fields"] = exc.fields
        out["blob"] = client.upload_blob(b"hello")
        try:
            client.upload_blob(b"z" * 100_000)
        except ApiHttpError as exc:
            out["too_big"] = exc.status
        out["lines"] = list(client.stream("GET", "/v1/jobs/j1/logs"))
        return out

    probe.release.set()
    out = await trio.to_thread.run_sync(work)
    assert out["job"] == {"job_id": "j 1/x"}  # path segment quoted and unquoted intact
    assert out["missing"] == (404, "unknown_job", "no job 'missing'")
    assert out["fields"] == [{"loc": "requirements.gpus", "msg": "must be >= 0"}]
    assert out["blob"] == {"digest": "sha256:" + hashlib.sha256(b"hello").hexdigest(), "size": 5}
    assert out["too_big"] == 413
    assert out["lines"][-1] == {"end": True, "state": "succeeded"}


async def test_client_with_a_wrong_token_gets_auth_error(data_dir: Path) -> None:
    (data_dir / "api.token").write_text("f" * 64 + "\n")
    with pytest.raises(AuthError, match="refused the API token"):
        await trio.to_thread.run_sync(lambda: ApiClient.from_data_dir(data_dir).status())


def test_client_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    d = tmp_path / "node"
    init_node(d, listen="/ip4/127.0.0.1/tcp/0")
    hint = f"no daemon running for {d} (start it with `meshd start --data-dir {d}`)"
    with pytest.raises(DaemonUnreachable) as info:
        ApiClient.from_data_dir(d)
    assert hint in str(info.value)
    # A stale api.addr (daemon died): nothing listens there.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    write_api_addr(d, "127.0.0.1", free_port)
    with pytest.raises(DaemonUnreachable) as info:
        ApiClient.from_data_dir(d).status()
    assert hint in str(info.value) and "nothing listens" in str(info.value)


def _one_shot_server(answer: bytes) -> int:
    """A socket that answers one connection with ``answer`` and closes (a
    daemon gone wrong), for the client's handling of malformed responses."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return int(srv.getsockname()[1])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b'HTTP/1.1 200 OK\r\n\r\n{"a": 1}', {"a": 1}),  # body ends with the connection
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n", {}),
        (b"garbage\r\n\r\n", "lost the connection"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", "lost the connection"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "lost the connection"),
    ],
)
def test_client_reads_close_delimited_and_chunked_bodies_and_names_bad_ones(
    tmp_path: Path, answer: bytes, expected: Any
) -> None:
    client = ApiClient("127.0.0.1", _one_shot_server(answer), TOKEN, data_dir=tmp_path)
    if isinstance(expected, dict):
        assert client.status() == expected
    else:
        with pytest.raises(DaemonUnreachable, match=expected):
            client.status()


async def test_client_reads_the_413_of_an_upload_refused_before_it_was_sent(
    data_dir: Path, tmp_path: Path
) -> None:
    """The daemon answers 413 from the declared length and closes without
    reading the body; the client, still writing a file far larger than the
    socket buffers, reports the daemon's answer, not a lost connection."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(64 * 1024 * 1024)

    def work() -> ApiHttpError:
        client = ApiClient.from_data_dir(data_dir)
        with big.open("rb") as f, pytest.raises(ApiHttpError) as info:
            client.upload_blob(f, big.stat().st_size)
        return info.value

    exc = await trio.to_thread.run_sync(work)
    assert (exc.status, exc.code) == (413, "body_too_large")
    assert "exceeds the 4096-byte limit" in exc.message


def _silent_server() -> tuple[int, Any]:
    """A socket that accepts connections and never answers; its closer."""
    import socket

    srv = socket.create_server(("127.0.0.1", 0), backlog=4)
    return int(srv.getsockname()[1]), srv.close


def test_a_daemon_that_does_not_answer_is_unreachable_within_the_timeout(tmp_path: Path) -> None:
    port, close = _silent_server()
    try:
        client = ApiClient("127.0.0.1", port, TOKEN, data_dir=tmp_path, timeout_s=0.3)
        with pytest.raises(DaemonUnreachable, match=r"did not answer GET /v1/status within 0.3 s"):
            client.status()
    finally:
        close()


async def test_a_followed_stream_waits_past_the_timeout_for_its_next_line(
    data_dir: Path, probe: Probe
) -> None:
    """``logs -f``: a job may print nothing for longer than ``timeout_s``; the
    followed stream waits for it (the request itself still has the timeout)."""
    got: list[dict[str, Any]] = []

    def follow() -> None:
        client = ApiClient.from_data_dir(data_dir, timeout_s=0.2)
        for line in client.logs("j1", follow=True):
            got.append(line)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, follow)
        await trio.sleep(1.0)  # five timeouts of silence after the first line
        seen = list(got)
        probe.release.set()
    assert seen == [{"n": 1}]  # the first line arrived, and the stream stayed open
    assert got == [{"n": 1}, {"n": 2}, {"end": True, "state": "succeeded"}]
