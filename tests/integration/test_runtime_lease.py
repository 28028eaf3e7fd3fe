"""The in-process runtime through a real lease (NumPy backend, simulated GPU): budget, state across a preemption."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import vgpu
from tests.integration.conftest import Admin, GiB, wait_until
from vgpu._private.runtime.state_store import OffloadReport
from vgpu.testing import LocalPool


@pytest.fixture(scope="module")
def pool() -> Iterator[LocalPool]:
    with LocalPool("h100-80gb:1", ttl=3) as local:
        yield local


def preempt(pool: LocalPool, lease_id: str) -> None:
    stubs = Admin(pool.endpoint)
    try:
        stubs.preempt(lease_id)
    finally:
        stubs.close()


def test_registered_state_survives_a_preemption_bit_exact(pool: LocalPool) -> None:
    with pool.pool() as client, client.acquire(memory="2GiB", compute=0.5, wait=False) as lease:
        rt = lease.runtime
        assert rt.backend == "numpy"
        xp = rt.xp
        weights = lease.register("weights", xp.arange(4096, dtype=np.float32))
        weights *= 1.5  # in place: NumPy's temporaries are not counted on the simulated device
        opt = lease.register("opt", {"m": xp.full((3, 5), 7, dtype=np.int64), "step": 12})
        expected_weights = weights.copy()
        assert not lease.checkpoint()  # nothing asked: no wait, cooperative from now on
        preempt(pool, lease.id)
        notice = lease.wait_preempt(timeout=20)
        assert notice is not None
        before = rt.memory_usage().used_bytes
        assert before >= weights.nbytes + 15 * 8
        assert lease.checkpoint()  # saved, acknowledged, suspended, resumed (nothing else waits), restored
        assert lease.status == "granted"
        assert lease.preemptions == 1
        assert lease.state["weights"] is weights  # the workload kept it: restored in place
        np.testing.assert_array_equal(lease.state["weights"], expected_weights)
        assert lease.state["opt"]["step"] == 12
        np.testing.assert_array_equal(lease.state["opt"]["m"], np.full((3, 5), 7))
        assert lease.state["opt"]["m"] is opt["m"]  # kept alive through `opt`: in place too
        assert rt.memory_usage().used_bytes == before
        del weights, opt


def test_allocations_past_the_budget_are_refused_and_reported(pool: LocalPool) -> None:
    with pool.pool() as client, client.acquire(memory="1GiB", compute=0.25, wait=False) as lease:
        xp = lease.runtime.xp
        held = xp.zeros(GiB // 2, dtype=np.uint8)
        with pytest.raises(vgpu.MemoryBudgetError) as caught:
            xp.zeros(GiB // 2 + 1, dtype=np.uint8)
        assert "past its budget of 1GiB" in str(caught.value)
        assert caught.value.reason == "OVER_MEMORY_BUDGET"
        free, total = lease.runtime.mem_info()
        assert total == GiB
        assert free == GiB - held.nbytes
        usage = lease._usage_report()
        assert usage is not None
        assert usage.reported
        assert usage.memory_bytes == held.nbytes
        del held


def test_the_runtime_follows_the_slice_and_ends_with_the_lease(pool: LocalPool) -> None:
    with pool.pool() as client:
        lease = client.acquire(memory="1GiB", compute=0.25, wait=False)
        rt = lease.runtime
        assert rt.throttle_stats().share == pytest.approx(0.25)
        lease.register("x", rt.xp.ones(8))
        lease.release()
        with pytest.raises(vgpu.LeaseEndedError):
            rt.register("y", rt.xp.ones(8))
        with pytest.raises(vgpu.LeaseEndedError):
            _ = lease.runtime


def test_registering_what_is_not_an_array_says_what_to_pass(pool: LocalPool) -> None:
    with pool.pool() as client, client.acquire(memory="1GiB", compute=0.25, wait=False) as lease:
        with pytest.raises(vgpu.InvalidRequestError, match=r"state 'bad'\['w'\] is an object, not a numpy array"):
            lease.register("bad", {"w": object()})
        with pytest.raises(vgpu.InvalidRequestError):
            lease.register("", lease.runtime.xp.ones(2))


async def test_an_async_lease_keeps_its_state_across_a_preemption(pool: LocalPool) -> None:
    async with pool.async_pool() as client:
        lease = await client.acquire(memory="1GiB", compute=0.5, wait=False)
        try:
            xp = lease.runtime.xp
            kept = lease.register("kept", xp.arange(100, dtype=np.int32))
            assert not await lease.checkpoint()
            preempt(pool, lease.id)
            assert await lease.wait_preempt(timeout=20) is not None
            assert await lease.checkpoint()
            assert lease.state["kept"] is kept
            np.testing.assert_array_equal(kept, np.arange(100))
            assert lease.preemptions == 1
        finally:
            await lease.release()


def test_runtime_options_choose_the_throttle_and_where_checkpoints_spill(pool: LocalPool, tmp_path: Path) -> None:
    options = vgpu.RuntimeOptions(backend="numpy", throttle="off", spill_dir=tmp_path, host_limit_bytes=0)
    assert options.throttle is vgpu.ThrottlePolicy.OFF
    with pool.pool() as client, client.acquire(memory="1GiB", compute=0.25, wait=False, runtime=options) as lease:
        assert lease.runtime.throttle_stats().policy is vgpu.ThrottlePolicy.OFF
        lease.register("big", lease.runtime.xp.full(1000, 3.25))
        assert not lease.checkpoint()
        seen_spill: list[int] = []
        preempt(pool, lease.id)
        assert lease.wait_preempt(timeout=20) is not None

        original = lease.runtime._store.offload  # observe the spill files while the lease is suspended

        def offload_and_look() -> OffloadReport:
            report = original()
            seen_spill.append(len(list(tmp_path.rglob("*.npy"))))
            return report

        lease.runtime._store.offload = offload_and_look  # type: ignore[method-assign]  # test probe
        assert lease.checkpoint()
        assert seen_spill == [1]  # host_limit_bytes=0: everything went to a file under spill_dir
        assert not list(tmp_path.rglob("*.npy"))  # and the file is gone after the restore
        np.testing.assert_array_equal(lease.state["big"], np.full(1000, 3.25))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "tpu"}, "runtime backend must be auto, cupy or numpy, got 'tpu'"),
        ({"throttle": "fast"}, "throttle must be hard, burst or off, got 'fast'"),
        ({"host_limit_bytes": -1}, "host_limit_bytes must be a number of bytes >= 0 or None, got -1"),
    ],
)
def test_bad_runtime_options_say_what_to_change(fields: dict[str, object], message: str) -> None:
    with pytest.raises(vgpu.InvalidRequestError, match=message):
        vgpu.RuntimeOptions(**fields)  # type: ignore[arg-type]  # deliberately wrong values


def _fake_torch(uuid: str, calls: list[tuple[float, int]]) -> types.ModuleType:
    """A stand-in `torch` that sees one CUDA device, the lease's GPU, with 80 GiB."""
    torch = types.ModuleType("torch")
    props = types.SimpleNamespace(uuid=uuid.removeprefix("GPU-"), total_memory=80 * GiB)
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]  # a stand-in module gets its attributes set
        is_available=lambda: True,
        device_count=lambda: 1,
        get_device_properties=lambda _index: props,
        set_per_process_memory_fraction=lambda fraction, device: calls.append((fraction, device)),
    )
    return torch


