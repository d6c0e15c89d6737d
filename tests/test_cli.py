"""The `mesh` and `meshd` programs, run as real subprocesses.

The daemon side is a real ApiServer on loopback whose handlers return canned
but realistic JSON shaped like the daemon's (this tests the CLI; the server
and the client library have their own tests in test_api.py).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd import __version__
from meshd.api.server import (
    ApiError,
    ApiServer,
    Request,
    Response,
    bytes_response,
    json_response,
    ndjson_response,
)
from meshd.config import init_node, load_node, read_api_token, write_api_addr

REPO = Path(__file__).resolve().parents[1]
JOB = "job-00000001"
EVIL = "job-0000evil"
WORKER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
OTHER = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERSHIP = {
    "est_nodes": 9_800,
    "shards": 16,
    "shard": 5,
    "shards_from": 8,
    "advert_topics": ["/meshd/adverts/1/16/5", "/meshd/adverts/1/8/2"],
    "advert_interval_ms": 460_000,
}


def status_doc(peer_id: str) -> dict[str, Any]:
    return {
        "peer_id": peer_id,
        "version": "0.1.0",
        "uptime_s": 3725.0,
        "listen_addrs": [f"/ip4/127.0.0.1/tcp/7700/p2p/{peer_id}"],
        "executor": {"name": "process", "sandboxed": False, "reason": "no Docker engine reachable"},
        "warm": False,
        "cold_reason": "compute score not measured yet",
        "hardware": {
            "cores": 8,
            "ram_gb": 31.2,
            "disk_free_gb": 120.5,
            "gpus": [{"index": 0, "model": "NVIDIA RTX 3090", "memory_mb": 24576}],
        },
        "score": {
            "cpu_gflops": 52.1,
            "cpu_spread": 1.034,
            "cpu_runs": 9,
            "cpu_threads": 1,
            "cpu_method": "numpy, cpu time",
            "gpu_gflops": 35000.0,
            "tier": "consumer-gpu",
        },
        "price": 1.5,
        "load": {"running": 1, "queued": 0, "capacity": 4},
        "log": {"head_seq": 42, "head_hash": "ab" * 32},
        "counters": {"offers_seen": 12, "bids_sent": 3, "declines_sent": 9},
        "membership": MEMBERSHIP,
        "disk": {
            "blobs": {
                "bytes": 3 * 2**20 // 2,
                "files": 7,
                "max_bytes": 20 * 2**30,
                "collected_blobs": 5,
                "collected_bytes": 4096,
                "refused_uploads": 2,
                "gc_passes": 9,
                "log_blobs": 3,
                "log_bytes": 3 * 1024,
            },
            "run_dirs": {"count": 1, "orphans_removed": 3},
            "event_log": {"bytes": 2 * 2**20},
        },
        "standing": {
            "reputation": None,
            "why_not_picked": [
                "node is cold: compute score not measured yet",
                "price 1.5 is above the mesh median 0.8",
            ],
        },
    }


PEERS = {
    "membership": MEMBERSHIP,
    "peers": [
        {
            "peer_id": WORKER,
            "addrs": ["/ip4/10.0.0.2/tcp/7700"],
            "tier": "cpu",
            "score_gflops": 40.0,
            "cores": 4,
            "ram_gb": 15.5,
            "gpus": [],
            "price": 0.8,
            "running": 0,
            "queued": 0,
            "warm": True,
            "version": "0.1.0",
            "reputation": 0.9,
            "last_seen_s": 1.2,
            "expires_in_s": 8.8,
        }
    ],
}

CREDITS = {
    "balances": [
        {
            "peer_id": OTHER,
            "balance": -12.5,
            "earned": 0.0,
            "spent": 12.5,
            "earned_receipts": 0,
            "spent_receipts": 2,
            "top_payers": [],
            "top_payees": [{"peer_id": WORKER, "credits": 12.5, "receipts": 2}],
        },
        {
            "peer_id": WORKER,
            "balance": 10.0,
            "earned": 12.5,
            "spent": 0.0,
            "held": 2.5,
            "forfeited": 0.0,
            "earned_receipts": 2,
            "spent_receipts": 0,
            "top_payers": [{"peer_id": OTHER, "credits": 12.5, "receipts": 2}],
            "top_payees": [],
        },
    ],
    "receipts": [
        {
            "job_id": JOB,
            "worker": WORKER,
            "origin": OTHER,
            "credits": 10.0,
            "ts_ms": 1_700_000_000_000,
            "seq": 17,
        },
        {
            "job_id": "job-00000002",
            "worker": WORKER,
            "origin": OTHER,
            "credits": 2.5,
            "ts_ms": 1_700_000_001_000,
            "seq": 18,
        },
    ],
    "peer_id": WORKER,
    "free_allowance": 10.0,
}


class FakeDaemon:
    """Canned handlers with a little state: submitted specs, blobs, job progress."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.specs: list[dict[str, Any]] = []
        self.submits: list[dict[str, Any]] = []
        """Each submit's body beside its spec (queue, queue_timeout_s)."""
        self.blobs: dict[str, bytes] = {}
        self.polls = 0
        self.log_raw: list[bytes] = []
        self.log_queries: list[dict[str, str]] = []
        self.head_seq: int | None = None  # status' log head, if not len(log_raw)

    def job_doc(self, job_id: str, state: str) -> dict[str, Any]:
        done = state == "succeeded"
        return {
            "job_id": job_id,
            "state": state,
            "spec": self.specs[-1] if self.specs else {"image": "busybox", "command": ["true"]},
            "history": [
                {"ts_ms": 1_700_000_000_000, "state": "queued", "detail": "submitted"},
                {"ts_ms": 1_700_000_001_000, "state": state, "detail": f"now {state}"},
            ],
            "bids": [
                {
                    "peer_id": WORKER,
                    "price": 0.8,
                    "est_finish_s": 12.0,
                    "score": 40.0,
                    "queue": 0,
                    "gpu": None,
                }
            ]
            if state != "queued"
            else [],
            "declines": [
                {"peer_id": OTHER, "reason": "no GPU"},
                {"peer_id": "12D3KooWThird", "reason": "no GPU"},
                {"peer_id": "12D3KooWFourth", "reason": "image not present"},
            ],
            "awards": [{"peer_id": WORKER, "role": "primary"}]
            if state in ("running", "succeeded")
            else [],
            "result": {
                "exit_code": 0,
                "status": "ok",
                "output_digest": "sha256:" + "0" * 64,
                "duration_s": 3.2,
            }
            if done
            else None,
            "cost": {"estimate": 1.0, "actual": 0.9 if done else None},
            "verification": {"replicas": 1, "verdict": "unverified"} if done else None,
        }

    async def status(self, req: Request) -> Response:
        doc = status_doc(self.peer_id)
        if self.log_raw:
            doc["log"]["head_seq"] = self.head_seq or len(self.log_raw)
        return json_response(doc)

    async def peers(self, req: Request) -> Response:
        return json_response(PEERS)

    async def log(self, req: Request) -> Response:
        start, limit = req.query_int("start", 1, lo=1), req.query_int("limit", 100, lo=1, hi=1000)
        records = []
        for seq in range(start, min(start + limit, len(self.log_raw) + 1)):
            raw = self.log_raw[seq - 1]
            records.append(
                {
                    "seq": seq,
                    "ts_ms": 0,
                    "kind": "k",
                    "body": {},
                    "hash": hashlib.sha256(raw).hexdigest(),
                    "signature": "",
                    "raw": base64.b64encode(raw).decode(),
                }
            )
        return json_response({"records": records, "head_seq": len(self.log_raw)})

    async def blob(self, req: Request) -> Response:
        digest = "sha256:" + hashlib.sha256(req.body).hexdigest()
        self.blobs[digest] = req.body
        return json_response({"digest": digest, "size": len(req.body)})

    async def submit(self, req: Request) -> Response:
        spec = req.json()["spec"]
        try:
            from meshd.core.jobspec import JobSpecError, parse_job_spec
        except ImportError:
            pass
        else:
            try:
                parse_job_spec(spec)
            except JobSpecError as exc:
                raise ApiError(
                    400, "invalid_job", "invalid job descriptor", fields=exc.fields
                ) from None
        self.specs.append(spec)
        self.submits.append({k: v for k, v in req.json().items() if k != "spec"})
        return json_response({"job_id": JOB, "estimate": {"credits": 1.0, "seconds": 12.0}})

    async def jobs(self, req: Request) -> Response:
        return json_response(
            {
                "jobs": [
                    {
                        "job_id": JOB,
                        "state": "running",
                        "image": "busybox",
                        "command": ["sh", "-c", "echo hi"],
                        "worker": WORKER,
                        "submitted_at": 1_700_000_000_000,
                        "updated_at": 1_700_000_001_000,
                        "cost": None,
                        "reason": None,
                    }
                ]
            }
        )

    async def job(self, req: Request) -> Response:
        job_id = req.path_params["job_id"]
        if job_id not in (JOB, EVIL):
            raise ApiError(404, "unknown_job", f"no job {job_id!r} on this node")
        states = ("queued", "running", "succeeded")
        self.polls += 1
        return json_response(self.job_doc(job_id, states[min(self.polls - 1, 2)]))

    async def logs(self, req: Request) -> Response:
        self.log_queries.append(dict(req.query))
        want = req.query.get("replica")
        canned = [
            (1_700_000_000_001, 0, "stdout", "hello from the job"),
            (1_700_000_000_002, 0, "stderr", "a warning"),
            (1_700_000_000_003, 1, "stdout", "second run"),
        ]

        async def lines() -> Any:
            for ts, replica, stream, data in canned:
                if want is None or int(want) == replica:
                    yield {
                        "ts_ms": ts,
                        "attempt": 1,
                        "replica": replica,
                        "stream": stream,
                        "data": data,
                    }
            yield {"end": True, "state": "succeeded", "incomplete": [1] if want is None else []}

        return ndjson_response(lines())

    async def result(self, req: Request) -> Response:
        if req.path_params["job_id"] == EVIL:
            data = tar_bytes({"ok.txt": b"fine", "../escape.txt": b"gotcha"})
        else:
            data = tar_bytes({"result.txt": b"hi\n", "sub/more.txt": b"more"})
        return bytes_response(data, "application/x-tar")

    async def cancel(self, req: Request) -> Response:
        return json_response({"job_id": req.path_params["job_id"], "state": "cancelled"})

    async def credits(self, req: Request) -> Response:
        return json_response(CREDITS)

    def server(self, token: str) -> ApiServer:
        s = ApiServer(token)
        s.route("GET", "/v1/status", self.status)
        s.route("GET", "/v1/peers", self.peers)
        s.route("GET", "/v1/log", self.log)
        s.route("POST", "/v1/blobs", self.blob, max_body_bytes=s.params.max_upload_bytes)
        s.route("POST", "/v1/jobs", self.submit)
        s.route("GET", "/v1/jobs", self.jobs)
        s.route("GET", "/v1/jobs/{job_id}", self.job)
        s.route("GET", "/v1/jobs/{job_id}/logs", self.logs)
        s.route("GET", "/v1/jobs/{job_id}/result", self.result)
        s.route("POST", "/v1/jobs/{job_id}/cancel", self.cancel)
        s.route("GET", "/v1/credits", self.credits)
        return s


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "node"
    init_node(d, listen="/ip4/127.0.0.1/tcp/0")
    return d


