"""Choosing the node's executor.

Rules:
- ``"docker"``: a DockerExecutor or a clear ``ExecutorUnavailable``.
- ``"process"``: a ProcessExecutor, which itself refuses unless
  ``params.process_executor_enabled``.
- ``"auto"``: Docker if an engine answers within
  ``params.docker_connect_timeout_s``; else the process executor only if the
  operator opted in; else a :class:`~meshd.exec.none_exec.NoExecutor`: the
  node joins as a *client* (submits, verifies, runs nothing), with the reason.
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
    from .none_exec import NoExecutor

    why = (
        f"{why_not}; to run jobs, start a Docker engine (or set DOCKER_HOST), or opt in "
        "to the unsandboxed process executor with `allow_process_executor = true` in config.toml"
    )
    return NoExecutor(why), f"client: no executor ({why})"


def _where() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
