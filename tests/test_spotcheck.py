"""The spot-check floor: even a trusted worker is replicated with at least
``replication_fraction`` (meshd/core/trust.py ``replication_probability``),
and the curve command that measures what the floor buys
(simulations/spotcheck.py, specs/CREDITS.md §4 and §11).

A small version of ``python -m simulations spotcheck``: a trusted worker's
jobs are still replicated at about the floor rate, however long its streak.
"""

from __future__ import annotations

import dataclasses

import pytest

from meshd.core.params import CoreParams
from meshd.core.trust import Trust
from simulations.__main__ import main
from simulations.spotcheck import SpotConfig, simulate

SMALL = SpotConfig(workers=20, jobs=6_000, liar_share=0.0, seed=3)


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
    # every worker has a streak of ~150 by the second half: 1/streak would be < 0.01
    assert res.trusted_primary > 2_000
    assert abs(res.trusted_rate - floor) < 0.3 * floor
    assert abs(res.overhead - floor) < 0.3 * floor
    assert res.wrong_accepted == 0


def test_patient_liars_get_lies_through_only_past_the_floor() -> None:
    """With 10% patient liars the floor catches some lies, not all: what gets
    through is what specs/CREDITS.md §11 reports."""
    res = simulate(dataclasses.replace(SMALL, liar_share=0.10))
    assert res.wrong_accepted > 0
    assert 0 < res.trusted_rate < 1


def test_curve_command_marks_the_default(capsys: pytest.CaptureFixture[str]) -> None:
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
            "0.1,0.3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line.split() for line in out.splitlines()]
    rows = [r for r in rows if r and r[0].endswith("%")]
    assert len(rows) == 4
    assert sum(1 for r in rows if r[1] == "0.10*") == 2
    assert sum(1 for r in rows if r[1] == "0.30") == 2
