"""Wire envelopes (``meshd/core/wire.py``): seal/open, every rejection reason, fuzzing.

Rules checked (module header of wire.py):
- "open_envelope never raises on peer input: it returns a Rejected with a
  reason code ... or an Opened message. Size is checked before any parsing."
- "The signature covers the exact payload bytes."
"""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.core.identity import Identity, _public_key, peer_id_from_public_key
from meshd.core.params import PROTOCOL_VERSION
from meshd.core.wire import (
    BODY_TYPES,
    SIGNING_DOMAIN,
    Advert,
    AdvertPull,
    AdvertTable,
    Attestation,
    Award,
    AwardReply,
    Bid,
    Body,
    Cancel,
    Decline,
    GpuInfo,
    Heartbeat,
    HeartbeatReply,
    LedgerDelta,
    LedgerSummary,
    LogChunk,
    Offer,
    OfferRequirements,
    Opened,
    OriginSummary,
    Receipt,
    ReceiptCosign,
    ReceiptReversal,
    Rejected,
    Result,
    ResultAck,
    open_envelope,
    seal,
)

ALICE = Identity.from_seed_int(11)
MALLORY = Identity.from_seed_int(666)
MAX = 64 * 1024
NONCE = b"\x01" * 8
TS = 1_700_000_000_000
JOB = "job-0123456789ab"
DIGEST = "sha256:" + "ab" * 32

SAMPLES: list[Body] = [
    Advert(
        seq=1,
        ttl_ms=10_000,
        cores=4,
        ram_mb=8192,
        score_gflops=50.0,
        price=0.001,
        gpus=[GpuInfo(model="RTX 4090", memory_mb=24_576)],
        gpu_runtime=True,
        runtimes=["docker"],
        images=["meshd/busybox:1"],
        tier="consumer-gpu",
        warm=True,
    ),
    Offer(
        job_id=JOB,
        attempt=1,
        spec_digest=DIGEST,
        requirements=OfferRequirements(image="meshd/busybox:1", gpus=1),
        timeout_s=60.0,
        bid_window_ms=250,
        slots=2,
        exclude=["12D3KooWfoo"],
    ),
    Bid(job_id=JOB, attempt=1, price=1.5, est_start_ms=0, est_duration_ms=2_000, score_gflops=50.0),
    Decline(job_id=JOB, attempt=1, reason="busy: 4 running, 16 queued"),
    Award(
        job_id=JOB,
        attempt=1,
        replica=1,
        spec={"image": "x", "command": ["true"]},
        price=1.0,
        lease_ms=15_000,
    ),
    AwardReply(job_id=JOB, attempt=1, accepted=False, reason="busy"),
    Heartbeat(
        job_id=JOB,
        attempt=1,
        state="running",
        elapsed_ms=10,
        log=[
            LogChunk(stream="stdout", offset=0, ts_ms=TS, data=b"hello\n"),
            LogChunk(stream="stderr", offset=0, ts_ms=TS, data=b"oops\n"),
        ],
    ),
    HeartbeatReply(job_id=JOB, attempt=1, keep=True),
    Result(
        job_id=JOB,
        attempt=1,
        status="succeeded",
        exit_code=0,
        output_digest=DIGEST,
        output_size=10,
        duration_ms=1_000,
    ),
    ResultAck(job_id=JOB, attempt=1, accepted=True),
    Cancel(job_id=JOB, attempt=1, reason="cancelled by the user"),
    Receipt(
        job_id=JOB,
        attempt=1,
        origin="12D3KooWa",
        worker="12D3KooWb",
        credits=0.5,
        duration_ms=1_000,
        output_digest=DIGEST,
        verdict="valid",
    ),
    Attestation(subject="12D3KooWb", job_id=JOB, outcome="invalid"),
    ReceiptReversal(job_id=JOB, worker="12D3KooWb", receipt_seq=3, seq=4),
    AdvertPull(max_adverts=16),
    AdvertTable(adverts=[b"\x92\xc4\x01x\xc4\x01y"]),
    ReceiptCosign(receipt=b"\x92\xc4\x01x\xc4\x01y"),
    LedgerSummary(
        after="",
        through="12D3KooWz",
        origins=[OriginSummary(origin="12D3KooWb", from_seq=7, count=2, digest=b"\x01" * 32)],
    ),
    LedgerDelta(cosigns=[b"\x92\xc4\x01x\xc4\x01y"], resume_origin="12D3KooWb", resume_seq=9),
]


