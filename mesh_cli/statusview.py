"""``mesh status``: this node's status (``GET /v1/status``) as plain text.

Rules:
- Pure presentation, as ``mesh_cli/render.py``: takes the decoded JSON and
  a :class:`~mesh_cli.plaintext.TextOut`, prints; a field the daemon
  leaves out prints as "-".
- Drawn without rich (``mesh_cli/plaintext.py``): `mesh status` is the
  command scripts and prompts call most, and must start quickly (it loads
  no rich, pydantic, msgpack, cryptography, trio or libp2p;
  ``tests/test_cli.py``).
"""

from __future__ import annotations

from typing import Any

from mesh_cli.fmt import dash, fmt_bytes, fmt_duration, fmt_num, membership_line, short_id
from mesh_cli.plaintext import Span, Text, TextOut


def _executor_line(ex: dict[str, Any]) -> Text:
    name = dash(ex.get("name"))
    if ex.get("sandboxed"):
        return f"{name} (sandboxed)"
    if name == "none":  # a client: runs no jobs
        return f"none: {dash(ex.get('reason'))}"
    line: list[Span] = [(f"{name} ", ""), ("(NOT sandboxed)", "bold red")]
    if ex.get("reason"):
        line.append((f": {ex['reason']}", ""))
    return line


def _score_detail(score: dict[str, Any]) -> str:
    """How the CPU score was measured (runs, threads, spread), or why it was not."""
    method = str(score.get("cpu_method") or "")
    if method and not method.startswith("numpy"):
        return f" ({method})"
    if score.get("cpu_spread") is None:
        return ""
    timing = method.removeprefix("numpy").strip(", ")
    return (
        f" (median of {score.get('cpu_runs')} runs on {score.get('cpu_threads')} thread(s)"
        f"{', ' + timing if timing else ''}, spread {fmt_num(score.get('cpu_spread'), 2)})"
    )


def _hardware_line(hw: dict[str, Any]) -> str:
    parts = [
        f"{dash(hw.get('cores'))} cores",
        f"{fmt_num(hw.get('ram_gb'), 1)} GB RAM",
        f"{fmt_num(hw.get('disk_free_gb'), 1)} GB disk free",
    ]
    gpus = hw.get("gpus") or []
    if gpus:
        parts += [
            f"GPU {g.get('index', i)}: {dash(g.get('model'))} ({fmt_num(g.get('memory_mb'))} MB)"
            for i, g in enumerate(gpus)
        ]
    else:
        parts.append("no GPU")
    return ", ".join(parts)


def _disk_line(disk: dict[str, Any]) -> str:
    """Blob store use against its cap (job logs among the blobs), run dirs,
    the event log's size."""
    b = disk.get("blobs") or {}
    r = disk.get("run_dirs") or {}
    lg = disk.get("event_log") or {}
    line = (
        f"blobs {fmt_bytes(b.get('bytes'))} of {fmt_bytes(b.get('max_bytes'))} "
        f"({dash(b.get('files'))} files, {dash(b.get('log_blobs'))} job logs "
        f"{fmt_bytes(b.get('log_bytes'))}, {dash(b.get('collected_blobs'))} collected"
    )
    if b.get("refused_uploads"):
        line += f", {b['refused_uploads']} uploads refused: store full"
    line += (
        f"); run dirs {dash(r.get('count'))} ({dash(r.get('orphans_removed'))} orphans removed "
        f"at start); event log {fmt_bytes(lg.get('bytes'))}"
    )
    return line


