"""Request/response streams: serve protocols, send requests, bound both.

Theory of operation:
    One stream carries one request and one response, framed as in
    :mod:`meshd.net.framing`. ``handle(protocol, handler)`` serves a
    protocol: each inbound stream is read (``max_request_bytes``), handed to
    the handler and answered within ``handler_timeout_s``; a peer with more
    than ``max_inflight_requests_per_peer`` streams open gets BUSY, a refused
    peer (blocked, low score) REFUSED. ``request`` opens a stream (dialling if
    needed), writes the request and reads the response concurrently, so a
    server that refuses an oversized request is heard at once; outbound
    requests to one peer queue behind the same per-peer bound.

    py-libp2p 0.8.1's yamux writes frames straight to the Noise connection
    without shielding: a write cancelled mid-frame corrupts the connection.
    Writes therefore run shielded, and a deadline resets the stream instead,
    which ends the write at a frame boundary.

Rules:
- Nothing a peer sends raises out of here: framing errors and handler
  exceptions become error responses and counters.
- The caller sees only :class:`~meshd.net.errors.NetError` subclasses.
- Peer-exchange traffic (:data:`~meshd.net.px.PX_PROTOCOL`) is served and
  sent here too but not counted: the counters describe the application's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import cast

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.network.exceptions import SwarmException
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID

from meshd.net.context import HostContext, parse_peer_id
from meshd.net.errors import (
    MessageTooLarge,
    NetError,
    PeerUnreachable,
    ProtocolNotServed,
    RemoteError,
    RequestTimeout,
    StreamBroken,
)
from meshd.net.framing import (
    FrameReader,
    FrameTooLarge,
    FramingError,
    Status,
    encode_request,
    encode_response,
)
from meshd.net.px import PX_PROTOCOL
from meshd.net.standing import Standing

log = logging.getLogger("meshd.net")

INTERNAL_PROTOCOLS = frozenset({PX_PROTOCOL, "/meshd/autonat/1"})
"""meshd.net's own protocols (peer exchange, the dial-back check): reserved,
and not counted in the application's request counters."""

RequestHandler = Callable[[str, bytes], Awaitable[bytes]]


async def close_stream(stream: INetStream, *, reset: bool) -> None:
    """Close (FIN) or reset (RST) a stream; shielded, never raises. Not
    time-bounded on purpose: a cancelled yamux write breaks the connection."""
    with trio.CancelScope(shield=True):
        try:
            await (stream.reset() if reset else stream.close())
        except Exception as exc:
            log.debug("closing stream failed: %r", exc)


async def write_whole_frames(
    stream: INetStream, data: bytes, deadline: float, *, half_close: bool = True
) -> bool:
    """Write ``data`` and (unless ``half_close`` is False) half-close; True if
    all of it went out.

    The write runs shielded (see the module docstring); at ``deadline`` or on
    cancellation the stream is reset instead, which makes yamux stop at the
    next frame boundary."""
    done = trio.Event()
    ok = False

    async def write() -> None:
        nonlocal ok
        with trio.CancelScope(shield=True):
            try:
                await stream.write(data)
                if half_close:
                    # 0.8.1's INetStream lacks close_write; every stream it hands out has it
                    await cast(NetStream, stream).close_write()
                ok = True
            except Exception as exc:
                log.debug("stream write stopped: %r", exc)
            finally:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        try:
            with trio.move_on_at(deadline):
                await done.wait()
        finally:
            if not done.is_set():
                await close_stream(stream, reset=True)
    return ok


