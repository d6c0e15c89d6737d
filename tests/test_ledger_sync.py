"""Ledger anti-entropy: nodes that exchanged state agree on every balance
(meshd/core/credits.py, ``Ledger.timer_sync`` / ``on_ledger_summary`` /
``on_ledger_delta``).

Rules checked (specs/CREDITS.md §7.4):
- a node cut off while receipts were gossiped, or down and restarted, gets
  them from a peer after it is back, and then every node computes the same
  balance for every peer (with the sync off it does not);
- an answer longer than ``ledger_sync_max_receipts`` continues from the
  cursor it gives until nothing is missing;
- a synced receipt is verified as a gossiped one is: a forged or mismatched
  countersignature is rejected and counted, the good ones beside it count;
- an oversized summary, or one naming an origin outside its own range, is
  rejected with a reason code and not answered; sync messages have their own
  rate bucket.
"""

from __future__ import annotations

import math
import random

from meshd.core.credits import seq_digest
from meshd.core.events import DirectReceived, Send
from meshd.core.identity import Identity
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.wire import (
    LedgerDelta,
    LedgerSummary,
    Opened,
    OriginSummary,
    ReceiptCosign,
    open_envelope,
)
from meshd.testing.corenet import CoreNet, FakeWorker
from tests.test_credits import NOW, ORIGIN, WORKER, cosigned, gossip, receipt, sealed, spec

SYNC = CoreParams(ledger_sync_interval_ms=2_000)
OFF = CoreParams(ledger_sync_interval_ms=0)


def all_balances_equal(net: CoreNet) -> bool:
    views = [net.node(p).ledger.balances() for p in net.order]
    return bool(views[0]) and all(v == views[0] for v in views[1:])


def run_jobs(net: CoreNet, origins: list[int], n: int) -> None:
    ids = []
    for i in range(n):
        o = origins[i % len(origins)]
        ids.append((o, net.submit(o, spec(i))))
        net.run_for(300)
    assert net.run_until(lambda: all(net.job(o, j).state == "succeeded" for o, j in ids), 120_000)
    net.run_for(2_000)  # receipts and countersignatures travel


def mesh(params: CoreParams, seed: int = 3) -> CoreNet:
    net = CoreNet(4, seed=seed, params=params, workers=[FakeWorker() for _ in range(4)])
    net.run_for(3_000)
    return net


def partitioned_run(params: CoreParams) -> CoreNet:
    """Node 3 is cut off while nodes 0 and 1 submit jobs, then the cut heals."""
    net = mesh(params)
    away = net.order[3]
    net.isolate(away)
    run_jobs(net, [0, 1], 12)
    assert len(net.node(away).ledger.entries) < len(net.node(0).ledger.entries)
    net.heal()
    return net


def test_a_node_partitioned_during_jobs_catches_up_and_balances_agree() -> None:
    net = partitioned_run(SYNC)
    assert net.run_until(lambda: all_balances_equal(net), 30_000)
    away = net.node(3)
    assert away.counters["ledger_sync_receipts_added"] > 0
    keys = {p: set(net.node(p).ledger.entries) for p in net.order}
    assert all(k == keys[net.order[0]] for k in keys.values())


def test_without_sync_the_partitioned_node_stays_behind() -> None:
    net = partitioned_run(OFF)
    net.run_for(30_000)
    assert not all_balances_equal(net)


def test_a_crashed_node_catches_up_after_its_restart() -> None:
    for params, caught_up in ((SYNC, True), (OFF, False)):
        net = mesh(params, seed=5)
        down = net.order[2]
        net.crash(down)
        run_jobs(net, [0, 1], 10)
        net.restart(down)
        assert net.run_until(lambda n=net: all_balances_equal(n), 30_000) is caught_up


