"""A clock a test can step and stop, for clock-jump and timing tests.

:class:`SkewedClock` is the daemon's :class:`meshd.runtime.clock.SystemClock`
(its monotonic timeline is trio's clock, so ``trio.testing.MockClock`` drives
it) with two faults a test sets while daemons run:

- ``jump(ms)`` steps the wall part alone by ``ms`` (negative: back), as NTP
  or a person would step the system clock; the monotonic timeline does not
  move;
- ``pause()`` stops the monotonic timeline (a process not scheduled, as far
  as the shell's timers, deadlines and rate buckets can tell) until
  ``resume()``, when it catches up with trio's clock. Libp2p keeps trio's
  clock meanwhile.

Several daemons may share one (one machine, one clock).
"""

from __future__ import annotations

from meshd.runtime.clock import SystemClock


class SkewedClock(SystemClock):
    """``SystemClock`` plus ``offset_ms`` on the wall clock, and a pause."""

    def __init__(self, offset_ms: int = 0) -> None:
        super().__init__()
        self.offset_ms = offset_ms
        self._paused_at: int | None = None

    def jump(self, ms: int) -> None:
        """Step the wall clock by ``ms``; the monotonic timeline does not move."""
        self.offset_ms += ms

    def pause(self) -> None:
        """Stop the monotonic timeline where it is now."""
        self._paused_at = self.monotonic_ms()

    def resume(self) -> None:
        """Let the monotonic timeline run again (it catches up with trio's clock)."""
        self._paused_at = None

    def monotonic_ms(self) -> int:
        if self._paused_at is not None:
            return self._paused_at
        return super().monotonic_ms()

    def wall_ms(self) -> int:
        return super().wall_ms() + self.offset_ms
