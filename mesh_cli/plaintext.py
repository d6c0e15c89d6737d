"""Plain-text drawing for ``mesh``'s quick views (``mesh status``): lines,
a key/value grid and a ruled table in the look of the rich views
(``mesh_cli/render.py``), with ANSI styles on a terminal.

Importing and setting up rich costs ``mesh status`` more than its request
to the daemon (``tests/bench/bench_cli.py``), so the view that scripts and
prompts call most draws with this module, which needs only ``os`` and ``sys``.

Rules:
- Colour only on a terminal, and not when ``NO_COLOR`` is set (to anything)
  or ``TERM`` is ``dumb``; in a pipe or a file, plain text.
- Width: a terminal's (``COLUMNS`` when set), else :data:`PIPE_WIDTH`, so
  long ids are not cut. A grid's values fold at the width, at a space where
  they can, inside a word longer than a line; a table is never folded.
- Text prints as given: nothing in it is read as markup (a ``[`` in a
  peer's reason prints as is).
- Box-drawing characters only where the stream's encoding has them, else
  ASCII.
"""

from __future__ import annotations

import os
import sys
from typing import IO

PIPE_WIDTH = 200
"""Width when output is not a terminal (as the rich views use)."""
DEFAULT_TERMINAL_WIDTH = 80
"""A terminal's width when it cannot be asked."""
MIN_VALUE_WIDTH = 20
"""Narrowest a grid's value column gets, however narrow the terminal."""
GRID_GAP = 2
"""Spaces between a grid's key and its value."""

Span = tuple[str, str]
"""Text and its style: space-separated names from :data:`STYLES` ("" for none)."""
Text = str | list[Span]
"""What a view prints: a string (in one style), or spans of their own styles."""

STYLES = {
    "bold": "1",
    "dim": "2",
    "italic": "3",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}
"""Style names and their ANSI SGR codes."""

_HEAVY = ("┃", "│", "━", "╇")
_ASCII = ("|", "|", "-", "+")


class TextOut:
    """Where a plain view prints: ``stream`` (stdout by default) with the
    colour, width and box characters it suits (see the module header)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        terminal = _isatty(self.stream)
        self.colour = terminal and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self.width = _terminal_width(self.stream) if terminal else PIPE_WIDTH
        encoding = getattr(self.stream, "encoding", None) or "ascii"
        try:
            "".join(_HEAVY).encode(encoding)
            self.box = _HEAVY
        except (UnicodeEncodeError, LookupError):
            self.box = _ASCII

    def styled(self, text: str, style: str) -> str:
        """``text`` wrapped in the ANSI codes of ``style`` (as is without colour)."""
        if not self.colour or not style or not text:
            return text
        codes = ";".join(STYLES[name] for name in style.split())
        return f"\x1b[{codes}m{text}\x1b[0m"

    def print(self, text: Text = "", style: str = "") -> None:
        """One line (or several, for newlines in ``text``), not folded."""
        self.stream.write("".join(self.styled(t, s) for t, s in _spans(text, style)) + "\n")

    def grid(self, rows: list[tuple[str, Text]]) -> None:
        """Keys in bold, each value beside its key, folded to the width."""
        if not rows:
            return
        key_width = max(len(key) for key, _ in rows)
        value_width = max(self.width - key_width - GRID_GAP, MIN_VALUE_WIDTH)
        for key, value in rows:
            spans = _spans(value, "")
            plain = "".join(t for t, _ in spans)
            for i, (start, end) in enumerate(fold(plain, value_width)):
                head = self.styled(key, "bold") + " " * (key_width - len(key)) if i == 0 else ""
                pad = " " * (key_width + GRID_GAP) if i else " " * GRID_GAP
                line = self._slice(spans, start, end)
                self.stream.write((head + pad + line).rstrip(" ") + "\n")

    def table(self, title: str, columns: list[tuple[str, str]], rows: list[list[str]]) -> None:
        """``title`` (italic), then a header (bold) ruled off from the rows;
        ``columns`` are (name, "left" | "right"), one cell per column a row."""
        widths = [
            max([len(name)] + [len(r[i]) for r in rows]) for i, (name, _) in enumerate(columns)
        ]
        head_bar, bar, rule, cross = self.box

        def cells(values: list[str], style: str) -> list[str]:
            out = []
            for value, width, (_, justify) in zip(values, widths, columns, strict=True):
                text = value.rjust(width) if justify == "right" else value.ljust(width)
                out.append(f" {self.styled(text, style)} ")
            return out

        self.print(title, "italic")
        self.stream.write(head_bar.join(cells([n for n, _ in columns], "bold")).rstrip(" ") + "\n")
        self.stream.write(cross.join(rule * (w + 2) for w in widths) + "\n")
        for row in rows:
            self.stream.write(bar.join(cells(row, "")).rstrip(" ") + "\n")

    def _slice(self, spans: list[Span], start: int, end: int) -> str:
        """The styled text of characters ``start:end`` of the spans' text."""
        out = []
        at = 0
        for text, style in spans:
            lo, hi = max(start, at), min(end, at + len(text))
            if lo < hi:
                out.append(self.styled(text[lo - at : hi - at], style))
            at += len(text)
        return "".join(out)


def fold(text: str, width: int) -> list[tuple[int, int]]:
    """Where ``text`` breaks into lines of at most ``width`` characters, as
    (start, end) offsets: at its newlines, then at the last space that fits
    (the space dropped), else inside a word longer than a line."""
    out: list[tuple[int, int]] = []
    start = 0
    for line in text.split("\n"):
        end = start + len(line)
        while end - start > width:
            cut = text.rfind(" ", start, start + width + 1)
            if cut > start:
                out.append((start, cut))
                start = cut + 1
            else:
                out.append((start, start + width))
                start += width
        out.append((start, end))
        start = end + 1
    return out


def _spans(text: Text, style: str) -> list[Span]:
    return [(text, style)] if isinstance(text, str) else text


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_width(stream: IO[str]) -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        asked = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        asked = 0
    return asked if asked > 0 else DEFAULT_TERMINAL_WIDTH  # a new pty may say 0
