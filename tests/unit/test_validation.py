from typing import Any

import pytest
from google.protobuf import duration_pb2

from vgpu._private import reasons
from vgpu.api.v1 import types_pb2, workload_pb2
from vgpud._private.core.model import GpuMode, Isolation
from vgpud._private.core.priorities import STANDARD
from vgpud._private.grants.allocator import AcquireSpec
from vgpud._private.refusal import Refusal
from vgpud._private.services import validation

GiB = 1024**3
MODELS = frozenset({"h100-80gb", "a100-40gb"})


def acquire(**fields: Any) -> AcquireSpec:
    resources = fields.pop("resources", types_pb2.ResourceRequest(memory_bytes=20 * GiB, compute_milli=500))
    request = workload_pb2.AcquireRequest(resources=resources, **fields)
    return validation.acquire(request, local_node="n1", known_models=MODELS, default_ttl=30, ttl_bounds=(5, 3600))


def refused(reason: str, **fields: Any) -> str:
    with pytest.raises(Refusal) as info:
        acquire(**fields)
    assert info.value.reason == reason
    return info.value.message


def test_good_request_becomes_a_spec() -> None:
    spec = acquire(project="vision", ttl=duration_pb2.Duration(seconds=60), labels={"job": "x"})
    assert spec.shape.isolation is Isolation.SHARED
    assert spec.shape.memory_bytes == 20 * GiB
    assert spec.shape.compute_milli == 500
    assert spec.shape.count == 1
    assert spec.node == "n1"
    assert spec.ttl_seconds == 60
    assert spec.project == "vision"


def test_default_ttl_applies() -> None:
    assert acquire().ttl_seconds == 30


@pytest.mark.parametrize(
    ("resources", "needle"),
    [
        (types_pb2.ResourceRequest(compute_milli=500), "memory is required"),
        (types_pb2.ResourceRequest(memory_bytes=2**63, compute_milli=500), "larger than any GPU"),
        (types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=1001), "outside 1..1000"),
        (types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=1, count=65), "limit of 64"),
        (
            types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=1, isolation=types_pb2.ISOLATION_WHOLE),
            "whole-GPU request takes no memory",
        ),
    ],
)
def test_bad_shapes_say_what_to_change(resources: types_pb2.ResourceRequest, needle: str) -> None:
    assert needle in refused(reasons.INVALID_REQUEST, resources=resources)


PROFILES = frozenset({"1g.10gb", "3g.40gb", "7g.80gb", "3g.20gb"})


def mig_acquire(**resources: Any) -> AcquireSpec:
    request = workload_pb2.AcquireRequest(resources=types_pb2.ResourceRequest(**resources))
    return validation.acquire(
        request, local_node="n1", known_models=MODELS, default_ttl=30, ttl_bounds=(5, 3600), known_profiles=PROFILES
    )


def test_mig_requests_by_profile_or_by_memory() -> None:
    named = mig_acquire(mig_profile="MIG 3G.40GB").shape
    assert (named.isolation, named.mig_profile, named.memory_bytes) == (Isolation.MIG, "3g.40gb", 0)
    sized = mig_acquire(memory_bytes=18 * GiB, isolation=types_pb2.ISOLATION_MIG).shape
    assert (sized.isolation, sized.mig_profile, sized.memory_bytes) == (Isolation.MIG, "", 18 * GiB)


def test_memory_alone_lets_the_pool_pick_mig_or_shared() -> None:
    flexible = mig_acquire(memory_bytes=18 * GiB).shape
    assert (flexible.isolation, flexible.flexible, flexible.compute_milli) == (Isolation.SHARED, True, 0)
    assert not mig_acquire(memory_bytes=18 * GiB, compute_milli=100).shape.flexible
    assert not mig_acquire(memory_bytes=18 * GiB, isolation=types_pb2.ISOLATION_SHARED).shape.flexible


@pytest.mark.parametrize(
    ("resources", "reason", "needle"),
    [
        ({"mig_profile": "3g.41gb"}, reasons.UNKNOWN_MIG_PROFILE, "1g.10gb, 3g.20gb, 3g.40gb, 7g.80gb"),
        ({"mig_profile": "3g.40gb", "memory_bytes": GiB}, reasons.INVALID_REQUEST, "fixes memory and compute"),
        ({"isolation": types_pb2.ISOLATION_MIG}, reasons.INVALID_REQUEST, "needs a profile"),
    ],
)
def test_bad_mig_requests_say_what_to_change(resources: dict[str, Any], reason: str, needle: str) -> None:
    with pytest.raises(Refusal) as info:
        mig_acquire(**resources)
    assert info.value.reason == reason
    assert needle in info.value.message