def _pump(a: Node, b: Node, first: list[object], now: int, rounds: int = 50) -> int:
    """Carry direct sends between two nodes until none is left; returns how many."""
    pending = [(a, e) for e in first]
    carried = 0
    for _ in range(rounds):
        if not pending:
            break
        nxt = []
        for src, eff in pending:
            if not isinstance(eff, Send):
                continue
            dst = b if src is a else a
            if eff.to_peer != dst.peer_id:
                continue
            carried += 1
            nxt += [(dst, e) for e in dst.step(DirectReceived(src.peer_id, eff.data), now)]
        pending = nxt
    return carried


def two_nodes(params: CoreParams) -> tuple[Node, Node]:
    a = Node(params, Identity.from_seed_int(81), random.Random(1), NOW)
    b = Node(params, Identity.from_seed_int(82), random.Random(2), NOW)
    return a, b


def test_a_long_answer_continues_from_its_cursor_until_nothing_is_missing() -> None:
    params = CoreParams(ledger_sync_max_receipts=3, ledger_sync_max_followups=20)
    holder, asker = two_nodes(params)
    for seq in range(1, 12):
        gossip(holder, cosigned(receipt(seq)))
    gossip(asker, cosigned(receipt(5)))  # the asker already holds one in the middle
    assert len(holder.ledger.entries) == 11
    asker.ledger._send_summary(holder.peer_id)
    first = asker.ctx.take_effects()
    _pump(asker, holder, first, NOW)
    assert set(asker.ledger.entries) == set(holder.ledger.entries)
    assert asker.ledger.balances() == holder.ledger.balances()
    assert asker.counters["ledger_sync_receipts_added"] == 10
    assert holder.counters["ledger_sync_answered"] >= 4  # 3 a time: it took several answers


def test_forged_synced_receipts_are_rejected_and_the_good_ones_still_count() -> None:
    asker, peer = two_nodes(CoreParams())
    mallory = Identity.from_seed_int(99)
    good = cosigned(receipt(1))
    by_wrong_worker = cosigned(receipt(2), cosigner=mallory)  # not the worker the receipt names
    not_a_cosign = sealed(ORIGIN, receipt(3))
    garbage = b"\x92\xc4\x01x\xc4\x01y"
    delta = LedgerDelta(cosigns=[by_wrong_worker, not_a_cosign, garbage, good])
    asker.step(DirectReceived(peer.peer_id, sealed_as(peer, delta)), NOW)
    assert set(asker.ledger.entries) == {(ORIGIN.peer_id, 1)}
    assert asker.counters["rejected_receipt_mismatch"] == 1
    assert asker.counters["rejected_sync_bad_cosign"] == 2
    assert asker.counters["ledger_sync_receipts_added"] == 1


def test_a_synced_receipt_that_equivocates_bans_its_issuer() -> None:
    asker, peer = two_nodes(CoreParams())
    gossip(asker, cosigned(receipt(4, credits=1.0)))
    other = cosigned(receipt(4, credits=999.0))
    asker.step(DirectReceived(peer.peer_id, sealed_as(peer, LedgerDelta(cosigns=[other]))), NOW)
    assert asker.counters["equivocations"] == 1
    assert asker.ledger.entries[(ORIGIN.peer_id, 4)].credits == 1.0


def sealed_as(node: Node, body: object) -> bytes:
    return node.ctx.seal(body)  # type: ignore[arg-type, no-any-return]


def _answers(node: Node, sender: Node, summary: LedgerSummary) -> list[Send]:
    effects = node.step(DirectReceived(sender.peer_id, sealed_as(sender, summary)), NOW)
    return [e for e in effects if isinstance(e, Send)]


