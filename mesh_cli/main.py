"""The ``mesh`` program: a command-line client of the local meshd daemon.

Rules:
- It talks only to the local daemon's control API (``meshd.api.client``),
  found through the data dir (``--data-dir``, else ``$MESH_DATA_DIR``, else
  ``~/.meshd``). The one exception is ``mesh log verify`` with no daemon
  running: it opens the event log on disk and verifies it here.
- Exit codes: 0 success; 1 the daemon answered with an error, or a job
  failed; 2 usage error (argparse's code; also a bad descriptor file);
  3 no daemon reachable; 130 interrupted. User errors print one line
  (``mesh: error: …``), never a traceback.
- Every read command takes ``--json`` and then prints the daemon's JSON
  unchanged (NDJSON for ``logs``), for scripts. Human output uses rich
  (``mesh status``'s does not: ``mesh_cli/statusview.py``, for a quick
  start); in a pipe it is plain text.
- ``--data-dir`` and ``--json`` may come before or after the subcommand.

Theory of operation: :func:`build_parser` declares the commands; each
``cmd_*`` function takes the parsed arguments and an :class:`ApiClient`
and returns an exit code; :func:`main` maps the client's exceptions to exit
codes. Job submission, waiting and output unpacking live in
``mesh_cli/jobs.py``; drawing lives in ``mesh_cli/render.py`` (rich) and
``mesh_cli/statusview.py`` (plain text, ``mesh_cli/plaintext.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from meshd import __version__

if TYPE_CHECKING:
    from meshd.api.client import ApiClient

# The client, the renderer and pydantic load only when a command runs
# (``mesh --version`` and ``mesh --help`` stay as quick as Python itself).

EXIT_OK = 0
EXIT_API = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
LOG_PAGE_RECORDS = 500
"""Records fetched per request by `mesh log verify` through the API."""
DEFAULT_LOG_SHOW = 50
SPEC_SUFFIXES = (".json", ".yaml", ".yml")
WAIT_POLL_S = 0.5
"""How often `mesh wait` asks the daemon."""


def _out(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _err(message: str) -> None:
    print(f"mesh: {message}", file=sys.stderr)


def _show(
    args: argparse.Namespace, data: Any, pick: Callable[[ModuleType], Callable[[Any, Any], None]]
) -> None:
    """Print the daemon's JSON unchanged (``--json``), else draw it with the
    renderer ``pick`` chooses from :mod:`mesh_cli.render` (rich loads only then)."""
    if args.json:
        _out(data)
        return
    from mesh_cli import render

    pick(render)(data, render.make_console())


# ---------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.status()
    if args.json:
        _out(data)
        return EXIT_OK
    from mesh_cli.plaintext import TextOut  # not rich: see mesh_cli/statusview.py
    from mesh_cli.statusview import render_status

    render_status(data, TextOut())
    return EXIT_OK


def cmd_peers(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.peers()
    _show(args, data, lambda render: render.render_peers)
    return EXIT_OK


def cmd_log_show(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.log(args.start or 1, args.limit)
    head = data.get("head_seq")
    if args.start is None and isinstance(head, int) and head > args.limit:
        data = client.log(head - args.limit + 1, args.limit)  # default: the newest records
    _show(args, data, lambda render: render.render_log)
    return EXIT_OK


def _api_raw_records(client: ApiClient, head_seq: int) -> Iterator[bytes]:
    from base64 import b64decode

    start = 1
    while start <= head_seq:
        page = client.log(start, LOG_PAGE_RECORDS).get("records") or []
        if not page:
            return
        for record in page:
            yield b64decode(record["raw"], validate=True)
        start = int(page[-1]["seq"]) + 1


def _report(report: Any, source: str, as_json: bool) -> int:
    head = report.head
    if as_json:
        _out(
            {
                "ok": report.ok,
                "count": report.count,
                "first_bad_seq": report.first_bad_seq,
                "reason": report.reason,
                "head_seq": head[0] if head else None,
                "head_hash": head[1].hex() if head else None,
                "source": source,
            }
        )
    elif report.ok:
        print(
            f"event log OK ({source}): {report.count} records verified, "
            f"head seq {head[0]} hash {head[1].hex()[:16]}"
        )
    else:
        print(
            f"event log INVALID ({source}): {report.count} records verified, "
            f"first bad seq {report.first_bad_seq}: {report.reason}"
        )
    return EXIT_OK if report.ok else EXIT_API


def _verify_on_disk(data_dir: Path) -> Any:
    from mesh_cli.errors import JobError

    """Open the log on disk and verify it; None if a daemon holds it (use the API)."""
    from meshd.config import DataDir, load_node
    from meshd.core.logrecord import LogCorruptError, LogLockedError, VerifyReport

    try:
        from meshd.store.eventlog import EventLog
    except ImportError:  # no LevelDB binding here: only the daemon can read the log
        return None

    log_dir = DataDir(data_dir).log
    if not (log_dir / "CURRENT").exists():
        raise JobError(f"no event log in {log_dir} (the daemon creates it when it first starts)")
    _, identity = load_node(data_dir)
    try:
        log = EventLog.open(log_dir, identity)
    except LogLockedError:
        return None
    except LogCorruptError as exc:
        return VerifyReport(False, max(exc.seq - 1, 0), exc.seq, exc.reason)
    with log:
        return log.verify_all()


def cmd_log_verify(args: argparse.Namespace, client_factory: Callable[[], ApiClient]) -> int:
    from mesh_cli.errors import JobError
    from meshd.core.identity import public_key_from_peer_id
    from meshd.core.logrecord import VerifyReport, verify_records

    report = _verify_on_disk(args.data_dir)
    if report is not None:
        return _report(report, f"on disk, {args.data_dir}", args.json)
    print(
        f"a daemon is running on {args.data_dir} (its event log is locked); verifying through its API",
        file=sys.stderr,
    )
    client = client_factory()
    status = client.status()
    key = public_key_from_peer_id(str(status.get("peer_id")))
    if key is None:
        raise JobError(
            f"the daemon reports a peer id with no Ed25519 key: {status.get('peer_id')!r}"
        )
    head_seq = int((status.get("log") or {}).get("head_seq") or 0)
    report = verify_records(_api_raw_records(client, head_seq), key)
    served = report.head[0] if report.head else 0
    if report.ok and served < head_seq:
        report = VerifyReport(
            False,
            report.count,
            served + 1,
            f"the daemon served records only up to seq {served}, but reports head seq {head_seq}",
            report.head,
        )
    return _report(report, f"via the API, up to seq {head_seq}", args.json)


def cmd_submit(args: argparse.Namespace, client: ApiClient) -> int:
    from mesh_cli import render
    from mesh_cli.jobs import (
        fetch_result,
        load_spec_file,
        spec_from_args,
        upload_inputs,
        wait_for_job,
    )

    base = None
    if args.command and args.command[0].endswith(SPEC_SUFFIXES) and not args.image:
        base = load_spec_file(Path(args.command[0]))
        args.command = args.command[1:]
    spec = spec_from_args(args, base)
    spec = upload_inputs(client, spec, lambda m: print(m, file=sys.stderr))
    answer = client.submit(spec, wait=False, queue=args.queue, queue_timeout_s=args.queue_timeout)
    job_id = str(answer.get("job_id"))
    if not args.wait:
        if args.json:
            _out(answer)
        else:
            est = answer.get("estimate") or {}
            print(job_id)
            print(
                f"submitted: estimate {render.fmt_num(est.get('credits'))} credits, "
                f"{render.fmt_duration(est.get('seconds'))}{render.basis_text(est.get('basis'))}; "
                f"see `mesh job {job_id}`",
                file=sys.stderr,
            )
        return EXIT_OK
    if not args.json:
        print(job_id, flush=True)  # stdout carries only the id; progress goes to stderr
    console = render.make_console(stderr=True)
    console.print(f"submitted {job_id}")
    job = wait_for_job(client, job_id, console)
    if job.get("state") == "succeeded":
        dest = args.out if args.out is not None else Path(job_id)
        count = fetch_result(client, job_id, dest)
        final = render.finality_text(job)
        console.print(
            f"succeeded{f' ({final})' if final else ''}: {count} output file(s) in {dest}"
        )
    else:
        render.render_job(job, console)
    if args.json:
        _out(job)
    return EXIT_OK if job.get("state") == "succeeded" else EXIT_API


def cmd_jobs(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.jobs()
    data["jobs"] = filter_jobs(data.get("jobs") or [], args.state, args.label, args.limit)
    _show(args, data, lambda render: render.render_jobs)
    return EXIT_OK


def filter_jobs(
    jobs: list[dict[str, Any]],
    states: list[str] | None,
    labels: list[str] | None,
    limit: int | None,
) -> list[dict[str, Any]]:
    """``mesh jobs --state/--label/--limit``: the newest matching jobs first."""
    from mesh_cli.jobs import parse_pairs

    want = parse_pairs(labels, "--label")
    out = [
        j
        for j in jobs
        if (not states or j.get("state") in states)
        and all((j.get("labels") or {}).get(k) == v for k, v in want.items())
    ]
    return out if limit is None else out[:limit]


def resolve_job_id(client: ApiClient, given: str) -> str:
    """A job id from an unambiguous prefix of one (``mesh job 3fa``); an exact
    id, or a prefix of none, is passed on as given (the daemon answers for it)."""
    from mesh_cli.errors import UsageError

    ids = [str(j.get("job_id")) for j in client.jobs().get("jobs") or []]
    if given in ids:
        return given
    matches = [i for i in ids if i.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5]) + (" …" if len(matches) > 5 else "")
        raise UsageError(f"job id prefix {given!r} is ambiguous: {shown}")
    return given


def cmd_wait(args: argparse.Namespace, client: ApiClient) -> int:
    """Wait until a job ends (or ``--timeout`` passes): 0 succeeded, 1 otherwise."""
    from mesh_cli.render import TERMINAL_STATES, finality_text

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        job = client.job(args.job_id)
        state = job.get("state")
        if state in TERMINAL_STATES:
            break
        if deadline is not None and time.monotonic() >= deadline:
            _err(f"job {args.job_id} is still {state} after {args.timeout:g} s")
            return EXIT_API
        time.sleep(WAIT_POLL_S)
    if args.json:
        _out(job)
    else:
        final = finality_text(job)
        print(f"{args.job_id}: {state}" + (f" ({final})" if final else ""))
    return EXIT_OK if state == "succeeded" else EXIT_API


def cmd_version(args: argparse.Namespace, client_factory: Callable[[], ApiClient]) -> int:
    """The client's version and, when one answers, the daemon's."""
    from meshd.api.client import DaemonUnreachable

    try:
        daemon: str | None = str(client_factory().status().get("version"))
    except DaemonUnreachable:
        daemon = None
    if args.json:
        _out({"client": __version__, "daemon": daemon})
    else:
        print(f"mesh {__version__}")
        print(f"meshd {daemon}" if daemon else "meshd: no daemon running")
    return EXIT_OK


def dashboard_url(client: ApiClient) -> str:
    """The dashboard's login URL: the token rides in the fragment, which a
    browser never sends to the server (the page moves it to sessionStorage)."""
    import urllib.parse

    host = f"[{client.host}]" if ":" in client.host else client.host
    return f"http://{host}:{client.port}/dashboard/#token={urllib.parse.quote(client.token)}"


def cmd_dashboard(args: argparse.Namespace, client: ApiClient) -> int:
    """Print (and with ``--open`` open) the live dashboard's login URL, once
    the daemon answers with this token."""
    client.status()  # no daemon: exit 3; a refused token: exit 1
    url = dashboard_url(client)
    if args.json:
        _out({"url": url})
    else:
        print(url)
        _err("this URL holds the node's API token: keep it to yourself")
    if args.open:
        import webbrowser

        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if not opened:
            _err("no browser could be started here; open the URL above in one")
    return EXIT_OK


def cmd_job(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.job(args.job_id)
    _show(args, data, lambda render: render.render_job)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, client: ApiClient) -> int:
    label = False
    if not args.json and args.replica is None:
        job = client.job(args.job_id)
        label = (
            len(job.get("awards") or []) > 1 or ((job.get("spec") or {}).get("replicas") or 1) > 1
        )
    lines = client.logs(
        args.job_id,
        follow=args.follow,
        replica=args.replica,
        tail=args.tail,
        since_ms=args.since,
    )
    for line in lines:
        if args.json:
            print(json.dumps(line, ensure_ascii=False), flush=True)
        elif line.get("end"):
            for r in line.get("incomplete") or []:
                print(
                    f"mesh: the stored log of replica {r} did not arrive; "
                    "its lines above are the live output and may be incomplete",
                    file=sys.stderr,
                )
            if args.follow:
                print(f"mesh: job {args.job_id} ended: {line.get('state')}", file=sys.stderr)
        else:
            print_log_line(line, label=label, timestamps=args.timestamps)
    return EXIT_OK


def print_log_line(line: dict[str, Any], *, label: bool, timestamps: bool) -> None:
    """One output line: stdout's to stdout, stderr's to stderr, with the
    replica (``label``) and the time it was read (``timestamps``) in front."""
    prefix = ""
    if timestamps:
        ts = int(line.get("ts_ms") or 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000))
        prefix += f"{stamp}.{ts % 1000:03d}Z "
    if label:
        prefix += f"[r{line.get('replica')}] "
    out = sys.stderr if line.get("stream") == "stderr" else sys.stdout
    out.write(f"{prefix}{line.get('data', '')}\n")
    out.flush()


def parse_since(text: str) -> int:
    """``--since``: a duration back from now (``90s``, ``10m``, ``2h``, ``1d``;
    bare seconds) or an ISO 8601 time (UTC when it names no zone); wall ms."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    t = text.strip()
    try:
        if t and t[-1] in units:
            return int((time.time() - float(t[:-1]) * units[t[-1]]) * 1000)
        return int((time.time() - float(t)) * 1000)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (90s, 10m, 2h, 1d) nor an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def cmd_result(args: argparse.Namespace, client: ApiClient) -> int:
    from mesh_cli.jobs import fetch_result
    from mesh_cli.manifests import VerifyError, manifest_path_for, save_manifest, verify_outputs
    from meshd.api.client import ApiHttpError

    dest = args.out if args.out is not None else Path(args.job_id)
    count = fetch_result(client, args.job_id, dest, tar_path=args.tar)
    print(
        f"saved the output tar to {args.tar}" if args.tar else f"{count} output file(s) in {dest}"
    )
    target = args.tar or dest
    try:
        doc = client.result_manifest(args.job_id)
    except ApiHttpError as exc:
        _err(f"warning: no signed manifest: {exc.message}")
        return EXIT_OK
    if manifest_path_for(target).exists():
        _err(f"warning: not saving the manifest: {manifest_path_for(target)} already exists")
        return EXIT_OK
    where = save_manifest(doc, target)
    try:
        checked, n = verify_outputs(target, where)
    except VerifyError as exc:
        _err(f"error: the outputs do not match their signed manifest: {exc}")
        return EXIT_API
    print(f"verified {n} file(s) against {where} ({_signers(checked)})")
    return EXIT_OK


