"""The local control API: a small HTTP/1.1 JSON server on trio + h11.

Rules:
- Loopback only. :meth:`ApiServer.serve` refuses any host that is not a
  loopback IP literal (or ``localhost``, taken as 127.0.0.1); the API can
  submit jobs and spend credits, so it is never reachable from the network.
- Every request carries ``Authorization: Bearer <token>`` (``DIR/api.token``),
  compared in constant time; anything else gets 401 before any body is read.
- Every bound is a field of :class:`ApiParams` with a documented default:
  body size (per route), header size, concurrent connections, idle and
  per-request time, send time. A request over a bound is answered with the
  matching status (413, 431, 408, 503) and its connection is closed; the
  body of an oversize request is never read.
- Errors are JSON ``{"error": {"code", "message"[, "fields"]}}``. A handler
  raising :class:`ApiError` chooses its status; any other exception becomes
  a 500 naming the exception, is logged with its traceback, and the server
  carries on. Cancellation is never caught.

Theory of operation: one trio task per connection runs an h11 state machine.
A cycle reads a request head (waiting at most ``keepalive_idle_s`` for its
first byte, then ``request_timeout_s`` for the whole request and handler),
checks auth, routes, reads the body within the route's limit, calls the
handler, and sends its :class:`Response`: a whole body (with Content-Length)
or a stream of chunks (chunked transfer, e.g. NDJSON for ``logs -f``). A
streamed response ends the connection afterwards, and while it streams a
second task watches the socket so a client that hangs up stops the stream.
Handlers see a :class:`Request`: method, path, path parameters, query,
lower-cased headers and body bytes.

Example (the daemon)::

    server = ApiServer(token, ApiParams())
    server.route("GET", "/v1/jobs/{job_id}", get_job)
    server.route("POST", "/v1/blobs", put_blob, max_body_bytes=server.params.max_upload_bytes)
    port = await nursery.start(server.serve, "127.0.0.1", config.api_port)
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
import trio

log = logging.getLogger("meshd.api")

SERVER_NAME = b"meshd-api"
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})


@dataclass(frozen=True)
class ApiParams:
    """Bounds of the control API server."""

    max_body_bytes: int = 1024 * 1024
    """Request body limit of a route that does not set its own (JSON requests)."""
    max_upload_bytes: int = 64 * 1024 * 1024
    """Body limit meant for blob upload (``POST /v1/blobs`` passes it to :meth:`ApiServer.route`)."""
    max_header_bytes: int = 16 * 1024
    """Request line plus headers; larger gets 431."""
    max_connections: int = 32
    """Connections served at once; one more is answered 503 and closed."""
    max_query_fields: int = 32
    """Query-string parameters per request."""
    keepalive_idle_s: float = 60.0
    """An idle keep-alive connection is closed after this long without a byte."""
    request_timeout_s: float = 30.0
    """From a request's first byte to its response being ready (not streaming)."""
    send_timeout_s: float = 30.0
    """Longest one send may block on a client that does not read."""
    busy_timeout_s: float = 2.0
    """Time given to an over-capacity connection to send its head before the 503."""
    linger_bytes: int = 256 * 1024
    """After an error response, unread request bytes discarded before closing
    (so the client sees the response rather than a reset)."""
    read_chunk_bytes: int = 64 * 1024
    """Size of one socket read."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            assert value > 0, f"ApiParams.{name} must be positive, got {value!r}"


class ApiError(Exception):
    """Raised by a handler to answer with an error status and JSON error body."""

    def __init__(
        self, status: int, code: str, message: str, *, fields: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


@dataclass(frozen=True)
class Request:
    """One parsed request, as a handler sees it."""

    method: str
    path: str
    path_params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON; ApiError 400 ``bad_json`` if it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc}") from None

    def query_int(self, name: str, default: int, *, lo: int = 0, hi: int = 2**63 - 1) -> int:
        """An integer query parameter within ``[lo, hi]``; ApiError 400 otherwise."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(
                400, "bad_query", f"query parameter {name!r} must be an integer"
            ) from None
        if not lo <= value <= hi:
            raise ApiError(400, "bad_query", f"query parameter {name!r} must be in {lo}..{hi}")
        return value

    def query_flag(self, name: str) -> bool:
        """True for ``?name=1|true|yes``."""
        return self.query.get(name, "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Response:
    """What a handler returns: a whole body, or ``stream`` of chunks (chunked transfer)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[Request], Awaitable[Response]]


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def json_response(obj: Any, status: int = 200) -> Response:
    """A JSON body (NaN and infinities are refused: they are not JSON)."""
    return Response(status=status, body=_json_bytes(obj))


def bytes_response(data: bytes, content_type: str = "application/octet-stream") -> Response:
    return Response(body=data, content_type=content_type)


def error_response(
    status: int, code: str, message: str, *, fields: list[dict[str, Any]] | None = None
) -> Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        err["fields"] = fields
    return json_response({"error": err}, status)


def ndjson_response(objects: AsyncIterable[Any]) -> Response:
    """Stream each object as one JSON line (``application/x-ndjson``)."""

    async def lines() -> AsyncIterator[bytes]:
        async for obj in objects:
            yield _json_bytes(obj) + b"\n"

    return Response(content_type="application/x-ndjson", stream=lines())


def _raw_error(status: int, code: str, message: str) -> bytes:
    """A complete error response for when h11 has no request to answer (busy, bad head)."""
    body = _json_bytes({"error": {"code": code, "message": message}})
    reason = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def check_loopback(host: str) -> str:
    """The IP to bind for ``host``; ValueError unless it is a loopback address."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"control API host must be a loopback IP address, not {host!r}") from None
    if not ip.is_loopback:
        raise ValueError(
            f"refusing to bind the control API to non-loopback address {host}: "
            "it would let the network submit jobs and spend this node's credits"
        )
    return host


@dataclass(frozen=True)
class _Route:
    method: str
    segments: tuple[str, ...]
    handler: Handler
    max_body_bytes: int

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, part in zip(self.segments, parts, strict=True):
            if pattern.startswith("{"):
                if not part:
                    return None
                params[pattern[1:-1]] = part
            elif pattern != part:
                return None
        return params


@dataclass(frozen=True)
class ApiStatistics:
    connections_open: int
    connections_total: int
    rejected_busy: int
    requests_total: int
    errors_5xx: int


@dataclass
class _Counters:
    open: int = 0
    busy_open: int = 0
    total: int = 0
    rejected_busy: int = 0
    requests: int = 0
    errors_5xx: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


_DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)
"""What a client that hangs up or stops reading makes our socket calls raise."""


