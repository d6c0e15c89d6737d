"""Invariant checkers: they sit outside the nodes and watch effects and logs.

Checked on every step (cheap, exact):
- **append-first**: in every batch a node returns, no Append follows a message
  or an execution (the durability rule of ``events.py``; checked inline in
  ``Engine.apply``);
- **capacity**: a node never runs more executions at once than its capacity;
- **transitions**: each ``job_state`` record starts where the job's previous one
  ended, and the move is in ``lifecycle.TRANSITIONS``;
- **no fabricated result**: a verdict's canonical digest was produced by some
  execution of that job;
- **no wrong verified result**: a replicated ("agreed") verdict's canonical is the
  honest digest; with no liars in the run, *every* verdict's canonical is. (An
  unreplicated result from a liar can be accepted by design — BOINC-style
  adaptive replication — and is counted as an *escape*, a metric);
- **verdict stability**: a job's canonical never changes once settled, and a
  ``job_finished(succeeded)`` follows a verdict with the same canonical;
- **credits**: a credit/receipt record names a worker of an accepted verdict,
  at most once per (job, worker, replica) (inactive until credits.py records them).

Checked at the end of the run (and at each phase boundary for lengths):
- **append-only logs**: every node's log holds, as a prefix, exactly the records
  it held before — each record's content fingerprint taken when it was appended
  still matches (catches in-place mutation through aliasing);
- **no job lost** (after the liveness phase): every submitted job is terminal.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from meshd.core.lifecycle import TRANSITIONS

from .engine import Engine, SimFailure, Slot
from .workload import JobPlan


class Checker:
    def __init__(self, engine: Engine, plans: list[JobPlan], *, liars: bool) -> None:
        self.engine = engine
        self.plans = {p.job_id: p for p in plans}
        self.liars = liars
        self.fingerprints: list[list[int]] = [[] for _ in engine.slots]
        self.job_state: dict[tuple[int, str], str] = {}
        self.canonical: dict[str, str] = {}
        self.verdicts: list[tuple[int, str, dict[str, Any]]] = []  # (time, origin peer, body)
        self.last_verdict: dict[str, dict[str, Any]] = {}
        self.finished: dict[str, tuple[str, int]] = {}
        self.credited: set[tuple[str, str, int]] = set()
        self.escapes: list[str] = []
        self.counts: Counter[str] = Counter()
        self.runs_per_job: Counter[str] = Counter()
        self.share: list[tuple[Any, ...]] | None = None
        """In a split run (``simulations.parallel``): where the per-job facts
        other processes need go (verdicts, finishes, audits)."""

    def fail(self, what: str) -> None:
        raise SimFailure(f"invariant violated at t={self.engine.now} ms: {what}")

    # ------------------------------------------------------------ per step

    def on_start(self, slot: Slot, eff: Any) -> None:
        if len(slot.running) >= slot.hw.cores:
            self.fail(
                f"node {slot.idx} started {eff.job_id} with {len(slot.running)} runs already "
                f"executing (capacity {slot.hw.cores})"
            )

    def on_append(self, slot: Slot, kind: str, body: dict[str, Any]) -> None:
        self.fingerprints[slot.idx].append(hash(repr(body)))
        self.counts[kind] += 1
        if kind == "work_started":
            self.runs_per_job[body["job_id"]] += 1
        elif kind == "job_state":
            self._on_state(slot, body)
        elif kind == "job_verdict":
            self._on_verdict(slot, body)
        elif kind == "job_finished":
            self._on_finished(slot, body)
        elif kind == "job_audit":
            self._on_audit(body)
        elif kind == "receipt_reversal":
            pass  # a clawback takes a credit back; it grants none
        elif "credit" in kind or "receipt" in kind:
            self._on_credit(slot, kind, body)

    def _on_state(self, slot: Slot, body: dict[str, Any]) -> None:
        key = (slot.idx, body["job_id"])
        prev = self.job_state.get(key, "queued")
        if body["from"] != prev:
            self.fail(
                f"job {body['job_id']} on node {slot.idx}: state record from {body['from']!r} "
                f"but the job was {prev!r}"
            )
        if (body["from"], body["to"]) not in TRANSITIONS:
            self.fail(f"job {body['job_id']}: illegal transition {body['from']} -> {body['to']}")
        self.job_state[key] = body["to"]

    def _on_verdict(self, slot: Slot, body: dict[str, Any]) -> None:
        jid, canon = body["job_id"], body["canonical"]
        plan = self.plans.get(jid)
        self.verdicts.append((self.engine.now, slot.peer_id, body))
        self.last_verdict[jid] = body
        if canon not in self.engine.produced.get(jid, ()):
            self.fail(f"job {jid}: canonical {canon[:20]}… was never produced by any execution")
        if jid in self.canonical and self.canonical[jid] != canon:
            self.fail(
                f"job {jid}: canonical changed from {self.canonical[jid][:20]}… to {canon[:20]}…"
            )
        self.canonical[jid] = canon
        if self.share is not None:
            self.share.append(("verdict", jid, body))
        if plan is not None and canon != plan.honest_digest:
            if body.get("verdict") == "agreed" or body.get("needed", 1) > 1 or not self.liars:
                self.fail(
                    f"job {jid}: wrong result accepted (verdict {body.get('verdict')!r}, "
                    f"valid={body.get('valid')}, invalid={body.get('invalid')})"
                )
            self.escapes.append(jid)

    def _on_audit(self, body: dict[str, Any]) -> None:
        """specs/CREDITS.md §4.1: an audit reopens a succeeded job, so it may
        finish again, and its canonical may change (the accepted one retracted)."""
        self.finished.pop(body["job_id"], None)
        self.canonical.pop(body["job_id"], None)
        if self.share is not None:
            self.share.append(("audit", body["job_id"]))

    def _on_finished(self, slot: Slot, body: dict[str, Any]) -> None:
        jid = body["job_id"]
        if body["state"] == "succeeded" and self.canonical.get(jid) != body.get("canonical"):
            self.fail(
                f"job {jid}: finished with canonical {body.get('canonical')!r} but the verdict "
                f"said {self.canonical.get(jid)!r}"
            )
        prev = self.finished.get(jid)
        if prev is not None and prev[0] == "succeeded":
            self.fail(f"job {jid}: finished twice (was succeeded, now {body['state']})")
        self.finished[jid] = (body["state"], self.engine.now)
        self.job_state[(slot.idx, jid)] = body["state"]
        if self.share is not None:
            self.share.append(("finished", jid, body["state"], self.engine.now))

    def apply_fact(self, fact: tuple[Any, ...]) -> None:
        """Another process's per-job news (a split run): what its nodes'
        appends told its checker, checked there already."""
        kind, jid = fact[0], fact[1]
        if kind == "verdict":
            self.last_verdict[jid] = fact[2]
            self.canonical[jid] = fact[2]["canonical"]
        elif kind == "finished":
            self.finished[jid] = (fact[2], fact[3])
        elif kind == "audit":
            self.finished.pop(jid, None)
            self.canonical.pop(jid, None)

    def _on_credit(self, slot: Slot, kind: str, body: dict[str, Any]) -> None:
        jid, worker = body.get("job_id"), body.get("worker")
        if jid is None or worker is None:
            return
        accepted = self.last_verdict.get(jid)
        if accepted is None or worker not in accepted.get("valid", []):
            self.fail(f"{kind} for {jid} credits {worker[-8:]} without an accepted result from it")
        key = (jid, worker, int(body.get("replica", 0)))
        if slot.peer_id == body.get("origin") or kind.startswith("credit"):
            if key in self.credited:
                self.fail(f"{kind}: {jid} credited twice to {worker[-8:]}")
            self.credited.add(key)

    # ------------------------------------------------------------ whole-run

    def check_logs(self) -> None:
        """Every log is an append-only extension of what it held (content unchanged)."""
        for slot in self.engine.owned_slots():
            fps = self.fingerprints[slot.idx]
            if len(slot.log) != len(fps):
                self.fail(
                    f"node {slot.idx}: log has {len(slot.log)} records, {len(fps)} were appended"
                )
            for i, (_, body) in enumerate(slot.log):
                if hash(repr(body)) != fps[i]:
                    self.fail(
                        f"node {slot.idx}: log record {i} ({slot.log[i][0]}) changed after it was appended"
                    )

    def lost_jobs(self, submitted: set[str]) -> list[str]:
        return sorted(j for j in submitted if j not in self.finished)
