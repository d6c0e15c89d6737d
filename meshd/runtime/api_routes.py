"""The daemon's control-API handlers: JSON views of the node, and job control.

Each handler either reads through the daemon's read-only :class:`.view.NodeView`
or asks the daemon's narrow :class:`Control` methods to act (an input queued
on its inbox, a blob stored); nothing here touches the daemon's parts or the
core. The JSON shapes are documented in mesh_cli/CLI.md and read by ``mesh``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from meshd.api.server import (
    ApiError,
    ApiServer,
    Request,
    Response,
    bytes_response,
    json_response,
    ndjson_response,
)
from meshd.core.events import CancelRequested, JobSubmitted, RetryRequested
from meshd.core.jobspec import JobSpecError, parse_job_spec
from meshd.core.lifecycle import TERMINAL
from meshd.store.blobs import BlobStoreFullError

from .jobio import prefixed
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .view import JobBrief, NodeView

MAX_LOG_PAGE = 1_000


class Control(Protocol):
    """What the API may ask the daemon to do."""

    async def submit(self, inp: Any) -> None:
        """Queue an API input (``JobSubmitted``, ``CancelRequested``,
        ``RetryRequested``); return once the core has handled it and its
        records are durable."""

    async def put_blob(self, data: bytes) -> str:
        """Store a blob; returns its bare sha256 hex digest."""
        ...

    def metrics_text(self) -> bytes:
        """The node's Prometheus families, in text format."""
        ...


