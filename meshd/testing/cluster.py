"""An in-process cluster of real daemons, for tests.

Each node is a real :class:`meshd.runtime.daemon.Daemon`: real libp2p hosts on
127.0.0.1, a real LevelDB event log and blob store in a temp dir, and a real
executor (the process executor by default; Docker where asked and reachable).
Only the *scheduling* is shared: all daemons run in one trio run.

Faults, as one-liners (after etcd-raft's test network): :meth:`Cluster.kill`
(cancel a node's task: its listener closes, its log is closed as on a crash
of the process, nothing is flushed that was not already durable),
:meth:`Cluster.stop` (a clean stop: the leave notice first, then as ``kill``),
:meth:`Cluster.restart` (same data dir and key), :meth:`Cluster.partition`
(daemons drop all traffic with the other group) and :meth:`Cluster.heal`;
misbehaving executors (liars, noise) through ``wrap_executor`` (see
:mod:`meshd.testing.faults`). Each daemon's host is a
:class:`meshd.testing.partition.PartitionedHost`, the one place partitions
are made: the daemon itself has no test hooks.

Usage (pytest-trio)::

    async def test_x(tmp_path, nursery):
        async with Cluster.started(nursery, tmp_path, n=5) as c:
            job_id = await c.submit(0, {"image": "meshd/busybox:1", "command": ["true"]})
            await c.wait_job(0, job_id, "succeeded")
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshd.config import apply_overrides, init_node, load_node
from meshd.core.events import JobSubmitted, Tick
from meshd.core.jobspec import parse_job_spec
from meshd.core.params import CoreParams
from meshd.exec.base import ExecParams, Executor
from meshd.net.params import NetParams
from meshd.runtime.clock import Clock
from meshd.runtime.daemon import Daemon, RuntimeParams, make_executor

from .partition import PartitionedHost

FAST_CORE = CoreParams(
    bid_window_ms=500,
    advert_interval_ms=500,
    advert_ttl_ms=4_000,
    advert_rate_budget=1_000.0,
    lease_ms=4_000,
    heartbeat_interval_ms=500,
    result_resend_ms=500,
    reoffer_base_ms=300,
    reoffer_max_ms=2_000,
    self_run_grace_ms=2_000,
)
"""Protocol timings shortened for tests (same rules, smaller numbers)."""


@dataclass
class Member:
    index: int
    data_dir: Path
    daemon: Daemon | None = None
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None


class Cluster:
    def __init__(
        self,
        nursery: trio.Nursery,
        root: Path,
        n: int,
        *,
        executor: str = "process",
        core_params: CoreParams = FAST_CORE,
        net_params: NetParams | None = None,
        configure: Callable[[int, dict[str, Any]], None] | None = None,
        wrap_executor: Callable[[int, Executor], Executor] | None = None,
        clock: Clock | None = None,
        runtime_params: RuntimeParams | None = None,
    ) -> None:
        self.nursery = nursery
        self.root = root
        self.executor = executor
        self.core_params = core_params
        self.net_params = net_params or NetParams(
            gossip_heartbeat_s=0.2, peer_exchange_interval_s=0.5
        )
        self.configure = configure
        self.wrap_executor = wrap_executor
        """Fault injection: ``wrap_executor(i, executor)`` replaces node i's executor
        when its daemon is built (see :mod:`meshd.testing.faults`)."""
        self.clock = clock
        """The clock every daemon reads (None: each its own ``SystemClock``); one
        :class:`meshd.testing.clock.SkewedClock` lets a test step the wall clock
        of the whole cluster, as of one machine."""
        self.runtime_params = dataclasses.replace(
            runtime_params or RuntimeParams(), capabilities_refresh_s=1.0
        )
        """The shell's bounds of every daemon (capabilities refreshed each second)."""
        self.members = [Member(i, root / f"node{i}") for i in range(n)]

    @classmethod
    @asynccontextmanager
    async def started(
        cls, nursery: trio.Nursery, root: Path, n: int, **kw: Any
    ) -> AsyncIterator[Cluster]:
        c = cls(nursery, root, n, **kw)
        try:
            await c.start_all()
            yield c
        finally:
            await c.stop_all()

    # ------------------------------------------------------------ membership

    def daemon(self, i: int) -> Daemon:
        d = self.members[i].daemon
        assert d is not None, f"node {i} is not running"
        return d

    def peer_id(self, i: int) -> str:
        return self.daemon(i).identity.peer_id

    async def start_all(self) -> None:
        for m in self.members:
            init_node(m.data_dir, listen="/ip4/127.0.0.1/tcp/0")
        await self.start(0)
        async with trio.open_nursery() as n:
            for m in self.members[1:]:
                n.start_soon(self.start, m.index)
        await self.wait_mesh()

    async def start(self, i: int) -> Daemon:
        m = self.members[i]
        config, identity = load_node(m.data_dir)
        # Bootstrap from any running member (a restarted node comes back on a new
        # port, so the others cannot dial it: it must dial them).
        others = [
            self.daemon(j).host.listen_addrs[0]
            for j in self.running()
            if j != i and self.daemon(j).ready.is_set()
        ]
        overrides: dict[str, Any] = {
            "executor": self.executor,
            "allow_process_executor": True,
            "bootstrap": tuple(others[:3]),
        }
        if self.configure is not None:
            self.configure(i, overrides)
        config = apply_overrides(config, overrides)  # validated, as `meshd start` flags are
        executor, reason, exec_params = make_executor(
            config, identity, ExecParams(health_check_timeout_s=30.0)
        )
        if self.wrap_executor is not None:
            executor = self.wrap_executor(i, executor)
        host = PartitionedHost(
            identity, self.net_params, list(config.listen), list(config.bootstrap)
        )
        daemon = Daemon(
            m.data_dir,
            config,
            identity,
            executor=executor,
            executor_reason=reason,
            exec_params=exec_params,
            measure_score=False,
            core_params=self.core_params,
            net_params=self.net_params,
            runtime_params=self.runtime_params,
            host=host,
            clock=self.clock,
        )
        m.daemon, m.done, m.scope = daemon, trio.Event(), trio.CancelScope()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            assert m.scope is not None and m.done is not None
            try:
                with m.scope:
                    await daemon.run(task_status=task_status)
            finally:
                m.done.set()

        await self.nursery.start(run)
        return daemon

    async def kill(self, i: int) -> None:
        m = self.members[i]
        assert m.scope is not None and m.done is not None
        m.scope.cancel()
        await m.done.wait()
        m.daemon = None

    async def stop(self, i: int) -> None:
        """A clean stop, as on SIGTERM: the daemon publishes its leave notice
        (``Daemon.leave``), then its task is cancelled as by :meth:`kill`."""
        await self.daemon(i).leave()
        await self.kill(i)

    async def restart(self, i: int) -> Daemon:
        if self.members[i].daemon is not None:
            await self.kill(i)
        return await self.start(i)

    async def stop_all(self) -> None:
        for m in self.members:
            if m.daemon is not None:
                await self.kill(m.index)

    def running(self) -> list[int]:
        return [m.index for m in self.members if m.daemon is not None]

    # ------------------------------------------------------------ faults

    def host(self, i: int) -> PartitionedHost:
        host = self.daemon(i).host
        assert isinstance(host, PartitionedHost)
        return host

    def partition(self, group_a: list[int], group_b: list[int]) -> None:
        """Drop all traffic between the two groups (both directions; see
        :mod:`meshd.testing.partition`)."""
        ids_a = {self.peer_id(i) for i in group_a}
        ids_b = {self.peer_id(i) for i in group_b}
        for i in group_a:
            self.host(i).dropped |= ids_b
        for i in group_b:
            self.host(i).dropped |= ids_a

    def heal(self) -> None:
        for i in self.running():
            self.host(i).dropped.clear()

    # ------------------------------------------------------------ waiting and jobs

    async def wait_for(
        self, pred: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition"
    ) -> None:
        with trio.move_on_after(timeout_s):
            while not pred():
                await trio.sleep(0.05)
            return
        raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")

    def sees(self, i: int, j: int) -> bool:
        node = self.daemon(i).node
        entry = node.peers.get(self.peer_id(j)) if node is not None else None
        return entry is not None and node is not None and entry.expires_ms > node.now_ms

    def seen_warm(self, i: int, j: int) -> bool:
        """Node i holds a live advert of node j that says j is warm."""
        node = self.daemon(i).node
        entry = node.peers.get(self.peer_id(j)) if node is not None else None
        return self.sees(i, j) and entry is not None and entry.advert.warm

    async def wait_mesh(self, timeout_s: float = 30.0) -> None:
        """Until every running node holds a live advert of every other, and
        every worker is warm (a client, with no executor, never is) in its own
        view and in the adverts the others hold (a worker's first adverts may
        say cold: an origin that holds only those runs its job itself, §8.5)."""

        def formed() -> bool:
            idx = self.running()
            workers = {j for j in idx if self.daemon(j).executor.name != "none"}
            for i in idx:
                node = self.daemon(i).node
                if node is None or (i in workers and not node.worker.warm):
                    return False
                for j in idx:
                    if i != j and not (self.seen_warm(i, j) if j in workers else self.sees(i, j)):
                        return False
            return True

        await self.wait_for(formed, timeout_s, "the mesh to form")

    async def submit(self, i: int, spec: dict[str, Any], job_id: str | None = None) -> str:
        """Submit ``spec`` at node i, as ``mesh submit`` would. On a cluster of
        process executors a spec that names no runtime asks for ``process``
        (those workers take nothing else; specs/JOB.md §1)."""
        import secrets

        parsed = parse_job_spec(with_runtime(spec, self.executor))
        job_id = job_id or f"t-{secrets.token_hex(6)}"
        await self.daemon(i).submit(JobSubmitted(parsed, job_id))
        return job_id

    def job(self, i: int, job_id: str) -> Any:
        node = self.daemon(i).node
        assert node is not None
        return node.origin.jobs.get(job_id)

    async def wait_job(self, i: int, job_id: str, *states: str, timeout_s: float = 60.0) -> Any:
        """Until node i's job is in one of ``states`` (default: terminal) and the
        records of the step that put it there are in node i's log."""
        states = states or ("succeeded", "failed", "cancelled")
        await self.wait_for(
            lambda: (j := self.job(i, job_id)) is not None and j.state in states,
            timeout_s,
            f"job {job_id} to reach {states}",
        )
        await self.wait_durable(i)
        return self.job(i, job_id)

    async def wait_durable(self, i: int, timeout_s: float = 10.0) -> None:
        """Until every record node i's core has produced so far is in its log.

        The core's in-memory state runs one group commit ahead of the log; the
        daemon's loop handles inputs in order, so once an input queued now has
        been processed (``Daemon.submit``), every earlier batch is durable."""
        with trio.move_on_after(timeout_s):
            await self.daemon(i).submit(Tick())
            return
        raise TimeoutError(f"node {i} did not process an input within {timeout_s}s")


def cluster_fixture(n: int, **kw: Any) -> Any:
    """A pytest-trio fixture factory: ``cluster3 = cluster_fixture(3)`` in a test
    module gives tests a started :class:`Cluster` of ``n`` nodes, stopped after."""
    import pytest

    @pytest.fixture
    async def fixture(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Cluster]:
        async with Cluster.started(nursery, tmp_path, n, **kw) as c:
            yield c

    return fixture


def with_runtime(spec: dict[str, Any], executor: str) -> dict[str, Any]:
    """``spec`` asking for the ``process`` runtime when the workers it is meant
    for run the process executor and it names no runtime itself."""
    requirements = dict(spec.get("requirements") or {})
    if executor != "process" or "runtime" in requirements:
        return spec
    return {**spec, "requirements": {**requirements, "runtime": "process"}}
