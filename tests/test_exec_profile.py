"""Hardware profile, measured compute score, tier rule, parameter validation, output/log caps."""

from __future__ import annotations

import json
import os
import statistics
import sys

import pytest

from meshd.exec import (
    ExecParams,
    ExecRequest,
    ExecutorUnavailable,
    InvalidRequest,
    make_executor,
    measure_compute_score,
    profile_hardware,
    tier_for,
)
from meshd.exec.gpu import GpuDevice
from meshd.exec.outputs import LogSink, discard_outputs, measure_dir, over_cap
from meshd.exec.score import ScoreParams, measure_cpu, parse_child_output, summarise


def test_profile_is_sane_and_serialisable(tmp_path):
    p = profile_hardware(tmp_path / "not-yet-created")
    assert p.cpu_logical >= 1 and p.cpu_logical >= p.cpu_physical >= 0
    assert p.ram_total_bytes >= p.ram_available_bytes > 0
    assert p.disk_total_bytes >= p.disk_free_bytes > 0
    assert p.gpus == () and p.gpu_reason.startswith("NVML")
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["gpus"] == []


def test_score_is_measured_and_cpu_tier_here():
    s = measure_compute_score((), ScoreParams(matrix_n=256, runs=50, min_runs=3, budget_s=0.0))
    assert 0.05 < s.cpu_gflops < 100_000
    # Past the budget from the start: min_runs are timed, then the child stops.
    assert s.cpu_method == "numpy, cpu time" and s.cpu_runs == 3
    assert s.cpu_spread is not None and s.cpu_spread >= 1.0
    assert s.cpu_threads == 1
    assert s.gpu_gflops is None  # no GPU, no CuPy/torch: skipped cleanly
    assert s.tier == "cpu"
    d = s.to_dict()
    assert d["tier"] == "cpu" and d["cpu_spread"] == round(s.cpu_spread, 3)


def test_a_gpu_nvml_reports_but_nothing_can_drive_is_scored_none_not_an_error():
    # NVML may list a device where neither CuPy nor PyTorch with CUDA works
    # (as on this machine): the GPU score is absent, the CPU score still measured,
    # and GPU jobs are then priced at the CPU score (core.placement.job_gflops).
    h200 = GpuDevice(index=0, uuid="GPU-0", name="NVIDIA H200", memory_total_mb=143_771)
    s = measure_compute_score((h200,), ScoreParams(matrix_n=128, runs=3, gpu_runs=2))
    assert s.gpu_gflops is None and s.tier == "datacenter-gpu"
    assert s.cpu_method == "numpy, cpu time" and s.cpu_gflops > 0


def test_score_is_the_median_run_and_the_spread_is_slowest_over_fastest():
    # One disturbed run (2) and one lucky one (90) move neither the median.
    assert summarise([50.0, 2.0, 52.0, 90.0, 51.0]) == (51.0, 45.0)


def test_the_child_runs_with_the_fixed_thread_count():
    assert measure_cpu(ScoreParams(matrix_n=64, runs=3, threads=3)).threads == 3


def test_cpu_runs_are_fixed_count_and_the_median_of_them():
    m = measure_cpu(ScoreParams(matrix_n=128, reps_per_run=1, runs=6, min_runs=6, budget_s=0.0))
    assert m.method == "numpy, cpu time" and len(m.runs) == 6
    assert m.gflops == statistics.median(m.runs)
    assert m.spread == max(m.runs) / min(m.runs)


def test_the_timing_parameter_picks_the_cpu_or_the_wall_runs():
    out = json.dumps({"wall": [10.0, 20.0, 30.0], "cpu": [49.0, 50.0, 51.0]}).encode()
    cpu = parse_child_output(b"noise\n" + out, 0, ScoreParams())
    assert (cpu.gflops, cpu.runs, cpu.method) == (50.0, (49.0, 50.0, 51.0), "numpy, cpu time")
    wall = parse_child_output(out, 0, ScoreParams(timing="wall"))
    assert (wall.gflops, wall.spread, wall.method) == (20.0, 3.0, "numpy, wall time")


@pytest.mark.parametrize(
    "stdout",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"cpu": []}',
        b'{"cpu": [50.0, "x"]}',
        b'{"cpu": [50.0, true]}',
        b'{"cpu": [50.0, -1.0]}',
        b'{"cpu": [50.0, Infinity]}',
        b'{"cpu": [50.0, NaN]}',
        b'{"wall": [50.0]}',
    ],
)
def test_a_garbled_child_output_falls_back_and_never_raises(stdout):
    m = parse_child_output(stdout, 1, ScoreParams(fallback_gflops=2.0))
    assert m.gflops == 2.0 and m.spread is None and m.runs == ()
    assert m.method.startswith("unmeasured: child exited 1")


