"""The per-peer send queues (meshd/runtime/sendq.py): a newer heartbeat
replaces a queued one, except one that carries live output (``coalesce=False``)."""

from __future__ import annotations

import trio
import trio.testing

from meshd.core.events import Send
from meshd.runtime.sendq import SendQueueParams, SendQueues


async def test_a_heartbeat_carrying_output_is_never_replaced_by_a_newer_one(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()
    sent: list[bytes] = []

    async def request(peer: str, data: bytes) -> None:
        await release.wait()
        sent.append(data)

    failed: list[Send] = []
    q = SendQueues(
        SendQueueParams(max_sends_per_peer=1),
        request=request,
        on_failed=lambda eff, why: failed.append(eff),
        clock_ms=lambda: 0,
    )
    q.start(nursery)

    def hb(data: bytes, coalesce: bool = True) -> Send:
        return Send("peer", data, "heartbeat", "job-1", None, coalesce)

    q.put(hb(b"a"))  # in flight, held by request()
    await trio.testing.wait_all_tasks_blocked()
    q.put(hb(b"b-with-output", coalesce=False))
    q.put(hb(b"c"))  # queued behind b: b is not replaced
    q.put(hb(b"d"))  # replaces c
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert sent == [b"a", b"b-with-output", b"d"]
    assert q.counts()["coalesced"] == 1 and not failed
