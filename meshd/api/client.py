"""A synchronous client of the local control API, for the ``mesh`` command.

Rules:
- It finds the daemon through the data dir alone: ``api.addr`` (written by the
  running daemon) and ``api.token``. It talks only to loopback.
- Failures are one of three exceptions, each with a message fit to print:
  :class:`DaemonUnreachable` (no daemon, or it does not answer: the
  operator's to fix by starting it), :class:`AuthError` (the token was
  refused), :class:`ApiHttpError` (the daemon answered with an error; the
  message is the daemon's own, ``fields`` lists bad job-descriptor fields).
- Methods map one-to-one onto the routes in ``meshd/api/server.py``'s
  consumers (see ``mesh_cli/CLI.md``); they return the decoded JSON.
- Bounded: every call has ``timeout_s``; a streamed response (``logs -f``)
  waits without a timeout between lines but caps one line at
  ``max_line_bytes``.

Theory of operation: one ``http.client.HTTPConnection`` per call (the CLI
makes few calls; a fresh connection keeps failure handling simple), the
bearer token on every request, JSON bodies both ways. The standard library's
client costs ``mesh`` little start-up (httpx cost it most of its time,
``tests/bench/bench_cli.py``); it is imported on the first call, not with
this module, so ``mesh --version`` and ``--help`` do not pay for it. Every
read of a response goes through :class:`_Response`, which turns the socket's
and the parser's errors into :class:`DaemonUnreachable`. A file is uploaded
in ``COPY_CHUNK_BYTES`` pieces under its declared ``Content-Length``; if the
daemon refuses it before reading it all (413) and closes, its answer is
still read. A streamed response is read as it arrives and split into NDJSON
lines; a followed one has no read timeout.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from meshd.datadir import DataDir, read_api_addr, read_api_token

DEFAULT_TIMEOUT_S = 30.0
"""Longest wait for any one response (not for the lines of a followed stream)."""
MAX_LINE_BYTES = 8 * 1024 * 1024
"""Longest NDJSON line accepted from a stream."""
COPY_CHUNK_BYTES = 1024 * 1024
"""Largest piece of an uploaded file sent at once, and of a body read at once."""

if TYPE_CHECKING:
    import http.client


class ApiClientError(Exception):
    """Base of the client's errors; ``str()`` is a message for the user."""


class DaemonUnreachable(ApiClientError):
    """No daemon runs for the data dir, or it does not answer."""


class AuthError(ApiClientError):
    """The daemon refused our token."""


