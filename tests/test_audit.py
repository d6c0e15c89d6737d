"""Audit on conviction (meshd/core/audit.py, origin.py ``_audit``; specs/CREDITS.md §4.1,
specs/JOB.md §4): when one of the origin's own verdicts convicts a worker, the
results it accepted from that worker unreplicated within ``audit_window_ms``
are re-run elsewhere; a wrong one is retracted (``job_retracted``, the job's
reason and ``verification.retracted``) and replaced by the majority's result,
also after a restart; an honest one is confirmed."""

from __future__ import annotations

import dataclasses

import pytest

from meshd.core.audit import AuditBook
from meshd.core.jobspec import JobSpec
from meshd.core.params import CoreParams
from meshd.testing.corenet import CoreNet, FakeWorker, honest_output

# Nothing replicated unless the job asks (replicas=2): what the liar returns
# on other jobs is accepted unverified, as past the spot-check floor.
P = dataclasses.replace(CoreParams(), replication_fraction=0.0, untrusted_replication=0.0)


def spec(i: int, **kw: object) -> JobSpec:
    return JobSpec(image="meshd/busybox:1", command=["echo", str(i)], timeout_s=60, **kw)  # type: ignore[arg-type]


def test_audit_book_takes_only_the_window_and_is_bounded() -> None:
    p = dataclasses.replace(P, audit_window_ms=1_000, audit_max_per_worker=3, audit_max_workers=2)
    book = AuditBook(p)
    for i in range(5):
        book.note("w", f"j{i}", 10_000 + 100 * i)
    assert book.noted("w") == 3  # the oldest two were dropped
    book.note("x", "k", 10_000)
    book.note("y", "m", 10_000)  # a third worker: "w" (oldest newest note... ) goes
    assert book.noted("w") == 0 or book.noted("x") == 0
    book2 = AuditBook(p)
    for i in range(3):
        book2.note("w", f"j{i}", 10_000 + 600 * i)  # 10000, 10600, 11200
    assert book2.take("w", 11_500) == ["j1", "j2"]  # 10000 is out of the window
    assert book2.take("w", 11_500) == []  # taken once


def _liar_net(params: CoreParams = P) -> tuple[CoreNet, str, list[str]]:
    """Origin (node 0, runs nothing), three honest workers, one liar (node 4)."""
    workers = [FakeWorker(healthy=False)] + [FakeWorker() for _ in range(3)]
    workers.append(FakeWorker(lie_rate=1.0))
    net = CoreNet(5, seed=11, params=params, workers=workers)
    net.run_for(3_000)
    return net, net.order[4], net.order[1:4]


def _settled(net: CoreNet, ids: list[str]) -> bool:
    return all(net.job(0, j).state in ("succeeded", "failed") for j in ids)


