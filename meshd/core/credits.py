"""Credits: receipts for accepted work, balances any peer can audit, equivocation.

Theory of operation (normative text: specs/CREDITS.md)
------------------------------------------------------
*Earning.* When the origin settles a job (``origin._try_settle``) every run in
the canonical group earns ``min(duration × score × price × credit_rate, bid)``
plus an equal share of the job's ``bounty``. Runs outside the canonical group
earn nothing.

*Receipt protocol.*

1. The origin seals a :class:`Receipt` (its signature) carrying its next
   record sequence number, logs the envelope bytes (``receipt`` record) and
   sends them to the worker; it re-sends the same bytes every
   ``receipt_resend_ms`` until it sees the countersignature (at most
   ``receipt_resend_max`` times).
   After a restart it re-seals (same body and seq, fresh timestamp) and asks
   again for the newest ``max_receipts_pending`` receipts in its log: whether
   their countersignatures came back is not logged.
2. The worker checks the receipt names a run in its own ``work`` table that
   it finished for that origin, logs it (``receipt_cosigned``), countersigns
   (a :class:`ReceiptCosign` wrapping the origin's exact bytes, signed by the
   worker) and publishes the pair on ``TOPIC_RECEIPTS``. A receipt it already
   countersigned gets a fresh countersignature (the old one may be stale).
3. Every node verifies both signatures and keeps the pair in a bounded
   ledger keyed by ``(origin, seq)``, so a receipt is counted once however
   often it is gossiped. ``balance(peer) = earned − spent`` over the ledger.

*Restart* (``restore_record`` / ``resume``): the node's own
log rebuilds the sequence floor, the record index of what it issued and
countersigned, its countersigned ledger entries and its equivocation bans.
Ledger entries it learned only from gossip (third parties' receipts) are not
logged; they come back by anti-entropy.

*Anti-entropy* (``timer_sync``, ``on_ledger_summary``, ``on_ledger_delta``;
CREDITS.md §7.4). Gossip delivers a receipt once, so a node that was down or
cut off would hold fewer than its peers and balances would depend on whom one
asks. Every ``ledger_sync_interval_ms`` a node sends one live peer, drawn
with ``rng``, a bounded summary of its ledger — per origin the count and a
sha256 of the seqs it holds (from a cursor) — and the peer answers with the
countersignature envelopes of the origins whose summaries differ, at most
``ledger_sync_max_receipts``, and where to resume when cut short. The asker
checks each exactly as a gossiped pair (:meth:`_take_cosign`, shared with
:meth:`on_cosign`); counts and digests are never trusted. Balances are
exactly rounded sums (``math.fsum``), so nodes holding the same receipts
agree to the bit whatever order they learned them in.

*Clawback* (``reverse_receipt``, ``on_reversal``; CREDITS.md §7.6). When an
audit retracts a result accepted unverified, the origin signs a
:class:`ReceiptReversal` naming the receipt it paid for it (one more record
of its sequence), logs and gossips it. Every node keeps it in the ledger
under ``(origin, seq)`` like a receipt — so the same summaries and answers
sync it — with ``credits = −receipt.credits`` once the receipt it names is
in the ledger and matches (same worker and job, verdict ``unverified``,
signed within ``clawback_window_ms`` of the receipt by the origin's record
sequence, which counts microseconds of its clock), else 0. The amount is
the receipt's, never the reversal's, so whichever of two reversals of one
receipt a node saw first, balances agree.

*Bond* (``bond_of``; CREDITS.md §7.7). A newcomer's earnings are held —
in no balance — until the ledger holds ``bond_valid_receipts`` receipts with
verdict ``valid`` for it (results a replica confirmed); a counting reversal
(a retracted result: the worker was convicted) before that forfeits them
for good. A whitewashing liar, convicted before its bond is released, is
thus never paid under any identity. Like every balance rule it is a
function of the ledger's entries alone (ordered by ``(seq, origin)``), so
nodes holding the same entries agree.

*Attestations.* For every replicated verdict the origin publishes one signed
:class:`Attestation` per judged worker (``valid``/``invalid``); receivers fold
them into reputation with the Sybil limits of ``trust.py``.

*Equivocation.* Receipts and attestations share one per-issuer sequence,
``seq = max(previous + 1, ts_ms × 1000)``: strictly increasing, and — being
floored by the clock — it does not repeat after a restart that lost the
in-memory counter (or even the log's tail, see notes/eventlog.md), as long as
the clock does not step back and an issuer signs fewer than 1000 records a
millisecond. Every node indexes the records it sees by ``(issuer, seq)``;
two validly signed records with one ``(issuer, seq)`` and different bodies
are kept as proof (:attr:`equivocations`, an ``equivocation`` log record) and
the issuer is banned for ever.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .context import Context
from .events import TOPIC_RECEIPTS, Publish, Send
from .jobspec import canonical_bytes
from .placement import actual_cost
from .wire import (
    Attestation,
    Body,
    LedgerDelta,
    LedgerSummary,
    Opened,
    OriginSummary,
    Receipt,
    ReceiptCosign,
    ReceiptReversal,
    Rejected,
)

if TYPE_CHECKING:
    from .origin import OriginJob, Run
    from .worker import Worker

T_RECEIPT = "receipt_resend"
T_SYNC = "ledger_sync"
SEQ_PER_MS = 1000
SYNC_REPLY_OVERHEAD = 1_024
"""Bytes of a ``ledger_delta`` envelope kept free for everything but its cosigns."""


def seq_digest(seqs: list[int]) -> bytes:
    """sha256 over ``seqs`` (ascending), each as 8 bytes big-endian (CREDITS.md §7.4)."""
    h = hashlib.sha256()
    for seq in seqs:
        h.update(seq.to_bytes(8, "big"))
    return h.digest()


@dataclass
class LedgerEntry:
    job_id: str
    origin: str
    worker: str
    credits: float
    ts_ms: int
    seq: int
    cosign: Any
    """The worker's countersignature envelope (holds the origin's receipt), or
    for a reversal the origin's ``receipt_reversal`` envelope."""
    verdict: str = ""
    """The receipt's verdict ("" for a reversal)."""
    reverses: int = 0
    """For a reversal: the seq of the receipt it takes back (0: a receipt)."""


