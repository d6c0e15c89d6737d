"""GPU discovery (no NVML here), engine runtime detection and the pure allocator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.exec.gpu import (
    GpuAllocationError,
    GpuAllocator,
    GpuDevice,
    device_request,
    discover_gpus,
    engine_gpu_runtime,
    sample_gpus,
)


def dev(i: int, mem: int = 16000, name: str = "NVIDIA RTX 4090") -> GpuDevice:
    return GpuDevice(index=i, uuid=f"GPU-{i}", name=name, memory_total_mb=mem)


def test_no_nvml_means_no_gpus_and_a_reason():
    found = discover_gpus()  # this machine has no NVIDIA driver
    assert found.devices == ()
    assert found.reason.startswith("NVML: ")
    assert sample_gpus(["GPU-0"]) is None
    assert sample_gpus([]) is None


def test_engine_runtime_detection():
    assert engine_gpu_runtime({"Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}}) is None
    assert (
        engine_gpu_runtime(
            {"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}
        )
        == "nvidia"
    )
    assert engine_gpu_runtime({}) is None


def test_device_request_names_exact_devices():
    r = device_request([dev(0), dev(2)])
    assert r["DeviceIDs"] == ["GPU-0", "GPU-2"]
    assert r["Capabilities"] == [["gpu"]]
    assert r.get("Count") in (None, 0)


def test_allocates_exclusively_and_releases():
    a = GpuAllocator([dev(0), dev(1), dev(2)])
    got1 = a.allocate("j1", 2)
    assert [d.index for d in got1] == [0, 1]
    assert a.why_not(2) == "1 of 3 suitable GPU(s) free, job needs 2"
    with pytest.raises(GpuAllocationError, match="1 of 3 suitable"):
        a.allocate("j2", 2)
    got2 = a.allocate("j2", 1)
    assert [d.index for d in got2] == [2]
    assert a.free() == ()
    a.release("j1")
    assert [d.index for d in a.free()] == [0, 1]
    a.release("j1")  # idempotent
    a.release("never-had-any")
    assert a.assignments() == {"j2": ("GPU-2",)}


def test_min_memory_and_best_fit():
    a = GpuAllocator([dev(0, 80000, "NVIDIA H100"), dev(1, 24000), dev(2, 12000)])
    # A small job takes the smallest card that fits, leaving the big ones free.
    assert [d.index for d in a.allocate("small", 1, 10000)] == [2]
    assert [d.index for d in a.allocate("mid", 1, 20000)] == [1]
    assert a.why_not(1, 90000).startswith("node has 0 GPU(s) with >= 90000 MiB, job needs 1")
    assert [d.index for d in a.allocate("big", 1, 40000)] == [0]


def test_zero_gpus_and_misuse():
    a = GpuAllocator([dev(0)])
    assert a.allocate("cpu-job", 0) == ()
    assert a.why_not(0) is None
    a.allocate("j", 1)
    with pytest.raises(ValueError, match="already holds"):
        a.allocate("j", 1)
    assert GpuAllocator([]).why_not(1) == "node has no GPU"
    with pytest.raises(ValueError, match="duplicate"):
        GpuAllocator([dev(0), dev(0)])


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("alloc"),
            st.integers(0, 5),
            st.integers(0, 3),
            st.sampled_from([0, 8000, 16000, 40000]),
        ),
        st.tuples(st.just("release"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    mems=st.lists(st.sampled_from([8000, 16000, 24000, 80000]), min_size=0, max_size=6), script=ops
)
def test_allocator_invariants(mems, script):
    devices = [dev(i, m) for i, m in enumerate(mems)]
    a = GpuAllocator(devices)
    held: dict[str, tuple[GpuDevice, ...]] = {}
    for op in script:
        if op[0] == "alloc":
            _, j, n, min_mb = op
            job = f"j{j}"
            if job in held:
                continue
            reason = a.why_not(n, min_mb)
            try:
                got = a.allocate(job, n, min_mb)
            except GpuAllocationError as e:
                assert reason is not None and str(e) == reason
                continue
            assert reason is None
            assert len(got) == n and all(d.memory_total_mb >= min_mb for d in got)
            if n:
                held[job] = got
        else:
            job = f"j{op[1]}"
            a.release(job)
            held.pop(job, None)
        owned = [d.uuid for ds in held.values() for d in ds]
        assert len(owned) == len(set(owned))  # never two jobs on one device
        assert {d.uuid for d in a.free()} == {d.uuid for d in devices} - set(owned)
