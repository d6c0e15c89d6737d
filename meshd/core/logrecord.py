"""Event-log records: encoding, hashing, signing, decoding and chain verification.

This module is the executable form of ``specs/EVENT-LOG.md``. It is pure: no
files, no clock, no randomness, no plyvel. The LevelDB log
(``meshd.store.eventlog``), the in-memory log (``meshd.testing.memlog``), the
simulator and third-party auditors all build on it.

Rules:
- A record *is* its stored bytes. Hashes and signatures are always computed
  over the bytes as stored or received, never over a re-encoding of decoded
  values (eventlog note, rule 6).
- The stored form is a msgpack array ``[payload: bin, signature: bin 64]`` with
  minimal-length bin headers (checked on decode, so nobody but the author can
  produce a second byte string carrying the same signed payload). The payload
  is a msgpack array ``[version, seq, prev_hash, ts_ms, kind, body]``.
- ``signature = Ed25519(SIGNING_DOMAIN || payload)``; ``hash = sha256(record)``.
- :func:`decode_record` raises nothing but :class:`RecordError` (bad bytes:
  the author's or the storage's fault). Encoding raises :class:`LogInputError`
  (bad values: the caller's fault). Chain checks raise :class:`ChainError`
  naming the first bad sequence number.
- Every bound is a field of :class:`LogParams`; the defaults of its format
  limits (body size, kind length, body depth) are what every verifier applies.
- The errors of every log implementation (:class:`LogError` and subclasses)
  live here, so the simulator and the CLI can catch them without plyvel.

Theory of operation: a writer calls :func:`plan_batch` with its head and the
items to append; the plan holds signed records, ready to be written in chunks
of ``max_batch_records`` (one synced write each), and the record to hand back
for every item (an existing one for a repeated idempotency key). A reader
feeds stored bytes to :class:`ChainChecker` (or :func:`verify_records`), which
decodes each record and checks seq continuity, hash links and signatures.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshd.core.identity import peer_id_from_public_key

FORMAT_VERSION = 1
HASH_LEN = 32
SIGNATURE_LEN = 64
PUBLIC_KEY_LEN = 32
ZERO_HASH = bytes(HASH_LEN)
GENESIS_KIND = "genesis"
MAX_SEQ = 2**63 - 1
MAX_TS_MS = 2**63 - 1
#: Prefix of every signed message; keeps a record signature from being valid
#: for any other message type signed with the same node key.
SIGNING_DOMAIN = b"meshd/event-log/v1\x00"
#: Fixed bytes of a record besides kind and body, rounded up: envelope (1 + 5
#: + 2 + 64), payload array header and the four fixed fields (1 + 1 + 9 + 34 + 9
#: + 2 for the kind's str header).
RECORD_OVERHEAD_BYTES = 160

_KIND_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_ENVELOPE_TAG = 0x92
_PAYLOAD_TAG = 0x96
_SIG_HEADER = b"\xc4\x40"


@dataclass(frozen=True)
class LogParams:
    """Bounds of the event log. Defaults are the format limits of EVENT-LOG v1."""

    max_batch_records: int = 64
    """Records per synced write (group commit); larger batches are split."""
    max_items_per_call: int = 4096
    """Items accepted by one ``append_batch`` call; more is a caller error."""
    max_body_bytes: int = 65536
    """Largest encoded body (msgpack bytes) of one record."""
    max_kind_len: int = 64
    """Longest kind, in UTF-8 bytes."""
    max_body_depth: int = 32
    """Deepest nesting of arrays and maps in a body."""
    max_key_bytes: int = 128
    """Longest idempotency key (local index only, not part of the record)."""
    paranoid_checks: bool = True
    """Open LevelDB with ``paranoid_checks`` (EventLog only)."""
    verify_checksums: bool = True
    """Verify LevelDB block checksums on every read (EventLog only)."""

    def __post_init__(self) -> None:
        for name in (
            "max_batch_records",
            "max_items_per_call",
            "max_body_bytes",
            "max_kind_len",
            "max_body_depth",
            "max_key_bytes",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LogParams.{name} must be a positive int")

    @property
    def max_record_bytes(self) -> int:
        """Largest stored record: body and kind limits plus fixed overhead."""
        return self.max_body_bytes + self.max_kind_len + RECORD_OVERHEAD_BYTES


DEFAULT_PARAMS = LogParams()


class RecordError(Exception):
    """Bytes that are not a valid record. ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChainError(Exception):
    """A chain that does not verify; ``seq`` is the first bad sequence number."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


class LogError(Exception):
    """Base of the event log's errors."""


