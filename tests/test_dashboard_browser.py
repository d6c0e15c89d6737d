"""The live dashboard in a real headless Chromium (Playwright, Debian's
``chromium``), against two real ``meshd start`` daemons: the page opens from
the URL ``mesh dashboard`` prints, a job submitted with the CLI appears and
reaches ``succeeded`` without a reload, and the contributor wall changes;
the Cancel and Retry buttons act on a running job.
Screenshots are kept under the test's tmp dir (their paths are printed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from meshd.testing.procs import mesh_cli, start_mesh, stop_all

CHROMIUM = os.environ.get("MESHD_CHROMIUM", "/usr/bin/chromium")
"""The browser binary (Debian's package; no Playwright browser download)."""

pytestmark = pytest.mark.slow

SCRIPT = "for i in 1 2 3; do echo line $i; sleep 0.3; done; echo done > $MESH_OUTPUTS/done.txt"


def _submit(data_dir: Path, script: str) -> str:
    """Submit a process-runtime job with the real `mesh` CLI; its id."""
    cp = mesh_cli(
        data_dir,
        "submit",
        "--runtime",
        "process",
        "--image",
        "meshd/busybox:1",
        "--",
        "sh",
        "-c",
        script,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return cp.stdout.strip().splitlines()[0]


@pytest.fixture
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    return CHROMIUM


def test_dashboard_shows_a_cli_job_reach_succeeded_live(tmp_path: Path, chromium: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    procs = start_mesh(tmp_path / "mesh", 2)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        origin, worker = procs
        worker_id = (worker.status() or {})["peer_id"]
        cp = mesh_cli(origin.data_dir, "dashboard")
        assert cp.returncode == 0, cp.stderr
        url = cp.stdout.strip()
        token = (origin.data_dir / "api.token").read_text().strip()
        assert url.endswith(f"/dashboard/#token={token}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                requests: list[dict[str, Any]] = []
                page.on("request", lambda r: requests.append({"url": r.url, **r.headers}))
                page.goto(url)
                expect(page.locator("#live")).to_have_attribute("data-state", "live")
                assert page.evaluate("location.hash") == ""  # the token left the address bar
                expect(page.locator("#peers tbody tr[data-peer-id]")).to_have_count(1)
                expect(page.locator("#contributors tbody")).to_contain_text("no verified work")
                page.evaluate("window.__notReloaded = true")
                page.screenshot(path=str(shots / "1-before.png"), full_page=True)

                job_id = _submit(origin.data_dir, SCRIPT)

                row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
                expect(row).to_have_count(1, timeout=15_000)
                row.get_by_role("button").click()
                state = row.locator("td.state")
                expect(state).to_have_attribute("data-state", "succeeded", timeout=90_000)
                wall = page.locator(f'#contributors tr[data-peer-id="{worker_id}"]')
                expect(wall.locator("td.jobs")).to_have_text("1", timeout=60_000)
                expect(page.locator("#job-history")).to_contain_text("succeeded")
                expect(page.locator("#job-bids")).to_contain_text(worker_id[:12])
                expect(page.locator("#job-logs")).to_contain_text("line 3", timeout=30_000)
                expect(page.locator("#log-status")).to_have_attribute("data-state", "verified")
                assert page.evaluate("window.__notReloaded") is True  # live, no reload
                final = shots / "2-succeeded.png"
                page.screenshot(path=str(final), full_page=True)

                # the buttons: cancel a running job, then retry it
                long_id = _submit(origin.data_dir, "sleep 120")
                row = page.locator(f'#jobs tr[data-job-id="{long_id}"]')
                row.get_by_role("button").click()
                state = row.locator("td.state")
                expect(state).to_have_attribute("data-state", "running", timeout=60_000)
                expect(page.locator("#retry-job")).to_be_disabled()
                page.locator("#cancel-job").click()
                expect(page.locator("#action-result")).to_have_text("cancel requested")
                expect(state).to_have_attribute("data-state", "cancelled", timeout=30_000)
                page.locator("#retry-job").click()
                expect(page.locator("#action-result")).to_have_text("retry requested")
                expect(state).not_to_have_attribute("data-state", "cancelled", timeout=30_000)
                page.screenshot(path=str(shots / "3-retried.png"), full_page=True)
            finally:
                browser.close()
        print(f"dashboard screenshots: {shots}")
        data = [r for r in requests if "/v1/" in r["url"]]
        assert data and all(r.get("authorization") == f"Bearer {token}" for r in data)
        assert not any(token in r["url"] for r in requests)  # never in a request line
        for p in procs:
            assert token not in (p.data_dir / "daemon.log").read_text(errors="replace")
        if os.environ.get("MESHD_DASHBOARD_PNG"):  # refresh docs/dashboard.png
            shutil.copyfile(final, os.environ["MESHD_DASHBOARD_PNG"])
    finally:
        stop_all(procs)
