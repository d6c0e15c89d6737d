"""The node's durable event log: signed, hash-chained records in LevelDB (plyvel).

Format and verification rules live in ``meshd.core.logrecord`` and
``specs/EVENT-LOG.md``; this module only stores them. It follows the measured
rules of ``notes/eventlog.md``:

1. Nothing is acknowledged before a synced write: ``append`` and
   ``append_batch`` return only after ``WriteBatch(sync=True)`` completes.
2. Group commit: a batch of up to ``max_batch_records`` records, its
   idempotency-index entries and the new head go in ONE synced WriteBatch.
3. A fresh database is created durably: create, close, fsync its files, the
   directory and the parent, then reopen; the genesis record is the first
   synced write.
4. ``open`` uses ``paranoid_checks``, reads the whole chain, checks every
   seq and hash link, the genesis and head signatures, and that the head
   metadata matches the last record. A full signature audit is
   :meth:`EventLog.verify_all` (on demand: ~170 µs per record).
5. Appends may carry an idempotency key: a batch can reach the disk without
   its caller hearing so, and the retry must not create a second record.
6. Hashes and signatures are over stored bytes (``logrecord`` guarantees it).
7. A second process on the same directory fails fast with LogLockedError.

LevelDB layout (informative, also in the spec):

    b"r" + seq (8 bytes big-endian)   -> stored record bytes
    b"m" + b"head"                    -> seq (8 bytes big-endian) + hash (32 bytes)
    b"m" + b"format"                  -> LAYOUT_TAG
    b"k" + idempotency key            -> seq (8 bytes big-endian)

Theory of operation: ``open`` leaves the verified head in memory; an append
plans signed records on top of it (``logrecord.plan_batch``), writes them in
chunks, and advances the in-memory head after each synced chunk. An instance
is for one caller at a time (the runtime's single loop); it is not
thread-safe. After a failed write the handle is closed and must be reopened.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import plyvel

from meshd.core.identity import Identity, peer_id_from_public_key
from meshd.core.logrecord import (
    DEFAULT_PARAMS,
    AppendItem,
    ChainChecker,
    ChainError,
    LogClosedError,
    LogCorruptError,
    LogError,
    LogIdentityError,
    LogInputError,
    LogLockedError,
    LogParams,
    LogWriteError,
    Record,
    RecordError,
    VerifyReport,
    decode_record,
    make_genesis,
    normalize_items,
    plan_batch,
    verify_records,
)

__all__ = [
    "AppendItem",
    "EventLog",
    "LogClosedError",
    "LogCorruptError",
    "LogError",
    "LogIdentityError",
    "LogInputError",
    "LogLockedError",
    "LogParams",
    "LogWriteError",
    "Record",
]

RECORD_PREFIX = b"r"
META_PREFIX = b"m"
KEY_PREFIX = b"k"
HEAD_KEY = META_PREFIX + b"head"
FORMAT_KEY = META_PREFIX + b"format"
LAYOUT_TAG = b"meshd-event-log/1"
# Files LevelDB itself may leave in a directory it was creating.
_LEVELDB_FILE_RE = re.compile(r"LOCK|LOG|LOG\.old|CURRENT|MANIFEST-\d+|\d+\.(log|ldb|sst|dbtmp)")


def _seq_key(seq: int) -> bytes:
    return RECORD_PREFIX + seq.to_bytes(8, "big")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_lock_error(exc: plyvel.Error) -> bool:
    text = str(exc)
    return "LOCK" in text or "lock" in text


class EventLog:
    """A durable, signed, hash-chained log. Build with :meth:`open`."""

    def __init__(
        self,
        db: plyvel.DB,
        path: Path,
        identity: Identity,
        params: LogParams,
        head: tuple[int, bytes],
    ) -> None:
        self._db: plyvel.DB | None = db
        self.path = path
        self.identity = identity
        self.params = params
        self._head = head

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        identity: Identity,
        params: LogParams = DEFAULT_PARAMS,
        *,
        genesis_ts_ms: int | None = None,
    ) -> EventLog:
        """Open (creating durably if absent) and verify the log at ``path``.

        ``genesis_ts_ms`` stamps the genesis record of a new log (default: now).
        Raises LogLockedError, LogCorruptError or LogIdentityError.
        """
        path = Path(path).absolute()
        if not (path / "CURRENT").exists():
            cls._create_durably(path, params)
        db = cls._open_db(path, params)
        try:
            head = cls._verify_on_open(db, path, identity, params)
            if head is None:
                ts_ms = int(time.time() * 1000) if genesis_ts_ms is None else genesis_ts_ms
                head = cls._write_genesis(db, identity, params, ts_ms)
        except BaseException:
            db.close()
            raise
        return cls(db, path, identity, params, head)

    @staticmethod
    def _open_db(path: Path, params: LogParams, create: bool = False) -> plyvel.DB:
        try:
            return plyvel.DB(
                str(path), create_if_missing=create, paranoid_checks=params.paranoid_checks
            )
        except plyvel.IOError as exc:
            if _is_lock_error(exc):
                raise LogLockedError(
                    f"event log {path} is locked: another meshd is using this data "
                    "directory; stop it or give this one another data directory"
                ) from None
            raise LogError(f"event log {path}: cannot open: {exc}") from None
        except plyvel.Error as exc:
            raise LogCorruptError(0, f"LevelDB refused to open: {exc}", str(path)) from None

    @classmethod
    def _create_durably(cls, path: Path, params: LogParams) -> None:
        if path.exists() and not path.is_dir():
            raise LogError(f"event log {path}: exists and is not a directory")
        if path.exists():
            strangers = [p.name for p in path.iterdir() if not _LEVELDB_FILE_RE.fullmatch(p.name)]
            if strangers:
                raise LogError(
                    f"event log {path}: directory holds files that are not LevelDB's "
                    f"({', '.join(sorted(strangers)[:5])}); refusing to create a log there"
                )
        path.mkdir(parents=True, exist_ok=True)
        cls._open_db(path, params, create=True).close()
        for child in path.iterdir():
            if child.is_file():
                _fsync_path(child)
        _fsync_path(path)
        _fsync_path(path.parent)

    @staticmethod
    def _write_genesis(
        db: plyvel.DB, identity: Identity, params: LogParams, ts_ms: int
    ) -> tuple[int, bytes]:
        with db.iterator(include_value=False) as it:
            if next(it, None) is not None:
                raise LogCorruptError(0, "no head metadata, yet the database is not empty")
        genesis = make_genesis(identity, ts_ms, params)
        with db.write_batch(sync=True) as wb:
            wb.put(FORMAT_KEY, LAYOUT_TAG)
            wb.put(_seq_key(1), genesis.raw)
            wb.put(HEAD_KEY, (1).to_bytes(8, "big") + genesis.hash)
        return 1, genesis.hash

    @staticmethod
    def _verify_on_open(
        db: plyvel.DB, path: Path, identity: Identity, params: LogParams
    ) -> tuple[int, bytes] | None:
        """Check the stored chain; its head, or None for an empty database."""
        meta = db.get(HEAD_KEY, verify_checksums=params.verify_checksums)
        if meta is None:
            return None
        if db.get(FORMAT_KEY) != LAYOUT_TAG:
            raise LogCorruptError(0, "missing or unknown layout tag", str(path))
        head_seq, head_hash = int.from_bytes(meta[:8], "big"), meta[8:]
        if len(meta) != 40 or head_seq < 1:
            raise LogCorruptError(0, "head metadata is malformed", str(path))
        checker = ChainChecker(check_signatures=False, params=params)
        try:
            _feed_stored(checker, db, params)
            if checker.head[0] < head_seq:
                raise ChainError(checker.head[0] + 1, f"missing; the head says seq {head_seq}")
            if checker.head[0] > head_seq:
                raise ChainError(head_seq + 1, f"stored beyond the head (seq {head_seq})")
            if checker.head[1] != head_hash:
                checker.finish()
                raise ChainError(head_seq, "head metadata does not match the last record")
            head = checker.finish()
        except ChainError as exc:
            raise LogCorruptError(exc.seq, exc.reason, str(path)) from None
        if checker.public_key != identity.public_key:
            assert checker.public_key is not None
            raise LogIdentityError(
                f"event log {path} was written by another key "
                f"({peer_id_from_public_key(checker.public_key)}), not by {identity.peer_id}"
            )
        return head

    # ---------------------------------------------------------------- appending

    def append(self, kind: str, body: Any, ts_ms: int, *, key: bytes | None = None) -> Record:
        """Append one record; durable on return. A known ``key`` returns its record."""
        return self.append_batch([AppendItem(kind, body, ts_ms, key)])[0]

    def append_batch(self, items: Sequence[tuple[Any, ...]] | Sequence[AppendItem]) -> list[Record]:
        """Append many records, one synced WriteBatch per ``max_batch_records``.

        Every item is checked and signed before anything is written, so bad
        input (LogInputError) writes nothing. Returns one record per item.
        """
        db = self._live()
        plan = plan_batch(
            self.identity,
            self._head,
            normalize_items(items, self.params),
            self._lookup_key,
            self.params,
        )
        for chunk in plan.chunks(self.params.max_batch_records):
            last = chunk[-1][0]
            try:
                with db.write_batch(sync=True) as wb:
                    for record, key in chunk:
                        wb.put(_seq_key(record.seq), record.raw)
                        if key is not None:
                            wb.put(KEY_PREFIX + key, record.seq.to_bytes(8, "big"))
                    wb.put(HEAD_KEY, last.seq.to_bytes(8, "big") + last.hash)
            except plyvel.Error as exc:
                self.close()
                raise LogWriteError(
                    f"event log {self.path}: write of seq {chunk[0][0].seq}..{last.seq} "
                    f"failed ({exc}); the handle is closed, reopen the log"
                ) from None
            self._head = (last.seq, last.hash)
        return plan.results

    def _lookup_key(self, key: bytes) -> Record | None:
        value = self._live().get(KEY_PREFIX + key, verify_checksums=self.params.verify_checksums)
        return None if value is None else self.get(int.from_bytes(value, "big"))

    # ---------------------------------------------------------------- reading

    @property
    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last durable record."""
        return self._head

    @property
    def public_key(self) -> bytes:
        return self.identity.public_key

    def __len__(self) -> int:
        return self._head[0]

    def get(self, seq: int) -> Record:
        """The record at ``seq``; KeyError if there is none."""
        if not 1 <= seq <= self._head[0]:
            raise KeyError(seq)
        raw = self._live().get(_seq_key(seq), verify_checksums=self.params.verify_checksums)
        if raw is None:
            raise LogCorruptError(seq, "record vanished", str(self.path))
        return self._decode(seq, raw)

    def iter_raw(self, start: int = 1, end: int | None = None) -> Iterator[bytes]:
        """Stored bytes of records with ``start <= seq < end`` (end: past the head)."""
        stop = self._head[0] + 1 if end is None else min(end, self._head[0] + 1)
        if start >= stop:
            return
        it = self._live().iterator(
            start=_seq_key(max(start, 1)),
            stop=_seq_key(stop),
            include_key=False,
            verify_checksums=self.params.verify_checksums,
        )
        with it:
            yield from it

    def iter(self, start: int = 1, end: int | None = None) -> Iterator[Record]:
        """Decoded records with ``start <= seq < end``."""
        for seq, raw in enumerate(self.iter_raw(start, end), start=max(start, 1)):
            yield self._decode(seq, raw)

    def _decode(self, seq: int, raw: bytes) -> Record:
        try:
            record = decode_record(raw, self.params)
        except RecordError as exc:
            raise LogCorruptError(seq, exc.reason, str(self.path)) from None
        if record.seq != seq:
            raise LogCorruptError(seq, f"holds seq {record.seq}", str(self.path))
        return record

    def verify_all(self) -> VerifyReport:
        """Full audit: every link and every signature (about 170 µs a record)."""
        return verify_records(self.iter_raw(), self.identity.public_key, params=self.params)

    # ---------------------------------------------------------------- lifecycle

    def _live(self) -> plyvel.DB:
        if self._db is None:
            raise LogClosedError(f"event log {self.path} is closed")
        return self._db

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        """Release the database (and its lock). Idempotent."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"head={self._head[0]}"
        return f"EventLog({str(self.path)!r}, {state})"


def _feed_stored(checker: ChainChecker, db: plyvel.DB, params: LogParams) -> None:
    """Feed every stored record to ``checker``, checking keys match seqs."""
    it = db.iterator(
        prefix=RECORD_PREFIX, verify_checksums=params.verify_checksums, fill_cache=False
    )
    try:
        with it:
            for key, raw in it:
                expected = checker.head[0] + 1
                key_seq = int.from_bytes(key[1:], "big") if len(key) == 9 else -1
                if key_seq != expected:
                    raise ChainError(expected, f"missing (next stored key is seq {key_seq})")
                checker.feed(raw)
    except plyvel.Error as exc:
        raise ChainError(checker.head[0] + 1, f"LevelDB read failed: {exc}") from None
