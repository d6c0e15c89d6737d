"""``tests/gpu/check.sh`` degrades cleanly without a GPU and fails only on a real fault.

This machine has no NVIDIA driver: the script must say so and exit 0. A GPU
that ``nvidia-smi`` lists but NVML (meshd's discovery) cannot see is a real
fault: exit 1. (On a GPU machine run the script itself; README "GPU check".)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.exec.gpu import discover_gpus

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "gpu" / "check.sh"

pytestmark = pytest.mark.skipif(
    bool(discover_gpus().devices), reason="this machine has a GPU: run tests/gpu/check.sh"
)


def run_check(path_prefix: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable, DOCKER_HOST="unix:///nonexistent.sock")
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_without_a_gpu_it_says_so_and_exits_0() -> None:
    out = run_check()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no GPU found by NVML" in out.stdout
    assert "0 failed" in out.stdout
    assert "[FAILED]" not in out.stdout


def test_a_gpu_nvml_cannot_see_is_a_failure(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-00000000-fake)"\n')
    fake.chmod(0o755)
    out = run_check(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "[FAILED] NVML discovery: nvidia-smi lists 1 GPU(s)" in out.stdout