def test_an_oversized_summary_is_rejected_and_not_answered() -> None:
    params = CoreParams(ledger_sync_max_origins=2)
    holder, asker = two_nodes(params)
    gossip(holder, cosigned(receipt(1)))
    digest = b"\0" * 32
    origins = [OriginSummary(origin=f"12D3KooW{i}", count=0, digest=digest) for i in range(3)]
    assert _answers(holder, asker, LedgerSummary(origins=origins)) == []
    assert holder.counters["rejected_sync_oversize"] == 1
    # Two origins are within bounds: answered, with the receipt the asker lacks.
    sent = _answers(holder, asker, LedgerSummary(origins=origins[:2]))
    assert len(sent) == 1
    reply = open_envelope(sent[0].data, params.max_message_bytes)
    assert isinstance(reply, Opened) and reply.type == "ledger_delta"
    assert len(reply.body.cosigns) == 1


def test_a_summary_naming_an_origin_outside_its_range_is_rejected() -> None:
    holder, asker = two_nodes(CoreParams())
    gossip(holder, cosigned(receipt(1)))
    outside = OriginSummary(origin="12D3KooWa", count=0, digest=b"\0" * 32)
    summary = LedgerSummary(after="12D3KooWb", origins=[outside])
    assert _answers(holder, asker, summary) == []
    assert holder.counters["rejected_sync_bad_summary"] == 1


def test_a_summary_of_origins_the_peer_never_heard_of_gets_an_empty_answer() -> None:
    holder, asker = two_nodes(CoreParams())
    unknown = OriginSummary(origin="12D3KooWnobody", count=3, digest=b"\1" * 32)
    sent = _answers(holder, asker, LedgerSummary(origins=[unknown]))
    reply = open_envelope(sent[0].data, CoreParams().max_message_bytes)
    assert isinstance(reply, Opened) and reply.body.cosigns == []
    assert not any(k.startswith("rejected_") for k in holder.counters)


def test_an_answer_resuming_outside_the_asked_range_is_rejected() -> None:
    asker, peer = two_nodes(CoreParams(ledger_sync_max_origins=1))
    second = Identity.from_seed_int(73)
    r2 = receipt(1).model_copy(update={"origin": second.peer_id})
    gossip(asker, cosigned(receipt(1)))
    gossip(asker, sealed(WORKER, ReceiptCosign(receipt=sealed(second, r2))))
    asker.ledger._send_summary(peer.peer_id)
    asker.ctx.take_effects()
    _, after, through = asker.ledger._sync_asked
    assert after == "" and through == min(ORIGIN.peer_id, second.peer_id)  # one window of two
    beyond = max(ORIGIN.peer_id, second.peer_id)
    bad = LedgerDelta(cosigns=[cosigned(receipt(2))], resume_origin=beyond, resume_seq=5)
    asker.step(DirectReceived(peer.peer_id, sealed_as(peer, bad)), NOW)
    assert asker.counters["rejected_sync_bad_delta"] == 1
    assert (ORIGIN.peer_id, 2) not in asker.ledger.entries
    assert asker.ledger._sync_from == {}


def test_an_unasked_answer_adds_its_receipts_but_moves_no_cursor() -> None:
    asker, peer = two_nodes(CoreParams())
    stranger = Node(CoreParams(), Identity.from_seed_int(83), random.Random(3), NOW)
    asker.ledger._send_summary(peer.peer_id)
    asker.ctx.take_effects()
    delta = LedgerDelta(cosigns=[cosigned(receipt(2))], resume_origin=ORIGIN.peer_id, resume_seq=7)
    effects = asker.step(DirectReceived(stranger.peer_id, sealed_as(stranger, delta)), NOW)
    assert (ORIGIN.peer_id, 2) in asker.ledger.entries
    assert asker.ledger._sync_from == {}
    assert not [e for e in effects if isinstance(e, Send)]  # no follow-up to a stranger
    # The same answer from the peer we asked moves the cursor and asks again.
    effects = asker.step(DirectReceived(peer.peer_id, sealed_as(peer, delta)), NOW)
    assert asker.ledger._sync_from == {ORIGIN.peer_id: 7}
    assert [e.to_peer for e in effects if isinstance(e, Send)] == [peer.peer_id]


