"""Credits that mean something: a saturated worker prefers origins in credit
(meshd/core/worker.py ``Worker._credit_reason``, specs/CREDITS.md §7.4).

Rules checked on CoreNet (real cores, real signed receipts in the worker's own
ledger):
- a worker with no free slot declines (reason ``credit: …``) offers from an
  origin whose balance is below ``-credit_free_allowance``, so an origin in
  credit that asks later is served first;
- an idle worker serves an origin in debt all the same;
- a newcomer (no receipts: balance 0) is served by a saturated worker;
- ``Ledger.balance`` follows the ledger as receipts arrive.
"""

from __future__ import annotations

from meshd.core.events import TOPIC_RECEIPTS, GossipReceived
from meshd.core.jobspec import JobSpec
from meshd.core.params import CoreParams
from meshd.core.wire import Receipt, ReceiptCosign, seal
from meshd.runtime.view import credits_document
from meshd.testing.corenet import CoreNet, FakeWorker, default_caps

ALLOWANCE = 1.0
W, CREDITOR, DEBTOR, NEWCOMER = 0, 1, 2, 3
_nonce = iter(range(1, 1 << 30))


def spec(i: int) -> JobSpec:
    return JobSpec(image="meshd/busybox:1", command=["echo", str(i)], timeout_s=60)


def mesh(**params_kw: int) -> CoreNet:
    """Node 0 is the only worker (one slot, 20 s runs); 1-3 only submit.
    No replication, so one worker is enough to finish a job; no bond (every
    receipt here is unverified, so a bond would hold every creditor's
    earnings: the bond is tested in test_credits.py)."""
    params_kw.setdefault("bond_valid_receipts", 0)
    params = CoreParams(
        replication_fraction=0.0,
        untrusted_replication=0.0,
        credit_free_allowance=ALLOWANCE,
        **params_kw,  # type: ignore[arg-type]
    )
    workers = [FakeWorker(caps=default_caps(cores=1), duration_ms=lambda s: 20_000)] + [
        FakeWorker(healthy=False) for _ in range(3)
    ]
    net = CoreNet(4, seed=11, params=params, workers=workers)
    net.run_for(3_000)
    return net


def ledger_debt(net: CoreNet, debtor: int, creditor: int, credits: float, seq: int) -> None:
    """``debtor`` paid ``creditor`` for work: a countersigned receipt gossiped to the worker."""
    origin, worker = net.node(debtor).identity, net.node(creditor).identity
    r = Receipt(
        job_id=f"job-{seq:012x}",
        attempt=1,
        origin=origin.peer_id,
        worker=worker.peer_id,
        credits=credits,
        duration_ms=1000,
        seq=seq,
    )
    inner = seal(origin, r, net.now_ms, next(_nonce).to_bytes(8, "big"))
    outer = seal(worker, ReceiptCosign(receipt=inner), net.now_ms, next(_nonce).to_bytes(8, "big"))
    net.input(W, GossipReceived(TOPIC_RECEIPTS, net.order[creditor], outer))


def credit_declines(net: CoreNet, origin: int, job_id: str) -> list[str]:
    return [r for _, r in net.job(origin, job_id).declines if r.startswith("credit:")]


def done(net: CoreNet, origin: int, job_id: str) -> bool:
    return net.job(origin, job_id).state == "succeeded"


def test_balance_follows_the_ledger() -> None:
    net = mesh()
    ledger = net.node(W).ledger
    debtor, creditor = net.order[DEBTOR], net.order[CREDITOR]
    assert ledger.balance(debtor) == 0.0
    ledger_debt(net, DEBTOR, CREDITOR, 2.5, seq=1)
    assert ledger.balance(debtor) == -2.5 and ledger.balance(creditor) == 2.5
    ledger_debt(net, DEBTOR, CREDITOR, 1.5, seq=2)
    assert ledger.balance(debtor) == -4.0 and ledger.balance(creditor) == 4.0
    ledger_debt(net, DEBTOR, CREDITOR, 1.5, seq=2)  # the same receipt again: counted once
    assert ledger.balance(debtor) == -4.0


