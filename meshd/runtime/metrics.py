"""The node's metrics: one Prometheus registry, and the one place every metric is named.

Theory of operation
-------------------
One :class:`Metrics` per daemon owns a ``prometheus_client`` registry. Every
family the node exports is created here, in :meth:`Metrics.__init__` or in
:class:`NodeCollector`, and nowhere else; :data:`FAMILY_NAMES` lists them
(``deploy/grafana-meshd.json``'s queries are checked against it). Three
kinds of families live in the registry:

- **observed** from the records the core appends (:meth:`Metrics.record`,
  called for every ``Append``, like the event logger): jobs submitted and
  finished by state, runs ended here by outcome, records appended by kind,
  and the placement time of this node's jobs (submit to the first award, a
  histogram, on the shell's monotonic clock);
- **counted** by the shell's parts, which hold this object and increment
  its counters directly (there is no other tally in the shell): gossip
  checked before forwarding by topic and outcome (``GossipValidator``),
  blob requests refused (``BlobTransfer``), messages through the send
  queues (``SendQueues``), direct messages not delivered
  and local inputs dropped (``Daemon``), control-API requests and
  connections (``ApiServer``). Parts that show these numbers elsewhere
  (``GET /v1/status``) read them back from here (:func:`by_label`);
- **read** at scrape time (:class:`NodeCollector`) from what the sans-I/O
  core and the adapters keep as plain counters, through the read-only
  :class:`~meshd.runtime.view.NodeView`: the core's counters, the network
  layer's counters and gauges, peers, the inbox's lanes, runs held, the
  executor, the event log, the blob store and this node's credit balance.

Names follow Prometheus conventions: ``meshd_`` prefix, ``_total`` for
counters, base units (``_seconds``, ``_bytes``). Label values come from the
node's own state, never from a peer's free text, and every family is bounded
(counter names, reasons, topics, states and HTTP statuses are fixed sets).
The text format is prometheus_client's (``text/plain; version=0.0.4``).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .view import NodeView

disable_created_metrics()  # no ``*_created`` series: every name exported is one named here

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PLACEMENT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Histogram buckets of ``meshd_placement_seconds`` (submit to award)."""
MAX_PENDING_PLACEMENTS = 10_000
"""Jobs whose submit time is remembered until their first award (oldest dropped)."""
MAX_LABEL_CHARS = 60
"""Longest label value taken from an error kind (``meshd_send_failures_total``)."""


