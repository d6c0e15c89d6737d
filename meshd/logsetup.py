"""Logging for the daemon: readable on a terminal, JSON lines for machines.

Rules:
- One call, :func:`setup_logging`, at process start; it replaces the root
  logger's handlers, so calling it again is harmless.
- ``human``: a rich handler when the stream is a terminal, otherwise plain
  ``time level logger: message`` lines (no colour codes in files and pipes).
- ``json``: one JSON object per line with ``ts`` (ISO 8601, UTC), ``level``,
  ``logger``, ``msg``, every ``extra=`` field of the call, and ``exc`` when
  an exception is attached. Values JSON cannot hold are written with ``repr``.
- Third-party chatter is held at WARNING (:data:`QUIET_LOGGERS`) and the
  known floods from py-libp2p's gossip ("Rate limit exceeded", "GRAFT flood
  detected") are dropped outright; :data:`suppressed` counts what was dropped.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from collections import Counter
from typing import Any, Literal, TextIO

LogFormat = Literal["human", "json"]

QUIET_LOGGERS: tuple[str, ...] = (
    "libp2p",
    "multiaddr",
    "asyncio",
    "trio_websocket",
    "docker",
    "urllib3",
)
"""Loggers held at WARNING whatever the requested level."""
NOISE_PATTERNS: tuple[str, ...] = ("Rate limit exceeded", "GRAFT flood")
"""Substrings of third-party messages that are dropped (they repeat per message)."""

suppressed: Counter[str] = Counter()
"""How many records each noise pattern dropped (for status counters)."""

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class NoiseFilter(logging.Filter):
    """Drops third-party records whose message contains a :data:`NOISE_PATTERNS` entry."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("meshd"):
            return True
        msg = record.getMessage()
        for pattern in NOISE_PATTERNS:
            if pattern in msg:
                suppressed[pattern] += 1
                return False
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in obj:
                obj[key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=repr, ensure_ascii=False)


def _human_handler(stream: TextIO) -> logging.Handler:
    if stream.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        return RichHandler(console=Console(file=stream), rich_tracebacks=False, show_path=False)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    return handler


def setup_logging(
    fmt: LogFormat = "human", level: int | str = "INFO", *, stream: TextIO | None = None
) -> logging.Handler:
    """Configure the root logger; returns the handler it installed."""
    out = stream if stream is not None else sys.stderr
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler(out)
        handler.setFormatter(JsonFormatter())
    elif fmt == "human":
        handler = _human_handler(out)
    else:
        raise ValueError(f"log format must be 'human' or 'json', not {fmt!r}")
    handler.addFilter(NoiseFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet_level = max(logging.WARNING, root.level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet_level)
    logging.getLogger("libp2p").propagate = True  # libp2p turns it off at import
    return handler
