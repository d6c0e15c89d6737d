"""Human-readable views of the control API's JSON, drawn with rich.

Rules:
- Pure presentation: each function takes the decoded JSON of one route and a
  console, and prints. No API calls, no exits.
- Tolerant: a field the daemon leaves out prints as "-", never a traceback
  (``--json`` is the exact, machine-readable form).
- On a terminal, colour; in a pipe or file, plain text at a fixed width
  (:data:`~mesh_cli.plaintext.PIPE_WIDTH`, rich's default of 80 would fold
  ids) so long peer ids are not cut.
- `mesh status` is drawn without rich, for a quick start
  (``mesh_cli/statusview.py``); values are formatted in ``mesh_cli/fmt.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mesh_cli.fmt import dash, fmt_duration, fmt_num, fmt_ts, membership_line, short_id
from mesh_cli.plaintext import PIPE_WIDTH

BODY_PREVIEW_CHARS = 70
MAX_DECLINE_PEERS_SHOWN = 3

STATE_STYLE = {
    "queued": "yellow",
    "offered": "cyan",
    "awarded": "cyan",
    "running": "blue",
    "verifying": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def make_console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else PIPE_WIDTH
    # emoji=False: no ":name:" codes in what we draw (and their table stays unloaded)
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False, emoji=False)


def state_text(state: Any) -> Text:
    return Text(dash(state), style=STATE_STYLE.get(str(state), ""))


def finality_text(job: dict[str, Any]) -> str:
    """ "provisional until T" while a job's result is within its hold, "final"
    once it is, "" before the job has a result (specs/CREDITS.md §4.2)."""
    final = job.get("final")
    if final is False:
        return f"provisional until {fmt_ts(job.get('provisional_until_ms'))}"
    return "final" if final is True else ""


def retracted_text(verification: dict[str, Any]) -> str:
    """What an audit overturned: a provisional result replaced in its hold, or a final one."""
    digest = verification["retracted"]
    if verification.get("retracted_final") is False:
        return f"replaced during its hold, never final (RETRACTED by an audit): {digest}"
    return f"RETRACTED by an audit: {digest}"


def _kv_grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    return grid


# ------------------------------------------------------------------- peers


def render_peers(data: dict[str, Any], console: Console) -> None:
    peers = data.get("peers") or []
    membership = data.get("membership")
    if membership:
        console.print(f"mesh: {membership_line(membership)}")
    if not peers:
        console.print("no peers known yet (check `bootstrap` in config.toml, or wait for mDNS)")
        return
    table = Table(show_edge=False)
    for col, just in (
        ("peer", "left"),
        ("role", "left"),
        ("sandbox", "left"),
        ("tier", "left"),
        ("GFLOPS", "right"),
        ("cores", "right"),
        ("RAM GB", "right"),
        ("GPUs", "left"),
        ("price", "right"),
        ("run/queue", "right"),
        ("warm", "left"),
        ("rep", "right"),
        ("reached", "left"),
        ("seen", "right"),
        ("version", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for p in peers:
        gpus = ", ".join(
            f"{dash(g.get('model'))} {fmt_num(g.get('memory_mb'))}MB" for g in p.get("gpus") or []
        )
        table.add_row(
            dash(p.get("peer_id")),
            dash(p.get("role")),
            dash(p.get("sandbox")),
            dash(p.get("tier")),
            fmt_num(p.get("score_gflops"), 1),
            dash(p.get("cores")),
            fmt_num(p.get("ram_gb"), 1),
            gpus or "-",
            fmt_num(p.get("price")),
            f"{dash(p.get('running'))}/{dash(p.get('queued'))}",
            "yes" if p.get("warm") else "no",
            fmt_num(p.get("reputation"), 2),
            dash(p.get("reached")),
            f"{fmt_duration(p.get('last_seen_s'))} ago",
            dash(p.get("version")),
        )
    console.print(table)
    console.print(f"{len(peers)} peer(s)")


# --------------------------------------------------------------------- log


def _preview(body: Any) -> str:
    text = json.dumps(body, separators=(",", ":"), default=str)
    return text if len(text) <= BODY_PREVIEW_CHARS else text[: BODY_PREVIEW_CHARS - 1] + "…"


def render_log(data: dict[str, Any], console: Console) -> None:
    records = data.get("records") or []
    table = Table(show_edge=False)
    table.add_column("seq", justify="right")
    table.add_column("time (UTC)")
    table.add_column("kind")
    table.add_column("body")
    table.add_column("hash")
    for r in records:
        table.add_row(
            dash(r.get("seq")),
            fmt_ts(r.get("ts_ms")),
            dash(r.get("kind")),
            _preview(r.get("body")),
            str(r.get("hash") or "-")[:12],
        )
    console.print(table)
    console.print(f"{len(records)} record(s) shown; head seq {dash(data.get('head_seq'))}")


# -------------------------------------------------------------------- jobs


def render_jobs(data: dict[str, Any], console: Console) -> None:
    jobs = data.get("jobs") or []
    if not jobs:
        console.print("no jobs yet (submit one with `mesh submit`)")
        return
    table = Table(show_edge=False)
    for col in ("job", "state", "image", "command", "worker", "submitted", "cost", "reason"):
        table.add_column(col, justify="right" if col == "cost" else "left")
    for j in jobs:
        command = j.get("command")
        cmd = " ".join(command) if isinstance(command, list) else dash(command)
        state = state_text(j.get("state"))
        if j.get("final") is False:
            state.append(" (provisional)", style="yellow")
        table.add_row(
            dash(j.get("job_id")),
            state,
            dash(j.get("image")),
            cmd[:40],
            short_id(j.get("worker")),
            fmt_ts(j.get("submitted_at")),
            fmt_credits(j.get("cost")),
            dash(j.get("reason")),
        )
    console.print(table)


def _declines_table(declines: list[dict[str, Any]]) -> Table:
    """Declines grouped by reason: the answer to "why did nobody take my job?"."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for d in declines:
        by_reason[dash(d.get("reason"))].append(short_id(d.get("peer_id")))
    table = Table(title="Why nobody took it (declines)", title_justify="left", show_edge=False)
    table.add_column("reason")
    table.add_column("peers", justify="right")
    table.add_column("which")
    for reason, peers in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(peers[:MAX_DECLINE_PEERS_SHOWN])
        if len(peers) > MAX_DECLINE_PEERS_SHOWN:
            shown += f", … (+{len(peers) - MAX_DECLINE_PEERS_SHOWN})"
        table.add_row(reason, str(len(peers)), shown)
    return table