class NodeCollector(Collector):
    """Families read from the node's view at scrape time."""

    FAMILIES = (
        "meshd_core_events_total",
        "meshd_net_events_total",
        "meshd_net_connected_peers",
        "meshd_net_known_peers",
        "meshd_peers",
        "meshd_inbox_queued",
        "meshd_runs_held",
        "meshd_executor_ready",
        "meshd_executor_sandboxed",
        "meshd_eventlog_head_seq",
        "meshd_eventlog_bytes",
        "meshd_blobstore_bytes",
        "meshd_blobstore_files",
        "meshd_blobstore_max_bytes",
        "meshd_blobstore_collected_total",
        "meshd_blobstore_collected_bytes_total",
        "meshd_blobstore_refused_uploads_total",
        "meshd_credits_balance",
    )
    """The names this collector exports (as they appear in the text format)."""

    def __init__(self, view: Callable[[], NodeView | None]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        if view is None:
            return
        yield from self._core_and_net(view)
        status = view.status()
        yield _gauge("meshd_peers", "Peers with a live advert", status.get("peers"))
        lanes = GaugeMetricFamily(
            "meshd_inbox_queued", "Inputs waiting in the inbox, by lane", labels=["lane"]
        )
        for lane, st in ((status.get("backlog") or {}).get("inbox") or {}).items():
            if isinstance(st, dict) and isinstance(st.get("queued"), int):
                lanes.add_metric([str(lane)], float(st["queued"]))
        yield lanes
        held = GaugeMetricFamily("meshd_runs_held", "Runs held by this node", labels=["state"])
        for state in ("running", "queued"):
            held.add_metric([state], float((status.get("load") or {}).get(state) or 0))
        yield held
        executor = status.get("executor") or {}
        ready = GaugeMetricFamily(
            "meshd_executor_ready",
            "1 if the executor is healthy and the node warm (ready to run jobs)",
            labels=["executor"],
        )
        ready.add_metric([str(executor.get("name"))], 1.0 if status.get("warm") else 0.0)
        yield ready
        yield _gauge(
            "meshd_executor_sandboxed",
            "1 if jobs run sandboxed (containers), 0 if as plain processes",
            1 if executor.get("sandboxed") else 0,
        )
        yield from self._storage(status)
        own = next(
            (b for b in view.credits().get("balances") or [] if b["peer_id"] == status["peer_id"]),
            None,
        )
        yield _gauge(
            "meshd_credits_balance",
            "This node's credit balance in its own ledger (credits)",
            own["balance"] if own else 0,
        )

    def _core_and_net(self, view: NodeView) -> Iterator[Metric]:
        core = CounterMetricFamily(
            "meshd_core_events", "Events the protocol core counted, by name", labels=["name"]
        )
        for name, value in sorted(view.counters().items()):
            if isinstance(value, int):
                core.add_metric([name], value)
        yield core
        net = CounterMetricFamily(
            "meshd_net_events", "Events the libp2p adapter counted, by name", labels=["name"]
        )
        stats = view.net_statistics()
        for name, value in sorted(stats.items()):
            if name not in ("connected_peers", "known_peers"):
                net.add_metric([name], value)
        yield net
        yield _gauge("meshd_net_connected_peers", "Peers connected now", stats["connected_peers"])
        yield _gauge("meshd_net_known_peers", "Peers in the address book", stats["known_peers"])

    def _storage(self, status: dict[str, Any]) -> Iterator[Metric]:
        yield _gauge(
            "meshd_eventlog_head_seq",
            "Sequence number of the event log's head",
            (status.get("log") or {}).get("head_seq"),
        )
        disk = status.get("disk") or {}
        yield _gauge(
            "meshd_eventlog_bytes",
            "Size of the event log's LevelDB directory (bytes)",
            (disk.get("event_log") or {}).get("bytes"),
        )
        blobs = disk.get("blobs") or {}
        yield _gauge("meshd_blobstore_bytes", "Bytes in the blob store", blobs.get("bytes"))
        yield _gauge("meshd_blobstore_files", "Blobs in the blob store", blobs.get("files"))
        yield _gauge(
            "meshd_blobstore_max_bytes", "The blob store's cap (bytes)", blobs.get("max_bytes")
        )
        for name, key, doc in (
            ("meshd_blobstore_collected", "collected_blobs", "Blobs the collector removed"),
            ("meshd_blobstore_collected_bytes", "collected_bytes", "Bytes the collector removed"),
            (
                "meshd_blobstore_refused_uploads",
                "refused_uploads",
                "Uploads refused because the store was full",
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(blobs.get(key) or 0))
            yield family


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], float(value or 0))
    return family