def sign_payload(identity: Identity, fields: list[object]) -> bytes:
    """Hand-build an envelope around arbitrary payload fields, correctly signed."""
    payload = msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb([payload, identity.sign(SIGNING_DOMAIN + payload)], use_bin_type=True)


def rejected(data: bytes) -> str:
    out = open_envelope(data, MAX)
    assert isinstance(out, Rejected), out
    return out.reason


def test_samples_cover_every_body_type() -> None:
    assert {type(b) for b in SAMPLES} == set(BODY_TYPES.values())


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_seal_open_round_trip(body: Body) -> None:
    data = seal(ALICE, body, TS, NONCE)
    out = open_envelope(data, MAX)
    assert isinstance(out, Opened)
    assert out.body == body
    assert out.sender == ALICE.peer_id
    assert out.sender_key == ALICE.public_key
    assert (out.ts_ms, out.nonce, out.raw) == (TS, NONCE, data)
    assert BODY_TYPES[out.type] is type(body)


def test_a_signer_s_key_is_parsed_once_and_a_forged_signature_still_fails() -> None:
    """The signer's peer id and key object are remembered per key (every
    message of a mesh repeats a few keys); what is remembered is the key,
    never a verdict: a bad signature by a remembered key is still refused."""
    peer_id_from_public_key.cache_clear()
    _public_key.cache_clear()
    for i in range(3):
        out = open_envelope(seal(ALICE, SAMPLES[2], TS, bytes([i]) * 8), MAX)
        assert isinstance(out, Opened) and out.sender == ALICE.peer_id
    assert peer_id_from_public_key.cache_info().misses == 1
    assert _public_key.cache_info()[:2] == (2, 1)  # (hits, misses)
    data = bytearray(seal(ALICE, SAMPLES[2], TS, NONCE))
    data[-1] ^= 0x01
    assert rejected(bytes(data)) == "bad_signature"


def test_bad_signature_is_rejected() -> None:
    data = bytearray(seal(ALICE, SAMPLES[2], TS, NONCE))
    data[-1] ^= 0x01  # last byte of the signature
    assert rejected(bytes(data)) == "bad_signature"


def test_signature_by_another_key_is_rejected() -> None:
    """Mallory re-signs nothing: she swaps Alice's key in but keeps her own signature."""
    payload, _sig = msgpack.unpackb(seal(ALICE, SAMPLES[2], TS, NONCE))
    forged_sig = MALLORY.sign(SIGNING_DOMAIN + payload)
    assert rejected(msgpack.packb([payload, forged_sig], use_bin_type=True)) == "bad_signature"


def test_signature_without_domain_prefix_is_rejected() -> None:
    payload, _ = msgpack.unpackb(seal(ALICE, SAMPLES[2], TS, NONCE))
    data = msgpack.packb([payload, ALICE.sign(payload)], use_bin_type=True)
    assert rejected(data) == "bad_signature"


@pytest.mark.parametrize("cut", [1, 10, 70, -1])
def test_truncated_envelope_is_malformed(cut: int) -> None:
    data = seal(ALICE, SAMPLES[3], TS, NONCE)
    assert rejected(data[:cut]) == "malformed"


def test_empty_and_non_envelope_are_malformed() -> None:
    assert rejected(b"") == "malformed"
    assert rejected(msgpack.packb({"a": 1})) == "malformed"
    assert rejected(msgpack.packb([b"x", b"y", b"z"])) == "malformed"
    assert rejected(msgpack.packb([b"\x93\x01\x02\x03", b"s" * 64])) == "malformed"