ESTIMATE_BASIS = {
    "estimated_flops": "its flops",
    "history": "earlier runs",
    "default": "the default",
}


def basis_text(basis: Any) -> str:
    """`` (from earlier runs)``: what an estimate rests on; "" when not said."""
    return f" (from {ESTIMATE_BASIS[basis]})" if basis in ESTIMATE_BASIS else ""


def cost_text(cost: dict[str, Any]) -> str:
    """``estimate E (from B), charged A of budget M credits``: the charge is
    what the ledger holds (the job's receipts), the basis what the estimate
    rests on (the job's flops, earlier runs of its image, or the default)."""
    est = f"estimate {fmt_credits(cost.get('estimate'))}{basis_text(cost.get('basis'))}"
    charged = f"charged {fmt_credits(cost.get('actual'))}"
    if cost.get("budget") is not None:
        charged += f" of budget {fmt_credits(cost.get('budget'))}"
    return f"{est}, {charged} credits"


def fmt_credits(value: Any) -> str:
    """Credits to four significant digits (a job may cost 0.0003 credits)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return dash(value)
    return f"{value:.4g}"


def _job_summary(job: dict[str, Any]) -> Table:
    spec = job.get("spec") or {}
    grid = _kv_grid()
    grid.add_row("job", dash(job.get("job_id")))
    grid.add_row("state", state_text(job.get("state")))
    if finality_text(job):
        grid.add_row(
            "result is",
            finality_text(job) + (" (an audit may still replace it)" if not job["final"] else ""),
        )
    command = spec.get("command")
    grid.add_row("image", dash(spec.get("image")))
    grid.add_row("command", " ".join(command) if isinstance(command, list) else dash(command))
    grid.add_row("cost", cost_text(job.get("cost") or {}))
    awards = job.get("awards") or []
    if awards:
        grid.add_row(
            "awarded to",
            "\n".join(f"{dash(a.get('peer_id'))} ({dash(a.get('role'))})" for a in awards),
        )
    result = job.get("result")
    if result:
        grid.add_row(
            "result",
            f"{dash(result.get('status'))}, exit code {dash(result.get('exit_code'))}, "
            f"{fmt_duration(result.get('duration_s'))}, output {dash(result.get('output_digest'))}",
        )
    verification = job.get("verification")
    if verification:
        text = (
            f"{dash(verification.get('replicas'))} replicas, "
            f"verdict {dash(verification.get('verdict'))}"
        )
        if verification.get("retracted"):  # an audit overturned the result accepted first
            text += f"; {retracted_text(verification)}"
        grid.add_row("verification", text)
    return grid


def render_job(job: dict[str, Any], console: Console) -> None:
    console.print(_job_summary(job))
    history = job.get("history") or []
    if history:
        table = Table(title="history", title_justify="left", show_edge=False)
        table.add_column("time (UTC)")
        table.add_column("state")
        table.add_column("detail")
        for h in history:
            table.add_row(fmt_ts(h.get("ts_ms")), state_text(h.get("state")), dash(h.get("detail")))
        console.print(table)
    bids = job.get("bids") or []
    if bids:
        table = Table(title=f"bids ({len(bids)})", title_justify="left", show_edge=False)
        for col in ("peer", "price", "est. finish", "score", "queue", "gpu"):
            table.add_column(col)
        for b in bids:
            table.add_row(
                short_id(b.get("peer_id")),
                fmt_num(b.get("price")),
                fmt_duration(b.get("est_finish_s")),
                fmt_num(b.get("score"), 1),
                dash(b.get("queue")),
                dash(b.get("gpu")),
            )
        console.print(table)
    declines = job.get("declines") or []
    if declines:
        console.print(_declines_table(declines))
    elif not bids and job.get("state") in ("queued", "offered"):
        console.print(
            Text(
                "No peer has answered the offer yet (no bids, no declines): "
                "check `mesh peers` for warm peers that fit.",
                style="yellow",
            )
        )


def wait_line(job: dict[str, Any]) -> str:
    """One line summarising a job's progress (for `submit --wait` in a pipe)."""
    awards = ", ".join(short_id(a.get("peer_id")) for a in job.get("awards") or [])
    verification = job.get("verification") or {}
    declines = job.get("declines") or []
    line = (
        f"{dash(job.get('state')):<10} bids={len(job.get('bids') or [])} "
        f"declines={len(declines)} awarded={awards or '-'} "
        f"verdict={dash(verification.get('verdict'))}"
    )
    if declines and not awards:
        line += f" (last decline: {dash(declines[-1].get('reason'))})"
    if finality_text(job):
        line += f" {finality_text(job)}"
    return line


