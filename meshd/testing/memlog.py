"""An in-memory event log with the interface of ``meshd.store.eventlog.EventLog``.

For the simulator and core unit tests: same records (``meshd.core.logrecord``
encodes, signs and checks them), same ``append`` / ``append_batch`` / ``head``
/ ``get`` / ``iter`` / ``iter_raw`` / ``len`` / ``close`` / context manager,
same idempotency keys and chunking, no files.

Crash model (matches EventLog on a disk that honours fsync):
- The "disk" is a :class:`MemDisk` that outlives the handle. A chunk of up to
  ``max_batch_records`` records reaches it atomically, as a synced WriteBatch
  would; an append returns only after all its chunks are there, so
  :meth:`MemLog.crash` loses nothing that was appended.
- :meth:`MemLog.crash_during_next_write` arms a crash *between* two chunks of
  the next append, or after its last chunk but before it returns: the records
  written so far are on the disk, the caller gets :class:`SimulatedCrash`
  instead of an acknowledgement. Retrying with the same idempotency keys on
  the restarted log must return those records, not write new ones.
- :meth:`MemLog.crash` / :meth:`MemLog.restart` return a new handle over the
  same disk, checked the way ``EventLog.open`` checks (links, genesis and
  head signatures). The old handle raises LogClosedError from then on.

Pure and deterministic: no clock (the genesis timestamp is a parameter), no
randomness, no threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshd.core.logrecord import (
    DEFAULT_PARAMS,
    AppendItem,
    ChainChecker,
    ChainError,
    LogClosedError,
    LogCorruptError,
    LogIdentityError,
    LogParams,
    Record,
    Signer,
    VerifyReport,
    decode_record,
    make_genesis,
    normalize_items,
    plan_batch,
    verify_records,
)


class SimulatedCrash(Exception):
    """The node crashed during an append; the caller never got its records."""


@dataclass
class MemDisk:
    """What survives a crash: stored records and the idempotency index."""

    records: list[bytes] = field(default_factory=list)
    keys: dict[bytes, int] = field(default_factory=dict)
    writes: int = 0
    """Synced writes so far (one per chunk), for tests and statistics."""


class MemLog:
    """In-memory signed, hash-chained log. ``MemLog(identity)`` starts a new one."""

    def __init__(
        self,
        identity: Signer,
        params: LogParams = DEFAULT_PARAMS,
        *,
        genesis_ts_ms: int = 0,
        disk: MemDisk | None = None,
    ) -> None:
        self.identity = identity
        self.params = params
        self.disk = disk if disk is not None else MemDisk()
        self._open = True
        self._crash_after_chunks: int | None = None
        if not self.disk.records:
            genesis = make_genesis(identity, genesis_ts_ms, params)
            self._write([(genesis, None)])
        self._head = self._check_disk()

    def _check_disk(self) -> tuple[int, bytes]:
        checker = ChainChecker(check_signatures=False, params=self.params)
        try:
            for raw in self.disk.records:
                checker.feed(raw)
            head = checker.finish()
        except ChainError as exc:
            raise LogCorruptError(exc.seq, exc.reason, "<memory>") from None
        if checker.public_key != self.identity.public_key:
            raise LogIdentityError("in-memory log was written by another key")
        return head

    # ---------------------------------------------------------------- faults

    def crash_during_next_write(self, after_chunks: int = 1) -> None:
        """Make the next append crash once ``after_chunks`` chunks are stored.

        ``after_chunks=0`` crashes before anything is stored. If the append has
        no more chunks than that, it crashes after storing all of them, before
        returning.
        """
        assert after_chunks >= 0
        self._crash_after_chunks = after_chunks

    def crash(self) -> MemLog:
        """Drop this handle as a power cut would; return the restarted log."""
        self._open = False
        return MemLog(self.identity, self.params, disk=self.disk)

    def restart(self) -> MemLog:
        """Close this handle and return a new one over the same disk."""
        self.close()
        return MemLog(self.identity, self.params, disk=self.disk)

    # ---------------------------------------------------------------- appending

    def append(self, kind: str, body: Any, ts_ms: int, *, key: bytes | None = None) -> Record:
        """Append one record; stored on return. A known ``key`` returns its record."""
        return self.append_batch([AppendItem(kind, body, ts_ms, key)])[0]

    def append_batch(self, items: Sequence[tuple[Any, ...]] | Sequence[AppendItem]) -> list[Record]:
        """Append many records, atomically per ``max_batch_records`` chunk."""
        self._live()
        plan = plan_batch(
            self.identity,
            self._head,
            normalize_items(items, self.params),
            self._lookup_key,
            self.params,
        )
        crash_after, self._crash_after_chunks = self._crash_after_chunks, None
        for done, chunk in enumerate(plan.chunks(self.params.max_batch_records)):
            if crash_after is not None and done >= crash_after:
                self._die()
            self._write(chunk)
            last = chunk[-1][0]
            self._head = (last.seq, last.hash)
        if crash_after is not None:
            self._die()
        return plan.results

    def _die(self) -> None:
        self._open = False
        raise SimulatedCrash("simulated crash during append")

    def _write(self, chunk: list[tuple[Record, bytes | None]]) -> None:
        assert chunk[0][0].seq == len(self.disk.records) + 1
        for record, key in chunk:
            self.disk.records.append(record.raw)
            if key is not None:
                self.disk.keys[key] = record.seq
        self.disk.writes += 1

    def _lookup_key(self, key: bytes) -> Record | None:
        seq = self.disk.keys.get(key)
        return None if seq is None else self.get(seq)

    # ---------------------------------------------------------------- reading

    @property
    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last stored record."""
        return self._head

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    def __len__(self) -> int:
        return self._head[0]

    def get(self, seq: int) -> Record:
        """The record at ``seq``; KeyError if there is none."""
        self._live()
        if not 1 <= seq <= self._head[0]:
            raise KeyError(seq)
        return decode_record(self.disk.records[seq - 1], self.params)

    def iter_raw(self, start: int = 1, end: int | None = None) -> Iterator[bytes]:
        """Stored bytes of records with ``start <= seq < end``."""
        self._live()
        stop = self._head[0] + 1 if end is None else min(end, self._head[0] + 1)
        for seq in range(max(start, 1), stop):
            yield self.disk.records[seq - 1]

    def iter(self, start: int = 1, end: int | None = None) -> Iterator[Record]:
        """Decoded records with ``start <= seq < end``."""
        for raw in self.iter_raw(start, end):
            yield decode_record(raw, self.params)

    def verify_all(self) -> VerifyReport:
        """Full audit: every link and every signature."""
        return verify_records(self.iter_raw(), self.identity.public_key, params=self.params)

    # ---------------------------------------------------------------- lifecycle

    def _live(self) -> None:
        if not self._open:
            raise LogClosedError("in-memory log handle is closed (crashed or closed)")

    @property
    def closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        self._open = False

    def __enter__(self) -> MemLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemLog({self.identity.peer_id}, head={self._head[0]})"
