"""The README's quick-start demo runs end to end (Docker executor where an engine
answers and the image is present, the process executor otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_a_real_job_and_verifies_every_log(tmp_path: Path) -> None:
    cp = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from meshd.cli import main; sys.exit(main())",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
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