def render_status(st: dict[str, Any], out: TextOut) -> None:
    rows: list[tuple[str, Text]] = [
        ("peer id", dash(st.get("peer_id"))),
        ("version", f"{dash(st.get('version'))}, up {fmt_duration(st.get('uptime_s'))}"),
        ("listen", "\n".join(st.get("listen_addrs") or []) or "-"),
    ]
    relays = ", ".join(r[:16] for r in st.get("relays") or [])
    rows.append(
        ("reachable", dash(st.get("reachability")) + (f" (relays: {relays})" if relays else ""))
    )
    if st.get("role"):
        rows.append(("role", dash(st.get("role"))))
    rows.append(("executor", _executor_line(st.get("executor") or {})))
    lost = st.get("tail_lost")
    if lost:
        text = (
            f"LOST ITS TAIL: ends at record seq {dash(lost.get('log_head_seq'))}, but peer "
            f"{short_id(lost.get('peer'))} holds a receipt signed here with seq "
            f"{dash(lost.get('seen_seq'))}; restore the data dir from a backup if you can"
        )
        rows.append(("event log", [(text, "bold red")]))
    if st.get("warm"):
        rows.append(("state", [("warm (ready to bid)", "green")]))
    else:
        rows.append(("state", [(f"cold: {dash(st.get('cold_reason'))}", "yellow")]))
    rows.append(("hardware", _hardware_line(st.get("hardware") or {})))
    score = st.get("score") or {}
    rows.append(
        (
            "score",
            f"cpu {fmt_num(score.get('cpu_gflops'), 1)} GFLOPS{_score_detail(score)}, "
            f"gpu {fmt_num(score.get('gpu_gflops'), 1)} GFLOPS, tier {dash(score.get('tier'))}",
        )
    )
    rows.append(("price", f"{fmt_num(st.get('price'))} credits per GFLOPS-hour"))
    load = st.get("load") or {}
    rows.append(
        (
            "load",
            f"{dash(load.get('running'))} running, {dash(load.get('queued'))} queued, "
            f"capacity {dash(load.get('capacity'))}",
        )
    )
    membership = st.get("membership")
    if membership:
        rows.append(("membership", membership_line(membership)))
    lg = st.get("log") or {}
    rows.append(
        (
            "event log",
            f"head seq {dash(lg.get('head_seq'))}, hash {str(lg.get('head_hash') or '-')[:16]}",
        )
    )
    disk = st.get("disk")
    if disk:
        rows.append(("disk", _disk_line(disk)))
    standing = st.get("standing") or {}
    rep = standing.get("reputation")
    rows.append(("reputation", "not yet rated by peers" if rep is None else fmt_num(rep, 3)))
    out.grid(rows)
    why = standing.get("why_not_picked") or []
    if why:
        out.print("Why this node may not be picked:", "bold yellow")
        for reason in why:
            out.print(f"  - {reason}")
    _render_backlog(st.get("backlog") or {}, out)
    counters = st.get("counters") or {}
    if counters:
        out.table(
            "counters",
            [("name", "left"), ("value", "right")],
            [[name, fmt_num(counters[name])] for name in sorted(counters)],
        )


def _render_backlog(b: dict[str, Any], out: TextOut) -> None:
    """Where work waits: inbox lanes, send queues, the origin's bounds."""
    if not b:
        return
    columns = [
        (col, "left" if col == "queue" else "right")
        for col in ("queue", "now", "bound", "peak", "wait p50/p99/max ms", "shed/refused/dropped")
    ]
    rows: list[list[str]] = []
    for lane, q in (b.get("inbox") or {}).items():
        rows.append(
            [
                f"inbox {lane}",
                fmt_num(q.get("queued")),
                fmt_num(q.get("bound")),
                fmt_num(q.get("high_water")),
                f"{q.get('wait_p50_ms', 0)}/{q.get('wait_p99_ms', 0)}/{q.get('wait_max_ms', 0)}",
                f"{q.get('shed', 0)}/{q.get('refused', 0)}/{q.get('dropped_oldest', 0)}",
            ]
        )
    sq = b.get("send_queues") or {}
    if sq:
        rows.append(
            [
                "send queues",
                fmt_num(sq.get("queued")),
                "",
                f"{fmt_num(sq.get('queued_max_peer'))} one peer",
                f"-/-/{sq.get('wait_max_ms', 0)}",
                f"{sq.get('expired', 0)} expired/{sq.get('refused_full', 0)}/{sq.get('dropped_full', 0)}",
            ]
        )
    o = b.get("origin") or {}
    if o:
        rows.append(
            [
                "offer rounds open",
                fmt_num(o.get("rounds_open")),
                fmt_num(o.get("rounds_bound")),
                f"{fmt_num(o.get('jobs_waiting_for_a_round'))} waiting",
                "",
                "",
            ]
        )
        rows.append(
            [
                "awards unacknowledged",
                fmt_num(o.get("awards_unacknowledged")),
                fmt_num(o.get("awards_bound")),
                "",
                "",
                "",
            ]
        )
    out.table("backlog", columns, rows)
    out.print(f"inbox congestion: {b.get('congestion_ms', 0)} ms")
