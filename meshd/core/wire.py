"""Wire format: signed, versioned, size-bounded protocol messages.

Theory of operation
-------------------
Every protocol message is an *envelope*::

    payload  = msgpack([schema_version, type, sender_public_key, ts_ms, nonce, body])
    envelope = msgpack([payload, signature])
    signature = Ed25519(sender_key, b"meshd-msg-v1\\x00" + payload)

``body`` is a msgpack map validated by the pydantic model registered for
``type``. The signature covers the exact payload bytes, so a message can be
forwarded, stored and re-verified by anyone without re-encoding.

Rules:
- :func:`open_envelope` never raises on peer input: it returns a
  :class:`Rejected` with a reason code (counted by the node) or an
  :class:`Opened` message. Size is checked before any parsing.
- Freshness and replay are checked by the node (it owns the clock and the
  replay cache); this module only decodes and verifies signatures.
- :func:`seal` is for our own messages; misuse there is an assertion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .identity import (
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    Identity,
    peer_id_from_public_key,
    verify_signature,
)
from .params import PROTOCOL_VERSION

SIGNING_DOMAIN = b"meshd-msg-v1\x00"
NONCE_LEN = 8
MAX_TYPE_LEN = 32

MAX_ATTEMPT = 1_000_000
"""Highest offer round (``attempt``) of one job. An origin fails a job rather
than open round MAX_ATTEMPT + 1."""
MAX_REPLICA = 1_000
"""Highest run index (``replica``) of one job: every award, refused or not,
takes the next index. An origin fails a job rather than exceed it."""
MAX_ADVERT_ADDRS = 16
"""Listen addresses an advert may carry (each at most 256 characters)."""
MAX_ADVERT_IMAGES = 256
"""Image names an advert may list; a node with more advertises the first ones."""
MAX_ADVERT_ARCHIVES = 64
"""Image archives (their blob digests) an advert may list as served by its
node (specs/PROTOCOL.md §5.1); a node holding more advertises the most
recently used."""
MAX_ADVERT_TTL_MS = 3_600_000
MAX_ADVERT_SHARDS = 65_536
"""Most advert shards a node may say it is in (a power of two, specs/PROTOCOL.md §5.2)."""
"""Longest validity an advert may claim (its sender scales it with its heartbeat interval)."""
LEAVE_TTL_MS = 1
"""The ``ttl_ms`` that makes an advert a *leave notice* (specs/PROTOCOL.md
§7.1): its author is shutting down cleanly, and a receiver drops it from its
view at once. A heartbeat never carries it (``peers.advert_ttl_for``); a
receiver that does not know the rule keeps the entry for 1 ms, i.e. drops it
too."""
MAX_HEARTBEAT_LOG_BYTES = 16 * 1024
"""Live log bytes one heartbeat may carry (all its chunks together); the
worker keeps at most this much between two heartbeats and drops the rest from
the live stream only (the full log is the run's stored log, ``Result.log_digest``)."""
MAX_HEARTBEAT_LOG_CHUNKS = 64
"""Live log chunks one heartbeat may carry."""

PeerId = Annotated[str, Field(min_length=1, max_length=128)]
JobId = Annotated[str, Field(min_length=8, max_length=64)]
MAX_EXCLUDE = 64
"""Workers an offer may name as excluded (the origin sends the first, in peer-id order)."""
MAX_SHORT_TEXT = 512
"""Characters of a reason or other short text in a message."""
ShortText = Annotated[str, Field(max_length=MAX_SHORT_TEXT)]
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


MAX_INT = 2**63 - 1
"""No integer on the wire exceeds a signed 64-bit one (``Body`` checks every field)."""
MIN_INT = -MAX_INT - 1
"""Nor is any below one."""
MAX_CREDITS = 1e12
"""Largest price, budget or credit amount a message may carry."""
MAX_TIMEOUT_S = 7 * 86_400
"""Longest job time-out (the job descriptor's own bound)."""
MAX_MS = 30 * 86_400_000
"""Longest duration or delay a message may state in milliseconds (30 days)."""
MAX_BYTES = 2**50
"""Largest memory or output size a message may state."""
MAX_GFLOPS = 1e9
"""Largest compute score a message may claim."""
MAX_DET_CLASS = 64
"""Characters of a determinism class (``Bid.det_class``, ``Result.det_class``):
printable ASCII; the reference worker sends ``dc1:`` and 32 hex digits."""
DetClass = Annotated[str, Field(max_length=MAX_DET_CLASS, pattern=r"^[!-~]*$")]


Attempt = Annotated[int, Field(ge=0, le=MAX_ATTEMPT)]
Replica = Annotated[int, Field(ge=0, le=MAX_REPLICA)]


class Body(BaseModel):
    """Every message body. Floats must be finite (no NaN or infinities), every
    integer fits in a signed 64-bit one, and every numeric field has its own
    range below: a value outside is rejected with a reason code
    (``non_finite``, ``out_of_range``), never raised and never forwarded."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ints_fit(self) -> Body:
        for name, value in self.__dict__.items():
            if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
                raise ValueError(f"{name}: integer out of range")
        return self


class GpuInfo(Body):
    model: Annotated[str, Field(max_length=128)]
    memory_mb: Annotated[int, Field(ge=0, le=MAX_BYTES >> 20)]


class Advert(Body):
    """Capability advert; also the liveness heartbeat (valid for ``ttl_ms``)."""

    seq: Annotated[int, Field(ge=0, le=MAX_INT)]
    ttl_ms: Annotated[int, Field(gt=0, le=MAX_ADVERT_TTL_MS)]
    addrs: Annotated[
        list[Annotated[str, Field(max_length=256)]], Field(max_length=MAX_ADVERT_ADDRS)
    ] = []
    cores: Annotated[int, Field(ge=0, le=100_000)]
    ram_mb: Annotated[int, Field(ge=0, le=MAX_BYTES >> 20)]
    disk_free_mb: Annotated[int, Field(ge=0, le=MAX_BYTES >> 20)] = 0
    gpus: Annotated[list[GpuInfo], Field(max_length=64)] = []
    gpu_runtime: bool = False
    runtimes: Annotated[list[Literal["docker", "process"]], Field(max_length=4)] = []
    images: Annotated[
        list[Annotated[str, Field(max_length=255)]], Field(max_length=MAX_ADVERT_IMAGES)
    ] = []
    image_archives: Annotated[list[Digest], Field(max_length=MAX_ADVERT_ARCHIVES)] = []
    """Digests of the image archives this node serves to any peer (§5.1)."""
    score_gflops: Annotated[float, Field(ge=0, le=MAX_GFLOPS)]
    gpu_gflops: Annotated[float, Field(ge=0, le=MAX_GFLOPS)] | None = None
    tier: Literal["cpu", "consumer-gpu", "datacenter-gpu"] = "cpu"
    price: Annotated[float, Field(ge=0, le=1e6)]
    running: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    queued: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    capacity: Annotated[int, Field(ge=0, le=100_000)] = 1
    warm: bool = False
    cold_reason: ShortText | None = None
    network_allowed: bool = False
    version: Annotated[str, Field(max_length=32)] = ""
    shards: Annotated[int, Field(ge=1, le=MAX_ADVERT_SHARDS)] = 1
    """The advert shard count its node is in (§5.2); left out of the encoding
    at 1, so a mesh of one shard speaks the unsharded protocol byte for byte."""

    omitted_at_default: ClassVar[tuple[str, ...]] = ("shards",)

    @property
    def leaving(self) -> bool:
        """A leave notice (``ttl_ms == LEAVE_TTL_MS``): the author is shutting down."""
        return self.ttl_ms == LEAVE_TTL_MS


class OfferRequirements(Body):
    cpus: Annotated[float, Field(gt=0, le=1024)] = 1.0
    memory_mb: Annotated[int, Field(ge=0, le=MAX_BYTES >> 20)] = 256
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    gpu_min_memory_mb: Annotated[int, Field(ge=0, le=MAX_BYTES >> 20)] = 0
    tier: Literal["cpu", "consumer-gpu", "datacenter-gpu"] | None = None
    runtime: Literal["docker", "process"] | None = None
    network: bool = False
    image: Annotated[str, Field(max_length=255)]
    image_id: Digest | None = None
    """The image id the job pins (``sha256:…``) when its image travels: a
    worker that lacks it fetches it from the origin instead of declining."""
    image_size: Annotated[int, Field(ge=0, le=MAX_BYTES)] = 0
    """Bytes of the image's archive to fetch (0: the image does not travel)."""


class Offer(Body):
    """A job looking for workers (gossiped; small: the descriptor travels in the award)."""

    job_id: JobId
    attempt: Annotated[int, Field(ge=1, le=MAX_ATTEMPT)]
    spec_digest: Digest
    requirements: OfferRequirements
    estimated_flops: Annotated[float, Field(ge=0, le=1e21)] | None = None
    expected_flops: Annotated[float, Field(ge=0, le=1e21)] | None = None
    """The origin's guess at the work when the job gives no ``estimated_flops``
    (learned from earlier runs of its image, else a default): it times bids,
    it does not price them (PROTOCOL.md §8.2)."""
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)]
    max_budget: Annotated[float, Field(gt=0, le=MAX_CREDITS)] | None = None
    """What one run of this round may cost: the job's budget less what its
    other runs have cost or may still cost, shared among the round's slots."""
    credit_rate: Annotated[float, Field(gt=0, le=1000)] = 1.0
    speed: Literal["fast", "balanced", "cheap"] = "balanced"
    bid_window_ms: Annotated[int, Field(gt=0, le=60_000)]
    slots: Annotated[int, Field(ge=1, le=5)] = 1
    exclude: Annotated[list[PeerId], Field(max_length=MAX_EXCLUDE)] = []