def test_a_full_ledger_takes_no_synced_receipt_older_than_its_oldest() -> None:
    asker, peer = two_nodes(CoreParams(max_ledger_receipts=3))
    for seq in (10, 11, 12):
        gossip(asker, cosigned(receipt(seq)))
    old = sealed(WORKER, ReceiptCosign(receipt=sealed(ORIGIN, receipt(1), ts=NOW - 1_000)))
    new = sealed(WORKER, ReceiptCosign(receipt=sealed(ORIGIN, receipt(13), ts=NOW + 1)))
    asker.step(DirectReceived(peer.peer_id, sealed_as(peer, LedgerDelta(cosigns=[old, new]))), NOW)
    assert set(asker.ledger.entries) == {(ORIGIN.peer_id, s) for s in (11, 12, 13)}
    assert asker.counters["ledger_sync_too_old"] == 1
    # Gossip is not held back by this: the same old pair gossiped is taken.
    gossip(asker, old)
    assert (ORIGIN.peer_id, 1) in asker.ledger.entries


def test_an_equal_summary_gets_an_empty_answer() -> None:
    holder, asker = two_nodes(CoreParams())
    for node in (holder, asker):
        gossip(node, cosigned(receipt(1)))
        gossip(node, cosigned(receipt(2)))
    asker.ledger._send_summary(holder.peer_id)
    (ask,) = [e for e in asker.ctx.take_effects() if isinstance(e, Send)]
    sent = [
        e for e in holder.step(DirectReceived(asker.peer_id, ask.data), NOW) if isinstance(e, Send)
    ]
    reply = open_envelope(sent[0].data, CoreParams().max_message_bytes)
    assert isinstance(reply, Opened) and reply.type == "ledger_delta"
    assert reply.body.cosigns == [] and reply.body.resume_origin is None


def test_sync_messages_have_their_own_rate_bucket() -> None:
    params = CoreParams(rate_sync_burst=3, rate_sync_per_s=0.001)
    holder, asker = two_nodes(params)
    answered = sum(len(_answers(holder, asker, LedgerSummary(origins=[]))) for _ in range(5))
    assert answered == 3
    assert holder.counters["rejected_rate_limited"] == 2
    # Other direct messages from the same peer are not held up by it.
    holder.step(DirectReceived(asker.peer_id, sealed_as(asker, receipt_for(holder, asker))), NOW)
    assert holder.counters["rejected_rate_limited"] == 2


def receipt_for(worker: Node, origin: Node) -> object:
    r = receipt(1)
    return r.model_copy(update={"origin": origin.peer_id, "worker": worker.peer_id})


def test_balances_do_not_depend_on_the_order_receipts_arrived_in() -> None:
    a, b = two_nodes(CoreParams())
    amounts = [0.1, 0.2, 0.3, 1e-9, 12345.678901, 7.7]
    pairs = [cosigned(receipt(i + 1, credits=c)) for i, c in enumerate(amounts)]
    for raw in pairs:
        gossip(a, raw)
    for raw in reversed(pairs):
        gossip(b, raw)
    assert a.ledger.balances() == b.ledger.balances()
    assert a.ledger.balances()[WORKER.peer_id]["earned"] == math.fsum(amounts)


def _summary_of(node: Node) -> dict[str, tuple[int, bytes]]:
    """What ``node``'s next summary says, per origin (one window: every origin)."""
    node.ledger._sync_after = ""
    return {o.origin: (o.count, o.digest) for o in node.ledger._summary().origins}


