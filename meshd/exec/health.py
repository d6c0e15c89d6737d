"""The health check every executor runs: a tiny known job whose output is checked.

Rules: the job writes a random token to ``$MESH_OUTPUTS/health`` with
``sh``; anything but exactly that token is status ``error`` with the reason.
Uses a temp dir that is always removed; bounded by
``ExecParams.health_check_timeout_s``.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

from .base import ExecParams, ExecRequest, ExecResult, Executor


async def health_check(executor: Executor, params: ExecParams) -> ExecResult:
    """Run ``sh -c 'echo ok > $MESH_OUTPUTS/health'`` and check the file."""
    token = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="meshd-health-", dir=params.scratch_dir) as tmp:
        out = Path(tmp) / "out"
        req = ExecRequest(
            job_id=f"health-{token}",
            image=params.health_check_image,
            command=("sh", "-c", f'echo {token} > "$MESH_OUTPUTS/health"'),
            output_dir=out,
            cpus=0.5,
            memory_mb=32,
            timeout_s=params.health_check_timeout_s,
            pids_limit=16,
        )
        res = await executor.run(req)
        if res.status != "succeeded":
            return res
        try:
            got = (out / "health").read_text().strip()
        except OSError as e:
            got = f"<unreadable: {e}>"
        if got != token:
            return ExecResult(
                status="error",
                exit_code=res.exit_code,
                duration_s=res.duration_s,
                reason=f"health job output mismatch: {got!r}",
            )
        return res