class Bid(Body):
    job_id: JobId
    attempt: Attempt
    price: Annotated[float, Field(ge=0, le=MAX_CREDITS)]
    """Estimated total credits for the job at this worker."""
    est_start_ms: Annotated[int, Field(ge=0, le=MAX_MS)]
    """Expected wait before the job starts (relative)."""
    est_duration_ms: Annotated[int, Field(ge=0, le=MAX_MS)]
    score_gflops: Annotated[float, Field(ge=0, le=MAX_GFLOPS)]
    running: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    queued: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    gpus: Annotated[list[GpuInfo], Field(max_length=64)] = []
    det_class: DetClass = ""
    """The determinism class the job would run in here (specs/CREDITS.md §5);
    "" when not stated (older peers)."""


class Decline(Body):
    job_id: JobId
    attempt: Attempt
    reason: ShortText


class Award(Body):
    job_id: JobId
    attempt: Attempt
    replica: Replica = 0
    spec: dict[str, Any]
    """The full job descriptor (validated by the worker as a JobSpec)."""
    price: Annotated[float, Field(ge=0, le=MAX_CREDITS)]
    lease_ms: Annotated[int, Field(gt=0, le=MAX_MS)]


class AwardReply(Body):
    job_id: JobId
    attempt: Attempt
    replica: Replica = 0
    accepted: bool
    reason: ShortText = ""