def test_wrong_version_is_rejected() -> None:
    body = SAMPLES[3].model_dump(mode="python")
    data = sign_payload(ALICE, [PROTOCOL_VERSION + 1, "decline", ALICE.public_key, TS, NONCE, body])
    assert rejected(data) == "bad_version"


def test_unknown_type_is_rejected() -> None:
    data = sign_payload(ALICE, [PROTOCOL_VERSION, "gimme_credits", ALICE.public_key, TS, NONCE, {}])
    out = open_envelope(data, MAX)
    assert isinstance(out, Rejected) and out.reason == "unknown_type"
    assert "gimme_credits" in out.detail


def test_oversize_is_rejected_before_parsing() -> None:
    data = seal(ALICE, SAMPLES[3], TS, NONCE)
    out = open_envelope(data, len(data) - 1)
    assert isinstance(out, Rejected) and out.reason == "oversize"
    assert isinstance(open_envelope(data, len(data)), Opened)
    # Garbage past the bound is refused as oversize, not parsed.
    assert open_envelope(b"\xff" * (MAX + 1), MAX) == Rejected(
        "oversize", f"{MAX + 1} bytes > {MAX}"
    )


def test_bad_header_fields_are_malformed() -> None:
    body = SAMPLES[3].model_dump(mode="python")
    short_nonce = sign_payload(
        ALICE, [PROTOCOL_VERSION, "decline", ALICE.public_key, TS, b"\x00", body]
    )
    bool_ts = sign_payload(
        ALICE, [PROTOCOL_VERSION, "decline", ALICE.public_key, True, NONCE, body]
    )
    short_key = sign_payload(ALICE, [PROTOCOL_VERSION, "decline", b"k" * 31, TS, NONCE, body])
    list_body = sign_payload(ALICE, [PROTOCOL_VERSION, "decline", ALICE.public_key, TS, NONCE, [1]])
    for data in (short_nonce, bool_ts, short_key, list_body):
        assert rejected(data) == "malformed"


@pytest.mark.parametrize(
    ("mtype", "body", "field", "reason"),
    [
        (
            "bid",
            {
                "job_id": JOB,
                "attempt": 1,
                "price": -1.0,
                "est_start_ms": 0,
                "est_duration_ms": 0,
                "score_gflops": 1.0,
            },
            "price",
            "out_of_range",
        ),
        ("decline", {"job_id": "short", "attempt": 1, "reason": "x"}, "job_id", "bad_body"),
        (
            "result",
            {"job_id": JOB, "attempt": 1, "status": "succeeded", "output_digest": "md5:abc"},
            "output_digest",
            "bad_body",
        ),
        ("cancel", {"job_id": JOB, "attempt": 1, "evil": True}, "evil", "bad_body"),
        (
            "heartbeat",
            {
                "job_id": JOB,
                "attempt": 1,
                "state": "running",
                "log": [
                    {"stream": "stdout", "offset": i * 9000, "ts_ms": TS, "data": b"x" * 9000}
                    for i in range(2)
                ],
            },
            "MAX_HEARTBEAT_LOG_BYTES",
            "out_of_range",
        ),
        (
            "heartbeat",
            {
                "job_id": JOB,
                "attempt": 1,
                "state": "running",
                "log": [{"stream": "stdin", "offset": 0, "ts_ms": TS, "data": b"x"}],
            },
            "stream",
            "bad_body",
        ),
        (
            "advert",
            {"seq": 1, "ttl_ms": 0, "cores": 1, "ram_mb": 1, "score_gflops": 1.0, "price": 0.0},
            "ttl_ms",
            "out_of_range",
        ),
    ],
)
def test_bad_body_field_is_rejected_naming_the_field(
    mtype: str, body: dict, field: str, reason: str
) -> None:
    data = sign_payload(ALICE, [PROTOCOL_VERSION, mtype, ALICE.public_key, TS, NONCE, body])
    out = open_envelope(data, MAX)
    assert isinstance(out, Rejected) and out.reason == reason
    assert field in out.detail


# ------------------------------------------------------------ hostile numbers

