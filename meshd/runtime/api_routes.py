"""The daemon's control-API handlers: JSON views of the node, and job control.

Each handler reads the core's state (never mutates it) or queues an input on
the daemon's inbox; the JSON shapes are documented in mesh_cli/CLI.md and
read by ``mesh``.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import statistics
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from meshd import __version__
from meshd.api.server import (
    ApiError,
    ApiServer,
    Request,
    Response,
    bytes_response,
    json_response,
    ndjson_response,
)
from meshd.config import SECONDS_PER_HOUR
from meshd.core.events import CancelRequested, JobSubmitted, RetryRequested
from meshd.core.jobspec import JobSpecError, parse_job_spec
from meshd.core.lifecycle import TERMINAL
from meshd.core.origin import job_view

from .jobio import bare, prefixed

if TYPE_CHECKING:
    from .daemon import Daemon

MAX_LOG_PAGE = 1_000


def install_routes(api: ApiServer, d: Daemon) -> None:
    async def status(req: Request) -> Response:
        return json_response(status_view(d))

    async def peers(req: Request) -> Response:
        return json_response(peers_view(d))

    async def log_page(req: Request) -> Response:
        start = req.query_int("start", 1, lo=1)
        limit = req.query_int("limit", 100, lo=1, hi=MAX_LOG_PAGE)
        assert d.log is not None
        head = d.log.head[0]
        records = []
        for r in d.log.iter(start, min(head + 1, start + limit)):
            records.append(
                {
                    "seq": r.seq,
                    "ts_ms": r.ts_ms,
                    "kind": r.kind,
                    "body": _jsonable(r.body),
                    "hash": r.hash.hex(),
                    "signature": r.signature.hex(),
                    "raw": base64.b64encode(r.raw).decode(),
                }
            )
        return json_response(
            {
                "records": records,
                "head_seq": head,
                "public_key": d.identity.public_key.hex(),
                "peer_id": d.identity.peer_id,
            }
        )

    async def put_blob(req: Request) -> Response:
        digest = await trio.to_thread.run_sync(d.blobs.put, req.body)
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
            if ref.digest is not None and not d.blobs.has(bare(ref.digest)):
                raise ApiError(
                    400,
                    "missing_input",
                    f"input {ref.path}: blob {ref.digest} is not on this node; upload it first",
                )
        assert d.node is not None
        estimate = d.node.origin.estimate(spec)
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
        job_id = spec.job_id or f"j-{secrets.token_hex(8)}"
        if job_id in d.node.origin.jobs:
            raise ApiError(409, "duplicate_job", f"job {job_id} exists already")
        await d.submit(JobSubmitted(spec, job_id))
        return json_response({"job_id": job_id, "estimate": estimate}, status=201)

    async def jobs(req: Request) -> Response:
        assert d.node is not None
        out = []
        for job in sorted(d.node.origin.jobs.values(), key=lambda j: -j.submitted_ms):
            v = job_view(job)
            out.append(
                {
                    "job_id": v["job_id"],
                    "state": v["state"],
                    "image": job.spec.image,
                    "command": job.spec.command,
                    "worker": v["worker"],
                    "submitted_at": v["submitted_at"],
                    "updated_at": v["updated_at"],
                    "cost": v["cost"]["actual"],
                    "reason": v["reason"],
                }
            )
        return json_response({"jobs": out})

    def get_job_or_404(job_id: str) -> Any:
        assert d.node is not None
        job = d.node.origin.jobs.get(job_id)
        if job is None:
            raise ApiError(
                404, "no_such_job", f"no job {job_id} on this node (jobs are kept by their origin)"
            )
        return job

    async def job(req: Request) -> Response:
        return json_response(job_view(get_job_or_404(req.path_params["job_id"])))

    async def logs(req: Request) -> Response:
        job_id = req.path_params["job_id"]
        get_job_or_404(job_id)
        follow = req.query_flag("follow")
        return ndjson_response(_follow_logs(d, job_id, follow))

    async def result(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        if j.canonical is None:
            raise ApiError(
                409, "no_result", f"job {j.job_id} has no accepted result (state {j.state})"
            )
        data = await trio.to_thread.run_sync(d.blobs.get, bare(j.canonical))
        return bytes_response(data, "application/x-tar")

    async def cancel(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        if j.state in TERMINAL:
            raise ApiError(409, "job_finished", f"job {j.job_id} is already {j.state}")
        await d.submit(CancelRequested(j.job_id))
        return json_response({"job_id": j.job_id, "state": j.state})

    async def retry(req: Request) -> Response:
        j = get_job_or_404(req.path_params["job_id"])
        if j.state not in ("failed", "cancelled"):
            raise ApiError(
                409,
                "not_retryable",
                f"job {j.job_id} is {j.state}; only failed or cancelled jobs can be retried",
            )
        await d.submit(RetryRequested(j.job_id))
        return json_response({"job_id": j.job_id, "state": j.state})

    async def credits(req: Request) -> Response:
        assert d.node is not None
        view = getattr(d.node, "credits_view", None)
        return json_response(view() if callable(view) else {"balances": [], "receipts": []})

    api.route("GET", "/v1/status", status)
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


async def _follow_logs(d: Daemon, job_id: str, follow: bool) -> AsyncIterator[Any]:
    sent = 0
    while True:
        buf = d.job_logs.get(job_id)
        chunks = list(buf.chunks) if buf else []
        for ts, data in chunks[sent:]:
            yield {"ts_ms": ts, "stream": "output", "data": data.decode("utf-8", "replace")}
        sent = len(chunks)
        assert d.node is not None
        job = d.node.origin.jobs.get(job_id)
        state = job.state if job else "unknown"
        if not follow or state in TERMINAL:
            yield {"end": True, "state": state}
            return
        with trio.move_on_after(1.0):
            if buf is not None:
                await buf.changed.wait()
            else:
                await trio.sleep(1.0)


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"hex": v.hex()}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def status_view(d: Daemon) -> dict[str, Any]:
    node = d.node
    assert node is not None and d.log is not None
    hw, score = d.hardware, d.score
    caps = node.worker.caps
    counters = dict(node.counters)
    counters["inbox_dropped"] = d.dropped_inputs
    for reason, n in d.blob_requests_refused.items():
        counters["blob_requests_refused_" + reason] = n
    if d.gossip_check is not None:
        for reason, n in d.gossip_check.rejected.items():
            counters["gossip_rejected_" + reason] = n
    for k, v in dataclasses.asdict(d.host.statistics()).items():
        if isinstance(v, int):
            counters["net_" + k] = v
    head_seq, head_hash = d.log.head
    return {
        "peer_id": d.identity.peer_id,
        "version": __version__,
        "uptime_s": round(time.time() - d.started_ms / 1000, 1),
        "listen_addrs": d.host.listen_addrs,
        "executor": {
            "name": d.executor.name,
            "sandboxed": d.executor.sandboxed,
            "reason": d.executor_reason,
        },
        "warm": node.worker.warm,
        "cold_reason": node.worker.cold_reason,
        "hardware": {
            "cores": hw.cpu_logical if hw else None,
            "cpu_model": hw.cpu_model if hw else None,
            "ram_gb": round(hw.ram_total_bytes / 2**30, 1) if hw else None,
            "disk_free_gb": round(hw.disk_free_bytes / 2**30, 1) if hw else None,
            "gpus": [
                {"index": g.index, "model": g.name, "memory_mb": g.memory_total_mb} for g in hw.gpus
            ]
            if hw
            else [],
            "gpu_reason": hw.gpu_reason if hw else "",
        },
        "score": score.to_dict() if score else None,
        "price": d.config.price_per_gflops_hour,
        "load": {
            "running": node.worker.work_running(),
            "queued": node.worker.work_queued(),
            "capacity": caps.capacity if caps else 0,
        },
        "log": {"head_seq": head_seq, "head_hash": head_hash.hex()},
        "peers": len(node.peers.alive(node.now_ms)),
        "connected": len(d.host.connected_peers()),
        "counters": counters,
        "standing": {"reputation": None, "why_not_picked": why_not_picked(d)},
        "backlog": backlog_view(d),
    }


def backlog_view(d: Daemon) -> dict[str, Any]:
    """Where work waits on its way from the socket to the core and back (issue
    10): the inbox's lanes (queued, bound, waits), the per-peer send queues,
    the network layer's queues, the origin's rounds and awards in flight, and
    the control API's connections."""
    node = d.node
    assert node is not None
    api = dataclasses.asdict(d.api.statistics()) if d.api is not None else None
    return {
        "congestion_ms": d.inbox.congestion_ms(int(time.monotonic() * 1000)),
        "inbox": d.inbox.statistics(),
        "send_queues": d.sendq.statistics(),
        "net": d.host.queue_stats(),
        "origin": {
            "rounds_open": len(node.origin.open_rounds),
            "rounds_bound": int(node.origin.round_limit),
            "rounds_ceiling": node.params.max_offers_in_flight,
            "awards_unacknowledged": len(node.origin.awarding),
            "awards_bound": node.params.max_awards_in_flight,
            "jobs_waiting_for_a_round": len(node.origin.admission),
        },
        "api": api or {},
    }


