"""A read-only view of one daemon for its control API: the only runtime code
besides the daemon's loop that reads the protocol core.

Theory of operation
-------------------
The API (``api_routes``) answers from :class:`NodeView` and changes nothing
through it: commands (submit, cancel, retry, blob upload) go to the daemon's
narrow methods instead. Every read of the core's state (``Node`` attributes
such as jobs, peers, counters, capabilities, origin rounds, trust) made on
the API's behalf is in this module, so a change of the core's layout is
answered here alone. The view also gathers the shell's own figures (inbox,
send queues, network, event log, executor, hardware, blob refusals, gossip
drops) into the JSON shapes documented in mesh_cli/CLI.md.

Nothing here mutates: the view reads the node between two of the loop's
steps (the API runs in the same trio thread), so every answer is one
consistent snapshot.
"""

from __future__ import annotations

import base64
import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshd import __version__
from meshd.config import SECONDS_PER_HOUR, NodeConfig
from meshd.core.events import FetchLog
from meshd.core.identity import Identity
from meshd.core.inbox import Inbox
from meshd.core.jobspec import JobSpec
from meshd.core.lifecycle import TERMINAL, WORK_LIVE
from meshd.core.node import Node
from meshd.core.origin import job_view
from meshd.core.peers import shard_of
from meshd.exec.base import Executor
from meshd.net.host import MeshHost
from meshd.store.blobs import BlobStore
from meshd.store.eventlog import EventLog

from .capabilities import Capabilities
from .diskgc import BlobRefs, DiskGC
from .gossipcheck import GossipValidator
from .jobio import bare
from .joblogs import JobLogBuffer, JobLogs, RunRef
from .metrics import Metrics, api_statistics, by_label, total
from .params import RuntimeParams
from .sendq import SendQueues
from .transfer import BlobTransfer


@dataclass(frozen=True)
class JobBrief:
    """What the API's job commands need to know of a job."""

    job_id: str
    state: str
    canonical: str | None
    """The accepted output's digest, once there is one."""