class LogLockedError(LogError):
    """Another process (or handle) has the log open."""


class LogCorruptError(LogError):
    """The stored chain does not verify. ``seq`` is the first bad record (0: unknown)."""

    def __init__(self, seq: int, reason: str, path: str = "") -> None:
        where = f"event log {path}: " if path else ""
        super().__init__(f"{where}corrupt at seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


class LogIdentityError(LogError):
    """The log was written by a different key than the one opening it."""


class LogClosedError(LogError):
    """The handle is closed (or broke on a failed write); reopen the log."""


class LogWriteError(LogError):
    """LevelDB refused a write; nothing of that chunk was acknowledged."""


class LogInputError(LogError, ValueError):
    """The caller asked to append something the format does not allow."""


class Signer(Protocol):
    """What signing needs from an identity (``meshd.core.identity.Identity`` fits)."""

    @property
    def public_key(self) -> bytes: ...

    @property
    def peer_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, eq=False)
class Record:
    """A decoded record. Equality and hash follow the stored bytes ``raw``."""

    seq: int
    prev_hash: bytes
    ts_ms: int
    kind: str
    body: Any
    signature: bytes
    hash: bytes
    raw: bytes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    @property
    def payload(self) -> bytes:
        """The signed payload bytes, sliced out of ``raw``."""
        return split_envelope(self.raw)[0]

    def verify_signature(self, public_key: bytes) -> bool:
        """True iff the signature is ``public_key``'s over the payload."""
        try:
            key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            return False
        return _verify(key, self)