@dataclass(frozen=True)
class Bond:
    """A worker's bond (CREDITS.md §7.7), as the ledger's entries say."""

    state: Literal["released", "held", "forfeited"]
    through: tuple[int, str] | None
    """The ``(seq, origin)`` of the receipt that released it (None: not
    released); entries up to it were earned in the bond period."""
    withheld: float
    """Credits kept out of the worker's balance: held or forfeited (0 once released)."""


RELEASED = Bond("released", None, 0.0)


def bond_of(worker: str, entries: list[LedgerEntry], needed: int) -> Bond:
    """The bond of ``worker`` over its ledger ``entries`` (receipts and
    reversals naming it): released at its ``needed``-th ``valid`` receipt in
    ``(seq, origin)`` order, unless a counting reversal came first, which
    forfeits what was earned up to the release; until then, all it earned
    is held. ``needed`` 0: no bond."""
    if needed <= 0 or not entries:
        return RELEASED
    ordered = sorted(entries, key=lambda e: (e.seq, e.origin))
    valid = [e for e in ordered if not e.reverses and e.verdict == "valid" and e.worker == worker]
    release = (valid[needed - 1].seq, valid[needed - 1].origin) if len(valid) >= needed else None
    forfeit = next(((e.seq, e.origin) for e in ordered if e.reverses and e.credits < 0), None)
    if release is not None and (forfeit is None or forfeit > release):
        return Bond("released", release, 0.0)
    period = [e.credits for e in ordered if release is None or (e.seq, e.origin) <= release]
    return Bond("forfeited" if forfeit is not None else "held", release, math.fsum(period))


@dataclass
class PendingReceipt:
    worker: str
    job_id: str
    raw: Any
    tries: int = 0


