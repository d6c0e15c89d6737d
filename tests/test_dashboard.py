"""The dashboard's routes on real daemons (meshd.runtime.dashboard): the page
without the token, the data only with it, a snapshot after a real job, the
live stream and its bound, and the event-log audit on a real LevelDB log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from meshd.core.identity import Identity
from meshd.runtime.dashboard import LogAudit
from meshd.runtime.params import RuntimeParams
from meshd.store.eventlog import EventLog
from meshd.testing.cluster import Cluster, with_runtime

JOB = with_runtime(
    {"image": "meshd/busybox:1", "command": ["sh", "-c", "echo hi > $MESH_OUTPUTS/hi.txt"]},
    "process",
)


def _token(c: Cluster, i: int) -> str:
    return (c.members[i].data_dir / "api.token").read_text().strip()


def _base(c: Cluster, i: int) -> str:
    return f"http://127.0.0.1:{c.daemon(i).api_port}"


async def test_page_is_served_without_the_token_and_every_data_route_needs_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with Cluster.started(nursery, tmp_path, 1) as c:
        base, token, me = _base(c, 0), _token(c, 0), c.peer_id(0)

        def calls() -> dict[str, Any]:
            with httpx.Client(base_url=base, timeout=10) as h:
                page = h.get("/dashboard")
                return {
                    "page": (page.status_code, page.headers, page.text),
                    "js": h.get("/dashboard/app.js"),
                    "css": h.get("/dashboard/style.css"),
                    "post_page": h.post("/dashboard").status_code,
                    "snapshot_no_token": h.get("/v1/dashboard").status_code,
                    "stream_no_token": h.get("/v1/dashboard/stream").status_code,
                    "status_no_token": h.get("/v1/status").status_code,
                    "snapshot": h.get(
                        "/v1/dashboard", headers={"Authorization": f"Bearer {token}"}
                    ),
                }

        out = await trio.to_thread.run_sync(calls)
    status, headers, html = out["page"]
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/app.js">' in html
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "http" not in html.replace("http-equiv", "")  # nothing from elsewhere
    assert out["js"].status_code == 200 and "sessionStorage" in out["js"].text
    assert out["js"].headers["content-type"].startswith("text/javascript")
    assert out["css"].status_code == 200
    assert out["post_page"] == 401  # only GET of the page is open
    assert out["snapshot_no_token"] == 401
    assert out["stream_no_token"] == 401
    assert out["status_no_token"] == 401
    snap = out["snapshot"].json()
    assert snap["node"]["peer_id"] == me
    assert snap["jobs"] == [] and snap["contributors"] == []


def _client_first(i: int, overrides: dict[str, Any]) -> None:
    """Node 0 runs no jobs (a client), so every run is node 1's and earns a
    receipt (a node may otherwise run its own job: specs/PROTOCOL.md §8.5)."""
    if i == 0:
        overrides["executor"] = "auto"
        overrides["allow_process_executor"] = False


async def test_snapshot_shows_the_job_its_timeline_and_the_contributor_wall(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: Any
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-engine.sock")
    async with Cluster.started(nursery, tmp_path, 2, configure=_client_first) as c:
        await c.wait_mesh()
        job_id = await c.submit(0, JOB)
        job = await c.wait_job(0, job_id, timeout_s=60)
        assert job.state == "succeeded", job.reason
        await c.wait_for(lambda: c.daemon(0).node.ledger.entries, 30, "a receipt in the ledger")
        base, token, worker = _base(c, 0), _token(c, 0), c.peer_id(1)

        def snapshot() -> dict[str, Any]:
            with httpx.Client(base_url=base, timeout=10) as h:
                r = h.get("/v1/dashboard", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
                return r.json()

        snap = await trio.to_thread.run_sync(snapshot)
    (shown,) = snap["jobs"]
    assert shown["job_id"] == job_id and shown["state"] == "succeeded"
    assert [h["state"] for h in shown["history"]][-1] == "succeeded"
    assert [b["peer_id"] for b in shown["bids"]] == [worker]
    assert [p["peer_id"] for p in snap["peers"]] == [worker]
    (wall,) = snap["contributors"]
    assert wall["peer_id"] == worker and wall["jobs"] == 1 and wall["credits"] > 0
    assert snap["receipts"] == 1
    assert snap["log"]["state"] == "verified"
    assert snap["log"]["verified_seq"] == snap["log"]["head_seq"] > 1


async def _open_stream(port: int, token: str) -> tuple[trio.SocketStream, bytes]:
    """A raw stream request; returns the socket and what arrived up to the first event."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        f"GET /v1/dashboard/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    data = b""
    with trio.fail_after(10):
        while not _complete(data):
            data += await stream.receive_some(65536)
    return stream, data


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds the head and a first event (200) or the whole error body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head.startswith(b"HTTP/1.1 200"):
        return b"\n\n" in body
    length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(length) and len(body) >= int(length[0].split(b":")[1])


