"""The few HTTP/1.1 client requests ``mesh`` makes, over a plain socket.

Rules:
- One request per connection (``Connection: close``), to the daemon's control
  API on loopback only: no TLS, no proxies, no redirects, no keep-alive.
- The response is read as the server (``meshd/api/server.py``) sends it: a
  body with ``Content-Length``, a chunked body (streams such as ``logs -f``),
  or a body that ends when the connection closes.
- Bounded: a status line or header line of at most ``MAX_HEADER_LINE_BYTES``,
  at most ``MAX_HEADERS`` headers, chunk-size lines likewise; anything else
  malformed is :class:`HttpProtocolError`. Every failure is an ``OSError``
  (socket errors, timeouts and protocol errors alike), so a caller maps one
  exception family to "the daemon did not answer properly".

Why not ``http.client``: it imports ``email`` and ``ssl`` (about 15 ms of
every ``mesh`` command's start on a 2-core machine, half of what `mesh
status` spends beyond Python's own start-up; tests/bench/bench_cli.py).
"""

from __future__ import annotations

import socket
from typing import IO

MAX_HEADER_LINE_BYTES = 64 * 1024
"""Longest status, header or chunk-size line accepted."""
MAX_HEADERS = 100
"""Most header lines accepted in one response."""
SEND_CHUNK_BYTES = 256 * 1024
"""Bytes read from a request body file per send."""


class HttpProtocolError(OSError):
    """The peer's response is not well-formed HTTP/1.1."""


class Response:
    """One response: ``status``, ``reason``, ``headers`` (lower-case names),
    and its body through :meth:`read` / :meth:`readline` (de-chunked)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rfile = sock.makefile("rb")
        self.status, self.reason = self._status_line()
        self.headers = self._headers()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._left: int | None = None
        if not self._chunked and length is not None:
            if not length.strip().isdigit():
                raise HttpProtocolError(f"bad Content-Length {length!r}")
            self._left = int(length)
        self._chunk_left = 0
        self._done = False
        self._buf = bytearray()

    # ------------------------------------------------------------ head

    def _line(self) -> bytes:
        line = self._rfile.readline(MAX_HEADER_LINE_BYTES + 1)
        if len(line) > MAX_HEADER_LINE_BYTES:
            raise HttpProtocolError("response line too long")
        if not line.endswith(b"\n"):
            raise HttpProtocolError("connection closed in the middle of the response head")
        return line.rstrip(b"\r\n")

    def _status_line(self) -> tuple[int, str]:
        parts = self._line().decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpProtocolError(f"bad status line {' '.join(parts)[:80]!r}")
        return int(parts[1]), parts[2] if len(parts) > 2 else ""

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if not line:
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise HttpProtocolError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        raise HttpProtocolError(f"more than {MAX_HEADERS} headers")

    # ------------------------------------------------------------ body

    def _piece(self, n: int) -> bytes:
        """Up to ``n`` more body bytes (b"" at the end of the body)."""
        if self._done:
            return b""
        if self._chunked:
            if self._chunk_left == 0:
                size = self._line().split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(size, 16)
                except ValueError:
                    raise HttpProtocolError(f"bad chunk size {size[:20]!r}") from None
                if self._chunk_left == 0:
                    while self._line():  # trailers, then the blank line
                        pass
                    self._done = True
                    return b""
            data = self._rfile.read(min(n, self._chunk_left))
            if not data:
                raise HttpProtocolError("connection closed in the middle of a chunk")
            self._chunk_left -= len(data)
            if self._chunk_left == 0 and self._rfile.read(2) != b"\r\n":
                raise HttpProtocolError("chunk not followed by CRLF")
            return data
        if self._left is not None:
            if self._left == 0:
                self._done = True
                return b""
            data = self._rfile.read1(min(n, self._left))
            if not data:
                raise HttpProtocolError("connection closed before the whole body arrived")
            self._left -= len(data)
            return data
        data = self._rfile.read1(n)
        self._done = not data
        return data

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` body bytes (all that is left when ``n < 0``); b"" at the end."""
        want = SEND_CHUNK_BYTES if n < 0 else n
        while (n < 0 or len(self._buf) < n) and (piece := self._piece(want)):
            self._buf += piece
        size = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def readline(self, limit: int) -> bytes:
        """The next body line with its ``\\n``, at most ``limit`` bytes; b"" at the end."""
        while b"\n" not in self._buf and len(self._buf) < limit:
            piece = self._piece(SEND_CHUNK_BYTES)
            if not piece:
                break
            self._buf += piece
        end = self._buf.find(b"\n")
        size = min(limit, len(self._buf) if end < 0 else end + 1)
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def close(self) -> None:
        self._rfile.close()
        self.sock.close()


def request(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | IO[bytes] | None,
    timeout_s: float,
) -> Response:
    """Send one request and read the response's head.

    A daemon may answer (e.g. 413) and close before it has taken the whole
    body: a send that fails that way still reads the answer."""
    # The host as bytes: a str would be IDNA-encoded (the codec's import, ~1 ms).
    family, kind, proto, _, addr = socket.getaddrinfo(
        host.encode("ascii"), port, type=socket.SOCK_STREAM
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.settimeout(timeout_s)
        sock.connect(addr)
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None and "Content-Length" not in headers:
            raise ValueError("a request body needs a Content-Length header")
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if isinstance(body, bytes):
                sock.sendall(body)
            elif body is not None:
                while chunk := body.read(SEND_CHUNK_BYTES):
                    sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # read the answer the daemon sent before closing
        return Response(sock)
    except BaseException:
        sock.close()
        raise