class Ledger:
    """The ledger role: receipts we issue and countersign, attestations, the
    credit ledger every node keeps, and the equivocation proofs.

    Owns its entries and record index; shares only the
    :class:`~meshd.core.context.Context`; asks the :class:`~meshd.core.worker.Worker`
    role whether a receipt names a run it really finished.
    """

    def __init__(self, ctx: Context, worker: Worker) -> None:
        self.ctx = ctx
        self.worker = worker
        self.entries: OrderedDict[tuple[str, int], LedgerEntry] = OrderedDict()
        """(origin, seq) -> a countersigned receipt, counted once."""
        self.equivocations: deque[dict[str, Any]] = deque(maxlen=ctx.params.max_equivocations_kept)
        self._record_seq = 0
        self._records: OrderedDict[tuple[str, int], tuple[bytes, Any]] = OrderedDict()
        self._receipts_pending: OrderedDict[int, PendingReceipt] = OrderedDict()
        self._attestations_seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self.on_conviction: Callable[[str, str], None] | None = None
        """Called with (subject, issuer) for an applied ``invalid`` attestation
        from a fully credible issuer (the node hands it ``Origin.audit``)."""
        self._restoring: deque[tuple[str, dict[str, Any]]] | None = None
        self._restored_head: int | None = None
        """The highest record seq our own log held at start (None: not restored)."""
        self._first_new_seq: int | None = None
        """The first record seq signed since the start."""
        self.lost_tail: dict[str, Any] | None = None
        """Set when a peer holds a record we signed that our log has lost (§8.1)."""
        self._by_origin: dict[str, set[int]] = {}
        """origin -> the seqs of its receipts in :attr:`entries` (for sync summaries)."""
        self._origins_sorted: list[str] = []
        """The keys of :attr:`_by_origin` in ascending order (a summary's window
        and an answer's range are slices of it, found by bisection)."""
        self._summaries: dict[str, OriginSummary] = {}
        """origin -> our summary of all its seqs (``from_seq`` 0), as last
        computed; dropped whenever that origin's seqs change."""
        self._sync_after = ""
        """Where the next summary's window of origins starts (exclusive)."""
        self._sync_from: dict[str, int] = {}
        """origin -> the seq a cut-short sync answer asked us to go on from."""
        self._sync_followups = 0
        self._sync_asked: tuple[str, str, str | None] = ("", "", None)
        """The peer and origin range (after, through) of the last summary we sent."""
        if ctx.params.ledger_sync_interval_ms > 0:
            ctx.at(ctx.now_ms + ctx.params.ledger_sync_interval_ms, T_SYNC, None)
        self._issued: OrderedDict[tuple[str, str], int] = OrderedDict()
        """(job_id, worker) -> the seq of the newest receipt we issued for it
        (what a clawback names; at most ``max_records_indexed``)."""
        self._reversal_of: dict[tuple[str, int], int] = {}
        """(origin, receipt seq) -> the seq of the reversal that counts for it."""
        self._reversals_waiting: OrderedDict[tuple[str, int], int] = OrderedDict()
        """(origin, receipt seq) -> the seq of a reversal kept uncounted until
        that receipt reaches the ledger (at most ``max_reversals_waiting``)."""
        self._by_worker: dict[str, set[tuple[str, int]]] = {}
        """worker -> the keys of the ledger entries naming it (for its bond)."""
        self._bonds: dict[str, Bond] = {}
        """worker -> its bond, as last computed (dropped when its entries change)."""
        self._counted: OrderedDict[tuple[str, int], tuple[str, str, float]] = OrderedDict()
        """The ledger entries ``_balance`` counts, in ledger order (see :meth:`balance`)."""
        self._balance: dict[str, float] = {}

    def timers(self) -> dict[str, Callable[[Any], None]]:
        """This role's timer kinds and what runs when one is due."""
        return {T_RECEIPT: self.timer_receipt_resend, T_SYNC: self.timer_sync}

    def direct_handlers(self) -> dict[str, Callable[[Opened], None]]:
        """The direct messages this role answers, by wire type."""
        return {
            "receipt": self.on_receipt,
            "ledger_summary": self.on_ledger_summary,
            "ledger_delta": self.on_ledger_delta,
        }

    def gossip_handlers(self) -> dict[str, Callable[[Opened], None]]:
        """The gossip messages this role answers, by wire type."""
        return {
            "receipt_cosign": self.on_cosign,
            "attestation": self.on_attestation,
            "receipt_reversal": self.on_reversal,
        }

    # ------------------------------------------------------------ issuing

    def _next_seq(self) -> int:
        self._record_seq = max(self._record_seq + 1, self.ctx.wall_ms * SEQ_PER_MS)
        if self._first_new_seq is None:
            self._first_new_seq = self._record_seq
        return self._record_seq

    def _check_own_record(self, seq: int, peer: str) -> None:
        """A record we signed, shown to us by ``peer``: if our log does not hold
        it and it is newer than the log's head at start (but older than what
        we signed since), our log has lost its tail (CREDITS.md §8.1). Say so
        loudly, once per newer seq, and never sign that seq again."""
        head, first_new = self._restored_head, self._first_new_seq
        if head is None or seq <= head or (first_new is not None and seq >= first_new):
            return
        if (self.ctx.peer_id, seq) in self._records:
            return
        if self.lost_tail is not None and seq <= self.lost_tail["seen_seq"]:
            return
        self.lost_tail = {"log_head_seq": head, "seen_seq": seq, "peer": peer}
        self._record_seq = max(self._record_seq, seq)
        self.ctx.counters["tail_lost"] += 1
        self.ctx.append("tail_lost", {"log_head_seq": head, "seen_seq": seq, "peer": peer})

    def settle_credits(self, job: OriginJob, accepted: list[Run]) -> float:
        """Issue a receipt to every worker of the canonical group (origin side);
        returns the credits charged to this node (the job's ``cost.actual``)."""
        verdict: Literal["valid", "unverified"] = "valid" if job.needed > 1 else "unverified"
        bounty = job.spec.bounty / len(accepted) if accepted else 0.0
        return math.fsum(self._issue_receipt(job, run, bounty, verdict) for run in accepted)

    def charge_failed(self, job: OriginJob, runs: list[Run]) -> float:
        """The job failed by its own fault: pay each worker that ran it to the
        failure (at most ``job_fault_runs``) for the work, with verdict
        ``job_failed``; returns the credits charged to this node."""
        return math.fsum(self._issue_receipt(job, run, 0.0, "job_failed") for run in runs)

    def _issue_receipt(
        self,
        job: OriginJob,
        run: Run,
        bounty: float,
        verdict: Literal["valid", "unverified", "job_failed"],
    ) -> float:
        """Seal, log and send one receipt; the credits it carries (0 for a run
        of our own: nobody pays themselves)."""
        if run.worker == self.ctx.peer_id or run.result is None:
            return 0.0
        receipt = Receipt(
            job_id=job.job_id,
            attempt=run.attempt,
            replica=run.replica,
            origin=self.ctx.peer_id,
            worker=run.worker,
            credits=self.run_credits(job, run) + bounty,
            duration_ms=int(run.result.get("duration_ms", 0)),
            output_digest=run.result.get("output_digest"),
            verdict=verdict,
            seq=self._next_seq(),
        )
        raw = self.ctx.seal(receipt)
        self._index_record(self.ctx.peer_id, receipt, raw)
        self._note_issued(job.job_id, run.worker, receipt.seq)
        self.ctx.append(
            "receipt",
            {
                "job_id": job.job_id,
                "worker": run.worker,
                "seq": receipt.seq,
                "credits": receipt.credits,
                "envelope": raw,
            },
            key=b"receipt:%d" % receipt.seq,
        )
        self.ctx.emit(Send(run.worker, raw, "receipt", job.job_id))
        self.ctx.counters["receipts_issued"] += 1
        self._track_pending(receipt.seq, PendingReceipt(run.worker, job.job_id, raw))
        return receipt.credits

    def _note_issued(self, job_id: str, worker: str, seq: int) -> None:
        self._issued.pop((job_id, worker), None)
        self._issued[(job_id, worker)] = seq
        while len(self._issued) > self.ctx.params.max_records_indexed:
            self._issued.popitem(last=False)

    def reverse_receipt(self, job_id: str, worker: str) -> bool:
        """Clawback (origin side, CREDITS.md §7.6): an audit retracted the
        result ``worker`` was paid for on ``job_id``; sign, log, gossip and
        ledger a reversal of that receipt. False if we know no such receipt."""
        receipt_seq = self._issued.get((job_id, worker))
        if receipt_seq is None or worker == self.ctx.peer_id:
            self.ctx.counters["reversal_no_receipt"] += 1
            return False
        rev = ReceiptReversal(
            job_id=job_id, worker=worker, receipt_seq=receipt_seq, seq=self._next_seq()
        )
        raw = self.ctx.seal(rev)
        self.ctx.append(
            "receipt_reversal",
            {
                "job_id": job_id,
                "worker": worker,
                "receipt_seq": receipt_seq,
                "seq": rev.seq,
                "envelope": raw,
            },
            key=b"reversal:%d" % rev.seq,
        )
        self.ctx.emit(Publish(TOPIC_RECEIPTS, raw))
        self.ctx.counters["reversals_issued"] += 1
        opened = self.ctx.codec.open(raw, self.ctx.params.max_message_bytes)
        if not isinstance(opened, Rejected):
            self._take_reversal(opened)
        return True

    def run_credits(self, job: OriginJob, run: Run) -> float:
        """Delivered GFLOP priced at the worker's advertised rate, never above its bid."""
        assert run.result is not None
        entry = self.ctx.peers.get(run.worker)
        duration_ms = int(run.result.get("duration_ms", 0))
        if entry is None:
            return run.price
        cost = actual_cost(duration_ms, run.score_gflops, entry.advert.price, job.spec.credit_rate)
        return min(cost, run.price)

    def _track_pending(self, seq: int, pending: PendingReceipt) -> None:
        self._receipts_pending[seq] = pending
        while len(self._receipts_pending) > self.ctx.params.max_receipts_pending:
            self._receipts_pending.popitem(last=False)
            self.ctx.counters["receipts_uncosigned"] += 1
        self.ctx.at(self.ctx.now_ms + self.ctx.params.receipt_resend_ms, T_RECEIPT, seq)

    def timer_receipt_resend(self, seq: int) -> None:
        pending = self._receipts_pending.get(seq)
        if pending is None:
            return
        pending.tries += 1
        if pending.tries > self.ctx.params.receipt_resend_max:
            del self._receipts_pending[seq]
            self.ctx.counters["receipts_uncosigned"] += 1
            return
        self.ctx.emit(Send(pending.worker, pending.raw, "receipt", pending.job_id))
        self.ctx.at(self.ctx.now_ms + self.ctx.params.receipt_resend_ms, T_RECEIPT, seq)

    def publish_attestations(self, job: OriginJob, valid: list[str], invalid: list[str]) -> None:
        """Gossip this node's verdict on each judged worker of a replicated job."""
        judged: list[tuple[str, Literal["valid", "invalid"]]] = [
            *((w, "valid") for w in valid),
            *((w, "invalid") for w in invalid),
        ]
        for subject, outcome in judged:
            if subject == self.ctx.peer_id:
                continue
            att = Attestation(
                subject=subject, job_id=job.job_id, outcome=outcome, seq=self._next_seq()
            )
            raw = self.ctx.seal(att)
            self._index_record(self.ctx.peer_id, att, raw)
            self.ctx.append(
                "attestation",
                {
                    "subject": subject,
                    "job_id": job.job_id,
                    "outcome": outcome,
                    "seq": att.seq,
                    "envelope": raw,
                },
            )
            self.ctx.emit(Publish(TOPIC_RECEIPTS, raw))
            self.ctx.counters["attestations_sent"] += 1

    # ------------------------------------------------------------ worker side

    def on_receipt(self, msg: Opened) -> None:
        """A receipt sent to us directly by an origin: check, log, countersign, publish."""
        r: Receipt = msg.body
        if r.origin != msg.sender or r.worker != self.ctx.peer_id or r.seq < 1:
            self.ctx.reject("receipt_mismatch", msg.sender, f"receipt {r.origin}/{r.seq}")
            return
        if (
            r.origin,
            r.seq,
        ) in self.entries:  # a re-send: our cosign was lost, or the origin restarted
            if self._index_record(r.origin, r, msg.raw):
                # A fresh envelope: the stored one may be older than max_message_age_ms.
                self.ctx.emit(
                    Publish(TOPIC_RECEIPTS, self.ctx.seal(ReceiptCosign(receipt=msg.raw)))
                )
                self.ctx.counters["receipts_recosigned"] += 1
            return
        work = self.worker.work.get((r.job_id, r.attempt, r.replica))
        if (
            work is None
            or work.origin != msg.sender
            or work.result is None
            or not (
                work.result.status == "succeeded"
                or (r.verdict == "job_failed" and work.result.fault == "job")
            )
        ):
            self.ctx.reject("receipt_unknown_run", msg.sender, f"job {r.job_id}")
            return
        if not self._index_record(r.origin, r, msg.raw):
            return
        cosign = self.ctx.seal(ReceiptCosign(receipt=msg.raw))
        self.ctx.append(
            "receipt_cosigned",
            {
                "job_id": r.job_id,
                "origin": r.origin,
                "seq": r.seq,
                "credits": r.credits,
                "receipt": msg.raw,
                "cosign": cosign,
            },
            key=b"cosign:%s:%d" % (r.origin.encode(), r.seq),
        )
        self.ctx.emit(Publish(TOPIC_RECEIPTS, cosign))
        self.ctx.counters["receipts_cosigned"] += 1
        self._ledger_add(r, msg.ts_ms, cosign)

    # ------------------------------------------------------------ any node

    def on_cosign(self, msg: Opened) -> None:
        """A gossiped countersigned receipt (the node checked the outer envelope)."""
        self._take_cosign(msg)

    def _take_cosign(self, msg: Opened, synced: bool = False) -> bool:
        """Verify an opened ``receipt_cosign`` (the inner receipt's signature,
        signer and worker, seq, the equivocation rule) and add it to the
        ledger; the same checks for gossip and sync. True if it was new.

        A ``synced`` receipt no newer than the oldest one kept is not added to
        a full ledger: it would push out a newer one, which sync would then
        bring back, and so on."""
        inner = self.ctx.codec.open(msg.body.receipt, self.ctx.params.max_message_bytes)
        if isinstance(inner, Rejected) or inner.type != "receipt":
            self.ctx.reject(
                "bad_receipt",
                msg.sender,
                inner.reason if isinstance(inner, Rejected) else inner.type,
            )
            return False
        r: Receipt = inner.body
        if r.origin != inner.sender or r.worker != msg.sender or r.seq < 1:
            self.ctx.reject("receipt_mismatch", msg.sender, f"receipt {r.origin}/{r.seq}")
            return False
        if r.origin == self.ctx.peer_id:
            self._check_own_record(r.seq, msg.sender)
        if not self._index_record(r.origin, r, inner.raw):
            return False
        if (r.origin, r.seq) in self.entries:
            self.ctx.counters["receipt_duplicate"] += 1
            return False
        if (
            synced
            and len(self.entries) >= self.ctx.params.max_ledger_receipts
            and inner.ts_ms <= next(iter(self.entries.values())).ts_ms
        ):
            self.ctx.counters["ledger_sync_too_old"] += 1
            return False
        self._ledger_add(r, inner.ts_ms, msg.raw)
        if r.origin == self.ctx.peer_id:
            self._receipts_pending.pop(r.seq, None)
        return True

    def on_attestation(self, msg: Opened) -> None:
        a: Attestation = msg.body
        if a.seq < 1:
            self.ctx.reject("attestation_unsequenced", msg.sender)
            return
        if not self._index_record(msg.sender, a, msg.raw):
            return
        key = (msg.sender, a.subject, a.job_id)
        if key in self._attestations_seen or a.subject == self.ctx.peer_id:
            return
        self._attestations_seen[key] = None
        while len(self._attestations_seen) > self.ctx.params.max_attestations_seen:
            self._attestations_seen.popitem(last=False)
        if self.ctx.trust.observe_remote(msg.sender, a.subject, a.outcome, self.ctx.now_ms):
            self.ctx.counters["attestations_applied"] += 1
            if (
                a.outcome == "invalid"
                and self.on_conviction is not None
                and self.ctx.trust.credibility(msg.sender, self.ctx.now_ms) >= 1.0
            ):
                self.on_conviction(a.subject, msg.sender)
        else:
            self.ctx.counters["attestations_ignored"] += 1

    def on_reversal(self, msg: Opened) -> None:
        """A gossiped clawback (the node checked the envelope and its signer)."""
        self._take_reversal(msg)

    def _take_reversal(self, msg: Opened, synced: bool = False, shown_by: str = "") -> bool:
        """Check a ``receipt_reversal`` (seqs, the equivocation rule) and keep
        it in the ledger under ``(origin, seq)``: counted against the receipt it
        names if that is in the ledger and matches, else kept uncounted until
        the receipt comes (CREDITS.md §7.6). The same for gossip, sync and our
        own. True if it was new."""
        v: ReceiptReversal = msg.body
        origin, p = msg.sender, self.ctx.params
        if v.seq < 1 or v.receipt_seq >= v.seq:
            self.ctx.reject("reversal_mismatch", shown_by or origin, f"reversal {origin}/{v.seq}")
            return False
        if origin == self.ctx.peer_id and shown_by:
            self._check_own_record(v.seq, shown_by)
        if not self._index_record(origin, v, msg.raw):
            return False
        if (origin, v.seq) in self.entries:
            self.ctx.counters["reversal_duplicate"] += 1
            return False
        if (
            synced
            and len(self.entries) >= p.max_ledger_receipts
            and msg.ts_ms <= next(iter(self.entries.values())).ts_ms
        ):
            self.ctx.counters["ledger_sync_too_old"] += 1
            return False
        entry = LedgerEntry(
            v.job_id, origin, v.worker, 0.0, msg.ts_ms, v.seq, msg.raw, reverses=v.receipt_seq
        )
        self._entry_add(entry, "reversals_ledgered")
        target = (origin, v.receipt_seq)
        if target in self.entries:
            self._apply_reversal(entry)
        elif target not in self._reversal_of:
            self._reversals_waiting[target] = v.seq
            while len(self._reversals_waiting) > p.max_reversals_waiting:
                self._reversals_waiting.popitem(last=False)
                self.ctx.counters["reversals_forgotten"] += 1
        return True

    def _apply_reversal(self, rev: LedgerEntry) -> None:
        """Count ``rev`` against the receipt it names (both in the ledger) if it
        matches and is the first to; else it stays at 0."""
        target = (rev.origin, rev.reverses)
        receipt = self.entries[target]
        if target in self._reversal_of:
            self.ctx.counters["reversal_duplicate"] += 1
            return
        if (
            receipt.reverses
            or receipt.worker != rev.worker
            or receipt.job_id != rev.job_id
            or receipt.verdict != "unverified"
            or rev.seq - receipt.seq > self.ctx.params.clawback_window_ms * SEQ_PER_MS
        ):
            self.ctx.counters["reversal_not_applied"] += 1
            return
        self._reversal_of[target] = rev.seq
        rev.credits = -receipt.credits
        self._bonds.pop(rev.worker, None)
        self._recount()
        self.ctx.counters["reversals_applied"] += 1

    def _ledger_add(
        self, r: Receipt, ts_ms: int, cosign: Any, counter: str = "receipts_ledgered"
    ) -> None:
        self._entry_add(
            LedgerEntry(
                r.job_id, r.origin, r.worker, r.credits, ts_ms, r.seq, cosign, verdict=r.verdict
            ),
            counter,
        )
        waiting = self._reversals_waiting.pop((r.origin, r.seq), None)
        if waiting is not None and (r.origin, waiting) in self.entries:
            self._apply_reversal(self.entries[(r.origin, waiting)])

    def _entry_add(self, entry: LedgerEntry, counter: str) -> None:
        """Add a receipt or reversal at the ledger's end; drop the oldest past
        ``max_ledger_receipts`` (a dropped receipt takes its reversal's
        count with it, so the pair leaves no trace in any balance)."""
        self.entries[(entry.origin, entry.seq)] = entry
        held_now = self._by_origin.get(entry.origin)
        if held_now is None:
            held_now = self._by_origin[entry.origin] = set()
            bisect.insort(self._origins_sorted, entry.origin)
        held_now.add(entry.seq)
        self._summaries.pop(entry.origin, None)
        self._by_worker.setdefault(entry.worker, set()).add((entry.origin, entry.seq))
        self._bonds.pop(entry.worker, None)
        while len(self.entries) > self.ctx.params.max_ledger_receipts:
            (origin, seq), gone = self.entries.popitem(last=False)
            held = self._by_origin[origin]
            held.discard(seq)
            self._summaries.pop(origin, None)
            if not held:
                del self._by_origin[origin]
                del self._origins_sorted[bisect.bisect_left(self._origins_sorted, origin)]
            named = self._by_worker[gone.worker]
            named.discard((origin, seq))
            if not named:
                del self._by_worker[gone.worker]
            self._bonds.pop(gone.worker, None)
            if gone.reverses:
                if self._reversal_of.get((origin, gone.reverses)) == seq:
                    del self._reversal_of[(origin, gone.reverses)]
                continue
            rev_seq = self._reversal_of.pop((origin, seq), None)
            rev = self.entries.get((origin, rev_seq)) if rev_seq is not None else None
            if rev is not None:
                rev.credits = 0.0
                self._bonds.pop(rev.worker, None)
                self._recount()
        self.ctx.counters[counter] += 1

    def _recount(self) -> None:
        """An entry's credits changed in place: :meth:`balance` counts afresh."""
        self._counted.clear()
        self._balance.clear()

    # ------------------------------------------------------------ anti-entropy (CREDITS.md §7.4)

    def _origin_summary(self, origin: str, from_seq: int) -> OriginSummary:
        if from_seq == 0:
            cached = self._summaries.get(origin)
            if cached is not None:
                return cached
        seqs = sorted(s for s in self._by_origin.get(origin, ()) if s >= from_seq)
        made = OriginSummary(
            origin=origin, from_seq=from_seq, count=len(seqs), digest=seq_digest(seqs)
        )
        if from_seq == 0 and origin in self._by_origin:
            self._summaries[origin] = made
        return made

    def _origins_in(self, after: str, through: str | None, limit: int | None = None) -> list[str]:
        """The origins we hold receipts of in ``(after, through]`` (None: no
        upper end), ascending; at most ``limit`` of them (None: all)."""
        held = self._origins_sorted
        lo = bisect.bisect_right(held, after)
        hi = len(held) if through is None else bisect.bisect_right(held, through, lo)
        if limit is not None:
            hi = min(hi, lo + limit)
        return held[lo:hi]

    def _summary(self) -> LedgerSummary:
        """A summary of the next window of at most ``ledger_sync_max_origins``
        origins (in peer-id order) after :attr:`_sync_after`; windows take
        turns, so every origin is described every few rounds."""
        limit = max(1, self.ctx.params.ledger_sync_max_origins)
        after = self._sync_after
        # The first limit + 1 origins after ``after`` of the union of what we
        # hold and where cut-short answers left us are among the first
        # limit + 1 of each.
        known = sorted(
            set(self._origins_in(after, None, limit + 1)).union(
                o for o in self._sync_from if o > after
            )
        )
        window = known[:limit]
        through: str | None = window[-1] if len(known) > limit else None
        self._sync_after = through or ""
        return LedgerSummary(
            after=after,
            through=through,
            origins=[self._origin_summary(o, self._sync_from.get(o, 0)) for o in window],
        )

    def timer_sync(self, _key: Any) -> None:
        """Every ``ledger_sync_interval_ms``: summarise our ledger to one live peer."""
        ctx = self.ctx
        ctx.at(ctx.now_ms + ctx.params.ledger_sync_interval_ms, T_SYNC, None)
        peers = sorted(e.peer_id for e in ctx.peers.alive(ctx.now_ms) if e.peer_id != ctx.peer_id)
        if not peers:
            return
        self._sync_followups = 0
        self._send_summary(ctx.rng.choice(peers))

    def _send_summary(self, peer: str) -> None:
        summary = self._summary()
        self._sync_asked = (peer, summary.after, summary.through)
        self.ctx.send(peer, summary, ttl_ms=self.ctx.params.ledger_sync_interval_ms or None)
        self.ctx.counters["ledger_sync_sent"] += 1

    def on_ledger_summary(self, msg: Opened) -> None:
        """Answer a summary with the countersigned receipts the asker may lack:
        for each origin of its range where our (count, digest) of the seqs from
        its ``from_seq`` on differs, ours in ascending seq, at most
        ``ledger_sync_max_receipts`` (and under ``max_message_bytes``) in all."""
        ctx, p = self.ctx, self.ctx.params
        summary: LedgerSummary = msg.body
        if len(summary.origins) > p.ledger_sync_max_origins:
            ctx.reject("sync_oversize", msg.sender, f"{len(summary.origins)} origins")
            return
        theirs: dict[str, OriginSummary] = {}
        for o in summary.origins:
            in_range = o.origin > summary.after and (
                summary.through is None or o.origin <= summary.through
            )
            if not in_range or o.origin in theirs:
                ctx.reject("sync_bad_summary", msg.sender, f"origin {o.origin}")
                return
            theirs[o.origin] = o
        mine = self._origins_in(summary.after, summary.through)
        cosigns: list[bytes] = []
        size = SYNC_REPLY_OVERHEAD
        resume: tuple[str, int] | None = None
        for origin in mine:
            if resume is not None:
                break
            asked = theirs.get(origin)
            from_seq = asked.from_seq if asked is not None else 0
            ours = self._origin_summary(origin, from_seq)
            if asked is not None and (asked.count, asked.digest) == (ours.count, ours.digest):
                continue
            for seq in sorted(s for s in self._by_origin[origin] if s >= from_seq):
                raw = _cosign_bytes(self.entries[(origin, seq)].cosign)
                if raw is None:
                    continue
                if len(cosigns) >= p.ledger_sync_max_receipts or (
                    size + len(raw) + 8 > p.max_message_bytes
                ):
                    resume = (origin, seq)
                    break
                cosigns.append(raw)
                size += len(raw) + 8
        ctx.send(
            msg.sender,
            LedgerDelta(
                cosigns=cosigns,
                resume_origin=resume[0] if resume else None,
                resume_seq=resume[1] if resume else 0,
            ),
            ttl_ms=p.ledger_sync_interval_ms or None,
        )
        ctx.counters["ledger_sync_answered"] += 1
        ctx.counters["ledger_sync_receipts_sent"] += len(cosigns)

    def on_ledger_delta(self, msg: Opened) -> None:
        """Verify each countersigned receipt of an answer as gossip would (a
        forged one is rejected, the rest still count), move the cursors, and
        ask the same peer again at once if it was cut short (at most
        ``ledger_sync_max_followups`` times a round)."""
        ctx, p = self.ctx, self.ctx.params
        delta: LedgerDelta = msg.body
        if len(delta.cosigns) > p.ledger_sync_max_receipts:
            ctx.reject("sync_oversize", msg.sender, f"{len(delta.cosigns)} receipts")
            return
        peer, after, through = self._sync_asked
        stop = delta.resume_origin
        ours = msg.sender == peer
        if (
            ours
            and stop is not None
            and not (stop > after and (through is None or stop <= through))
        ):
            ctx.reject("sync_bad_delta", msg.sender, f"resume_origin {stop}")
            return
        added = 0
        for raw in delta.cosigns:
            opened = ctx.codec.open(raw, p.max_message_bytes)
            if isinstance(opened, Rejected) or opened.type not in (
                "receipt_cosign",
                "receipt_reversal",
            ):
                ctx.reject(
                    "sync_bad_cosign",
                    msg.sender,
                    opened.reason if isinstance(opened, Rejected) else opened.type,
                )
                continue
            if ctx.trust.banned(opened.sender, ctx.now_ms):
                ctx.reject("sync_banned_cosigner", msg.sender, opened.sender)
                continue
            if opened.type == "receipt_reversal":
                if self._take_reversal(opened, synced=True, shown_by=msg.sender):
                    added += 1
            elif self._take_cosign(opened, synced=True):
                added += 1
        ctx.counters["ledger_sync_receipts_added"] += added
        if not ours:
            return  # an answer we did not ask this peer for: its receipts count, not its cursor
        # Origins of the range we asked about that the answer finished need no
        # cursor any more; the one it was cut short in goes on from resume_seq.
        self._sync_from = {
            o: s
            for o, s in self._sync_from.items()
            if not (o > after and (through is None or o <= through) and (stop is None or o < stop))
        }
        if stop is None:
            return
        self._sync_from[stop] = delta.resume_seq
        while len(self._sync_from) > max(1, p.ledger_sync_max_origins):
            self._sync_from.pop(max(self._sync_from))
        if self._sync_followups < p.ledger_sync_max_followups:
            self._sync_followups += 1
            self._sync_after = after  # the same window again, from the new cursor
            self._send_summary(msg.sender)

    # ------------------------------------------------------------ equivocation

    def _index_record(self, issuer: str, body: Body, raw: Any) -> bool:
        """Remember (issuer, seq) -> body digest; False (and proof kept) on a conflict.

        The same signed bytes seen again carry the same body: no digest to compute."""
        seq = getattr(body, "seq", 0)
        key = (issuer, seq)
        seen = self._records.get(key)
        if seen is not None and raw and seen[1] == raw:
            return True
        digest = hashlib.sha256(
            canonical_bytes([type(body).__name__, body.model_dump(mode="json")])
        ).digest()
        if seen is None:
            self._records[key] = (digest, raw)
            while len(self._records) > self.ctx.params.max_records_indexed:
                self._records.popitem(last=False)
            return True
        if seen[0] == digest:
            return True
        self._equivocation(issuer, seq, seen[1], raw)
        return False

    def _equivocation(self, issuer: str, seq: int, first: Any, second: Any) -> None:
        proof = {
            "issuer": issuer,
            "seq": seq,
            "first": first,
            "second": second,
            "detected_ms": self.ctx.now_ms,
        }
        self.equivocations.append(proof)
        self.ctx.counters["equivocations"] += 1
        self.ctx.append("equivocation", proof)
        self.ctx.trust.ban_forever(
            issuer, f"equivocation: two signed records with seq {seq}", self.ctx.now_ms
        )

    # ------------------------------------------------------------ restore

    def restore_record(self, kind: str, body: dict[str, Any]) -> None:
        """Take one of this node's own log records (oldest first) into account after a restart.

        Cheap per record: envelopes are only kept (the newest ``max_records_indexed``)
        and opened once, in :meth:`resume`."""
        if kind in ("receipt", "attestation", "receipt_reversal"):
            self._record_seq = max(self._record_seq, int(body.get("seq", 0)))
        if kind == "receipt" and body.get("worker"):
            self._note_issued(str(body.get("job_id", "")), body["worker"], int(body.get("seq", 0)))
        if kind in ("receipt", "attestation", "receipt_cosigned", "receipt_reversal"):
            if self._restoring is None:
                self._restoring = deque(maxlen=self.ctx.params.max_records_indexed)
            self._restoring.append((kind, body))
        elif kind == "equivocation":
            self.equivocations.append(body)
            self.ctx.trust.ban_forever(
                body["issuer"],
                f"equivocation: two signed records with seq {body['seq']}",
                self.ctx.now_ms,
            )

    def resume(self) -> None:
        """After the records: rebuild the record index and the ledger entries this node
        countersigned, and ask again for the countersignatures of the newest
        ``max_receipts_pending`` receipts it issued (which ones came back before the
        restart is not logged). Ledger entries learned only from gossip are not in
        the log; they come back only as they are gossiped again."""
        restoring, self._restoring = self._restoring, None
        issued: deque[Receipt] = deque(maxlen=self.ctx.params.max_receipts_pending)
        for kind, body in restoring or ():
            opened = self.ctx.codec.open(
                body.get("receipt" if kind == "receipt_cosigned" else "envelope"),
                self.ctx.params.max_message_bytes,
            )
            if isinstance(opened, Rejected):
                self.ctx.counters["restore_unreadable"] += 1
                continue
            if kind == "receipt_reversal":
                self._take_reversal(opened)
                continue
            issuer = opened.body.origin if kind == "receipt_cosigned" else self.ctx.peer_id
            if not self._index_record(issuer, opened.body, opened.raw):
                continue
            if kind == "receipt_cosigned":
                self._ledger_add(
                    opened.body, opened.ts_ms, body["cosign"], counter="receipts_restored"
                )
            elif kind == "receipt":
                issued.append(opened.body)
        self._rearm_receipts(issued)
        self._restored_head = self._record_seq

    def _rearm_receipts(self, issued: deque[Receipt]) -> None:
        # Re-sealed (the logged envelope may be stale by now; the body and seq are
        # the same, so this is no equivocation) and spread out per worker at half
        # its gossip rate, so its republished countersignatures are not dropped.
        spacing_ms = int(2_000 / max(self.ctx.params.rate_gossip_per_s, 0.001))
        per_worker: dict[str, int] = {}
        for r in issued:
            n = per_worker[r.worker] = per_worker.get(r.worker, 0) + 1
            self._receipts_pending[r.seq] = PendingReceipt(r.worker, r.job_id, self.ctx.seal(r))
            self.ctx.at(
                self.ctx.now_ms + self.ctx.params.receipt_resend_ms + (n - 1) * spacing_ms,
                T_RECEIPT,
                r.seq,
            )
        self.ctx.counters["receipts_rearmed"] += len(issued)

    # ------------------------------------------------------------ views

    def bond(self, worker: str) -> Bond:
        """``worker``'s bond over this node's ledger (CREDITS.md §7.7)."""
        if self.ctx.params.bond_valid_receipts <= 0:
            return RELEASED
        found = self._bonds.get(worker)
        if found is None:
            mine = [e for k in self._by_worker.get(worker, ()) if (e := self.entries.get(k))]
            found = bond_of(worker, mine, self.ctx.params.bond_valid_receipts)
            self._bonds[worker] = found
        return found

    def balances(self) -> dict[str, dict[str, float]]:
        """peer -> {earned, spent, held, forfeited, balance}, from countersigned
        receipts and reversals only: ``earned`` is all the peer was paid (net
        of clawbacks), ``held``/``forfeited`` the part of it its bond keeps
        back (§7.7), ``balance = earned − held − forfeited − spent``.

        Sums are exactly rounded (``math.fsum``), so two nodes holding the same
        receipts get the same figures whatever order they learned them in."""
        earned: dict[str, list[float]] = {}
        spent: dict[str, list[float]] = {}
        for e in self.entries.values():
            earned.setdefault(e.worker, []).append(e.credits)
            spent.setdefault(e.origin, []).append(e.credits)
        out: dict[str, dict[str, float]] = {}
        for peer in earned.keys() | spent.keys():
            got, paid = math.fsum(earned.get(peer, ())), math.fsum(spent.get(peer, ()))
            bond = self.bond(peer)
            out[peer] = {
                "earned": got,
                "spent": paid,
                "held": bond.withheld if bond.state == "held" else 0.0,
                "forfeited": bond.withheld if bond.state == "forfeited" else 0.0,
                "balance": math.fsum((got, -paid, -bond.withheld)),
            }
        return out

    def balance(self, peer: str) -> float:
        """``peer``'s balance in this node's ledger (0 for a peer it holds no
        receipt of). The worker asks this when saturated (``Worker.on_offer``).

        Kept up to date incrementally, in time proportional to what changed:
        entries are only added at the end of the ledger and dropped from its
        front, so the receipts counted so far (``_counted``, in ledger order)
        are brought in line by dropping the ones that left from their front
        and adding the new ones from the ledger's end; should the two ever
        disagree in size (an entry removed from the middle), all is recounted."""
        entries, counted, bal = self.entries, self._counted, self._balance
        while counted:
            key = next(iter(counted))
            if key in entries:
                break
            origin, worker, credits = counted.popitem(last=False)[1]
            bal[origin] += credits
            bal[worker] -= credits
        fresh = []
        for key in reversed(entries):
            if key in counted:
                break
            fresh.append(key)
        for key in reversed(fresh):
            e = entries[key]
            counted[key] = (e.origin, e.worker, e.credits)
            bal[e.worker] = bal.get(e.worker, 0.0) + e.credits
            bal[e.origin] = bal.get(e.origin, 0.0) - e.credits
        if len(counted) != len(entries):
            counted.clear()
            bal.clear()
            for key, e in entries.items():
                counted[key] = (e.origin, e.worker, e.credits)
                bal[e.worker] = bal.get(e.worker, 0.0) + e.credits
                bal[e.origin] = bal.get(e.origin, 0.0) - e.credits
        return bal.get(peer, 0.0) - self.bond(peer).withheld

    def credits_view(self) -> dict[str, Any]:
        """The JSON shape of ``GET /v1/credits``."""
        balances = [{"peer_id": p, **v} for p, v in sorted(self.balances().items())]
        receipts = [
            {
                "job_id": e.job_id,
                "worker": e.worker,
                "origin": e.origin,
                "credits": e.credits,
                "ts_ms": e.ts_ms,
                "seq": e.seq,
                "reverses": e.reverses or None,
            }
            for e in sorted(self.entries.values(), key=lambda e: (e.ts_ms, e.origin, e.seq))
        ]
        return {"balances": balances, "receipts": receipts}


def _cosign_bytes(cosign: Any) -> bytes | None:
    """A ledger entry's countersignature as the bytes a ``ledger_delta`` carries
    (the simulator's codec keeps an object whose ``raw`` is its token)."""
    if isinstance(cosign, (bytes, bytearray)):
        return bytes(cosign)
    raw = getattr(cosign, "raw", None)
    return raw if isinstance(raw, bytes) and raw else None
