"""Persistent channels: many calls on one long-lived stream per peer.

Theory of operation:
    A request on its own stream (:mod:`meshd.net.reqresp`) pays a yamux
    stream open, a multistream negotiation and a close every time (12.7 ms on
    a warm loopback connection, against 4.3 ms for a gossip hop). A channel
    opens one stream to a peer and keeps it: calls go out on it back to back,
    each labelled with a request id, and the server answers each on the same
    stream with the id repeated (framing in :mod:`meshd.net.framing`). A
    channel carries calls one way only: a peer calling us opens its own.

    * **Flow control.** At most ``channel_max_inflight`` calls are
      unanswered on a channel; a further caller waits for a slot before it
      writes (the caller's own deadline bounds the wait), so nothing is
      buffered beyond the bound. A server answers BUSY to a peer's calls
      beyond the same bound (counted ``calls_in_busy``).
    * **Failure.** A stream that resets or ends, or an answer that breaks the
      framing or names an id never sent, ends the channel: every call waiting
      on it fails (PeerUnreachable if the connection went, else RemoteError)
      and the next call opens a new one; a call whose write failed (it never
      reached the peer whole) is written once more, on a new channel. A call
      whose caller gave up leaves its id behind; its late answer is dropped.
    * **Idle close.** The opener closes a channel that carried no call for
      ``channel_idle_s``; a server closes a channel stream no call arrived on
      for twice that.
    * **Fallback.** A peer that does not serve the channel protocol (the
      multistream negotiation fails) gets calls as per-request streams on the
      fallback protocol for ``channel_fallback_s``; then the channel is tried
      again (counted ``channel_fallbacks``).

    Writes are shielded and serialized per stream (one lock): py-libp2p
    0.8.1's yamux corrupts the connection when a write is cancelled
    mid-frame, and two writers would interleave frames. A write that misses
    its deadline resets the stream instead (see :mod:`meshd.net.reqresp`).

Rules:
- Nothing a peer sends raises out of here: a bad frame resets that stream
  and is counted (``channel_bad_frames``); handler exceptions become ERROR
  answers.
- The caller sees only :class:`~meshd.net.errors.NetError` subclasses.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from meshd.net.context import HostContext
from meshd.net.errors import NetError, ProtocolNotServed, RequestTimeout
from meshd.net.framing import (
    FrameReader,
    FrameTooLarge,
    FramingError,
    Status,
    StreamEnded,
    encode_answer,
    encode_call,
)
from meshd.net.reqresp import RequestHandler, RequestResponse, close_stream, write_whole_frames
from meshd.net.standing import Standing

log = logging.getLogger("meshd.net")


@dataclass
class _Call:
    """One call waiting for its answer."""

    done: trio.Event = field(default_factory=trio.Event)
    outcome: tuple[Status, bytes] | FramingError | None = None


@dataclass
class _Channel:
    """Our side of one channel: the stream we opened to a peer."""

    stream: INetStream
    slots: trio.Semaphore
    write_lock: trio.Lock = field(default_factory=trio.Lock)
    pending: dict[int, _Call] = field(default_factory=dict)
    next_id: int = 0
    last_used: float = 0.0
    closed: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    """The channel's reader: cancelled when the channel ends (py-libp2p 0.8.1
    does not wake a read on a stream reset locally)."""

    def busy(self, most: int) -> bool:
        return bool(self.pending) or self.slots.value < most


class Channels:
    """The persistent channels of one host, served and called."""

    def __init__(self, ctx: HostContext, standing: Standing, reqresp: RequestResponse) -> None:
        self._ctx = ctx
        self._standing = standing
        self._reqresp = reqresp
        self._out: dict[str, _Channel] = {}  # peer -> our open channel to it
        self._opening: dict[str, trio.Lock] = {}  # peer -> held while a channel to it opens
        self._fallback: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Peers that do not serve the channel (-> trio time to try it again)."""
        self._inflight_in: dict[str, int] = {}  # peer -> its calls being handled

    # ----------------------------------------------------------------- serving

    def handle(self, protocol: str, handler: RequestHandler) -> None:
        """See :meth:`MeshHost.handle_channel`."""
        if not protocol.startswith("/"):
            raise ValueError(f"protocol ids start with '/': {protocol!r}")

        async def serve(stream: INetStream) -> None:
            await self._serve_stream(handler, stream)

        self._ctx.libp2p.set_stream_handler(TProtocol(protocol), serve)

    async def _serve_stream(self, handler: RequestHandler, stream: INetStream) -> None:
        p = self._ctx.params
        peer = str(stream.muxed_conn.peer_id)
        self._ctx.count("channels_in")
        if self._standing.refuses(peer):
            self._ctx.count("refused_peers")
            await close_stream(stream, reset=True)
            return
        reader = FrameReader(stream, read_chunk_bytes=p.stream_read_chunk_bytes)
        lock = trio.Lock()
        reset = True
        try:
            async with trio.open_nursery() as nursery:
                try:
                    reset = await self._serve_calls(peer, handler, stream, reader, lock, nursery)
                except StreamEnded:  # reset or gone mid-frame: nobody left to answer
                    nursery.cancel_scope.cancel()
                except FramingError as exc:
                    self._bad_frame(peer, exc)
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # a dying connection's errors: the stream is gone
            log.debug("serving the channel of %s failed: %r", peer, exc)
        finally:
            await close_stream(stream, reset=reset)

    async def _serve_calls(
        self,
        peer: str,
        handler: RequestHandler,
        stream: INetStream,
        reader: FrameReader,
        lock: trio.Lock,
        nursery: trio.Nursery,
    ) -> bool:
        """Read calls until the peer closes (False: close cleanly once the
        answers are out) or a call is over the size bound or the channel idle
        (True: reset). FramingError on malformed input."""
        p = self._ctx.params
        while True:
            with trio.move_on_after(2 * p.channel_idle_s):
                request_id = await reader.read_uvarint_or_end()
                if request_id is None:
                    return False
                length = await reader.read_uvarint()
                if length > p.max_request_bytes:
                    too_large = self._bad_frame(peer, FrameTooLarge(length, p.max_request_bytes))
                    text = str(too_large).encode()
                    await self._write(
                        stream, lock, encode_answer(request_id, Status.TOO_LARGE, text)
                    )
                    return True  # the body was not read: the stream cannot go on
                body = await reader.read_exactly(length)
                self._ctx.count("calls_in")
                if self._inflight_in.get(peer, 0) >= p.channel_max_inflight:
                    self._ctx.count("calls_in_busy")
                    text = f"more than {p.channel_max_inflight} calls in flight".encode()
                    nursery.start_soon(
                        self._write, stream, lock, encode_answer(request_id, Status.BUSY, text)
                    )
                    continue
                self._inflight_in[peer] = self._inflight_in.get(peer, 0) + 1
                nursery.start_soon(self._answer, peer, handler, stream, lock, request_id, body)
                continue
            log.debug("channel from %s idle: closed", peer)
            return True

    async def _answer(
        self,
        peer: str,
        handler: RequestHandler,
        stream: INetStream,
        lock: trio.Lock,
        request_id: int,
        body: bytes,
    ) -> None:
        p = self._ctx.params
        status, answer = Status.ERROR, b"handler timed out"
        try:
            with trio.move_on_after(p.handler_timeout_s):
                status, answer = await self._reqresp.run_handler(handler, peer, body)
        finally:
            self._inflight_in[peer] -= 1
            if not self._inflight_in[peer]:
                del self._inflight_in[peer]
        await self._write(stream, lock, encode_answer(request_id, status, answer))

    async def _write(self, stream: INetStream, lock: trio.Lock, data: bytes) -> bool:
        """Write whole frames under the stream's lock (shielded; a write that
        misses ``handler_timeout_s`` resets the stream)."""
        deadline = trio.current_time() + self._ctx.params.handler_timeout_s
        async with lock:
            return await write_whole_frames(stream, data, deadline, half_close=False)

    # ----------------------------------------------------------------- calling

    async def call(
        self,
        peer_id: str,
        protocol: str,
        data: bytes,
        *,
        fallback: str,
        timeout_s: float | None = None,
    ) -> bytes:
        """See :meth:`MeshHost.call`."""
        p = self._ctx.params
        pid = self._reqresp.check_outbound(peer_id, data)
        timeout = p.request_timeout_s if timeout_s is None else timeout_s
        self._ctx.count("calls_out")
        try:
            with trio.move_on_after(timeout):
                return await self._call(pid, protocol, data, fallback, timeout)
            raise RequestTimeout(f"{protocol} call to {peer_id} got no answer within {timeout:g} s")
        except NetError:
            self._ctx.count("calls_out_failed")
            raise

    async def _call(
        self, pid: ID, protocol: str, data: bytes, fallback: str, timeout: float
    ) -> bytes:
        key = str(pid)
        rewrites = 1  # a call that could not be written goes once more, on a new channel
        while True:
            ch = None if self._falls_back(key) else await self._channel(pid, protocol)
            if ch is None:
                self._ctx.count("channel_fallbacks")
                return await self._reqresp.request(key, fallback, data, timeout_s=timeout)
            async with ch.slots:
                if ch.closed:  # ended while we waited for a slot: open another
                    continue
                request_id = ch.next_id
                ch.next_id += 1
                call = _Call()
                ch.pending[request_id] = call
                try:
                    async with ch.write_lock:
                        sent = await write_whole_frames(
                            ch.stream,
                            encode_call(request_id, data),
                            trio.current_time() + timeout,
                            half_close=False,
                        )
                    if not sent:
                        self._end(key, ch, StreamEnded("the call could not be written"))
                        if rewrites:
                            rewrites -= 1
                            continue
                    await call.done.wait()
                finally:
                    ch.pending.pop(request_id, None)
                    ch.last_used = trio.current_time()
            assert call.outcome is not None
            answer = self._reqresp.interpret(pid, protocol, call.outcome)
            self._ctx.note_reached(key)
            return answer

    def _falls_back(self, key: str) -> bool:
        until = self._fallback.get(key)
        if until is None:
            return False
        if trio.current_time() < until:
            return True
        del self._fallback[key]
        return False

    async def _channel(self, pid: ID, protocol: str) -> _Channel | None:
        """Our open channel to ``pid``, opened if there is none; None if the
        peer does not serve ``protocol`` (it is then called per request for
        ``channel_fallback_s``)."""
        key = str(pid)
        ch = self._out.get(key)
        if ch is not None:
            return ch
        lock = self._opening.setdefault(key, trio.Lock())
        try:
            async with lock:
                ch = self._out.get(key)
                if ch is not None:
                    return ch
                try:
                    stream = await self._reqresp.open_stream(pid, protocol)
                except ProtocolNotServed:
                    log.debug("%s does not serve %s: calls go per request", key, protocol)
                    self._fallback[key] = trio.current_time() + self._ctx.params.channel_fallback_s
                    while len(self._fallback) > self._ctx.params.known_peers_max:
                        self._fallback.popitem(last=False)
                    return None
                p = self._ctx.params
                ch = _Channel(stream, trio.Semaphore(p.channel_max_inflight))
                ch.last_used = trio.current_time()
                self._out[key] = ch
                self._ctx.count("channels_out")
                self._ctx.spawn(self._run_channel, key, ch)
                return ch
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._opening.pop(key, None)

    async def _run_channel(self, key: str, ch: _Channel) -> None:
        """Read the answers of one channel until it fails or is idle; then
        reset its stream."""
        try:
            with ch.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._close_when_idle, key, ch)
                    self._end(key, ch, await self._read_answers(key, ch))
        finally:
            self._end(key, ch, StreamEnded("the channel was closed"))
            await close_stream(ch.stream, reset=True)

    async def _read_answers(self, key: str, ch: _Channel) -> FramingError:
        """Hand each answer to its call until the stream fails; what failed."""
        p = self._ctx.params
        reader = FrameReader(ch.stream, read_chunk_bytes=p.stream_read_chunk_bytes)
        while True:
            try:
                request_id = await reader.read_uvarint_or_end()
                if request_id is None:
                    return StreamEnded("the server closed the channel")
                outcome = await reader.read_response(p.max_response_bytes)
            except StreamEnded as exc:  # reset or gone: not the peer's malformed bytes
                return exc
            except FramingError as exc:
                return self._bad_frame(key, exc)
            if request_id >= ch.next_id:
                return self._bad_frame(key, FramingError(f"answer to call {request_id} never made"))
            call = ch.pending.pop(request_id, None)
            if call is not None:  # else its caller gave up: a late answer
                call.outcome = outcome
                call.done.set()

    def _bad_frame(self, peer: str, exc: FramingError) -> FramingError:
        self._ctx.count("channel_bad_frames")
        log.debug("channel with %s broke the framing: %s", peer, exc)
        return exc

    async def _close_when_idle(self, key: str, ch: _Channel) -> None:
        """End the channel once it carried no call for ``channel_idle_s``."""
        idle = self._ctx.params.channel_idle_s
        most = self._ctx.params.channel_max_inflight
        while True:
            await trio.sleep_until(ch.last_used + idle)
            if ch.busy(most):
                ch.last_used = trio.current_time()
            elif trio.current_time() >= ch.last_used + idle:
                log.debug("channel to %s idle: closed", key)
                self._end(key, ch, StreamEnded("closed idle"))
                return

    def _end(self, key: str, ch: _Channel, error: FramingError) -> None:
        """Take ``ch`` out of use and stop its reader (its stream is then
        reset); every call waiting on it fails with ``error``."""
        ch.closed = True
        ch.scope.cancel()
        if self._out.get(key) is ch:
            del self._out[key]
        for call in ch.pending.values():
            if call.outcome is None:
                call.outcome = error
                call.done.set()
        ch.pending.clear()

    # -------------------------------------------------------------- queue stats

    def queue_stats(self) -> dict[str, int]:
        """Channels' part of :meth:`MeshHost.queue_stats`."""
        return {
            "channels_open": len(self._out),
            "calls_out_inflight": sum(len(ch.pending) for ch in self._out.values()),
            "calls_in_serving": sum(self._inflight_in.values()),
        }