@pytest.fixture
async def daemon(nursery: trio.Nursery, data_dir: Path) -> FakeDaemon:
    fake = FakeDaemon(load_node(data_dir)[1].peer_id)
    port = await nursery.start(fake.server(read_api_token(data_dir)).serve, "127.0.0.1", 0)
    write_api_addr(data_dir, "127.0.0.1", port)
    return fake


async def run(
    module: str, *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    full_env.pop("MESH_DATA_DIR", None) if env is None else None
    with trio.fail_after(30):
        proc = await trio.run_process(
            [sys.executable, "-m", module, *map(str, args)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=cwd or REPO,
            env=full_env,
        )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    return proc


async def mesh(
    data_dir: Path, *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await run("mesh_cli.main", "--data-dir", data_dir, *args, cwd=cwd)


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode()


# ------------------------------------------------------------------ read commands


async def test_every_read_command_prints_the_daemons_json(
    daemon: FakeDaemon, data_dir: Path
) -> None:
    commands = {
        "status": ["status"],
        "peers": ["peers"],
        "jobs": ["jobs"],
        "job": ["job", JOB],
        "credits": ["credits"],
        "log": ["log", "show", "--start", "1"],
    }
    results: dict[str, Any] = {}

    async def one(name: str, argv: list[str]) -> None:
        results[name] = await mesh(data_dir, *argv, "--json")

    async with trio.open_nursery() as n:
        for name, argv in commands.items():
            n.start_soon(one, name, argv)
    parsed = {}
    for name, proc in results.items():
        assert proc.returncode == 0, (name, err(proc))
        parsed[name] = json.loads(out(proc))
    assert parsed["status"] == status_doc(daemon.peer_id)
    assert parsed["peers"] == PEERS and parsed["credits"] == CREDITS
    assert parsed["job"]["job_id"] == JOB and parsed["jobs"]["jobs"][0]["worker"] == WORKER
    assert parsed["log"] == {"records": [], "head_seq": 0}


async def test_status_shows_the_nodes_standing(daemon: FakeDaemon, data_dir: Path) -> None:
    proc = await mesh(data_dir, "status")
    text = out(proc)
    assert proc.returncode == 0
    assert daemon.peer_id in text
    assert "NOT sandboxed" in text and "no Docker engine reachable" in text
    assert "cold: compute score not measured yet" in text
    assert "Why this node may not be picked" in text and "above the mesh median" in text
    assert "NVIDIA RTX 3090" in text and "not yet rated" in text
    assert "median of 9 runs on 1 thread(s), cpu time, spread 1.03" in text
    disk = " ".join(text.split())  # the disk line may wrap
    assert (
        "blobs 1.5 MiB of 20.0 GiB (7 files, 3 job logs 3.0 KiB, 5 collected, 2 uploads refused"
        in disk
    )
    assert "run dirs 1 (3 orphans removed" in disk and "event log 2.0 MiB" in disk
    assert (
        "about 9,800 nodes, advert shard 5 of 16 (hears about 613 nodes), changing from 8 "
        "shards, heartbeat every 7m40s" in disk
    )


async def test_peers_says_which_advert_shard_it_lists(daemon: FakeDaemon, data_dir: Path) -> None:
    proc = await mesh(data_dir, "peers")
    text = " ".join(out(proc).split())
    assert proc.returncode == 0 and WORKER[:12] in text
    assert "mesh: about 9,800 nodes, advert shard 5 of 16" in text


async def test_job_explains_why_nobody_took_it(daemon: FakeDaemon, data_dir: Path) -> None:
    proc = await mesh(data_dir, "job", JOB)
    text = out(proc)
    assert proc.returncode == 0
    assert "Why nobody took it" in text
    no_gpu = next(line for line in text.splitlines() if "no GPU" in line)
    assert " 2 " in no_gpu  # two peers declined for that reason
    assert "image not present" in text


# ------------------------------------------------------------------ failures and exit codes


async def test_wrong_flags_are_usage_errors(data_dir: Path) -> None:
    for module, argv in (
        ("mesh_cli.main", ["status", "--bogus"]),
        ("mesh_cli.main", ["nosuchcommand"]),
        ("meshd.cli", ["start", "--executor", "vm"]),
        ("mesh_cli.main", ["submit", "--cpus", "x"]),
    ):
        proc = await run(module, *argv)
        assert proc.returncode == 2, (argv, err(proc))
        assert "usage:" in err(proc)


async def test_no_daemon_is_exit_3_with_a_clear_message(data_dir: Path, tmp_path: Path) -> None:
    proc = await run("mesh_cli.main", "status", env={"MESH_DATA_DIR": str(data_dir)})
    assert proc.returncode == 3
    assert (
        f"no daemon running for {data_dir} (start it with `meshd start --data-dir {data_dir}`)"
        in err(proc)
    )
    assert out(proc) == ""


async def test_api_error_is_exit_1_with_the_daemons_message(
    daemon: FakeDaemon, data_dir: Path
) -> None:
    proc = await mesh(data_dir, "job", "nope-nope")
    assert proc.returncode == 1
    assert "no job 'nope-nope' on this node" in err(proc)


# ------------------------------------------------------------------ submit, logs, results


async def test_submit_uploads_inputs_waits_and_unpacks_outputs(
    daemon: FakeDaemon, data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    proc = await mesh(
        data_dir,
        "submit",
        "--image",
        "busybox:1",
        "--input",
        tmp_path / "data.csv",
        "--cpus",
        "2",
        "--memory",
        "512",
        "--env",
        "MODE=fast",
        "--label",
        "team=ml",
        "--timeout",
        "60",
        "--estimated-flops",
        "2e9",
        "--runtime",
        "process",
        "--queue",
        "--queue-timeout",
        "90",
        "--wait",
        "-o",
        tmp_path / "out",
        "--",
        "sh",
        "-c",
        "cat data.csv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, err(proc)
    spec = daemon.specs[-1]
    digest = "sha256:" + hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert spec["inputs"] == [{"path": "data.csv", "digest": digest, "size": 8}]
    assert daemon.blobs[digest] == b"a,b\n1,2\n"
    assert spec["command"] == ["sh", "-c", "cat data.csv"] and spec["image"] == "busybox:1"
    assert spec["requirements"] == {"cpus": 2.0, "memory_mb": 512, "runtime": "process"}
    assert daemon.submits[-1] == {"wait": False, "queue": True, "queue_timeout_s": 90.0}
    assert (
        spec["env"] == {"MODE": "fast"}
        and spec["labels"] == {"team": "ml"}
        and spec["timeout_s"] == 60
        and spec["estimated_flops"] == 2e9
    )
    assert (tmp_path / "out" / "result.txt").read_text() == "hi\n"
    assert (tmp_path / "out" / "sub" / "more.txt").read_text() == "more"
    # stdout carries only the job id (for `id=$(mesh submit --wait ...)`); progress is on stderr.
    assert out(proc).strip() == "job-00000001"
    text = err(proc)
    assert "running" in text and "succeeded" in text and "2 output file(s)" in text
    # In a pipe, while nobody has taken the job, the line says the latest decline.
    assert "queued" in text and "(last decline: image not present)" in text, text


async def test_submit_from_a_yaml_file_uploads_its_local_inputs(
    daemon: FakeDaemon, data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.bin").write_bytes(b"\x00\x01")
    (tmp_path / "job.yaml").write_text(
        "image: busybox:1\ncommand: [sh, -c, 'ls /mesh/inputs']\n"
        f"inputs:\n  - local: {tmp_path / 'in'}\n    path: data\n"
        "requirements: {gpus: 0}\n"
    )
    proc = await mesh(data_dir, "submit", tmp_path / "job.yaml", "--speed", "cheap")
    assert proc.returncode == 0, err(proc)
    assert out(proc).strip() == JOB  # only the id on stdout, for scripts
    spec = daemon.specs[-1]
    assert spec["speed"] == "cheap" and spec["requirements"] == {"gpus": 0}
    assert spec["inputs"] == [
        {
            "path": "data/x.bin",
            "digest": "sha256:" + hashlib.sha256(b"\x00\x01").hexdigest(),
            "size": 2,
        }
    ]


async def test_submit_maps_a_nexapod_descriptor_and_uploads_its_input_files(
    daemon: FakeDaemon, data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "circuit.json").write_text('{"ghz_qubits": 4}')
    nexapod = {
        "schema_version": "1.0",
        "job_id": "ghz_four_qubits",
        "type": "quantum_simulation",
        "input_files": ["circuit.json"],
        "docker_image": "meshd/sci:1",
        "estimated_flops": 1e6,
        "tier": 0,
        "requirements": {"gpu": False, "ram_gb": 1},
        "input_uri": "",
        "tolerance": 1e-9,
        "credit_rate": 2.0,
    }
    (tmp_path / "job.json").write_text(json.dumps(nexapod))
    # run from elsewhere: the input file is found beside the descriptor
    proc = await mesh(data_dir, "submit", tmp_path / "job.json", cwd=REPO / "mesh_cli")
    assert proc.returncode == 0, err(proc)
    spec = daemon.specs[-1]
    assert spec["schema_version"] == 1 and spec["image"] == "meshd/sci:1"
    assert spec["command"] == ["/mesh/run"] and spec["job_id"] == "ghz-four-qubits"
    assert spec["env"] == {"MESH_JOB_TYPE": "quantum_simulation"}
    assert spec["tolerance"] == {"rel": 1e-9, "abs": 1e-9} and spec["credit_rate"] == 2.0
    assert spec["requirements"] == {"tier": "cpu", "gpus": 0, "memory_mb": 1024}
    data = b'{"ghz_qubits": 4}'
    assert spec["inputs"] == [
        {"path": "circuit.json", "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": 17}
    ]
    # an unknown field: one line naming it, exit 2, nothing submitted
    (tmp_path / "bad.json").write_text(json.dumps({**nexapod, "priority": "high"}))
    before = len(daemon.specs)
    proc = await mesh(data_dir, "submit", tmp_path / "bad.json")
    assert proc.returncode == 2
    assert "priority: unknown field" in err(proc) and "NEXAPod" in err(proc)
    assert len(err(proc).strip().splitlines()) == 1 and len(daemon.specs) == before


async def test_invalid_job_prints_the_fields_at_fault(daemon: FakeDaemon, data_dir: Path) -> None:
    pytest.importorskip("meshd.core.jobspec")
    proc = await mesh(data_dir, "submit", "--image", "busybox", "--gpus", "-1", "--", "true")
    assert proc.returncode == 1
    assert "invalid job descriptor" in err(proc) and "requirements.gpus" in err(proc)
    assert daemon.specs == []


async def test_submit_without_image_or_file_is_a_usage_error(
    daemon: FakeDaemon, data_dir: Path
) -> None:
    proc = await mesh(data_dir, "submit", "--", "echo", "hi")
    assert proc.returncode == 2 and "--image" in err(proc)
    proc = await mesh(data_dir, "submit", "--image", "busybox", "--env", "NOEQUALS", "--", "true")
    assert proc.returncode == 2 and "KEY=VALUE" in err(proc)


async def test_result_refuses_a_tar_that_escapes_its_directory(
    daemon: FakeDaemon, data_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "a" / "dest"
    proc = await mesh(data_dir, "result", EVIL, "-o", dest)
    assert proc.returncode == 1
    assert "refusing to unpack" in err(proc)
    assert not (tmp_path / "a" / "escape.txt").exists() and not (dest / "ok.txt").exists()
    proc = await mesh(data_dir, "result", JOB, "-o", dest)
    assert proc.returncode == 0 and (dest / "result.txt").read_text() == "hi\n"
    proc = await mesh(data_dir, "result", JOB, "-o", dest)  # not empty any more
    assert proc.returncode == 1 and "not an empty directory" in err(proc)


async def test_logs_follow_prints_each_stream_and_the_end(
    daemon: FakeDaemon, data_dir: Path
) -> None:
    proc = await mesh(data_dir, "logs", JOB, "-f")
    assert proc.returncode == 0
    assert out(proc) == "hello from the job\nsecond run\n"
    assert err(proc).startswith("a warning\n") and f"job {JOB} ended: succeeded" in err(proc)
    assert "stored log of replica 1 did not arrive" in err(proc)
    assert daemon.log_queries[-1] == {"follow": "1"}


async def test_logs_label_replicas_and_pass_their_options(
    daemon: FakeDaemon, data_dir: Path
) -> None:
    daemon.specs.append({"image": "busybox", "command": ["true"], "replicas": 2})
    proc = await mesh(data_dir, "logs", JOB)
    assert proc.returncode == 0, err(proc)
    assert out(proc) == "[r0] hello from the job\n[r1] second run\n"
    assert err(proc).startswith("[r0] a warning\n")

    proc = await mesh(
        data_dir, "logs", JOB, "--replica", "0", "--tail", "5", "--since", "10m", "-t"
    )
    assert proc.returncode == 0, err(proc)
    assert out(proc) == "2023-11-14T22:13:20.001Z hello from the job\n"
    q = daemon.log_queries[-1]
    assert (q["replica"], q["tail"]) == ("0", "5") and "follow" not in q
    assert abs(int(q["since_ms"]) - (time.time() - 600) * 1000) < 60_000

    proc = await mesh(data_dir, "logs", JOB, "--since", "yesterday")
    assert proc.returncode == 2 and "neither a duration" in err(proc)
    assert "Traceback" not in err(proc)


async def test_cancel_and_credits_export(
    daemon: FakeDaemon, data_dir: Path, tmp_path: Path
) -> None:
    proc = await mesh(data_dir, "cancel", JOB)
    assert (proc.returncode, out(proc).strip()) == (0, f"{JOB}: cancelled")
    proc = await mesh(data_dir, "credits", "export", "--csv", "-o", tmp_path / "r.csv")
    assert proc.returncode == 0, err(proc)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert rows[0] == {
        "job_id": JOB,
        "worker": WORKER,
        "origin": OTHER,
        "credits": "10.0",
        "ts_ms": "1700000000000",
        "time_utc": "2023-11-14 22:13:20Z",
        "seq": "17",
    }
    assert [r["seq"] for r in rows] == ["17", "18"]


async def test_credits_shows_where_balances_come_from(daemon: FakeDaemon, data_dir: Path) -> None:
    proc = await mesh(data_dir, "credits")
    assert proc.returncode == 0, err(proc)
    lines = out(proc).splitlines()
    assert "free allowance 10.00 credits" in lines[0]
    (worker_row,) = [ln for ln in lines if ln.lstrip().startswith(WORKER)]
    assert "12.50 (2 receipts) (2.50 held)" in worker_row  # earned, the receipts, the bond
    assert "forfeited" not in worker_row
    assert "12D3KooW…NASuq 12.50 (2)" in worker_row  # its top payer
    (other_row,) = [ln for ln in lines if ln.lstrip().startswith(OTHER)]
    assert "(over allowance)" in other_row and "12D3KooW…Ve2Xo 12.50 (2)" in other_row
    assert "receipts (2)" in out(proc)


async def test_credits_peer_drill_down(daemon: FakeDaemon, data_dir: Path) -> None:
    proc = await mesh(data_dir, "credits", "--peer", OTHER[:20])
    assert proc.returncode == 0, err(proc)
    text = out(proc)
    assert text.startswith(f"{OTHER}: balance -12.50 (over allowance) = earned 0.00 (0 receipts)")
    assert "spent 12.50 (2 receipts); free allowance 10.00" in text
    (paid_to,) = [ln for ln in text.splitlines() if ln.lstrip().startswith("paid to")]
    assert WORKER in paid_to and "12.50" in paid_to and paid_to.rstrip().endswith("2")
    assert "receipts (2)" in text
    proc = await mesh(data_dir, "credits", "--peer", WORKER)
    assert out(proc).startswith(
        f"{WORKER}: balance 10.00 = earned 12.50 (2 receipts) − held 2.50 − spent 0.00"
    )
    proc = await mesh(data_dir, "credits", "--peer", WORKER, "--json")
    doc = json.loads(out(proc))
    assert doc["balance"]["earned_receipts"] == 2 and len(doc["receipts"]) == 2
    assert doc["free_allowance"] == 10.0
    proc = await mesh(data_dir, "credits", "--peer", "12D3KooW")  # matches both: ambiguous
    assert proc.returncode == 2 and "no single peer" in err(proc)


# ------------------------------------------------------------------ meshd


async def test_meshd_init_refuses_to_run_twice_and_start_needs_init(tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    first = await run("meshd.cli", "init", "--data-dir", d, "--listen", "/ip4/127.0.0.1/tcp/0")
    assert first.returncode == 0, err(first)
    peer_id = load_node(d)[1].peer_id
    assert f"peer id:  {peer_id}" in out(first)
    second = await run("meshd.cli", "init", "--data-dir", d)
    assert second.returncode == 2 and "already initialised" in err(second)
    assert load_node(d)[1].peer_id == peer_id
    start = await run("meshd.cli", "start", "--data-dir", tmp_path / "never")
    assert start.returncode == 2
    assert f"run `meshd init --data-dir {tmp_path / 'never'}` first" in err(start)
    (d / "config.toml").write_text("[params]\nno_such_param = 1\n")
    start = await run("meshd.cli", "start", "--data-dir", d)
    assert start.returncode == 2 and "no_such_param" in err(start)
    version = await run("meshd.cli", "--version")
    assert version.returncode == 0 and out(version).startswith("meshd ")


async def test_exit_codes_follow_cli_md(tmp_path: Path) -> None:
    """mesh_cli/CLI.md's exit codes, for the cases no other test covers:
    `meshd start --executor process` without `allow_process_executor = true`
    is a configuration error (2) before anything runs (issue 12 "Roles": a
    flag alone never runs jobs unsandboxed); `meshd stop` with no daemon is 1;
    `mesh version` without a daemon still answers (0); `mesh wait` on a data
    dir with no daemon is 3."""
    d = tmp_path / "node"
    assert (await run("meshd.cli", "init", "--data-dir", d)).returncode == 0
    start = await run("meshd.cli", "start", "--data-dir", d, "--executor", "process")
    assert start.returncode == 2, err(start)
    assert "allow_process_executor = true" in err(start) and str(d / "config.toml") in err(start)
    assert "Traceback" not in err(start)
    assert not (d / "daemon.pid").exists() and not (d / "api.addr").exists()
    (d / "config.toml").write_text('executor = "process"\n')  # the file's key, not a flag
    start = await run("meshd.cli", "start", "--data-dir", d)
    assert start.returncode == 2 and "allow_process_executor" in err(start), err(start)
    stop = await run("meshd.cli", "stop", "--data-dir", d)
    assert stop.returncode == 1 and "no daemon is running" in err(stop), err(stop)
    version = await mesh(d, "version")
    assert version.returncode == 0 and "meshd: no daemon running" in out(version)
    wait = await mesh(d, "wait", "j-1")
    assert wait.returncode == 3 and "no daemon running" in err(wait)


# ------------------------------------------------------------------ log verify


@pytest.fixture
def written_log(data_dir: Path) -> Path:
    eventlog = pytest.importorskip("meshd.store.eventlog")
    pytest.importorskip("meshd.core.logrecord")
    _, identity = load_node(data_dir)
    with eventlog.EventLog.open(data_dir / "log", identity) as log:
        for i in range(5):
            log.append("test.event", {"i": i}, 1_700_000_000_000 + i)
    return data_dir


async def test_log_verify_on_disk_without_a_daemon(written_log: Path) -> None:
    proc = await mesh(written_log, "log", "verify")
    assert proc.returncode == 0, err(proc)
    assert "event log OK (on disk" in out(proc) and "6 records verified" in out(proc)


async def test_log_verify_through_the_api_when_the_daemon_holds_the_log(
    nursery: trio.Nursery, written_log: Path
) -> None:
    from meshd.store.eventlog import EventLog

    _, identity = load_node(written_log)
    fake = FakeDaemon(identity.peer_id)
    with EventLog.open(
        written_log / "log", identity
    ) as held:  # locked, as a running daemon holds it
        fake.log_raw = list(held.iter_raw())
        port = await nursery.start(fake.server(read_api_token(written_log)).serve, "127.0.0.1", 0)
        write_api_addr(written_log, "127.0.0.1", port)
        proc = await mesh(written_log, "log", "verify", "--json")
        assert proc.returncode == 0, err(proc)
        assert "a daemon is running" in err(proc)
        report = json.loads(out(proc))
        assert report["ok"] and report["count"] == 6
        fake.log_raw = list(held.iter_raw())[:4]  # serves 4 records while claiming head seq 6
        fake.head_seq = 6
        proc = await mesh(written_log, "log", "verify")
        assert proc.returncode == 1 and "only up to seq 4, but reports head seq 6" in out(proc)
        fake.log_raw = list(held.iter_raw())
        tampered = bytearray(fake.log_raw[3])
        tampered[-1] ^= 1  # flip one bit of seq 4's signature
        fake.log_raw[3] = bytes(tampered)
        proc = await mesh(written_log, "log", "verify")
        assert proc.returncode == 1
        assert "event log INVALID" in out(proc) and "first bad seq 4" in out(proc)


# ---------------------------------------------------------------- habits (issue 12)


async def test_job_ids_may_be_given_by_an_unambiguous_prefix(
    daemon: FakeDaemon, data_dir: Path
) -> None:
    proc = await mesh(data_dir, "job", JOB[:7], "--json")
    assert proc.returncode == 0, err(proc)
    assert json.loads(out(proc))["job_id"] == JOB
    proc = await mesh(data_dir, "job", "job-9", "--json")  # a prefix of nothing: the daemon's 404
    assert proc.returncode == 1 and "no job 'job-9'" in err(proc)


def test_an_ambiguous_prefix_is_refused_naming_the_candidates() -> None:
    from mesh_cli.jobs import UsageError
    from mesh_cli.main import resolve_job_id

    class Jobs:
        def jobs(self) -> dict[str, Any]:
            return {"jobs": [{"job_id": "job-aa1"}, {"job_id": "job-aa2"}, {"job_id": "job-b"}]}

    assert resolve_job_id(Jobs(), "job-b") == "job-b"  # type: ignore[arg-type]
    assert resolve_job_id(Jobs(), "job-aa1") == "job-aa1"  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="ambiguous: job-aa1, job-aa2"):
        resolve_job_id(Jobs(), "job-a")  # type: ignore[arg-type]


def test_jobs_filters_by_state_label_and_limit() -> None:
    from mesh_cli.jobs import UsageError
    from mesh_cli.main import filter_jobs

    jobs = [
        {"job_id": "j3", "state": "running", "labels": {"team": "ml"}},
        {"job_id": "j2", "state": "failed", "labels": {"team": "ml"}},
        {"job_id": "j1", "state": "running", "labels": {"team": "bio"}},
    ]
    assert [j["job_id"] for j in filter_jobs(jobs, ["running"], None, None)] == ["j3", "j1"]
    assert [j["job_id"] for j in filter_jobs(jobs, None, ["team=ml"], None)] == ["j3", "j2"]
    assert [j["job_id"] for j in filter_jobs(jobs, None, None, 1)] == ["j3"]
    assert filter_jobs(jobs, ["running"], ["team=ml"], None) == [jobs[0]]
    with pytest.raises(UsageError, match="KEY=VALUE"):
        filter_jobs(jobs, None, ["team"], None)


async def test_jobs_state_filter_from_the_command_line(daemon: FakeDaemon, data_dir: Path) -> None:
    proc = await mesh(data_dir, "jobs", "--state", "failed", "--json")
    assert proc.returncode == 0 and json.loads(out(proc))["jobs"] == []
    proc = await mesh(data_dir, "jobs", "--state", "running", "--limit", "1", "--json")
    assert [j["job_id"] for j in json.loads(out(proc))["jobs"]] == [JOB]


async def test_wait_returns_when_the_job_ends_or_times_out(
    daemon: FakeDaemon, data_dir: Path
) -> None:
    daemon.polls = 0
    proc = await mesh(data_dir, "wait", JOB, "--timeout", "0")  # first poll: queued
    assert proc.returncode == 1 and "still queued after 0 s" in err(proc)
    proc = await mesh(data_dir, "wait", JOB)  # running, then succeeded
    assert proc.returncode == 0, err(proc)
    assert out(proc).strip() == f"{JOB}: succeeded"


async def test_version_names_client_and_daemon(daemon: FakeDaemon, data_dir: Path) -> None:
    proc = await mesh(data_dir, "version", "--json")
    assert proc.returncode == 0
    assert json.loads(out(proc)) == {"client": __version__, "daemon": "0.1.0"}
    proc = await mesh(data_dir.parent / "nowhere", "version")  # no daemon: still answers
    assert proc.returncode == 0 and "no daemon running" in out(proc)


def test_version_and_help_load_no_client_renderer_or_pydantic() -> None:
    """`mesh --version` answers as fast as Python starts: nothing heavy is imported."""
    code = (
        "import sys\n"
        "from mesh_cli.main import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('rich', 'pydantic', 'meshd.api.client', 'meshd.config')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().endswith("[]"), proc.stdout


def test_a_json_read_loads_neither_pydantic_nor_rich(tmp_path: Path) -> None:
    """`mesh status --json` needs the client and the data dir's two files only
    (nor the job helpers; the HTTP client, http.client, loads when a request is made)."""
    heavy = ("rich", "pydantic", "meshd.config", "mesh_cli.jobs")
    code = (
        "import sys\n"
        "from mesh_cli.main import main\n"
        f"main(['--data-dir', {str(tmp_path / 'none')!r}, 'status', '--json'])\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().endswith("[]"), proc.stdout + proc.stderr
    assert "no daemon running" in proc.stderr  # it did run the command


QUICK_START_HEAVY = (
    "httpx",
    "httpcore",
    "trio",
    "libp2p",
    "pydantic",
    "cryptography",
    "msgpack",
    "rich",
    "meshd.config",
    "mesh_cli.jobs",
)
"""Packages `mesh status` and `mesh --version` must not load (issue 12: each
costs start-up; the daemon's and the job helpers' belong to other commands)."""


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["status"], ["status", "--json"]], ids=" ".join
)
async def test_status_and_version_load_no_heavy_package(
    daemon: FakeDaemon, data_dir: Path, argv: list[str]
) -> None:
    """A behaviour test, not a speed test: the modules a real `mesh status`
    (drawn, and --json) and `mesh --version` leave in ``sys.modules``."""
    code = (
        "import sys\n"
        "from mesh_cli.main import main\n"
        "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
        f"heavy = {QUICK_START_HEAVY!r}\n"
        "loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))\n"
        "print('LOADED', rc, loaded, file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with trio.fail_after(30):
        proc = await trio.run_process(
            [sys.executable, "-c", code, "--data-dir", str(data_dir), *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    assert err(proc).splitlines()[-1] == "LOADED 0 []", err(proc)
    if argv[0] == "status":
        assert daemon.peer_id in out(proc)  # it did ask the daemon and print its answer


def test_the_cost_line_shows_the_charge_the_ledger_holds_and_the_estimates_basis() -> None:
    """mesh_cli/CLI.md: ``estimate E (from B), charged A of budget M credits``,
    credits to four significant digits (a job often costs a few hundredths)."""
    from mesh_cli.render import cost_text

    cost = {"estimate": 0.027778, "basis": "history", "actual": 0.029636, "budget": 0.04}
    assert (
        cost_text(cost)
        == "estimate 0.02778 (from earlier runs), charged 0.02964 of budget 0.04 credits"
    )
    assert cost_text({"estimate": None, "actual": 0.0}) == "estimate -, charged 0 credits"


async def test_dashboard_prints_the_login_url_and_open_hands_it_to_the_browser(
    daemon: FakeDaemon, data_dir: Path, tmp_path: Path
) -> None:
    token = read_api_token(data_dir)
    port = int((data_dir / "api.addr").read_text().strip().rsplit(":", 1)[1])
    proc = await mesh(data_dir, "dashboard")
    assert proc.returncode == 0, err(proc)
    assert out(proc).strip() == f"http://127.0.0.1:{port}/dashboard/#token={token}"
    assert "holds the node's API token" in err(proc)
    # --open: webbrowser honours $BROWSER; this one records what it was given
    seen = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {seen}\n')
    browser.chmod(0o755)
    env = {"BROWSER": str(browser), "MESH_DATA_DIR": str(data_dir)}
    proc = await run("mesh_cli.main", "dashboard", "--open", "--json", env=env)
    assert proc.returncode == 0, err(proc)
    url = json.loads(out(proc))["url"]
    assert url.endswith(f"#token={token}")
    with trio.fail_after(10):
        while not seen.exists() or not seen.read_text():
            await trio.sleep(0.05)
    assert seen.read_text() == url
    # no daemon: exit 3 with the one line saying how to start one
    proc = await mesh(tmp_path / "nowhere", "dashboard")
    assert proc.returncode == 3 and "no daemon running" in err(proc)
