"""Wire framing of meshd's request/response streams (no libp2p imports).

Theory of operation:
    One stream carries exactly one request and one response::

        request  = uvarint(len) body                  (client -> server)
        response = status:u8 uvarint(len) body        (server -> client)

    ``uvarint`` is the unsigned LEB128 varint of multiformats (at most 9
    bytes here, values < 2**63). The client half-closes its side after the
    request; the server closes after the response.

    A persistent channel (:mod:`meshd.net.channels`) carries many of them on
    one stream, each labelled with a request id the answer repeats::

        call   = uvarint(id) uvarint(len) body                (opener -> server)
        answer = uvarint(id) status:u8 uvarint(len) body      (server -> opener) ``status`` is one of
    :class:`Status`; on anything but ``OK`` the body is a short UTF-8 text.

Rules:
- Lengths are checked against the caller's bound *before* a body byte is
  read, so a peer cannot make us buffer more than the bound.
- Every malformed input raises :class:`FramingError` (or its subclass
  :class:`FrameTooLarge`); nothing else escapes, whatever the bytes are.
- The reader needs only ``async read(n) -> bytes`` that returns 1..n bytes
  and raises on end of stream, so it is tested against a fake stream.
"""

from __future__ import annotations

import enum
from typing import Protocol

from meshd.net.params import NetParams

MAX_UVARINT_BYTES = 9
"""Longest uvarint accepted: a rule of the format (multiformats caps unsigned
varints at 9 bytes), not a tunable bound."""


class Status(enum.IntEnum):
    """First byte of a response."""

    OK = 0
    ERROR = 1  # the handler raised, or the handler's response was too large
    TOO_LARGE = 2  # the request exceeded the server's max_request_bytes
    BUSY = 3  # too many concurrent requests from this peer
    BAD_REQUEST = 4  # the request broke the framing
    REFUSED = 5  # the server refuses this peer (blocked / low score)


class FramingError(Exception):
    """The bytes on the stream do not follow the framing."""


class StreamEnded(FramingError):
    """The stream ended (closed, reset, connection lost) before a whole frame
    arrived: truncation, not malformed bytes."""


class FrameTooLarge(FramingError):
    """A length prefix announces more bytes than the bound allows."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class ReadableStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128 encoding of ``value`` (0 <= value < 2**63)."""
    if not 0 <= value < 1 << 63:
        raise ValueError(f"uvarint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_request(body: bytes) -> bytes:
    return encode_uvarint(len(body)) + body


def encode_response(status: Status, body: bytes) -> bytes:
    return bytes([status]) + encode_uvarint(len(body)) + body


def encode_call(request_id: int, body: bytes) -> bytes:
    """One call on a persistent channel."""
    return encode_uvarint(request_id) + encode_request(body)


def encode_answer(request_id: int, status: Status, body: bytes) -> bytes:
    """The answer to call ``request_id`` on a persistent channel."""
    return encode_uvarint(request_id) + encode_response(status, body)


class FrameReader:
    """Buffered reads of exact byte counts from a stream.

    Any exception the stream raises on read (end of stream, reset) is turned
    into :class:`FramingError` ("truncated"); cancellation passes through.
    """

    def __init__(
        self,
        stream: ReadableStream,
        *,
        read_chunk_bytes: int = NetParams.stream_read_chunk_bytes,
    ) -> None:
        self._stream = stream
        self._read_chunk_bytes = read_chunk_bytes  # most bytes asked of the stream per read
        self._buf = bytearray()

    async def _fill(self) -> None:
        # Ask for a whole chunk, not just the bytes wanted now: a stream read
        # returns what has arrived, and the reader owns its stream, so a
        # frame's uvarints, status and body come in one read instead of one
        # library read (locks, yamux bookkeeping) per uvarint byte.
        try:
            chunk = await self._stream.read(self._read_chunk_bytes)
        except Exception as exc:  # EOF / reset / closed: all mean "truncated"
            raise StreamEnded(f"stream ended early ({type(exc).__name__})") from exc
        if not chunk:
            raise StreamEnded("stream ended early")
        self._buf += chunk

    async def read_exactly(self, n: int) -> bytes:
        if n == 0:
            return b""
        while len(self._buf) < n:
            await self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_uvarint_or_end(self) -> int | None:
        """A uvarint, or None if the stream ends cleanly before its first byte
        (a channel's peer closed it between frames)."""
        if not self._buf:
            try:
                await self._fill()
            except StreamEnded:
                return None
        return await self.read_uvarint()

    async def read_uvarint(self) -> int:
        value = 0
        for i in range(MAX_UVARINT_BYTES):
            (byte,) = await self.read_exactly(1)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise FramingError("non-minimal uvarint")
                return value
        raise FramingError(f"uvarint longer than {MAX_UVARINT_BYTES} bytes")

    async def read_frame(self, limit: int) -> bytes:
        """One ``uvarint(len) body`` frame; FrameTooLarge if len > limit."""
        length = await self.read_uvarint()
        if length > limit:
            raise FrameTooLarge(length, limit)
        return await self.read_exactly(length)

    async def read_response(self, limit: int) -> tuple[Status, bytes]:
        """One response. Error texts are bounded by ``limit`` too."""
        (raw_status,) = await self.read_exactly(1)
        try:
            status = Status(raw_status)
        except ValueError:
            raise FramingError(f"unknown response status {raw_status}") from None
        return status, await self.read_frame(limit)
