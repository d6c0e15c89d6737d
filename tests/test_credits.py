"""Credits: receipts, countersignatures, ledgers, balances, equivocation (meshd/core/credits.py).

Rules checked (specs/CREDITS.md):
- credits = duration × score × price × credit_rate (capped by the bid) + an
  equal share of the bounty, for runs in the canonical group only;
- a receipt is signed by the origin, countersigned by the worker only for a
  run it did, and any node's ledger built from gossiped pairs gives the same
  balances as the two parties'; a receipt is counted once;
- two different validly signed records with one (issuer, seq) are kept as
  proof and the issuer is banned for ever.
"""

from __future__ import annotations

import math
import random

from meshd.core.credits import Bond
from meshd.core.events import TOPIC_RECEIPTS, Append, DirectReceived, GossipReceived, SetPeerScore
from meshd.core.identity import Identity
from meshd.core.jobspec import JobSpec
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.wire import Attestation, Receipt, ReceiptCosign, ReceiptReversal, seal
from meshd.testing.corenet import CoreNet, FakeWorker

NOW = 5_000_000
ORIGIN = Identity.from_seed_int(71)
WORKER = Identity.from_seed_int(72)
JOB = "job-0000feedbeef"
_nonce = iter(range(1, 1 << 30))


def sealed(identity: Identity, body: object, ts: int = NOW) -> bytes:
    return seal(identity, body, ts, next(_nonce).to_bytes(8, "big"))  # type: ignore[arg-type]


def receipt(seq: int, credits: float = 1.0, worker: Identity = WORKER) -> Receipt:
    return Receipt(
        job_id=JOB,
        attempt=1,
        origin=ORIGIN.peer_id,
        worker=worker.peer_id,
        credits=credits,
        duration_ms=1000,
        seq=seq,
    )


def cosigned(r: Receipt, cosigner: Identity = WORKER) -> bytes:
    return sealed(cosigner, ReceiptCosign(receipt=sealed(ORIGIN, r)))


def observer() -> Node:
    return Node(CoreParams(), Identity.from_seed_int(70), random.Random(1), NOW)


def gossip(node: Node, data: bytes) -> list[object]:
    return node.step(GossipReceived(TOPIC_RECEIPTS, "12D3KooWrelay", data), NOW)


def spec(i: int, **kw: object) -> JobSpec:
    return JobSpec(image="meshd/busybox:1", command=["echo", str(i)], timeout_s=60, **kw)  # type: ignore[arg-type]


def mesh_with_observer(seed: int) -> CoreNet:
    """Node 0 submits, nodes 1-3 work, node 4 is cold (never bids): it only listens."""
    workers = [FakeWorker(), FakeWorker(), FakeWorker(), FakeWorker(), FakeWorker(healthy=False)]
    net = CoreNet(5, seed=seed, workers=workers)
    net.run_for(3_000)
    return net


def run_jobs(net: CoreNet, specs: list[JobSpec]) -> list[str]:
    ids = []
    for s in specs:
        ids.append(net.submit(0, s))
        net.run_for(200)
    assert net.run_until(lambda: all(net.job(0, j).state == "succeeded" for j in ids), 120_000)
    net.run_for(2_000)  # receipts and countersignatures travel
    return ids


# ---------------------------------------------------------------- the receipt protocol on CoreNet


def test_third_node_balances_equal_the_parties_ledgers() -> None:
    net = mesh_with_observer(seed=5)
    ids = run_jobs(net, [spec(i) for i in range(12)])
    origin, third = net.node(0), net.node(4)
    issued = [b for k, b in net.slots[net.order[0]].log if k == "receipt"]
    accepted = sum(len(net.job(0, j).verdict["valid"]) for j in ids)
    assert len(issued) == accepted
    assert len(third.ledger.entries) == len(issued)  # each counted once
    view = third.ledger.credits_view()
    assert view == origin.ledger.credits_view()
    by_peer = {b["peer_id"]: b for b in view["balances"]}
    assert by_peer[origin.peer_id]["spent"] == math.fsum(b["credits"] for b in issued)
    # Zero-sum, counting what bonds keep back (§7.7)
    assert abs(sum(b["balance"] + b["held"] + b["forfeited"] for b in view["balances"])) < 1e-9
    for w in net.order[1:4]:
        mine = net.node(w).ledger.balances().get(w, {"earned": 0.0})
        assert mine["earned"] == by_peer.get(w, {"earned": 0.0})["earned"]
        logged = [b for k, b in net.slots[w].log if k == "receipt_cosigned"]
        assert len(logged) == sum(1 for b in issued if b["worker"] == w)
    assert {r["job_id"] for r in view["receipts"]} == set(ids)
    assert {"job_id", "worker", "origin", "credits", "ts_ms", "seq", "reverses"} == set(
        view["receipts"][0]
    )
    assert all(r["reverses"] is None for r in view["receipts"])  # no clawback here


