"""Whose fault a failed run is, as the shell's execution part reports it
(specs/PROTOCOL.md §7.6, §10): the job's (its exit, its timeout, too much
output, an input URI it named that cannot be fetched) or the worker's (an input
blob from the origin that does not arrive, the executor failing)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from meshd.core.events import ExecutionFinished, FetchInputs, InputsFetched, StartExecution
from meshd.core.jobspec import parse_job_spec
from meshd.exec import ExecParams
from meshd.exec.base import ExecResult, error_result
from meshd.exec.process_exec import ProcessExecutor
from meshd.runtime.execution import Executions
from meshd.store.blobs import BlobParams, BlobStore


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executions(tmp_path: Path, fed: list[Any], *, max_blob: int = 1 << 30) -> Executions:
    async def fetch_blob(peer: str, digest: str) -> None:
        raise ConnectionError(f"{peer} did not serve {digest}")

    async def feed(inp: Any) -> None:
        fed.append(inp)

    pex = ProcessExecutor(ExecParams(process_executor_enabled=True), "t-faults")
    blobs = BlobStore(tmp_path / "blobs", BlobParams(max_blob_bytes=max_blob))
    return Executions(
        tmp_path / "work",
        pex,
        blobs,
        fetch_blob=fetch_blob,
        ensure_image=no_image_travels,
        feed=feed,
        feed_nowait=lambda inp: True,
        allow_network=False,
        wall_ms=lambda: 0,
    )


async def no_image_travels(origin: str, spec: Any, holders: tuple[str, ...]) -> None:
    return None


def spec(**extra: Any) -> Any:
    return parse_job_spec({"job_id": "job-faults-1", "image": "x", "command": ["true"], **extra})


@pytest.mark.parametrize(
    ("inputs", "fault"),
    [
        ([{"path": "a", "uri": "http://127.0.0.1:{port}/missing"}], "job"),
        ([{"path": "a", "digest": "sha256:" + "0" * 64}], "worker"),
    ],
    ids=["uri_named_by_the_submitter", "blob_from_the_origin"],
)
async def test_an_input_that_cannot_be_fetched_names_whose_fault_it_is(
    tmp_path: Path, inputs: list[dict[str, str]], fault: str
) -> None:
    port = closed_port()
    refs = [{k: v.format(port=port) for k, v in i.items()} for i in inputs]
    fed: list[Any] = []
    ex = executions(tmp_path, fed)
    await ex.fetch_inputs(FetchInputs("job-faults-1", 1, 0, "origin-peer", spec(inputs=refs)))
    (inp,) = fed
    assert isinstance(inp, InputsFetched) and not inp.ok
    assert inp.fault == fault, inp.error


@pytest.mark.parametrize(
    ("command", "status", "fault"),
    [
        ("exit 3", "failed", "job"),
        ("sleep 5", "timeout", "job"),
        ("head -c 65536 /dev/zero > $MESH_OUTPUTS/big", "output_limit", "job"),
        ("true", "succeeded", ""),
    ],
)
async def test_a_finished_run_says_whose_fault_it_is(
    tmp_path: Path, command: str, status: str, fault: str
) -> None:
    fed: list[Any] = []
    ex = executions(tmp_path, fed, max_blob=16384)  # the output archive may hold 16 KiB
    job = spec(command=["sh", "-c", command], timeout_s=1)
    await ex.execute(StartExecution("job-faults-1", 1, 0, job, 0.5))
    (fin,) = fed
    assert isinstance(fin, ExecutionFinished)
    assert (fin.status, fin.fault) == (status, fault), fin.reason


def test_the_executor_result_derives_the_fault_from_the_status() -> None:
    assert error_result("engine gone").fault == "worker"
    assert ExecResult(status="oom", exit_code=137, reason="oom", duration_s=1).fault == "job"
    assert ExecResult(status="succeeded", exit_code=0, reason="", duration_s=1).fault == ""
    stated = ExecResult(status="error", exit_code=None, reason="", duration_s=0, fault="job")
    assert stated.fault == "job"
