"""The shell's bounds: one frozen ``RuntimeParams`` (mirrored by specs/PROTOCOL.md §10.3).

The inbox's and the send queues' own bounds are nested tables
(``InboxParams`` in :mod:`meshd.core.inbox`, ``SendQueueParams`` in
:mod:`.sendq`); the protocol's are ``CoreParams``, the network's ``NetParams``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.core.inbox import InboxParams

from .sendq import SendQueueParams


@dataclass(frozen=True)
class RuntimeParams:
    inbox: InboxParams = field(default_factory=InboxParams)
    """The inbox's lanes and shedding (``meshd.core.inbox``; own table)."""
    sendq: SendQueueParams = field(default_factory=SendQueueParams)
    """The per-peer send queues (``meshd.runtime.sendq``; own table)."""
    direct_channels: bool = True
    """Direct messages go on one persistent channel per peer
    (``/meshd/direct/2``, ``meshd.net.channels``), falling back to a stream
    per message (``/meshd/direct/1``) for a peer that does not serve it;
    False: always a stream per message. ``config.toml``'s
    ``direct_channels``."""
    max_batch_inputs: int = 64
    """Inputs handled in one turn of the loop, whose log records go to disk in
    one synced write before any of their effects is carried out."""
    load_report_ms: int = 1_000
    """How often the core is told how congested the inbox is (``InboxLoad``)."""
    leave_timeout_s: float = 2.0
    """How long a clean shutdown (SIGTERM, SIGINT, ``mesh stop``) waits for
    the node's leave notice (specs/PROTOCOL.md §7.1) to be handed to its
    gossip peers before it stops anyway; peers that miss it drop the node
    when its advert expires."""
    max_concurrent_fetches: int = 8
    """Blob transfers (inputs, outputs) in flight at once."""
    blob_requests_per_s: float = 100.0
    """Blob range requests per second one peer may make of us (a token
    bucket); beyond it a request is refused as busy, before any look-up. An
    honest peer makes one per ``blob_chunk_bytes`` of each input of a run it
    holds, or of each output we made for it."""
    blob_request_burst: float = 256.0
    """Size of that bucket: range requests one peer may make at once."""
    blob_chunk_bytes: int = 4 * 1024 * 1024
    """Largest range of a blob one request asks for (and we serve): what one
    blob response carries, so it stays far below the network's
    ``max_response_bytes``."""
    blob_chunks_in_flight: int = 4
    """Ranges of one blob fetched at once; also how far ahead of the hashed
    prefix a range may be asked, so one fetch holds at most this many ranges
    in memory."""
    blob_chunk_retries: int = 3
    """Times a failed range (error, bad answer, holder gone) is asked again,
    each time of the next holder, before the fetch fails."""
    blob_chunk_timeout_s: float = 30.0
    """Deadline of one range request (stream, request, the range's bytes)."""
    blob_retry_pause_s: float = 0.2
    """Pause before a failed range is asked again."""
    blob_direct_wait_s: float = 10.0
    """A blob of more than one range whose holders are all reached only
    through a relay waits up to this long, after its first range, for a
    direct (hole-punched) connection to one of them before the rest travels
    over the relay, whose byte limit may cut it. 0: never waits."""
    blob_relay_reconnect_s: float = 10.0
    """After a range was lost with the relayed connection it travelled on
    (a relay's byte or time limit), how long the fetch waits for that holder
    to be reached again (a new circuit, or a direct connection) before it
    asks the range again. Over a relay a fetch asks one range at a time."""
    job_log_live_bytes: int = 1024 * 1024
    """Live output kept per run and stream at the origin for `mesh logs`
    until the run's stored log arrives (older bytes go first; they are then
    shown from the stored log)."""
    job_log_live_total_bytes: int = 64 * 1024 * 1024
    """Live output kept in all; beyond it the oldest job's live buffers go."""
    job_log_jobs: int = 10_000
    """Jobs whose live output is kept; the oldest job's goes first."""
    log_fetch_wait_s: float = 10.0
    """How long `mesh logs` waits for a finished run's stored log to arrive
    before it shows the live output in its place (and says so)."""
    log_fetch_attempts: int = 3
    """Tries to fetch a run's stored log from its worker (1 s, 2 s, ... apart)."""
    log_retention_s: float = 7 * 86_400.0
    """How long the stored logs of a finished job are kept at its origin after
    it finished (and, at the worker, after its result was acknowledged), while
    the blob store is under ``blob_store_max_bytes``; above it they go oldest
    first like other retained blobs."""
    credits_top_counterparties: int = 3
    """Counterparties listed per peer by `GET /v1/credits` (``top_payers`` /
    ``top_payees``, most credits first); ``mesh credits --peer`` lists all."""
    capabilities_refresh_s: float = 30.0
    """How often hardware, images and load are re-read for the advert."""
    health_recheck_s: float = 60.0
    """How often a cold node re-runs its executor health check."""
    score_refresh_s: float = 3_600.0
    """How often the compute score is re-measured."""
    blob_store_max_bytes: int = 20 * 1024**3
    """Cap on the blob store's bytes (20 GiB; ``blob_store_max_bytes`` in
    config.toml overrides it). Above it the collector removes the oldest
    retained blobs, and uploads through the control API are refused
    (``blob_store_full``); blobs accepted work needs are still written."""
    blob_retention_s: float = 86_400.0
    """How long the blobs of a finished job (its inputs and outputs, at its
    origin) and the outputs we made for an acknowledged result (at the worker)
    are kept after the job finished or the result was acknowledged, while
    the store is under its cap."""
    blob_grace_s: float = 600.0
    """A blob written less than this long ago is never collected: an upload
    whose job is not submitted yet, an output not yet reported to the core."""
    blob_gc_interval_s: float = 60.0
    """How often the blob collector runs (and at once when an upload finds
    the store full)."""
    blob_gc_max_deletes: int = 1_000
    """Blobs one collector pass removes at most (bounded work per pass)."""
    image_cache_max_bytes: int = 10 * 1024**3
    """Engine bytes of the job images this node loaded itself (images that
    travelled, ``meshd.runtime.images``); beyond it the least recently used
    that no live run uses are removed. Images meshd did not load are never
    removed."""
    image_archives_max_bytes: int = 4 * 1024**3
    """Blob-store bytes of the archives of loaded images this node keeps and
    serves to any peer (specs/PROTOCOL.md §5.1); beyond it the archives of
    the least recently used images are deleted (the images stay). 0: keep
    none, serve none. An evicted image loses its archive too."""
    image_piece_bytes: int = 4 * 1024**2
    """Piece size of the image archives this node saves as an origin: each
    archive gets a piece list (the sha256 of each piece, specs/PROTOCOL.md
    §5.1) so a worker checks every range on arrival and streams checked bytes
    into ``docker load`` while the fetch goes on. Equal to
    ``blob_chunk_bytes``: one range is one piece (a worker whose
    ``blob_chunk_bytes`` is smaller than a descriptor's ``piece_bytes``
    checks the whole archive before loading, as without a piece list).
    64 KiB to 64 MiB."""
    image_load_buffer_pieces: int = 4
    """Checked pieces of an image archive waiting for ``docker load`` at
    most (memory: this many × ``piece_bytes``); when the engine reads slower
    than the fetch, the fetch waits."""
    verified_cache_entries: int = 512
    """Envelopes the gossip validator opened, kept until the core opens them
    (so a signature is verified once); a miss only costs a second check. At
    most this many × ``max_message_bytes`` of memory, typically a few hundred KB."""
    dashboard_streams: int = 4
    """Live dashboard streams (``GET /v1/dashboard/stream``) served at once;
    one more is answered 503 ``too_many_streams``. Each holds one API
    connection and one snapshot: the last it sent."""
    dashboard_interval_s: float = 1.0
    """How often a live dashboard stream builds a snapshot; it sends it only
    when it differs from the last one sent (so at most one event per interval
    and per stream, and nothing queues behind a slow reader)."""
    dashboard_jobs: int = 50
    """Jobs in a dashboard snapshot (the newest submitted; `mesh jobs` lists all)."""
    dashboard_contributors: int = 50
    """Peers on the dashboard's contributor wall (most verified credits first)."""
    dashboard_audit_records: int = 500
    """Event-log records the dashboard's audit verifies per snapshot (hash
    link and signature, about 170 µs each, in a worker thread), so a long
    log is checked in bounded steps and each new record once."""
