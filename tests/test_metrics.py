"""One metrics registry (issue 15): the Grafana dashboard asks for exactly the
names the node exports, and ``metrics_listen`` serves ``/metrics`` without the
token (and nothing else) on a real daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from meshd.config import ConfigError, NodeConfig, apply_overrides
from meshd.runtime.metrics import FAMILY_NAMES
from meshd.testing.cluster import Cluster

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana-meshd.json"


def dashboard_names() -> set[str]:
    names: set[str] = set()

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                names.update(re.findall(r"\bmeshd_[a-z0-9_]+", target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return names


def test_dashboard_queries_use_exactly_the_exported_names() -> None:
    used = dashboard_names()
    assert used - FAMILY_NAMES == set(), "the dashboard asks for names the node does not export"
    assert FAMILY_NAMES - used == set(), "exported families missing from the dashboard"


def test_metrics_listen_must_be_an_ip_and_port() -> None:
    base = NodeConfig()
    assert apply_overrides(base, {"metrics_listen": "[::1]:9464"}).metrics_listen == "[::1]:9464"
    for bad in ("localhost:9464", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x"):
        with pytest.raises(ConfigError, match="metrics_listen"):
            apply_overrides(base, {"metrics_listen": bad})


async def test_metrics_listen_serves_only_metrics_and_without_the_token(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    def configure(i: int, overrides: dict[str, Any]) -> None:
        overrides["metrics_listen"] = "127.0.0.1:0"

    async with Cluster.started(nursery, tmp_path, 1, configure=configure) as c:
        d = c.daemon(0)
        assert d.metrics_port is not None and d.metrics_port != d.api_port

        def calls() -> dict[str, Any]:
            scrape = f"http://127.0.0.1:{d.metrics_port}"
            api = f"http://127.0.0.1:{d.api_port}"
            with httpx.Client(timeout=10) as h:
                metrics = h.get(scrape + "/metrics")
                return {
                    "metrics": (metrics.status_code, metrics.text),
                    "status_there": h.get(scrape + "/v1/status").status_code,
                    "post_there": h.post(scrape + "/v1/jobs", json={}).status_code,
                    "api_metrics_no_token": h.get(api + "/metrics").status_code,
                }

        out = await trio.to_thread.run_sync(calls)
    status, text = out["metrics"]
    assert status == 200
    assert "meshd_jobs_submitted_total 0.0" in text and "meshd_peers " in text
    assert out["status_there"] == 404  # job control is not reachable there at all
    assert out["post_there"] == 404
    assert out["api_metrics_no_token"] == 401  # the control API still wants the token
