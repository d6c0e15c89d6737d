"""The README's quick-start demo runs end to end: in the Docker sandbox wherever
it can be had (an engine that answers, else as root a private engine the demo
starts and stops), the process executor only otherwise or when asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("executor", ["auto", "process"])
def test_demo_runs_a_real_job_and_verifies_every_log(tmp_path: Path, executor: str) -> None:
    cp = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from meshd.cli import main; sys.exit(main())",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--executor",
            executor,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out[-4000:]
    assert "==> executor:" in out
    assert "words.txt    : 26" in out
    assert out.count("event log OK") == 3
    assert "the job ran on another node" in out
    if executor == "process":  # asked for: its job asks for the process runtime
        assert "==> executor: process — --executor process given" in out
        assert "--runtime process" in out
    elif os.geteuid() == 0 and shutil.which("dockerd"):
        # Root with an engine installed: the sandbox, never the fallback.
        assert "==> executor: docker" in out, out[-4000:]
        assert "--runtime" not in out
        assert not (tmp_path / "demo" / "docker").exists()  # its private engine is gone