class Metrics:
    """The node's registry: observed and counted families plus the view collector."""

    def __init__(
        self,
        view: Callable[[], NodeView | None] | None = None,
        monotonic_ms: Callable[[], int] | None = None,
    ) -> None:
        """``view`` adds the families read at scrape time; without it (a part
        tested alone) the registry holds only the counted ones."""
        self.registry = r = CollectorRegistry()
        self._now = monotonic_ms or (lambda: 0)
        # -- observed from records
        self.jobs_submitted = Counter(
            "meshd_jobs_submitted", "Jobs submitted at this node", registry=r
        )
        self.jobs_finished = Counter(
            "meshd_jobs_finished", "Jobs of this node that ended, by state", ["state"], registry=r
        )
        self.runs = Counter(
            "meshd_runs", "Runs this node executed that ended, by outcome", ["outcome"], registry=r
        )
        self.records = Counter(
            "meshd_eventlog_records",
            "Records appended to the event log, by kind",
            ["kind"],
            registry=r,
        )
        self.placement = Histogram(
            "meshd_placement_seconds",
            "Time from a job's submission to its first award (this node's jobs)",
            buckets=PLACEMENT_BUCKETS_S,
            registry=r,
        )
        # -- counted by the shell's parts
        self.gossip = Counter(
            "meshd_gossip_messages",
            "Gossip checked before forwarding, by topic and outcome (accepted, or the reason refused)",
            ["topic", "outcome"],
            registry=r,
        )
        self.blob_refused = Counter(
            "meshd_blob_requests_refused",
            "Blob requests from peers refused, by reason",
            ["reason"],
            registry=r,
        )
        self.blob_served = Counter(
            "meshd_blob_ranges_served",
            "Blob ranges served to peers",
            registry=r,
        )
        self.blob_served_bytes = Counter(
            "meshd_blob_bytes_served",
            "Bytes of blob ranges served to peers",
            registry=r,
        )
        self.blob_pieces_refused = Counter(
            "meshd_blob_pieces_refused",
            "Ranges fetched whose bytes did not hash to their piece list's entry (refused)",
            registry=r,
        )
        self.blob_direct_waits = Counter(
            "meshd_blob_direct_waits",
            "Blob fetches that waited for a direct connection to a holder reached only "
            "through a relay, by outcome (direct, timeout)",
            ["outcome"],
            registry=r,
        )
        self.blob_relay_cuts = Counter(
            "meshd_blob_relay_cuts",
            "Blob ranges lost with the relayed connection they travelled on (a relay's limit)",
            registry=r,
        )
        self.send_failures = Counter(
            "meshd_send_failures",
            "Direct messages not delivered, by error kind",
            ["error"],
            registry=r,
        )
        self.send_queue = Counter(
            "meshd_send_queue_messages",
            "Direct messages through the per-peer send queues, by what became of them",
            ["outcome"],
            registry=r,
        )
        self.images = Counter(
            "meshd_images",
            "Job images handled here, by event (exported, loaded, pulled, evicted, refused_<reason>...)",
            ["event"],
            registry=r,
        )
        self.inbox_dropped = Counter(
            "meshd_inbox_dropped", "Local inputs dropped: their inbox lane was full", registry=r
        )
        self.api_requests = Counter(
            "meshd_api_requests", "Control API requests answered, by status", ["status"], registry=r
        )
        self.api_connections = Counter(
            "meshd_api_connections", "Control API connections accepted", registry=r
        )
        self.api_refused = Counter(
            "meshd_api_connections_refused",
            "Control API connections turned away at the cap: busy (answered 503) or "
            "evicted (made no authenticated request)",
            ["reason"],
            registry=r,
        )
        self.api_open = Gauge(
            "meshd_api_connections_open", "Control API connections open now", registry=r
        )
        self._submitted: OrderedDict[str, int] = OrderedDict()
        if view is not None:
            r.register(NodeCollector(view))

    def record(self, kind: str, body: dict[str, Any]) -> None:
        """Observe one record the core appended."""
        self.records.labels(kind=kind).inc()
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

    def send_failed(self, error: str) -> None:
        """Count a direct message that will not be delivered, by the kind its error names."""
        self.send_failures.labels(error=error.split(":")[0][:MAX_LABEL_CHARS]).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class ApiStatistics:
    """The control API's counts (``GET /v1/status`` backlog ``api``), read from the registry."""

    connections_open: int
    connections_total: int
    rejected_busy: int
    evicted_unauthenticated: int
    requests_total: int
    errors_5xx: int


def api_statistics(m: Metrics) -> ApiStatistics:
    refused = by_label(m.api_refused, "reason")
    statuses = by_label(m.api_requests, "status")
    return ApiStatistics(
        connections_open=int(m.api_open._value.get()),  # noqa: SLF001 (no public read of a Gauge)
        connections_total=total(m.api_connections),
        rejected_busy=refused["busy"],
        evicted_unauthenticated=refused["evicted"],
        requests_total=sum(statuses.values()),
        errors_5xx=sum(n for status, n in statuses.items() if int(status) >= 500),
    )


def by_label(counter: Counter, label: str) -> Tally[str]:
    """A labelled counter's totals by one label's value (summed over the others)."""
    out: Tally[str] = Tally()
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels[label]] += int(sample.value)
    return out


def total(counter: Counter) -> int:
    """A counter's total over all its labels."""
    return sum(
        int(s.value) for f in counter.collect() for s in f.samples if s.name.endswith("_total")
    )


def _observed_names() -> tuple[str, ...]:
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return tuple(f.name + s for f in Metrics().registry.collect() for s in suffixes[f.type])


FAMILY_NAMES: frozenset[str] = frozenset(_observed_names()) | frozenset(NodeCollector.FAMILIES)
"""Every sample name the node exports (histograms by their ``_bucket``, ``_sum``, ``_count``)."""