def _signers(checked: Any) -> str:
    verdict = checked.verdict.get("verdict")
    return (
        f"worker {checked.worker[-12:]}, countersigned by origin {checked.origin[-12:]}: {verdict}"
    )


def cmd_result_verify(args: argparse.Namespace) -> int:
    """``mesh result --verify PATH``: offline, no daemon asked."""
    from mesh_cli.manifests import VerifyError, verify_outputs

    try:
        checked, n = verify_outputs(args.verify, args.manifest)
    except VerifyError as exc:
        _err(f"error: {exc}")
        return EXIT_API
    print(f"ok: {n} file(s) of job {checked.job_id} match the manifest ({_signers(checked)})")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.cancel(args.job_id)
    _out(data) if args.json else print(f"{data.get('job_id')}: {data.get('state')}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, client: ApiClient) -> int:
    data = client.retry(args.job_id)
    _out(data) if args.json else print(f"{data.get('job_id')}: {data.get('state')}")
    return EXIT_OK


RECEIPT_COLUMNS = ("job_id", "worker", "origin", "credits", "ts_ms", "time_utc", "seq")


def cmd_credits(args: argparse.Namespace, client: ApiClient) -> int:
    from mesh_cli import render

    data = client.credits()
    if args.credits_command != "export" and args.peer:
        if not args.json:
            if render.render_credits_peer(data, args.peer, render.make_console()):
                return EXIT_OK
        else:
            rows = [
                b for b in data.get("balances") or [] if str(b.get("peer_id")).startswith(args.peer)
            ]
            if len(rows) == 1:
                pid = rows[0]["peer_id"]
                receipts = data.get("receipts") or []
                _out(
                    {
                        "balance": rows[0],
                        "receipts": [r for r in receipts if pid in (r["worker"], r["origin"])],
                        "free_allowance": data.get("free_allowance"),
                    }
                )
                return EXIT_OK
        _err(f"no single peer in this node's ledger matches {args.peer!r}")
        return EXIT_USAGE
    if args.credits_command != "export":
        _out(data) if args.json else render.render_credits(data, render.make_console())
        return EXIT_OK
    rows = [
        {**{c: r.get(c) for c in RECEIPT_COLUMNS}, "time_utc": render.fmt_ts(r.get("ts_ms"))}
        for r in data.get("receipts") or []
    ]
    if args.output_file is None:
        _write_csv(sys.stdout, rows)
    else:
        with args.output_file.open("w", newline="", encoding="utf-8") as f:
            _write_csv(f, rows)
        print(f"{len(rows)} receipt(s) written to {args.output_file}", file=sys.stderr)
    return EXIT_OK


def _write_csv(f: Any, rows: list[dict[str, Any]]) -> None:
    import csv

    writer = csv.DictWriter(f, fieldnames=RECEIPT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


# ------------------------------------------------------------------ parser


def _globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--data-dir and --json, accepted before and after the subcommand."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="node data directory (default: $MESH_DATA_DIR or ~/.meshd)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print the daemon's JSON instead of tables",
    )


def _add_submit(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "submit",
        parents=[common],
        help="submit a job",
        usage="mesh submit FILE.(json|yaml) [options]\n"
        "       mesh submit --image IMG [options] -- CMD [ARGS...]",
    )
    p.add_argument(
        "command", nargs="*", metavar="FILE | -- CMD ARGS", help="descriptor file, or the command"
    )
    p.add_argument("--image", help="container image (local to the workers)")
    p.add_argument(
        "--input",
        action="append",
        metavar="[NAME=]PATH|URI",
        help="local file/dir to upload, or a URI; appears under /mesh/inputs (repeatable)",
    )
    p.add_argument(
        "--output",
        action="append",
        metavar="PATH",
        help="path under /mesh/outputs to collect (repeatable)",
    )
    p.add_argument("--cpus", type=float)
    p.add_argument("--memory", type=int, metavar="MB")
    p.add_argument("--gpus", type=int)
    p.add_argument("--gpu-memory", type=int, metavar="MB", help="minimum memory of each GPU")
    p.add_argument("--network", action="store_true", help="the job needs network access")
    p.add_argument(
        "--runtime",
        choices=("docker", "process"),
        help="executor kind: docker (the default: the sandbox, in IMG) or process "
        "(unsandboxed, on the worker's host; only nodes that allow it take it)",
    )
    p.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit in seconds")
    p.add_argument("--max-budget", type=float, metavar="C", help="most credits to spend")
    p.add_argument(
        "--estimated-flops",
        type=float,
        metavar="F",
        help="floating-point operations the job needs (lets speed and price, "
        "not the timeout, decide the estimate and the ranking)",
    )
    p.add_argument("--speed", choices=("fast", "balanced", "cheap"))
    p.add_argument("--env", action="append", metavar="K=V")
    p.add_argument("--label", action="append", metavar="K=V")
    p.add_argument("--replicas", type=int, metavar="N", help="independent runs to compare")
    p.add_argument("--wait", action="store_true", help="follow the job live and fetch its outputs")
    p.add_argument(
        "--queue",
        action="store_true",
        help="accept the job even if no known peer can run it now (it waits for one)",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        metavar="S",
        help="fail the job if no worker took it within S seconds "
        "(default and cap: the node's max_queue_time_ms)",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        metavar="DIR",
        help="with --wait: where outputs go (default ./JOB_ID)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="Talk to the local meshd daemon.")
    parser.add_argument("--version", action="version", version=f"mesh {__version__}")
    _globals(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, top=False)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub.add_parser("status", parents=[common], help="this node: executor, hardware, load, standing")
    sub.add_parser("peers", parents=[common], help="peers seen on the mesh and what they offer")
    p = sub.add_parser("log", parents=[common], help="the node's signed event log")
    log_sub = p.add_subparsers(dest="log_command", required=True, metavar="show|verify")
    q = log_sub.add_parser("show", parents=[common], help="list records")
    q.add_argument(
        "--start", type=int, metavar="N", help="first seq (default: the newest LIMIT records)"
    )
    q.add_argument("--limit", type=int, default=DEFAULT_LOG_SHOW, metavar="N")
    log_sub.add_parser("verify", parents=[common], help="check hash links and every signature")
    _add_submit(sub, common)
    p = sub.add_parser("jobs", parents=[common], help="jobs submitted from this node")
    p.add_argument(
        "--state",
        action="append",
        choices=("queued", "offered", "awarded", "running", "verifying")
        + ("succeeded", "failed", "cancelled"),
        help="only jobs in this state (repeatable)",
    )
    p.add_argument("--label", action="append", metavar="K=V", help="only jobs with this label")
    p.add_argument("--limit", type=int, metavar="N", help="at most N jobs, newest first")
    p = sub.add_parser("wait", parents=[common], help="wait until a job ends")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 1)")
    sub.add_parser("version", parents=[common], help="the client's and the daemon's versions")
    p = sub.add_parser(
        "dashboard", parents=[common], help="the live web dashboard's login URL (holds the token)"
    )
    p.add_argument("--open", action="store_true", help="also open it in a web browser")
    for name, text in (
        ("job", "one job: history, bids, declines, result"),
        ("cancel", "cancel a job"),
        ("retry", "run a failed job again"),
    ):
        sub.add_parser(name, parents=[common], help=text).add_argument("job_id", metavar="JOB_ID")
    p = sub.add_parser("logs", parents=[common], help="a job's output lines")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--replica", type=int, metavar="N", help="only replica N's output")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines (then follow)")
    p.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="only lines from WHEN on: a duration back (90s, 10m, 2h, 1d) or an ISO time",
    )
    p.add_argument(
        "-t", "--timestamps", action="store_true", help="show when each line was printed (UTC)"
    )
    p = sub.add_parser(
        "result",
        parents=[common],
        help="download and unpack a job's outputs and their signed manifest, or check them",
    )
    p.add_argument("job_id", metavar="JOB_ID", nargs="?")
    p.add_argument(
        "--verify",
        type=Path,
        metavar="PATH",
        help="check downloaded outputs (a directory or a tar) against their manifest, offline",
    )
    p.add_argument(
        "--manifest", type=Path, metavar="FILE", help="the manifest to check against (--verify)"
    )
    p.add_argument(
        "-o", "--out", type=Path, metavar="DIR", help="directory to unpack into (default ./JOB_ID)"
    )
    p.add_argument(
        "--tar", type=Path, metavar="FILE", help="save the tar file instead of unpacking"
    )
    p = sub.add_parser("credits", parents=[common], help="balances and signed receipts")
    p.add_argument(
        "--peer",
        metavar="PEER",
        help="one peer's balance: every counterparty and the receipts behind it (id or prefix)",
    )
    credits_sub = p.add_subparsers(dest="credits_command", metavar="export")
    q = credits_sub.add_parser("export", parents=[common], help="receipts as CSV")
    q.add_argument("--csv", action="store_true", default=True, help="CSV format (the only one)")
    q.add_argument(
        "-o", "--output", dest="output_file", type=Path, metavar="FILE", help="default: stdout"
    )
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, ApiClient], int]] = {
    "status": cmd_status,
    "peers": cmd_peers,
    "submit": cmd_submit,
    "jobs": cmd_jobs,
    "job": cmd_job,
    "logs": cmd_logs,
    "result": cmd_result,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "credits": cmd_credits,
    "wait": cmd_wait,
    "dashboard": cmd_dashboard,
}
TAKES_JOB_ID = ("job", "cancel", "retry", "logs", "result", "wait")
"""Commands whose JOB_ID may be an unambiguous prefix."""