def wait_panel(job: dict[str, Any]) -> Table:
    """The live view of `submit --wait` on a terminal."""
    grid = _kv_grid()
    grid.add_row("job", dash(job.get("job_id")))
    grid.add_row("state", state_text(job.get("state")))
    grid.add_row(
        "bids", f"{len(job.get('bids') or [])} bid(s), {len(job.get('declines') or [])} decline(s)"
    )
    awards = job.get("awards") or []
    grid.add_row(
        "awarded to",
        ", ".join(f"{short_id(a.get('peer_id'))} ({dash(a.get('role'))})" for a in awards) or "-",
    )
    declines = job.get("declines") or []
    if declines and not awards:
        grid.add_row(
            "last decline",
            f"{short_id(declines[-1].get('peer_id'))}: {dash(declines[-1].get('reason'))}",
        )
    history = job.get("history") or []
    if history:
        grid.add_row(
            "last", f"{fmt_ts(history[-1].get('ts_ms'))} {dash(history[-1].get('detail'))}"
        )
    verification = job.get("verification")
    if verification:
        grid.add_row(
            "verified",
            f"{dash(verification.get('verdict'))} ({dash(verification.get('replicas'))} replicas)",
        )
    if finality_text(job):
        grid.add_row("result is", finality_text(job))
    return grid


# ----------------------------------------------------------------- credits


def _bond(b: dict[str, Any]) -> str:
    """`` (H held)`` / `` (F forfeited)``: what the peer's bond keeps out of its
    balance (specs/CREDITS.md §7.7); "" when nothing."""
    return "".join(f" ({fmt_num(b.get(k))} {k})" for k in ("held", "forfeited") if b.get(k))