class NodeView:
    """Read-only answers about one running daemon (its core and its parts)."""

    def __init__(
        self,
        node: Node,
        *,
        log: EventLog,
        identity: Identity,
        config: NodeConfig,
        rp: RuntimeParams,
        host: MeshHost,
        executor: Executor,
        executor_reason: str,
        capabilities: Capabilities,
        inbox: Inbox[Any],
        sendq: SendQueues,
        transfer: BlobTransfer,
        gossip_check: GossipValidator,
        job_logs: JobLogs,
        blobs: BlobStore,
        metrics: Metrics,
        started_ms: int,
        monotonic_ms: Callable[[], int],
        disk: DiskGC | None = None,
    ) -> None:
        self._node = node
        self._log = log
        self._identity = identity
        self._config = config
        self._rp = rp
        self._host = host
        self._executor = executor
        self._executor_reason = executor_reason
        self._caps = capabilities
        self._inbox = inbox
        self._sendq = sendq
        self._transfer = transfer
        self._gossip_check = gossip_check
        self._job_logs = job_logs
        self._blobs = blobs
        self._metrics = metrics
        self._started_ms = started_ms
        self._monotonic_ms = monotonic_ms
        self._disk = disk

    # ------------------------------------------------------------ the node

    def warm(self) -> bool:
        return self._node.worker.warm

    def counters(self) -> Mapping[str, int]:
        """The core's counters (live, read-only)."""
        return self._node.counters

    def net_statistics(self) -> dict[str, int]:
        """The network layer's counters and gauges (``NetStats``)."""
        return {k: v for k, v in dataclasses.asdict(self._host.statistics()).items()}

    # ------------------------------------------------------------ jobs

    def has_job(self, job_id: str) -> bool:
        return job_id in self._node.origin.jobs

    def job(self, job_id: str) -> JobBrief | None:
        job = self._node.origin.jobs.get(job_id)
        if job is None:
            return None
        return JobBrief(job.job_id, job.state, job.canonical)

    def job_manifest(self, job_id: str) -> str | None:
        """The blob holding a job's stored result manifest, if any."""
        job = self._node.origin.jobs.get(job_id)
        return None if job is None else job.manifest

    def accepted_run(self, job_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The accepted result of a succeeded job (the first run of the
        canonical group, with the worker, attempt and replica added) and the
        verdict; None before there is one."""
        job = self._node.origin.jobs.get(job_id)
        if job is None or job.state != "succeeded" or job.canonical is None:
            return None
        for r in sorted(job.runs.values(), key=lambda r: (r.attempt, r.replica)):
            if r.result and r.result.get("output_digest") == job.canonical:
                run = {**r.result, "worker": r.worker, "attempt": r.attempt, "replica": r.replica}
                return run, dict(job.verdict or {})
        return None

    def job_view(self, job_id: str) -> dict[str, Any] | None:
        """``GET /v1/jobs/{id}``: the job as the origin sees it, or None."""
        job = self._node.origin.jobs.get(job_id)
        return None if job is None else job_view(job, self._node.now_ms)

    def jobs(self) -> dict[str, Any]:
        """``GET /v1/jobs``: every job this node originated, newest first."""
        out = []
        for job in sorted(self._node.origin.jobs.values(), key=lambda j: -j.submitted_ms):
            v = job_view(job, self._node.now_ms)
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
                    "final": v["final"],
                    "provisional_until_ms": v["provisional_until_ms"],
                    "labels": dict(job.spec.labels),
                }
            )
        return {"jobs": out}

    def recent_job_views(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` newest submitted jobs as ``GET /v1/jobs/{id}`` shows each (the dashboard)."""
        newest = sorted(self._node.origin.jobs.values(), key=lambda j: -j.submitted_ms)[:n]
        return [job_view(job, self._node.now_ms) for job in newest]

    def estimate(self, spec: JobSpec) -> dict[str, Any]:
        """The core's cost and time estimate for ``spec`` on the mesh it knows."""
        return self._node.origin.estimate(spec)

    # --- `mesh logs` (:class:`.joblogs.LogSource`)

    def job_state(self, job_id: str) -> str | None:
        job = self._node.origin.jobs.get(job_id)
        return None if job is None else job.state

    def job_runs(self, job_id: str) -> list[RunRef]:
        """The job's runs that were awarded, oldest first, with their stored logs."""
        job = self._node.origin.jobs.get(job_id)
        if job is None:
            return []
        refs = []
        for (attempt, replica), run in sorted(job.runs.items()):
            digest = run.result.get("log_digest") if run.result else None
            refs.append(
                RunRef(attempt, replica, run.result is not None, digest if digest else None)
            )
        return refs

    def job_log(self, job_id: str) -> JobLogBuffer | None:
        return self._job_logs.get(job_id)

    def stored_log(self, digest: str) -> bytes | None:
        """A run's stored log from the blob store, or None when it is not here."""
        try:
            return self._blobs.get(bare(digest)) if self._blobs.has(bare(digest)) else None
        except OSError:
            return None

    def missing_logs(self) -> list[FetchLog]:
        """The stored logs of our finished jobs (within ``log_retention_s``)
        that are not in the blob store: a restart cut their fetch short. (Those
        of unfinished jobs are asked for again by the core's ``resume``.)"""
        node = self._node
        keep_ms = int(self._rp.log_retention_s * 1000)
        out = []
        for job in node.origin.jobs.values():
            if job.state not in TERMINAL or node.now_ms - job.updated_ms >= keep_ms:
                continue
            for (attempt, replica), run in sorted(job.runs.items()):
                d = run.result.get("log_digest") if run.result else None
                if isinstance(d, str) and not self._blobs.has(bare(d)):
                    out.append(FetchLog(job.job_id, attempt, replica, run.worker, d))
        return out

    def log_fetch_wait_s(self) -> float:
        return self._rp.log_fetch_wait_s

    def credits(self) -> dict[str, Any]:
        """``GET /v1/credits``: balances, where they come from, and receipts."""
        return credits_document(self._node, self._rp.credits_top_counterparties)

    # ------------------------------------------------------------ blobs and log

    def has_blob(self, digest: str) -> bool:
        return self._blobs.has(bare(digest))

    def read_blob(self, digest: str) -> bytes:
        """A blob's bytes (blocking: call from a thread)."""
        return self._blobs.get(bare(digest))

    def blob_references(self) -> BlobRefs:
        """The blobs the node's state references, for the collector
        (:mod:`.diskgc`): pinned — inputs, run outputs and run logs of our
        unfinished jobs (and their travelling image archives), inputs of the runs we hold live, outputs and logs we
        made whose result is not acknowledged; retained — inputs and run
        outputs of our finished jobs for ``blob_retention_s`` and their run
        logs for ``log_retention_s`` (from ``updated_ms``, when they
        finished), and outputs (logs) we made whose result was acknowledged,
        for ``blob_retention_s`` (``log_retention_s``) from that contact.
        ``logs`` names every referenced run log (for the disk figures)."""
        node = self._node
        now = node.now_ms
        keep_ms = int(self._rp.blob_retention_s * 1000)
        keep_log_ms = int(self._rp.log_retention_s * 1000)
        pinned: set[str] = set()
        retained: set[str] = set()
        logs: set[str] = set()
        for job in node.origin.jobs.values():
            finished = job.state in TERMINAL
            age = now - job.updated_ms
            if not finished or age < keep_log_ms:
                for run in job.runs.values():
                    d = run.result.get("log_digest") if run.result else None
                    if isinstance(d, str):
                        (retained if finished else pinned).add(bare(d))
                        logs.add(bare(d))
            if finished and age >= keep_ms:
                continue
            into = retained if finished else pinned
            into.update(bare(i.digest) for i in job.spec.inputs if i.digest is not None)
            if job.spec.image_blob is not None:
                into.add(bare(job.spec.image_blob.digest))
                if job.spec.image_blob.pieces is not None:
                    into.add(bare(job.spec.image_blob.pieces))
            if job.canonical is not None:
                into.add(bare(job.canonical))
            if job.manifest is not None:
                into.add(bare(job.manifest))
            for run in job.runs.values():
                out = run.result.get("output_digest") if run.result else None
                if isinstance(out, str):
                    into.add(bare(out))
        for work in node.worker.work.values():
            if work.state in WORK_LIVE:
                pinned.update(bare(i.digest) for i in work.spec.inputs if i.digest is not None)
            if work.result is None:
                continue
            for made, keep in (
                (work.result.output_digest, keep_ms),
                (work.result.log_digest, keep_log_ms),
            ):
                if made is None:
                    continue
                if not work.acked:
                    pinned.add(bare(made))
                elif now - work.last_contact_ms < keep:
                    retained.add(bare(made))
                if made == work.result.log_digest:
                    logs.add(bare(made))
        return BlobRefs(frozenset(pinned), frozenset(retained - pinned), frozenset(logs))

    def live_images(self) -> set[str]:
        """Names and pinned ids of the images the runs we hold live use (the
        image cache never evicts these)."""
        used: set[str] = set()
        for w in self._node.worker.work.values():
            if w.state in WORK_LIVE:
                used.add(w.spec.image)
                if w.spec.image_blob is not None:
                    used.add(w.spec.image_blob.id)
        return used

    def live_run_keys(self) -> list[tuple[str, int, int]]:
        """The runs this node holds that are live (their run dirs are in use)."""
        return [k for k, w in self._node.worker.work.items() if w.state in WORK_LIVE]

    def log_page(self, start: int, limit: int) -> dict[str, Any]:
        """``GET /v1/log``: up to ``limit`` records from ``start``, and the head."""
        head = self._log.head[0]
        records = []
        for r in self._log.iter(start, min(head + 1, start + limit)):
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
        return {
            "records": records,
            "head_seq": head,
            "public_key": self._identity.public_key.hex(),
            "peer_id": self._identity.peer_id,
        }

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: identity, executor, hardware, load, counters, standing, backlog."""
        node = self._node
        hw, score = self._caps.hardware, self._caps.score
        caps = node.worker.caps
        counters = dict(node.counters)
        counters["inbox_dropped"] = total(self._metrics.inbox_dropped)
        for event, n in by_label(self._metrics.images, "event").items():
            counters["image_" + event] = n
        for reason, n in self._transfer.refused.items():
            counters["blob_requests_refused_" + reason] = n
        for reason, n in self._gossip_check.rejected.items():
            counters["gossip_rejected_" + reason] = n
        for k, v in self.net_statistics().items():
            if isinstance(v, int):
                counters["net_" + k] = v
        head_seq, head_hash = self._log.head
        return {
            "peer_id": self._identity.peer_id,
            "version": __version__,
            "uptime_s": round((self._monotonic_ms() - self._started_ms) / 1000, 1),
            "listen_addrs": self._host.listen_addrs,
            "reachability": self._host.reachability,
            "relays": self._host.relays,
            "role": "client" if self._executor.name == "none" else "worker",
            "executor": {
                "name": self._executor.name,
                "sandboxed": self._executor.sandboxed,
                "reason": self._executor_reason,
            },
            "warm": node.worker.warm,
            "cold_reason": node.worker.cold_reason,
            "hardware": {
                "cores": hw.cpu_logical if hw else None,
                "cpu_model": hw.cpu_model if hw else None,
                "ram_gb": round(hw.ram_total_bytes / 2**30, 1) if hw else None,
                "disk_free_gb": round(hw.disk_free_bytes / 2**30, 1) if hw else None,
                "gpus": [
                    {"index": g.index, "model": g.name, "memory_mb": g.memory_total_mb}
                    for g in hw.gpus
                ]
                if hw
                else [],
                "gpu_reason": hw.gpu_reason if hw else "",
            },
            "score": score.to_dict() if score else None,
            "price": self._config.price_per_gflops_hour,
            "load": {
                "running": node.worker.work_running(),
                "queued": node.worker.work_queued(),
                "capacity": caps.capacity if caps else 0,
            },
            "log": {"head_seq": head_seq, "head_hash": head_hash.hex()},
            "peers": len(node.peers.alive(node.now_ms)),
            "membership": self.membership(),
            "connected": len(self._host.connected_peers()),
            "counters": counters,
            "tail_lost": node.ledger.lost_tail,
            "standing": {"reputation": None, "why_not_picked": self.why_not_picked()},
            "backlog": self.backlog(),
            "disk": self._disk.status() if self._disk is not None else None,
        }

    def backlog(self) -> dict[str, Any]:
        """Where work waits on its way from the socket to the core and back (issue
        10): the inbox's lanes (queued, bound, waits), the per-peer send queues,
        the network layer's queues, the origin's rounds and awards in flight, and
        the control API's connections."""
        node = self._node
        api = dataclasses.asdict(api_statistics(self._metrics))
        return {
            "congestion_ms": self._inbox.congestion_ms(self._monotonic_ms()),
            "inbox": self._inbox.statistics(),
            "send_queues": self._sendq.statistics(),
            "net": self._host.queue_stats(),
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

    def why_not_picked(self) -> list[str]:
        """Reasons this node may not be getting work, for `mesh status`."""
        node = self._node
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
                out.append(
                    f"price {self._config.price_per_gflops_hour:g} is above twice the mesh median"
                )
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

    def membership(self) -> dict[str, Any]:
        """What this node knows of the mesh's size and its advert shard
        (specs/PROTOCOL.md §5.2, §6, §7.1)."""
        node = self._node
        peers = node.peers
        return {
            "est_nodes": peers.est_nodes(),
            "shards": peers.shards,
            "shard": shard_of(node.peer_id, peers.shards),
            "shards_from": peers.shards_from,
            "advert_topics": list(peers.advert_topics(node.peer_id)),
            "advert_interval_ms": node.worker.advert_interval(),
        }

    def peers(self) -> dict[str, Any]:
        """``GET /v1/peers``: the peers whose adverts are alive, by peer id,
        and this node's ``membership`` (its shard: the peers it can know)."""
        node = self._node
        now = node.now_ms
        out = []
        for e in sorted(node.peers.alive(now), key=lambda e: e.peer_id):
            a = e.advert
            out.append(
                {
                    "peer_id": e.peer_id,
                    "role": "worker" if a.runtimes and a.capacity else "client",
                    "sandbox": sandbox_of(a.runtimes),
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
                    "reached": (
                        "cannot reach us"
                        if node.origin.silent.excluded(e.peer_id, now)
                        else self._host.reached(e.peer_id) or "not connected"
                    ),
                    "last_seen_s": round((now - e.last_seen_ms) / 1000, 1),
                    "expires_in_s": round((e.expires_ms - now) / 1000, 1),
                }
            )
        return {"peers": out, "membership": self.membership()}


def sandbox_of(runtimes: Sequence[str]) -> str:
    """How a peer runs jobs, from its advert: ``docker``, ``process-unsandboxed`` or ``none``."""
    if "docker" in runtimes:
        return "docker"
    if "process" in runtimes:
        return "process-unsandboxed"
    return "none"


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"hex": v.hex()}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def credits_document(node: Node, top: int) -> dict[str, Any]:
    """The ledger's view (``Ledger.credits_view``: ``balances``, ``receipts``)
    plus where each balance comes from — per peer the number of receipts
    behind ``earned`` and ``spent`` and its ``top`` counterparties each way —
    this node's ``peer_id`` and the ``free_allowance`` a saturated worker
    gives origins in debt (specs/CREDITS.md §7.5)."""
    doc = node.ledger.credits_view()
    paid_by: dict[str, dict[str, float]] = {}
    paid_to: dict[str, dict[str, float]] = {}
    n_by: dict[str, Counter[str]] = {}
    n_to: dict[str, Counter[str]] = {}
    for r in doc["receipts"]:
        w, o, c = r["worker"], r["origin"], float(r["credits"])
        by, to = paid_by.setdefault(w, {}), paid_to.setdefault(o, {})
        by[o], to[w] = by.get(o, 0.0) + c, to.get(w, 0.0) + c
        n_by.setdefault(w, Counter())[o] += 1
        n_to.setdefault(o, Counter())[w] += 1

    def ranked(sums: dict[str, float] | None, counts: Counter[str] | None) -> list[dict[str, Any]]:
        if not sums or counts is None:
            return []
        best = sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return [{"peer_id": p, "credits": c, "receipts": counts[p]} for p, c in best]

    for b in doc["balances"]:
        p = b["peer_id"]
        b["earned_receipts"] = sum(n_by.get(p, Counter()).values())
        b["spent_receipts"] = sum(n_to.get(p, Counter()).values())
        b["top_payers"] = ranked(paid_by.get(p), n_by.get(p))
        b["top_payees"] = ranked(paid_to.get(p), n_to.get(p))
    doc["peer_id"] = node.peer_id
    doc["free_allowance"] = node.ctx.params.credit_free_allowance
    return doc