def _dispatch(args: argparse.Namespace) -> int:
    from meshd.api.client import ApiClient

    def client() -> ApiClient:
        return ApiClient.from_data_dir(args.data_dir)

    if args.cmd == "log":
        if args.log_command == "verify":
            return cmd_log_verify(args, client)
        return cmd_log_show(args, client())
    if args.cmd == "version":
        return cmd_version(args, client)
    if args.cmd == "result" and (args.verify is not None) == (args.job_id is not None):
        from mesh_cli.jobs import UsageError

        raise UsageError("give either JOB_ID (download) or --verify PATH (check offline)")
    if args.cmd == "result" and args.verify is not None:
        return cmd_result_verify(args)
    c = client()
    if args.cmd in TAKES_JOB_ID:
        args.job_id = resolve_job_id(c, args.job_id)
    return COMMANDS[args.cmd](args, c)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mesh``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from mesh_cli.errors import JobError, UsageError
    from meshd.api.client import ApiClientError, ApiHttpError, DaemonUnreachable
    from meshd.datadir import ConfigError, default_data_dir

    if args.data_dir is None:
        args.data_dir = default_data_dir()
    try:
        return _dispatch(args)
    except DaemonUnreachable as exc:
        _err(str(exc))
        return EXIT_UNREACHABLE
    except ApiHttpError as exc:
        _err(f"error: {exc.message}")
        for f in exc.fields:
            print(f"  {f.get('loc')}: {f.get('msg')}", file=sys.stderr)
        return EXIT_API
    except (ApiClientError, JobError) as exc:
        _err(f"error: {exc}")
        return EXIT_API
    except (UsageError, ConfigError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted (a submitted job keeps running; see `mesh jobs`)")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mesh jobs | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
