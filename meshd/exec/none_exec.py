"""The client role's executor: it runs nothing.

A node with no usable executor (no Docker engine reachable and the process
executor not opted in) still joins the mesh as a *client*: it submits jobs,
verifies results, keeps its log and credits, and advertises that it runs no
jobs (no runtime, no capacity). Its health check always fails with the reason
it has no executor, so the node stays cold and never bids; the reason names
what would make it a worker.
"""

from __future__ import annotations

from .base import ExecRequest, ExecResult, Executor, LogCallback, error_result


class NoExecutor(Executor):
    """An executor for a client node: declines everything, runs nothing."""

    name = "none"
    sandboxed = False

    def __init__(self, why: str) -> None:
        self.why = why
        """Why the node has no executor, and what would give it one."""

    def decline_reason(
        self,
        *,
        image: str,
        gpus: int,
        gpu_min_memory_mb: int,
        network: bool,
        cpus: float,
        memory_mb: int,
    ) -> str | None:
        return f"this node is a client and runs no jobs ({self.why})"

    async def run(self, req: ExecRequest, on_log: LogCallback | None = None) -> ExecResult:
        return error_result(f"this node is a client and runs no jobs ({self.why})")

    async def cancel(self, job_id: str) -> None:
        return None

    async def reap_orphans(self) -> int:
        return 0

    async def health_check(self) -> ExecResult:
        return error_result(f"client node, runs no jobs: {self.why}")
