"""The daemon's log worth reading: what the node did, at INFO, one line per event.

Theory of operation
-------------------
Everything the core decides that an operator cares about is already an
``Append`` (a record of the signed event log), so :meth:`EventLogger.record`
turns the interesting record kinds into log lines: jobs submitted, placed,
finished and failed with their reason; runs started and ended on this node;
verdicts, audits and retracted results; warmth; equivocation bans. :meth:`EventLogger.peers` compares the
set of live peers with the last one it saw and logs who joined and who left.

Every line carries its fields as ``extra=`` (``event``, ``job_id``,
``peer_id``, ...), so ``--log-format json`` writes each as its own JSON field
(``meshd/logsetup.py``); the human format reads as a sentence. Record kinds
not listed here (receipts, acks, state changes) stay at DEBUG: the event log
has them all (``mesh log show``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("meshd.events")


def _short(peer: Any) -> str:
    text = str(peer or "-")
    return text[-8:] if len(text) > 12 else text


def _run(b: dict[str, Any]) -> str:
    return f"{b.get('job_id')} attempt {b.get('attempt')} replica {b.get('replica', 0)}"


# record kind -> (level, message from the body)
_EVENTS: dict[str, tuple[int, Callable[[dict[str, Any]], str]]] = {
    "job_submitted": (
        logging.INFO,
        lambda b: f"job {b.get('job_id')} submitted (image {b.get('spec', {}).get('image')})",
    ),
    "run_awarded": (
        logging.INFO,
        lambda b: f"job {_run(b)} placed on {_short(b.get('worker'))}",
    ),
    "run_failed": (
        logging.WARNING,
        lambda b: f"job {_run(b)} failed on {_short(b.get('worker'))}: {b.get('reason')}",
    ),
    "job_no_bids": (logging.INFO, lambda b: f"job {b.get('job_id')}: no usable bid yet"),
    "job_verdict": (
        logging.INFO,
        lambda b: (
            f"job {b.get('job_id')} verdict {b.get('verdict')}"
            f" (valid {len(b.get('valid') or [])}, invalid {len(b.get('invalid') or [])})"
            + (", provisional until its hold ends" if b.get("provisional_until_ms") else "")
        ),
    ),
    "job_finished": (
        logging.INFO,
        lambda b: (
            f"job {b.get('job_id')} {b.get('state')}"
            + (f": {b.get('reason')}" if b.get("reason") else "")
        ),
    ),
    "work_accepted": (
        logging.INFO,
        lambda b: f"run {_run(b)} accepted for {_short(b.get('origin'))}",
    ),
    "work_started": (logging.INFO, lambda b: f"run {_run(b)} started here"),
    "work_finished": (
        logging.INFO,
        lambda b: (
            f"run {_run(b)} ended here: {b.get('status')}"
            + (f" ({b.get('reason')})" if b.get("reason") else "")
        ),
    ),
    "work_cancelled": (logging.INFO, lambda b: f"run {_run(b)} cancelled: {b.get('reason')}"),
    "work_abandoned": (logging.WARNING, lambda b: f"run {_run(b)} abandoned: {b.get('reason')}"),
    "node_warmth": (
        logging.INFO,
        lambda b: (
            "node is warm (ready to run jobs)"
            if b.get("warm")
            else f"node is cold: {b.get('reason')}"
        ),
    ),
    "equivocation": (
        logging.WARNING,
        lambda b: (
            f"peer {_short(b.get('issuer'))} banned for ever: two signed records "
            f"with seq {b.get('seq')}"
        ),
    ),
    "tail_lost": (
        logging.ERROR,
        lambda b: (
            f"THIS NODE'S EVENT LOG LOST ITS TAIL: it ends at record seq "
            f"{b.get('log_head_seq')}, but peer {_short(b.get('peer'))} holds a receipt this node "
            f"signed with seq {b.get('seen_seq')}. What the node signed after seq "
            f"{b.get('log_head_seq')} (receipts, attestations, job records) is missing from its "
            "log. Restore the data dir from a backup if you have one; otherwise the node goes "
            "on, numbering new records after the lost ones (see `mesh status`)."
        ),
    ),
    "job_audit": (
        logging.WARNING,
        lambda b: (
            f"job {b.get('job_id')} audited: its result came from {_short(b.get('worker'))}, "
            "convicted since; re-verifying it on other workers"
        ),
    ),
    "job_retracted": (
        logging.WARNING,
        lambda b: (
            f"job {b.get('job_id')}: {'final' if b.get('final', True) else 'provisional'} "
            f"result from convicted worker {_short(b.get('worker'))} "
            f"RETRACTED by its audit ({str(b.get('retracted'))[:19]} replaced by "
            f"{str(b.get('canonical'))[:19]})"
            + ("" if b.get("final", True) else "; it was never final (within its hold)")
        ),
    ),
    "receipt_reversal": (
        logging.WARNING,
        lambda b: (
            f"job {b.get('job_id')}: pay for the retracted result of {_short(b.get('worker'))} "
            f"taken back (reversal of receipt seq {b.get('receipt_seq')})"
        ),
    ),
    "score_mismatch": (
        logging.WARNING,
        lambda b: f"peer {_short(b.get('worker'))} claims a faster score than it achieves",
    ),
}
FIELDS = ("job_id", "attempt", "replica", "worker", "origin", "state", "reason", "status", "final")
"""Body fields copied into a line's structured fields when present."""


class EventLogger:
    """Turns the node's records and peer changes into log lines."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger
        self._peers: set[str] | None = None

    def record(self, kind: str, body: dict[str, Any]) -> None:
        """Log one record the core appended, if it is one worth a line."""
        event = _EVENTS.get(kind)
        if event is None:
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("record %s", kind, extra={"event": kind})
            return
        level, message = event
        if not self.log.isEnabledFor(level):
            return
        extra = {"event": kind, **{k: body[k] for k in FIELDS if k in body}}
        if "peer" in body:
            extra["peer_id"] = body["peer"]
        if "issuer" in body:
            extra["peer_id"] = body["issuer"]
        self.log.log(level, message(body), extra=extra)

    def peers(self, alive: Iterable[str]) -> None:
        """Log the peers that joined or left since the last call."""
        now = set(alive)
        before, self._peers = self._peers, now
        if before is None:
            if now:
                self.log.info("%d peer(s) known", len(now), extra={"event": "peers"})
            return
        for peer in sorted(now - before):
            self.log.info(
                "peer %s joined", _short(peer), extra={"event": "peer_joined", "peer_id": peer}
            )
        for peer in sorted(before - now):
            self.log.info(
                "peer %s left (no fresh advert)",
                _short(peer),
                extra={"event": "peer_left", "peer_id": peer},
            )
