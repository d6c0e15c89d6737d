"""The live web dashboard: its page, one snapshot route and a live stream of snapshots.

Theory of operation
-------------------
The page (``static/dashboard/``: semantic HTML, one hand-written JS module,
one stylesheet, shipped as package data, nothing from a CDN) is served on
``GET /dashboard`` without the token: it is fixed bytes that carry none of
the node's data. Everything it shows comes from routes that need the token,
which the page reads from its URL's fragment (``#token=...``: a fragment
never reaches the server or its log), keeps in ``sessionStorage`` and sends
as ``Authorization: Bearer``. `mesh dashboard` prints that URL.

- ``GET /v1/dashboard`` is one snapshot (:meth:`Dashboard.snapshot`): this
  node, the peers it knows (roles, tiers, GPUs, load, how each is reached),
  the newest ``dashboard_jobs`` jobs with their state timeline, bids,
  declines (why nobody took it) and verdicts, balances, the contributor wall
  (per worker: the credits and jobs of its countersigned receipts in the
  ledger, i.e. accepted, verified compute) and the event log's audit.
- ``GET /v1/dashboard/stream`` (``text/event-stream``, read by the page with
  ``fetch()`` so the token stays in a header) builds a snapshot every
  ``dashboard_interval_s`` and sends it as one ``snapshot`` event when it
  differs from the last one sent. A stream keeps only that last snapshot, so
  nothing queues behind a slow reader (its socket's buffer is the only
  backlog, and the next build waits for it). At most ``dashboard_streams``
  run at once; one more is answered 503 ``too_many_streams`` (or, when it
  got past the check together with another, one ``error`` event).
- The log audit (:class:`LogAudit`) verifies the node's event log from
  genesis — every hash link and every signature — at most
  ``dashboard_audit_records`` records per snapshot, in a worker thread, each
  record once; a broken chain is reported with its first bad seq and stays
  reported.
- Live logs and the cancel/retry buttons use the existing job routes
  (``/v1/jobs/{id}/logs``, ``/cancel``, ``/retry``) with the same token.

Snapshots leave out figures that change on every read (uptime, advert ages),
so an idle mesh sends nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any, Protocol

import trio

from meshd.api.server import ApiError, ApiServer, Request, Response, json_response
from meshd.core.logrecord import ChainChecker, ChainError

from .params import RuntimeParams
from .view import NodeView

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The page's files (``meshd/runtime/static/dashboard/``) and their media types."""

ASSET_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)
"""Sent with every asset: the page loads nothing from elsewhere, runs no
inline script and cannot be framed."""

NODE_KEYS = (
    "peer_id",
    "version",
    "role",
    "executor",
    "warm",
    "cold_reason",
    "hardware",
    "score",
    "price",
    "load",
    "listen_addrs",
    "reachability",
    "relays",
    "peers",
    "connected",
    "standing",
)
"""The parts of ``GET /v1/status`` a snapshot shows (not uptime nor counters,
which change on every read)."""

VOLATILE_PEER_KEYS = ("last_seen_s", "expires_in_s")
"""Parts of a peer row that change on every read; left out of snapshots."""


def load_assets() -> dict[str, bytes]:
    """The page's files, read once from the installed package."""
    root = resources.files("meshd.runtime").joinpath("static", "dashboard")
    return {name: root.joinpath(name).read_bytes() for name in ASSETS}


class AuditedLog(Protocol):
    """What the audit reads of an event log (:class:`meshd.store.eventlog.EventLog`)."""

    @property
    def head(self) -> tuple[int, bytes]: ...

    @property
    def public_key(self) -> bytes: ...

    def iter_raw(self, start: int = 1, end: int | None = None) -> Iterator[bytes]: ...


