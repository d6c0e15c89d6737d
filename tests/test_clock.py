"""The shell's injected clock (meshd.runtime.clock): timers on the monotonic
timeline, the wall clock only for stamps, so a wall clock that jumps moves no
timer.

A real daemon runs under ``trio.testing.MockClock`` (its monotonic timeline is
trio's clock) with a :class:`meshd.testing.clock.SkewedClock` whose wall part
the test steps back and forward by an hour; its advert timer must fire exactly
every ``advert_interval_ms`` of virtual time across both jumps, neither early
nor late. A cluster of real daemons sharing one such clock keeps placing and
finishing work across the same jumps. Either test fails if the daemon ran its
timers on the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from meshd.api.client import ApiClient
from meshd.core.events import Tick
from meshd.runtime.clock import SystemClock
from meshd.testing.clock import SkewedClock
from meshd.testing.cluster import FAST_CORE, Cluster

HOUR_MS = 3_600_000


async def test_the_monotonic_timeline_starts_at_the_wall_clock_and_follows_trio(
    mock_clock: trio.testing.MockClock,
) -> None:
    clock = SystemClock()
    start = clock.monotonic_ms()
    assert abs(start - clock.wall_ms()) < 1_000  # lines up with the log's wall stamps
    mock_clock.jump(5.0)
    assert clock.monotonic_ms() == start + 5_000
    assert clock.monotonic_ms() == start + 5_000  # virtual time stands still


async def test_a_wall_clock_jump_moves_the_stamps_but_not_the_timeline(
    mock_clock: trio.testing.MockClock,
) -> None:
    clock = SkewedClock()
    mono, wall = clock.monotonic_ms(), clock.wall_ms()
    clock.jump(-HOUR_MS)
    assert clock.monotonic_ms() == mono
    assert wall - HOUR_MS - 1_000 < clock.wall_ms() <= wall - HOUR_MS + 1_000
    mock_clock.jump(2.0)
    clock.jump(2 * HOUR_MS)
    assert clock.monotonic_ms() == mono + 2_000


async def _settle() -> None:
    """Let every task run to a standstill (virtual time does not move; worker
    threads get a few real milliseconds to report back)."""
    for _ in range(3):
        await trio.to_thread.run_sync(time.sleep, 0.02)
        await trio.testing.wait_all_tasks_blocked()


async def _eventually(pred: Callable[[], bool], real_s: float = 10.0) -> bool:
    """Whether ``pred`` holds once the tasks have caught up, waiting at most
    ``real_s`` of real time (a guard against a stuck test, not a bound on
    the daemon: virtual time stands still meanwhile)."""
    give_up = time.monotonic() + real_s
    while not pred():
        if time.monotonic() > give_up:
            return False
        await _settle()
    return True


async def test_timers_fire_on_the_monotonic_clock_across_wall_clock_jumps(
    tmp_path: Path, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    interval = FAST_CORE.advert_interval_ms
    clock = SkewedClock()
    mock_clock.rate = 1.0  # start in step with real time (libp2p and the API start up)
    async with Cluster.started(nursery, tmp_path, 1, clock=clock) as c:
        d = c.daemon(0)
        mock_clock.rate = 0.0  # from now on only the test moves time

        def adverts() -> int:
            assert d.view is not None
            return d.view.counters()["adverts_sent"]

        # Find the advert timer's phase: step virtual time until it fires (a
        # Tick through the inbox makes the core run what is due at this very
        # instant); it is then due again exactly one interval later.
        before = adverts()
        for _ in range(interval // 50 + 2):
            mock_clock.jump(0.05)
            await d.submit(Tick())
            if adverts() > before:
                break
        sent = adverts()
        assert sent == before + 1, "the advert timer never fired"

        # From here the daemon's loop wakes itself: nothing is fed to it.
        for wall_jump_ms in (-HOUR_MS, 2 * HOUR_MS):
            clock.jump(wall_jump_ms)
            await _settle()
            assert adverts() == sent, f"a wall jump of {wall_jump_ms} ms fired the timer"
            mock_clock.jump((interval - 1) / 1000)
            await _settle()
            assert adverts() == sent, f"the timer fired early after a {wall_jump_ms} ms jump"
            mock_clock.jump(0.001)
            assert await _eventually(lambda n=sent: adverts() > n), (
                f"the timer stalled after a {wall_jump_ms} ms jump"
            )
            await _settle()
            assert adverts() == sent + 1
            sent += 1

        # The daemon still answers, and its status tells the same story.
        client = ApiClient.from_data_dir(c.members[0].data_dir)
        status = await trio.to_thread.run_sync(client.status)
        assert status["counters"]["adverts_sent"] == sent
        assert status["warm"] is True
        mock_clock.rate = 1.0  # shut down in real time


SLEEP_JOB = {
    "image": "meshd/busybox:1",
    "command": ["sh", "-c", "sleep 2; echo ok > $MESH_OUTPUTS/ok.txt"],
    "replicas": 1,
}


async def test_a_cluster_keeps_placing_and_finishing_work_across_wall_clock_jumps(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    clock = SkewedClock()  # one machine: one wall clock for all three daemons
    async with Cluster.started(nursery, tmp_path, 3, clock=clock) as c:
        # Forward by an hour while a job runs: its lease (4 s) must not expire
        # early, so it finishes on its first award.
        first = await c.submit(0, SLEEP_JOB)
        await c.wait_job(0, first, "running", timeout_s=30)
        clock.jump(HOUR_MS)
        job = await c.wait_job(0, first, timeout_s=30)
        assert job.state == "succeeded", job.reason
        assert job.attempt == 1 and len(job.runs) == 1, job.runs

        # Back by an hour: timers keep firing (every node keeps advertising
        # itself every 0.5 s) ...
        clock.jump(-HOUR_MS)

        def adverts() -> list[int]:
            views = [c.daemon(i).view for i in range(3)]
            return [v.counters()["adverts_sent"] for v in views if v is not None]

        before = adverts()
        await c.wait_for(
            lambda: all(n >= b + 3 for n, b in zip(adverts(), before, strict=True)),
            timeout_s=20,
            what="adverts after the wall clock went back",
        )
        # ... and a job submitted now is offered, placed and finished as usual.
        second = await c.submit(0, SLEEP_JOB)
        job = await c.wait_job(0, second, timeout_s=30)
        assert job.state == "succeeded", job.reason
        assert job.attempt == 1 and len(job.runs) == 1, job.runs
