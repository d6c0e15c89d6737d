"""Prometheus metrics of one node: ``GET /metrics`` on the control API.

Theory of operation
-------------------
One :class:`Metrics` per daemon owns a ``prometheus_client`` registry. Two
kinds of families live in it:

- **observed** from the records the core appends (:meth:`Metrics.record`,
  called for every ``Append``, like the event logger): jobs submitted and
  finished by state, runs ended here by outcome, and the placement time of
  this node's jobs (submit to the first award, a histogram, on the shell's
  monotonic clock);
- **read** at scrape time from the node's read-only view
  (:class:`NodeCollector`): the core's counters, gossip rejections by reason,
  blob refusals, live peers, inbox lanes, the event log's head and this
  node's credit balance. Names follow Prometheus conventions (``_total`` for
  counters, base units).

The text format is prometheus_client's (``text/plain; version=0.0.4``).
Label values come from the node's own state, never from a peer's free text,
and every family is bounded (core counter names and reasons are fixed sets).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .view import NodeView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PLACEMENT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Histogram buckets of ``meshd_placement_seconds`` (submit to award)."""
MAX_PENDING_PLACEMENTS = 10_000
"""Jobs whose submit time is remembered until their first award (oldest dropped)."""


class NodeCollector(Collector):
    """Families read from the node's view at scrape time."""

    def __init__(self, view: Callable[[], NodeView | None]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        if view is None:
            return
        status = view.status()
        core = CounterMetricFamily(
            "meshd_core_events", "Events the protocol core counted, by name", labels=["name"]
        )
        rejected = CounterMetricFamily(
            "meshd_gossip_rejected",
            "Gossip refused before forwarding, by reason",
            labels=["reason"],
        )
        net = GaugeMetricFamily("meshd_net", "Network layer counters and queues", labels=["name"])
        for name, value in sorted((status.get("counters") or {}).items()):
            if not isinstance(value, int):
                continue
            if name.startswith("gossip_rejected_"):
                rejected.add_metric([name.removeprefix("gossip_rejected_")], value)
            elif name.startswith("net_"):
                net.add_metric([name.removeprefix("net_")], value)
            else:
                core.add_metric([name], value)
        yield core
        yield rejected
        yield net
        peers = GaugeMetricFamily("meshd_peers", "Peers with a live advert")
        peers.add_metric([], float(status.get("peers") or 0))
        yield peers
        head = GaugeMetricFamily("meshd_eventlog_head_seq", "Sequence number of the log's head")
        head.add_metric([], float((status.get("log") or {}).get("head_seq") or 0))
        yield head
        load = GaugeMetricFamily("meshd_runs", "Runs held by this node", labels=["state"])
        for state in ("running", "queued"):
            load.add_metric([state], float((status.get("load") or {}).get(state) or 0))
        yield load
        warm = GaugeMetricFamily("meshd_warm", "1 if the node is warm (ready to run jobs)")
        warm.add_metric([], 1.0 if status.get("warm") else 0.0)
        yield warm
        lanes = GaugeMetricFamily(
            "meshd_inbox_queued", "Inputs waiting in the inbox, by lane", labels=["lane"]
        )
        for lane, st in ((status.get("backlog") or {}).get("inbox") or {}).items():
            if isinstance(st, dict) and isinstance(st.get("queued"), int):
                lanes.add_metric([str(lane)], float(st["queued"]))
        yield lanes
        balance = GaugeMetricFamily(
            "meshd_credits_balance", "This node's credit balance in its own ledger (credits)"
        )
        own = next(
            (b for b in view.credits().get("balances") or [] if b["peer_id"] == status["peer_id"]),
            None,
        )
        balance.add_metric([], float(own["balance"]) if own else 0.0)
        yield balance


class Metrics:
    """The node's registry: observed families plus the view collector."""

    def __init__(self, view: Callable[[], NodeView | None], monotonic_ms: Callable[[], int]):
        self.registry = CollectorRegistry()
        self._now = monotonic_ms
        self.jobs_submitted = Counter(
            "meshd_jobs_submitted", "Jobs submitted at this node", registry=self.registry
        )
        self.jobs_finished = Counter(
            "meshd_jobs_finished",
            "Jobs of this node that ended, by state",
            ["state"],
            registry=self.registry,
        )
        self.runs = Counter(
            "meshd_runs_ended",
            "Runs this node executed that ended, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.placement = Histogram(
            "meshd_placement_seconds",
            "Time from a job's submission to its first award (this node's jobs)",
            buckets=PLACEMENT_BUCKETS_S,
            registry=self.registry,
        )
        self._submitted: OrderedDict[str, int] = OrderedDict()
        self.registry.register(NodeCollector(view))

    def record(self, kind: str, body: dict[str, Any]) -> None:
        """Observe one record the core appended."""
        if kind == "job_submitted":
            self.jobs_submitted.inc()
            self._submitted[str(body.get("job_id"))] = self._now()
            while len(self._submitted) > MAX_PENDING_PLACEMENTS:
                self._submitted.popitem(last=False)
        elif kind == "run_awarded":
            start = self._submitted.pop(str(body.get("job_id")), None)
            if start is not None:
                self.placement.observe(max(0, self._now() - start) / 1000)
        elif kind == "job_finished":
            self.jobs_finished.labels(state=str(body.get("state"))).inc()
        elif kind == "work_finished":
            self.runs.labels(outcome=str(body.get("status"))).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
