"""metrics/measure.py: per-GPU and per-project use from NVML and the leases' reports; the pool snapshot."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from vgpud._private.backend.base import DeviceUse
from vgpud._private.backend.nvml_codes import NVML_ERROR_NOT_SUPPORTED
from vgpud._private.backend.nvml_device_use import device_use
from vgpud._private.backend.sim import SimBackend
from vgpud._private.backend.sim_structs import SimNvmlError
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import Claim, GpuRecord, GpuState, Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.core.projects import Quota
from vgpud._private.core.queue_order import Waiting
from vgpud._private.metrics.measure import gpu_series, lease_series, pool_snapshot, project_use, reported_gpu_use
from vgpud._private.node_watchdog import LeaseUse

GiB = 1024**3


def lease(lease_id: str, project: str, *slices: SliceRecord, state: LeaseState = LeaseState.GRANTED) -> LeaseRecord:
    return LeaseRecord(
        id=lease_id,
        token_sha256="ab" * 32,
        state=state,
        node="n1",
        project=project,
        priority="train",
        owner=Owner("ada", "host", 42, "job"),
        request=ShapeRequest(Isolation.SHARED, 20 * GiB, 500),
        slices=slices,
        created_at=1.0,
        ttl_seconds=30,
        liveness_lease=7,
    )


def use(lease_id: str, memory: int | None, busy: float | None) -> LeaseUse:
    return LeaseUse(lease_id, "", frozenset(), memory, busy, 0)


def shared(gpu: str, memory: int, milli: int, node: str = "n1") -> SliceRecord:
    return SliceRecord(node, gpu, 0, "h100-80gb", Isolation.SHARED, memory, milli)


MIG_B = SliceRecord("n1", "GPU-b", 1, "h100-80gb", Isolation.MIG, 40 * GiB, 428, "3g.40gb", 4, 4, "MIG-x")


def record(uuid: str) -> GpuRecord:
    return GpuRecord(uuid, "n1", 0, "h100-80gb", "NVIDIA H100", 80 * GiB, 132, True, False, "sim")


def test_a_lease_s_report_is_split_over_its_gpus_by_memory_budget() -> None:
    two = lease("l1", "vision", shared("GPU-a", 30 * GiB, 500), shared("GPU-b", 10 * GiB, 500))
    got = reported_gpu_use([two], "n1", {"l1": use("l1", 8 * GiB, 0.5)})
    assert got["GPU-a"].memory_bytes == pytest.approx(6 * GiB)
    assert got["GPU-b"].memory_bytes == pytest.approx(2 * GiB)
    assert got["GPU-a"].busy == pytest.approx(0.5)  # a shared slice: the utilisation is the device's


def test_a_mig_lease_counts_for_its_instance_s_share_of_the_gpu() -> None:
    got = reported_gpu_use([lease("l1", "vision", MIG_B)], "n1", {"l1": use("l1", None, 1.0)})
    assert got["GPU-b"].busy == pytest.approx(0.428)
    assert not got["GPU-b"].memory_measured


def test_leases_not_holding_or_elsewhere_are_left_out() -> None:
    leases = [
        lease("l1", "vision", shared("GPU-a", GiB, 500), state=LeaseState.SUSPENDED),
        lease("l2", "vision", shared("GPU-z", GiB, 500, node="n2")),
    ]
    assert reported_gpu_use(leases, "n1", {"l1": use("l1", GiB, 1.0), "l2": use("l2", GiB, 1.0)}) == {}


def test_gpu_series_prefer_nvml_and_know_what_they_do_not_know() -> None:
    states = {
        "GPU-a": GpuState(claims=(Claim("l1", 20 * GiB, 500),)),
        "GPU-b": GpuState(),
        "GPU-c": GpuState(claims=(Claim("l2", GiB, 250),)),
    }
    leases = [lease("l1", "vision", shared("GPU-a", 20 * GiB, 500)), lease("l2", "nlp", shared("GPU-c", GiB, 250))]
    reported = reported_gpu_use(leases, "n1", {"l1": use("l1", 4 * GiB, 0.75)})
    records = [record("GPU-a"), record("GPU-b"), record("GPU-c")]
    a, b, c = gpu_series(records, states, reported, {}, simulated=True)
    assert (a.memory_allocated_bytes, a.compute_allocated_ratio) == (20 * GiB, 0.5)
    assert (a.memory_used_bytes, a.utilization_ratio) == (4 * GiB, 0.75)
    assert (b.memory_used_bytes, b.utilization_ratio) == (0, 0.0)  # simulated and unheld: idle
    assert (c.memory_used_bytes, c.utilization_ratio) == (None, None)  # held but nothing reported
    device = {"GPU-a": DeviceUse(9 * GiB, None), "GPU-b": DeviceUse(GiB, 0.1)}
    a, b, c = gpu_series(records, states, reported, device, simulated=False)
    assert (a.memory_used_bytes, a.utilization_ratio) == (9 * GiB, 0.75)  # NVML's memory, the reports' busy
    assert (b.memory_used_bytes, b.utilization_ratio) == (GiB, 0.1)
    assert (c.memory_used_bytes, c.utilization_ratio) == (None, None)


def test_project_use_sums_measured_leases_as_the_ledger_does() -> None:
    leases = [
        lease("l1", "vision", shared("GPU-a", 20 * GiB, 500)),
        lease("l2", "vision", MIG_B),
        lease("l3", "", shared("GPU-c", GiB, 250)),
        lease("l4", "nlp", shared("GPU-c", GiB, 250)),
    ]
    uses = {"l1": use("l1", 4 * GiB, 0.5), "l2": use("l2", GiB, 1.0), "l3": use("l3", GiB, None)}
    got = project_use(leases, "n1", uses)
    assert set(got) == {"vision", "default"}  # nlp: nothing measured, so no series
    assert got["vision"].memory_used_bytes == 5 * GiB
    assert got["vision"].compute_used_gpus == pytest.approx(0.5 + 0.428)
    assert (got["default"].memory_used_bytes, got["default"].compute_used_gpus) == (GiB, None)


def test_lease_series_name_the_default_project() -> None:
    leases = {"l1": lease("l1", "", shared("GPU-a", GiB, 500))}
    (series,) = lease_series(leases, {"l1": use("l1", GiB, 0.5)})
    assert (series.lease, series.project, series.memory_used_bytes, series.utilization_ratio) == (
        "l1",
        "default",
        GiB,
        0.5,
    )


def test_pool_snapshot_matches_what_quota_list_counts() -> None:
    leases = [
        lease("l1", "vision", shared("GPU-a", 20 * GiB, 500)),
        lease("l2", "vision", MIG_B),
        lease("l3", "nlp", state=LeaseState.SUSPENDED),
    ]
    waiting = [
        Waiting("q1", ShapeRequest(Isolation.SHARED, GiB, 100), "", False, True, project="nlp", since=90.0),
        Waiting("l3", ShapeRequest(Isolation.SHARED, GiB, 100), "", False, True, project="nlp", since=40.0),
    ]
    snap = pool_snapshot(leases, {"audio": Quota("audio", deserved_milli=1000)}, waiting, now=100.0)
    assert snap.leases_by_state["granted"] == 2
    assert snap.leases_by_state["suspended"] == 1
    assert "released" not in snap.leases_by_state
    assert (snap.queue_length, snap.oldest_wait_seconds) == (2, 60.0)
    assert set(snap.projects) == {"audio", "nlp", "vision"}
    vision = snap.projects["vision"]
    assert (vision.compute_gpus, vision.memory_bytes, vision.leases, vision.waiting) == (0.928, 60 * GiB, 2, 0)
    assert dataclasses.astuple(snap.projects["nlp"]) == (0.0, 0, 0, 2)
    assert dataclasses.astuple(snap.projects["audio"]) == (0.0, 0, 0, 0)


class FakeNvml:
    """The device calls device_use makes; `fail` names the calls that raise."""

    NVMLError = SimNvmlError

    def __init__(self, *fail: str) -> None:
        self.fail = set(fail)

    def _call(self, name: str, result: Any) -> Any:
        if name in self.fail:
            raise SimNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return result

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> object:  # noqa: N802 -- pynvml's names
        return self._call("handle", object())

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> object:  # noqa: N802 -- pynvml's names
        return self._call("memory", SimpleNamespace(total=80 * GiB, free=70 * GiB, used=10 * GiB))

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> object:  # noqa: N802 -- pynvml's names
        return self._call("utilization", SimpleNamespace(gpu=37, memory=5))


def test_nvml_device_use() -> None:
    assert device_use(FakeNvml(), "GPU-a") == DeviceUse(10 * GiB, 0.37)
    assert device_use(FakeNvml("utilization"), "GPU-a") == DeviceUse(10 * GiB, None)  # a GPU in MIG mode
    assert device_use(FakeNvml("utilization", "memory"), "GPU-a") is None
    assert device_use(FakeNvml("handle"), "GPU-a") is None


def test_simulated_gpus_report_no_device_use() -> None:
    backend = SimBackend("h100-80gb:1", "n1")
    try:
        assert backend.device_use([g.uuid for g in backend.discover()]) == {}
    finally:
        backend.close()