def test_unknown_model_lists_known_ones() -> None:
    message = refused(
        reasons.UNKNOWN_GPU_MODEL,
        resources=types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=10, gpu_models=["h100-81gb"]),
    )
    assert "a100-40gb, h100-80gb" in message


def test_elastic_ranges_become_bounds() -> None:
    spec = acquire(resources=types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=250, compute_milli_max=1000))
    assert (spec.shape.compute_milli, spec.shape.compute_milli_max, spec.shape.flexible) == (250, 1000, False)
    assert spec.shape.elastic
    gpus = acquire(resources=types_pb2.ResourceRequest(isolation=types_pb2.ISOLATION_WHOLE, count=2, count_max=8))
    assert (gpus.shape.count, gpus.shape.count_max) == (2, 8)
    fixed = acquire(resources=types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=250, compute_milli_max=250))
    assert not fixed.shape.elastic


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        (types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=800, compute_milli_max=500), "minimum is above"),
        (types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli_max=500), "needs its minimum"),
        (types_pb2.ResourceRequest(memory_bytes=GiB, compute_milli=100, compute_milli_max=1500), "above 1000"),
        (types_pb2.ResourceRequest(isolation=types_pb2.ISOLATION_WHOLE, count=4, count_max=2), "minimum is above"),
        (types_pb2.ResourceRequest(isolation=types_pb2.ISOLATION_WHOLE, count=2, count_max=99), "limit of 64"),
        (types_pb2.ResourceRequest(isolation=types_pb2.ISOLATION_WHOLE, compute_milli_max=500), "no compute range"),
        (types_pb2.ResourceRequest(mig_profile="3g.40gb", compute_milli_max=500), "fixed compute share"),
    ],
)
def test_bad_elastic_ranges_say_what_to_change(resources: types_pb2.ResourceRequest, words: str) -> None:
    assert words in refused(reasons.INVALID_REQUEST, resources=resources)


def test_unknown_project_and_priority_class() -> None:
    spec = acquire(project="vision")
    with pytest.raises(Refusal) as info:
        validation.project_and_priority(spec, {"nlp"}, STANDARD)
    assert info.value.reason == reasons.UNKNOWN_PROJECT
    assert "vgpuctl quota set vision" in info.value.message
    resolved = validation.project_and_priority(acquire(), set(), STANDARD)
    assert resolved.priority == "train"
    with pytest.raises(Refusal) as info:
        validation.project_and_priority(acquire(priority="urgent"), set(), STANDARD)
    assert info.value.reason == reasons.UNKNOWN_PRIORITY
    assert "inference, train, best-effort" in info.value.message


@pytest.mark.parametrize(
    "fields",
    [
        {"ttl": duration_pb2.Duration(seconds=1)},
        {"ttl": duration_pb2.Duration(seconds=10**6)},
        {"request_id": "short"},
        {"request_id": "x" * 129},
        {"project": "bad project!"},
        {"project": "p" * 64},
        {"owner": types_pb2.Owner(user="u" * 300)},
        {"labels": {f"k{i}": "v" for i in range(40)}},
        {"labels": {"bad key": "v"}},
    ],
)
def test_bounded_fields(fields: dict[str, Any]) -> None:
    refused(reasons.INVALID_REQUEST, **fields)


def test_whole_gpu_request() -> None:
    spec = acquire(resources=types_pb2.ResourceRequest(isolation=types_pb2.ISOLATION_WHOLE, count=2))
    assert spec.shape.isolation is Isolation.WHOLE
    assert spec.shape.count == 2


def test_lease_ref_and_admin_values() -> None:
    assert validation.lease_ref("lease-0123456789ab", "tok") == ("lease-0123456789ab", "tok")
    with pytest.raises(Refusal):
        validation.lease_ref("../etc/passwd", "tok")
    with pytest.raises(Refusal):
        validation.lease_ref("lease-1", "")
    assert validation.gpu_mode(types_pb2.GPU_MODE_EXCLUSIVE) is GpuMode.EXCLUSIVE
    with pytest.raises(Refusal):
        validation.gpu_mode(types_pb2.GpuMode.ValueType(99))  # deliberately not a GpuMode value
    with pytest.raises(Refusal):
        validation.gpu_uuid("")
