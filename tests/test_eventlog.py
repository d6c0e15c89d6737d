"""EventLog on real LevelDB in temporary directories: durability, tampering,
crashes (SIGKILL of a real child process), locking, idempotency and bounds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest

from meshd.core.identity import Identity
from meshd.core.logrecord import make_record, verify_records
from meshd.store.eventlog import (
    HEAD_KEY,
    AppendItem,
    EventLog,
    LogClosedError,
    LogCorruptError,
    LogError,
    LogIdentityError,
    LogInputError,
    LogLockedError,
    LogParams,
)
from meshd.testing.memlog import MemLog

ALICE = Identity.from_seed_int(1)
MALLORY = Identity.from_seed_int(666)
REPO = Path(__file__).resolve().parents[1]


def rkey(seq: int) -> bytes:
    return b"r" + seq.to_bytes(8, "big")


def fill(path: Path, n: int) -> list:
    """A closed log at ``path`` with records 1..n; returns them."""
    with EventLog.open(path, ALICE, genesis_ts_ms=1) as log:
        log.append_batch([("test.event", {"i": i, "pad": "p" * 50}, 100 + i) for i in range(n - 1)])
        return list(log.iter())


def stored_values(path: Path) -> list[bytes]:
    db = plyvel.DB(str(path))
    try:
        return [v for _, v in db.iterator(prefix=b"r")]
    finally:
        db.close()


# ---------------------------------------------------------------- basics


def test_open_creates_a_durable_self_describing_log(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with EventLog.open(path, ALICE, genesis_ts_ms=42) as log:
        genesis = log.get(1)
        assert log.head == (1, genesis.hash) and len(log) == 1
        assert genesis.ts_ms == 42
        assert genesis.body == {"public_key": ALICE.public_key, "peer_id": ALICE.peer_id}
    with EventLog.open(path, ALICE) as log:
        assert log.head == (1, genesis.hash)  # reopening does not write a second genesis


def test_append_is_readable_after_reopen_and_fully_verifies(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with EventLog.open(path, ALICE) as log:
        one = log.append("job.submitted", {"job": "a", "data": b"\x01\x02"}, 1000)
        batch = log.append_batch([AppendItem("job.bid", {"n": i}, 1001 + i) for i in range(10)])
        assert one.seq == 2 and [r.seq for r in batch] == list(range(3, 13))
    with EventLog.open(path, ALICE) as log:
        assert log.head == (12, batch[-1].hash)
        assert log.get(2) == one and log.get(2).body == {"job": "a", "data": b"\x01\x02"}
        assert [r.seq for r in log.iter(4, 7)] == [4, 5, 6]
        assert list(log.iter_raw(11)) == [batch[-2].raw, batch[-1].raw]
        assert list(log.iter(13)) == []
        report = log.verify_all()
        assert report.ok and report.count == 12
        with pytest.raises(KeyError):
            log.get(13)


def test_batch_larger_than_max_batch_records_is_split_and_chained(tmp_path: Path) -> None:
    params = LogParams(max_batch_records=8)
    with EventLog.open(tmp_path / "log", ALICE, params) as log:
        out = log.append_batch([("tick", i, i) for i in range(50)])
        assert [r.seq for r in out] == list(range(2, 52))
        assert all(b.prev_hash == a.hash for a, b in zip(out, out[1:], strict=False))
        assert log.head == (51, out[-1].hash)
    with EventLog.open(tmp_path / "log", ALICE, params) as log:
        assert log.verify_all().count == 51


def test_same_inputs_give_the_same_bytes_as_memlog(tmp_path: Path) -> None:
    items = [("job.submitted", {"i": i, "x": [1.5, None, b"b"]}, 10 + i) for i in range(70)]
    mem = MemLog(ALICE, genesis_ts_ms=5)
    mem.append_batch(items)
    with EventLog.open(tmp_path / "log", ALICE, genesis_ts_ms=5) as log:
        log.append_batch(items)
        assert list(log.iter_raw()) == list(mem.iter_raw()) and log.head == mem.head


# ---------------------------------------------------------------- idempotency and bounds


def test_idempotent_appends_write_nothing_the_second_time(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with EventLog.open(path, ALICE) as log:
        first = log.append("job.award", {"job": 1}, 5, key=b"award-1")
        assert log.append("job.award", {"job": 1}, 6, key=b"award-1") == first
        out = log.append_batch(
            [("a", 1, 0, b"x"), ("b", 2, 0, b"x"), ("c", 3, 0, b"award-1"), ("d", 4, 0)]
        )
        assert out[0] == out[1] and out[2] == first and out[3].seq == 4
        assert len(log) == 4
    with EventLog.open(path, ALICE) as log:  # the index survives a reopen
        assert log.append("zzz", {}, 0, key=b"x") == out[0] and len(log) == 4


def test_oversized_body_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with EventLog.open(path, ALICE) as log:
        log.append("ok", 1, 0)
        head = log.head
        with pytest.raises(
            LogInputError, match=r"item 2 \(kind 'big'\).*70\d\d\d bytes.*max_body_bytes=65536"
        ):
            log.append_batch([("ok", 2, 0), ("ok", 3, 0), ("big", "x" * 70_000, 0)])
        with pytest.raises(LogInputError, match="kind"):
            log.append("not a kind", 1, 0)
        with pytest.raises(LogInputError, match="reserved"):
            log.append("genesis", 1, 0)
        with pytest.raises(LogInputError, match="idempotency key"):
            log.append("ok", 1, 0, key=b"k" * 129)
        with pytest.raises(LogInputError, match="max_items_per_call=4096"):
            log.append_batch([("ok", 1, 0)] * 4097)
        assert log.head == head
    with EventLog.open(path, ALICE) as log:
        assert log.head == head


def test_closed_handle_refuses_use(tmp_path: Path) -> None:
    log = EventLog.open(tmp_path / "log", ALICE)
    log.close()
    log.close()
    with pytest.raises(LogClosedError):
        log.append("x", 1, 0)
    with pytest.raises(LogClosedError):
        log.get(1)


# ---------------------------------------------------------------- who may open


def test_log_of_another_key_is_refused(tmp_path: Path) -> None:
    fill(tmp_path / "log", 3)
    with pytest.raises(LogIdentityError, match=ALICE.peer_id):
        EventLog.open(tmp_path / "log", MALLORY)


def test_refuses_to_create_a_log_in_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(LogError, match="notes.txt"):
        EventLog.open(tmp_path / "data", ALICE)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["notes.txt"]


def test_second_handle_in_the_same_process_is_locked_out(tmp_path: Path) -> None:
    with EventLog.open(tmp_path / "log", ALICE):
        with pytest.raises(LogLockedError, match=str(tmp_path / "log")):
            EventLog.open(tmp_path / "log", ALICE)
    EventLog.open(tmp_path / "log", ALICE).close()  # released on close


LOCK_PROBE = textwrap.dedent("""
    import json, sys, time
    from meshd.core.identity import Identity
    from meshd.store.eventlog import EventLog
    t0 = time.monotonic()
    try:
        EventLog.open(sys.argv[1], Identity.from_seed_int(1)).close()
        out = {"error": None}
    except Exception as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
    out["elapsed_s"] = time.monotonic() - t0
    print(json.dumps(out))
