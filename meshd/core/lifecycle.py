"""The job lifecycle as data: states, allowed transitions, and what a run is.

A job's user-visible state is *derived* from its runs and its open offer
(``origin.derive_state``); every change is checked against
:data:`TRANSITIONS` and logged as a ``job_state`` record. ``specs/JOB.md``
draws its state diagram from this table (``tests/test_lifecycle.py`` checks
the diagram and the table agree).
"""

from __future__ import annotations

STATES: tuple[str, ...] = (
    "queued",
    "offered",
    "awarded",
    "running",
    "verifying",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

# (from, to): why it happens.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("queued", "offered"): "offer published",
    ("offered", "queued"): "bid window closed with no usable bid",
    ("offered", "awarded"): "best bids awarded",
    ("awarded", "offered"): "award refused; job offered again",
    ("awarded", "queued"): "every award refused",
    ("awarded", "running"): "a worker reported the job running",
    ("awarded", "verifying"): "a result arrived",
    ("running", "verifying"): "a result arrived",
    ("running", "offered"): "lease lost or run failed; offered again",
    ("running", "queued"): "lease lost or run failed; waiting to offer again",
    ("running", "awarded"): "a run failed; another award is outstanding",
    ("verifying", "succeeded"): "result accepted",
    ("verifying", "failed"): "results could not be verified",
    ("verifying", "offered"): "the result's output could not be fetched; offered again",
    ("verifying", "queued"): "the result's output could not be fetched; waiting to offer again",
    (
        "verifying",
        "awarded",
    ): "the result's output could not be fetched; another award is outstanding",
    ("verifying", "running"): "the result's output could not be fetched; another run is under way",
    ("queued", "failed"): "no worker took the job in time, or attempts exhausted",
    ("offered", "failed"): "attempts exhausted",
    ("awarded", "failed"): "attempts exhausted",
    ("running", "failed"): "attempts exhausted",
    ("queued", "cancelled"): "cancelled by the user",
    ("offered", "cancelled"): "cancelled by the user",
    ("awarded", "cancelled"): "cancelled by the user",
    ("running", "cancelled"): "cancelled by the user",
    ("verifying", "cancelled"): "cancelled by the user",
    ("failed", "queued"): "retried by the user",
    ("cancelled", "queued"): "retried by the user",
}

# A run is one worker's execution of one job.
RUN_STATES: tuple[str, ...] = (
    "awarding",
    "active",
    "done",
    "refused",
    "lost",
    "failed",
    "cancelled",
)
RUN_LIVE: frozenset[str] = frozenset({"awarding", "active"})

# Worker-side states of a run it holds.
WORK_STATES: tuple[str, ...] = ("queued", "fetching", "running", "finished", "cancelled")


def check_transition(old: str, new: str) -> None:
    """Assert a job state change is in the table (our own bug otherwise)."""
    assert old == new or (old, new) in TRANSITIONS, f"illegal job transition {old} -> {new}"


def transition_path(old: str, new: str) -> list[str]:
    """Shortest path of allowed transitions from ``old`` to ``new`` (inclusive).

    The origin derives a job's state after each event; one event can move it
    more than one step (a bid window that closes on the first bid goes
    offered -> awarded with the offer in the same step from queued). The log
    then shows each intermediate state in order.
    """
    if old == new or (old, new) in TRANSITIONS:
        return [old, new]
    frontier, seen = [[old]], {old}
    while frontier:
        path = frontier.pop(0)
        for a, b in TRANSITIONS:
            if a != path[-1] or b in seen:
                continue
            if b == new:
                return [*path, b]
            if b not in TERMINAL:
                seen.add(b)
                frontier.append([*path, b])
    return [old, new]


def mermaid() -> str:
    """The state diagram (Mermaid), generated from the table."""
    lines = ["stateDiagram-v2", "    [*] --> queued"]
    for (a, b), why in TRANSITIONS.items():
        lines.append(f"    {a} --> {b}: {why}")
    for t in sorted(TERMINAL):
        lines.append(f"    {t} --> [*]")
    return "\n".join(lines)
