"""The data directory's layout, and the few reads a client needs.

Kept free of pydantic and of the node's identity code, so that ``mesh`` (which
only reads ``api.addr`` and ``api.token``) starts quickly; ``meshd.config``
re-exports everything here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

KEY_FILE = "node.key"
CONFIG_FILE = "config.toml"
TOKEN_FILE = "api.token"
API_ADDR_FILE = "api.addr"
PID_FILE = "daemon.pid"
LOG_DIR = "log"
BLOBS_DIR = "blobs"
WORK_DIR = "work"

DATA_DIR_ENV = "MESH_DATA_DIR"
TOKEN_HEX_LEN = 64


class ConfigError(Exception):
    """The data dir or its configuration is missing or wrong: the operator's to fix."""


class DataDir(NamedTuple):
    """Paths inside one data directory (see the module header).

    A ``NamedTuple`` rather than a dataclass: ``dataclasses`` pulls in
    ``inspect``, a few milliseconds of every ``mesh`` command's start."""

    root: Path

    @property
    def key(self) -> Path:
        return self.root / KEY_FILE

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def token(self) -> Path:
        return self.root / TOKEN_FILE

    @property
    def api_addr(self) -> Path:
        return self.root / API_ADDR_FILE

    @property
    def pid(self) -> Path:
        return self.root / PID_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_DIR

    @property
    def blobs(self) -> Path:
        return self.root / BLOBS_DIR

    @property
    def work(self) -> Path:
        return self.root / WORK_DIR


def default_data_dir() -> Path:
    """``$MESH_DATA_DIR`` if set, else ``~/.meshd``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".meshd"


def read_api_token(data_dir: str | os.PathLike[str]) -> str:
    """The API token of a data dir; ConfigError if it is missing or malformed."""
    path = DataDir(Path(data_dir)).token
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing; start the daemon once to create it") from None
    except (PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API token {path}: {exc}") from None
    if len(token) != TOKEN_HEX_LEN or not re.fullmatch(r"[0-9a-f]+", token):
        raise ConfigError(f"{path} is corrupt (expected {TOKEN_HEX_LEN} hex characters)")
    return token


def read_api_addr(data_dir: str | os.PathLike[str]) -> tuple[str, int] | None:
    """``(host, port)`` from ``api.addr``, or None if no daemon published one."""
    path = DataDir(Path(data_dir)).api_addr
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{path} is corrupt ({text[:60]!r}); restart the daemon")
    return host, int(port)