class LogChunk(Body):
    """Bytes a run wrote to one of its streams, from byte ``offset`` of that
    stream on, first read at wall time ``ts_ms`` (specs/JOB.md §6)."""

    stream: Literal["stdout", "stderr"]
    offset: Annotated[int, Field(ge=0, le=MAX_BYTES)]
    ts_ms: Annotated[int, Field(ge=0, le=MAX_INT)]
    data: Annotated[bytes, Field(max_length=MAX_HEARTBEAT_LOG_BYTES)]


class Heartbeat(Body):
    job_id: JobId
    attempt: Attempt
    replica: Replica = 0
    state: Literal["queued", "fetching", "running", "finished"]
    elapsed_ms: Annotated[int, Field(ge=0, le=MAX_MS)] = 0
    log: Annotated[list[LogChunk], Field(max_length=MAX_HEARTBEAT_LOG_CHUNKS)] = []
    """Live output read since the previous heartbeat, in the order it was
    read; at most ``MAX_HEARTBEAT_LOG_BYTES`` of data in all."""

    @model_validator(mode="after")
    def _log_fits(self) -> Heartbeat:
        if sum(len(c.data) for c in self.log) > MAX_HEARTBEAT_LOG_BYTES:
            raise ValueError("log: more than MAX_HEARTBEAT_LOG_BYTES in all")
        return self


class HeartbeatReply(Body):
    job_id: JobId
    attempt: Attempt
    replica: Replica = 0
    keep: bool
    """False: the origin no longer wants this run (cancelled, lease lost)."""


