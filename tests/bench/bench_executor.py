"""Benchmark: a trivial job through DockerExecutor vs a bare ``docker run --rm``.

    eval "$(tests/docker_env.sh start)"
    python tests/bench/bench_executor.py [--runs 20] [--image meshd/busybox:1]

Both sides run the same image and command (``true``) on the same engine
(``DOCKER_HOST``), interleaved run by run so drift affects both alike, after
a warm-up. The baseline is the CLI with ``--network none`` (the executor's
network setting, so the comparison is of the executor's own overhead: sandbox
options, labels, log streaming, cgroup accounting, output check, removal);
the CLI with default (bridge) networking and a minimal raw-SDK sequence
(create/start/wait/remove, no sandbox options) are measured too, for
reference -- the latter isolates what the executor itself adds.
Figures: median and p90 wall-clock per job and the ratio of medians
(target <= 1.2x). Not part of the pass/fail test run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import trio

from meshd.exec import ExecParams, ExecRequest
from meshd.exec.docker_exec import DockerExecutor

TARGET_RATIO = 1.2


async def time_executor(ex: DockerExecutor, image: str, out: Path, i: int) -> float:
    t0 = time.perf_counter()
    res = await ex.run(
        ExecRequest(
            job_id=f"bench-{i}",
            image=image,
            command=("true",),
            output_dir=out / str(i),
            memory_mb=64,
        )
    )
    dt = time.perf_counter() - t0
    if res.status != "succeeded":
        raise SystemExit(f"executor run failed: {res}")
    return dt


async def time_raw_sdk(api, image: str) -> float:
    """Minimal SDK sequence, no sandbox options: create, start, wait, remove.

    Networking as the executor sets it (``NetworkDisabled`` + mode none), so
    this isolates the executor's own overhead."""

    def once() -> None:
        c = api.create_container(
            image,
            ["true"],
            network_disabled=True,
            host_config=api.create_host_config(network_mode="none"),
        )
        api.start(c["Id"])
        api.wait(c["Id"])
        api.remove_container(c["Id"], force=True)

    t0 = time.perf_counter()
    await trio.to_thread.run_sync(once)
    return time.perf_counter() - t0


async def time_cli(image: str, extra: list[str]) -> float:
    t0 = time.perf_counter()
    await trio.run_process(
        ["docker", "run", "--rm", *extra, image, "true"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def summary(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    return f"{name:<34} median {statistics.median(xs) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   (n={len(xs)})"


async def main(runs: int, image: str, warmup: int) -> int:
    ex = DockerExecutor(ExecParams(), "bench")
    await ex.reap_orphans()
    ours: list[float] = []
    cli_none: list[float] = []
    cli_default: list[float] = []
    raw: list[float] = []
    api = docker.APIClient(**docker.utils.kwargs_from_env(), version="auto")
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        out = Path(tmp)
        for i in range(-warmup, runs):
            a = await time_executor(ex, image, out, i + warmup)
            b = await time_cli(image, ["--network", "none"])
            c = await time_cli(image, [])
            d = await time_raw_sdk(api, image)
            if i >= 0:
                ours.append(a)
                cli_none.append(b)
                cli_default.append(c)
                raw.append(d)
    ex.close()
    ratio = statistics.median(ours) / statistics.median(cli_none)
    print(f"engine {ex.engine_version} at {ex.base_url}; image {image}; command: true")
    print(summary("DockerExecutor.run", ours))
    print(summary("docker run --rm --network none", cli_none))
    print(summary("docker run --rm (default network)", cli_default))
    print(summary("raw SDK create/start/wait/remove", raw))
    print(
        "(the executor sets NetworkDisabled, which skips the engine's libnetwork sandbox;\n"
        " `docker run --network none` cannot, hence the CLI's larger figures)"
    )
    print(
        f"ratio executor / bare CLI (same network): {ratio:.2f}x  "
        f"(target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'})"
    )
    print(
        f"ratio executor / bare CLI (default network): "
        f"{statistics.median(ours) / statistics.median(cli_default):.2f}x"
    )
    print(
        f"ratio executor / raw SDK sequence (sandbox + logs + accounting overhead): "
        f"{statistics.median(ours) / statistics.median(raw):.2f}x"
    )
    api.close()
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--image", default="meshd/busybox:1")
    args = ap.parse_args()
    sys.exit(trio.run(main, args.runs, args.image, args.warmup))
