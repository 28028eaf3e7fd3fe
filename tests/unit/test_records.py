import dataclasses
import json
from typing import Any

import pytest

from vgpud._private.core.environment import lease_environment
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import (
    Claim,
    GpuMode,
    GpuRecord,
    GpuState,
    Isolation,
    LeaseState,
    NodeConfig,
    Owner,
    ShapeRequest,
)

GiB = 1024**3


def lease(**overrides: Any) -> LeaseRecord:
    base = LeaseRecord(
        id="lease-0123456789ab",
        token_sha256="ab" * 32,
        state=LeaseState.GRANTED,
        node="n1",
        project="vision",
        priority="train",
        owner=Owner("ada", "host", 42, "job"),
        request=ShapeRequest(Isolation.SHARED, 20 * GiB, 500, 2, ("h100-80gb",)),
        slices=(
            SliceRecord("n1", "GPU-a", 0, "h100-80gb", Isolation.SHARED, 20 * GiB, 500),
            SliceRecord("n2", "GPU-b", 1, "h100-80gb", Isolation.SHARED, 10 * GiB, 300),
        ),
        created_at=1700000000.5,
        ttl_seconds=30,
        liveness_lease=77,
        request_id="cd" * 32,
        labels={"team": "cv"},
        any_node=True,
        gang=True,
    )
    return dataclasses.replace(base, **overrides)


def test_lease_record_round_trips() -> None:
    record = lease()
    assert LeaseRecord.from_json(record.to_json()) == record
    ended = record.ended_as(LeaseState.EXPIRED, "HEARTBEAT_TIMEOUT", "late", 1700000100.0)
    assert LeaseRecord.from_json(ended.to_json()) == ended
    assert ended.state.ended
    named = lease(target_node="n2", any_node=False, gang=False)
    assert LeaseRecord.from_json(named.to_json()) == named


def test_slices_still_waiting_for_mig_instances_are_not_delivered() -> None:
    waiting = SliceRecord(
        "n1", "GPU-a", 0, "h100-80gb", Isolation.MIG, 40 * GiB, 455, mig_profile="3g.40gb", mig_size=4
    )
    resumed = lease(slices=(waiting,), event="resumed")
    shown = resumed.delivered
    assert (shown.state, shown.slices, shown.event) == (LeaseState.SUSPENDED, (), "")
    made = dataclasses.replace(waiting, mig_uuid="MIG-1")
    assert lease(slices=(made,), event="resumed").delivered.state is LeaseState.GRANTED
    fresh = lease(slices=(waiting,))
    assert fresh.delivered is fresh, "a first grant waiting for its instance is held back by Acquire, not hidden"
    shared = lease(event="resumed")
    assert shared.delivered is shared
    grown = lease(slices=(made, waiting), event="resized")
    assert (grown.delivered.state, grown.delivered.slices) == (LeaseState.GRANTED, (made,))


def test_gpu_state_round_trips_and_sums() -> None:
    state = GpuState(GpuMode.EXCLUSIVE, (Claim("a", GiB, 100), Claim("b", 2 * GiB, 200, Isolation.WHOLE)))
    assert GpuState.from_json(state.to_json()) == state
    assert state.memory_claimed == 3 * GiB
    assert state.compute_claimed == 300
    assert state.without_lease("a").claims == (Claim("b", 2 * GiB, 200, Isolation.WHOLE),)


def test_unreadable_records_raise_value_error() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        GpuState.from_json(b"[1,2]")
    assert NodeConfig.from_json(NodeConfig(draining=True).to_json()).draining


def test_environment_is_per_node_and_token_only_when_given() -> None:
    record = lease()
    env = lease_environment(record, "n1", "unix:///run/vgpu/vgpud.sock")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a"
    assert env["VGPU_MEMORY_LIMIT"] == str(20 * GiB)
    assert env["CUPY_GPU_MEMORY_LIMIT"] == str(20 * GiB)
    assert env["VGPU_COMPUTE_MILLI"] == "500"
    assert "VGPU_LEASE" not in env
    with_token = lease_environment(record, "n2", "", token="lease-0123456789ab.s3cret")
    assert with_token["CUDA_VISIBLE_DEVICES"] == "GPU-b"
    assert with_token["VGPU_LEASE"] == "lease-0123456789ab.s3cret"


def test_gpu_records_carry_the_mps_pipe_and_read_records_written_before_it() -> None:
    record = GpuRecord("GPU-a", "n1", 0, "h100-80gb", "H100", 80 * GiB, 132, True, False, "nvml", "/run/vgpu/mps/GPU-a")
    assert GpuRecord.from_json(record.to_json()) == record
    old = json.loads(record.to_json())
    del old["mps_pipe_dir"]
    assert GpuRecord.from_json(json.dumps(old).encode()).mps_pipe_dir == ""
