"""Real `meshd start` processes on loopback, for multi-process tests and benchmarks.

Each :class:`DaemonProcess` is one ``meshd start`` child with its own data dir,
talked to through the real control API (``meshd.api.client.ApiClient``) and
the real ``mesh`` CLI. ``kill()`` sends SIGKILL (no clean shutdown at all);
``stop()`` sends SIGTERM and waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from meshd.api.client import ApiClient, ApiClientError
from meshd.config import update_config

FAST_PARAMS = {
    "advert_interval_ms": 500,
    "advert_ttl_ms": 4000,
    "advert_rate_budget": 1000.0,
    "lease_ms": 4000,
    "heartbeat_interval_ms": 500,
    "result_resend_ms": 500,
    "reoffer_base_ms": 300,
    "reoffer_max_ms": 2000,
}
"""Protocol timings shortened for tests (same rules, smaller numbers)."""

T = TypeVar("T")


def _bin(name: str) -> list[str]:
    cand = Path(sys.executable).with_name(name)
    if cand.exists():
        return [str(cand)]
    module = {"meshd": "meshd.cli", "mesh": "mesh_cli.main"}[name]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


def mesh_cli(
    data_dir: Path, *args: str, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the real `mesh` CLI against a data dir."""
    return subprocess.run(
        [*_bin("mesh"), "--data-dir", str(data_dir), *args],
        text=True,
        capture_output=True,
        timeout=timeout_s,
    )


@dataclass
class DaemonProcess:
    data_dir: Path
    executor: str = "process"
    params: dict[str, Any] = field(default_factory=lambda: dict(FAST_PARAMS))
    proc: subprocess.Popen[bytes] | None = None
    bootstrap: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=lambda: {"allow_process_executor": True})
    """``config.toml`` keys written at init (beside ``mdns = false`` and ``params``),
    e.g. ``{"mdns": True}``."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment of the daemon beside ours (e.g. a ``DOCKER_HOST`` of its own)."""
    listen: str = "/ip4/127.0.0.1/tcp/0"

    def wrap(self, cmd: list[str]) -> list[str]:
        """The command line that runs ``cmd`` where this daemon lives (here: as is;
        :class:`meshd.testing.netns.NetnsDaemon` runs it in a namespace)."""
        return cmd

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` where this daemon's control API is reachable (here: at once)."""
        return fn()

    def mesh(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the real `mesh` CLI against this daemon."""
        return subprocess.run(
            self.wrap([*_bin("mesh"), "--data-dir", str(self.data_dir), *args]),
            text=True,
            capture_output=True,
            timeout=timeout_s,
        )

    def init(self) -> None:
        subprocess.run(
            [
                *_bin("meshd"),
                "init",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                self.listen,
            ],
            check=True,
            capture_output=True,
        )
        self.configure()

    def configure(self) -> None:
        """Write this daemon's ``config.toml`` keys (``params``, ``config``) into
        a data dir already made (by :meth:`init`, or by ``meshd.config.init_node``
        in-process, as a caller choosing identities does)."""
        update_config(
            self.data_dir,
            {
                "allow_process_executor": self.executor == "process",
                "mdns": False,
                "params": dict(self.params),
                **self.config,
            },
        )

    def start(self, timeout_s: float = 60.0) -> None:
        """Launch the daemon and wait until its control API answers."""
        self.launch()
        self.wait_for(lambda: self.status() is not None, timeout_s, "the daemon's API")

    def launch(self) -> None:
        """Start ``meshd start`` and return at once (see :meth:`start`, which waits)."""
        cmd = [
            *_bin("meshd"),
            "start",
            "--data-dir",
            str(self.data_dir),
            "--executor",
            self.executor,
            "--log-format",
            "json",
            "--log-level",
            os.environ.get("MESHD_TEST_LOG_LEVEL", "INFO"),
        ]
        for b in self.bootstrap:
            cmd += ["--bootstrap", b]
        (self.data_dir / "api.addr").unlink(missing_ok=True)
        log = open(self.data_dir / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            self.wrap(cmd), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )

    def client(self) -> ApiClient:
        return ApiClient.from_data_dir(self.data_dir)

    def status(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"daemon in {self.data_dir} exited with {self.proc.returncode}: "
                + (self.data_dir / "daemon.log").read_text()[-2000:]
            )
        try:
            return self.call(lambda: self.client().status())
        except (ApiClientError, OSError):
            return None

    @property
    def addr(self) -> str:
        st = self.status()
        assert st is not None
        return st["listen_addrs"][0]

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def wait_for(self, pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
        end = time.monotonic() + timeout_s
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() > end:
                raise TimeoutError(
                    f"timed out after {timeout_s}s waiting for {what} ({self.data_dir})"
                )
            time.sleep(0.1)


def start_mesh(root: Path, n: int, **kw: Any) -> list[DaemonProcess]:
    """n daemons: the first alone, the others bootstrapped from it; waits until all see all."""
    procs = [DaemonProcess(root / f"node{i}", **kw) for i in range(n)]
    try:
        for p in procs:
            p.init()
        procs[0].start()
        for p in procs[1:]:
            p.bootstrap = [procs[0].addr]
            p.start()
        wait_mesh(procs)
    except BaseException:
        stop_all(procs)
        raise
    return procs


def wait_mesh(procs: list[DaemonProcess], timeout_s: float = 60.0) -> None:
    want = len(procs) - 1

    def ready(p: DaemonProcess) -> bool:
        st = p.status() or {}
        return st.get("peers", 0) >= want and bool(st.get("warm"))

    procs[0].wait_for(
        lambda: all(ready(p) for p in procs),
        timeout_s,
        f"all {len(procs)} daemons to see each other",
    )


def stop_all(procs: list[DaemonProcess]) -> None:
    for p in procs:
        try:
            p.stop()
        except Exception:
            pass
