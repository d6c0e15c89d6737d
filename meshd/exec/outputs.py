"""Output-dir and log bounds shared by every executor.

Rules:
- ``measure_dir`` is bounded: it stops counting at ``max_entries`` entries and
  reports that as over the cap, so a job cannot make the check itself slow by
  creating millions of files. Symlinks are counted, never followed.
- ``discard_outputs`` empties the output dir (keeps the dir itself): outputs
  of a job that broke a bound are never handed on.
- ``LogSink`` forwards at most ``cap`` bytes of stdout and stderr together to
  the caller (each chunk labelled with its stream), then one marker line on
  stderr, and keeps the last ``tail_bytes`` it saw for ``ExecResult.log_tail``.
  The callback's exceptions are the caller's bug and are not swallowed.

Theory of operation: executors check the output dir every
``ExecParams.output_poll_interval_s`` while the job runs (cheap for the small
trees jobs normally write) and once more after it exits; the final check is
the authoritative one. Between polls a job can overshoot by at most its write
rate times the poll interval; the Docker sandbox's memory limit does not bound
this (the dir is a bind mount), so the interval is kept short.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .base import LogCallback, LogStream


@dataclass(frozen=True)
class DirUsage:
    bytes: int
    entries: int
    truncated: bool  # stopped counting at max_entries


def measure_dir(path: Path, *, max_entries: int) -> DirUsage:
    """Total apparent size (st_size) of regular files under ``path``; bounded walk."""
    total = 0
    entries = 0
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for entry in it:
                entries += 1
                if entries > max_entries:
                    return DirUsage(total, entries, True)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        # Sparse files: count the larger of apparent and allocated size.
                        total += max(st.st_size, st.st_blocks * 512)
                except FileNotFoundError:
                    continue
    return DirUsage(total, entries, False)


def over_cap(usage: DirUsage, *, max_bytes: int) -> str | None:
    """Human reason if ``usage`` breaks the cap, else None."""
    if usage.truncated:
        return f"output dir has more than {usage.entries - 1} entries"
    if usage.bytes > max_bytes:
        return f"outputs are {usage.bytes} bytes, cap is {max_bytes}"
    return None


def discard_outputs(path: Path) -> None:
    """Remove everything inside ``path`` (not ``path`` itself)."""
    try:
        it = os.scandir(path)
    except FileNotFoundError:
        return
    with it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass


class LogSink:
    """Caps what reaches ``on_log`` and remembers the tail."""

    def __init__(self, on_log: LogCallback | None, *, cap: int, tail_bytes: int) -> None:
        self._on_log = on_log
        self._cap = cap
        self._tail_bytes = tail_bytes
        self._tail = bytearray()
        self.forwarded = 0
        self.seen = 0
        self.truncated = False

    @property
    def full(self) -> bool:
        return self.truncated

    def feed(self, stream: LogStream, chunk: bytes) -> None:
        if not chunk:
            return
        self.seen += len(chunk)
        self._remember(chunk)
        if self.truncated:
            return
        room = self._cap - self.forwarded
        part = chunk[:room]
        if part and self._on_log is not None:
            self._on_log(stream, part)
        self.forwarded += len(part)
        if len(chunk) > room:
            self.truncated = True
            if self._on_log is not None:
                self._on_log("stderr", self.marker())

    def marker(self) -> bytes:
        return f"\n[meshd: log truncated after {self._cap} bytes]\n".encode()

    def replace_tail(self, data: bytes) -> None:
        """Use ``data`` (e.g. the engine's stored last lines) as the tail."""
        self._tail = bytearray(data[-self._tail_bytes :] if self._tail_bytes else b"")

    def tail(self) -> bytes:
        return bytes(self._tail)

    def _remember(self, chunk: bytes) -> None:
        if self._tail_bytes == 0:
            return
        self._tail += chunk[-self._tail_bytes :]
        excess = len(self._tail) - self._tail_bytes
        if excess > 0:
            del self._tail[:excess]