class Result(Body):
    job_id: JobId
    attempt: Attempt
    replica: Replica = 0
    status: Literal["succeeded", "failed", "timeout", "oom", "output_limit", "cancelled", "error"]
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**32)] | None = None
    reason: ShortText = ""
    output_digest: Digest | None = None
    output_size: Annotated[int, Field(ge=0, le=MAX_BYTES)] = 0
    duration_ms: Annotated[int, Field(ge=0, le=MAX_MS)] = 0
    cpu_ms: Annotated[int, Field(ge=0, le=MAX_MS)] | None = None
    peak_memory_bytes: Annotated[int, Field(ge=0, le=MAX_BYTES)] | None = None
    score_gflops: Annotated[float, Field(ge=0, le=MAX_GFLOPS)] = 0.0
    det_class: DetClass = ""
    """The determinism class the run ran in (specs/CREDITS.md §5); "" when not
    stated (older peers)."""
    fault: Literal["", "job", "worker"] = ""
    """Whose fault a failed run is (PROTOCOL.md §10): ``job`` (it exited
    nonzero, hit its timeout or memory limit, wrote too much, or named an input
    that cannot be fetched) or ``worker`` (the executor or the node failed); ""
    for a succeeded run, or when not stated (then :func:`fault_of` its status)."""
    manifest_sig: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")] | None = None
    """The worker's Ed25519 signature of the output archive's manifest, in
    hex (specs/JOB.md §3.1); None without outputs or from older peers."""
    log_digest: Digest | None = None
    """The run's stored log (specs/JOB.md §6), a blob its origin may fetch
    from the worker; None when the run wrote nothing."""
    log_size: Annotated[int, Field(ge=0, le=MAX_BYTES)] = 0


JOB_FAULT_STATUSES = frozenset({"failed", "timeout", "oom", "output_limit"})
"""Result statuses that are the job's own doing when a run does not say whose fault it is."""


def fault_of(status: str, stated: str = "") -> str:
    """Whose fault a run with ``status`` is: ``stated`` when given, else
    ``job`` for the job-caused statuses, ``worker`` for any other failure,
    "" for a success."""
    if status == "succeeded":
        return ""
    if stated:
        return stated
    return "job" if status in JOB_FAULT_STATUSES else "worker"


class ResultAck(Body):
    job_id: JobId
    attempt: Attempt
    replica: Replica = 0
    accepted: bool
    reason: ShortText = ""


class Cancel(Body):
    job_id: JobId
    attempt: Attempt
    reason: ShortText = ""


class Receipt(Body):
    """Credit for accepted work, signed by the origin (specs/CREDITS.md).

    ``seq`` is the origin's per-issuer record sequence number (shared with its
    attestations): two different signed records with one ``(issuer, seq)`` are
    proof of equivocation. 0 means unsequenced and earns nothing."""

    job_id: JobId
    attempt: Attempt
    replica: Replica = 0
    origin: PeerId
    worker: PeerId
    credits: Annotated[float, Field(ge=0, le=MAX_CREDITS)]
    duration_ms: Annotated[int, Field(ge=0, le=MAX_MS)]
    output_digest: Digest | None = None
    verdict: Literal["valid", "unverified", "job_failed"] = "unverified"
    """``job_failed``: the run failed by the job's own fault and the job
    failed with it; the submitter pays for the work (specs/CREDITS.md §7)."""
    seq: Annotated[int, Field(ge=0, le=MAX_INT)] = 0


class ReceiptCosign(Body):
    """The worker's countersignature: the origin's exact receipt envelope bytes,
    re-signed (as this message) by the worker named in it. Gossiped on the
    receipts topic; any node can verify both signatures."""

    receipt: Annotated[bytes, Field(min_length=1, max_length=4096)]


class Attestation(Body):
    """A peer's signed observation about another peer (feeds reputation).

    ``seq`` is the issuer's record sequence number (shared with its receipts)."""

    subject: PeerId
    job_id: JobId
    outcome: Literal["valid", "invalid", "abandoned"]
    seq: Annotated[int, Field(ge=0, le=MAX_INT)] = 0


class ReceiptReversal(Body):
    """Clawback: the origin takes back the receipt ``receipt_seq`` it issued to
    ``worker`` for ``job_id``, because an audit retracted the result it paid
    for (specs/CREDITS.md §7.6). Signed by the origin; ``seq`` is its record
    sequence number (shared with its receipts and attestations). Gossiped on
    the receipts topic and synced with the ledger like a countersigned receipt."""

    job_id: JobId
    worker: PeerId
    receipt_seq: Annotated[int, Field(ge=1, le=MAX_INT)]
    reason: Literal["retracted"] = "retracted"
    seq: Annotated[int, Field(ge=0, le=MAX_INT)] = 0


MAX_SYNC_ORIGINS = 1_024
"""Origins a ``ledger_summary`` may carry on the wire (a node sends at most
``ledger_sync_max_origins`` and refuses more)."""
MAX_SYNC_RECEIPTS = 256
"""Countersigned receipts a ``ledger_delta`` may carry on the wire (a node
sends at most ``ledger_sync_max_receipts``)."""
MAX_COSIGN_BYTES = 8_192
"""Size of one countersignature envelope in a ``ledger_delta`` (it wraps a
receipt envelope of at most 4,096 bytes)."""
SyncDigest = Annotated[bytes, Field(min_length=32, max_length=32)]