def install_routes(api: ApiServer, view: NodeView, control: Control) -> None:
    async def status(req: Request) -> Response:
        return json_response(view.status())

    async def peers(req: Request) -> Response:
        return json_response(view.peers())

    async def log_page(req: Request) -> Response:
        start = req.query_int("start", 1, lo=1)
        limit = req.query_int("limit", 100, lo=1, hi=MAX_LOG_PAGE)
        return json_response(view.log_page(start, limit))

    async def put_blob(req: Request) -> Response:
        try:
            digest = await control.put_blob(req.body)
        except BlobStoreFullError as exc:
            raise ApiError(507, "blob_store_full", str(exc)) from None
        return json_response({"digest": prefixed(digest), "size": len(req.body)})

    async def submit(req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or "spec" not in body:
            raise ApiError(400, "invalid_request", 'body must be {"spec": {...}}')
        try:
            spec = parse_job_spec(body["spec"])
        except JobSpecError as exc:
            raise ApiError(400, "invalid_job", str(exc), fields=exc.fields) from None
        for ref in spec.inputs:
            if ref.digest is not None and not view.has_blob(ref.digest):
                raise ApiError(
                    400,
                    "missing_input",
                    f"input {ref.path}: blob {ref.digest} is not on this node; upload it first",
                )
        estimate = view.estimate(spec)
        if estimate["known"] and not estimate["candidates"] and not body.get("queue"):
            reasons = "; ".join(
                f"{why} ({n} of {estimate['known']})" for why, n in estimate["unfit"].items()
            )
            raise ApiError(
                409,
                "no_capable_peer",
                f"no known peer can run this job: {reasons}. Submit with queue=true "
                "(`mesh submit --queue`) to wait for one",
                fields=[
                    {"loc": why, "msg": f"{n} of {estimate['known']} peers"}
                    for why, n in estimate["unfit"].items()
                ],
            )
        if (
            spec.max_budget is not None
            and estimate["credits"] is not None
            and estimate["credits"] > spec.max_budget
        ):
            raise ApiError(
                400,
                "budget_exceeded",
                f"estimated cost {estimate['credits']:.4g} credits exceeds max_budget "
                f"{spec.max_budget:.4g}",
                fields=[{"loc": "max_budget", "msg": "below the estimate", "estimate": estimate}],
            )
        queue_timeout_ms = _queue_timeout_ms(body.get("queue_timeout_s"))
        job_id = spec.job_id or f"j-{secrets.token_hex(8)}"
        if view.has_job(job_id):
            raise ApiError(409, "duplicate_job", f"job {job_id} exists already")
        await control.submit(JobSubmitted(spec, job_id, queue_timeout_ms))
        return json_response({"job_id": job_id, "estimate": estimate}, status=201)

    async def jobs(req: Request) -> Response:
        return json_response(view.jobs())

    def get_job_or_404(job_id: str) -> JobBrief:
        job = view.job(job_id)
        if job is None:
            raise ApiError(
                404, "no_such_job", f"no job {job_id} on this node (jobs are kept by their origin)"
            )
        return job

    async def job(req: Request) -> Response:
        job_id = req.path_params["job_id"]
        get_job_or_404(job_id)
        return json_response(view.job_view(job_id))

    async def logs(req: Request) -> Response:
        job_id = req.path_params["job_id"]
        get_job_or_404(job_id)
        follow = req.query_flag("follow")
        return ndjson_response(_follow_logs(view, job_id, follow))

    async def result(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        if j.canonical is None:
            raise ApiError(
                409, "no_result", f"job {j.job_id} has no accepted result (state {j.state})"
            )
        data = await trio.to_thread.run_sync(view.read_blob, j.canonical)
        return bytes_response(data, "application/x-tar")

    async def cancel(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        if j.state in TERMINAL:
            raise ApiError(409, "job_finished", f"job {j.job_id} is already {j.state}")
        await control.submit(CancelRequested(j.job_id))
        return json_response({"job_id": j.job_id, "state": j.state})

    async def retry(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        if j.state not in ("failed", "cancelled"):
            raise ApiError(
                409,
                "not_retryable",
                f"job {j.job_id} is {j.state}; only failed or cancelled jobs can be retried",
            )
        await control.submit(RetryRequested(j.job_id))
        return json_response({"job_id": j.job_id, "state": j.state})

    async def credits(req: Request) -> Response:
        return json_response(view.credits())

    async def metrics(req: Request) -> Response:
        return bytes_response(control.metrics_text(), METRICS_CONTENT_TYPE)

    api.route("GET", "/v1/status", status)
    api.route("GET", "/metrics", metrics)
    api.route("GET", "/v1/peers", peers)
    api.route("GET", "/v1/log", log_page)
    api.route("POST", "/v1/blobs", put_blob, max_body_bytes=api.params.max_upload_bytes)
    api.route("POST", "/v1/jobs", submit)
    api.route("GET", "/v1/jobs", jobs)
    api.route("GET", "/v1/jobs/{job_id}", job)
    api.route("GET", "/v1/jobs/{job_id}/logs", logs)
    api.route("GET", "/v1/jobs/{job_id}/result", result)
    api.route("POST", "/v1/jobs/{job_id}/cancel", cancel)
    api.route("POST", "/v1/jobs/{job_id}/retry", retry)
    api.route("GET", "/v1/credits", credits)


async def _follow_logs(view: NodeView, job_id: str, follow: bool) -> AsyncIterator[Any]:
    sent = 0
    while True:
        buf = view.job_log(job_id)
        chunks = list(buf.chunks) if buf else []
        for ts, data in chunks[sent:]:
            yield {"ts_ms": ts, "stream": "output", "data": data.decode("utf-8", "replace")}
        sent = len(chunks)
        job = view.job(job_id)
        state = job.state if job else "unknown"
        if not follow or state in TERMINAL:
            yield {"end": True, "state": state}
            return
        with trio.move_on_after(1.0):
            if buf is not None:
                await buf.changed.wait()
            else:
                await trio.sleep(1.0)


MAX_QUEUE_TIMEOUT_S = 30 * 86_400
"""Largest ``queue_timeout_s`` a submit may ask for (the node's
``max_queue_time_ms`` caps the wait anyway)."""


def _queue_timeout_ms(value: Any) -> int | None:
    """A submit body's ``queue_timeout_s`` (seconds, > 0) in ms; None when absent."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_QUEUE_TIMEOUT_S
    ):
        raise ApiError(
            400,
            "invalid_request",
            f"queue_timeout_s must be a number of seconds in (0, {MAX_QUEUE_TIMEOUT_S}]",
            fields=[{"loc": "queue_timeout_s", "msg": f"got {value!r}"}],
        )
    return max(1, round(value * 1000))