def test_a_convicted_liars_unverified_results_are_audited_and_retracted() -> None:
    net, liar, honest = _liar_net()
    origin_id = net.order[0]
    # Only the liar can be reached: its wrong results are accepted unverified.
    for h in honest:
        net.cut(origin_id, h)
    early = [spec(i) for i in range(3)]
    early_ids = [net.submit(0, s) for s in early]
    assert net.run_until(lambda: _settled(net, early_ids), 60_000)
    for j in early_ids:
        job = net.job(0, j)
        assert job.state == "succeeded" and job.verdict["verdict"] == "unverified"
        assert job.runs[min(job.runs)].worker == liar
    wrong = {j: net.job(0, j).canonical for j in early_ids}
    assert all(wrong[j] != honest_output(s) for j, s in zip(early_ids, early, strict=True))
    # A replicated job reaches the liar and one honest worker; the tie-breaker
    # after healing convicts the liar.
    net.heal()
    for h in honest[1:]:
        net.cut(origin_id, h)
    check = net.submit(0, spec(99, replicas=2))
    assert net.run_until(lambda: len(net.job(0, check).runs) >= 2, 30_000)
    net.heal()
    assert net.run_until(lambda: net.job(0, check).state == "succeeded", 120_000)
    origin = net.node(0)
    assert liar in net.job(0, check).verdict["invalid"]
    assert origin.trust.convicted(liar, net.now_ms)
    assert net.run_until(lambda: origin.counters["audits_started"] == 3, 10_000)
    assert not _settled(net, early_ids)
    net.restart(origin_id)  # mid-audit: the log's job_audit records reopen the jobs
    assert net.run_until(lambda: _settled(net, early_ids), 120_000)
    origin = net.node(0)
    for j, s in zip(early_ids, early, strict=True):
        job = net.job(0, j)
        assert job.state == "succeeded"
        assert job.canonical == honest_output(s)
        assert job.verdict["retracted"] == wrong[j]
        assert liar in job.verdict["invalid"]
        assert "RETRACTED" in job.reason
        assert any("audit" in detail for _, _, detail in job.history)
    assert origin.counters["results_retracted"] == 3  # counted since the restart
    log = net.slots[origin_id].log
    retracted = [b for k, b in log if k == "job_retracted"]
    assert sorted(b["job_id"] for b in retracted) == sorted(early_ids)
    assert all(b["worker"] == liar for b in retracted)
    # The liar was paid once per early job (before the audit), the auditors once each.
    for j in early_ids:
        paid = [b["worker"] for k, b in log if k == "receipt" and b["job_id"] == j]
        assert paid.count(liar) == 1 and len(paid) == 3
    # A restart rebuilds the same retracted view from the log.
    net.restart(origin_id)
    for j, s in zip(early_ids, early, strict=True):
        job = net.job(0, j)
        assert job.state == "succeeded" and job.canonical == honest_output(s)
        assert job.verdict["retracted"] == wrong[j] and "RETRACTED" in job.reason


def test_an_audit_of_an_honest_result_confirms_it() -> None:
    """A liar honest on one job (lie_rate 0 at first) then caught: that job's
    audit finds the same output; nothing is retracted."""
    net, liar, honest = _liar_net()
    origin_id = net.order[0]
    slot = net.slots[liar]
    slot.worker = dataclasses.replace(slot.worker, lie_rate=0.0)
    for h in honest:
        net.cut(origin_id, h)
    first = net.submit(0, spec(1))
    assert net.run_until(lambda: _settled(net, [first]), 60_000)
    assert net.job(0, first).canonical == honest_output(spec(1))
    slot.worker = dataclasses.replace(slot.worker, lie_rate=1.0)
    net.heal()
    for h in honest[1:]:
        net.cut(origin_id, h)
    check = net.submit(0, spec(99, replicas=2))
    assert net.run_until(lambda: len(net.job(0, check).runs) >= 2, 30_000)
    net.heal()
    origin = net.node(0)
    assert net.run_until(lambda: origin.counters["audits_started"] == 1, 120_000)
    assert net.run_until(lambda: _settled(net, [first]), 120_000)
    job = net.job(0, first)
    assert job.canonical == honest_output(spec(1)) and "confirmed" in job.reason
    assert "retracted" not in job.verdict and job.verdict["verdict"] == "agreed"
    assert origin.counters["results_retracted"] == 0
    log = net.slots[origin_id].log
    paid = [b["worker"] for k, b in log if k == "receipt" and b["job_id"] == first]
    assert paid.count(liar) == 1 and len(paid) == 2  # the audit paid only the new run