def test_credit_is_duration_times_rate_plus_bounty_share() -> None:
    net = mesh_with_observer(seed=6)
    ids = run_jobs(net, [spec(1, replicas=2, bounty=1.0, credit_rate=2.0)])
    job = net.job(0, ids[0])
    # 1 s × 50 GFLOPS × 0.001 credits/GFLOP × rate 2 = 0.1, plus half the bounty each
    entries = list(net.node(4).ledger.entries.values())
    assert sorted(e.worker for e in entries) == sorted(job.verdict["valid"])
    assert all(abs(e.credits - 0.6) < 1e-9 for e in entries)


def test_resent_receipt_is_counted_once() -> None:
    net = mesh_with_observer(seed=7)
    run_jobs(net, [spec(1)])
    origin, third = net.node(0), net.node(4)
    entries = list(third.ledger.entries.values())
    assert entries
    for e in entries:
        gossip(third, e.cosign)  # the same pair again (replay)
    gossip(third, sealed(WORKER, ReceiptCosign(receipt=b"x")))  # junk is rejected, not counted
    assert len(third.ledger.entries) == len(entries)
    assert third.counters["rejected_bad_receipt"] == 1
    assert origin.counters["receipts_uncosigned"] == 0


# ---------------------------------------------------------------- worker side checks


def test_worker_refuses_to_countersign_a_run_it_did_not_do() -> None:
    node = Node(CoreParams(), WORKER, random.Random(2), NOW)
    fx = node.step(DirectReceived(ORIGIN.peer_id, sealed(ORIGIN, receipt(7))), NOW)
    assert node.counters["rejected_receipt_unknown_run"] == 1
    assert not any(isinstance(e, Append) and e.kind == "receipt_cosigned" for e in fx)
    assert not node.ledger.entries


def test_cosign_by_someone_else_than_the_named_worker_is_rejected() -> None:
    node = observer()
    gossip(node, cosigned(receipt(9), cosigner=Identity.from_seed_int(99)))
    assert node.counters["rejected_receipt_mismatch"] == 1 and not node.ledger.entries


def test_unsequenced_receipt_earns_nothing() -> None:
    node = observer()
    gossip(node, cosigned(receipt(0)))
    assert node.counters["rejected_receipt_mismatch"] == 1 and not node.ledger.entries


def test_gossiped_pair_lands_in_the_ledger() -> None:
    node = observer()
    gossip(node, cosigned(receipt(3, credits=2.5)))
    bal = node.ledger.balances()
    assert bal[WORKER.peer_id]["earned"] == 2.5 and bal[ORIGIN.peer_id]["balance"] == -2.5


# ---------------------------------------------------------------- equivocation


def test_two_different_receipts_with_one_seq_ban_the_issuer_with_proof() -> None:
    node = observer()
    gossip(node, cosigned(receipt(42, credits=1.0)))
    fx = gossip(node, cosigned(receipt(42, credits=9.0)))
    assert len(node.ledger.equivocations) == 1
    proof = node.ledger.equivocations[0]
    assert (
        proof["issuer"] == ORIGIN.peer_id
        and proof["seq"] == 42
        and proof["first"] != proof["second"]
    )
    assert node.trust.banned(ORIGIN.peer_id, NOW + 10 * node.params.reputation_half_life_ms)
    assert SetPeerScore(ORIGIN.peer_id, -1.0, True) in fx
    assert any(isinstance(e, Append) and e.kind == "equivocation" for e in fx)
    assert len(node.ledger.entries) == 1  # the conflicting one is not counted
    gossip(
        node,
        sealed(ORIGIN, Attestation(subject=WORKER.peer_id, job_id=JOB, outcome="valid", seq=43)),
    )
    assert node.counters["rejected_banned"] == 1


def test_the_same_receipt_in_two_countersignatures_is_not_equivocation() -> None:
    node = observer()
    inner = sealed(ORIGIN, receipt(5))
    gossip(node, sealed(WORKER, ReceiptCosign(receipt=inner)))
    gossip(node, sealed(WORKER, ReceiptCosign(receipt=inner)))
    assert not node.ledger.equivocations and len(node.ledger.entries) == 1


