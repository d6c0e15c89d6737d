"""The job lifecycle table (``meshd/core/lifecycle.py``) and the diagrams drawn from it.

Rules checked (module header): "every change is checked against TRANSITIONS
and logged as a job_state record"; "specs/JOB.md draws its state diagram from
this table".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.core.events import CancelRequested, RetryRequested
from meshd.core.jobspec import parse_job_spec
from meshd.core.lifecycle import (
    RUN_STATES,
    RUN_TRANSITIONS,
    STATES,
    TERMINAL,
    TRANSITIONS,
    WORK_STATES,
    WORK_TRANSITIONS,
    check_transition,
    mermaid,
    run_mermaid,
    run_next,
    work_mermaid,
    work_next,
)
from meshd.core.params import CoreParams
from meshd.testing.corenet import CoreNet, FakeWorker, default_caps

JOB_MD = Path(__file__).resolve().parents[1] / "specs" / "JOB.md"
EDGE_RE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\[\*\]|\w+)\s*(?::\s*(.*?))?\s*$")


def edges(diagram: str) -> set[tuple[str, str]]:
    found = set()
    for line in diagram.splitlines():
        m = EDGE_RE.match(line)
        if m and "[*]" not in (m.group(1), m.group(2)):
            found.add((m.group(1), m.group(2)))
    return found


# ------------------------------------------------------------ the table itself


def test_table_uses_only_known_states_and_terminal_states_only_leave_by_retry_or_audit() -> None:
    for a, b in TRANSITIONS:
        assert a in STATES and b in STATES
        if a in TERMINAL:
            assert b == "queued"
            assert ("audit" if a == "succeeded" else "retried") in TRANSITIONS[(a, b)]


def test_every_state_is_reachable_from_queued() -> None:
    reached, frontier = {"queued"}, ["queued"]
    while frontier:
        s = frontier.pop()
        for a, b in TRANSITIONS:
            if a == s and b not in reached:
                reached.add(b)
                frontier.append(b)
    assert reached == set(STATES)


def test_check_transition_refuses_what_the_table_does_not_allow() -> None:
    check_transition("queued", "offered")
    check_transition("running", "running")
    with pytest.raises(AssertionError, match="succeeded -> running"):
        check_transition("succeeded", "running")


def test_run_and_work_tables_use_known_states_and_refuse_other_events() -> None:
    for (a, _event), (b, why) in RUN_TRANSITIONS.items():
        assert a in RUN_STATES and b in RUN_STATES and why
    for (a, _event), (b, why) in WORK_TRANSITIONS.items():
        assert a in WORK_STATES and b in WORK_STATES and why
    assert run_next("awarding", "accepted") == "active"
    assert work_next("queued", "start") == "fetching"
    with pytest.raises(AssertionError, match="'lease_lost' in state 'done'"):
        run_next("done", "lease_lost")
    with pytest.raises(AssertionError, match="'start' in state 'finished'"):
        work_next("finished", "start")


def test_mermaid_lists_every_transition_and_nothing_else() -> None:
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2")
    assert edges(diagram) == set(TRANSITIONS)
    for (a, b), why in TRANSITIONS.items():
        assert f"{a} --> {b}: {why}" in diagram
    for t in TERMINAL:
        assert f"{t} --> [*]" in diagram


def test_job_md_diagram_matches_the_table() -> None:
    if not JOB_MD.exists():
        pytest.skip("specs/JOB.md not written yet (mermaid() is checked above)")
    text = JOB_MD.read_text(encoding="utf-8")
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
    diagrams = [b for b in blocks if "stateDiagram" in b]
    assert len(diagrams) == 3, "JOB.md draws the job, run and held-run diagrams"
    assert edges(diagrams[0]) == set(TRANSITIONS)
    # The run and held-run diagrams are the generated ones, verbatim.
    assert diagrams[1].strip() == run_mermaid()
    assert diagrams[2].strip() == work_mermaid()


# ------------------------------------------------------------ what the origin logs


PARAMS = CoreParams(replication_fraction=0.0, untrusted_replication=0.0, max_queue_time_ms=30_000)
SPEC = {"image": "meshd/busybox:1", "command": ["echo", "hi"]}


def _happy(net: CoreNet) -> None:
    net.submit(0, parse_job_spec(SPEC))


def _replicated_with_liar(net: CoreNet) -> None:
    net.slots[net.order[1]].worker.lie_rate = 1.0
    net.submit(0, parse_job_spec({**SPEC, "replicas": 2}))


def _worker_crash(net: CoreNet) -> None:
    for p in net.order:
        net.slots[p].worker.duration_ms = lambda s: 20_000
    job = net.submit(0, parse_job_spec(SPEC))
    net.run_until(lambda: any(r.started for r in net.job(0, job).runs.values()))
    net.crash(next(iter(net.job(0, job).runs.values())).worker)


def _cancel_and_retry(net: CoreNet) -> None:
    job = net.submit(0, parse_job_spec(SPEC))
    net.run_for(100)
    net.input(0, CancelRequested(job))
    net.run_for(100)
    net.input(0, RetryRequested(job))


def _exit_code_then_retry(net: CoreNet) -> None:
    for p in net.order:
        net.slots[p].worker.exit_code = lambda s: 2
    job = net.submit(0, parse_job_spec(SPEC))
    net.run_until(lambda: net.job(0, job).state == "failed")
    for p in net.order:
        net.slots[p].worker.exit_code = lambda s: 0
    net.input(0, RetryRequested(job))


def _nobody_fits(net: CoreNet) -> None:
    net.submit(0, parse_job_spec({**SPEC, "requirements": {"gpus": 1}}))


def _awards_refused(net: CoreNet) -> None:
    # Workers that bid but go cold before the award arrives refuse it.
    job = net.submit(0, parse_job_spec(SPEC))
    net.run_until(lambda: bool(net.job(0, job).bids))
    from meshd.core.events import ExecutorHealth

    for p in net.order[1:]:
        for _ in range(3):
            net.input(p, ExecutorHealth(False, "gone"))


SCENARIOS: dict[str, Callable[[CoreNet], None]] = {
    "happy": _happy,
    "liar": _replicated_with_liar,
    "worker_crash": _worker_crash,
    "cancel_retry": _cancel_and_retry,
    "exit_code_retry": _exit_code_then_retry,
    "nobody_fits": _nobody_fits,
    "awards_refused": _awards_refused,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_logged_job_state_change_is_in_the_table(name: str) -> None:
    workers = [FakeWorker(caps=default_caps()) for _ in range(5)]
    net = CoreNet(5, seed=31, params=PARAMS, workers=workers)
    net.run_for(3_000)
    SCENARIOS[name](net)
    net.run_for(60_000)
    changes = [(b["from"], b["to"]) for k, b in net.slots[net.order[0]].log if k == "job_state"]
    assert changes, "the scenario changed some job's state"
    for change in changes:
        assert change in TRANSITIONS, f"{name}: {change} not in TRANSITIONS"
    # The job's states chain: each change starts where the previous one ended.
    for (_, b), (a, _) in zip(changes, changes[1:], strict=False):
        assert a == b


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_result_whose_output_cannot_be_fetched_sends_the_job_back_to_work(replicas: int) -> None:
    """Regression: verifying -> offered/running was missing from the table, so a
    worker that reported success and then did not serve its output crashed the
    origin's core (found by the cluster trust tests)."""
    from meshd.core.jobspec import JobSpec
    from meshd.testing.corenet import CoreNet, FakeWorker

    net = CoreNet(4, seed=1, workers=[FakeWorker() for _ in range(4)])
    net.run_for(3_000)
    net.refuse_outputs = 1
    job_id = net.submit(
        0, JobSpec(image="meshd/busybox:1", command=["echo", "1"], timeout_s=60, replicas=replicas)
    )
    net.run_until(lambda: net.job(0, job_id).state in ("succeeded", "failed"), 60_000)
    job = net.job(0, job_id)
    assert job.state == "succeeded"
    assert net.refuse_outputs == 0
    assert any(r.state == "failed" for r in job.runs.values())  # the run whose output was refused
    states = [s for _, s, _ in job.history]
    if replicas == 1:  # its only result was lost: the job went back to work before it succeeded
        after = states[states.index("verifying") : states.index("succeeded")]
        assert set(after) & {"offered", "queued", "awarded", "running"}, states