HOSTILE_FLOATS = [math.nan, math.inf, -math.inf, 1e300, -1e300]
HOSTILE_INTS = [2**63, 2**64 - 1, -(2**63)]  # msgpack carries no wider int


def _numeric_paths(value: object, path: tuple = ()) -> list[tuple[tuple, object]]:
    """Every (path, number) inside a sample body's plain form (bools excluded)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(path, value)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _numeric_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _numeric_paths(v, (*path, i))]
    return []


def _replaced(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (_replaced(v, rest, new) if k == head else v) for k, v in value.items()}
    assert isinstance(value, list)
    return [(_replaced(v, rest, new) if i == head else v) for i, v in enumerate(value)]


def _hostile_cases() -> list[tuple[str, tuple, object, dict]]:
    cases = []
    for sample in SAMPLES:
        mtype = next(t for t, cls in BODY_TYPES.items() if isinstance(sample, cls))
        plain = sample.model_dump(mode="python")
        for path, _number in _numeric_paths(plain):
            if path and path[0] == "spec":
                continue  # the job descriptor travels as data; parse_job_spec checks it
            for bad in HOSTILE_FLOATS + HOSTILE_INTS:
                cases.append((mtype, path, bad, plain))
    return cases


HOSTILE = _hostile_cases()


def test_every_numeric_field_of_every_message_is_exercised() -> None:
    types = {mtype for mtype, *_ in HOSTILE}
    assert types >= {"advert", "offer", "bid", "award", "result", "receipt", "heartbeat"}
    assert len(HOSTILE) > 200


@pytest.mark.parametrize(("mtype", "path", "bad", "plain"), HOSTILE)
def test_non_finite_and_extreme_numbers_are_rejected_with_a_reason(
    mtype: str, path: tuple, bad: object, plain: dict
) -> None:
    """Regression (issue 16): an award with price = inf was accepted and logged,
    and an offer with timeout_s = inf or 1e300 raised inside every core."""
    body = _replaced(plain, path, bad)
    data = sign_payload(ALICE, [PROTOCOL_VERSION, mtype, ALICE.public_key, TS, NONCE, body])
    out = open_envelope(data, MAX)
    assert isinstance(out, Rejected), f"{mtype}.{path} = {bad!r} was accepted"
    assert out.reason in ("non_finite", "out_of_range", "bad_body"), out
    if isinstance(bad, float) and not math.isfinite(bad):
        assert out.reason in ("non_finite", "bad_body")  # bad_body: an int field


# ------------------------------------------------------------ fuzzing


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    out = open_envelope(data, MAX)
    assert isinstance(out, Rejected)


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=8)
        | st.binary(max_size=70),
        lambda inner: (
            st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_arbitrary_msgpack_structures_never_raise(value: object) -> None:
    out = open_envelope(msgpack.packb([msgpack.packb(value), b"s" * 64]), MAX)
    assert isinstance(out, Rejected)
    out = open_envelope(msgpack.packb(value), MAX)
    assert isinstance(out, Rejected)


ENVELOPES = [seal(ALICE, b, TS, NONCE) for b in SAMPLES]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ENVELOPES), st.data())
def test_mutated_envelope_is_never_accepted(env: bytes, data: st.DataObject) -> None:
    """Any edit of a signed envelope is rejected (never raised, never Opened)."""
    kind = data.draw(st.sampled_from(["flip", "delete", "insert", "replace"]))
    i = data.draw(st.integers(0, len(env) - 1))
    if kind == "flip":
        bit = data.draw(st.integers(0, 7))
        mutated = env[:i] + bytes([env[i] ^ (1 << bit)]) + env[i + 1 :]
    elif kind == "delete":
        n = data.draw(st.integers(1, 8))
        mutated = env[:i] + env[i + n :]
    elif kind == "insert":
        mutated = env[:i] + data.draw(st.binary(min_size=1, max_size=8)) + env[i:]
    else:
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        mutated = env[:i] + chunk + env[i + len(chunk) :]
    if mutated == env:
        return
    out = open_envelope(mutated, MAX)
    assert isinstance(out, Rejected), f"{kind} at {i} was accepted"
