"""The runtime facade on NumPy: targets, suspend/resume across GPUs, resize, usage, closing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import vgpu
from vgpu._private.runtime.runtime import Runtime, RuntimeOptions, RuntimeTarget, make_backend

MiB = 1024 * 1024
A = RuntimeTarget(gpu_uuid="GPU-a", memory_bytes=64 * MiB, compute_share=0.5)
B = RuntimeTarget(gpu_uuid="GPU-b", memory_bytes=128 * MiB, compute_share=0.25)


def runtime(target: RuntimeTarget = A) -> Runtime:
    options = RuntimeOptions(backend="numpy", throttle="off")
    return Runtime(make_backend(target, "numpy"), target, options)


def test_resuming_on_another_gpu_moves_state_to_a_new_backend_with_the_new_slice() -> None:
    rt = runtime()
    kept = rt.register("w", rt.xp.arange(1000, dtype=np.float64))
    first_xp = rt.xp
    report = rt.suspend()
    assert report.arrays == 1
    restored = rt.resume(B)
    assert restored.in_place == 0  # a new device: new arrays
    assert rt.xp is not first_xp
    assert rt.state["w"] is not kept
    np.testing.assert_array_equal(rt.state["w"], np.arange(1000))
    assert rt.mem_info()[1] == B.memory_bytes
    assert rt.throttle_stats().share == pytest.approx(0.25)
    assert rt.memory_usage().used_bytes == 1000 * 8  # counted on the new device's budget
    rt.close()


def test_resuming_on_the_same_gpu_restores_in_place() -> None:
    rt = runtime()
    kept = rt.register("w", rt.xp.ones(10))
    rt.suspend()
    assert rt.resume(A).in_place == 1
    assert rt.state["w"] is kept
    rt.close()


def test_resize_changes_budget_and_share_live() -> None:
    rt = runtime()
    held = rt.xp.zeros(40 * MiB, dtype=np.uint8)
    rt.resize(RuntimeTarget(gpu_uuid="GPU-a", memory_bytes=32 * MiB, compute_share=1.0))
    assert rt.throttle_stats().share == pytest.approx(1.0)
    assert rt.mem_info() == (0, 32 * MiB)  # use above the new budget: free is 0, never negative
    with pytest.raises(vgpu.MemoryBudgetError):
        rt.xp.zeros(1, dtype=np.uint8)
    del held
    rt.close()


def test_preempt_asked_sets_the_kernel_flag_until_the_resume() -> None:
    rt = runtime()
    rt.register("w", rt.xp.ones(4))
    rt.preempt_asked()
    assert rt.preempt_flag.is_set()
    rt.suspend()
    rt.resume(A)
    assert not rt.preempt_flag.is_set()
    rt.close()


def test_usage_is_the_busy_share_of_the_grant_and_the_memory_in_use() -> None:
    rt = runtime()
    block = rt.xp.zeros(MiB, dtype=np.uint8)
    busy, memory = rt.usage()
    assert 0.0 <= busy <= 1.0
    assert memory == MiB
    del block
    rt.close()


def test_a_closed_runtime_keeps_nothing() -> None:
    rt = runtime()
    rt.register("w", rt.xp.ones(4))
    rt.close()
    rt.close()  # idempotent
    with pytest.raises(vgpu.LeaseEndedError):
        rt.register("x", rt.xp.ones(4))
    rt.step()  # a checkpoint after the end does nothing


def test_cupy_is_refused_clearly_where_it_is_missing() -> None:
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    with pytest.raises(
        vgpu.InvalidRequestError, match=r"needs CuPy: pip install 'vgpu\[cuda13\]' \(CUDA 13\) or 'vgpu\[cuda12\]'"
    ):
        make_backend(A, "cupy")
    assert make_backend(A, "auto").name == "numpy"
