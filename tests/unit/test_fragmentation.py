"""The FGD fragmentation measure on hand-computed cases, and FGD placement through the core's placement."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vgpud._private.core.cluster_placement import place_on_nodes
from vgpud._private.core.fragmentation import (
    FragmentationGradient,
    TaskClass,
    TaskMix,
    idle_milli,
    node_fragment,
    node_idle,
)
from vgpud._private.core.host_fit import HostRoom, HostUse
from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState
from vgpud._private.core.model import Claim, GpuRecord, GpuState, Isolation, ShapeRequest
from vgpud._private.core.placement import place
from vgpud._private.core.placement_policy import BestFit
from vgpud._private.core.slice_views import GpuView, Placement

MEMORY = 16_000_000_000
PER_MILLI = MEMORY // 1000


def gpu(node: str, index: int, used: int = 0, model: str = "T4") -> GpuView:
    """A shared-mode GPU with `used` milli-GPU (and proportional memory) claimed."""
    record = GpuRecord(f"{node}-{index}", node, index, model, model, MEMORY, 40, False, False, "sim")
    claims = (Claim(f"old-{node}-{index}", used * PER_MILLI, used),) if used else ()
    return GpuView(record, GpuState(claims=claims))


def shared(milli: int) -> ShapeRequest:
    return ShapeRequest(Isolation.SHARED, milli * PER_MILLI, milli)


def chosen(result: object) -> list[str]:
    assert isinstance(result, Placement)
    return [view.record.uuid for view, _ in result.assignments]


def test_share_and_multi_gpu_classes_by_hand() -> None:
    # GPUs idle 300 and 1000. Half the tasks ask 500 milli of one GPU: only the 300 is a fragment for them.
    # Half ask two whole GPUs: the node cannot host them at all, so all 1300 idle is a fragment for them.
    mix = TaskMix.of([TaskClass(1, 500), TaskClass(2, 1000)])
    assert mix.fragment("T4", [300, 1000]) == pytest.approx(0.5 * 300 + 0.5 * 1300)
    # With two whole GPUs idle the two-GPU class fits; the partly used GPU is a fragment for it.
    assert mix.fragment("T4", [1000, 1000, 300]) == pytest.approx(0.5 * 300 + 0.5 * 300)


def test_classes_that_cannot_use_the_gpus_count_all_idle() -> None:
    # A CPU-only class uses no GPU; a class for another model cannot use a T4.
    mix = TaskMix.of(
        [TaskClass(0, 0, weight=1), TaskClass(1, 500, ("V100M16",), weight=1), TaskClass(1, 500, weight=2)]
    )
    assert mix.fragment("T4", [1000, 1000]) == pytest.approx(0.25 * 2000 + 0.25 * 2000 + 0.5 * 0)
    assert mix.fragment("V100M16", [1000, 1000]) == pytest.approx(0.25 * 2000)
    assert mix.fragment("T4", [0, 0]) == 0.0


def test_host_cpu_decides_whether_a_class_fits() -> None:
    mix = TaskMix.of([TaskClass(1, 500, cpu_milli=8000)])
    assert mix.fragment("T4", [1000, 400], HostRoom(4000, 1 << 20)) == pytest.approx(1400)
    assert mix.fragment("T4", [1000, 400], HostRoom(16000, 1 << 20)) == pytest.approx(400)
    assert mix.fragment("T4", [1000, 400]) == pytest.approx(400)  # host not considered


def test_host_bound_counts_gpus_the_cpu_cannot_feed() -> None:
    # CPU for two tasks of 500 milli: of 4000 idle, 1000 can be used; 3000 is stranded.
    mix = TaskMix.of([TaskClass(1, 500, cpu_milli=4000)])
    idle = [1000, 1000, 1000, 1000]
    assert mix.fragment("T4", idle, HostRoom(8000, 1 << 20), host_bound=True) == pytest.approx(3000)
    assert mix.fragment("T4", idle, HostRoom(8000, 1 << 20)) == 0.0
    assert mix.fragment("T4", idle, HostRoom(64000, 1 << 20), host_bound=True) == 0.0


def test_mix_normalises_and_merges() -> None:
    mix = TaskMix.of([TaskClass(1, 500, weight=3), TaskClass(1, 500, weight=1), TaskClass(2, 1000, weight=4)])
    assert sorted((c.gpus, c.weight) for c in mix.classes) == [(1, 0.5), (2, 0.5)]
    with pytest.raises(ValueError, match="positive weight"):
        TaskMix.of([TaskClass(1, 500, weight=0)])
    with pytest.raises(ValueError, match="negative"):
        TaskMix.of([TaskClass(1, 500, weight=-1)])


def test_idle_milli_follows_compute_memory_and_mig() -> None:
    assert idle_milli(gpu("n", 0, used=300)) == 700
    assert idle_milli(gpu("n", 0, used=300), Claim("x", 200 * PER_MILLI, 200)) == 500
    memory_bound = replace(gpu("n", 0), state=GpuState(claims=(Claim("x", 900 * PER_MILLI, 100),)))
    assert idle_milli(memory_bound) == 100
    mig = replace(gpu("n", 0), state=GpuState(mig=(MigRecord(MigSlot("1g.10gb", 19, 0, 1), MigState.WARM),)))
    assert idle_milli(mig) == 0


def test_node_fragment_applies_claims_and_host_room() -> None:
    mix = TaskMix.of([TaskClass(1, 500, cpu_milli=2000)])
    node = [gpu("n", 0, used=600), gpu("n", 1)]
    assert node_idle(node) == 1400
    assert node_fragment(mix, node) == pytest.approx(400)
    assert node_fragment(mix, node, {"n-1": Claim("x", 700 * PER_MILLI, 700)}) == pytest.approx(700)
    assert node_fragment(mix, node, room=HostRoom(1000, 1 << 20)) == pytest.approx(1400)


def test_fgd_picks_the_gpu_best_fit_would_fragment() -> None:
    # Idle 800 and 1000; tasks ask 500. Best fit puts 400 on the 800 GPU and leaves 400 nobody can use;
    # FGD puts it on the empty GPU (idle 600 afterwards, still fits a 500 task).
    mix = TaskMix.of([TaskClass(1, 500)])
    node = [gpu("n", 0, used=200), gpu("n", 1)]
    assert chosen(place(shared(400), node, "x")) == ["n-0"]
    assert chosen(place(shared(400), node, "x", policy=FragmentationGradient(mix))) == ["n-1"]


def test_fgd_picks_the_node_best_fit_would_fragment() -> None:
    mix = TaskMix.of([TaskClass(1, 500)])
    nodes = {"a": [gpu("a", 0, used=200)], "b": [gpu("b", 0)]}
    assert chosen(place_on_nodes(shared(400), nodes, "x")) == ["a-0"]
    assert chosen(place_on_nodes(shared(400), nodes, "x", policy=FragmentationGradient(mix))) == ["b-0"]


def test_fgd_ties_go_to_best_fit() -> None:
    # Every 300 task fits wherever this lands; no fragment grows, so the tighter GPU wins.
    mix = TaskMix.of([TaskClass(1, 100)])
    node = [gpu("n", 0), gpu("n", 1, used=500)]
    assert chosen(place(shared(300), node, "x", policy=FragmentationGradient(mix))) == ["n-1"]


def test_fgd_with_hosts_avoids_stranding_gpus_for_want_of_cpu() -> None:
    # Node a would be left with too little CPU for the next task, stranding its second GPU.
    mix = TaskMix.of([TaskClass(1, 1000, cpu_milli=8000)])
    nodes = {"a": [gpu("a", 0), gpu("a", 1)], "b": [gpu("b", 0), gpu("b", 1)]}
    hosts = {"a": HostRoom(12000, 1 << 20), "b": HostRoom(16000, 1 << 20)}
    whole = ShapeRequest(Isolation.WHOLE, 0, 1000)
    blind = FragmentationGradient(mix)
    aware = FragmentationGradient(mix, hosts, HostUse(8000, 0))
    assert chosen(place_on_nodes(whole, nodes, "x", policy=blind)) == ["a-0"]
    assert chosen(place_on_nodes(whole, nodes, "x", policy=aware)) == ["b-0"]


def test_best_fit_policy_matches_the_default() -> None:
    nodes = {
        "a": [gpu("a", 0, used=300), gpu("a", 1, used=900)],
        "b": [gpu("b", 0, used=650), gpu("b", 1)],
        "c": [gpu("c", 0, used=50)],
    }
    for milli in (50, 100, 300, 350, 700, 1000):
        request = shared(milli)
        assert chosen(place_on_nodes(request, nodes, "x", policy=BestFit())) == chosen(
            place_on_nodes(request, nodes, "x")
        )
    two = ShapeRequest(Isolation.SHARED, 100 * PER_MILLI, 100, count=2)
    assert chosen(place_on_nodes(two, nodes, "x", policy=BestFit())) == chosen(place_on_nodes(two, nodes, "x"))


def test_a_task_without_gpus_prefers_the_node_with_least_idle_gpu() -> None:
    mix = TaskMix.of([TaskClass(1, 500, cpu_milli=1000)])
    hosts = {"a": HostRoom(64000, 1 << 20), "b": HostRoom(64000, 1 << 20)}
    policy = FragmentationGradient(mix, hosts, HostUse(4000, 0), host_bound=True)
    idle_node = [gpu("a", 0), gpu("a", 1)]
    busy_node = [gpu("b", 0, used=1000), gpu("b", 1, used=600)]
    assert policy.node_score(busy_node, Placement(())) < policy.node_score(idle_node, Placement(()))
    assert policy.node_score(busy_node, Placement(()))[0] == policy.node_score(idle_node, Placement(()))[0] == 0.0
