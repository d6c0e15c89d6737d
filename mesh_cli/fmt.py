"""Formatting of single values for ``mesh``'s human output, with no
drawing library: shared by the rich views (``mesh_cli/render.py``) and the
plain-text ones (``mesh_cli/statusview.py``).

Rules:
- Tolerant: a value the daemon leaves out (or sends in a shape not
  expected) prints as "-", never a traceback.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

SHORT_ID_CHARS = 14


def dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def short_id(peer_id: Any) -> str:
    text = dash(peer_id)
    if len(text) <= SHORT_ID_CHARS + 2:
        return text
    return f"{text[:8]}…{text[-5:]}"


def fmt_ts(ts_ms: Any) -> str:
    if not isinstance(ts_ms, int | float):
        return "-"
    when = _dt.datetime.fromtimestamp(ts_ms / 1000, _dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_num(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return dash(value)
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def membership_line(m: dict[str, Any]) -> str:
    """The mesh's estimated size, this node's advert shard and its heartbeat
    (specs/PROTOCOL.md §5.2): which peers ``mesh peers`` can show."""
    shards = m.get("shards") or 1
    if shards > 1:
        hears = fmt_num(-(-(m.get("est_nodes") or 0) // shards))
        where = f"advert shard {dash(m.get('shard'))} of {shards} (hears about {hears} nodes)"
    else:
        where = "one advert shard (hears every node)"
    if m.get("shards_from"):
        where += f", changing from {m.get('shards_from')} shards"
    return (
        f"about {fmt_num(m.get('est_nodes'))} nodes, {where}, "
        f"heartbeat every {fmt_duration((m.get('advert_interval_ms') or 0) / 1000)}"
    )