def why_not_picked(d: Daemon) -> list[str]:
    """Reasons this node may not be getting work, for `mesh status`."""
    node = d.node
    assert node is not None
    out = []
    if not node.worker.warm:
        out.append(f"node is cold: {node.worker.cold_reason}")
    alive = node.peers.alive(node.now_ms)
    if not alive:
        out.append("no peers known: check --bootstrap and that other daemons are reachable")
    if node.worker.caps is not None and alive:
        prices = [e.advert.price for e in alive]
        scores = [e.advert.score_gflops for e in alive]
        if prices and node.worker.caps.price > 2 * statistics.median(prices) > 0:
            out.append(f"price {d.config.price_per_gflops_hour:g} is above twice the mesh median")
        if scores and node.worker.caps.score_gflops < 0.5 * statistics.median(scores):
            out.append(
                "compute score is below half the mesh median: slower bids lose on expected finish"
            )
    if (
        node.worker.caps is not None
        and not node.worker.caps.images
        and node.worker.caps.runtimes == ("docker",)
    ):
        out.append("no local images: every docker job is declined (build or load images)")
    return out


def peers_view(d: Daemon) -> dict[str, Any]:
    node = d.node
    assert node is not None
    now = node.now_ms
    out = []
    for e in sorted(node.peers.alive(now), key=lambda e: e.peer_id):
        a = e.advert
        out.append(
            {
                "peer_id": e.peer_id,
                "addrs": list(a.addrs),
                "tier": a.tier,
                "score_gflops": a.score_gflops,
                "cores": a.cores,
                "ram_gb": round(a.ram_mb / 1024, 1),
                "gpus": [{"model": g.model, "memory_mb": g.memory_mb} for g in a.gpus],
                "price": round(a.price * SECONDS_PER_HOUR, 6),
                "running": a.running,
                "queued": a.queued,
                "warm": a.warm,
                "cold_reason": a.cold_reason,
                "version": a.version,
                "reputation": round(node.trust.reputation(e.peer_id, now), 3),
                "last_seen_s": round((now - e.last_seen_ms) / 1000, 1),
                "expires_in_s": round((e.expires_ms - now) / 1000, 1),
            }
        )
    return {"peers": out}