def test_a_summary_follows_the_ledger_as_receipts_come_and_go() -> None:
    """Each origin's count and digest are those of the seqs held at the time
    of the summary: a receipt added or dropped since the last one shows."""
    node, _ = two_nodes(CoreParams(max_ledger_receipts=3))
    gossip(node, cosigned(receipt(1)))
    gossip(node, cosigned(receipt(2)))
    assert _summary_of(node) == {ORIGIN.peer_id: (2, seq_digest([1, 2]))}
    gossip(node, cosigned(receipt(3)))
    assert _summary_of(node) == {ORIGIN.peer_id: (3, seq_digest([1, 2, 3]))}
    gossip(node, cosigned(receipt(4)))  # the ledger is full: seq 1 leaves
    assert _summary_of(node) == {ORIGIN.peer_id: (3, seq_digest([2, 3, 4]))}
    other = Identity.from_seed_int(84)
    r = receipt(1).model_copy(update={"origin": other.peer_id})
    gossip(node, sealed(WORKER, ReceiptCosign(receipt=sealed(other, r))))  # seq 2 leaves
    assert _summary_of(node) == {
        ORIGIN.peer_id: (2, seq_digest([3, 4])),
        other.peer_id: (1, seq_digest([1])),
    }


def test_a_summary_from_a_cursor_is_of_the_seqs_from_it_as_they_are_now() -> None:
    """An origin's summary from a cursor (``from_seq``) counts the seqs from
    it; asked from another cursor, or after a receipt came, it is made
    afresh (the last one made per origin is kept only until either changes)."""
    node, _ = two_nodes(CoreParams())
    for seq in (1, 2, 3):
        gossip(node, cosigned(receipt(seq)))
    ledger = node.ledger

    def of(from_seq: int) -> tuple[int, int, bytes]:
        o = ledger._origin_summary(ORIGIN.peer_id, from_seq)
        return o.from_seq, o.count, o.digest

    assert of(2) == (2, 2, seq_digest([2, 3]))
    assert of(0) == (0, 3, seq_digest([1, 2, 3]))
    assert of(3) == (3, 1, seq_digest([3]))
    assert of(3) == (3, 1, seq_digest([3]))
    gossip(node, cosigned(receipt(4)))
    assert of(3) == (3, 2, seq_digest([3, 4]))
    assert of(0) == (0, 4, seq_digest([1, 2, 3, 4]))


def test_summary_windows_cover_every_origin_in_order_and_answers_their_range() -> None:
    """Origins come and go; the windows of successive summaries list every
    origin held, in peer-id order, ``ledger_sync_max_origins`` at a time, and
    an answer carries the receipts of exactly the asked range."""
    params = CoreParams(ledger_sync_max_origins=2, max_ledger_receipts=6)
    holder, asker = two_nodes(params)
    origins = [Identity.from_seed_int(200 + i) for i in range(7)]
    for i, o in enumerate(origins):  # 7 origins, one receipt each: the first one drops
        r = receipt(1).model_copy(update={"origin": o.peer_id})
        gossip(holder, sealed(WORKER, ReceiptCosign(receipt=sealed(o, r, ts=NOW + i))))
    held = sorted(o.peer_id for o in origins[1:])
    assert sorted({o for o, _ in holder.ledger.entries}) == held
    seen, windows = [], 0
    while True:
        s = holder.ledger._summary()
        seen += [o.origin for o in s.origins]
        windows += 1
        if s.through is None:
            break
    assert seen == held and windows == 3
    summary = LedgerSummary(after=held[1], through=held[3], origins=[])
    sent = _answers(holder, asker, summary)
    assert {_receipt_origin(c) for c in _cosigns_in(sent)} == set(held[2:4])


def _cosigns_in(sent: list[Send]) -> list[bytes]:
    reply = open_envelope(sent[0].data, CoreParams().max_message_bytes)
    assert isinstance(reply, Opened) and reply.type == "ledger_delta"
    return list(reply.body.cosigns)


def _receipt_origin(cosign: bytes) -> str:
    outer = open_envelope(cosign, CoreParams().max_message_bytes)
    assert isinstance(outer, Opened)
    inner = open_envelope(outer.body.receipt, CoreParams().max_message_bytes)
    assert isinstance(inner, Opened)
    return inner.sender
