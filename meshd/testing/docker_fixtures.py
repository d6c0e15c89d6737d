"""pytest plugin: fixtures for tests that need a real Docker engine.

Register once in ``tests/conftest.py``::

    pytest_plugins = ["meshd.testing.docker_fixtures"]

Rules:
- No engine reachable (``DOCKER_HOST`` or the default socket) or the test
  image missing -> the test is *skipped* with a reason that says how to get
  one (``eval "$(tests/docker_env.sh start)"``); never a failure, never a mock.
- Every test gets its own node label (``t-<random>``), so tests cannot reap or
  see each other's containers. After each test the fixture asserts that no
  container with that label is left (and removes any, so one leak does not
  cascade) and no per-job cgroup dir; at session end it checks that no
  test-labelled container exists.
- Fixtures are synchronous or trio-async; pytest-trio (trio_mode) runs them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

TEST_IMAGE = "meshd/busybox:1"
TEST_LABEL_PREFIX = "t-"
# Test runs poll outputs more often than production (ExecParams default 0.5 s)
# so output-limit tests finish quickly.
TEST_OUTPUT_POLL_INTERVAL_S = 0.1
START_HINT = 'start one with: eval "$(tests/docker_env.sh start)"'


def _engine_problem() -> str | None:
    try:
        import docker
        import docker.errors
    except ImportError as e:  # pragma: no cover - the SDK is a dependency
        return f"docker SDK not importable: {e}"
    try:
        api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=3)
    except docker.errors.DockerException as e:
        return f"no Docker engine reachable ({e}); {START_HINT}"
    try:
        api.ping()
        api.inspect_image(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        return f"test image {TEST_IMAGE} missing; build it with tests/images/build.sh"
    except Exception as e:
        return f"no Docker engine reachable ({e}); {START_HINT}"
    finally:
        api.close()
    return None


@pytest.fixture(scope="session")
def docker_api() -> Iterator[Any]:
    """A low-level ``docker.APIClient`` to the test engine (skips if none)."""
    problem = _engine_problem()
    if problem is not None:
        pytest.skip(problem)
    import docker

    api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=30)
    yield api
    leftovers = [
        c
        for c in api.containers(all=True, filters={"label": "meshd.node"})
        if c["Labels"].get("meshd.node", "").startswith(TEST_LABEL_PREFIX)
    ]
    for c in leftovers:
        api.remove_container(c["Id"], force=True)
    api.close()
    assert not leftovers, (
        f"containers left after the test session: {[c['Names'] for c in leftovers]}"
    )


def labelled_containers(api: Any, node_label: str) -> list[dict[str, Any]]:
    """Containers (any state) that carry ``meshd.node=<node_label>``."""
    return list(api.containers(all=True, filters={"label": f"meshd.node={node_label}"}))


@pytest.fixture
def node_label() -> str:
    return f"{TEST_LABEL_PREFIX}{secrets.token_hex(4)}"


@pytest.fixture
def test_exec_params() -> Any:
    from meshd.exec import ExecParams

    return ExecParams(output_poll_interval_s=TEST_OUTPUT_POLL_INTERVAL_S)


@pytest.fixture
def make_docker_executor(
    docker_api: Any, node_label: str, test_exec_params: Any
) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_docker_executor(**param_overrides)`` -> DockerExecutor with this test's label."""
    from meshd.exec.docker_exec import DockerExecutor

    made: list[DockerExecutor] = []

    def make(**overrides: Any) -> DockerExecutor:
        ex = DockerExecutor(replace(test_exec_params, **overrides), node_label)
        made.append(ex)
        return ex

    yield make
    left = labelled_containers(docker_api, node_label)
    for c in left:
        docker_api.remove_container(c["Id"], force=True)
    cgroups_left = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/meshd-{node_label}")]
    for ex in made:
        ex.close()
    assert not left, f"test left containers behind: {[c['Names'] for c in left]}"
    assert not cgroups_left, f"test left cgroup dirs behind: {cgroups_left}"


@pytest.fixture
def docker_executor(make_docker_executor: Callable[..., Any]) -> Any:
    """A DockerExecutor with the test defaults (network off, local images only)."""
    return make_docker_executor()