@pytest.mark.parametrize("credible", [True, False])
def test_a_conviction_by_a_credible_origin_audits_here_too(credible: bool) -> None:
    """Origin B accepted the liar's wrong results unverified; origin A convicts
    the liar and publishes the invalid attestation; B, if it finds A fully
    credible, audits and retracts its own accepted results (a partly credible
    issuer's attestation audits nothing)."""
    workers = [FakeWorker(healthy=False), FakeWorker(healthy=False)]
    workers += [FakeWorker() for _ in range(3)] + [FakeWorker(lie_rate=1.0)]
    net = CoreNet(6, seed=13, params=P, workers=workers)
    net.run_for(3_000)
    a_id, b_id, honest, liar = net.order[0], net.order[1], net.order[2:5], net.order[5]
    # B has verified work of A's (full credibility), or only one unverified
    # result of A's (credibility about 0.5: the attestation counts, audits nothing).
    net.node(1).trust.observe(a_id, "valid" if credible else "completed", net.now_ms)
    assert (net.node(1).trust.credibility(a_id, net.now_ms) == 1.0) == credible
    for h in honest:
        net.cut(b_id, h)
    early = [spec(i) for i in range(2)]
    early_ids = [net.submit(1, s) for s in early]
    assert net.run_until(lambda: all(net.job(1, j).state == "succeeded" for j in early_ids))
    wrong = {j: net.job(1, j).canonical for j in early_ids}
    assert all(wrong[j] != honest_output(s) for j, s in zip(early_ids, early, strict=True))
    net.heal()
    for h in honest[1:]:
        net.cut(a_id, h)
    check = net.submit(0, spec(99, replicas=2))
    assert net.run_until(lambda: len(net.job(0, check).runs) >= 2, 30_000)
    net.heal()
    assert net.run_until(lambda: net.job(0, check).state == "succeeded", 120_000)
    assert liar in net.job(0, check).verdict["invalid"]
    b = net.node(1)
    if not credible:
        net.run_for(10_000)
        assert b.counters["audits_started"] == 0 and b.counters["attestations_applied"] > 0
        assert all(net.job(1, j).canonical == wrong[j] for j in early_ids)
        return
    assert net.run_until(lambda: b.counters["audits_started"] == 2, 10_000)
    assert not b.trust.banned(liar, net.now_ms)  # an attestation never bans...
    assert net.run_until(
        lambda: all(net.job(1, j).state == "succeeded" for j in early_ids), 120_000
    )
    for j, s in zip(early_ids, early, strict=True):  # ...but B's own audit convicts
        job = net.job(1, j)
        assert job.canonical == honest_output(s) and job.verdict["retracted"] == wrong[j]
    assert b.trust.convicted(liar, net.now_ms)
    audits = [body for k, body in net.slots[b_id].log if k == "job_audit"]
    assert {x["by"] for x in audits} == {a_id} and {x["worker"] for x in audits} == {liar}


def test_mesh_job_shows_a_retracted_result() -> None:
    """mesh_cli/CLI.md ``mesh job``: the verification row names the retracted digest."""
    import io

    from rich.console import Console

    from mesh_cli.render import render_job

    job = {
        "job_id": "j-1",
        "state": "succeeded",
        "spec": {"image": "meshd/busybox:1", "command": ["true"]},
        "verification": {"replicas": 3, "verdict": "agreed", "retracted": "sha256:bad"},
        "history": [{"ts_ms": 0, "state": "queued", "detail": "audit: worker liar was convicted"}],
    }
    out = io.StringIO()
    render_job(job, Console(file=out, width=200))
    text = out.getvalue()
    assert "RETRACTED by an audit: sha256:bad" in text and "audit: worker liar" in text


def test_a_retracted_results_pay_is_clawed_back_on_every_ledger() -> None:
    """specs/CREDITS.md §7.6: the origin signs a ``receipt_reversal`` for each
    retracted result; every node counts it against the receipt, a node that was
    cut off when it was gossiped gets it by anti-entropy, and all agree."""
    net, liar, honest = _liar_net()
    origin_id = net.order[0]
    for h in honest:
        net.cut(origin_id, h)
    early_ids = [net.submit(0, spec(i)) for i in range(3)]
    assert net.run_until(lambda: _settled(net, early_ids), 60_000)
    net.heal()
    for h in honest[1:]:
        net.cut(origin_id, h)
    check = net.submit(0, spec(99, replicas=2))
    assert net.run_until(lambda: len(net.job(0, check).runs) >= 2, 30_000)
    net.heal()
    # The third honest node hears nothing while the audits retract and reverse.
    away = honest[2]
    for other in net.order:
        if other != away:
            net.cut(other, away)
    assert net.run_until(lambda: net.node(0).counters["reversals_issued"] == 3, 240_000)
    log = net.slots[origin_id].log
    paid = {b["job_id"]: b for k, b in log if k == "receipt" and b["worker"] == liar}
    reversals = [b for k, b in log if k == "receipt_reversal"]
    assert sorted(b["job_id"] for b in reversals) == sorted(early_ids)
    assert all(
        b["worker"] == liar and b["receipt_seq"] == paid[b["job_id"]]["seq"] for b in reversals
    )
    assert net.node(away).ledger.balances()[liar]["earned"] > 0  # it has not heard of them yet
    net.heal()

    def agreed() -> bool:
        views = [net.node(p).ledger.balances() for p in net.order]
        return all(v == views[0] for v in views) and all(
            net.node(p).counters["reversals_applied"] == 3 for p in net.order
        )

    assert net.run_until(agreed, 300_000)
    for p in net.order:
        ledger = net.node(p).ledger
        # The liar earned only the three retracted results: nothing is left.
        assert ledger.balances()[liar]["earned"] == 0.0
        assert abs(ledger.balance(liar)) < 1e-9  # the running sum is not exactly rounded
        reversed_entries = [e for e in ledger.entries.values() if e.reverses]
        assert sorted(-e.credits for e in reversed_entries) == sorted(
            b["credits"] for b in paid.values() if b["job_id"] in early_ids
        )
    assert net.node(away).counters["ledger_sync_receipts_added"] >= 3
    # The origin's own reversals come back from its log at a restart and wait
    # for their receipts (which it takes from no one while the liar stays
    # banned there): every balance still agrees, the liar's earnings are 0.
    net.restart(origin_id)
    assert net.node(0).ledger.balances().get(liar, {"earned": 0.0})["earned"] == 0.0
    assert net.run_until(
        lambda: all(
            net.node(p).ledger.balances() == net.node(0).ledger.balances() for p in net.order
        ),
        300_000,
    )
    assert len([e for e in net.node(0).ledger.entries.values() if e.reverses]) == 3