class OriginSummary(Body):
    """What a node holds of one origin's countersigned receipts with
    ``seq >= from_seq``: how many, and sha256 over their seqs in ascending
    order, each as 8 bytes big-endian (specs/CREDITS.md §7.4)."""

    origin: PeerId
    from_seq: Annotated[int, Field(ge=0, le=MAX_INT)] = 0
    count: Annotated[int, Field(ge=0, le=MAX_INT)]
    digest: SyncDigest


class LedgerSummary(Body):
    """Ledger anti-entropy, asking (direct): a summary of the sender's ledger
    for the origins with ``after < origin`` (and ``origin <= through`` unless
    ``through`` is nil), in peer-id order. An origin of that range it does not
    list is one it holds nothing of."""

    after: Annotated[str, Field(max_length=128)] = ""
    through: PeerId | None = None
    origins: Annotated[list[OriginSummary], Field(max_length=MAX_SYNC_ORIGINS)] = []


class LedgerDelta(Body):
    """Ledger anti-entropy, answering (direct): ledger envelopes (a
    ``receipt_cosign`` or a ``receipt_reversal``, exact bytes) the asker may lack; when cut short,
    where to go on from (``resume_origin``, from its ``resume_seq``)."""

    cosigns: Annotated[
        list[Annotated[bytes, Field(min_length=1, max_length=MAX_COSIGN_BYTES)]],
        Field(max_length=MAX_SYNC_RECEIPTS),
    ] = []
    resume_origin: PeerId | None = None
    resume_seq: Annotated[int, Field(ge=0, le=MAX_INT)] = 0


MAX_ADVERTS_RELAYED = 128
"""Adverts one ``advert_table`` may carry on the wire (a node sends at most
``advert_pull_max``, within ``max_message_bytes``)."""
MAX_RELAYED_ADVERT_BYTES = 16_384
"""Largest advert envelope relayed in an ``advert_table`` (a larger one is left out)."""


class AdvertPull(Body):
    """A newcomer asks a peer it connected to for the adverts it holds (direct)."""

    max_adverts: Annotated[int, Field(ge=1, le=MAX_ADVERTS_RELAYED)]


class AdvertTable(Body):
    """The answer to ``advert_pull``: signed advert envelopes as received from
    their authors (exact bytes), each checked by the asker as if gossiped."""

    adverts: Annotated[
        list[Annotated[bytes, Field(min_length=1, max_length=MAX_RELAYED_ADVERT_BYTES)]],
        Field(max_length=MAX_ADVERTS_RELAYED),
    ] = []


BODY_TYPES: dict[str, type[Body]] = {
    "advert": Advert,
    "offer": Offer,
    "bid": Bid,
    "decline": Decline,
    "award": Award,
    "award_reply": AwardReply,
    "heartbeat": Heartbeat,
    "heartbeat_reply": HeartbeatReply,
    "result": Result,
    "result_ack": ResultAck,
    "cancel": Cancel,
    "receipt": Receipt,
    "receipt_cosign": ReceiptCosign,
    "attestation": Attestation,
    "receipt_reversal": ReceiptReversal,
    "ledger_summary": LedgerSummary,
    "ledger_delta": LedgerDelta,
    "advert_pull": AdvertPull,
    "advert_table": AdvertTable,
}
TYPE_OF: dict[type[Body], str] = {v: k for k, v in BODY_TYPES.items()}

RejectReason = Literal[
    "oversize",
    "malformed",
    "bad_version",
    "unknown_type",
    "bad_signature",
    "bad_body",
    "non_finite",
    "out_of_range",
    "stale",
    "future",
    "replay",
    "wrong_sender",
    "banned",
]


@dataclass(frozen=True)
class Opened:
    """A decoded, signature-verified message."""

    type: str
    sender: str
    """Peer id derived from the signing key."""
    sender_key: bytes
    ts_ms: int
    nonce: bytes
    body: Any
    raw: bytes
    """The exact envelope bytes (for forwarding, storing, re-verifying)."""


@dataclass(frozen=True)
class Rejected:
    reason: RejectReason
    detail: str = ""


