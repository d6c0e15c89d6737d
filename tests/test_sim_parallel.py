"""A simulation split over processes (simulations/parallel.py): the same
placement as one process, a pure function of its seed and process count,
failures anywhere reported, what it cannot split refused.

Meshes of 300 nodes (above 256 receipts are thinned, as at the issue-14 size)
and 300 jobs: a few seconds a run.
"""

from __future__ import annotations

from typing import Any

import pytest

from simulations import engine as sim_engine
from simulations.__main__ import main
from simulations.invariants import Checker
from simulations.scenarios import Run, RunConfig, run

NODES, JOBS = 300, 300


def _run(procs: int, seed: int = 1, scenario: str = "scale", **pins: str) -> dict[str, Any]:
    return run(RunConfig(scenario, seed, NODES, JOBS, dict(pins), None, procs)).result


def test_a_split_run_places_every_job_as_one_process_does() -> None:
    one, two = _run(1), _run(2)
    for res in (one, two):
        assert res["ok"], res["failure"]
        assert res["succeeded"] == res["submitted"] == JOBS and res["lost"] == 0
    assert two["procs"] == 2 and two["windows"] > 0
    # Receipts and countersignatures crossed processes and were opened from
    # their tokens there: nothing was refused that one process does not refuse
    # (an unknown token is a bad_receipt or a bad_signature).
    refused = set(two["rejected"] or {})
    assert refused <= set(one["rejected"] or {}) and not refused & {"bad_receipt", "bad_signature"}
    assert two["counters"]["awards_sent"] == JOBS
    # The same mesh and jobs: completion within a few percent of one process's.
    assert two["ratio_mean_vs_omniscient"] == pytest.approx(
        one["ratio_mean_vs_omniscient"], rel=0.05
    )
    # Each process walks its own nodes; the one that is not the origin's
    # hears that the window closed a window late, so a few more bids come late.
    assert two["counters"]["bids_sent"] >= one["counters"]["bids_sent"]
    assert two["counters"]["bid_late"] < JOBS * 8


def test_a_split_run_is_a_function_of_its_seed_and_process_count() -> None:
    a, b, c = _run(2), _run(2), _run(3)
    assert a["trace"] == b["trace"] and a["events"] == b["events"]
    assert a["completion_mean_s"] == b["completion_mean_s"]
    assert c["ok"], c["failure"]
    assert c["trace"] != a["trace"]
    assert _run(1)["trace"] != a["trace"]


def test_a_split_run_refuses_what_it_cannot_split(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="crashes"):
        Run(RunConfig("churn", 1, 20, 20, {}, None, 2))
    with pytest.raises(ValueError, match="liars"):
        Run(RunConfig("scale", 1, 20, 20, {"liar_fraction": "0.1"}, None, 2))
    with pytest.raises(ValueError, match="processes"):
        Run(RunConfig("scale", 1, 20, 20, {}, None, 9))
    assert main(["run", "partition", "--nodes", "20", "--jobs", "20", "--procs", "2"]) == 2
    err = capsys.readouterr().err
    assert "partitions" in err and "Traceback" not in err


def test_an_invariant_broken_in_another_process_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Checker._on_finished

    def broken(self: Checker, slot: Any, body: dict[str, Any]) -> None:
        if slot.idx % 2 == 1:  # nodes of process 1 only
            self.fail(f"planted failure on node {slot.idx}")
        real(self, slot, body)

    monkeypatch.setattr(Checker, "_on_finished", broken)
    res = _run(2)
    assert not res["ok"] and "planted failure on node" in res["failure"]


def test_a_crash_in_another_process_is_reported_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sim_engine.Engine._finish

    def crashing(self: sim_engine.Engine, p: Any) -> None:
        if self.part is not None and self.part.index == 1:
            raise RuntimeError("planted crash")
        real(self, p)

    monkeypatch.setattr(sim_engine.Engine, "_finish", crashing)
    res = _run(2)
    assert not res["ok"]
    assert "process 1 of 2 crashed" in res["failure"] and "planted crash" in res["failure"]


def test_the_command_line_splits_a_run_and_its_replay_says_so(tmp_path: Any) -> None:
    out = tmp_path / "r.json"
    args = ["run", "load", "--nodes", "40", "--jobs", "40", "--procs", "2", "--json", str(out)]
    assert main(args) == 0
    import json

    res = json.loads(out.read_text())
    assert res["ok"] and res["procs"] == 2 and res["replay"].endswith("--procs 2")


def test_replicas_on_nodes_of_different_processes_are_compared() -> None:
    res = _run(2, scenario="load", replication="default", load="0.5")
    assert res["ok"], res["failure"]
    assert res["succeeded"] == JOBS
    # Some jobs ran twice (the spot-check floor, specs/CREDITS.md), each run
    # counted wherever its worker was stepped.
    assert res["runs_started"] > JOBS
    assert res["verification_overhead_by_quarter"]


def test_a_plot_without_matplotlib_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    ran: list[Any] = []
    monkeypatch.setattr("simulations.__main__.Run", lambda *a: ran.append(a))
    assert main(["run", "load", "--nodes", "20", "--jobs", "20", "--png", "/tmp/never.png"]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "Traceback" not in err and not ran


def test_a_split_run_leaves_no_child_process_behind() -> None:
    import os
    import subprocess

    for procs in (2, 3):
        assert run(RunConfig("scale", 1, 60, 30, {}, None, procs)).result["ok"]
    ps = subprocess.run(
        ["ps", "-o", "stat=", "--ppid", str(os.getpid())], capture_output=True, text=True
    ).stdout.split()
    assert not [st for st in ps if st.startswith("Z")], ps  # reaped, not zombies
