"""The `mesh logs` reader (meshd/runtime/joblogs.py): stored logs, live
buffers, and the lines made of them — in order, never twice, a hole filled
from the stored log, a missing stored log waited for and then reported."""

from __future__ import annotations

from typing import Any

import msgpack
import trio

from meshd.core.wire import LogChunk
from meshd.runtime.joblogs import (
    JobLogs,
    LogQuery,
    RunLog,
    RunRef,
    StreamText,
    decode_run_log,
    follow_logs,
)
from meshd.testing.logsource import MemoryLogSource

JOB = "j-0123456789"
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def _chunk(stream: str, offset: int, data: bytes, ts: int = 1) -> LogChunk:
    return LogChunk(stream=stream, offset=offset, ts_ms=ts, data=data)  # type: ignore[arg-type]


def _stored(*chunks: tuple[str, int, bytes]) -> bytes:
    log = RunLog()
    for stream, ts, data in chunks:
        log.add(stream, ts, data)
    return log.to_blob()


def _lines(records: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(r["replica"], r["stream"], r["data"]) for r in records if "end" not in r]


async def _read(src: MemoryLogSource, **q: Any) -> list[dict[str, Any]]:
    return [r async for r in follow_logs(src, JOB, LogQuery(**q))]


def test_a_stored_log_round_trips_and_a_bad_blob_is_no_log() -> None:
    blob = _stored(("stdout", 5, b"a\nb"), ("stderr", 6, b"e\n"), ("stdout", 7, b"\nc\n"))
    streams = decode_run_log(blob)
    assert streams is not None
    assert bytes(streams["stdout"].data) == b"a\nb\nc\n"
    assert bytes(streams["stderr"].data) == b"e\n"
    assert streams["stdout"].lines(0, True) == ([(5, "a"), (5, "b"), (7, "c")], 6)
    bad = [
        b"\xc1 not msgpack",
        msgpack.packb({"v": 2, "chunks": []}),
        msgpack.packb({"v": 1, "chunks": [["stdout", 1, 0, b"x"]]}),  # does not start at 0
        msgpack.packb({"v": 1, "chunks": [["stdin", 0, 0, b"x"]]}),
        msgpack.packb({"v": 1, "chunks": [["stdout", 0, 0, "text"]]}),
        msgpack.packb([1, 2, 3]),
    ]
    assert [decode_run_log(b) for b in bad] == [None] * len(bad)


def test_a_stream_keeps_its_order_skips_repeats_marks_holes_and_trims() -> None:
    st = StreamText()
    assert st.add(0, 1, b"one\ntw") == 6
    assert st.add(0, 2, b"one\n") == 0  # already here
    assert st.add(4, 3, b"two\nthree\n") == 8  # only the new part
    assert st.lines(0, False) == ([(1, "one"), (1, "two"), (3, "three")], 14)
    assert st.trim(6) == 8 and st.base == 8
    assert st.lines(0, False) == ([], 0)  # before what is kept: nothing, not a part
    assert st.lines(8, False) == ([(3, "three")], 14)
    assert st.add(20, 4, b"later\n") == 0 and st.gapped
    assert st.add(14, 5, b"x\n") == 0  # a gapped stream takes nothing more live


def test_live_buffers_are_bounded_per_stream_and_in_all() -> None:
    logs = JobLogs(stream_bytes=8, total_bytes=20, max_jobs=2)
    logs.add("a", 0, 0, [_chunk("stdout", 0, b"0123456789")])
    buf = logs.get("a")
    assert buf is not None and bytes(buf.runs[(0, 0)]["stdout"].data) == b"23456789"
    logs.add("b", 0, 0, [_chunk("stdout", 0, b"abcdefgh"), _chunk("stderr", 0, b"ABCDEFGH")])
    assert logs.get("a") is None and logs.bytes == 16  # 24 > 20: the oldest job went
    logs.add("c", 0, 0, [_chunk("stdout", 0, b"x")])
    assert logs.get("b") is not None  # two jobs at most, and b is not the oldest of one
    logs.stored("b", 0, 0)
    assert logs.bytes == 1