# ------------------------------------------------------------ the hold (CREDITS.md §4.2)


def test_an_unreplicated_result_is_provisional_until_the_hold_ends_also_after_a_restart() -> None:
    """specs/CREDITS.md §4.2: a result accepted unreplicated is provisional for
    ``result_hold_ms`` (logged in its ``job_verdict``, restored after a restart,
    shown by the job's view), then final; a replicated one is final at once."""
    from meshd.core.origin import Origin, job_view

    hold = 120_000
    p = dataclasses.replace(P, result_hold_ms=hold)
    net = CoreNet(3, seed=5, params=p, workers=[FakeWorker(healthy=False)] + [FakeWorker()] * 2)
    net.run_for(3_000)
    single, double = net.submit(0, spec(1)), net.submit(0, spec(2, replicas=2))
    assert net.run_until(lambda: _settled(net, [single, double]), 60_000)
    job = net.job(0, single)
    assert job.state == "succeeded" and job.verdict["verdict"] == "unverified"
    accepted_ms = job.updated_ms
    until = job.verdict["provisional_until_ms"]
    assert until == accepted_ms + hold
    view = job_view(job, net.now_ms)
    assert view["final"] is False and view["provisional_until_ms"] == until
    assert Origin.final(net.job(0, double), net.now_ms) is True  # verified: final at once
    assert job_view(net.job(0, double), net.now_ms)["provisional_until_ms"] is None
    verdicts = [b for k, b in net.slots[net.order[0]].log if k == "job_verdict"]
    assert {b["job_id"]: b.get("provisional_until_ms") for b in verdicts} == {
        single: until,
        double: None,
    }
    net.restart(net.order[0])  # the hold survives a restart of the origin
    job = net.job(0, single)
    assert job.verdict["provisional_until_ms"] == until
    assert Origin.final(job, net.now_ms) is False
    assert Origin.final(job, until - 1) is False and Origin.final(job, until) is True
    net.run_for(hold)
    assert job_view(net.job(0, single), net.now_ms)["final"] is True


def test_no_hold_makes_an_unreplicated_result_final_at_once() -> None:
    from meshd.core.origin import Origin

    net = CoreNet(
        2,
        seed=5,
        params=dataclasses.replace(P, result_hold_ms=0),
        workers=[FakeWorker(healthy=False), FakeWorker()],
    )
    net.run_for(3_000)
    j = net.submit(0, spec(1))
    assert net.run_until(lambda: _settled(net, [j]), 60_000)
    assert net.job(0, j).verdict["verdict"] == "unverified"
    assert "provisional_until_ms" not in net.job(0, j).verdict
    assert Origin.final(net.job(0, j), net.now_ms) is True