def _encoded(body: Body) -> dict[str, Any]:
    """A body's fields as sent: all of them, except those of its
    ``omitted_at_default`` that hold their default (fields added after peers
    that would refuse them were deployed)."""
    fields = body.model_dump(mode="python")
    for name in getattr(body, "omitted_at_default", ()):
        if fields[name] == type(body).model_fields[name].default:
            del fields[name]
    return fields


def seal(identity: Identity, body: Body, ts_ms: int, nonce: bytes) -> bytes:
    """Encode and sign one of our own messages (the caller supplies the nonce)."""
    assert type(body) in TYPE_OF, f"not a wire body: {type(body).__name__}"
    assert len(nonce) == NONCE_LEN
    payload = msgpack.packb(
        [
            PROTOCOL_VERSION,
            TYPE_OF[type(body)],
            identity.public_key,
            int(ts_ms),
            nonce,
            _encoded(body),
        ],
        use_bin_type=True,
    )
    return msgpack.packb([payload, identity.sign(SIGNING_DOMAIN + payload)], use_bin_type=True)


def _unpack(data: bytes, max_bytes: int) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        use_list=True,
        max_str_len=max_bytes,
        max_bin_len=max_bytes,
        max_array_len=4096,
        max_map_len=4096,
        max_ext_len=0,
    )


def peek_type(data: bytes, max_bytes: int) -> str | None:
    """The message type an envelope claims, read without checking its
    signature (tens of µs against an Ed25519 verify's ~150): a hint for
    scheduling only — the core still opens and verifies it. None if unreadable."""
    try:
        outer = _unpack(bytes(data), max_bytes)
        inner = _unpack(outer[0], max_bytes)
        mtype = inner[1]
    except Exception:
        return None
    return mtype if isinstance(mtype, str) else None


NON_FINITE = frozenset({"finite_number"})
OUT_OF_RANGE = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "value_error"}
)


def body_reason(error_type: str) -> RejectReason:
    """The reason code for a body that failed validation: ``non_finite`` (NaN or
    an infinity), ``out_of_range`` (a number outside its field's range), or
    ``bad_body`` (anything else)."""
    if error_type in NON_FINITE:
        return "non_finite"
    if error_type in OUT_OF_RANGE:
        return "out_of_range"
    return "bad_body"


def open_envelope(data: bytes, max_bytes: int) -> Opened | Rejected:
    """Decode and verify an envelope; never raises on bad input."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > max_bytes:
        return Rejected("oversize", f"{len(data)} bytes > {max_bytes}")
    try:
        outer = _unpack(bytes(data), max_bytes)
        if not (
            isinstance(outer, list)
            and len(outer) == 2
            and isinstance(outer[0], bytes)
            and isinstance(outer[1], bytes)
        ):
            return Rejected("malformed", "envelope is not [payload, signature]")
        payload, signature = outer
        inner = _unpack(payload, max_bytes)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        return Rejected("malformed", f"not msgpack: {type(exc).__name__}")
    if not (isinstance(inner, list) and len(inner) == 6):
        return Rejected("malformed", "payload is not a 6-element array")
    version, mtype, key, ts_ms, nonce, body = inner
    if version != PROTOCOL_VERSION:
        return Rejected("bad_version", f"schema_version {version!r}")
    if not isinstance(mtype, str) or mtype not in BODY_TYPES:
        return Rejected("unknown_type", repr(mtype)[:MAX_TYPE_LEN])
    if not (
        isinstance(key, bytes)
        and len(key) == PUBLIC_KEY_LEN
        and isinstance(ts_ms, int)
        and not isinstance(ts_ms, bool)
        and isinstance(nonce, bytes)
        and len(nonce) == NONCE_LEN
        and isinstance(body, dict)
        and len(signature) == SIGNATURE_LEN
    ):
        return Rejected("malformed", "bad header field")
    if not verify_signature(key, signature, SIGNING_DOMAIN + payload):
        return Rejected("bad_signature")
    try:
        model = BODY_TYPES[mtype].model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return Rejected(body_reason(first["type"]), f"{mtype}: {where}: {first['msg']}")
    return Opened(mtype, peer_id_from_public_key(key), key, ts_ms, nonce, model, bytes(data))


Message = (
    Advert
    | Offer
    | Bid
    | Decline
    | Award
    | AwardReply
    | Heartbeat
    | HeartbeatReply
    | Result
    | ResultAck
    | Cancel
    | Receipt
    | ReceiptCosign
    | Attestation
    | ReceiptReversal
    | LedgerSummary
    | LedgerDelta
)