class LogAudit:
    """Verifies this node's event log from genesis in bounded steps (see the module header).

    It reads the log's stored bytes only (LevelDB reads beside the loop's
    writes are safe, so the work runs in a worker thread) and keeps one
    :class:`ChainChecker`: each record is verified once, in order."""

    def __init__(self, log: AuditedLog, batch: int) -> None:
        self._log = log
        self._batch = batch
        self._checker = ChainChecker(log.public_key, check_signatures=True)
        self._lock = trio.Lock()
        self.first_bad_seq: int | None = None
        self.reason: str | None = None

    @property
    def verified_seq(self) -> int:
        """The last seq verified, with everything before it."""
        return self._checker.head[0]

    async def step(self) -> dict[str, Any]:
        """Verify up to ``batch`` more records; the audit's state."""
        async with self._lock:
            head = self._log.head[0]
            start = self.verified_seq + 1
            if self.first_bad_seq is None and start <= head:
                end = min(head + 1, start + self._batch)
                await trio.to_thread.run_sync(self._feed, start, end)
        return self.status()

    def _feed(self, start: int, end: int) -> None:
        for raw in self._log.iter_raw(start, end):
            try:
                self._checker.feed(raw)
            except ChainError as exc:
                self.first_bad_seq, self.reason = exc.seq, exc.reason
                return

    def status(self) -> dict[str, Any]:
        """``{state, head_seq, verified_seq, first_bad_seq, reason}``; state is
        ``verified`` (through the head), ``checking`` or ``broken``."""
        head = self._log.head[0]
        if self.first_bad_seq is not None:
            state = "broken"
        else:
            state = "verified" if self.verified_seq >= head else "checking"
        return {
            "state": state,
            "head_seq": head,
            "verified_seq": self.verified_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


def contributor_wall(credits: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """Per worker, the credits and jobs of its receipts in the ledger (each
    countersigned: accepted, verified work), most credits first, ``top`` at most."""
    sums: dict[str, float] = {}
    jobs: dict[str, int] = {}
    last: dict[str, int] = {}
    for r in credits["receipts"]:
        w = r["worker"]
        sums[w] = sums.get(w, 0.0) + float(r["credits"])
        jobs[w] = jobs.get(w, 0) + 1
        last[w] = max(last.get(w, 0), int(r["ts_ms"]))
    ranked = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [
        {"peer_id": p, "credits": round(c, 6), "jobs": jobs[p], "last_ts_ms": last[p]}
        for p, c in ranked
    ]


class Dashboard:
    """The dashboard's routes over one node's view."""

    def __init__(self, view: NodeView, rp: RuntimeParams, log: AuditedLog) -> None:
        self._view = view
        self._rp = rp
        self.audit = LogAudit(log, rp.dashboard_audit_records)
        self.streams = 0
        """Live streams open now (at most ``dashboard_streams``)."""
        self._assets = load_assets()

    def install(self, api: ApiServer) -> None:
        """Register the page (open) and the data routes (token) on ``api``."""
        page = self._asset("index.html")
        api.route("GET", "/dashboard", page, open=True)
        for name in ("app.js", "style.css"):
            api.route("GET", f"/dashboard/{name}", self._asset(name), open=True)
        api.route("GET", "/v1/dashboard", self._snapshot_route)
        api.route("GET", "/v1/dashboard/stream", self._stream_route)

    def _asset(self, name: str) -> Any:
        body, media = self._assets[name], ASSETS[name]

        async def serve(req: Request) -> Response:
            return Response(body=body, content_type=media, headers=ASSET_HEADERS)

        return serve

    async def snapshot(self) -> dict[str, Any]:
        """One snapshot (the JSON shape is in mesh_cli/CLI.md, "Dashboard")."""
        view, rp = self._view, self._rp
        status = view.status()
        peers = [
            {k: v for k, v in p.items() if k not in VOLATILE_PEER_KEYS}
            for p in view.peers()["peers"]
        ]
        credits = view.credits()
        return {
            "node": {k: status[k] for k in NODE_KEYS},
            "peers": peers,
            "jobs": view.recent_job_views(rp.dashboard_jobs),
            "balances": credits["balances"],
            "contributors": contributor_wall(credits, rp.dashboard_contributors),
            "receipts": len(credits["receipts"]),
            "log": await self.audit.step(),
        }

    async def _snapshot_route(self, req: Request) -> Response:
        return json_response(await self.snapshot())

    async def _stream_route(self, req: Request) -> Response:
        if self.streams >= self._rp.dashboard_streams:
            raise ApiError(503, "too_many_streams", self._too_many())
        return Response(
            content_type="text/event-stream",
            headers=(("Cache-Control", "no-store"),),
            stream=self._events(),
        )

    def _too_many(self) -> str:
        return (
            f"{self.streams} live dashboard streams are open (limit "
            f"{self._rp.dashboard_streams}); close a dashboard tab and retry"
        )

    async def _events(self) -> AsyncIterator[bytes]:
        """``snapshot`` events, each only when it differs from the last sent.

        A stream counts from its first step to its end (a response whose body
        never starts holds no slot); one that starts over the bound (two
        requests let in at once) sends one ``error`` event and ends."""
        if self.streams >= self._rp.dashboard_streams:
            error = {"error": {"code": "too_many_streams", "message": self._too_many()}}
            yield b"event: error\ndata: " + _compact(error) + b"\n\n"
            return
        self.streams += 1
        last = b""
        try:
            while True:
                body = _compact(await self.snapshot())
                if body != last:
                    last = body
                    yield b"event: snapshot\ndata: " + body + b"\n\n"
                await trio.sleep(self._rp.dashboard_interval_s)
        finally:
            self.streams -= 1


def _compact(doc: Any) -> bytes:
    """JSON on one line (an event's ``data:`` must not hold a newline)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