class _Close(Exception):
    """Internal: the current connection must close after what was sent."""


class ApiServer:
    """Routes plus the HTTP machinery; see the module header."""

    def __init__(self, token: str, params: ApiParams | None = None) -> None:
        if len(token) < 16:
            raise ValueError("API token too short (need at least 16 characters)")
        self._token = token.encode()
        self.params = params if params is not None else ApiParams()
        self._routes: list[_Route] = []
        self._n = _Counters()

    # ---------------------------------------------------------------- public

    def route(
        self, method: str, pattern: str, handler: Handler, *, max_body_bytes: int | None = None
    ) -> None:
        """Register ``handler`` for ``method`` and a ``/path/{param}`` pattern."""
        assert method in _METHODS, f"unsupported method {method!r}"
        assert pattern.startswith("/"), "route patterns start with '/'"
        segments = tuple(pattern.strip("/").split("/"))
        limit = self.params.max_body_bytes if max_body_bytes is None else max_body_bytes
        assert limit >= 0
        for r in self._routes:
            assert not (r.method == method and r.segments == segments), f"duplicate route {pattern}"
        self._routes.append(_Route(method, segments, handler, limit))

    def statistics(self) -> ApiStatistics:
        n = self._n
        return ApiStatistics(n.open, n.total, n.rejected_busy, n.requests, n.errors_5xx)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        # trio-stubs (from trio-typing, a libp2p dependency) shadow trio's inline types
        # and do not export TaskStatus, which trio itself does.
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
    ) -> None:
        """Listen on loopback ``host:port`` (0 = any free port); reports the bound port."""
        bind = check_loopback(host)
        listeners = await trio.open_tcp_listeners(port, host=bind)
        bound = listeners[0].socket.getsockname()[1]
        log.info("control API listening on %s:%d", bind, bound)
        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await trio.serve_listeners(self._on_connection, listeners, handler_nursery=nursery)

    # ------------------------------------------------------------ connection

    async def _on_connection(self, stream: trio.SocketStream) -> None:
        self._n.total += 1
        try:
            if self._n.open >= self.params.max_connections:
                await self._reject_busy(stream)
                return
            self._n.open += 1
            try:
                await self._serve_connection(_Conn(stream, self.params))
            finally:
                self._n.open -= 1
        except _DISCONNECTS:
            pass  # the client went away or stalled; nothing to answer
        except Exception:
            log.exception("API connection failed unexpectedly (the server carries on)")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _reject_busy(self, stream: trio.SocketStream) -> None:
        self._n.rejected_busy += 1
        if self._n.busy_open >= self.params.max_connections:
            return  # under a flood even the 503 is not worth a task
        self._n.busy_open += 1
        try:
            conn = _Conn(stream, self.params)
            with trio.move_on_after(self.params.busy_timeout_s):
                event = await conn.next_event()
                if isinstance(event, h11.Request):
                    msg = f"too many API connections (limit {self.params.max_connections}); retry shortly"
                    await conn.send_raw(_raw_error(503, "busy", msg))
                    await conn.linger()
        except h11.RemoteProtocolError:
            pass
        finally:
            self._n.busy_open -= 1

    async def _serve_connection(self, conn: _Conn) -> None:
        while True:
            try:
                keep_alive = await self._one_cycle(conn)
            except _Close:
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                code = "headers_too_large" if status == 431 else "bad_request"
                await conn.send_raw(_raw_error(status, code, f"malformed request: {exc}"))
                await conn.linger()
                return
            if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
                if conn.h11.their_state is not h11.MUST_CLOSE:
                    await conn.linger()
                return
            if not keep_alive:
                return
            conn.h11.start_next_cycle()

    async def _one_cycle(self, conn: _Conn) -> bool:
        """Serve one request; returns whether the connection may be reused."""
        head = await conn.read_head()
        if head is None:
            return False
        self._n.requests += 1
        with trio.CancelScope(deadline=conn.request_deadline) as scope:
            response, reusable = await self._respond(conn, head)
        if scope.cancelled_caught:
            msg = f"request not completed within {self.params.request_timeout_s:g} s"
            response, reusable = error_response(503, "timeout", msg), False
        await self._send(conn, response, head)
        if reusable and conn.h11.their_state is h11.SEND_BODY:
            # An early answer (401, 404, 405) to a request declaring no body:
            # consume its end so the connection can serve the next request.
            reusable = await conn.read_body(0) is not None
        return reusable

    async def _respond(self, conn: _Conn, head: h11.Request) -> tuple[Response, bool]:
        """Check and route a request head; read its body; run the handler."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
        method = head.method.decode("ascii", "replace")
        target = head.target.decode("ascii", "replace")
        head_bytes = len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
        if head_bytes > self.params.max_header_bytes:
            msg = f"request headers exceed {self.params.max_header_bytes} bytes"
            return error_response(431, "headers_too_large", msg), False
        bodyless = _declares_no_body(headers)
        if not self._authorized(headers.get("authorization", "")):
            resp = error_response(
                401, "unauthorized", "missing or wrong API token (see DATA_DIR/api.token)"
            )
            return _with(resp, ("WWW-Authenticate", "Bearer")), bodyless
        path, _, qs = target.partition("?")
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        route, params = self._match(method, parts)
        if route is None:
            return self._no_route(method, path, parts), bodyless
        try:
            query = dict(
                urllib.parse.parse_qsl(
                    qs, keep_blank_values=True, max_num_fields=self.params.max_query_fields
                )
            )
        except ValueError as exc:
            return error_response(400, "bad_query", str(exc)), bodyless
        declared = headers.get("content-length")
        if declared is not None and int(declared) > route.max_body_bytes:
            msg = f"request body of {int(declared)} bytes exceeds the {route.max_body_bytes}-byte limit"
            return error_response(413, "body_too_large", msg), False
        body = await conn.read_body(route.max_body_bytes)
        if body is None:
            msg = f"request body exceeds the {route.max_body_bytes}-byte limit"
            return error_response(413, "body_too_large", msg), False
        request = Request(method, path, params, query, headers, body)
        return await self._call(route, request), True

    async def _call(self, route: _Route, request: Request) -> Response:
        try:
            return await route.handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, fields=exc.fields)
        except Exception as exc:
            log.exception("API handler for %s %s failed", request.method, request.path)
            msg = f"internal error in {request.method} {request.path}: {type(exc).__name__}: {exc} (see the daemon log)"
            return error_response(500, "internal", msg)

    async def _send(self, conn: _Conn, response: Response, head: h11.Request) -> None:
        self._n.by_status[response.status] = self._n.by_status.get(response.status, 0) + 1
        if response.status >= 500:
            self._n.errors_5xx += 1
        headers = [("Content-Type", response.content_type), ("Server", SERVER_NAME.decode())]
        headers += list(response.headers)
        if response.stream is None:
            headers.append(("Content-Length", str(len(response.body))))
        else:
            headers.append(("Connection", "close"))
        await conn.send(h11.Response(status_code=response.status, headers=headers))
        if response.stream is None:
            if response.body:
                await conn.send(h11.Data(data=response.body))
            await conn.send(h11.EndOfMessage())
        else:
            await conn.send_stream(response.stream)
        log.debug("%s %s -> %d", head.method.decode(), head.target.decode(), response.status)

    # --------------------------------------------------------------- helpers

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token
        )

    def _match(self, method: str, parts: list[str]) -> tuple[_Route | None, dict[str, str]]:
        for r in self._routes:
            if r.method == method:
                params = r.match(parts)
                if params is not None:
                    return r, params
        return None, {}

    def _no_route(self, method: str, path: str, parts: list[str]) -> Response:
        allowed = sorted({r.method for r in self._routes if r.match(parts) is not None})
        if allowed:
            resp = error_response(405, "method_not_allowed", f"{method} is not allowed on {path}")
            return _with(resp, ("Allow", ", ".join(allowed)))
        return error_response(404, "not_found", f"no such API route: {method} {path}")


def _with(response: Response, header: tuple[str, str]) -> Response:
    return Response(
        response.status, response.body, response.content_type, (*response.headers, header)
    )


def _declares_no_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" not in headers and headers.get("content-length", "0") == "0"


class _Conn:
    """One client connection: the socket, its h11 machine and its deadlines."""

    def __init__(self, stream: trio.SocketStream, params: ApiParams) -> None:
        self.stream = stream
        self.params = params
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=params.max_header_bytes)
        self.request_deadline = float("inf")

    async def _receive(self) -> None:
        self.h11.receive_data(await self.stream.receive_some(self.params.read_chunk_bytes))

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive()

    async def read_head(self) -> h11.Request | None:
        """The next request head, or None on a clean close or an idle timeout.

        The wait for a head's first byte is bounded by ``keepalive_idle_s``; from
        that byte on, the whole request and its handler by ``request_timeout_s``.
        """
        p = self.params
        now = trio.current_time()
        started = bool(self.h11.trailing_data[0])  # a pipelined head already buffered
        deadline = now + (p.request_timeout_s if started else p.keepalive_idle_s)
        with trio.CancelScope(deadline=deadline) as scope:
            event = self.h11.next_event()
            while event is h11.NEED_DATA:
                await self._receive()
                if not started:
                    started = True
                    scope.deadline = trio.current_time() + p.request_timeout_s
                event = self.h11.next_event()
        if scope.cancelled_caught:
            if started:
                msg = f"request head not received within {p.request_timeout_s:g} s"
                await self.send_raw(_raw_error(408, "request_timeout", msg))
            return None
        self.request_deadline = scope.deadline if started else now + p.request_timeout_s
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request), event
        return event

    async def read_body(self, limit: int) -> bytes | None:
        """The whole body, or None as soon as it grows past ``limit``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    return None
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed mid-body
                raise _Close()

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.send_raw(data)

    async def send_raw(self, data: bytes) -> None:
        with trio.fail_after(self.params.send_timeout_s):
            await self.stream.send_all(data)

    async def send_stream(self, chunks: AsyncIterator[bytes]) -> None:
        """Send chunks until the iterator ends or the client hangs up.

        A failing iterator cannot be reported mid-body: it is logged and the
        connection closed, so the client sees a truncated chunked body.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_hangup, nursery.cancel_scope)
            try:
                async for chunk in chunks:
                    if chunk:
                        await self.send(h11.Data(data=chunk))
                await self.send(h11.EndOfMessage())
            except _DISCONNECTS:
                pass
            except Exception:
                log.exception("API response stream failed; closing the connection")
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True):
                        await aclose()
                nursery.cancel_scope.cancel()

    async def _watch_hangup(self, scope: trio.CancelScope) -> None:
        # The request is fully read; anything more is discarded, EOF means gone.
        try:
            while await self.stream.receive_some(self.params.read_chunk_bytes):
                pass
        except _DISCONNECTS:
            pass
        scope.cancel()

    async def linger(self) -> None:
        """Half-close and discard a bounded amount of unread input, so the
        client reads our error response instead of a connection reset."""
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        left = self.params.linger_bytes
        with trio.move_on_after(1.0):
            while left > 0:
                data = await self.stream.receive_some(min(left, self.params.read_chunk_bytes))
                if not data:
                    return
                left -= len(data)
