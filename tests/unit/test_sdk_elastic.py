"""Elastic and project requests: (min, max) ranges for compute, count and gpus become the request's bounds;
bad ranges are refused before any RPC with a message that says what to change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import vgpu
from tests.unit.test_sdk_support import FakeWorkload, fake_daemon, granted
from vgpu._private import reasons
from vgpu.api.v1 import types_pb2


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, vgpu.Pool]]:
    with fake_daemon() as (servicer, endpoint, _), vgpu.Pool(endpoint, timeout=5.0) as pool:
        yield servicer, pool


def sent(servicer: FakeWorkload) -> types_pb2.ResourceRequest:
    (call,) = servicer.calls_of("Acquire")
    resources: types_pb2.ResourceRequest = call.request.resources
    return resources


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"memory": "1GiB", "compute": (0.25, 1.0)}, (250, 1000, 1, 0)),
        ({"memory": "1GiB", "compute": ("25%", "1000m")}, (250, 1000, 1, 0)),
        ({"memory": "1GiB", "compute": [0.1, "0.5"]}, (100, 500, 1, 0)),
        ({"memory": "1GiB", "compute": 0.5}, (500, 0, 1, 0)),  # a plain number is not elastic
        ({"memory": "1GiB", "compute": (0.5, 0.5)}, (500, 0, 1, 0)),  # nor is a range of one value
        ({"memory": "1GiB", "compute": 0.5, "count": (2, 4)}, (500, 0, 2, 4)),
        ({"memory": "1GiB", "compute": (0.2, 0.8), "count": (1, 3)}, (200, 800, 1, 3)),
        ({"memory": "1GiB", "compute": 0.5, "count": 3}, (500, 0, 3, 0)),
    ],
)
def test_shared_ranges_become_the_request_bounds(
    daemon: tuple[FakeWorkload, vgpu.Pool], kwargs: dict[str, object], expected: tuple[int, int, int, int]
) -> None:
    servicer, pool = daemon
    pool.acquire(**kwargs).release()  # type: ignore[arg-type]
    res = sent(servicer)
    assert (res.compute_milli, res.compute_milli_max, res.count, res.count_max) == expected
    assert res.memory_bytes == 1024**3
    assert res.isolation == types_pb2.ISOLATION_UNSPECIFIED


def test_whole_gpu_range(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    pool.acquire(gpus=(2, 8), gang=True, project="team-a", priority="train").release()
    res = sent(servicer)
    assert (res.isolation, res.count, res.count_max, res.gang) == (types_pb2.ISOLATION_WHOLE, 2, 8, True)
    assert (res.memory_bytes, res.compute_milli, res.compute_milli_max) == (0, 0, 0)
    (call,) = servicer.calls_of("Acquire")
    assert (call.request.project, call.request.priority) == ("team-a", "train")


def test_module_level_acquire_sends_ranges() -> None:
    with fake_daemon() as (servicer, endpoint, _):
        vgpu.acquire(memory="2GiB", compute=(0.25, 1.0), count=(2, 4), endpoint=endpoint, project="p").release()
        res = sent(servicer)
        (call,) = servicer.calls_of("Acquire")
    assert (res.compute_milli, res.compute_milli_max, res.count, res.count_max) == (250, 1000, 2, 4)
    assert call.request.project == "p"


async def test_async_pool_sends_ranges() -> None:
    with fake_daemon() as (servicer, endpoint, _):
        servicer.acquire_scripts = [[granted()], [granted()]]
        async with vgpu.AsyncPool(endpoint, timeout=5.0) as pool:
            await (await pool.acquire(gpus=(1, 4))).release()
            await (await pool.acquire(memory="1GiB", compute=("10%", "50%"), count=(1, 2))).release()
        whole, shared = (c.request.resources for c in servicer.calls_of("Acquire"))
    assert (whole.isolation, whole.count, whole.count_max) == (types_pb2.ISOLATION_WHOLE, 1, 4)
    assert (shared.compute_milli, shared.compute_milli_max, shared.count, shared.count_max) == (100, 500, 1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"memory": "1GiB", "compute": (0.8, 0.5)},
            "compute=(0.8, 0.5): the minimum is above the maximum; give (min, max) with min <= max",
        ),
        ({"memory": "1GiB", "compute": (0, 1.0)}, "compute=(0, 1.0): the minimum: compute share 0 is outside"),
        ({"memory": "1GiB", "compute": (-0.5, 1.0)}, "the minimum: compute share -0.5 is outside"),
        ({"memory": "1GiB", "compute": (0.5, 2)}, "compute=(0.5, 2): the maximum: compute share 2 is outside"),
        ({"memory": "1GiB", "compute": (0.5, "lots")}, "the maximum: cannot read compute share 'lots'"),
        ({"memory": "1GiB", "compute": (0.5, None)}, "the maximum: cannot read compute share None"),
        ({"memory": "1GiB", "compute": (0.5,)}, r"compute=\(0.5,\): an elastic range is a \(min, max\) pair"),
        ({"memory": "1GiB", "compute": (0.1, 0.2, 0.3)}, "an elastic range is a (min, max) pair, e.g. compute=(0.25"),
        ({"memory": "1GiB", "compute": ()}, r"compute=\(\): an elastic range"),
        ({"gpus": (8, 2)}, "gpus=(8, 2): the minimum is above the maximum"),
        ({"gpus": (0, 2)}, "gpus=(0, 2): the minimum must be a whole number >= 1, got 0"),
        ({"gpus": (2, -1)}, "the maximum must be a whole number >= 1, got -1"),
        ({"gpus": (1.5, 2)}, "the minimum must be a whole number >= 1, got 1.5"),
        ({"gpus": (True, 2)}, "the minimum must be a whole number >= 1, got True"),
        ({"gpus": (2, 4, 8)}, "gpus=(2, 4, 8): an elastic range is a (min, max) pair, e.g. gpus=(2, 8)"),
        ({"gpus": (2, 8), "count": (1, 2)}, "gpus= already says how many whole GPUs"),
        ({"gpus": (2, 8), "memory": "1GiB"}, "gpus= asks for whole GPUs"),
        ({"memory": "1GiB", "compute": 0.5, "count": (3, 2)}, "count=(3, 2): the minimum is above the maximum"),
        ({"memory": "1GiB", "compute": 0.5, "count": (0, 2)}, "count=(0, 2): the minimum must be"),
        ({"memory": "1GiB", "compute": 0.5, "count": [1]}, r"count=\[1\]: an elastic range is a \(min, max\) pair"),
        ({"memory": ("1GiB", "2GiB"), "compute": 0.5}, "memory is not elastic"),
        ({"memory": "1GiB", "compute": {"min": 0.1}}, "cannot read compute share"),
    ],
)
def test_bad_ranges_are_refused_before_any_rpc(
    daemon: tuple[FakeWorkload, vgpu.Pool], kwargs: dict[str, object], message: str
) -> None:
    servicer, pool = daemon
    pattern = message if "\\" in message else None
    with pytest.raises(vgpu.InvalidRequestError) as info:
        pool.acquire(**kwargs)  # type: ignore[arg-type]
    if pattern is not None:
        assert info.match(pattern)
    else:
        assert message in str(info.value)
    assert info.value.reason == reasons.INVALID_REQUEST
    assert servicer.calls == []
