"""`meshd demo`: a local mesh of real daemons running a real job, end to end.

What it does, printing each step and the `mesh` command a user would type:

1. creates N node data dirs (``meshd init``) under a temporary directory;
2. starts N ``meshd start`` processes on 127.0.0.1 — the first alone, the
   others bootstrapped from it only (they find the rest by peer exchange);
3. waits until every node sees every other node's advert and shows the mesh;
4. submits a job from the *last* node (any peer can submit): it reads an
   input file and writes a result; the mesh places it by local bidding, runs
   it on another node (replicated and compared while workers are new), and
   the outputs come back to the submitter;
5. shows the job (who bid, who ran it, the verdict), the outputs, and checks
   every node's signed event log;
6. stops every daemon (SIGTERM) and removes the temp dir unless ``--keep``.

Executor: the Docker sandbox wherever it can be had. An engine that answers
(``DOCKER_HOST`` or the default socket) is used, with the demo image built
from a static busybox when missing. With none, as root, the demo starts a
private engine of its own under its dir, or a short temp dir where that path
is too long for its sockets (``tests/docker_env.sh``, as
``tests/run.sh`` does: it installs docker.io and busybox-static with apt when
missing) and stops it at the end. Only where neither works does it fall back
to the process executor (unsandboxed, fine for this local demo; its job then
asks for ``runtime: process``), saying why in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshd.config import update_config

DEMO_IMAGE = "meshd/busybox:1"
POEM = """Many small machines, no master among them,
each one bids for the work it can finish first;
the answer comes back twice, and the two agree.
"""


def _say(msg: str) -> None:
    print(f"\n\033[1m==> {msg}\033[0m", flush=True)


def _cmd(
    args: list[str], *, check: bool = True, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print("   $ " + " ".join(a if " " not in a else repr(a) for a in args), flush=True)
    cp = subprocess.run(args, text=True, capture_output=True)
    if not quiet and cp.stdout:
        print(cp.stdout.rstrip())
    if cp.returncode != 0 and check:
        print(cp.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"demo: command failed ({cp.returncode}): {' '.join(args)}")
    return cp


def _bin(name: str) -> str:
    """The installed entry point next to this interpreter, else `python -m`."""
    cand = Path(sys.executable).with_name(name)
    return str(cand) if cand.exists() else (shutil.which(name) or name)


DOCKER_ENV_SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "docker_env.sh"
MAX_ENGINE_DIR_CHARS = 48
"""Longest path of the private engine's dir: containerd's sockets live below it
and a unix socket path has at most 107 bytes; a longer ``--dir`` gets the
engine in a short temp dir instead."""
"""Starts and stops a private Docker engine (in a source checkout, as the
README's quick start has)."""
ENGINE_START_TIMEOUT_S = 600.0
"""Longest wait for the private engine's start (an apt install included)."""


def start_private_engine(engine_dir: Path) -> str | None:
    """Start a private Docker engine under ``engine_dir`` and point this process
    (and the daemons it starts) at it; None on success, else why not."""
    if os.geteuid() != 0:
        return "not root, so no private engine can be started"
    if not DOCKER_ENV_SCRIPT.exists():
        return f"{DOCKER_ENV_SCRIPT} is missing (not a source checkout)"
    _say(f"no Docker engine answers: starting a private one under {engine_dir}")
    env = {**os.environ, "MESHD_DOCKER_DIR": str(engine_dir)}
    try:
        cp = subprocess.run(
            ["bash", str(DOCKER_ENV_SCRIPT), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=ENGINE_START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"the private engine did not start within {ENGINE_START_TIMEOUT_S:.0f} s"
    export = cp.stdout.strip().rpartition("export DOCKER_HOST=")[2]
    if cp.returncode != 0 or not export:
        last = (cp.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"the private engine did not start: {last}"
    os.environ["DOCKER_HOST"] = export
    return None


def stop_private_engine(engine_dir: Path) -> None:
    """Stop the engine :func:`start_private_engine` started (and remove its files)."""
    env = {**os.environ, "MESHD_DOCKER_DIR": str(engine_dir)}
    subprocess.run(
        ["bash", str(DOCKER_ENV_SCRIPT), "stop"], env=env, capture_output=True, timeout=120
    )
    os.environ.pop("DOCKER_HOST", None)


def choose_executor(requested: str, engine_dir: Path | None = None) -> tuple[str, str]:
    """(executor kind, why) for the demo; with ``engine_dir``, a private
    engine may be started there when none answers (the caller stops it)."""
    if requested != "auto":
        return requested, f"--executor {requested} given"
    from meshd.exec.base import ExecParams
    from meshd.exec.factory import probe_docker

    why_not = probe_docker(ExecParams())
    if why_not is not None and engine_dir is not None:
        why_no_engine = start_private_engine(engine_dir)
        if why_no_engine is None:
            why_not = probe_docker(ExecParams())
        else:
            why_not = f"{why_not}; {why_no_engine}"
    if why_not is not None:
        return (
            "process",
            f"no Docker engine reachable ({why_not}); using the process executor (unsandboxed)",
        )
    try:
        import docker

        client = docker.from_env()
        client.images.get(DEMO_IMAGE)
        return (
            "docker",
            f"Docker engine reachable and image {DEMO_IMAGE} present: jobs run sandboxed",
        )
    except Exception:
        built = _build_busybox_image()
        if built is None:
            return "docker", f"Docker engine reachable; built {DEMO_IMAGE} from the static busybox"
        return (
            "process",
            f"Docker engine reachable but {DEMO_IMAGE} is missing and {built}; using the process executor",
        )


def _build_busybox_image() -> str | None:
    """Build the demo image with `docker import`; None on success, else why not."""
    busybox = shutil.which("busybox")
    if busybox is None:
        return "no static busybox to build it from (apt-get install busybox-static)"
    with tempfile.TemporaryDirectory() as root:
        bindir = Path(root, "bin")
        bindir.mkdir()
        shutil.copy2(busybox, bindir / "busybox")
        for applet in (
            "sh",
            "cat",
            "echo",
            "wc",
            "sha256sum",
            "sleep",
            "tr",
            "sort",
            "head",
            "ls",
            "true",
        ):
            os.symlink("busybox", bindir / applet)
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True)
        cp = subprocess.run(
            ["docker", "import", "-", DEMO_IMAGE], input=tar.stdout, capture_output=True
        )
        if cp.returncode != 0:
            return f"docker import failed: {cp.stderr.decode()[:200]}"
    return None


def _api_addr(data_dir: Path, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not (data_dir / "api.addr").exists():
        if time.monotonic() > end:
            raise SystemExit(
                f"demo: daemon in {data_dir} did not come up in {timeout_s:.0f}s "
                f"(see {data_dir / 'daemon.log'})"
            )
        time.sleep(0.1)


def _status(data_dir: Path) -> dict:
    cp = _cmd([_bin("mesh"), "--data-dir", str(data_dir), "status", "--json"], quiet=True)
    return json.loads(cp.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="meshd demo", description="Run a local mesh and a real job on it."
    )
    ap.add_argument("--nodes", type=int, default=3, help="daemons to start (default 3, at least 2)")
    ap.add_argument("--executor", choices=("auto", "docker", "process"), default="auto")
    ap.add_argument("--dir", type=Path, help="where the node data dirs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs afterwards")
    ap.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed for the whole job"
    )
    args = ap.parse_args(argv)
    if args.nodes < 2:
        ap.error("--nodes must be at least 2 (a job runs on a node other than its submitter)")

    base = args.dir or Path(tempfile.mkdtemp(prefix="meshd-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    engine_dir = base / "docker"
    if len(str(engine_dir)) > MAX_ENGINE_DIR_CHARS:  # its sockets would not fit a unix path
        engine_dir = Path(tempfile.mkdtemp(prefix="meshd-demo-engine-"))
    procs: list[subprocess.Popen[bytes]] = []
    dirs = [base / f"node{i}" for i in range(args.nodes)]
    try:
        kind, why = choose_executor(args.executor, engine_dir)
        _say(f"executor: {kind} — {why}")
        _say(f"creating {args.nodes} nodes under {base}")
        for d in dirs:
            _cmd(
                [
                    _bin("meshd"),
                    "init",
                    "--data-dir",
                    str(d),
                    "--listen",
                    "/ip4/127.0.0.1/tcp/0",
                    "--force",
                ]
            )
            update_config(d, {"allow_process_executor": True})
        _say("starting the daemons: node0 alone, the others bootstrapped from node0 only")
        bootstrap: list[str] = []
        for i, d in enumerate(dirs):
            cmd = [_bin("meshd"), "start", "--data-dir", str(d), "--executor", kind]
            for b in bootstrap:
                cmd += ["--bootstrap", b]
            print("   $ " + " ".join(cmd) + f"  > {d / 'daemon.log'} &")
            logf = open(d / "daemon.log", "wb")
            procs.append(subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT))
            _api_addr(d, 60)
            if i == 0:
                bootstrap = [_status(d)["listen_addrs"][0]]
        _say("waiting until every node sees every other node")
        end = time.monotonic() + 60
        while True:
            seen = [_status(d)["peers"] for d in dirs]
            if all(s >= args.nodes - 1 for s in seen):
                break
            if time.monotonic() > end:
                raise SystemExit(f"demo: the mesh did not form in 60s (peers seen: {seen})")
            time.sleep(0.5)
        _cmd([_bin("mesh"), "--data-dir", str(dirs[0]), "peers"])

        submitter = dirs[-1]
        poem = base / "poem.txt"
        poem.write_text(POEM)
        out = base / "result"
        _say(f"submitting a job from {submitter.name}: count the words of an input file")
        script = (
            'wc -w < "$MESH_INPUTS/poem.txt" | tr -d " " > "$MESH_OUTPUTS/words.txt"; '
            'sha256sum < "$MESH_INPUTS/poem.txt" > "$MESH_OUTPUTS/checksum.txt"; echo counted'
        )
        cp = _cmd(
            [
                _bin("mesh"),
                "--data-dir",
                str(submitter),
                "submit",
                "--image",
                DEMO_IMAGE,
                *(["--runtime", "process"] if kind == "process" else []),
                "--input",
                f"poem.txt={poem}",
                "--timeout",
                "60",
                "--wait",
                "-o",
                str(out),
                "--",
                "sh",
                "-c",
                script,
            ],
            check=False,
        )
        if cp.returncode != 0:
            print(cp.stderr, file=sys.stderr)
            raise SystemExit("demo: the job did not succeed")
        jobs = json.loads(
            _cmd([_bin("mesh"), "--data-dir", str(submitter), "jobs", "--json"], quiet=True).stdout
        )
        job_id = jobs["jobs"][0]["job_id"]
        _say("the job, as its submitter recorded it")
        _cmd([_bin("mesh"), "--data-dir", str(submitter), "job", job_id])
        _say("its outputs")
        words = (out / "words.txt").read_text().strip()
        print(f"   words.txt    : {words}")
        print(f"   checksum.txt : {(out / 'checksum.txt').read_text().strip()}")
        expected = str(len(POEM.split()))
        if words != expected:
            raise SystemExit(f"demo: wrong result {words!r}, expected {expected}")
        _say("every node's signed, hash-chained event log verifies")
        for d in dirs:
            _cmd([_bin("mesh"), "--data-dir", str(d), "log", "verify"])
        _say(f"done: the job ran on another node and its result ({words} words) is correct")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if engine_dir.exists():  # a private engine was started (or tried)
            _say("stopping the private Docker engine")
            stop_private_engine(engine_dir)
        if not args.keep and args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
        elif args.keep:
            print(f"\n(data dirs kept in {base})")


if __name__ == "__main__":
    sys.exit(main())
