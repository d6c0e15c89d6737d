"""Record format, chain verification, the spec's test vector, and MemLog.

Pure tests: no disk. LevelDB behaviour is in test_eventlog.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.core.identity import Identity
from meshd.core.logrecord import (
    RECORD_OVERHEAD_BYTES,
    SIGNING_DOMAIN,
    ZERO_HASH,
    LogInputError,
    LogParams,
    Record,
    RecordError,
    decode_record,
    is_equivocation,
    make_genesis,
    make_record,
    split_envelope,
    verify_records,
)
from meshd.testing.memlog import MemLog, SimulatedCrash

SPEC = Path(__file__).resolve().parents[1] / "specs" / "EVENT-LOG.md"
ALICE = Identity.from_seed_int(1)
MALLORY = Identity.from_seed_int(666)


def build_chain(n: int, signer: Identity = ALICE) -> list[Record]:
    records = [make_genesis(signer, 1_000)]
    for seq in range(2, n + 1):
        prev = records[-1]
        records.append(
            make_record(
                signer, seq, prev.hash, 1_000 + seq, "test.event", {"n": seq, "blob": b"\x00" * 8}
            )
        )
    return records


def raws(records: list[Record]) -> list[bytes]:
    return [r.raw for r in records]


def nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# ---------------------------------------------------------------- encoding


def test_record_round_trips_and_hash_is_sha256_of_stored_bytes() -> None:
    chain = build_chain(3)
    rec = chain[2]
    again = decode_record(rec.raw)
    assert again == rec
    assert (again.seq, again.prev_hash, again.ts_ms, again.kind) == (
        3,
        chain[1].hash,
        1003,
        "test.event",
    )
    assert again.body == {"n": 3, "blob": b"\x00" * 8}
    assert again.hash == hashlib.sha256(rec.raw).digest()
    payload, sig = split_envelope(rec.raw)
    assert rec.raw == b"\x92\xc4" + bytes([len(payload)]) + payload + b"\xc4\x40" + sig
    assert rec.verify_signature(ALICE.public_key)
    assert not rec.verify_signature(MALLORY.public_key)
    assert msgpack.unpackb(payload)[:5] == [1, 3, chain[1].hash, 1003, "test.event"]


def test_signature_is_domain_separated() -> None:
    rec = build_chain(2)[1]
    from meshd.core.identity import verify_signature

    assert verify_signature(ALICE.public_key, rec.signature, SIGNING_DOMAIN + rec.payload)
    assert not verify_signature(ALICE.public_key, rec.signature, rec.payload)


def test_genesis_is_self_describing() -> None:
    genesis = make_genesis(ALICE, 5)
    assert (genesis.seq, genesis.prev_hash, genesis.kind) == (1, ZERO_HASH, "genesis")
    assert genesis.body == {"public_key": ALICE.public_key, "peer_id": ALICE.peer_id}
    report = verify_records([genesis.raw])
    assert report.ok and report.public_key == ALICE.public_key


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": ""}, "kind"),
        ({"kind": "x" * 65}, "max_kind_len"),
        ({"kind": "has space"}, "must match"),
        ({"kind": "genesis"}, "genesis"),
        ({"ts_ms": True}, "ts_ms"),
        ({"ts_ms": -1}, "ts_ms"),
        ({"body": {1: "int key"}}, "map keys must be str"),
        ({"body": object()}, "cannot be encoded"),
        ({"body": "x" * 70_000}, "max_body_bytes=65536"),
        ({"body": nested(40)}, "max_body_depth"),
        ({"seq": 0}, "seq"),
        ({"prev_hash": b"short"}, "prev_hash"),
        ({"seq": 1, "kind": "genesis", "body": {"public_key": b"k", "peer_id": "p"}}, "32 bytes"),
        ({"seq": 1, "kind": "genesis", "prev_hash": b"\x01" * 32}, "zero prev_hash"),
    ],
)
def test_make_record_refuses_bad_values(kwargs: dict, match: str) -> None:
    args = {"seq": 2, "prev_hash": ZERO_HASH, "ts_ms": 1, "kind": "ok", "body": None} | kwargs
    with pytest.raises(LogInputError, match=match):
        make_record(ALICE, **args)


# ---------------------------------------------------------------- decoding


def envelope(payload: bytes, sig: bytes = b"\x00" * 64) -> bytes:
    return b"\x92" + msgpack.packb(payload) + b"\xc4\x40" + sig


def payload_of(*fields: bytes) -> bytes:
    return b"\x96" + b"".join(fields)


GOOD_HEADER = [
    msgpack.packb(1),
    msgpack.packb(2),
    msgpack.packb(b"\x11" * 32),
    msgpack.packb(5),
    msgpack.packb("k"),
]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "envelope"),
        (b"\x93" + b"\x00" * 80, "envelope"),
        (envelope(payload_of(*GOOD_HEADER, b"\xc0"))[:-1], "signature"),
        (envelope(payload_of(*GOOD_HEADER, b"\xc0")) + b"\x00", "signature"),
        (b"\x92\xc5\x00\x05" + b"\x00" * 5 + b"\xc4\x40" + b"\x00" * 64, "not minimal"),
        (envelope(payload_of(*GOOD_HEADER, b"\xc0", b"\xc0")), "trailing"),
        (envelope(payload_of(*GOOD_HEADER, b"\xd4\x05\x00")), "ext type"),
        (envelope(payload_of(*GOOD_HEADER, b"\xd6\xff\x00\x00\x00\x01")), "Timestamp"),
        (envelope(payload_of(*GOOD_HEADER, b"\x82\xa1a\x01\xa1a\x02")), "duplicate key"),
        (envelope(payload_of(*GOOD_HEADER, b"\x81\x01\x02")), "map keys must be str"),
        (envelope(payload_of(*GOOD_HEADER, b"\xa2\xff\xfe")), "not valid msgpack"),
        (envelope(payload_of(msgpack.packb(2), *GOOD_HEADER[1:], b"\xc0")), "version"),
        (envelope(payload_of(GOOD_HEADER[0], b"\xc3", *GOOD_HEADER[2:], b"\xc0")), "seq"),
        (envelope(payload_of(*GOOD_HEADER[:3], b"\xff", GOOD_HEADER[4], b"\xc0")), "ts_ms"),
        (envelope(b"\x95" + b"".join(GOOD_HEADER)), "array of 6"),
        (
            envelope(payload_of(GOOD_HEADER[0], msgpack.packb(1), *GOOD_HEADER[2:], b"\xc0")),
            "genesis",
        ),
        (
            envelope(payload_of(*GOOD_HEADER[:4], msgpack.packb("genesis"), b"\xc0")),
            "only allowed at seq 1",
        ),
        (envelope(payload_of(*GOOD_HEADER, b"\x91" * 40 + b"\xc0")), "max_body_depth"),
    ],
)
def test_decode_names_what_is_wrong(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_record(raw)


def test_decode_accepts_the_crafted_good_record() -> None:
    rec = decode_record(envelope(payload_of(*GOOD_HEADER, msgpack.packb({"a": [1.5, None]}))))
    assert rec.body == {"a": [1.5, None]} and rec.kind == "k"


def test_body_depth_limit_is_exact() -> None:
    make_record(ALICE, 2, ZERO_HASH, 0, "deep", nested(32))
    with pytest.raises(LogInputError, match="max_body_depth=32"):
        make_record(ALICE, 2, ZERO_HASH, 0, "deep", nested(33))
    make_record(ALICE, 2, ZERO_HASH, 0, "deep", {"a": nested(31)})


@pytest.mark.parametrize("field", ["max_batch_records", "max_body_bytes", "max_kind_len"])
def test_log_params_refuse_nonsense(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LogParams(**{field: 0})


def test_decode_enforces_body_limit_of_the_given_params() -> None:
    rec = build_chain(2)[1]
    with pytest.raises(RecordError, match="max_body_bytes"):
        decode_record(rec.raw, LogParams(max_body_bytes=4))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_decoding_random_bytes_raises_only_record_error(data: bytes) -> None:
    for candidate in (data, b"\x92" + data, envelope(data), envelope(b"\x96" + data)):
        try:
            decode_record(candidate)
        except RecordError:
            pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(msgpack_values, min_size=0, max_size=8))
def test_decoding_structured_junk_raises_only_record_error(fields: list) -> None:
    payload = msgpack.packb(fields)
    try:
        rec = decode_record(envelope(payload))
    except RecordError:
        return
    assert rec.raw == envelope(payload)


GOOD = build_chain(3)


@settings(max_examples=300)
@given(st.sampled_from(GOOD), st.data())
def test_any_mutation_is_refused_or_breaks_the_signature(rec: Record, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(rec.raw) - 1))
    op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if op == "flip":
        mutated = (
            flip(rec.raw, i)
            if data.draw(st.booleans())
            else (
                rec.raw[:i]
                + bytes([data.draw(st.integers(0, 255).filter(lambda b: b != rec.raw[i]))])
                + rec.raw[i + 1 :]
            )
        )
    elif op == "cut":
        mutated = rec.raw[:i]
    else:
        mutated = rec.raw[:i] + bytes([data.draw(st.integers(0, 255))]) + rec.raw[i:]
    try:
        decoded = decode_record(mutated)
    except RecordError:
        return
    assert not decoded.verify_signature(ALICE.public_key)


@given(msgpack_values)
@settings(max_examples=200)
def test_every_encodable_body_round_trips(body: object) -> None:
    try:
        rec = make_record(ALICE, 2, ZERO_HASH, 0, "fuzz", body)
    except LogInputError:
        return
    decoded = decode_record(rec.raw)  # the encoder's Record equals the decoder's, field by field
    assert (
        dataclasses.replace(decoded, body=None).__dict__
        == dataclasses.replace(rec, body=None).__dict__
    )
    assert msgpack.packb(decoded.body) == msgpack.packb(rec.body) == msgpack.packb(body)


# ---------------------------------------------------------------- chains


def test_verify_records_accepts_a_good_chain() -> None:
    chain = build_chain(10)
    report = verify_records(raws(chain), ALICE.public_key)
    assert report.ok and report.count == 10
    assert report.head == (10, chain[-1].hash) and report.first_bad_seq is None


def other_key_record(chain: list[Record], seq: int) -> Record:
    return make_record(MALLORY, seq, chain[seq - 2].hash, 1, "test.event", {"n": seq})


@pytest.mark.parametrize(
    "tamper, bad_seq, reason",
    [
        (lambda c: [r.raw if r.seq != 5 else flip(r.raw, 20) for r in c], 5, "bad signature"),
        (
            lambda c: [r.raw if r.seq != 5 else flip(r.raw, len(r.raw) - 1) for r in c],
            5,
            "bad signature",
        ),
        (lambda c: [r.raw for r in c if r.seq != 5], 5, "expected seq 5, found seq 6"),
        (lambda c: raws(c[:4]) + [c[5].raw, c[4].raw] + raws(c[6:]), 5, "expected seq 5"),
        (lambda c: raws(c[:4]) + [other_key_record(c, 5).raw] + raws(c[5:]), 5, "bad signature"),
        (lambda c: [c[0].raw, c[2].raw], 2, "expected seq 2"),
        (lambda c: [b"junk"] + raws(c[1:]), 1, "undecodable"),
        (lambda c: raws(c[:7]) + [build_chain(8, MALLORY)[7].raw], 8, "prev_hash"),
    ],
    ids=[
        "flip-payload",
        "flip-signature",
        "delete",
        "reorder",
        "other-key",
        "gap",
        "junk",
        "foreign-chain",
    ],
)
def test_verify_records_names_the_first_bad_seq(tamper, bad_seq: int, reason: str) -> None:
    report = verify_records(tamper(build_chain(10)), ALICE.public_key)
    assert not report.ok
    assert report.first_bad_seq == bad_seq and reason in (report.reason or "")
    assert report.count == bad_seq - 1


def test_verify_records_checks_the_expected_key() -> None:
    report = verify_records(raws(build_chain(3, MALLORY)), ALICE.public_key)
    assert not report.ok and report.first_bad_seq == 1 and "different public key" in report.reason
    assert verify_records(raws(build_chain(3, MALLORY))).ok  # self-describing without a key


def test_verify_records_checks_a_segment_after_an_anchor() -> None:
    chain = build_chain(10)
    segment = raws(chain[5:])
    assert verify_records(segment, ALICE.public_key, after=(5, chain[4].hash)).ok
    bad = verify_records(segment, ALICE.public_key, after=(5, chain[3].hash))
    assert bad.first_bad_seq == 6 and "prev_hash" in bad.reason
    assert not verify_records([], ALICE.public_key).ok
    assert verify_records([], ALICE.public_key, after=(5, chain[4].hash)).ok


def test_equivocation_is_two_signed_payloads_for_one_seq() -> None:
    chain = build_chain(4)
    fork = make_record(ALICE, 4, chain[2].hash, 9, "test.event", {"n": "other"})
    assert is_equivocation(chain[3], fork, ALICE.public_key)
    assert not is_equivocation(chain[3], chain[3], ALICE.public_key)
    forged = make_record(MALLORY, 4, chain[2].hash, 9, "test.event", {"n": "other"})
    assert not is_equivocation(chain[3], forged, ALICE.public_key)


# ---------------------------------------------------------------- spec


def spec_text() -> str:
    return SPEC.read_text()


def spec_hex(name: str) -> bytes:
    match = re.search(rf"^{name}:\s*\n```\n([0-9a-f\n]+)```", spec_text(), re.M)
    assert match, f"test vector {name} missing from {SPEC}"
    return bytes.fromhex(match.group(1).replace("\n", ""))


def test_spec_test_vector_matches_the_code() -> None:
    genesis = make_genesis(ALICE, 1_700_000_000_000)
    second = make_record(
        ALICE, 2, genesis.hash, 1_700_000_000_250, "job.submitted", {"job": "demo", "cpus": 2}
    )
    assert spec_hex("record-1") == genesis.raw
    assert spec_hex("hash-1") == genesis.hash
    assert spec_hex("record-2") == second.raw
    assert spec_hex("hash-2") == second.hash
    assert spec_hex("public-key") == ALICE.public_key
    report = verify_records([spec_hex("record-1"), spec_hex("record-2")], spec_hex("public-key"))
    assert report.ok and report.head == (2, spec_hex("hash-2"))


def test_spec_parameter_table_matches_log_params() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| [^|]+ \| `([^`]+)` \|", spec_text(), re.M)
    documented = {name: (typ, default) for name, typ, default in rows}
    fields = {f.name: f for f in dataclasses.fields(LogParams)}
    assert set(documented) == set(fields)
    for name, f in fields.items():
        typ, default = documented[name]
        assert typ == f.type, name
        assert default == repr(f.default), name


def test_spec_constants_match_the_code() -> None:
    text = spec_text()
    assert SIGNING_DOMAIN.hex() in text
    assert f"{RECORD_OVERHEAD_BYTES}" in text and "max_record_bytes" in text


# ---------------------------------------------------------------- MemLog


def test_memlog_appends_reads_and_verifies() -> None:
    log = MemLog(ALICE, genesis_ts_ms=7)
    rec = log.append("job.submitted", {"id": 1}, 10)
    assert log.head == (2, rec.hash) and len(log) == 2
    out = log.append_batch([("tick", i, 11) for i in range(5)])
    assert [r.seq for r in out] == [3, 4, 5, 6, 7]
    assert log.get(4) == out[1]
    assert [r.seq for r in log.iter(3, 6)] == [3, 4, 5]
    assert list(log.iter_raw(6)) == [out[3].raw, out[4].raw]
    assert log.verify_all().ok
    with pytest.raises(KeyError):
        log.get(8)


def test_memlog_group_commits_in_chunks() -> None:
    log = MemLog(ALICE, LogParams(max_batch_records=4))
    writes = log.disk.writes
    log.append_batch([("tick", i, 0) for i in range(10)])
    assert log.disk.writes - writes == 3 and len(log) == 11


def test_memlog_idempotent_keys() -> None:
    log = MemLog(ALICE)
    first = log.append("job.bid", {"v": 1}, 1, key=b"bid-1")
    again = log.append("job.bid", {"v": 1}, 2, key=b"bid-1")
    assert again == first and len(log) == 2
    out = log.append_batch([("a", 1, 0, b"x"), ("b", 2, 0, b"x"), ("c", 3, 0, b"bid-1")])
    assert out[0] == out[1] and out[2] == first and len(log) == 3


def test_memlog_crash_keeps_every_append() -> None:
    log = MemLog(ALICE)
    acked = log.append_batch([("tick", i, 0) for i in range(100)])
    restarted = log.crash()
    assert restarted.head == log.head and restarted.get(50) == acked[48]
    from meshd.core.logrecord import LogClosedError

    with pytest.raises(LogClosedError):
        log.append("tick", 0, 0)


def test_memlog_crash_mid_batch_then_idempotent_retry() -> None:
    log = MemLog(ALICE, LogParams(max_batch_records=3))
    items = [("tick", i, 0, f"k{i}".encode()) for i in range(7)]
    log.crash_during_next_write(after_chunks=2)
    with pytest.raises(SimulatedCrash):
        log.append_batch(items)
    restarted = log.crash()
    assert len(restarted) == 1 + 6  # two chunks of three reached the disk
    retry = restarted.append_batch(items)
    assert [r.seq for r in retry] == [2, 3, 4, 5, 6, 7, 8]
    assert len(restarted) == 8 and restarted.verify_all().ok


def test_memlog_refuses_oversized_body_and_writes_nothing() -> None:
    log = MemLog(ALICE)
    head = log.head
    with pytest.raises(LogInputError, match=r"item 1 .*max_body_bytes"):
        log.append_batch([("ok", 1, 0), ("big", "x" * 70_000, 0)])
    assert log.head == head and log.disk.writes == 1


def test_pure_modules_load_no_io_libraries() -> None:
    """logrecord and memlog are for the simulator: no plyvel, trio or clock."""
    import subprocess
    import sys

    probe = (
        "import sys, meshd.core.logrecord, meshd.testing.memlog; "
        "print(sorted({'plyvel', 'trio'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "plyvel" not in out and "trio" not in out
    source = Path(__file__).resolve().parents[1] / "meshd" / "core" / "logrecord.py"
    assert not re.search(
        r"^\s*(import|from) (time|random|os|plyvel|trio)\b", source.read_text(), re.M
    )
