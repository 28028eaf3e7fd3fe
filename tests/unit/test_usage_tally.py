"""Allocation vs. use sums (core/usage_tally.py) and how a lease becomes a sample (usage_ledger.sample_of)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.model import Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.core.usage_tally import (
    MAX_SAMPLE_GAP_S,
    HourBucket,
    Sample,
    add_sample,
    hour_of,
    project_totals,
)
from vgpud._private.node_watchdog import LeaseUse
from vgpud._private.usage_ledger import sample_of

GiB = 1024**3


def sample(lease_id: str = "l1", project: str = "vision", **overrides: Any) -> Sample:
    base = Sample(
        lease_id=lease_id,
        project=project,
        user="ada",
        held_gpus=0.5,
        device_gpus=1.0,
        memory_budget_bytes=10 * GiB,
        memory_used_bytes=4 * GiB,
        utilization=0.25,
        processes=1,
    )
    return dataclasses.replace(base, **overrides)


def test_a_measured_sample_counts_held_and_used_gpu_seconds() -> None:
    bucket = HourBucket("n1", 3600)
    add_sample(bucket, sample(), at=3610.0, seconds=10.0)
    tally = bucket.leases["l1"]
    assert tally.held_s == 10.0
    assert tally.allocated_gpu_s == pytest.approx(5.0)  # half a GPU for 10 s
    assert tally.used_gpu_s == pytest.approx(2.5)  # a quarter of the GPU busy
    assert tally.allocated_measured_gpu_s == pytest.approx(5.0)
    assert tally.used_byte_s == pytest.approx(40 * GiB)
    assert tally.budget_byte_s == pytest.approx(100 * GiB)
    assert (tally.last_at, tally.memory_used_bytes, tally.utilization_gpus) == (3610.0, 4 * GiB, 0.25)


def test_an_unmeasured_sample_counts_allocation_but_no_use() -> None:
    bucket = HourBucket("n1", 0)
    add_sample(bucket, sample(memory_used_bytes=None, utilization=None), at=5.0, seconds=5.0)
    tally = bucket.leases["l1"]
    assert tally.allocated_gpu_s == pytest.approx(2.5)
    assert (tally.measured_s, tally.used_gpu_s, tally.memory_measured_s) == (0.0, 0.0, 0.0)
    assert tally.memory_used_bytes is None
    assert tally.utilization_gpus is None


def test_a_long_gap_between_samples_is_capped() -> None:
    bucket = HourBucket("n1", 0)
    add_sample(bucket, sample(), at=1000.0, seconds=900.0)
    assert bucket.leases["l1"].held_s == MAX_SAMPLE_GAP_S


def test_a_mig_lease_uses_in_its_instance_s_fraction() -> None:
    bucket = HourBucket("n1", 0)
    add_sample(bucket, sample(held_gpus=3 / 7, device_gpus=3 / 7, utilization=1.0), at=7.0, seconds=7.0)
    assert bucket.leases["l1"].used_gpu_s == pytest.approx(3.0)
    assert bucket.leases["l1"].allocated_gpu_s == pytest.approx(3.0)


def test_utilisation_out_of_range_is_clamped() -> None:
    bucket = HourBucket("n1", 0)
    add_sample(bucket, sample(utilization=3.0), at=1.0, seconds=1.0)
    assert bucket.leases["l1"].used_gpu_s == pytest.approx(1.0)


def test_buckets_round_trip_through_json() -> None:
    bucket = HourBucket("n1", 7200)
    add_sample(bucket, sample(), at=7201.0, seconds=1.0)
    add_sample(bucket, sample("l2", memory_used_bytes=None, utilization=None), at=7201.0, seconds=1.0)
    back = HourBucket.from_json(bucket.to_json())
    assert back == bucket


@pytest.mark.parametrize("raw", [b"[]", b'{"node": "n1"}', b"not json"])
def test_a_record_that_is_not_a_bucket_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- json's decode error is a ValueError too; any is right here
        HourBucket.from_json(raw)


def test_hours_start_on_the_hour() -> None:
    assert hour_of(7199.9) == 3600
    assert hour_of(7200.0) == 7200


def test_project_totals_sum_leases_across_hours_and_nodes() -> None:
    first, second, other_node = HourBucket("n1", 0), HourBucket("n1", 3600), HourBucket("n2", 3600)
    add_sample(first, sample(), at=10.0, seconds=10.0)
    add_sample(second, sample(), at=3610.0, seconds=10.0)
    add_sample(other_node, sample(), at=3610.0, seconds=10.0)  # the same lease's slice on another node
    add_sample(other_node, sample("l2", project="nlp"), at=3610.0, seconds=10.0)
    totals = project_totals([first, second, other_node], idle_utilization=0.05)
    assert sorted(totals) == ["nlp", "vision"]
    vision = totals["vision"]
    assert vision.leases == {"l1"}
    assert vision.allocated_gpu_s == pytest.approx(15.0)
    assert vision.used_gpu_s == pytest.approx(7.5)
    assert vision.use_ratio == pytest.approx(0.5)
    only = project_totals([first, second, other_node], idle_utilization=0.05, project="nlp")
    assert list(only) == ["nlp"]


def test_idle_leases_are_the_measured_ones_under_the_threshold() -> None:
    bucket = HourBucket("n1", 0)
    add_sample(bucket, sample("busy", utilization=0.5), at=10.0, seconds=10.0)
    add_sample(bucket, sample("idle", utilization=0.01), at=10.0, seconds=10.0)
    add_sample(bucket, sample("unmeasured", utilization=None), at=10.0, seconds=10.0)
    # measured for under half its time: not enough evidence to call it idle
    add_sample(bucket, sample("barely", utilization=None), at=10.0, seconds=10.0)
    add_sample(bucket, sample("barely", utilization=0.0), at=11.0, seconds=1.0)
    totals = project_totals([bucket], idle_utilization=0.05)
    assert totals["vision"].idle_leases == ["idle"]
    assert project_totals([bucket], idle_utilization=0.05, project="none") == {}


def test_nothing_measured_has_no_use_ratio() -> None:
    bucket = HourBucket("n1", 0)
    add_sample(bucket, sample(utilization=None), at=10.0, seconds=10.0)
    assert project_totals([bucket], idle_utilization=0.05)["vision"].use_ratio is None


def lease(state: LeaseState = LeaseState.GRANTED, *slices: SliceRecord) -> LeaseRecord:
    return LeaseRecord(
        id="l1",
        token_sha256="ab" * 32,
        state=state,
        node="n1",
        project="vision",
        priority="train",
        owner=Owner("ada", "host", 42, "job"),
        request=ShapeRequest(Isolation.SHARED, 20 * GiB, 500),
        slices=slices,
        created_at=1.0,
        ttl_seconds=30,
        liveness_lease=7,
    )


SHARED_HERE = SliceRecord("n1", "GPU-a", 0, "h100-80gb", Isolation.SHARED, 20 * GiB, 500)
MIG_HERE = SliceRecord("n1", "GPU-b", 1, "h100-80gb", Isolation.MIG, 40 * GiB, 428, "3g.40gb", 4, 4, "MIG-x")
ELSEWHERE = SliceRecord("n2", "GPU-c", 0, "h100-80gb", Isolation.SHARED, 10 * GiB, 300)


def test_a_sample_covers_only_this_node_s_slices() -> None:
    use = LeaseUse("l1", "vision", frozenset({11, 12}), 3 * GiB, 0.5, 20 * GiB)
    got = sample_of(lease(LeaseState.GRANTED, SHARED_HERE, MIG_HERE, ELSEWHERE), "n1", use)
    assert got is not None
    assert got.held_gpus == pytest.approx(0.928)
    assert got.device_gpus == pytest.approx(1.428)  # a whole GPU for the shared slice, the instance's fraction
    assert got.memory_budget_bytes == 60 * GiB
    assert (got.memory_used_bytes, got.utilization, got.processes) == (3 * GiB, 0.5, 2)


def test_no_sample_without_slices_here_or_while_not_holding() -> None:
    assert sample_of(lease(LeaseState.GRANTED, ELSEWHERE), "n1", None) is None
    assert sample_of(lease(LeaseState.SUSPENDED, SHARED_HERE), "n1", None) is None
    unmeasured = sample_of(lease(LeaseState.PREEMPTING, SHARED_HERE), "n1", None)
    assert unmeasured is not None
    assert (unmeasured.memory_used_bytes, unmeasured.utilization, unmeasured.processes) == (None, None, 0)