def test_attestation_and_receipt_share_one_sequence() -> None:
    node = observer()
    gossip(node, cosigned(receipt(8)))
    gossip(
        node,
        sealed(ORIGIN, Attestation(subject=WORKER.peer_id, job_id=JOB, outcome="invalid", seq=8)),
    )
    assert len(node.ledger.equivocations) == 1
    assert node.trust.banned(ORIGIN.peer_id, NOW)


def test_issued_sequence_numbers_increase_and_survive_a_restart() -> None:
    net = mesh_with_observer(seed=9)
    run_jobs(net, [spec(i) for i in range(3)])
    before = [b["seq"] for k, b in net.slots[net.order[0]].log if k in ("receipt", "attestation")]
    net.crash(net.order[0])
    net.run_for(1_000)
    net.restart(net.order[0])
    net.run_for(3_000)
    run_jobs(net, [spec(i) for i in range(10, 13)])
    seqs = [b["seq"] for k, b in net.slots[net.order[0]].log if k in ("receipt", "attestation")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and len(seqs) > len(before)
    assert all(not net.node(p).ledger.equivocations for p in net.order)


# ---------------------------------------------------------------- restart (Node.restore)


def _ledger_of(node: Node, worker: str | None = None) -> dict[tuple[str, int], float]:
    return {
        k: e.credits for k, e in node.ledger.entries.items() if worker is None or e.worker == worker
    }


def test_worker_restart_restores_what_it_countersigned_from_its_log() -> None:
    net = mesh_with_observer(seed=11)
    run_jobs(net, [spec(i) for i in range(8)])
    w = max(net.order[1:4], key=lambda p: len(_ledger_of(net.node(p), p)))
    own_before = _ledger_of(net.node(w), w)
    assert own_before
    earned_before = net.node(w).ledger.balances()[w]["earned"]
    third_party = set(net.node(w).ledger.entries) - set(own_before)
    net.crash(w)
    net.restart(w)
    node = net.node(w)  # restored from the log alone: nothing has been delivered yet
    assert _ledger_of(node, w) == own_before
    assert node.ledger.balances()[w]["earned"] == earned_before
    assert node.counters["receipts_restored"] == len(own_before)
    # Receipts it only saw gossiped are not in its log (specs/CREDITS.md §7.3).
    assert third_party and not third_party & set(node.ledger.entries)


def test_origin_restart_asks_again_and_gets_its_ledger_back() -> None:
    net = mesh_with_observer(seed=12)
    run_jobs(net, [spec(i) for i in range(8)])
    o = net.order[0]
    before = _ledger_of(net.node(o))
    spent_before = net.node(o).ledger.balances()[o]["spent"]
    issued = [b["seq"] for k, b in net.slots[o].log if k == "receipt"]
    assert len(before) == len(issued) > 0
    net.crash(o)
    net.run_for(net.params.max_message_age_ms + 10_000)  # every logged envelope is stale now
    net.restart(o)
    node = net.node(o)
    assert not node.ledger.entries and len(node.ledger._receipts_pending) == len(issued)
    net.run_for(net.params.receipt_resend_ms + 5_000)
    assert _ledger_of(node) == before
    assert node.ledger.balances()[o]["spent"] == spent_before
    assert not node.ledger._receipts_pending
    assert sum(net.node(p).counters["receipts_recosigned"] for p in net.order) == len(issued)
    assert all(not net.node(p).ledger.equivocations for p in net.order)
    assert len(net.node(4).ledger.entries) == len(issued)  # the fresh cosigns are no new receipts


def test_restored_sequence_never_repeats_even_if_the_clock_is_behind() -> None:
    ahead = (NOW + 3_600_000) * 1000  # issued while the clock was an hour ahead
    att = Attestation(subject=WORKER.peer_id, job_id=JOB, outcome="valid", seq=ahead)
    log = [
        (
            "attestation",
            {
                "subject": WORKER.peer_id,
                "job_id": JOB,
                "outcome": "valid",
                "seq": ahead,
                "envelope": sealed(ORIGIN, att),
            },
        )
    ]
    node = Node(CoreParams(), ORIGIN, random.Random(3), NOW)
    node.restore(log)
    assert node.ledger._next_seq() > ahead
    # and the restored index still knows what it signed under that seq
    assert node.ledger._records[(ORIGIN.peer_id, ahead)][1] == log[0][1]["envelope"]


def test_equivocation_ban_and_proof_survive_a_restart() -> None:
    node = observer()
    fx = [
        *gossip(node, cosigned(receipt(42, credits=1.0))),
        *gossip(node, cosigned(receipt(42, credits=9.0))),
    ]
    log = [(e.kind, e.body) for e in fx if isinstance(e, Append)]
    assert [k for k, _ in log] == ["equivocation"]
    fresh = observer()
    effects = fresh.restore(log)
    assert fresh.trust.banned(ORIGIN.peer_id, NOW + 10 * fresh.params.reputation_half_life_ms)
    assert list(fresh.ledger.equivocations) == [log[0][1]]
    assert SetPeerScore(ORIGIN.peer_id, -1.0, True) in effects
    assert not any(isinstance(e, Append) for e in effects)  # the proof is not logged twice


# ---------------------------------------------------------------- a lost tail (issue 16)


def _origin_restored_from(records: list[tuple[str, dict[str, object]]]) -> Node:
    node = Node(CoreParams(), ORIGIN, random.Random(3), NOW)
    node.restore(records)  # type: ignore[arg-type]
    return node


def test_a_receipt_newer_than_the_restored_log_says_the_tail_was_lost() -> None:
    """CREDITS.md §8.1: a peer holds a receipt this node signed with a seq its
    log does not reach: the node records ``tail_lost`` (once per newer seq) and
    never signs that seq again."""
    origin = _origin_restored_from(
        [("receipt", {"seq": 5, "envelope": sealed(ORIGIN, receipt(5))})]
    )
    effects = gossip(origin, cosigned(receipt(9)))
    lost = [e for e in effects if isinstance(e, Append) and e.kind == "tail_lost"]
    assert [e.body for e in lost] == [{"log_head_seq": 5, "seen_seq": 9, "peer": WORKER.peer_id}]
    assert origin.ledger.lost_tail == {"log_head_seq": 5, "seen_seq": 9, "peer": WORKER.peer_id}
    assert origin.counters["tail_lost"] == 1
    gossip(origin, cosigned(receipt(8)))  # older than what was already reported: no new alarm
    gossip(origin, cosigned(receipt(9)))
    assert origin.counters["tail_lost"] == 1
    assert origin.ledger._next_seq() > 9  # the lost seqs are never signed again


def test_receipts_the_log_holds_or_signed_since_the_start_raise_no_alarm() -> None:
    origin = _origin_restored_from(
        [("receipt", {"seq": 5, "envelope": sealed(ORIGIN, receipt(5))})]
    )
    gossip(origin, cosigned(receipt(5)))  # in the log
    gossip(origin, cosigned(receipt(3)))  # older than the head (the index is bounded)
    new_seq = origin.ledger._next_seq()
    gossip(origin, cosigned(receipt(new_seq + 1)))  # newer than what we signed since: not lost
    assert origin.counters["tail_lost"] == 0 and origin.ledger.lost_tail is None
    fresh = Node(CoreParams(), ORIGIN, random.Random(3), NOW)  # never restored (a simulator node)
    gossip(fresh, cosigned(receipt(9)))
    assert fresh.counters["tail_lost"] == 0


def reversal(receipt_seq: int, seq: int, worker: Identity = WORKER, ts: int = NOW) -> bytes:
    rev = ReceiptReversal(job_id=JOB, worker=worker.peer_id, receipt_seq=receipt_seq, seq=seq)
    return sealed(ORIGIN, rev, ts)


def test_a_reversal_counts_once_against_its_receipt_whatever_the_order() -> None:
    """CREDITS.md §7.6: a clawback takes back exactly its receipt's credits,
    held uncounted until the receipt arrives; a second reversal of one receipt
    takes nothing more; both orders end with the same balances."""
    a, b = observer(), Node(CoreParams(), Identity.from_seed_int(69), random.Random(2), NOW)
    kept = cosigned(receipt(1, credits=2.5))
    other = cosigned(receipt(2, credits=0.75))
    first, second = reversal(1, seq=5), reversal(1, seq=6)
    for raw in (kept, other, first, second):
        gossip(a, raw)
    for raw in (second, first, other):
        gossip(b, raw)
    assert b.ledger.balances()[WORKER.peer_id]["earned"] == 0.75  # waiting: takes nothing yet
    gossip(b, kept)
    for node in (a, b):
        view = node.ledger.balances()
        assert view[WORKER.peer_id]["earned"] == 0.75
        assert view[ORIGIN.peer_id]["spent"] == 0.75
        # A newcomer with a result retracted: what else it earned is forfeited (§7.7)
        assert node.ledger.bond(WORKER.peer_id) == Bond("forfeited", None, 0.75)
        assert view[WORKER.peer_id]["forfeited"] == 0.75 and view[WORKER.peer_id]["balance"] == 0.0
        assert abs(node.ledger.balance(WORKER.peer_id)) < 1e-12
        assert node.counters["reversals_applied"] == 1
        counted = [e for e in node.ledger.entries.values() if e.reverses and e.credits]
        assert [e.credits for e in counted] == [-2.5]
        assert len(node.ledger.entries) == 4  # both reversals kept: the seqs sync
    assert a.ledger.balances() == b.ledger.balances()


def test_a_reversal_that_does_not_match_its_receipt_takes_nothing() -> None:
    node = observer()
    valid = receipt(1, credits=1.0).model_copy(update={"verdict": "valid"})
    gossip(node, cosigned(valid))  # a replicated result is never audited
    gossip(node, cosigned(receipt(2, credits=1.0)))
    gossip(node, reversal(1, seq=7))
    stranger = Identity.from_seed_int(73)
    gossip(node, reversal(2, seq=8, worker=stranger))  # names another worker
    gossip(node, reversal(4, seq=3))  # a receipt newer than the reversal
    late = 2 + CoreParams().clawback_window_ms * 1000 + 1  # signed past the clawback window
    gossip(node, reversal(2, seq=late))
    assert node.counters["reversal_not_applied"] == 3
    assert node.counters["rejected_reversal_mismatch"] == 1
    assert node.ledger.balances()[WORKER.peer_id]["earned"] == 2.0


def test_a_newcomers_bond_holds_its_earnings_until_enough_valid_receipts() -> None:
    """CREDITS.md §7.7: earnings are held (in no balance) until the ledger holds
    ``bond_valid_receipts`` valid receipts for the worker, then released."""
    params = CoreParams(bond_valid_receipts=3)
    a = Node(params, Identity.from_seed_int(70), random.Random(1), NOW)
    b = Node(params, Identity.from_seed_int(69), random.Random(2), NOW)
    unverified = [cosigned(receipt(seq, credits=1.0)) for seq in (1, 2)]
    valid = [
        cosigned(receipt(seq, credits=0.5).model_copy(update={"verdict": "valid"}))
        for seq in (3, 4, 5)
    ]
    for raw in [*unverified, *valid[:2]]:
        gossip(a, raw)
    held = a.ledger.balances()[WORKER.peer_id]
    assert (held["earned"], held["held"], held["balance"]) == (3.0, 3.0, 0.0)
    assert a.ledger.balance(WORKER.peer_id) == 0.0
    assert a.ledger.balances()[ORIGIN.peer_id]["spent"] == 3.0  # the origin paid
    gossip(a, valid[2])  # the third valid receipt releases the bond
    for raw in reversed([*unverified, *valid]):
        gossip(b, raw)
    for node in (a, b):
        view = node.ledger.balances()[WORKER.peer_id]
        assert (view["earned"], view["held"], view["balance"]) == (3.5, 0.0, 3.5)
        assert node.ledger.bond(WORKER.peer_id).state == "released"
    assert a.ledger.balances() == b.ledger.balances()


def test_a_clawback_before_the_bond_is_released_forfeits_what_it_held() -> None:
    """CREDITS.md §7.7: a counting reversal before the release forfeits what was
    earned up to the release for good; what is earned after it counts."""
    params = CoreParams(bond_valid_receipts=2)
    node = Node(params, Identity.from_seed_int(70), random.Random(1), NOW)
    gossip(node, cosigned(receipt(1, credits=1.0)))
    gossip(node, cosigned(receipt(2, credits=2.0)))  # a lie, retracted below
    gossip(node, reversal(2, seq=3))
    for seq in (4, 5):  # the bond's valid receipts, after the conviction
        gossip(node, cosigned(receipt(seq, credits=0.25).model_copy(update={"verdict": "valid"})))
    gossip(node, cosigned(receipt(6, credits=4.0)))  # after the release point
    view = node.ledger.balances()[WORKER.peer_id]
    assert view["earned"] == 1.0 + 0.5 + 4.0  # net of the 2.0 clawed back
    assert view["forfeited"] == 1.5 and view["held"] == 0.0
    assert view["balance"] == 4.0
    assert node.ledger.bond(WORKER.peer_id).state == "forfeited"
    assert abs(node.ledger.balance(WORKER.peer_id) - 4.0) < 1e-12