@dataclass(frozen=True)
class AppendItem:
    """One thing to append. ``key`` makes the append idempotent."""

    kind: str
    body: Any
    ts_ms: int
    key: bytes | None = None


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_records`."""

    ok: bool
    count: int
    """Records that verified, in order, before the first bad one."""
    first_bad_seq: int | None = None
    reason: str | None = None
    head: tuple[int, bytes] | None = None
    """(seq, hash) of the last record that verified."""
    public_key: bytes | None = None


# --------------------------------------------------------------------------
# Encoding


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def check_kind(kind: object, params: LogParams = DEFAULT_PARAMS) -> str | None:
    """Why ``kind`` is not a valid kind, or None if it is."""
    if type(kind) is not str:
        return f"kind must be a str, not {type(kind).__name__}"
    return _kind_problem(kind, params.max_kind_len)


@functools.lru_cache(maxsize=1024)
def _kind_problem(kind: str, max_kind_len: int) -> str | None:
    if len(kind.encode("utf-8", "surrogatepass")) > max_kind_len:
        return f"kind {kind[:80]!r} is longer than max_kind_len={max_kind_len} bytes"
    if not _KIND_RE.fullmatch(kind):
        return f"kind {kind[:80]!r} must match [A-Za-z0-9][A-Za-z0-9_.:/-]*"
    return None


def encode_body(body: Any, params: LogParams = DEFAULT_PARAMS) -> tuple[bytes, Any]:
    """(msgpack bytes, decoded value) of ``body``; LogInputError if it cannot be a body.

    The decoded value is what every reader of the record will see (lists for
    tuples, and so on).
    """
    try:
        data = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LogInputError(f"body cannot be encoded as msgpack: {exc}") from None
    if len(data) > params.max_body_bytes:
        raise LogInputError(
            f"body is {len(data)} bytes encoded, over max_body_bytes={params.max_body_bytes}"
        )
    try:
        return data, _unpack_body(data, params)
    except RecordError as exc:
        raise LogInputError(f"body is not allowed in a record: {exc.reason}") from None


def make_record(
    signer: Signer,
    seq: int,
    prev_hash: bytes,
    ts_ms: int,
    kind: str,
    body: Any,
    params: LogParams = DEFAULT_PARAMS,
) -> Record:
    """Encode and sign one record. LogInputError on values the format refuses."""
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise LogInputError(f"seq must be an int in [1, {MAX_SEQ}], got {seq!r}")
    if type(ts_ms) is not int or not 0 <= ts_ms <= MAX_TS_MS:
        raise LogInputError(f"ts_ms must be an int in [0, {MAX_TS_MS}], got {ts_ms!r}")
    if type(prev_hash) is not bytes or len(prev_hash) != HASH_LEN:
        raise LogInputError("prev_hash must be 32 bytes")
    problem = check_kind(kind, params)
    if problem:
        raise LogInputError(problem)
    if (seq == 1) != (kind == GENESIS_KIND):
        raise LogInputError("seq 1, and only seq 1, has kind 'genesis'")
    if seq == 1 and prev_hash != ZERO_HASH:
        raise LogInputError("seq 1 has a zero prev_hash")
    body_bytes, decoded_body = encode_body(body, params)
    # One packb for the five header fields: fixarray(5) header swapped for fixarray(6).
    header = msgpack.packb([FORMAT_VERSION, seq, prev_hash, ts_ms, kind], use_bin_type=True)
    payload = bytes([_PAYLOAD_TAG]) + header[1:] + body_bytes
    signature = signer.sign(SIGNING_DOMAIN + payload)
    raw = bytes([_ENVELOPE_TAG]) + _bin_header(len(payload)) + payload + _SIG_HEADER + signature
    if seq == 1:
        try:
            _check_genesis_body(decoded_body)
        except RecordError as exc:
            raise LogInputError(exc.reason) from None
    return Record(
        seq, prev_hash, ts_ms, kind, decoded_body, signature, hashlib.sha256(raw).digest(), raw
    )


def genesis_body(signer: Signer) -> dict[str, Any]:
    """The body of a log's first record: who writes this log."""
    return {"public_key": signer.public_key, "peer_id": signer.peer_id}


def make_genesis(signer: Signer, ts_ms: int, params: LogParams = DEFAULT_PARAMS) -> Record:
    """Seq 1 of a new log, self-signed by ``signer``."""
    return make_record(signer, 1, ZERO_HASH, ts_ms, GENESIS_KIND, genesis_body(signer), params)


# --------------------------------------------------------------------------
# Decoding


def split_envelope(raw: bytes) -> tuple[bytes, bytes]:
    """(payload, signature) of a stored record; RecordError if malformed."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise RecordError(f"a record is bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) < 3 + len(_SIG_HEADER) + SIGNATURE_LEN or raw[0] != _ENVELOPE_TAG:
        raise RecordError("not a record envelope (msgpack array of 2)")
    tag = raw[1]
    if tag == 0xC4:
        size, start, minimum = raw[2], 3, 0
    elif tag == 0xC5:
        size, start, minimum = int.from_bytes(raw[2:4], "big"), 4, 0x100
    elif tag == 0xC6:
        size, start, minimum = int.from_bytes(raw[2:6], "big"), 6, 0x10000
    else:
        raise RecordError("payload is not a msgpack bin")
    if size < minimum:
        raise RecordError("payload bin header is not minimal")
    end = start + size
    if raw[end : end + 2] != _SIG_HEADER or len(raw) != end + 2 + SIGNATURE_LEN:
        raise RecordError("signature is not a 64-byte bin ending the record")
    return raw[start:end], raw[end + 2 :]


def _reject_ext(code: int, data: bytes) -> Any:
    raise RecordError(f"msgpack ext type {code} is not allowed")


def _pairs_to_dict(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for key, _ in pairs:
        if type(key) is not str:
            raise RecordError("map keys must be str")
    out = dict(pairs)
    if len(out) != len(pairs):
        raise RecordError("map has a duplicate key")
    return out


def _unpacker(size: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(
        raw=False,
        use_list=True,
        strict_map_key=False,
        timestamp=0,
        ext_hook=_reject_ext,
        object_pairs_hook=_pairs_to_dict,
        max_buffer_size=max(size, 1),
    )


_LEAF_TYPES = frozenset((type(None), bool, int, float, str, bytes))


def _check_body_value(body: Any, max_depth: int) -> None:
    """Only plain msgpack values (no ext, no Timestamp), nested at most max_depth deep."""
    level, depth = [body], 0
    while level:
        containers = []
        for value in level:
            kind = type(value)
            if kind is list:
                containers.append(value)
            elif kind is dict:
                containers.append(value.values())
            elif kind not in _LEAF_TYPES:
                raise RecordError(f"body holds a {kind.__name__}, not a plain msgpack value")
        if containers and depth >= max_depth:
            raise RecordError(f"body nests deeper than max_body_depth={max_depth}")
        level = [child for container in containers for child in container]
        depth += 1


def _unpack_body(data: bytes, params: LogParams) -> Any:
    """Decode a body we just encoded, under the same rules a reader applies."""
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            timestamp=0,
            ext_hook=_reject_ext,
            object_pairs_hook=_pairs_to_dict,
        )
    except RecordError:
        raise
    except Exception as exc:  # msgpack raises several types; all mean "bad bytes"
        raise RecordError(f"body is not valid msgpack ({type(exc).__name__})") from None
    _check_body_value(body, params.max_body_depth)
    return body


def _unpack_payload(payload: bytes, params: LogParams) -> tuple[list[Any], int]:
    """The six payload fields and the encoded body size."""
    unpacker = _unpacker(len(payload))
    try:
        unpacker.feed(payload)
        if payload[:1] != bytes([_PAYLOAD_TAG]) or unpacker.read_array_header() != 6:
            raise RecordError("payload is not a msgpack array of 6")
        fields = [unpacker.unpack() for _ in range(5)]
        body_start = unpacker.tell()
        fields.append(unpacker.unpack())
        end = unpacker.tell()
    except RecordError:
        raise
    except Exception as exc:  # msgpack raises several types; all mean "bad bytes"
        raise RecordError(f"payload is not valid msgpack ({type(exc).__name__})") from None
    if end != len(payload):
        raise RecordError("trailing bytes after payload")
    return fields, end - body_start


def _check_header(fields: list[Any], body_size: int, params: LogParams) -> None:
    version, seq, prev_hash, ts_ms, kind, body = fields
    if type(version) is not int or version != FORMAT_VERSION:
        raise RecordError(f"unknown format version {version!r}")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise RecordError("seq is not an int in [1, 2**63-1]")
    if type(prev_hash) is not bytes or len(prev_hash) != HASH_LEN:
        raise RecordError("prev_hash is not 32 bytes")
    if type(ts_ms) is not int or not 0 <= ts_ms <= MAX_TS_MS:
        raise RecordError("ts_ms is not an int in [0, 2**63-1]")
    problem = check_kind(kind, params)
    if problem:
        raise RecordError(problem)
    if body_size > params.max_body_bytes:
        raise RecordError(f"body is {body_size} bytes, over max_body_bytes={params.max_body_bytes}")
    _check_body_value(body, params.max_body_depth)
    if seq == 1:
        if kind != GENESIS_KIND or prev_hash != ZERO_HASH:
            raise RecordError("seq 1 must be a genesis record with a zero prev_hash")
        _check_genesis_body(body)
    elif kind == GENESIS_KIND:
        raise RecordError("kind 'genesis' is only allowed at seq 1")


def _check_genesis_body(body: Any) -> None:
    if not isinstance(body, dict) or set(body) != {"public_key", "peer_id"}:
        raise RecordError("genesis body must be a map of exactly public_key and peer_id")
    key, peer_id = body["public_key"], body["peer_id"]
    if type(key) is not bytes or len(key) != PUBLIC_KEY_LEN:
        raise RecordError("genesis public_key must be 32 bytes")
    if peer_id != peer_id_from_public_key(key):
        raise RecordError("genesis peer_id does not match its public_key")


def decode_record(raw: bytes, params: LogParams = DEFAULT_PARAMS) -> Record:
    """Decode stored bytes into a :class:`Record`. Raises only :class:`RecordError`.

    Checks structure and bounds; does not check the signature (that needs the
    author's key) or the chain (that needs the previous record).
    """
    if isinstance(raw, bytes | bytearray | memoryview) and len(raw) > params.max_record_bytes:
        raise RecordError(f"record is {len(raw)} bytes, over {params.max_record_bytes}")
    payload, signature = split_envelope(raw)
    fields, body_size = _unpack_payload(payload, params)
    _check_header(fields, body_size, params)
    raw = bytes(raw)
    _, seq, prev_hash, ts_ms, kind, body = fields
    return Record(seq, prev_hash, ts_ms, kind, body, signature, hashlib.sha256(raw).digest(), raw)


def genesis_public_key(record: Record) -> bytes:
    """The author key a genesis record names (RecordError if not a genesis)."""
    if record.seq != 1 or record.kind != GENESIS_KIND:
        raise RecordError("not a genesis record")
    return bytes(record.body["public_key"])


def _verify(key: Ed25519PublicKey, record: Record) -> bool:
    try:
        key.verify(record.signature, SIGNING_DOMAIN + record.payload)
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------
# Chains


class ChainChecker:
    """Incremental chain verification over stored records, in seq order.

    ``check_signatures=True`` verifies every signature (a full audit).
    ``False`` checks every hash link, the genesis signature, and — when
    :meth:`finish` is called — the last record's signature: enough, on a
    node's own disk, to prove the whole chain is the one its key signed.
    Feed records with :meth:`feed`; the first problem raises ChainError.
    """

    def __init__(
        self,
        public_key: bytes | None = None,
        *,
        after: tuple[int, bytes] | None = None,
        check_signatures: bool = True,
        params: LogParams = DEFAULT_PARAMS,
    ) -> None:
        if after is not None and public_key is None:
            raise ValueError("a segment that does not start at genesis needs the public key")
        self.params = params
        self.check_signatures = check_signatures
        self.expected_public_key = public_key
        self.public_key: bytes | None = None
        self._key: Ed25519PublicKey | None = None
        if public_key is not None:
            self._set_key(public_key, seq=after[0] + 1 if after else 1)
        self.head: tuple[int, bytes] = after if after is not None else (0, ZERO_HASH)
        self.count = 0
        self.last: Record | None = None
        self._last_verified = False

    def _set_key(self, public_key: bytes, seq: int) -> None:
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise ChainError(seq, "public key is not a valid Ed25519 key") from None
        self.public_key = public_key

    def feed(self, raw: bytes) -> Record:
        """Check the next record; return it decoded, or raise ChainError."""
        seq = self.head[0] + 1
        try:
            record = decode_record(raw, self.params)
        except RecordError as exc:
            raise ChainError(seq, f"undecodable record: {exc.reason}") from None
        if record.seq != seq:
            raise ChainError(seq, f"expected seq {seq}, found seq {record.seq}")
        if seq == 1:
            self._start_at_genesis(record)
        elif record.prev_hash != self.head[1]:
            raise ChainError(*self._blame_link(record))
        elif self.check_signatures and not self._verify(record):
            raise ChainError(seq, "bad signature")
        self.head = (seq, record.hash)
        self.count += 1
        self.last = record
        self._last_verified = self.check_signatures or seq == 1
        return record

    def finish(self) -> tuple[int, bytes]:
        """Verify the last record's signature if not yet done; return the head."""
        if self.last is not None and not self._last_verified:
            if not self._verify(self.last):
                raise ChainError(self.last.seq, "bad signature on the head record")
            self._last_verified = True
        return self.head

    def _verify(self, record: Record) -> bool:
        assert self._key is not None
        return _verify(self._key, record)

    def _start_at_genesis(self, record: Record) -> None:
        key = genesis_public_key(record)
        if self.expected_public_key is not None and key != self.expected_public_key:
            raise ChainError(1, "genesis names a different public key than expected")
        self._set_key(key, seq=1)
        if not self._verify(record):
            raise ChainError(1, "bad signature on the genesis record")

    def _blame_link(self, record: Record) -> tuple[int, str]:
        """Which record breaks a link: the one whose signature fails, else this one."""
        prev = self.last
        if prev is not None and not self._last_verified and not self._verify(prev):
            return prev.seq, "bad signature (the next record's prev_hash does not match it)"
        if not self._verify(record):
            return record.seq, "bad signature and prev_hash does not match the previous record"
        return record.seq, "prev_hash does not match the hash of the previous record"


def verify_records(
    raw_records: Iterable[bytes],
    public_key: bytes | None = None,
    *,
    after: tuple[int, bytes] | None = None,
    params: LogParams = DEFAULT_PARAMS,
) -> VerifyReport:
    """Verify a chain: decoding, seq order, hash links and every signature.

    With ``after=None`` the records must start at genesis; ``public_key``, if
    given, must match the genesis key. With ``after=(seq, hash)`` they continue
    a chain whose record ``seq`` has ``hash``, and ``public_key`` is required.
    Never raises on bad records: the report names the first bad seq.
    """
    try:
        checker = ChainChecker(public_key, after=after, check_signatures=True, params=params)
    except ChainError as exc:
        return VerifyReport(False, 0, exc.seq, exc.reason)
    try:
        for raw in raw_records:
            checker.feed(raw)
    except ChainError as exc:
        return VerifyReport(
            False,
            checker.count,
            exc.seq,
            exc.reason,
            checker.head if checker.count else None,
            checker.public_key,
        )
    if after is None and checker.count == 0:
        return VerifyReport(False, 0, 1, "no records: a log starts with its genesis record")
    return VerifyReport(
        True, checker.count, None, None, checker.head if checker.count else None, checker.public_key
    )


def is_equivocation(a: Record, b: Record, public_key: bytes) -> bool:
    """True iff ``a`` and ``b`` prove equivocation by ``public_key``: same seq,
    different signed payloads, both signatures valid."""
    return (
        a.seq == b.seq
        and a.payload != b.payload
        and a.verify_signature(public_key)
        and b.verify_signature(public_key)
    )


# --------------------------------------------------------------------------
# Planning appends (shared by every log implementation)


@dataclass(frozen=True)
class BatchPlan:
    """Signed records to write, and the record to return for each input item."""

    new: list[tuple[Record, bytes | None]] = field(default_factory=list)
    """New records in seq order, each with the idempotency key it consumes."""
    results: list[Record] = field(default_factory=list)

    def chunks(self, size: int) -> Iterable[list[tuple[Record, bytes | None]]]:
        """The new records in groups of at most ``size`` (one synced write each)."""
        for i in range(0, len(self.new), size):
            yield self.new[i : i + size]


def normalize_items(items: Sequence[Any], params: LogParams = DEFAULT_PARAMS) -> list[AppendItem]:
    """AppendItems from AppendItems or (kind, body, ts_ms[, key]) tuples."""
    if len(items) > params.max_items_per_call:
        raise LogInputError(
            f"{len(items)} items in one call, over max_items_per_call={params.max_items_per_call}"
        )
    out = []
    for i, item in enumerate(items):
        if isinstance(item, AppendItem):
            out.append(item)
        elif isinstance(item, tuple) and len(item) in (3, 4):
            out.append(AppendItem(*item))
        else:
            raise LogInputError(f"item {i}: expected AppendItem or (kind, body, ts_ms[, key])")
    return out


def _check_key(key: object, params: LogParams) -> None:
    if key is None:
        return
    if type(key) is not bytes or not 1 <= len(key) <= params.max_key_bytes:
        raise LogInputError(f"idempotency key must be 1..{params.max_key_bytes} bytes")


def plan_batch(
    signer: Signer,
    head: tuple[int, bytes],
    items: Sequence[AppendItem],
    lookup_key: Callable[[bytes], Record | None],
    params: LogParams = DEFAULT_PARAMS,
) -> BatchPlan:
    """Sign records for ``items`` on top of ``head``; nothing is written.

    An item whose key ``lookup_key`` already knows, or that repeats a key
    earlier in the same batch, yields that record and no new one. Any bad item
    raises LogInputError naming it, before anything could be written.
    """
    seq, prev_hash = head
    plan = BatchPlan()
    fresh: dict[bytes, Record] = {}
    for i, item in enumerate(items):
        _check_key(item.key, params)
        if item.kind == GENESIS_KIND:
            raise LogInputError(f"item {i}: kind 'genesis' is reserved for seq 1")
        existing = None
        if item.key is not None:
            existing = fresh.get(item.key) or lookup_key(item.key)
        if existing is not None:
            plan.results.append(existing)
            continue
        try:
            record = make_record(
                signer, seq + 1, prev_hash, item.ts_ms, item.kind, item.body, params
            )
        except LogInputError as exc:
            raise LogInputError(f"item {i} (kind {item.kind!r}): {exc}") from None
        seq, prev_hash = record.seq, record.hash
        if item.key is not None:
            fresh[item.key] = record
        plan.new.append((record, item.key))
        plan.results.append(record)
    return plan