def _body(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def _event(data: bytes) -> tuple[str, dict[str, Any]]:
    """The first server-sent event in a chunked body."""
    body = _body(data)
    event, _, rest = body.partition(b"event: ")[2].partition(b"\n")
    payload = rest.partition(b"data: ")[2].partition(b"\n\n")[0]
    return event.decode(), json.loads(payload)


async def test_stream_sends_snapshots_and_holds_at_most_dashboard_streams(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    rp = RuntimeParams(dashboard_streams=1, dashboard_interval_s=0.2)
    async with Cluster.started(nursery, tmp_path, 1, runtime_params=rp) as c:
        port, token = c.daemon(0).api_port, _token(c, 0)
        first, data = await _open_stream(port, token)
        assert data.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/event-stream" in data.lower()
        event, snap = _event(data)
        assert event == "snapshot" and snap["node"]["peer_id"] == c.peer_id(0)
        second, refused = await _open_stream(port, token)
        await second.aclose()
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"too_many_streams" in refused
        # a change (a job submitted) is sent without asking
        job_id = await c.submit(0, {**JOB, "command": ["sh", "-c", "sleep 30"]})
        seen = b""
        with trio.fail_after(10):
            while job_id.encode() not in seen:
                seen += await first.receive_some(65536)
        await first.aclose()  # the slot is freed when the client hangs up
        with trio.fail_after(10):
            while True:
                third, data = await _open_stream(port, token)
                await third.aclose()
                if data.startswith(b"HTTP/1.1 200"):
                    break
                await trio.sleep(0.1)


async def test_log_audit_verifies_in_bounded_steps_and_reports_a_broken_chain(
    tmp_path: Path,
) -> None:
    identity = Identity.generate()
    log = EventLog.open(tmp_path / "log", identity)
    with log:
        log.append_batch([("test.event", {"i": i}, 1_000 + i) for i in range(24)])
        audit = LogAudit(log, batch=10)
        states = [(await audit.step())["verified_seq"] for _ in range(3)]
        assert states == [10, 20, 25]
        assert audit.status()["state"] == "verified"
        log.append_batch([("test.event", {"i": 99}, 2_000)])
        assert audit.status()["state"] == "checking"
        assert (await audit.step())["state"] == "verified"
        # bit rot under the running node: a stored record changes
        db = log._live()
        raw = db.get(b"r" + (7).to_bytes(8, "big"))
        assert raw is not None
        db.put(b"r" + (7).to_bytes(8, "big"), raw[:30] + bytes([raw[30] ^ 0x40]) + raw[31:])
        fresh = LogAudit(log, batch=100)
        report = await fresh.step()
    assert report["state"] == "broken" and report["first_bad_seq"] == 7, report
    assert report["verified_seq"] == 6 and "signature" in report["reason"]


def test_every_page_file_is_package_data_so_the_wheel_carries_it() -> None:
    import fnmatch
    import tomllib

    from meshd.runtime.dashboard import ASSETS

    repo = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["meshd.runtime"]
    root = repo / "meshd" / "runtime"
    files = sorted(p.relative_to(root).as_posix() for p in (root / "static").rglob("*.*"))
    assert [f.rsplit("/", 1)[1] for f in files] == sorted(ASSETS)
    for f in files:
        assert any(fnmatch.fnmatch(f, g) for g in globs), f"{f} is not package data"