def test_with_pytorch_loaded_the_budget_applies_at_grant(pool: LocalPool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, int]] = []
    gpu = Admin(pool.endpoint)
    try:
        (uuid,) = [g.uuid for g in gpu.gpus()]
    finally:
        gpu.close()
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(uuid, calls))
    with pool.pool() as client, client.acquire(memory="20GiB", compute=0.5, wait=False) as lease:
        assert calls == [(0.25, 0)]  # before the workload touched lease.runtime: 20 of 80 GiB
        assert lease.runtime.torch_budgeted
    monkeypatch.delitem(sys.modules, "torch")
    with pool.pool() as client, client.acquire(memory="20GiB", compute=0.5, wait=False) as lease:
        assert not lease.runtime.torch_budgeted
    assert calls == [(0.25, 0)]


def test_a_preemptible_kernel_stops_at_the_notice_and_resumes_where_it_stopped(pool: LocalPool) -> None:
    done = np.zeros(10_000, dtype=np.int64)

    def work(start: int, end: int, lease: vgpu.Lease) -> None:
        done[start:end] += 1
        if start == 3_000:  # the pool asks for the GPU back in the middle of the kernel
            preempt(pool, lease.id)
            assert lease.wait_preempt(timeout=20) is not None

    kernel = vgpu.HostPreemptibleKernel(work, total=done.size, chunk=1_000)
    with pool.pool() as client, client.acquire(memory="1GiB", compute=0.5, wait=False) as lease:
        assert not lease.checkpoint()  # cooperative: the workload yields at its checkpoints
        first = lease.runtime.run_preemptible(kernel, (lease,))
        assert (first.done_items, first.stopped) == (4_000, True)  # it stopped after the chunk that saw the flag
        assert lease.checkpoint()  # yields, resumes
        rest = lease.runtime.run_preemptible(kernel, (lease,), start=first.done_items)
        assert rest.complete
        assert not rest.stopped
    np.testing.assert_array_equal(done, np.ones_like(done))  # every item exactly once


def test_burst_uses_the_whole_gpu_only_while_no_other_lease_uses_it(pool: LocalPool) -> None:
    options = vgpu.RuntimeOptions(throttle="burst")
    with pool.pool() as client, client.acquire(memory="1GiB", compute=0.25, wait=False, runtime=options) as lease:
        stats = lease.runtime.throttle_stats
        wait_until(lambda: stats().bursting, what="a heartbeat saying the GPU is otherwise idle")
        with client.acquire(memory="1GiB", compute=0.25, wait=False) as neighbour:
            # Nothing has measured the neighbour yet: it may be using its share, so the share holds.
            wait_until(lambda: not stats().bursting, what="the share back beside an unmeasured neighbour")
            neighbour.report_usage(utilization=0.0)
            wait_until(lambda: stats().bursting, what="burst again beside a neighbour measured idle")
            neighbour.report_usage(utilization=0.6)
            wait_until(lambda: not stats().bursting, what="the share back beside a busy neighbour")
        wait_until(lambda: stats().bursting, what="burst again once the neighbour is gone")
