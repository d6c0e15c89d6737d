"""The shell's clock, injected: a monotonic timeline for timers, the wall clock for stamps.

Theory of operation
-------------------
The core runs every timer, lease, window and back-off on the ``now_ms`` the
shell passes to ``Node.step``, and uses ``wall_ms`` only to stamp what it
signs and to judge the stamps of what it receives (``Node.step``). A wall
clock that jumps (NTP stepping it, a person setting it, a suspended VM) must
therefore move neither timers nor deadlines, or a jump back would stall every
timer for as long as the jump and a jump forward would fire them all at once.
So the shell reads two clocks, through one :class:`Clock`:

- ``monotonic_ms()``: the timeline of every timer, deadline, sleep, wait and
  rate bucket in ``meshd.runtime``. :class:`SystemClock` defines it as the
  wall time when the clock is first read (the daemon's start) plus the time
  elapsed since on trio's clock, which never goes back. Starting from the wall
  time keeps it near the times in the event log, so after a restart the
  timeline continues from about where the log left off (deadlines the core
  restores from its records stay meaningful).
- ``wall_ms()``: the wall clock (``time.time()``), for what is stamped and for
  judging the stamps of others (gossip validation): log records, the
  timestamps of signed messages, job log lines shown to a person.

Because the monotonic part is ``trio.current_time()``, a test that runs trio
with ``trio.testing.MockClock`` drives every timer of a real daemon in virtual
time; :class:`meshd.testing.clock.SkewedClock` moves the wall part alone.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    """The two clocks the shell reads."""

    def monotonic_ms(self) -> int:
        """The timeline of timers and deadlines (ms): never goes back."""
        ...

    def wall_ms(self) -> int:
        """The wall clock (ms since the epoch): for stamps only; may jump."""
        ...


class SystemClock:
    """Trio's clock for the monotonic timeline (started at the wall time of
    the first read), ``time.time()`` for the wall clock. Read only from the
    trio thread."""

    def __init__(self) -> None:
        self._origin: tuple[int, float] | None = None
        """(wall ms, trio seconds) when the timeline was first read."""

    def monotonic_ms(self) -> int:
        now = trio.current_time()
        if self._origin is None:
            self._origin = (self.wall_ms(), now)
        wall0, t0 = self._origin
        return wall0 + int((now - t0) * 1000)

    def wall_ms(self) -> int:
        return now_ms()


def now_ms() -> int:
    """The wall clock in ms, for stamping outside a daemon (tools, tests)."""
    return int(time.time() * 1000)