async def test_follow_shows_live_lines_then_the_rest_from_the_stored_log_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    src = MemoryLogSource(runs=[RunRef(0, 0, False, None)])
    src.live.add(JOB, 0, 0, [_chunk("stdout", 0, b"one\ntw", ts=1)])
    agen = follow_logs(src, JOB, LogQuery(follow=True))
    first = await agen.__anext__()
    assert (first["stream"], first["data"], first["ts_ms"]) == ("stdout", "one", 1)
    src.live.add(JOB, 0, 0, [_chunk("stdout", 6, b"o\n", ts=2)])
    assert (await agen.__anext__())["data"] == "two"
    # The run ends; its stored log holds all of it, and one more unterminated line.
    src.blobs[D1] = _stored(("stdout", 1, b"one\ntwo\nthree"), ("stderr", 3, b"e1\n"))
    src.runs = [RunRef(0, 0, True, D1)]
    src.state = "failed"
    src.live.stored(JOB, 0, 0)
    rest = [r async for r in agen]
    assert _lines(rest) == [(0, "stdout", "three"), (0, "stderr", "e1")]
    assert rest[-1] == {"end": True, "state": "failed", "incomplete": []}


async def test_a_hole_in_the_live_output_is_filled_from_the_stored_log_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    src = MemoryLogSource(runs=[RunRef(0, 0, False, None)])
    src.live.add(JOB, 0, 0, [_chunk("stdout", 0, b"a\n"), _chunk("stdout", 10, b"zzz\n")])
    agen = follow_logs(src, JOB, LogQuery(follow=True))
    assert (await agen.__anext__())["data"] == "a"
    src.blobs[D1] = _stored(
        ("stdout", 1, b"a\n"), ("stdout", 2, b"b\nc\nd\ne\n"), ("stdout", 3, b"zzz\n")
    )
    src.runs, src.state = [RunRef(0, 0, True, D1)], "succeeded"
    src.live.get(JOB).wake()  # type: ignore[union-attr]
    rest = [r async for r in agen]
    assert [r["data"] for r in rest[:-1]] == ["b", "c", "d", "e", "zzz"]


async def test_a_stored_log_that_never_comes_is_waited_for_then_reported(
    autojump_clock: trio.abc.Clock,
) -> None:
    src = MemoryLogSource(state="failed", runs=[RunRef(0, 0, True, D1)])
    src.live.add(JOB, 0, 0, [_chunk("stdout", 0, b"x\npart")])
    t0 = trio.current_time()
    records = await _read(src, fetch_wait_s=10.0)
    assert trio.current_time() - t0 >= 10.0  # it waited for the stored log
    assert _lines(records) == [(0, "stdout", "x"), (0, "stdout", "part")]
    assert records[-1] == {"end": True, "state": "failed", "incomplete": [0]}


async def test_a_stored_log_arriving_while_waited_for_is_shown_whole(
    autojump_clock: trio.abc.Clock,
) -> None:
    src = MemoryLogSource(state="failed", runs=[RunRef(0, 0, True, D1)])
    src.live.add(JOB, 0, 0, [_chunk("stdout", 0, b"x\n")])

    async def arrive() -> None:
        await trio.sleep(2.0)
        src.blobs[D1] = _stored(("stdout", 1, b"x\ny\n"))
        src.live.stored(JOB, 0, 0)

    async with trio.open_nursery() as n:
        n.start_soon(arrive)
        records = await _read(src, fetch_wait_s=10.0)
    assert _lines(records) == [(0, "stdout", "x"), (0, "stdout", "y")]
    assert records[-1]["incomplete"] == []


async def test_replica_tail_and_since_select_lines_merged_by_time() -> None:
    src = MemoryLogSource(state="succeeded", runs=[RunRef(0, 0, True, D1), RunRef(0, 1, True, D2)])
    src.blobs[D1] = _stored(("stdout", 10, b"r0 a\n"), ("stderr", 30, b"r0 b\n"))
    src.blobs[D2] = _stored(("stdout", 20, b"r1 a\n"), ("stdout", 40, b"r1 b\n"))
    everything = await _read(src)
    assert [r["data"] for r in everything[:-1]] == ["r0 a", "r1 a", "r0 b", "r1 b"]
    assert [r["data"] for r in (await _read(src, replica=1))[:-1]] == ["r1 a", "r1 b"]
    assert [r["data"] for r in (await _read(src, tail=2))[:-1]] == ["r0 b", "r1 b"]
    assert (await _read(src, tail=0))[:-1] == []
    assert [r["data"] for r in (await _read(src, since_ms=25))[:-1]] == ["r0 b", "r1 b"]