""")


def test_second_process_gets_locked_error_fast(tmp_path: Path) -> None:
    path = tmp_path / "data dir"
    with EventLog.open(path, ALICE):
        proc = subprocess.run(
            [sys.executable, "-c", LOCK_PROBE, str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    result = json.loads(proc.stdout)
    assert result["error"] == "LogLockedError", proc.stderr
    assert str(path) in result["message"] and "another meshd" in result["message"]
    assert result["elapsed_s"] < 1.0


# ---------------------------------------------------------------- tampering


def tamper_flip(db: plyvel.DB, seq: int) -> None:
    value = db.get(rkey(seq))
    db.put(rkey(seq), value[:30] + bytes([value[30] ^ 0x40]) + value[31:])


def tamper_flip_signature(db: plyvel.DB, seq: int) -> None:
    value = db.get(rkey(seq))
    db.put(rkey(seq), value[:-1] + bytes([value[-1] ^ 0x01]))


def tamper_delete(db: plyvel.DB, seq: int) -> None:
    db.delete(rkey(seq))


def tamper_reorder(db: plyvel.DB, seq: int) -> None:
    a, b = db.get(rkey(seq)), db.get(rkey(seq + 1))
    db.put(rkey(seq), b)
    db.put(rkey(seq + 1), a)


def tamper_other_key(db: plyvel.DB, seq: int) -> None:
    prev_hash = hashlib.sha256(db.get(rkey(seq - 1))).digest()
    forged = make_record(MALLORY, seq, prev_hash, 1, "test.event", {"i": "forged"})
    db.put(rkey(seq), forged.raw)


def tamper_other_key_with_head(db: plyvel.DB, seq: int) -> None:
    tamper_other_key(db, seq)
    db.put(HEAD_KEY, seq.to_bytes(8, "big") + hashlib.sha256(db.get(rkey(seq))).digest())


@pytest.mark.parametrize(
    "tamper, seq, reason",
    [
        (tamper_flip, 7, "bad signature"),
        (tamper_flip, 20, "bad signature"),
        (tamper_flip_signature, 7, "bad signature"),
        (tamper_delete, 7, "missing"),
        (tamper_delete, 20, "missing"),
        (tamper_reorder, 7, "holds|found seq 8|next stored key"),
        (tamper_other_key, 7, "bad signature"),
        (tamper_other_key_with_head, 20, "bad signature"),
    ],
    ids=[
        "flip-middle",
        "flip-head",
        "flip-signature",
        "delete-middle",
        "delete-head",
        "reorder",
        "other-key",
        "other-key-head",
    ],
)
def test_tampering_is_found_on_open_and_by_verify_records(
    tmp_path: Path, tamper: Callable[[plyvel.DB, int], None], seq: int, reason: str
) -> None:
    path = tmp_path / "log"
    fill(path, 20)
    db = plyvel.DB(str(path))
    tamper(db, seq)
    db.close()
    with pytest.raises(LogCorruptError) as info:
        EventLog.open(path, ALICE)
    assert info.value.seq == seq, info.value
    assert f"seq {seq}" in str(info.value) and str(path) in str(info.value)
    assert re.search(reason, info.value.reason), info.value.reason
    report = verify_records(stored_values(path), ALICE.public_key)
    if tamper in (tamper_delete,) and seq == 20:
        assert report.ok and report.count == 19  # only the head entry knows seq 20 existed
    else:
        assert not report.ok and report.first_bad_seq == seq, report


def test_corrupt_head_metadata_is_found(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fill(path, 5)
    db = plyvel.DB(str(path))
    db.put(HEAD_KEY, (5).to_bytes(8, "big") + b"\x00" * 32)
    db.close()
    with pytest.raises(LogCorruptError, match="head metadata"):
        EventLog.open(path, ALICE)


# ---------------------------------------------------------------- SIGKILL


WRITER = textwrap.dedent("""
    import sys
    from meshd.core.identity import Identity
    from meshd.store.eventlog import AppendItem, EventLog
    path, rnd = sys.argv[1], int(sys.argv[2])
    log = EventLog.open(path, Identity.from_seed_int(1))
    i = 0
    while True:
        size = 1 + (i * 37) % 150
        items = [AppendItem("test.tick", {"round": rnd, "i": i + j, "pad": "x" * 200}, i + j,
                            key=f"{rnd}-{i + j}".encode()) for j in range(size)]
        records = log.append_batch(items)
        sys.stdout.write("".join(f"{r.seq} {r.hash.hex()}\\n" for r in records))
        sys.stdout.flush()
        i += size