def test_score_without_numpy_degrades_to_the_fallback():
    # ``-S``: the same interpreter without site-packages, so numpy is really absent.
    m = measure_cpu(ScoreParams(fallback_gflops=3.0), python=(sys.executable, "-S"))
    assert m.gflops == 3.0 and m.spread is None and m.runs == ()
    assert m.method.startswith("unmeasured: numpy not importable")


def test_score_measurement_is_bounded_by_its_timeout():
    p = ScoreParams(matrix_n=2048, reps_per_run=50, runs=50, min_runs=50, timeout_s=0.2)
    m = measure_cpu(p)
    assert m.gflops == p.fallback_gflops and m.method == "unmeasured: timed out after 0.2 s"


@pytest.mark.parametrize(
    ("name", "mem", "tier"),
    [
        ("NVIDIA GeForce RTX 4090", 24564, "consumer-gpu"),
        ("NVIDIA GeForce GTX 1080 Ti", 11264, "consumer-gpu"),
        ("NVIDIA A100-SXM4-40GB", 40960, "datacenter-gpu"),
        ("NVIDIA H100 80GB HBM3", 81559, "datacenter-gpu"),
        ("Tesla T4", 15360, "datacenter-gpu"),
        ("NVIDIA L4", 23034, "datacenter-gpu"),
        ("NVIDIA RTX 6000 Ada Generation", 49140, "datacenter-gpu"),  # >= 40 GiB rule
    ],
)
def test_tier_rule(name, mem, tier):
    assert tier_for([GpuDevice(index=0, uuid="u", name=name, memory_total_mb=mem)]) == tier


def test_tier_without_gpu():
    assert tier_for([]) == "cpu"


def test_request_and_params_validation(tmp_path):
    ok = dict(job_id="j", image="i", command=("true",), output_dir=tmp_path)
    ExecRequest(**ok)
    for bad in (
        {"command": ()},
        {"job_id": ""},
        {"env": {"1X": "v"}},
        {"timeout_s": 0},
        {"memory_mb": 1},
        {"cpus": 0},
        {"pids_limit": 0},
    ):
        with pytest.raises(InvalidRequest):
            ExecRequest(**{**ok, **bad})
    with pytest.raises(InvalidRequest):
        ExecParams(run_as_user="root")
    with pytest.raises(InvalidRequest):
        ExecParams(label_prefix="Bad Prefix")
    p = ExecParams(max_timeout_s=5, max_output_bytes=10)
    r = ExecRequest(**ok)
    assert p.effective_timeout_s(r) == 5 and p.effective_output_cap(r) == 10
    assert ExecParams().run_as_ids() == (65534, 65534)


def test_auto_without_engine_or_opt_in_makes_a_client(monkeypatch):
    """No engine and no opt-in: the node joins as a client (issue 12), saying why."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    ex, why = make_executor("auto", ExecParams(docker_connect_timeout_s=1), "n")
    assert ex.name == "none" and why.startswith("client")
    assert "allow_process_executor = true" in why and "/nonexistent/docker.sock" in why
    assert "runs no jobs" in (
        ex.decline_reason(
            image="x", gpus=0, gpu_min_memory_mb=0, network=False, cpus=1, memory_mb=1
        )
        or ""
    )
    ex, why = make_executor("auto", ExecParams(process_executor_enabled=True), "n")
    assert ex.name == "process" and "falling back" in why
    with pytest.raises(ExecutorUnavailable, match="docker executor requested"):
        make_executor("docker", ExecParams(), "n")


def test_measure_dir_and_discard(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 50)
    os.symlink("/etc/passwd", tmp_path / "link")  # counted, not followed
    u = measure_dir(tmp_path, max_entries=100)
    assert u.bytes >= 150 and u.entries == 4 and not u.truncated
    assert over_cap(u, max_bytes=10**9) is None
    assert "cap is 10" in over_cap(u, max_bytes=10)
    t = measure_dir(tmp_path, max_entries=2)
    assert t.truncated and "more than 2 entries" in over_cap(t, max_bytes=10**9)
    discard_outputs(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_log_sink_caps_and_keeps_tail():
    got: list[tuple[str, bytes]] = []
    s = LogSink(lambda stream, data: got.append((stream, data)), cap=10, tail_bytes=4)
    s.feed("stdout", b"12345")
    s.feed("stderr", b"67890abc")
    s.feed("stdout", b"def")
    # the cap counts both streams; each chunk keeps its stream; the marker goes to stderr
    assert got == [("stdout", b"12345"), ("stderr", b"67890"), ("stderr", s.marker())]
    assert s.truncated and s.forwarded == 10 and s.seen == 16
    assert s.tail() == b"cdef"
