"""Choosing the node's executor.

Rules:
- ``"docker"``: a DockerExecutor or a clear ``ExecutorUnavailable``.
- ``"process"``: a ProcessExecutor, which itself refuses unless
  ``params.process_executor_enabled``.
- ``"auto"``: Docker if an engine answers within
  ``params.docker_connect_timeout_s``; else the process executor only if the
  operator opted in; else ``ExecutorUnavailable`` saying what was tried.
- The returned reason is one human sentence for logs and ``mesh status``.
"""

from __future__ import annotations

import os
from typing import Literal

from .base import ExecParams, Executor, ExecutorUnavailable

ExecutorKind = Literal["auto", "docker", "process"]


def probe_docker(params: ExecParams) -> str | None:
    """None if an engine answers (DOCKER_HOST or the default socket), else why not."""
    import docker
    import docker.errors

    try:
        client = docker.APIClient(
            **docker.utils.kwargs_from_env(),
            version="auto",
            timeout=params.docker_connect_timeout_s,
        )
    except docker.errors.DockerException as e:
        return f"no Docker engine at {_where()}: {e}"
    try:
        client.ping()
        return None
    except Exception as e:
        return f"Docker engine at {_where()} did not answer: {e}"
    finally:
        client.close()


def make_executor(kind: ExecutorKind, params: ExecParams, node_label: str) -> tuple[Executor, str]:
    """Build the executor; return it with the reason for the choice."""
    if kind not in ("auto", "docker", "process"):
        raise ValueError(f"unknown executor kind {kind!r}")
    if kind == "process":
        from .process_exec import ProcessExecutor

        ex = ProcessExecutor(params, node_label)
        return ex, "process executor requested (UNSANDBOXED)"
    why_not = probe_docker(params)
    if why_not is None:
        from .docker_exec import DockerExecutor

        dex = DockerExecutor(params, node_label)
        label = "requested" if kind == "docker" else "auto: engine answered"
        return dex, f"docker executor ({label}): {dex.describe()}"
    if kind == "docker":
        raise ExecutorUnavailable(f"docker executor requested but {why_not}")
    if params.process_executor_enabled:
        from .process_exec import ProcessExecutor

        return ProcessExecutor(params, node_label), (
            f"auto: {why_not}; falling back to the UNSANDBOXED process executor (opted in)"
        )
    raise ExecutorUnavailable(
        f"no executor available: {why_not}. Start a Docker engine (or set DOCKER_HOST), "
        "or opt in to the unsandboxed process executor (process_executor_enabled=True)."
    )


def _where() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