""")


def run_writer_and_kill(path: Path, rnd: int, min_acks: int) -> dict[int, str]:
    """Start a writer, SIGKILL it after ``min_acks`` acknowledged records; return them."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(rnd)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: dict[int, str] = {}
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    try:
        while len(acked) < min_acks:
            assert time.monotonic() < deadline, "writer too slow"
            if not sel.select(timeout=1):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"writer died: {proc.stderr.read().decode() if proc.stderr else ''}"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            acked.update((int(s), h) for s, h in (ln.decode().split() for ln in lines))
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in (buf + rest).split(b"\n"):  # acks printed before the kill landed
        if line.count(b" ") == 1:
            seq, digest = line.decode().split()
            if len(digest) == 64:
                acked[int(seq)] = digest
    return acked


@pytest.mark.slow
def test_sigkill_mid_append_loses_no_acknowledged_record(tmp_path: Path) -> None:
    path = tmp_path / "log"
    all_acked: dict[int, str] = {}
    for rnd in range(3):
        acked = run_writer_and_kill(path, rnd, min_acks=300 + 97 * rnd)
        assert len(acked) >= 300
        all_acked.update(acked)
        with EventLog.open(path, ALICE) as log:
            assert log.head[0] >= max(all_acked)
            for seq, digest in all_acked.items():
                assert log.get(seq).hash.hex() == digest, seq
            report = log.verify_all()
            assert report.ok and report.count == log.head[0], report
            # The retry of the last acknowledged item is idempotent.
            last = log.get(max(acked))
            retry = log.append(
                "test.tick", {"retry": True}, 0, key=f"{rnd}-{last.body['i']}".encode()
            )
            assert retry == last and log.head[0] >= last.seq
