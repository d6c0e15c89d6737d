"""The daemon's control-API handlers: JSON views of the node, and job control.

Each handler either reads through the daemon's read-only :class:`.view.NodeView`
or asks the daemon's narrow :class:`Control` methods to act (an input queued
on its inbox, a blob stored); nothing here touches the daemon's parts or the
core. The JSON shapes are documented in mesh_cli/CLI.md and read by ``mesh``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
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
from meshd.core.manifest import ManifestError
from meshd.core.wire import MAX_REPLICA
from meshd.store.blobs import BlobStoreFullError

from .jobio import prefixed
from .joblogs import LogQuery, follow_logs
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

    async def attach_image(self, spec: Any) -> Any:
        """The descriptor with its image attached to travel (``image_blob``)
        when this node's engine has the image; else unchanged."""
        ...

    def metrics_text(self) -> bytes:
        """The node's Prometheus families, in text format."""
        ...

    async def result_manifest(self, job_id: str) -> dict[str, Any]:
        """The accepted result's countersigned manifest (raises ManifestError
        when there is none)."""
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
            if ref.uri is None and ref.digest is not None and not view.has_blob(ref.digest):
                raise ApiError(
                    400,
                    "missing_input",
                    f"input {ref.path}: blob {ref.digest} is not on this node; upload it first",
                )
        if spec.image_blob is not None:
            for field, d in (
                ("digest", spec.image_blob.digest),
                ("pieces", spec.image_blob.pieces),
            ):
                if d is not None and not view.has_blob(d):
                    raise ApiError(
                        400,
                        "missing_input",
                        f"image_blob.{field}: blob {d} is not on this node; upload it first",
                    )
        # before the estimate: workers without the image can run it if it travels
        spec = await control.attach_image(spec)
        estimate = view.estimate(spec)
        unknown_peers = estimate["partial"]  # other shards' peers may fit (§5.2)
        if (
            estimate["known"]
            and not estimate["candidates"]
            and not unknown_peers
            and not body.get("queue")
        ):
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
        return ndjson_response(follow_logs(view, job_id, log_query(req, view)))

    async def result(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        if j.canonical is None:
            raise ApiError(
                409, "no_result", f"job {j.job_id} has no accepted result (state {j.state})"
            )
        data = await trio.to_thread.run_sync(view.read_blob, j.canonical)
        return bytes_response(data, "application/x-tar")

    async def manifest(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        try:
            doc = await control.result_manifest(j.job_id)
        except ManifestError as exc:
            raise ApiError(409, "no_manifest", f"job {j.job_id}: {exc}") from None
        return json_response(doc)

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

    api.route("GET", "/v1/status", status)
    api.route("GET", "/metrics", api_metrics_route(control))
    api.route("GET", "/v1/peers", peers)
    api.route("GET", "/v1/log", log_page)
    api.route("POST", "/v1/blobs", put_blob, max_body_bytes=api.params.max_upload_bytes)
    api.route("POST", "/v1/jobs", submit)
    api.route("GET", "/v1/jobs", jobs)
    api.route("GET", "/v1/jobs/{job_id}", job)
    api.route("GET", "/v1/jobs/{job_id}/logs", logs)
    api.route("GET", "/v1/jobs/{job_id}/result", result)
    api.route("GET", "/v1/jobs/{job_id}/manifest", manifest)
    api.route("POST", "/v1/jobs/{job_id}/cancel", cancel)
    api.route("POST", "/v1/jobs/{job_id}/retry", retry)
    api.route("GET", "/v1/credits", credits)


def log_query(req: Request, view: NodeView) -> LogQuery:
    """``GET /v1/jobs/{id}/logs``'s query: ``follow``, ``replica``, ``tail``,
    ``since_ms`` (mesh_cli/CLI.md)."""
    unset = -1
    replica = req.query_int("replica", unset, lo=0, hi=MAX_REPLICA)
    tail = req.query_int("tail", unset, lo=0)
    since_ms = req.query_int("since_ms", unset, lo=0)
    return LogQuery(
        follow=req.query_flag("follow"),
        replica=None if replica == unset else replica,
        tail=None if tail == unset else tail,
        since_ms=None if since_ms == unset else since_ms,
        fetch_wait_s=view.log_fetch_wait_s(),
    )


def api_metrics_route(control: Control) -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``: the node's Prometheus text (on the control API, and
    on ``metrics_listen`` without the token)."""

    async def metrics(req: Request) -> Response:
        return bytes_response(control.metrics_text(), METRICS_CONTENT_TYPE)

    return metrics


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
