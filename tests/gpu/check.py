"""A GPU check for a node with an NVIDIA GPU (run by ``tests/gpu/check.sh``).

It shows what meshd itself sees, through its own code, step by step:

1. NVML discovery (``meshd.exec.gpu.discover_gpus``) against ``nvidia-smi -L``;
2. the tier the node would advertise (``meshd.exec.score.tier_for``) and the
   determinism class a GPU job would run in here
   (``meshd.core.placement.determinism_class``);
3. the measured GPU score (``meshd.exec.score.measure_gpu_gflops``: CuPy or
   PyTorch with CUDA; None when neither works);
4. where a Docker engine with the NVIDIA runtime answers, a job container run
   by meshd's ``DockerExecutor`` (the executor a worker's ``StartExecution``
   uses: sandbox, GPU allocation by UUID) that runs ``nvidia-smi -L`` and must
   list exactly the GPU it was given.

Each step ends as ``ok``, ``not checked`` (with why: no GPU, no backend, no
engine, no runtime, no image) or ``FAILED``. The exit status is 1 only if some
step FAILED, i.e. something that is there does not work as meshd expects.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OK, SKIP, FAIL = "ok", "not checked", "FAILED"
outcomes: list[tuple[str, str, str]] = []


def note(step: str, outcome: str, detail: str) -> None:
    outcomes.append((step, outcome, detail))
    print(f"[{outcome}] {step}: {detail}", flush=True)


def nvidia_smi_gpus() -> list[str] | None:
    """``nvidia-smi -L`` lines, or None when the tool is absent or fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [line for line in out.stdout.splitlines() if line.startswith("GPU ")]


def main() -> int:
    try:
        from meshd.core.placement import determinism_class
        from meshd.exec.gpu import discover_gpus
        from meshd.exec.score import ScoreParams, measure_gpu_gflops, tier_for
    except Exception as exc:  # the check cannot even start
        note("import meshd", FAIL, f"{exc.__class__.__name__}: {exc}")
        return summary()

    # 1. discovery
    found = discover_gpus()
    smi = nvidia_smi_gpus()
    if found.devices:
        for d in found.devices:
            print(
                f"    GPU {d.index}: {d.name}, {d.memory_total_mb} MiB, "
                f"uuid {d.uuid}, driver {d.driver_version}"
            )
        if smi is not None and len(smi) != len(found.devices):
            note(
                "NVML discovery",
                FAIL,
                f"NVML found {len(found.devices)} GPU(s), nvidia-smi lists {len(smi)}",
            )
        else:
            note("NVML discovery", OK, f"{len(found.devices)} GPU(s) found by NVML")
    elif smi:
        note("NVML discovery", FAIL, f"nvidia-smi lists {len(smi)} GPU(s) but {found.reason}")
    else:
        note("NVML discovery", SKIP, f"no GPU found by NVML ({found.reason})")

    # 2. advertised tier and determinism class
    tier = tier_for(found.devices)
    models = tuple(d.name for d in found.devices)
    driver = found.devices[0].driver_version if found.devices else ""
    dclass = determinism_class(("docker",), models, driver, uses_gpu=True)
    if found.devices and tier == "cpu":
        note("advertised tier", FAIL, "GPUs found but the tier is 'cpu'")
    elif found.devices:
        note("advertised tier", OK, f"{tier!r}; a GPU job runs here in determinism class {dclass}")
    else:
        note("advertised tier", OK, f"{tier!r} (no GPU: GPU jobs are declined)")

    # 3. GPU score
    if not found.devices:
        note("GPU score", SKIP, "no GPU found by NVML, so no GPU score is measured")
    else:
        gflops = measure_gpu_gflops(ScoreParams())
        if gflops is None:
            note(
                "GPU score",
                SKIP,
                "measure_gpu_gflops returned None: neither CuPy nor PyTorch with CUDA "
                "works in this Python (the node advertises gpu_gflops=None)",
            )
        else:
            note("GPU score", OK, f"{gflops:.1f} GFLOPS (fp32 matmul, first GPU)")

    # 4. a job container that sees its GPU
    container_check(found)
    return summary()


def container_check(found: object) -> None:
    from meshd.exec.base import ExecParams, ExecRequest
    from meshd.exec.factory import probe_docker

    step = "job container sees its GPU"
    devices = getattr(found, "devices", ())
    params = ExecParams(pull_images=True, run_as_user="65534:65534")
    why_not = probe_docker(params)
    if not devices:
        engine = "no Docker engine" if why_not else "a Docker engine answers"
        note(step, SKIP, f"no GPU found by NVML ({engine})")
        return
    if why_not is not None:
        note(step, SKIP, why_not)
        return
    import trio

    from meshd.exec.docker_exec import DockerExecutor

    ex = DockerExecutor(params, "meshd-gpu-check", gpus=found)  # type: ignore[arg-type]
    try:
        if not ex.gpu_runtime:
            note(step, SKIP, "the Docker engine has no NVIDIA runtime (docker info: Runtimes)")
            return
        image = os.environ.get("MESHD_GPU_CHECK_IMAGE", "ubuntu:22.04")
        with tempfile.TemporaryDirectory(prefix="meshd-gpu-check-") as tmp:
            out = Path(tmp) / "out"
            out.mkdir()
            req = ExecRequest(
                job_id="gpu-check-0001",
                image=image,
                command=("nvidia-smi", "-L"),
                output_dir=out,
                gpus=1,
                memory_mb=512,
                timeout_s=120,
            )
            res = trio.run(ex.run, req)
        log = res.log_tail.decode(errors="replace")
        print("    container log:", log.strip().replace("\n", "\n                   "))
        if res.reason.startswith("declined: image"):
            note(step, SKIP, f"image {image} not present and could not be pulled")
        elif not res.ok:
            note(step, FAIL, f"job {res.status}: {res.reason}")
        elif not res.gpu_devices or any(u not in log for u in res.gpu_devices):
            note(step, FAIL, f"given {res.gpu_devices}, the container listed: {log.strip()!r}")
        elif log.count("GPU ") != len(res.gpu_devices):
            note(step, FAIL, f"the container sees more GPUs than it was given: {log.strip()!r}")
        else:
            note(step, OK, f"{image} ran by DockerExecutor lists exactly {res.gpu_devices[0]}")
    finally:
        ex.close()


def summary() -> int:
    print("\nsummary:")
    for step, outcome, detail in outcomes:
        print(f"  {outcome:>11}  {step}: {detail}")
    failed = [s for s, o, _ in outcomes if o == FAIL]
    skipped = [s for s, o, _ in outcomes if o == SKIP]
    print(
        f"  => {len(outcomes) - len(failed) - len(skipped)} ok, "
        f"{len(skipped)} not checked, {len(failed)} failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
