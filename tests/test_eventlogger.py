"""The daemon's log at INFO tells an operator what happened (issue 15).

Rules checked (``meshd/runtime/eventlogger.py`` header): jobs submitted,
placed, finished; runs started and ended; peers joining; each line carries
its fields as structured fields, which ``--log-format json`` writes as JSON
fields (``meshd/logsetup.py``).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import trio

from meshd.logsetup import JsonFormatter
from meshd.runtime.eventlogger import EventLogger
from meshd.testing.cluster import Cluster

JOB = {"image": "meshd/busybox:1", "command": ["sh", "-c", "echo ok > $MESH_OUTPUTS/o"]}


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("meshd.events.test")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_records_become_lines_with_their_fields_as_json_fields() -> None:
    logger, stream = _capture()
    events = EventLogger(logger)
    events.record("job_finished", {"job_id": "j-1", "state": "failed", "reason": "exit code 3"})
    events.record("work_acked", {"job_id": "j-1"})  # not worth a line at INFO
    events.record("equivocation", {"issuer": "12D3KooWxyz", "seq": 7})
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["job_finished", "equivocation"]
    assert lines[0]["msg"] == "job j-1 failed: exit code 3"
    assert (lines[0]["job_id"], lines[0]["state"], lines[0]["level"]) == ("j-1", "failed", "INFO")
    assert lines[1]["peer_id"] == "12D3KooWxyz" and lines[1]["level"] == "WARNING"


def test_an_audit_and_a_retracted_result_are_warnings() -> None:
    """specs/CREDITS.md §4.1, §7.6: job_audit, job_retracted and receipt_reversal
    records become lines."""
    logger, stream = _capture()
    events = EventLogger(logger)
    worker = "12D3KooWliarliar"
    events.record("job_audit", {"job_id": "j-2", "worker": worker, "by": "12D3KooWorigin"})
    events.record(
        "job_retracted",
        {"job_id": "j-2", "worker": worker, "retracted": "sha256:bad", "canonical": "sha256:ok"},
    )
    events.record(
        "receipt_reversal", {"job_id": "j-2", "worker": worker, "receipt_seq": 7, "seq": 9}
    )
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(x["event"], x["level"], x["worker"]) for x in lines] == [
        ("job_audit", "WARNING", worker),
        ("job_retracted", "WARNING", worker),
        ("receipt_reversal", "WARNING", worker),
    ]
    assert "taken back" in lines[2]["msg"] and "seq 7" in lines[2]["msg"]
    assert "audited" in lines[0]["msg"] and "RETRACTED" in lines[1]["msg"]
    assert "sha256:bad" in lines[1]["msg"] and "sha256:ok" in lines[1]["msg"]
    assert "final result" in lines[1]["msg"]  # a record from before the hold: it was final


def test_a_provisional_result_and_its_replacement_in_the_hold_say_so() -> None:
    """specs/CREDITS.md §4.2: the verdict line says a result is provisional;
    a retraction inside the hold says it was never final (``final`` field too)."""
    logger, stream = _capture()
    events = EventLogger(logger)
    events.record(
        "job_verdict",
        {
            "job_id": "j-3",
            "verdict": "unverified",
            "valid": ["w"],
            "invalid": [],
            "provisional_until_ms": 5_000,
        },
    )
    events.record("job_verdict", {"job_id": "j-4", "verdict": "agreed", "valid": ["w", "v"]})
    events.record(
        "job_retracted",
        {
            "job_id": "j-3",
            "worker": "w",
            "retracted": "sha256:bad",
            "canonical": "sha256:ok",
            "final": False,
        },
    )
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert "provisional until its hold ends" in lines[0]["msg"]
    assert "provisional" not in lines[1]["msg"]
    assert "provisional result" in lines[2]["msg"] and "never final" in lines[2]["msg"]
    assert lines[2]["final"] is False


def test_peers_joining_and_leaving_are_logged_once() -> None:
    logger, stream = _capture()
    events = EventLogger(logger)
    events.peers(["a", "b"])
    events.peers(["a", "b"])
    events.peers(["b", "c"])
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(x["event"], x.get("peer_id")) for x in lines] == [
        ("peers", None),
        ("peer_joined", "c"),
        ("peer_left", "a"),
    ]


async def test_a_jobs_life_reads_in_the_daemon_log(
    tmp_path: Path, nursery: trio.Nursery, caplog: object
) -> None:
    import pytest

    assert isinstance(caplog, pytest.LogCaptureFixture)
    with caplog.at_level(logging.INFO, logger="meshd.events"):
        async with Cluster.started(nursery, tmp_path, 3) as c:
            job_id = await c.submit(0, JOB)
            job = await c.wait_job(0, job_id, timeout_s=60)
            assert job.state == "succeeded", job.reason
            # Peers are compared at most once per advert interval: wait for that line.
            await c.wait_for(
                lambda: any(
                    getattr(r, "event", None) in ("peers", "peer_joined") for r in caplog.records
                ),
                30,
                "a line about the peers",
            )
    events = [(getattr(r, "event", None), getattr(r, "job_id", None)) for r in caplog.records]
    for kind in ("job_submitted", "run_awarded", "work_started", "work_finished", "job_finished"):
        assert (kind, job_id) in events, (kind, events)


async def test_metrics_scraped_during_a_job_move(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Issue 15: ``GET /metrics`` (Prometheus text, the API token) shows the job
    counters and the placement histogram moving."""
    from prometheus_client.parser import text_string_to_metric_families

    from meshd.api.client import ApiClient
    from meshd.core.events import TOPIC_ADVERTS
    from meshd.runtime.metrics import FAMILY_NAMES, by_label

    async with Cluster.started(nursery, tmp_path, 3) as c:
        client = ApiClient.from_data_dir(c.members[0].data_dir)

        def scrape() -> dict[str, float]:
            text = client.metrics()
            out: dict[str, float] = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
                    out[key] = s.value
            return out

        before = await trio.to_thread.run_sync(scrape)
        job_id = await c.submit(0, JOB)
        job = await c.wait_job(0, job_id, timeout_s=60)
        assert job.state == "succeeded", job.reason
        after = await trio.to_thread.run_sync(scrape)
        assert before.get("meshd_jobs_submitted_total", 0) == 0
        assert after["meshd_jobs_submitted_total"] == 1
        assert after["meshd_jobs_finished_total{state=succeeded}"] == 1
        assert after["meshd_placement_seconds_count"] == before["meshd_placement_seconds_count"] + 1
        assert after["meshd_placement_seconds_sum"] > 0
        assert after["meshd_peers"] == 2
        assert after["meshd_core_events_total{name=accepted_bid}"] >= 1
        assert after["meshd_eventlog_head_seq"] > before["meshd_eventlog_head_seq"]
        assert after["meshd_eventlog_records_total{kind=job_finished}"] == 1
        assert after["meshd_api_requests_total{status=200}"] >= 1
        accepted = f"meshd_gossip_messages_total{{outcome=accepted}}{{topic={TOPIC_ADVERTS}}}"
        # adverts arrive every advert interval; a quick job may end between two
        for _ in range(100):
            if after.get(accepted, 0) > before.get(accepted, 0):
                break
            await trio.sleep(0.2)
            after = await trio.to_thread.run_sync(scrape)
        assert after[accepted] > before.get(accepted, 0)
        assert after["meshd_net_events_total{name=delivered}"] > 0
        assert after["meshd_send_queue_messages_total{outcome=sent}"] >= 1  # the award at least
        assert after["meshd_executor_ready{executor=process}"] == 1
        # One place names every metric: nothing exported is missing from it.
        names = {key.partition("{")[0] for key in after}
        assert names <= FAMILY_NAMES, names - FAMILY_NAMES
        # The worker that ran it counted the run (replicated jobs: each worker one).
        runs = [by_label(c.daemon(i).metrics.runs, "outcome") for i in (1, 2)]
        assert sum(r["succeeded"] for r in runs) >= 1, runs
