"""The daemon's FGD task mix from recent requests, and which policy it hands placement."""

from __future__ import annotations

import pytest

from vgpud._private.core.fragmentation import FragmentationGradient, TaskClass
from vgpud._private.core.model import Claim, GpuRecord, GpuState, Isolation, ShapeRequest
from vgpud._private.core.placement import place
from vgpud._private.core.placement_mix import placement_policy, request_class, request_mix
from vgpud._private.core.queue_order import place_local, place_request
from vgpud._private.core.slice_views import GpuView, Placement

GIB = 1 << 30
MEMORY = 80 * GIB


def gpu(index: int, used: int = 0, node: str = "n1", model: str = "H100") -> GpuView:
    record = GpuRecord(f"{node}-{index}", node, index, model, model, MEMORY, 132, False, False, "sim")
    claims = (Claim(f"old-{node}-{index}", used * MEMORY // 1000, used),) if used else ()
    return GpuView(record, GpuState(claims=claims))


def shared(milli: int, memory: int = 0, count: int = 1, models: tuple[str, ...] = ()) -> ShapeRequest:
    return ShapeRequest(Isolation.SHARED, memory or milli * MEMORY // 1000, milli, count=count, gpu_models=models)


def chosen(result: object) -> list[str]:
    assert isinstance(result, Placement), result
    return [view.record.uuid for view, _ in result.assignments]


def test_a_shared_request_is_a_one_gpu_class_at_its_larger_share() -> None:
    assert request_class(shared(250), MEMORY) == TaskClass(1, 250, (), 1.0)
    # 40 GiB of an 80 GiB GPU is half of it, whatever compute share was asked.
    assert request_class(shared(100, memory=40 * GIB), MEMORY) == TaskClass(1, 500, (), 1.0)
    # A memory-only request (compute 0) still takes its memory's share; nothing asked at all takes 1 milli.
    assert request_class(shared(0, memory=8 * GIB), MEMORY) == TaskClass(1, 100, (), 1.0)
    assert request_class(ShapeRequest(Isolation.SHARED, 0, 0), MEMORY) == TaskClass(1, 1, (), 1.0)
    # Without a GPU of known memory only compute counts; more memory than any GPU caps at one GPU.
    assert request_class(shared(300, memory=40 * GIB), 0) == TaskClass(1, 300, (), 1.0)
    assert request_class(shared(100, memory=200 * GIB), MEMORY) == TaskClass(1, 1000, (), 1.0)


def test_several_shared_slices_weigh_as_that_many_one_gpu_tasks_and_keep_their_models() -> None:
    assert request_class(shared(500, count=3, models=("A100",)), MEMORY) == TaskClass(1, 500, ("A100",), 3.0)


def test_whole_gpus_are_a_multi_gpu_class_and_mig_takes_no_part() -> None:
    assert request_class(ShapeRequest(Isolation.WHOLE, 0, 1000, count=4), MEMORY) == TaskClass(4, 1000, (), 4.0)
    assert request_class(ShapeRequest(Isolation.MIG, 10 * GIB, 142, mig_profile="1g.10gb"), MEMORY) is None
    assert request_mix([ShapeRequest(Isolation.MIG, 10 * GIB, 142)], MEMORY) is None
    assert request_mix([], MEMORY) is None


def test_the_mix_weighs_classes_by_slices_asked() -> None:
    mix = request_mix([shared(500), shared(500), ShapeRequest(Isolation.WHOLE, 0, 1000, count=2)], MEMORY)
    assert mix is not None
    weights = {(c.gpus, c.milli): c.weight for c in mix.classes}
    assert weights == {(1, 500): pytest.approx(0.5), (2, 1000): pytest.approx(0.5)}


def test_best_fit_and_fgd_without_a_mix_hand_placement_no_policy() -> None:
    mix = request_mix([shared(500)], MEMORY)
    assert placement_policy("best-fit", mix) is None
    assert placement_policy("fgd", None) is None
    assert isinstance(placement_policy("fgd", mix), FragmentationGradient)


def test_fgd_keeps_a_hole_the_recent_requests_fit_where_best_fit_fills_it() -> None:
    # GPU 0 has 600 milli free, GPU 1 is empty; recent requests all asked 500. Best fit puts a 300 request
    # on GPU 0 and leaves 300 nobody recent could use; FGD puts it on GPU 1, where 700 still takes a 500.
    gpus = [gpu(0, used=400), gpu(1)]
    policy = placement_policy("fgd", request_mix([shared(500)] * 10, MEMORY))
    assert chosen(place(shared(300), gpus, "l1")) == ["n1-0"]
    assert chosen(place(shared(300), gpus, "l1", policy=policy)) == ["n1-1"]
    assert chosen(place_local(shared(300), gpus, "l1", policy)) == ["n1-1"]
    # Across nodes (the leader's queue and resumes) the same policy picks the node too.
    nodes = {"a": [gpu(0, used=400, node="a")], "b": [gpu(0, node="b")]}
    assert chosen(place_request(shared(300), nodes, "l1")) == ["a-0"]
    assert chosen(place_request(shared(300), nodes, "l1", policy=policy)) == ["b-0"]


def test_fgd_falls_back_to_best_fit_where_the_mix_sees_no_difference() -> None:
    # Recent requests all asked 100: neither GPU leaves a fragment for them, so the tie goes to best fit.
    gpus = [gpu(0, used=400), gpu(1)]
    policy = placement_policy("fgd", request_mix([shared(100)] * 10, MEMORY))
    assert chosen(place(shared(300), gpus, "l1", policy=policy)) == ["n1-0"]
