"""The local control API: JSON routes on Starlette, served by Hypercorn's trio worker.

Rules:
- Loopback only. :meth:`ApiServer.serve` refuses any host that is not a
  loopback IP literal (or ``localhost``, taken as 127.0.0.1); the API can
  submit jobs and spend credits, so it is never reachable from the network.
- Every request carries ``Authorization: Bearer <token>`` (``DIR/api.token``),
  compared in constant time; anything else gets 401 before any body is read.
  The one exception is a route registered ``open=True``: a ``GET`` of fixed
  bytes that carry no data of the node (the dashboard's HTML, JS and CSS),
  answered without the token.
- Every bound is a field of :class:`ApiParams` with a documented default:
  body size (per route), header size, JSON nesting depth, connections,
  idle and per-request time. A request over a bound is answered with the
  matching status (400, 413, 431, 503); the body of an oversize request is
  never read, and its connection is closed.
- An unauthenticated client cannot lock the operator out: when all
  ``max_connections`` are open, a new connection evicts the oldest one that
  has not yet made an authenticated request; only when every open
  connection has proved the token is the newcomer answered 503.
- Errors are JSON ``{"error": {"code", "message"[, "fields"]}}``. A handler
  raising :class:`ApiError` chooses its status; malformed or too deeply
  nested JSON is a 400 ``bad_json``; any other exception becomes a 500
  naming the exception, is logged with its traceback, and the server
  carries on. Cancellation is never caught.

Theory of operation: :meth:`ApiServer.serve` accepts connections itself
(so it can count, cap and evict them) and hands each to Hypercorn's trio
``TCPServer``, which speaks HTTP/1.1 (h11) and calls the ASGI app, a
:class:`starlette.applications.Starlette` whose one endpoint (:meth:`ApiServer._endpoint`)
checks the head, authenticates, routes on the raw path (so a quoted ``/``
in a job id stays inside its segment), reads the body within the route's
limit and calls the handler under ``request_timeout_s``. Handlers see a
:class:`Request` (method, path, path parameters, query, lower-cased headers,
body bytes) and return a :class:`Response`: a whole body, or a stream of
chunks (chunked transfer, e.g. NDJSON for ``logs -f``) that stops when the
client hangs up (Starlette watches for the disconnect).

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
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr, wrap_app
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from meshd.runtime.metrics import ApiStatistics, Metrics, api_statistics

log = logging.getLogger("meshd.api")

SERVER_NAME = "meshd-api"
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})


@dataclass(frozen=True)
class ApiParams:
    """Bounds of the control API server (``specs/PROTOCOL.md``, control API table)."""

    max_body_bytes: int = 1024 * 1024
    """Request body limit of a route that does not set its own (JSON requests)."""
    max_upload_bytes: int = 64 * 1024 * 1024
    """Body limit of blob upload (``POST /v1/blobs``)."""
    max_header_bytes: int = 16 * 1024
    """Request line plus headers; larger gets 431 (beyond twice this, HTTP's
    parser gives up first: 400 and the connection closed)."""
    max_json_depth: int = 64
    """Deepest nesting of arrays and objects accepted in a JSON body; deeper gets 400."""
    max_connections: int = 32
    """Connections served at once. One more evicts the oldest connection that
    has made no authenticated request; if there is none it is answered 503."""
    max_query_fields: int = 32
    """Query-string parameters per request."""
    keepalive_idle_s: float = 60.0
    """A connection is closed after this long without a request in progress."""
    request_timeout_s: float = 30.0
    """From a request's head to its response being ready (not streaming)."""
    busy_timeout_s: float = 2.0
    """Time given to an over-capacity connection to send its head before the 503."""
    linger_bytes: int = 256 * 1024
    """After a 503 busy, unread request bytes discarded before closing
    (so the client sees the response rather than a reset)."""

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
    max_json_depth: int = ApiParams.max_json_depth

    def json(self) -> Any:
        """The body as JSON; ApiError 400 ``bad_json`` if it is not, or if it
        nests deeper than ``max_json_depth``."""
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            value = None  # nested past the interpreter's limit: certainly too deep
        else:
            if json_depth(value) <= self.max_json_depth:
                return value
        raise ApiError(
            400, "bad_json", f"request body nests JSON deeper than {self.max_json_depth} levels"
        )

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


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0, ``[]`` is 1), without recursion."""
    depth = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, d = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth = max(depth, d + 1)
            todo.extend((x, d + 1) for x in item if isinstance(x, (list, dict)))
    return depth


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
    """A complete error response written on a socket no HTTP server serves (busy)."""
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
    open: bool = False
    """Answered without the token (a ``GET`` of assets that carry no data)."""

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


@dataclass(eq=False)
class _Connection:
    """One accepted connection: its cancel scope, and whether it proved the token."""

    scope: trio.CancelScope
    authenticated: bool = False


_Address = tuple[str, int]
"""A client's address as Hypercorn reports it in the ASGI scope (loopback: unique per connection)."""