def test_balance_forgets_receipts_the_ledger_drops() -> None:
    net = mesh(max_ledger_receipts=3)
    ledger = net.node(W).ledger
    debtor, newcomer, creditor = net.order[DEBTOR], net.order[NEWCOMER], net.order[CREDITOR]
    ledger_debt(net, DEBTOR, CREDITOR, 4.0, seq=1)
    assert ledger.balance(debtor) == -4.0
    ledger_debt(net, DEBTOR, NEWCOMER, 1.0, seq=2)
    ledger_debt(net, NEWCOMER, CREDITOR, 0.5, seq=1)
    ledger_debt(net, CREDITOR, NEWCOMER, 0.25, seq=1)  # the oldest (4.0) is dropped
    assert len(ledger.entries) == 3
    assert ledger.balance(debtor) == -1.0
    assert (ledger.balance(newcomer), ledger.balance(creditor)) == (0.75, 0.25)
    del ledger.entries[(newcomer, 1)]  # gone from the middle: recounted
    assert (ledger.balance(newcomer), ledger.balance(creditor)) == (1.25, -0.25)


def test_saturated_worker_serves_origin_in_credit_before_deep_debt() -> None:
    net = mesh()
    ledger_debt(net, DEBTOR, CREDITOR, 5.0, seq=1)  # debtor at -5, creditor at +5
    first = net.submit(CREDITOR, spec(0))
    assert net.run_until(lambda: net.job(CREDITOR, first).state == "running", 30_000)
    debt_job = net.submit(DEBTOR, spec(1))  # asks first ...
    net.run_for(1_000)
    credit_job = net.submit(CREDITOR, spec(2))  # ... but the creditor is served first
    assert net.run_until(lambda: done(net, CREDITOR, credit_job), 120_000)
    assert not done(net, DEBTOR, debt_job)
    assert credit_declines(net, DEBTOR, debt_job)
    assert not credit_declines(net, CREDITOR, credit_job)
    # once the worker has a free slot again it serves the debtor too
    assert net.run_until(lambda: done(net, DEBTOR, debt_job), 300_000)
    assert net.node(W).ctx.counters["credit_declines"] >= 1


def test_idle_worker_serves_origin_in_debt() -> None:
    net = mesh()
    ledger_debt(net, DEBTOR, CREDITOR, 50.0, seq=1)
    job = net.submit(DEBTOR, spec(1))
    assert net.run_until(lambda: done(net, DEBTOR, job), 60_000)
    assert not credit_declines(net, DEBTOR, job)
    assert net.node(W).ctx.counters["credit_declines"] == 0


def test_saturated_worker_serves_newcomer_with_zero_balance() -> None:
    net = mesh()
    ledger_debt(net, DEBTOR, CREDITOR, 5.0, seq=1)
    first = net.submit(CREDITOR, spec(0))
    assert net.run_until(lambda: net.job(CREDITOR, first).state == "running", 30_000)
    newcomer_job = net.submit(NEWCOMER, spec(1))
    debt_job = net.submit(DEBTOR, spec(2))
    assert net.run_until(lambda: done(net, NEWCOMER, newcomer_job), 120_000)
    assert not credit_declines(net, NEWCOMER, newcomer_job)
    assert credit_declines(net, DEBTOR, debt_job)
    assert not done(net, DEBTOR, debt_job)


def test_credits_document_says_where_a_balance_comes_from() -> None:
    """``GET /v1/credits`` (meshd/runtime/view.py) from the worker's real ledger."""
    net = mesh()
    ledger_debt(net, DEBTOR, CREDITOR, 2.0, seq=1)
    ledger_debt(net, DEBTOR, CREDITOR, 3.0, seq=2)
    ledger_debt(net, DEBTOR, NEWCOMER, 0.5, seq=3)
    doc = credits_document(net.node(W), top=1)
    assert doc["free_allowance"] == ALLOWANCE and doc["peer_id"] == net.order[W]
    assert len(doc["receipts"]) == 3
    by_peer = {b["peer_id"]: b for b in doc["balances"]}
    debtor = by_peer[net.order[DEBTOR]]
    assert (debtor["balance"], debtor["spent_receipts"], debtor["earned_receipts"]) == (-5.5, 3, 0)
    assert debtor["top_payees"] == [{"peer_id": net.order[CREDITOR], "credits": 5.0, "receipts": 2}]
    creditor = by_peer[net.order[CREDITOR]]
    assert creditor["top_payers"] == [{"peer_id": net.order[DEBTOR], "credits": 5.0, "receipts": 2}]
    assert creditor["earned_receipts"] == 2 and creditor["top_payees"] == []
    assert credits_document(net.node(W), top=3)["balances"][0].keys() >= {
        "peer_id",
        "balance",
        "earned",
        "spent",
    }
