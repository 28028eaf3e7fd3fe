"""How vgpuctl renders API values in table cells."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from vgpu.api.v1 import types_pb2
from vgpuctl._private import cells

GiB = 1024**3
NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def ago(seconds: float) -> Timestamp:
    when = Timestamp()
    when.FromDatetime(NOW - dt.timedelta(seconds=seconds))
    return when


@pytest.mark.parametrize(
    ("uuid", "shown"),
    [
        ("GPU-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "GPU-1a2b3c4d…"),
        ("MIG-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d", "MIG-1a2b3c4d…"),
        ("GPU-short", "GPU-short"),
        ("GPU-0123456789abcdef", "GPU-01234567…"),
        ("", "-"),
    ],
)
def test_short_uuid(uuid: str, shown: str) -> None:
    assert cells.short_uuid(uuid) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (7200, "2h"), (86_400 * 3, "3d")],
)
def test_age(seconds: int, shown: str) -> None:
    assert cells.age(ago(seconds), NOW) == shown


def test_unset_times_read_as_dash() -> None:
    assert cells.age(Timestamp(), NOW) == "-"
    assert cells.timestamp(Timestamp()) == "-"


def test_timestamp_is_utc_to_the_second() -> None:
    assert cells.timestamp(ago(61)) == "2025-03-01T11:58:59Z"


def test_owner_leaves_out_what_is_unknown() -> None:
    assert cells.owner(types_pb2.Owner(user="alice", host="h1", pid=42)) == "alice@h1:42"
    assert cells.owner(types_pb2.Owner(user="alice")) == "alice"
    assert cells.owner(types_pb2.Owner(host="h1", pid=42)) == "?@h1:42"
    assert cells.owner(types_pb2.Owner()) == "-"


def test_memory_and_compute_cells() -> None:
    assert cells.usage_of(20 * GiB, int(79.6 * GiB)) == "20GiB/79.6GiB"
    assert cells.usage_of(0, 40 * GiB) == "0/40GiB"
    assert cells.share_of(500) == "0.5/1"
    assert cells.share_of(0) == "0/1"


def test_slices_of_each_kind_and_of_a_pending_lease() -> None:
    uuid = "GPU-1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
    lease = types_pb2.Lease(
        slices=[
            types_pb2.Slice(
                gpu_uuid=uuid, isolation=types_pb2.ISOLATION_SHARED, memory_bytes=20 * GiB, compute_milli=500
            ),
            types_pb2.Slice(gpu_uuid=uuid, isolation=types_pb2.ISOLATION_MIG, mig_profile="3g.40gb"),
            types_pb2.Slice(gpu_uuid=uuid, isolation=types_pb2.ISOLATION_WHOLE),
        ]
    )
    assert cells.slices(lease) == "GPU-1a2b3c4d… 20GiB/0.5, GPU-1a2b3c4d… 3g.40gb, GPU-1a2b3c4d… whole"
    pending = types_pb2.Lease(request=types_pb2.ResourceRequest(memory_bytes=8 * GiB, compute_milli=250, count=2))
    assert cells.slices(pending) == "wants 8GiB/0.25 x2"
    assert cells.slices(types_pb2.Lease()) == "-"


def test_enum_words() -> None:
    assert cells.gpu_mode(types_pb2.GPU_MODE_EXCLUSIVE) == "exclusive"
    assert cells.gpu_mode(types_pb2.GPU_MODE_UNSPECIFIED) == "unknown"
    assert cells.lease_state(types_pb2.LEASE_STATE_PREEMPTING) == "preempting"
    assert cells.node_state(types_pb2.Node(state=types_pb2.NODE_STATE_DOWN)) == "down"
    assert cells.node_state(types_pb2.Node(draining=True)) == "draining"


def test_lease_nodes_are_where_the_slices_are() -> None:
    gang = types_pb2.Lease(
        node="n1",
        slices=[types_pb2.Slice(node="n3"), types_pb2.Slice(node="n2"), types_pb2.Slice(node="n3")],
    )
    assert cells.lease_nodes(gang) == "n2,n3"
    assert cells.lease_nodes(types_pb2.Lease(node="n1", slices=[types_pb2.Slice(node="n1")])) == "n1"
    assert cells.lease_nodes(types_pb2.Lease(node="n1")) == "n1"  # pending: where it was asked for
    assert cells.lease_nodes(types_pb2.Lease()) == "-"


def test_gpu_health_names_a_down_node() -> None:
    assert cells.gpu_health(types_pb2.Gpu(healthy=True)) == "ok"
    assert cells.gpu_health(types_pb2.Gpu(healthy=False)) == "unhealthy"
    assert cells.gpu_health(types_pb2.Gpu(healthy=False), node_down=True) == "node-down"
    assert cells.gpu_health(types_pb2.Gpu(healthy=True), node_down=True) == "node-down"


def test_the_default_project_has_one_spelling() -> None:
    assert cells.project("") == "default"
    assert cells.project("vision") == "vision"
