"""The spot-check floor and what bounds the wrong results a mesh accepts:
one-strike conviction, the audit on conviction and the identity cost
(meshd/core/trust.py, meshd/core/audit.py; specs/CREDITS.md §4, §4.1, §6.1),
and the report that measures them (``python -m simulations spotcheck``,
simulations/spotcheck.py, CREDITS.md §11.1), here at reduced scale.
"""

from __future__ import annotations

import dataclasses

import pytest

from meshd.core.params import CoreParams
from meshd.core.trust import Trust
from simulations.__main__ import main
from simulations.spotcheck import SpotConfig, simulate

SMALL = SpotConfig(workers=20, jobs=12_000, liar_share=0.0, seed=3)


def test_long_streak_is_still_replicated_at_the_floor() -> None:
    params = CoreParams()
    trust = Trust(params)
    for t in range(500):
        trust.observe("w", "valid", 1_000_000 + t)
    assert trust.trusted("w")
    assert trust.replication_probability("w") == params.replication_fraction


@pytest.mark.parametrize("floor", [CoreParams().replication_fraction, 0.3])
def test_trusted_workers_replicated_at_about_the_floor(floor: float) -> None:
    res = simulate(dataclasses.replace(SMALL, floor=floor))
    # every worker has a streak of ~30 by the middle: 1/streak would fall below the floor
    assert res.trusted_primary > 4_000
    assert abs(res.trusted_rate - floor) < 0.3 * floor
    newcomers = SMALL.workers * CoreParams().trust_after_valid / SMALL.jobs
    assert floor * 0.8 < res.overhead < floor * 1.2 + 2 * newcomers
    assert res.wrong_accepted == 0 and res.convicted == 0 and res.audit_runs == 0


PATIENT = dataclasses.replace(SMALL, liar_share=0.10, floor=0.05)


def test_patient_liars_are_convicted_and_what_they_got_through_is_retracted() -> None:
    res = simulate(PATIENT)
    assert res.wrong_accepted > 0  # the floor lets some through before the first catch...
    assert res.convicted == 2 and res.honest_convicted == 0  # ...one catch convicts
    assert res.retracted == res.wrong_accepted and res.standing == 0  # ...the audit retracts
    assert res.audit_runs > res.retracted  # honest results audited too; counted as overhead
    plain = (res.runs - res.jobs) / res.jobs
    assert res.overhead == pytest.approx(plain + res.audit_runs / res.jobs)


def test_without_the_audit_the_wrong_results_stand() -> None:
    res = simulate(dataclasses.replace(PATIENT, audit=False))
    assert res.convicted == 2
    assert res.wrong_accepted > 0 and res.retracted == 0 and res.audit_runs == 0
    assert res.standing == res.wrong_accepted


def test_a_whitewashing_liar_pays_the_newcomer_cost_with_each_identity() -> None:
    """A convicted liar back under a new identity is a stranger: verified
    trust_after_valid times again, then caught again."""
    res = simulate(dataclasses.replace(PATIENT, rejoin=True))
    fixed = simulate(PATIENT)
    assert res.convicted > 3 * fixed.convicted
    assert res.retracted > 0 and res.honest_convicted == 0
    assert res.standing <= res.wrong_accepted / 4  # most of it is retracted
    assert res.overhead > fixed.overhead  # each identity's verification costs runs