class ApiHttpError(ApiClientError):
    """The daemon answered with an error status."""

    def __init__(
        self, status: int, code: str, message: str, fields: list[dict[str, Any]] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []


def _not_running(data_dir: Path, detail: str = "") -> DaemonUnreachable:
    extra = f"; {detail}" if detail else ""
    return DaemonUnreachable(
        f"no daemon running for {data_dir} (start it with `meshd start --data-dir {data_dir}`){extra}"
    )


class ApiClient:
    """Calls the daemon's control API. Build with :meth:`from_data_dir`."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        *,
        data_dir: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.data_dir = data_dir if data_dir is not None else Path(f"{host}:{port}")
        self.timeout_s = timeout_s

    @classmethod
    def from_data_dir(
        cls, data_dir: str | os.PathLike[str], *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> ApiClient:
        """A client for the daemon of ``data_dir``.

        DaemonUnreachable if no daemon published its address; ConfigError
        (``meshd.datadir``) if ``api.addr`` or ``api.token`` is corrupt.
        """
        root = Path(data_dir)
        addr = read_api_addr(root)
        if addr is None:
            why = "no such directory" if not root.is_dir() else f"no {DataDir(root).api_addr.name}"
            raise _not_running(root, why)
        token = read_api_token(root)
        return cls(addr[0], addr[1], token, data_dir=root, timeout_s=timeout_s)

    # ------------------------------------------------------------ the routes

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/v1/status")

    def peers(self) -> dict[str, Any]:
        return self._json("GET", "/v1/peers")

    def log(self, start: int = 1, limit: int = 100) -> dict[str, Any]:
        return self._json("GET", "/v1/log", query={"start": start, "limit": limit})

    def upload_blob(self, source: bytes | IO[bytes], size: int | None = None) -> dict[str, Any]:
        """POST raw bytes (or a binary file of ``size`` bytes); ``{digest, size}``."""
        return self._json(
            "POST", "/v1/blobs", body=source, size=size, content_type="application/octet-stream"
        )

    def submit(
        self,
        spec: dict[str, Any],
        *,
        wait: bool = False,
        queue: bool = False,
        queue_timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """``queue``: accept the job even if no known peer can run it now;
        ``queue_timeout_s``: fail it if no worker took it within that long."""
        payload: dict[str, Any] = {"spec": spec, "wait": wait}
        if queue:
            payload["queue"] = True
        if queue_timeout_s is not None:
            payload["queue_timeout_s"] = queue_timeout_s
        return self._json("POST", "/v1/jobs", payload=payload)

    def metrics(self) -> str:
        """``GET /metrics``: the node's Prometheus families, in text format."""
        with self._request("GET", "/metrics") as resp:
            self._raise_for_status(resp)
            return resp.read().decode("utf-8")

    def jobs(self) -> dict[str, Any]:
        return self._json("GET", "/v1/jobs")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{_q(job_id)}")

    def logs(
        self,
        job_id: str,
        *,
        follow: bool = False,
        replica: int | None = None,
        tail: int | None = None,
        since_ms: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Output lines ``{ts_ms, attempt, replica, stream, data}``, then
        ``{"end": true, "state": ..., "incomplete": [...]}`` (mesh_cli/CLI.md)."""
        query: dict[str, Any] = {"follow": 1} if follow else {}
        for name, value in (("replica", replica), ("tail", tail), ("since_ms", since_ms)):
            if value is not None:
                query[name] = value
        return self.stream("GET", f"/v1/jobs/{_q(job_id)}/logs", query=query or None)

    def download_result(self, job_id: str, dest: IO[bytes]) -> int:
        """Copy the job's output tar into ``dest``; returns the bytes written."""
        with self._request("GET", f"/v1/jobs/{_q(job_id)}/result") as resp:
            self._raise_for_status(resp)
            total = 0
            for chunk in resp.chunks():
                try:
                    dest.write(chunk)
                except OSError as exc:
                    raise ApiClientError(f"cannot write the result of {job_id}: {exc}") from None
                total += len(chunk)
        return total

    def result_manifest(self, job_id: str) -> dict[str, Any]:
        """The accepted result's manifest, signed by its worker and countersigned
        by this origin (specs/JOB.md §3.1)."""
        return self._json("GET", f"/v1/jobs/{_q(job_id)}/manifest")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{_q(job_id)}/cancel", payload={})

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{_q(job_id)}/retry", payload={})

    def credits(self) -> dict[str, Any]:
        return self._json("GET", "/v1/credits")

    # ------------------------------------------------------------ machinery

    def stream(
        self, method: str, path: str, *, query: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the NDJSON objects of a streamed response, as they arrive."""
        with self._request(method, path, query=query, stream=True) as resp:
            self._raise_for_status(resp)
            pending = b""
            for chunk in resp.chunks():
                *lines, pending = (pending + chunk).split(b"\n")
                if len(pending) > MAX_LINE_BYTES or any(len(x) > MAX_LINE_BYTES for x in lines):
                    raise ApiClientError(
                        f"the daemon sent a stream line over {MAX_LINE_BYTES} bytes"
                    )
                for line in lines:
                    if line.strip():
                        yield _decode_json(line, path)
            if pending.strip():
                yield _decode_json(pending, path)

    def _json(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        payload: Any = None,
        body: bytes | IO[bytes] | None = None,
        size: int | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if payload is not None:
            body = json.dumps(payload).encode()
        with self._request(
            method, path, query=query, body=body, size=size, content_type=content_type
        ) as resp:
            self._raise_for_status(resp)
            data = resp.read()
        value = _decode_json(data, path)
        if not isinstance(value, dict):
            raise ApiClientError(f"the daemon answered {path} with JSON that is not an object")
        return value

    @contextmanager
    def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: bytes | IO[bytes] | None = None,
        size: int | None = None,
        content_type: str = "application/json",
        stream: bool = False,
    ) -> Iterator[_Response]:
        """Send one request on a fresh connection; yields the response, then closes both."""
        import http.client  # here, not at the top: see the module header

        target = path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        content: bytes | Iterator[bytes] | None = None
        if body is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else size)
            content = body if isinstance(body, bytes) else _chunks(body)
        what = f"{method} {path}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            try:
                conn.connect()
            except TimeoutError:
                self._lost(what, None)
            except OSError:
                raise _not_running(
                    self.data_dir, f"nothing listens on {self.host}:{self.port}"
                ) from None
            try:
                conn.request(method, target, body=content, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before the body was read: its answer may be waiting (413)
            except (OSError, http.client.HTTPException) as exc:
                self._lost(what, exc)
            if stream and conn.sock is not None:
                conn.sock.settimeout(None)  # a followed log may be quiet for long
            try:
                raw = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._lost(what, exc)
            resp = _Response(raw, lambda exc: self._lost(what, exc, answering=True))
            try:
                yield resp
            finally:
                raw.close()
        finally:
            conn.close()

    def _lost(self, what: str, exc: BaseException | None, *, answering: bool = False) -> NoReturn:
        """Raise the :class:`DaemonUnreachable` that ``exc`` (None: a timeout
        before any answer) stands for; ``answering``: while reading the answer."""
        if exc is None or isinstance(exc, TimeoutError):
            if answering:
                raise DaemonUnreachable(
                    f"the daemon for {self.data_dir} stopped answering {what} "
                    f"(no data for {self.timeout_s:g} s)"
                ) from None
            raise DaemonUnreachable(
                f"the daemon for {self.data_dir} did not answer {what} within {self.timeout_s:g} s"
            ) from None
        detail = str(exc) or type(exc).__name__
        raise DaemonUnreachable(
            f"lost the connection to the daemon for {self.data_dir}: {detail}"
        ) from None

    def _raise_for_status(self, resp: _Response) -> None:
        if resp.status < 400:
            return
        data = b""
        for chunk in resp.chunks():
            data += chunk
            if len(data) > MAX_LINE_BYTES:
                break
        code, message, fields = "http_error", f"HTTP {resp.status} {resp.reason}", None
        try:
            err = json.loads(data)["error"]
            code, message, fields = str(err["code"]), str(err["message"]), err.get("fields")
        except (ValueError, KeyError, TypeError):
            pass
        if resp.status == 401:
            raise AuthError(
                f"the daemon refused the API token in {self.data_dir}/api.token ({message}); "
                "if the node was re-initialised, restart its daemon"
            )
        raise ApiHttpError(resp.status, code, message, fields)


class _Response:
    """One response being read; a failed read calls ``lost`` (which raises
    :class:`DaemonUnreachable`), so callers see only the client's errors."""

    def __init__(
        self, raw: http.client.HTTPResponse, lost: Callable[[BaseException], NoReturn]
    ) -> None:
        self._raw = raw
        self._lost = lost
        self.status = raw.status
        self.reason = raw.reason

    def read(self) -> bytes:
        """The whole body."""
        import http.client

        try:
            return self._raw.read()
        except (OSError, http.client.HTTPException) as exc:
            self._lost(exc)

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives, at most ``COPY_CHUNK_BYTES`` at a time."""
        import http.client

        while True:
            try:
                chunk = self._raw.read1(COPY_CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                self._lost(exc)
            if not chunk:
                return
            yield chunk


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(COPY_CHUNK_BYTES):
        yield chunk


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _decode_json(data: bytes, path: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ApiClientError(
            f"the daemon answered {path} with something that is not JSON"
        ) from None