def render_credits(data: dict[str, Any], console: Console) -> None:
    allowance = data.get("free_allowance")
    if allowance is not None:
        console.print(
            f"this node {short_id(data.get('peer_id'))}; free allowance {fmt_num(allowance)} "
            f"credits: with no free slot it declines offers from origins below "
            f"−{fmt_num(allowance)}"
        )
    balances = data.get("balances") or []
    table = Table(title="balances", title_justify="left", show_edge=False)
    for col in ("peer", "balance", "earned", "spent", "top payers", "top payees"):
        table.add_column(
            col, justify="left" if col in ("peer", "top payers", "top payees") else "right"
        )
    for b in balances:
        table.add_row(
            dash(b.get("peer_id")) + _over_allowance(b, allowance),
            fmt_num(b.get("balance")),
            fmt_num(b.get("earned")) + _receipt_count(b.get("earned_receipts")) + _bond(b),
            fmt_num(b.get("spent")) + _receipt_count(b.get("spent_receipts")),
            _counterparties(b.get("top_payers")),
            _counterparties(b.get("top_payees")),
        )
    console.print(table)
    _render_receipts(data.get("receipts") or [], console)


def render_credits_peer(data: dict[str, Any], peer: str, console: Console) -> bool:
    """``mesh credits --peer P``: one peer's balance, every counterparty, its
    receipts. False if no balance matches ``peer`` (a peer id or its prefix)."""
    rows = [b for b in data.get("balances") or [] if str(b.get("peer_id", "")).startswith(peer)]
    if len(rows) != 1:
        return False
    b = rows[0]
    pid = b.get("peer_id")
    allowance = data.get("free_allowance")
    console.print(
        f"{pid}: balance {fmt_num(b.get('balance'))}{_over_allowance(b, allowance)} = "
        f"earned {fmt_num(b.get('earned'))}{_receipt_count(b.get('earned_receipts'))} − "
        + "".join(f"{k} {fmt_num(b.get(k))} − " for k in ("held", "forfeited") if b.get(k))
        + f"spent {fmt_num(b.get('spent'))}{_receipt_count(b.get('spent_receipts'))}"
        + ("" if allowance is None else f"; free allowance {fmt_num(allowance)}")
    )
    receipts = [r for r in data.get("receipts") or [] if pid in (r.get("worker"), r.get("origin"))]
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for r in receipts:
        side = "paid by" if r.get("worker") == pid else "paid to"
        other = r.get("origin") if side == "paid by" else r.get("worker")
        acc = sums[(side, str(other))]
        acc[0] += float(r.get("credits") or 0.0)
        acc[1] += 1
    table = Table(title="counterparties", title_justify="left", show_edge=False)
    for col in ("direction", "peer", "credits", "receipts"):
        table.add_column(col, justify="right" if col in ("credits", "receipts") else "left")
    for (side, other), (credits, n) in sorted(sums.items(), key=lambda kv: (kv[0][0], -kv[1][0])):
        table.add_row(side, other, fmt_num(credits), fmt_num(int(n)))
    console.print(table)
    _render_receipts(receipts, console)
    return True


def _render_receipts(receipts: list[dict[str, Any]], console: Console) -> None:
    table = Table(title=f"receipts ({len(receipts)})", title_justify="left", show_edge=False)
    for col in ("job", "worker", "origin", "credits", "time (UTC)", "seq"):
        table.add_column(col, justify="right" if col in ("credits", "seq") else "left")
    for r in receipts:
        table.add_row(
            dash(r.get("job_id")),
            short_id(r.get("worker")),
            short_id(r.get("origin")),
            fmt_num(r.get("credits")),
            fmt_ts(r.get("ts_ms")),
            dash(r.get("seq")),
        )
    console.print(table)


def _receipt_count(n: Any) -> str:
    return "" if not isinstance(n, int) else f" ({n} receipt{'' if n == 1 else 's'})"


def _over_allowance(b: dict[str, Any], allowance: Any) -> str:
    bal = b.get("balance")
    if isinstance(allowance, int | float) and isinstance(bal, int | float) and bal < -allowance:
        return " (over allowance)"
    return ""


def _counterparties(items: Any) -> str:
    if not items:
        return "-"
    return ", ".join(
        f"{short_id(c.get('peer_id'))} {fmt_num(c.get('credits'))} ({c.get('receipts')})"
        for c in items
    )
