"""The job lifecycle as data: states, allowed transitions, and what a run is.

Three lifecycles, each a table:

- a **run** (one award, as its origin sees it) and a **held run** (``work``,
  as the worker that holds it sees it) move only by events: the code asks
  :func:`run_next` / :func:`work_next` for the state an event leads to, and an
  event the table does not allow in the current state is our own bug (an
  assertion);
- a **job**'s user-visible state is *derived* from its runs and its open
  offer after each input (``Origin._derive_state``); each change is checked
  against :data:`TRANSITIONS` and logged as one ``job_state`` record from the
  state the job was really in to the one it is in now. One input can move a
  job more than one step of the simple story (an offer whose window closes on
  the first bid goes queued -> awarded in one step), so the table has those
  edges too; no intermediate state is ever invented.

``specs/JOB.md`` draws the state diagrams from these tables
(``tests/test_lifecycle.py`` checks the diagrams and the tables agree).
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
    ("queued", "awarded"): "offer published and its window closed on the bids at once",
    ("queued", "running"): "a run refused for a late acknowledgement is under way after all",
    ("offered", "running"): "a run refused for a late acknowledgement is under way after all",
    ("queued", "verifying"): "a result arrived for a run refused for a late acknowledgement",
    ("offered", "verifying"): "a result arrived for a run refused for a late acknowledgement",
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
    ("succeeded", "queued"): "audit: the worker of a result accepted unverified was convicted",
}

# A run is one worker's execution of one job, as its origin sees it.
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

# (state, event) -> (next state, why). A run starts in "awarding" when the
# award is sent; ``Origin`` moves it only through this table.
RUN_TRANSITIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("awarding", "accepted"): (
        "active",
        "the worker accepted (or its heartbeat showed it holds the run)",
    ),
    ("refused", "accepted"): (
        "active",
        "refused for a late acknowledgement, but under way after all",
    ),
    ("awarding", "refused"): (
        "refused",
        "the worker refused, the award could not be sent or was not acknowledged in time, "
        "or the job ended first",
    ),
    ("awarding", "result"): ("done", "a result arrived"),
    ("active", "result"): ("done", "a result arrived"),
    ("active", "lease_lost"): ("lost", "no heartbeat within the lease"),
    ("done", "output_lost"): ("failed", "the result's output could not be fetched"),
    ("awarding", "cancelled"): ("cancelled", "the job was cancelled or settled"),
    ("active", "cancelled"): ("cancelled", "the job was cancelled or settled"),
}

# A run as the worker that holds it sees it (``Worker.work``).
WORK_STATES: tuple[str, ...] = ("queued", "fetching", "running", "finished", "cancelled")
WORK_LIVE: frozenset[str] = frozenset({"queued", "fetching", "running"})

WORK_TRANSITIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("queued", "start"): ("fetching", "a slot is free: fetch the inputs"),
    ("fetching", "inputs_fetched"): ("running", "inputs in place: the executor starts"),
    ("fetching", "finished"): ("finished", "the inputs could not be fetched (an error result)"),
    ("running", "finished"): ("finished", "the executor finished"),
    ("queued", "cancelled"): ("cancelled", "the origin cancelled or went silent"),
    ("fetching", "cancelled"): ("cancelled", "the origin cancelled or went silent"),
    ("running", "cancelled"): ("cancelled", "the origin cancelled or went silent"),
}


def check_transition(old: str, new: str) -> None:
    """Assert a job state change is in the table (our own bug otherwise)."""
    assert old == new or (old, new) in TRANSITIONS, f"illegal job transition {old} -> {new}"


def run_next(state: str, event: str) -> str:
    """The state a run moves to on ``event``; an event the table does not allow
    in ``state`` is our own bug."""
    step = RUN_TRANSITIONS.get((state, event))
    assert step is not None, f"illegal run transition: {event!r} in state {state!r}"
    return step[0]


def work_next(state: str, event: str) -> str:
    """The state a held run moves to on ``event`` (our own bug if not allowed)."""
    step = WORK_TRANSITIONS.get((state, event))
    assert step is not None, f"illegal work transition: {event!r} in state {state!r}"
    return step[0]


def mermaid() -> str:
    """The job state diagram (Mermaid), generated from the table."""
    lines = ["stateDiagram-v2", "    [*] --> queued"]
    for (a, b), why in TRANSITIONS.items():
        lines.append(f"    {a} --> {b}: {why}")
    for t in sorted(TERMINAL):
        lines.append(f"    {t} --> [*]")
    return "\n".join(lines)


def mermaid_events(
    table: dict[tuple[str, str], tuple[str, str]], start: str, ends: frozenset[str]
) -> str:
    """A (state, event) table's diagram (Mermaid): one edge per row, labelled by the event."""
    lines = ["stateDiagram-v2", f"    [*] --> {start}"]
    for (a, event), (b, _why) in table.items():
        lines.append(f"    {a} --> {b}: {event}")
    for t in sorted(ends):
        lines.append(f"    {t} --> [*]")
    return "\n".join(lines)


def run_mermaid() -> str:
    """The run state diagram (Mermaid): every state that is not live may be a run's last."""
    return mermaid_events(RUN_TRANSITIONS, "awarding", frozenset(RUN_STATES) - RUN_LIVE)


def work_mermaid() -> str:
    """The held-run state diagram (Mermaid)."""
    return mermaid_events(WORK_TRANSITIONS, "queued", frozenset(WORK_STATES) - WORK_LIVE)