def test_curve_command_marks_the_default_and_reports_both_liar_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    default = CoreParams().replication_fraction
    rc = main(
        [
            "spotcheck",
            "--workers",
            "10",
            "--jobs",
            "600",
            "--shares",
            "0,0.1",
            "--floors",
            f"{default},0.3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "rejoin off" in out and "rejoin on" in out
    rows = [line.split() for line in out.splitlines()]
    rows = [r for r in rows if r and r[0].endswith("%") and len(r) > 10]  # not the hold curve
    assert len(rows) == 8  # 2 shares x 2 floors x 2 liar models
    assert sum(1 for r in rows if r[1] == f"{default:.2f}*") == 4
    assert sum(1 for r in rows if r[1] == "0.30") == 4
    # liars, floor, overhead, wrong, retracted, standing, convicted, honest, failed[, target]
    for r in rows:
        wrong, retracted, standing = (float(x) for x in r[3:6])
        assert wrong == pytest.approx(retracted + standing, abs=0.11)
    assert all(r[-1] in ("met", "missed") for r in rows if r[0] == "10%")


def test_the_bond_takes_a_whitewashers_pay_and_changes_no_verdict() -> None:
    """CREDITS.md §7.7 in the model: with the bond a liar identity keeps
    (almost) nothing; without it, it keeps pay for its honest work; runs and
    verdicts are the same either way (the bond moves credits only)."""
    whitewash = dataclasses.replace(PATIENT, rejoin=True)
    bonded = simulate(whitewash)
    free = simulate(dataclasses.replace(whitewash, bond=0))
    assert bonded.config.bond == CoreParams().bond_valid_receipts > 0
    assert (bonded.runs, bonded.audit_runs, bonded.wrong_accepted, bonded.retracted) == (
        free.runs,
        free.audit_runs,
        free.wrong_accepted,
        free.retracted,
    )
    assert free.liar_pay["kept"] > 10 * PATIENT.workers  # paid for its honest work
    assert bonded.liar_pay.get("kept", 0.0) < free.liar_pay["kept"] / 10
    assert bonded.liar_pay["forfeited"] > 0
    # What liars were paid is the same; the bond only decides whether it counts.
    assert sum(bonded.liar_pay.values()) == pytest.approx(sum(free.liar_pay.values()))
    assert bonded.honest_held_share < 0.05  # honest workers' bonds are released


def test_a_hold_before_a_result_is_final_keeps_retracted_lies_from_becoming_final() -> None:
    base = simulate(dataclasses.replace(PATIENT, hold_ms=0))
    held = simulate(dataclasses.replace(PATIENT, hold_ms=10**9))  # longer than the run
    assert base.wrong_final == base.wrong_accepted > 0  # no hold: every lie was final
    assert held.wrong_accepted == base.wrong_accepted
    assert held.wrong_final == held.standing == 0  # all retracted within the hold
    # The hold changes no run: one run gives the whole curve.
    assert (held.runs, held.audit_runs, held.overhead) == (
        base.runs,
        base.audit_runs,
        base.overhead,
    )
    assert held.final_for(0) == base.wrong_final and base.final_for(10**9) == 0


def test_the_simulator_takes_the_hold_from_core_params_and_it_meets_the_target() -> None:
    """specs/CREDITS.md §4.2, §11.1: the model's hold is ``result_hold_ms``;
    at 10% patient liars no wrong result becomes final at the default floor."""
    assert SpotConfig().hold_ms == CoreParams().result_hold_ms > 0
    res = simulate(PATIENT)
    assert res.wrong_accepted > 0 and res.wrong_final == 0 and res.strict_target_met
    # Ages are measured: a hold shorter than the liars' time to conviction lets lies final.
    ages = sorted(res.retracted_ages)
    assert ages[0] > 0 and res.final_for(ages[-1]) == 1 and res.final_for(ages[0]) == len(ages)


def test_a_wrong_result_standing_at_the_end_is_final_only_past_its_hold() -> None:
    """Without the audit nothing is retracted: what stands is pending while in
    its hold, final after."""
    res = simulate(dataclasses.replace(PATIENT, audit=False, hold_ms=10**9))
    assert res.standing > 0 and res.wrong_final == 0 and res.pending_for(10**9) == res.standing
    assert res.final_for(0) == res.standing and res.pending_for(0) == 0
    oldest = max(res.standing_ages)
    assert oldest > 0 and res.final_for(oldest) >= 1 and res.pending_for(oldest + 1) == res.standing
    assert res.final_for(min(res.standing_ages)) == res.standing


def test_the_hold_curve_marks_the_default_hold(capsys: pytest.CaptureFixture[str]) -> None:
    hold_s = f"{CoreParams().result_hold_ms / 1000:g}"
    rc = main(
        ["spotcheck", "--workers", "10", "--jobs", "600", "--shares", "0,0.1", "--rejoin", "off"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    head = next(line for line in out.splitlines() if "final@0" in line).split()
    assert head[-3] == f"final@{hold_s}*" and head[-2] == "pending*"
    rows = [line.split() for line in out.splitlines()]
    hold_rows = [
        r for r in rows if r and r[0].endswith("%") and len(r) == len(head) - (r[0] != "10%")
    ]
    assert [r[0] for r in hold_rows] == ["0%", "10%"]
    assert hold_rows[1][-1] in ("met", "missed")


def test_set_overrides_core_params_and_a_bad_one_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--set NAME=VALUE`` reaches the model's CoreParams (a newcomer not
    replicated costs fewer runs); a misspelt or non-numeric one is refused in
    one line, exit 2."""
    plain = simulate(PATIENT)
    lax = simulate(dataclasses.replace(PATIENT, core=(("untrusted_replication", 0.0),)))
    assert lax.runs < plain.runs
    for bad in ("nope=1", "untrusted_replication=x"):
        assert main(["spotcheck", "--jobs", "10", "--set", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"spotcheck: --set {bad}: ") and err.count("\n") == 1
    assert (
        main(
            [
                "spotcheck",
                "--workers",
                "10",
                "--jobs",
                "300",
                "--shares",
                "0.1",
                "--floors",
                "0.05",
                "--rejoin",
                "on",
                "--set",
                "trust_after_valid=3",
            ]
        )
        == 0
    )
    assert "trust_after_valid 3" in capsys.readouterr().out