class ApiServer:
    """Routes plus the HTTP machinery; see the module header."""

    def __init__(
        self,
        token: str | None,
        params: ApiParams | None = None,
        *,
        metrics: Metrics | None = None,
        public: bool = False,
    ) -> None:
        """``metrics``: the node's registry, where the server counts its
        connections and requests (a registry of its own if not given).

        ``public``: a server without a token that may listen on any address
        and serves only ``GET`` routes (the scrape address of ``/metrics``);
        ``token`` must then be None.
        """
        if public:
            assert token is None, "a public server has no token"
        elif token is None or len(token) < 16:
            raise ValueError("API token too short (need at least 16 characters)")
        self._token = token.encode() if token is not None else None
        self.public = public
        self.params = params if params is not None else ApiParams()
        self._routes: list[_Route] = []
        self.metrics = metrics if metrics is not None else Metrics()
        self._busy_open = 0
        self._connections: dict[_Address, _Connection] = {}  # insertion order = age
        # Every method reaches the endpoint, which authenticates before it
        # answers 404/405 (Starlette would answer an unlisted method itself).
        every = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=every)])

    # ---------------------------------------------------------------- public

    def route(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        max_body_bytes: int | None = None,
        open: bool = False,
    ) -> None:
        """Register ``handler`` for ``method`` and a ``/path/{param}`` pattern.

        ``open``: answered without the token; only for ``GET`` routes of fixed
        assets that carry none of the node's data (the dashboard's page)."""
        assert method in _METHODS, f"unsupported method {method!r}"
        assert not open or method == "GET", "only GET routes may be open"
        assert method == "GET" or not self.public, "a public server serves only GET routes"
        assert pattern.startswith("/"), "route patterns start with '/'"
        segments = tuple(pattern.strip("/").split("/"))
        limit = self.params.max_body_bytes if max_body_bytes is None else max_body_bytes
        assert limit >= 0
        for r in self._routes:
            assert not (r.method == method and r.segments == segments), f"duplicate route {pattern}"
        self._routes.append(_Route(method, segments, handler, limit, open))

    def statistics(self) -> ApiStatistics:
        """Connections and requests so far, read from the registry."""
        return api_statistics(self.metrics)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        # trio-stubs (from trio-typing, a libp2p dependency) shadow trio's inline types
        # and do not export TaskStatus, which trio itself does.
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
    ) -> None:
        """Listen on loopback ``host:port`` (0 = any free port; any address if
        ``public``); reports the bound port."""
        bind = host if self.public else check_loopback(host)
        listeners = await trio.open_tcp_listeners(port, host=bind)
        bound = listeners[0].socket.getsockname()[1]
        config = self._hypercorn_config()
        app = wrap_app(self.app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        context = WorkerContext(None)
        what = "metrics (no token)" if self.public else "control API"
        log.info("%s listening on %s:%d", what, bind, bound)

        async def serve_one(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
            wrapped = _EndOnEof(stream, scope)
            server = TCPServer(app, config, context, ConnectionState({}), wrapped)  # type: ignore[arg-type]
            wrapped.answering = lambda: _answering(server)
            await server.run()

        async with trio.open_nursery() as nursery:
            task_status.started(bound)
            await trio.serve_listeners(
                lambda stream: self._on_connection(stream, serve_one),
                listeners,
                handler_nursery=nursery,
            )

    # ------------------------------------------------------------ connection

    def _hypercorn_config(self) -> HypercornConfig:
        config = HypercornConfig()
        config.keep_alive_timeout = self.params.keepalive_idle_s
        config.h11_max_incomplete_size = 2 * self.params.max_header_bytes
        config.include_server_header = False
        config.accesslog = None
        config.errorlog = log
        return config

    async def _on_connection(
        self,
        stream: trio.SocketStream,
        serve_one: Callable[[trio.SocketStream, trio.CancelScope], Awaitable[None]],
    ) -> None:
        self.metrics.api_connections.inc()
        try:
            sock = stream.socket
            address: _Address = parse_socket_addr(sock.family, sock.getpeername())  # type: ignore[assignment]
            if len(self._connections) >= self.params.max_connections and not self._evict():
                await self._reject_busy(stream)
                return
            conn = self._connections[address] = _Connection(trio.CancelScope())
            self.metrics.api_open.inc()
            try:
                with conn.scope:
                    await serve_one(stream, conn.scope)
            finally:
                self.metrics.api_open.dec()
                if self._connections.get(address) is conn:
                    del self._connections[address]
        except (OSError, *_DISCONNECTS):
            pass  # the client went away or stalled; nothing to answer
        except Exception:
            log.exception("API connection failed unexpectedly (the server carries on)")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _evict(self) -> bool:
        """Close the oldest connection that made no authenticated request; False if none."""
        for address, conn in self._connections.items():
            if not conn.authenticated:
                del self._connections[address]
                conn.scope.cancel()
                self.metrics.api_refused.labels(reason="evicted").inc()
                return True
        return False

    async def _reject_busy(self, stream: trio.SocketStream) -> None:
        self.metrics.api_refused.labels(reason="busy").inc()
        if self._busy_open >= self.params.max_connections:
            return  # under a flood even the 503 is not worth a task
        self._busy_open += 1
        try:
            parser = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self.params.max_header_bytes
            )
            with trio.move_on_after(self.params.busy_timeout_s):
                while (event := parser.next_event()) is h11.NEED_DATA:
                    parser.receive_data(await stream.receive_some(64 * 1024))
                if isinstance(event, h11.Request):
                    msg = f"too many API connections (limit {self.params.max_connections}); retry shortly"
                    await stream.send_all(_raw_error(503, "busy", msg))
                    await self._linger(stream)
        except h11.RemoteProtocolError:
            pass
        finally:
            self._busy_open -= 1

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Half-close and discard a bounded amount of unread input, so the
        client reads our response instead of a connection reset."""
        await stream.send_eof()
        left = self.params.linger_bytes
        with trio.move_on_after(1.0):
            while left > 0 and (data := await stream.receive_some(min(left, 64 * 1024))):
                left -= len(data)

    # --------------------------------------------------------------- requests

    async def _endpoint(self, request: StarletteRequest) -> StarletteResponse:
        """Starlette's one endpoint: every request, whatever its path, comes here."""
        try:
            response, close = await self._respond(request)
        except ClientDisconnect:
            response, close = error_response(400, "disconnected", "client went away"), True
        self.metrics.api_requests.labels(status=str(response.status)).inc()
        headers = {"Server": SERVER_NAME, **dict(response.headers)}
        if close:
            headers["Connection"] = "close"
        log.debug("%s %s -> %d", request.method, request.url.path, response.status)
        if response.stream is not None:
            return StreamingResponse(
                _logged_stream(response.stream),
                status_code=response.status,
                headers=headers,
                media_type=response.content_type,
            )
        return StarletteResponse(
            response.body,
            status_code=response.status,
            headers=headers,
            media_type=response.content_type,
        )

    async def _respond(self, request: StarletteRequest) -> tuple[Response, bool]:
        """Check, authenticate and route a request; read its body; run the handler.

        Returns the response and whether the connection must close after it.
        """
        scope = request.scope
        raw_target = bytes(scope.get("raw_path") or scope["path"].encode())
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        head_bytes = len(raw_target) + sum(len(k) + len(v) + 4 for k, v in raw_headers)
        if head_bytes > self.params.max_header_bytes:
            msg = f"request headers exceed {self.params.max_header_bytes} bytes"
            return error_response(431, "headers_too_large", msg), True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        bodyless = _declares_no_body(headers)
        method = request.method
        path = raw_target.decode("ascii", "replace")
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        authorized = self._authorized(headers.get("authorization", ""))
        if not authorized and not self._open(method, parts):
            resp = error_response(
                401, "unauthorized", "missing or wrong API token (see DATA_DIR/api.token)"
            )
            return _with(resp, ("WWW-Authenticate", "Bearer")), not bodyless
        conn = self._connections.get(scope.get("client"))  # type: ignore[arg-type]
        if conn is not None and authorized:
            conn.authenticated = True
        qs = scope.get("query_string", b"").decode("ascii", "replace")
        route, params = self._match(method, parts)
        if route is None:
            return self._no_route(method, path, parts), not bodyless
        try:
            query = dict(
                urllib.parse.parse_qsl(
                    qs, keep_blank_values=True, max_num_fields=self.params.max_query_fields
                )
            )
        except ValueError as exc:
            return error_response(400, "bad_query", str(exc)), not bodyless
        with trio.move_on_after(self.params.request_timeout_s):
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > route.max_body_bytes:
                msg = f"request body of {int(declared)} bytes exceeds the {route.max_body_bytes}-byte limit"
                return error_response(413, "body_too_large", msg), True
            body = await _read_body(request, route.max_body_bytes)
            if body is None:
                msg = f"request body exceeds the {route.max_body_bytes}-byte limit"
                return error_response(413, "body_too_large", msg), True
            req = Request(method, path, params, query, headers, body, self.params.max_json_depth)
            return await self._call(route, req), False
        msg = f"request not completed within {self.params.request_timeout_s:g} s"
        return error_response(503, "timeout", msg), True

    async def _call(self, route: _Route, request: Request) -> Response:
        try:
            return await route.handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, fields=exc.fields)
        except Exception as exc:
            log.exception("API handler for %s %s failed", request.method, request.path)
            msg = f"internal error in {request.method} {request.path}: {type(exc).__name__}: {exc} (see the daemon log)"
            return error_response(500, "internal", msg)

    # --------------------------------------------------------------- helpers

    def _authorized(self, header: str) -> bool:
        if self._token is None:
            return True  # public: GET routes only, no token
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token
        )

    def _open(self, method: str, parts: list[str]) -> bool:
        """Whether this request names an open route (answered without the token)."""
        route, _ = self._match(method, parts)
        return route is not None and route.open

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


_DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)
"""What a client that hangs up or stops reading makes our socket calls raise."""


class _EndOnEof:
    """The socket as Hypercorn sees it, except that the client's end of input
    on an idle connection ends it at once: Hypercorn would otherwise keep the
    closed connection's task until its keep-alive timer ran out (and count it
    open). With a request in flight Hypercorn closes after the answer itself
    (so a client that half-closes after its request still reads the answer)."""

    def __init__(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        self._stream = stream
        self._scope = scope
        self.socket = stream.socket
        self.answering: Callable[[], bool] = lambda: False
        """Whether a request is being answered (set once Hypercorn's server exists)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except _DISCONNECTS:
            data = b""
        if not data and not self.answering():
            self._scope.cancel()
        return data

    async def send_all(self, data: bytes | memoryview) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _answering(server: TCPServer) -> bool:
    """Whether Hypercorn's HTTP/1.1 protocol has a request open (it sets the
    stream when it parses a head, before it reads again, and clears it once
    the response is sent)."""
    wrapper = getattr(server, "protocol", None)
    return getattr(getattr(wrapper, "protocol", None), "stream", None) is not None


def _with(response: Response, header: tuple[str, str]) -> Response:
    return Response(
        response.status, response.body, response.content_type, (*response.headers, header)
    )


def _declares_no_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" not in headers and headers.get("content-length", "0") == "0"


async def _read_body(request: StarletteRequest, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _logged_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass a handler's chunks on; a failing iterator cannot be reported
    mid-body, so it is logged and the body ends there."""
    try:
        async for chunk in chunks:
            if chunk:
                yield chunk
    except Exception:
        log.exception("API response stream failed; ending the response")
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()