class RequestResponse:
    """The stream protocols of one host, served and requested."""

    def __init__(self, ctx: HostContext, standing: Standing) -> None:
        self._ctx = ctx
        self._standing = standing
        self._handlers: dict[str, RequestHandler] = {}
        self._inflight_in: dict[str, int] = {}  # peer -> inbound streams being served
        self._out_slots: dict[str, trio.Semaphore] = {}  # peer -> outbound request slots
        self._inflight_out = 0  # outbound requests started and not yet finished

    # ----------------------------------------------------------------- serving

    def handle(self, protocol: str, handler: RequestHandler, *, internal: bool = False) -> None:
        """See :meth:`MeshHost.handle`; ``internal`` allows the reserved PX protocol."""
        if not protocol.startswith("/"):
            raise ValueError(f"protocol ids start with '/': {protocol!r}")
        if protocol in INTERNAL_PROTOCOLS and not internal:
            raise ValueError(f"{protocol} is reserved for meshd.net")
        self._handlers[protocol] = handler

        async def serve(stream: INetStream) -> None:
            await self._serve_stream(protocol, stream)

        self._ctx.libp2p.set_stream_handler(TProtocol(protocol), serve)

    async def _serve_stream(self, protocol: str, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        counted = protocol not in INTERNAL_PROTOCOLS  # counters: the application's traffic
        if counted:
            self._ctx.count("requests_in")
        self._inflight_in[peer] = self._inflight_in.get(peer, 0) + 1
        status, body = Status.ERROR, b"handler timed out"
        budget_s = self._ctx.params.handler_timeout_s
        try:
            with trio.move_on_after(budget_s):
                status, body = await self._answer(protocol, peer, stream)
            response = encode_response(status, body)
            if not await write_whole_frames(stream, response, trio.current_time() + budget_s):
                status = Status.ERROR
        except Exception as exc:
            log.debug("serving %s to %s failed: %r", protocol, peer, exc)
            status = Status.ERROR
        finally:
            self._inflight_in[peer] -= 1
            if not self._inflight_in[peer]:
                del self._inflight_in[peer]
            if status != Status.OK and counted:
                self._ctx.count("requests_in_failed")
            await close_stream(stream, reset=False)

    async def _answer(self, protocol: str, peer: str, stream: INetStream) -> tuple[Status, bytes]:
        p = self._ctx.params
        if self._standing.refuses(peer):
            self._ctx.count("refused_peers")
            return Status.REFUSED, b"refused"
        if self._inflight_in[peer] > p.max_inflight_requests_per_peer:
            return Status.BUSY, f"more than {p.max_inflight_requests_per_peer} requests".encode()
        reader = FrameReader(stream, read_chunk_bytes=p.stream_read_chunk_bytes)
        try:
            request = await reader.read_frame(p.max_request_bytes)
        except FrameTooLarge as exc:
            return Status.TOO_LARGE, str(exc).encode()
        except FramingError as exc:
            return Status.BAD_REQUEST, str(exc).encode()
        return await self.run_handler(self._handlers[protocol], peer, request)

    async def run_handler(
        self, handler: RequestHandler, peer: str, request: bytes
    ) -> tuple[Status, bytes]:
        """``handler``'s answer to ``request`` as a status and body: ERROR with
        a bounded text if it raised or answered something unsendable."""
        p = self._ctx.params
        try:
            response = await handler(peer, request)
        except Exception as exc:
            log.debug("handler raised for %s: %r", peer, exc)
            text = f"{type(exc).__name__}: {exc}".encode(errors="replace")
            return Status.ERROR, text[: p.max_error_bytes]
        if not isinstance(response, bytes | bytearray):
            return Status.ERROR, b"handler returned a non-bytes response"
        if len(response) > p.max_response_bytes:
            return Status.ERROR, f"response of {len(response)} bytes is over the limit".encode()
        return Status.OK, bytes(response)

    # -------------------------------------------------------------- requesting

    async def request(
        self, peer_id: str, protocol: str, data: bytes, *, timeout_s: float | None = None
    ) -> bytes:
        """See :meth:`MeshHost.request`."""
        p = self._ctx.params
        pid = self.check_outbound(peer_id, data)
        timeout = p.request_timeout_s if timeout_s is None else timeout_s
        counted = protocol not in INTERNAL_PROTOCOLS  # counters: the application's traffic
        if counted:
            self._ctx.count("requests_out")
        self._inflight_out += 1
        try:
            with trio.move_on_after(timeout):
                answer = await self._request_slot(pid, protocol, data)
                if counted:  # the application's message got through
                    self._ctx.note_reached(peer_id)
                return answer
            raise RequestTimeout(
                f"{protocol} request to {peer_id} got no answer within {timeout:g} s"
            )
        except NetError:
            if counted:
                self._ctx.count("requests_out_failed")
            raise
        finally:
            self._inflight_out -= 1

    def check_outbound(self, peer_id: str, data: bytes) -> ID:
        """``peer_id`` as a libp2p ID once a request to it may be sent: the
        host runs, the peer is not us nor blocked, ``data`` is within
        ``max_request_bytes`` (else ValueError, NotRunning, PeerUnreachable or
        MessageTooLarge)."""
        p = self._ctx.params
        self._ctx.require_running()
        pid = parse_peer_id(peer_id)
        if pid == self._ctx.pid:
            raise ValueError("cannot send a request to ourselves")
        if len(data) > p.max_request_bytes:
            raise MessageTooLarge(
                f"request of {len(data)} bytes exceeds max_request_bytes={p.max_request_bytes}"
            )
        if self._standing.is_blocked(peer_id):
            raise PeerUnreachable(f"peer {peer_id} is blocked")
        return pid

    async def _request_slot(self, pid: ID, protocol: str, data: bytes) -> bytes:
        key = str(pid)
        most = self._ctx.params.max_inflight_requests_per_peer
        slots = self._out_slots.setdefault(key, trio.Semaphore(most))
        try:
            async with slots:
                return await self._request_once(pid, protocol, data)
        finally:
            if slots.value == most and not slots.statistics().tasks_waiting:
                self._out_slots.pop(key, None)

    async def _request_once(self, pid: ID, protocol: str, data: bytes) -> bytes:
        p = self._ctx.params
        stream = await self.open_stream(pid, protocol)
        outcome: tuple[Status, bytes] | FramingError
        try:
            # Read while writing: a server refusing an oversized request answers
            # before it has read it. Resetting the stream (finally) ends a write
            # still in progress at a frame boundary; the writer reports nothing,
            # the reader says what happened.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_whole_frames, stream, encode_request(data), math.inf)
                reader = FrameReader(stream, read_chunk_bytes=p.stream_read_chunk_bytes)
                try:
                    outcome = await reader.read_response(p.max_response_bytes)
                except FramingError as exc:
                    outcome = exc
                finally:
                    await close_stream(stream, reset=True)
        finally:
            await close_stream(stream, reset=True)
        return self.interpret(pid, protocol, outcome)

    def interpret(
        self, pid: ID, protocol: str, outcome: tuple[Status, bytes] | FramingError
    ) -> bytes:
        """The body of an OK response; the NetError any other outcome means."""
        peer = str(pid)
        if isinstance(outcome, FrameTooLarge):
            raise MessageTooLarge(f"response from {peer} on {protocol}: {outcome}")
        if isinstance(outcome, FramingError):
            if not self._ctx.libp2p.get_network().get_connections(pid):
                raise PeerUnreachable(f"connection to {peer} lost during {protocol} request")
            raise StreamBroken(f"{peer} broke the {protocol} stream: {outcome}")
        status, body = outcome
        text = body[: self._ctx.params.max_error_bytes].decode(errors="replace")
        if status == Status.OK:
            return body
        if status == Status.TOO_LARGE:
            raise MessageTooLarge(f"{peer} refused the {protocol} request: {text}")
        raise RemoteError(f"{peer} answered {protocol} with {status.name}: {text}")

    async def open_stream(self, pid: ID, protocol: str) -> INetStream:
        """A new stream to ``pid`` speaking ``protocol`` (dials if needed).
        ProtocolNotServed if the connected peer does not serve it,
        PeerUnreachable if it cannot be reached (and it is marked so)."""
        host = self._ctx.libp2p
        network = host.get_network()
        had_connection = bool(network.get_connections(pid))
        try:
            try:
                return await host.new_stream(pid, [TProtocol(protocol)])
            except SwarmException:
                if not had_connection:
                    raise
                # The connection we held had died unnoticed: forget it, dial once.
                await network.close_peer(pid)
                return await host.new_stream(pid, [TProtocol(protocol)])
        except StreamFailure as exc:
            if network.get_connections(pid):
                raise ProtocolNotServed(f"{pid} does not serve {protocol}") from exc
            self._ctx.note_unreachable(str(pid), f"{type(exc).__name__}: {exc}")
            raise PeerUnreachable(f"cannot reach {pid}: {exc}") from exc
        except Exception as exc:  # dial failures, errors of a dying connection
            self._ctx.note_unreachable(str(pid), f"{type(exc).__name__}: {exc}")
            raise PeerUnreachable(f"cannot reach {pid}: {exc}") from exc

    # -------------------------------------------------------------- queue stats

    def queue_stats(self) -> dict[str, int]:
        """Request/response's part of :meth:`MeshHost.queue_stats`."""
        return {
            "requests_in_serving": sum(self._inflight_in.values()),
            "requests_out_inflight": self._inflight_out,
        }
