"""Inputs to and effects of the protocol core.

Inputs are frozen, past-tense facts the shell hands to ``Node.step``; effects
are imperative values the shell must carry out **in order**, with one duty
(as raft's ``Ready``): every :class:`Append` of a batch is durable before any
:class:`Publish`/:class:`Send` of that batch leaves the node, and before any
:class:`StartExecution` runs. ``Node.step`` returns effects already in that
order (appends first), so a shell that runs them in order is correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .jobspec import JobSpec, Tolerance
from .wire import LogChunk

# ---------------------------------------------------------------- topics

TOPIC_ADVERTS = "/meshd/adverts/1"
TOPIC_OFFERS = "/meshd/offers/1"
TOPIC_RECEIPTS = "/meshd/receipts/1"
DIRECT_PROTOCOL = "/meshd/direct/1"
DIRECT_CHANNEL_PROTOCOL = "/meshd/direct/2"
BLOB_PROTOCOL = "/meshd/blob/2"


MAX_ERROR_CHARS = 300
"""Characters of an error's text an input carries (``SendFailed.error``,
``InputsFetched.error``, ``ExecutorHealth.reason`` ...); the shell cuts longer ones."""

# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Tick:
    """Time passed; the core runs whatever deadlines are due."""


@dataclass(frozen=True)
class GossipReceived:
    topic: str
    from_peer: str
    """The transport peer: the libp2p publisher (``from``, signed by libp2p;
    for honest nodes also the envelope's signer), not the neighbour that
    relayed it. Fakes may pass the relaying neighbour instead."""
    data: bytes


@dataclass(frozen=True)
class DirectReceived:
    from_peer: str
    """The authenticated remote peer of the stream."""
    data: bytes


@dataclass(frozen=True)
class InboxLoad:
    """How long messages recently waited in the shell's inbox before the core
    saw them (a percentile of recent waits, ms): the node's own congestion."""

    wait_ms: int


@dataclass(frozen=True)
class PeerConnected:
    """The shell connected to ``peer_id`` (a newcomer asks its first peers for
    the adverts they hold, specs/PROTOCOL.md §7.8)."""

    peer_id: str


@dataclass(frozen=True)
class SendFailed:
    to_peer: str
    kind: str
    job_id: str | None
    error: str


@dataclass(frozen=True)
class LocalCapabilities:
    """What this node offers, as measured by the shell (hardware, executor, images)."""

    cores: int
    ram_mb: int
    disk_free_mb: int
    gpus: tuple[tuple[str, int], ...]  # (model, memory_mb)
    gpu_runtime: bool
    runtimes: tuple[str, ...]
    images: tuple[str, ...]
    score_gflops: float
    gpu_gflops: float | None
    tier: str
    price: float
    capacity: int
    network_allowed: bool
    addrs: tuple[str, ...] = ()
    version: str = ""
    gpu_driver: str = ""
    """The GPU driver's version ("" without GPUs); with ``runtimes``, the
    image's id and the GPU models it makes a job's determinism class
    (``placement.determinism_class``)."""
    image_ids: tuple[tuple[str, str], ...] = ()
    """(image name, image id) of local images, as far as the executor knows them."""
    image_archives: tuple[str, ...] = ()
    """Digests (``sha256:…``) of the image archives the shell keeps and
    serves to any peer (its image cache's, specs/PROTOCOL.md §5.1)."""
    image_pieces: tuple[str, ...] = ()
    """Digests of the piece lists of those archives: served to any peer
    too, but not advertised (a fetcher asks the archive's holders)."""


@dataclass(frozen=True)
class ExecutorHealth:
    """Outcome of a health check (or of a run failing for executor reasons)."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class JobSubmitted:
    spec: JobSpec
    job_id: str
    """Chosen by the shell (unique); the core records it."""
    queue_timeout_ms: int | None = None
    """How long the job may wait for a worker before it fails (``mesh submit
    --queue-timeout``); None: the node's ``max_queue_time_ms``, which also caps it."""


@dataclass(frozen=True)
class CancelRequested:
    job_id: str


@dataclass(frozen=True)
class RetryRequested:
    job_id: str


@dataclass(frozen=True)
class InputsFetched:
    job_id: str
    attempt: int
    replica: int
    ok: bool
    error: str = ""
    fault: str = "worker"
    """Whose fault a failed fetch is: ``job`` for an input the submitter named
    (a URI) that cannot be fetched, ``worker`` otherwise."""


@dataclass(frozen=True)
class ExecutionProgress:
    """Output a running job wrote: ``log`` is the bytes of ``stream`` from
    byte ``offset`` on, read at wall time ``ts_ms`` (the shell's stamp)."""

    job_id: str
    attempt: int
    replica: int
    stream: str
    offset: int
    ts_ms: int
    log: bytes


@dataclass(frozen=True)
class ExecutionFinished:
    job_id: str
    attempt: int
    replica: int
    status: str
    exit_code: int | None
    reason: str
    duration_ms: int
    cpu_ms: int | None
    peak_memory_bytes: int | None
    output_digest: str | None
    output_size: int
    executor_fault: bool = False
    """True when the executor itself failed (not the job): counts against warmth."""
    image_id: str = ""
    """The id of the image the run ran ("" if none or unknown)."""
    fault: str = ""
    """Whose fault a failed run is, as the executor classed it (``job`` or
    ``worker``; "" for a success or when not stated, see ``wire.fault_of``)."""
    manifest_sig: str | None = None
    """The worker's signature of the output manifest, hex (specs/JOB.md §3.1)."""
    log_digest: str | None = None
    """The run's stored log in the blob store (specs/JOB.md §6); None if it wrote nothing."""
    log_size: int = 0


@dataclass(frozen=True)
class BlobFetched:
    """An output archive arrived from a worker (digest checked by the shell)."""

    job_id: str
    attempt: int
    replica: int
    digest: str
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class CheckerFinished:
    """A user-supplied checker compared two outputs."""

    job_id: str
    a: str
    b: str
    equivalent: bool


@dataclass(frozen=True)
class ManifestStored:
    """The shell stored the countersigned manifest of a job's accepted result
    (``canonical``) as the blob ``manifest`` (specs/JOB.md §3.1)."""

    job_id: str
    canonical: str
    manifest: str


@dataclass(frozen=True)
class ShutdownRequested:
    """The shell is stopping the node cleanly: the node publishes its leave
    notice (specs/PROTOCOL.md §7.1) and advertises no more."""


# ---------------------------------------------------------------- effects


@dataclass(frozen=True)
class Append:
    """Durably append a record to the node's event log."""

    kind: str
    body: dict[str, Any]
    key: bytes | None = None


@dataclass(frozen=True)
class Publish:
    topic: str
    data: bytes


@dataclass(frozen=True)
class Send:
    """Deliver an envelope on a direct stream; failure comes back as SendFailed."""

    to_peer: str
    data: bytes
    kind: str
    job_id: str | None = None
    ttl_ms: int | None = None
    """How long the message stays useful: a shell that could not send it
    within this drops it (an award comes back as ``SendFailed``). None: the
    shell's default."""
    coalesce: bool = True
    """Whether a newer message of the same kind and job may replace this one
    while it is queued (False for a heartbeat carrying live output)."""


@dataclass(frozen=True)
class FetchInputs:
    job_id: str
    attempt: int
    replica: int
    origin: str
    spec: JobSpec
    image_holders: tuple[str, ...] = ()
    """Peers besides the origin whose live advert lists the job's image
    archive (``spec.image_blob``), at most ``max_image_holders``: the shell
    may fetch the archive's ranges from them too."""


@dataclass(frozen=True)
class StartExecution:
    job_id: str
    attempt: int
    replica: int
    spec: JobSpec
    timeout_s: float
    """Already capped by the job's budget."""


@dataclass(frozen=True)
class CancelExecution:
    job_id: str
    attempt: int
    replica: int
    reason: str


@dataclass(frozen=True)
class FetchBlob:
    """Fetch an output archive from a worker into the local blob store."""

    job_id: str
    attempt: int
    replica: int
    from_peer: str
    digest: str


@dataclass(frozen=True)
class RunChecker:
    """Compare two output digests of one job; the verdict comes back as ``CheckerFinished``."""

    job_id: str
    image: str
    """The job's checker image, or "" for none."""
    a: str
    b: str
    tolerance: Tolerance | None = None
    """The job's numeric tolerance, used when there is no checker image (None:
    exact comparison)."""


@dataclass(frozen=True)
class JobLog:
    """Live output of one run of a job we originated, for whoever follows it."""

    job_id: str
    attempt: int
    replica: int
    chunks: tuple[LogChunk, ...]


@dataclass(frozen=True)
class FetchLog:
    """Fetch a finished run's stored log from its worker into the local blob
    store (best effort: no outcome comes back; the job does not wait for it)."""

    job_id: str
    attempt: int
    replica: int
    from_peer: str
    digest: str


@dataclass(frozen=True)
class SetPeerScore:
    """Tell the network layer a peer's standing (feeds GossipSub P5 / blocking)."""

    peer_id: str
    reputation: float
    banned: bool


@dataclass(frozen=True)
class AdvertTopics:
    """The adverts topics this node listens on from now (its shard's, and
    during a change of shard count its old one's too, specs/PROTOCOL.md
    §5.2): the shell subscribes to each and leaves any other adverts topic."""

    topics: tuple[str, ...]


Effect = (
    Append
    | Publish
    | Send
    | FetchInputs
    | StartExecution
    | CancelExecution
    | FetchBlob
    | RunChecker
    | JobLog
    | FetchLog
    | SetPeerScore
    | AdvertTopics
)
Input = (
    Tick
    | GossipReceived
    | DirectReceived
    | SendFailed
    | InboxLoad
    | PeerConnected
    | LocalCapabilities
    | ExecutorHealth
    | JobSubmitted
    | CancelRequested
    | RetryRequested
    | InputsFetched
    | ExecutionProgress
    | ExecutionFinished
    | BlobFetched
    | CheckerFinished
    | ManifestStored
    | ShutdownRequested
)