@pytest.mark.parametrize("hold_ms", [3_600_000, 1_000])
def test_a_retraction_inside_the_hold_re_runs_the_job_before_it_was_ever_final(
    hold_ms: int,
) -> None:
    """Within the hold a convicted liar's provisional results are re-run (the
    liar excluded) and replaced before they were ever final: ``final: false``
    in ``job_audit`` and ``job_retracted``, counted as replaced, the honest
    result final at once (it was replicated); after a restart too. With a hold
    that has ended the same audit retracts *final* results."""
    from meshd.core.origin import Origin

    net, liar, honest = _liar_net(dataclasses.replace(P, result_hold_ms=hold_ms))
    origin_id = net.order[0]
    for h in honest:
        net.cut(origin_id, h)
    early = [spec(i) for i in range(2)]
    early_ids = [net.submit(0, s) for s in early]
    assert net.run_until(lambda: _settled(net, early_ids), 60_000)
    in_hold = hold_ms > 1_000
    if not in_hold:
        net.run_for(hold_ms)
    assert all(Origin.final(net.job(0, j), net.now_ms) is (not in_hold) for j in early_ids)
    net.heal()
    for h in honest[1:]:
        net.cut(origin_id, h)
    check = net.submit(0, spec(99, replicas=2))
    assert net.run_until(lambda: len(net.job(0, check).runs) >= 2, 30_000)
    net.heal()
    assert net.run_until(lambda: net.node(0).counters["audits_started"] == 2, 120_000)
    assert all(Origin.final(net.job(0, j), net.now_ms) is None for j in early_ids)  # re-running
    assert net.run_until(lambda: _settled(net, early_ids), 120_000)
    origin = net.node(0)
    for j, s in zip(early_ids, early, strict=True):
        job = net.job(0, j)
        assert job.canonical == honest_output(s)
        assert job.verdict["verdict"] == "agreed" and liar not in job.verdict["valid"]
        assert job.verdict["retracted_final"] is (not in_hold)
        assert ("provisional result" in job.reason) is in_hold
        assert Origin.final(job, net.now_ms) is True  # the re-run's result is verified
    log = net.slots[origin_id].log
    assert [b["final"] for k, b in log if k == "job_audit"] == [not in_hold] * 2
    assert [b["final"] for k, b in log if k == "job_retracted"] == [not in_hold] * 2
    replaced, final = (
        origin.counters["provisional_results_replaced"],
        origin.counters["final_results_retracted"],
    )
    assert (replaced, final) == ((2, 0) if in_hold else (0, 2))
    net.restart(origin_id)
    for j in early_ids:
        assert net.job(0, j).verdict["retracted_final"] is (not in_hold)


def test_mesh_shows_a_provisional_result_and_one_replaced_in_its_hold() -> None:
    """mesh_cli/CLI.md: ``mesh job`` says "provisional until TIME" while the
    hold lasts and "final" after; ``mesh jobs`` marks the row; ``submit --wait``
    in a pipe says it; a result replaced in its hold is named as never final."""
    import io
    import re

    from rich.console import Console

    from mesh_cli.render import render_job, render_jobs, wait_line

    def text(render: object, data: dict[str, object]) -> str:
        out = io.StringIO()
        render(data, Console(file=out, width=200))  # type: ignore[operator]
        return out.getvalue()

    until = 1_700_000_000_000  # 2023-11-14 22:13:20Z
    job = {
        "job_id": "j-1",
        "state": "succeeded",
        "spec": {"image": "meshd/busybox:1", "command": ["true"]},
        "verification": {"replicas": 1, "verdict": "unverified"},
        "final": False,
        "provisional_until_ms": until,
    }
    shown = text(render_job, job)
    assert "provisional until 2023-11-14 22:13:20Z (an audit may still replace it)" in shown
    assert "provisional until 2023-11-14 22:13:20Z" in wait_line(job)
    assert "succeeded (provisional)" in text(render_jobs, {"jobs": [job]})
    done = {**job, "final": True}
    assert re.search(r"result is +final", text(render_job, done))
    assert "(provisional)" not in text(render_jobs, {"jobs": [done]})
    replaced = {
        **done,
        "verification": {
            "replicas": 3,
            "verdict": "agreed",
            "retracted": "sha256:bad",
            "retracted_final": False,
        },
    }
    assert "replaced during its hold, never final (RETRACTED by an audit): sha256:bad" in text(
        render_job, replaced
    )
