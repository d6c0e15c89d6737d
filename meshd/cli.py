"""The ``meshd`` program: create a node, run its daemon, run the demo.

Rules:
- Exit codes: 0 success, 2 usage or configuration error (argparse's own
  code, reused for a bad data dir or config), 1 the daemon failed at
  runtime, 130 interrupted. A user's mistake never prints a traceback.
- The daemon (``meshd.runtime.daemon``) and the demo (``meshd.demo``) are
  imported only when their command runs, so ``init`` and ``--version`` stay
  fast and work even where the runtime's heavy dependencies are missing.
- Command-line flags override ``config.toml`` for this run only; the file is
  never rewritten by ``start``.

Theory of operation: ``start`` loads the data dir (:func:`meshd.config.load_node`),
applies the flags (:func:`meshd.config.apply_overrides`), checks the
``[params]`` overrides against ``CoreParams`` so a typo stops the start with
the key's name, makes sure ``api.token`` exists, sets up logging, and calls
``meshd.runtime.daemon.run(config, identity, data_dir, overrides)`` where
``config`` already includes the overrides and ``overrides`` names what the
command line changed (for the daemon's start-up log line).
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from meshd import __version__
from meshd.config import (
    ConfigError,
    DataDir,
    NodeConfig,
    apply_overrides,
    default_data_dir,
    ensure_api_token,
    init_node,
    load_node,
)

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"meshd: error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshd", description="meshd: a node of the peer-to-peer compute mesh."
    )
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="node data directory (default: $MESH_DATA_DIR or ~/.meshd)",
    )

    p = sub.add_parser("init", parents=[data_dir], help="create a node: key, config, API token")
    p.add_argument(
        "--listen", action="append", metavar="MULTIADDR", help="libp2p listen address (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing key (a NEW identity)")

    p = sub.add_parser("start", parents=[data_dir], help="run the daemon in the foreground")
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="override config `listen` (repeatable)",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="override config `bootstrap` (repeatable)",
    )
    p.add_argument(
        "--executor", choices=("auto", "docker", "process"), help="override config `executor`"
    )
    p.add_argument("--log-format", choices=("human", "json"), help="override config `log_format`")
    p.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="override config `log_level`",
    )
    p.add_argument("--api-port", type=int, metavar="PORT", help="override config `api_port`")
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="override config `metrics_listen`: also serve GET /metrics there, without the token",
    )

    p = sub.add_parser("stop", parents=[data_dir], help="stop the daemon running on this data dir")
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for it to exit (default 30)",
    )

    p = sub.add_parser(
        "demo", help="run the local demo (several nodes on this machine)", add_help=False
    )
    p.add_argument(
        "args", nargs=argparse.REMAINDER, help="arguments for the demo (see `meshd demo --help`)"
    )
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or default_data_dir()
    config = init_node(data_dir, listen=args.listen, force=args.force)
    _, identity = load_node(data_dir)
    print(f"peer id:  {identity.peer_id}")
    print(f"data dir: {Path(data_dir).absolute()}")
    print(f"listen:   {', '.join(config.listen)}")
    print(f"next:     meshd start --data-dir {data_dir}")
    return EXIT_OK


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "listen": tuple(args.listen) if args.listen else None,
        "bootstrap": tuple(args.bootstrap) if args.bootstrap else None,
        "executor": args.executor,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "api_port": args.api_port,
        "metrics_listen": args.metrics_listen,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def _check_params(config: NodeConfig, data_dir: Path) -> None:
    try:
        from meshd.core.params import CoreParams
    except ImportError:  # the core is not there: the daemon will say so
        return
    try:
        CoreParams().with_overrides(dict(config.params))
    except ValueError as exc:
        raise ConfigError(f"{data_dir / 'config.toml'}: [params]: {exc}") from None


def _check_executor(config: NodeConfig, data_dir: Path) -> None:
    """The unsandboxed executor asked for (flag or file) but not allowed: a
    configuration error before anything starts (a flag alone never enables it)."""
    if config.executor == "process" and not config.allow_process_executor:
        raise ConfigError(
            f"{data_dir / 'config.toml'}: executor `process` runs jobs UNSANDBOXED and needs "
            "`allow_process_executor = true` in that file (a flag alone does not enable it)"
        )


def cmd_start(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or default_data_dir()
    config, identity = load_node(data_dir)
    overrides = _overrides(args)
    config = apply_overrides(config, overrides)
    _check_params(config, Path(data_dir))
    _check_executor(config, Path(data_dir))
    ensure_api_token(data_dir)
    from meshd.logsetup import setup_logging

    setup_logging(config.log_format, config.log_level)
    try:
        from meshd.runtime.daemon import run
    except ImportError as exc:
        return _fail(
            f"the daemon runtime cannot be loaded ({exc}); is meshd fully installed?", EXIT_RUNTIME
        )
    from meshd.core.logrecord import LogLockedError
    from meshd.net.errors import ListenError

    start_failures = (LogLockedError, ListenError)  # one line each, exit 1
    try:
        result = run(config, identity, Path(data_dir), overrides)
        if inspect.iscoroutine(result):  # an async run(): drive it with trio
            import trio

            coro = result

            async def _main() -> Any:
                return await coro

            result = trio.run(_main)
    except start_failures as exc:
        return _fail(f"{exc}", EXIT_RUNTIME)
    except BaseExceptionGroup as group:  # raised inside the daemon's task group
        failed, rest = group.split(start_failures)
        if failed is None or rest is not None:
            raise
        return _fail(str(_first_leaf(failed)), EXIT_RUNTIME)
    return result if isinstance(result, int) else EXIT_OK


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the daemon running on a data dir (SIGTERM to the pid in ``daemon.pid``)."""
    data_dir = Path(args.data_dir or default_data_dir())
    pid_file = DataDir(data_dir).pid
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        return _fail(f"no daemon is running for {data_dir} (no {pid_file.name})", EXIT_RUNTIME)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot read {pid_file}: {exc}", EXIT_RUNTIME)
    if not _is_meshd(pid):
        pid_file.unlink(missing_ok=True)
        return _fail(
            f"no daemon is running for {data_dir} ({pid_file.name} named pid {pid}, "
            "which is not a meshd process; removed it)",
            EXIT_RUNTIME,
        )
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"meshd: stopped the daemon for {data_dir} (pid {pid})")
            return EXIT_OK
        time.sleep(0.1)
    return _fail(
        f"the daemon (pid {pid}) did not stop within {args.timeout:g} s; "
        f"`kill -KILL {pid}` ends it at once (its log stays consistent)",
        EXIT_RUNTIME,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _is_meshd(pid: int) -> bool:
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file
    return b"meshd" in cmdline


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from meshd import demo
    except ImportError as exc:
        return _fail(f"the demo cannot be loaded ({exc})", EXIT_RUNTIME)
    result = demo.main(list(args.args))
    return result if isinstance(result, int) else EXIT_OK


COMMANDS = {"init": cmd_init, "start": cmd_start, "stop": cmd_stop, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``meshd``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo parses its own flags (REMAINDER would reject a leading --x)
        from meshd import demo

        try:
            return demo.main(argv[1:])
        except KeyboardInterrupt:
            print("meshd: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("meshd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
