"""`mesh status`'s plain-text drawing (mesh_cli/plaintext.py, mesh_cli/statusview.py):
folding to the width, colour only on a terminal, no markup, ASCII boxes where
the stream cannot encode the heavy ones. A terminal is a real pty."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from mesh_cli.plaintext import PIPE_WIDTH, TextOut, fold
from mesh_cli.statusview import render_status

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def on_a_terminal(draw: object) -> str:
    """What ``draw(out)`` writes through a TextOut on a real pty."""
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8") as stream:
            draw(TextOut(stream))  # type: ignore[operator]
            stream.flush()
        # the slave is closed: read until the pty says so (EIO on Linux), as
        # one read may return only part of what was written
        chunks = []
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        os.close(master)


def test_fold_breaks_at_spaces_inside_long_words_and_at_newlines() -> None:
    text = "alpha beta gamma\n" + "x" * 25 + " delta"
    lines = [text[a:b] for a, b in fold(text, 10)]
    assert lines == ["alpha beta", "gamma", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx", "delta"]
    assert fold("", 10) == [(0, 0)]


def test_a_grid_folds_values_under_their_column_to_the_terminal_width(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("NO_COLOR", "1")
    value = (
        "blobs 1.5 MiB of 20.0 GiB (7 files, 3 job logs) and a-word-longer-than-thirty-chars-here"
    )
    text = on_a_terminal(lambda out: out.grid([("disk", value), ("peer id", "12D3")]))
    lines = text.splitlines()
    assert all(len(line) <= 40 for line in lines), lines
    assert lines[0].startswith("disk     blobs ") and lines[-1] == "peer id  12D3"
    assert all(line.startswith(" " * 9) and line[9] != " " for line in lines[1:-1])
    assert " ".join(x.strip() for x in lines[:-1])[9:].replace(" ", "") == value.replace(" ", "")


def test_colour_only_on_a_terminal_and_not_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)  # the pty's own width (0: unknown, so 80)
    monkeypatch.setenv("TERM", "xterm")
    st = {"executor": {"name": "process", "reason": "no Docker"}, "warm": True}
    coloured = on_a_terminal(lambda out: render_status(st, out))
    assert "\x1b[1;31m(NOT sandboxed)\x1b[0m" in coloured
    assert "\x1b[32mwarm (ready to bid)\x1b[0m" in coloured
    monkeypatch.setenv("NO_COLOR", "")
    assert "\x1b[" not in on_a_terminal(lambda out: render_status(st, out))
    monkeypatch.delenv("NO_COLOR")
    piped = io.StringIO()
    render_status(st, TextOut(piped))
    assert "\x1b[" not in piped.getvalue()
    assert piped.getvalue() == ANSI.sub("", coloured)  # the same text, less the colour


def test_text_is_printed_as_given_and_pipes_get_the_fixed_width() -> None:
    buf = io.StringIO()
    out = TextOut(buf)
    assert out.width == PIPE_WIDTH
    reason = "[bold]not markup[/bold] :smile:"
    render_status({"standing": {"why_not_picked": [reason]}, "peer_id": "p" * 150}, out)
    assert f"  - {reason}\n" in buf.getvalue()
    assert "\npeer id     " + "p" * 150 + "\n" in "\n" + buf.getvalue()  # not folded at 80


def test_tables_fall_back_to_ascii_where_the_encoding_lacks_box_drawing(tmp_path: Path) -> None:
    st = {"counters": {"bids_sent": 3, "offers_seen": 12}}
    with (tmp_path / "a.txt").open("w", encoding="ascii") as f:
        render_status(st, TextOut(f))
    with (tmp_path / "u.txt").open("w", encoding="utf-8") as f:
        render_status(st, TextOut(f))
    ascii_text = (tmp_path / "a.txt").read_text(encoding="ascii")
    assert " name        | value\n-------------+-------\n bids_sent   |     3\n" in ascii_text
    utf = (tmp_path / "u.txt").read_text(encoding="utf-8")
    assert " name        ┃ value\n━━━━━━━━━━━━━╇━━━━━━━\n bids_sent   │     3\n" in utf
