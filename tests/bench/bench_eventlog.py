"""Event-log benchmark: figures as ratios against a baseline measured in the same run.

Run: ``python tests/bench/bench_eventlog.py [--events N] [--runs R]`` (not collected by pytest).

(a) baseline append pipeline, hand-written: msgpack encode + sha256 chain +
    Ed25519 sign, plyvel WriteBatch of 64 with one sync per batch;
(b) ``EventLog.append_batch`` with batches of 64 (durable appends/s);
    ratio b/a, target >= 0.7;
(c) raw Ed25519 verify/s over the same messages vs ``verify_records`` over
    the records (b) wrote; ratio, target >= 0.8.
Each figure is the median of ``--runs`` runs on fresh temporary directories.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import plyvel
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshd.core.identity import Identity
from meshd.core.logrecord import SIGNING_DOMAIN, decode_record, verify_records
from meshd.store.eventlog import EventLog

BATCH = 64
IDENTITY = Identity.from_seed_int(42)


def event_body(i: int) -> dict:
    """About 290 bytes encoded, like the eventlog note's measurements."""
    return {
        "job": f"job-{i:08d}",
        "worker": IDENTITY.peer_id,
        "state": "running",
        "digest": hashlib.sha256(i.to_bytes(8, "big")).digest(),
        "cpus": 4,
        "mem_mb": 2048,
        "price": 1.25,
        "note": "x" * 120,
    }


def baseline_append(path: Path, n: int) -> float:
    """Events/s of the hand-written encode+hash+sign+WriteBatch(64, sync) pipeline."""
    db = plyvel.DB(str(path), create_if_missing=True)
    prev = bytes(32)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        with db.write_batch(sync=True) as wb:
            for seq in range(start + 1, min(start + BATCH, n) + 1):
                payload = msgpack.packb([1, seq, prev, 1000 + seq, "job.update", event_body(seq)])
                sig = IDENTITY.sign(SIGNING_DOMAIN + payload)
                raw = msgpack.packb([payload, sig])
                prev = hashlib.sha256(raw).digest()
                wb.put(b"r" + seq.to_bytes(8, "big"), raw)
    elapsed = time.perf_counter() - t0
    db.close()
    return n / elapsed


def eventlog_append(path: Path, n: int) -> tuple[float, list[bytes]]:
    """Durable appends/s through EventLog.append_batch, and the records written."""
    with EventLog.open(path, IDENTITY, genesis_ts_ms=0) as log:
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            log.append_batch(
                [
                    ("job.update", event_body(i), 1000 + i)
                    for i in range(start, min(start + BATCH, n))
                ]
            )
        elapsed = time.perf_counter() - t0
        return n / elapsed, list(log.iter_raw())


def raw_verify(raws: list[bytes]) -> float:
    """Ed25519 verifies/s of the same signed messages, nothing else."""
    key = Ed25519PublicKey.from_public_bytes(IDENTITY.public_key)
    jobs = [(r.signature, SIGNING_DOMAIN + r.payload) for r in map(decode_record, raws)]
    t0 = time.perf_counter()
    for sig, msg in jobs:
        key.verify(sig, msg)
    return len(jobs) / (time.perf_counter() - t0)


def full_verify(raws: list[bytes]) -> float:
    """Records/s of verify_records: decode, links and every signature."""
    t0 = time.perf_counter()
    report = verify_records(raws, IDENTITY.public_key)
    elapsed = time.perf_counter() - t0
    assert report.ok and report.count == len(raws), report
    return len(raws) / elapsed


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {"a": [], "b": [], "rv": [], "vr": []}
    with tempfile.TemporaryDirectory(prefix="bench-eventlog-") as tmp:
        for run in range(args.runs):  # interleave a and b so drift hits both alike
            results["a"].append(baseline_append(Path(tmp) / f"base{run}", args.events))
            rate, raws = eventlog_append(Path(tmp) / f"log{run}", args.events)
            results["b"].append(rate)
            results["rv"].append(raw_verify(raws))
            results["vr"].append(full_verify(raws))
    a, b, rv, vr = (statistics.median(results[k]) for k in ("a", "b", "rv", "vr"))
    rows = [
        ("(a) baseline: encode+sha256+sign, WriteBatch 64, sync/batch", f"{a:,.0f} ev/s", ""),
        (
            "(b) EventLog.append_batch (64/batch, durable)",
            f"{b:,.0f} ev/s",
            f"b/a = {b / a:.2f} (target >= 0.70)",
        ),
        ("(c1) raw Ed25519 verify", f"{rv:,.0f} /s", ""),
        (
            "(c2) verify_records (decode+links+signatures)",
            f"{vr:,.0f} rec/s",
            f"c2/c1 = {vr / rv:.2f} (target >= 0.80)",
        ),
    ]
    print(
        f"events per run: {args.events}, runs: {args.runs} (median), python {sys.version.split()[0]}"
    )
    width = max(len(r[0]) for r in rows)
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>14}  {ratio}")
    ok = b / a >= 0.7 and vr / rv >= 0.8
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
