"""The core's two clocks: timers on the monotonic timeline, wall time for stamps only.

Rules checked (``Node.step`` docstring, docs/ARCHITECTURE.md "Two clocks"):
a wall clock that jumps back or forward by an hour neither crashes the core
nor fires or stalls a timer; what the node signs carries the wall time; a
monotonic value behind the last one is taken as the last one.
"""

from __future__ import annotations

import random

from meshd.core.events import ExecutorHealth, Publish, Tick
from meshd.core.identity import Identity
from meshd.core.node import Node
from meshd.core.params import CoreParams
from meshd.core.wire import Rejected, open_envelope
from meshd.testing.corenet import default_caps

HOUR_MS = 3_600_000
T0 = 1_700_000_000_000


def _node(params: CoreParams) -> Node:
    node = Node(params, Identity.generate(), random.Random(7), T0)
    node.step(default_caps(), T0, T0)
    node.step(ExecutorHealth(True), T0, T0)
    return node


def _advert_stamps(effects: list[object]) -> list[int]:
    out = []
    for e in effects:
        if isinstance(e, Publish) and "adverts" in e.topic:
            opened = open_envelope(e.data, 1 << 20)
            assert not isinstance(opened, Rejected), opened
            out.append(opened.ts_ms)
    return out


def _adverts_over(node: Node, start: int, ms: int, wall_offset: int) -> tuple[int, list[int]]:
    """Step the node every 100 ms of monotonic time for ``ms``; returns the
    number of adverts it sent and their stamps."""
    sent, stamps = 0, []
    for t in range(start, start + ms, 100):
        effects = node.step(Tick(), t, t + wall_offset)
        s = _advert_stamps(effects)
        sent += len(s)
        stamps += s
    return sent, stamps


def test_a_wall_clock_jump_neither_fires_nor_stalls_timers() -> None:
    params = CoreParams()
    steady, jumped_back, jumped_fwd = _node(params), _node(params), _node(params)
    span = 10 * params.advert_interval_ms
    base = _adverts_over(steady, T0 + 100, span, 0)[0]
    back, back_stamps = _adverts_over(jumped_back, T0 + 100, span, -HOUR_MS)
    fwd, fwd_stamps = _adverts_over(jumped_fwd, T0 + 100, span, +HOUR_MS)
    assert base == back == fwd == span // params.advert_interval_ms
    # What the node signs carries the wall clock it was given.
    assert all(abs(s - (T0 - HOUR_MS)) <= span + 100 for s in back_stamps)
    assert all(abs(s - (T0 + HOUR_MS)) <= span + 100 for s in fwd_stamps)


def test_monotonic_time_that_goes_back_is_taken_as_the_last_value() -> None:
    node = _node(CoreParams())
    node.step(Tick(), T0 + 5_000, T0 + 5_000)
    node.step(Tick(), T0 + 1_000, T0 + 1_000)  # a shell bug, not a crash
    assert node.now_ms == T0 + 5_000


def test_if_timers_ran_on_wall_time_the_jump_would_show() -> None:
    """The check above can fail: feeding the jumped wall clock as the
    monotonic time fires an hour of adverts at once (forward) or none (back)."""
    params = CoreParams()
    fwd = _node(params)
    effects = fwd.step(Tick(), T0 + HOUR_MS, T0 + HOUR_MS)
    assert len(_advert_stamps(effects)) <= 1  # timers coalesce; the hour of silence is lost
    back = _node(params)
    back.step(Tick(), T0 - HOUR_MS, T0 - HOUR_MS)
    sent, _ = _adverts_over(back, T0 - HOUR_MS, 10 * params.advert_interval_ms, 0)
    assert sent == 0  # stalled: the timeline never goes back, so nothing is due
