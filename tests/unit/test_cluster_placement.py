"""Cross-node placement and the leader's queue order (pure core)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vgpu._private import reasons
from vgpud._private.core.cluster_placement import place_on_nodes
from vgpud._private.core.model import Claim, GpuRecord, GpuState, Isolation, ShapeRequest
from vgpud._private.core.placement import GpuView, Placement, Unplaceable
from vgpud._private.core.queue_order import Admit, Hold, Reject, Waiting, decide

GiB = 1024**3
WHOLE = ShapeRequest(Isolation.WHOLE, 0, 1000)


def gpu(node: str, index: int, state: GpuState | None = None, *, open_: bool = True) -> GpuView:
    record = GpuRecord(
        uuid=f"GPU-{node}-{index}",
        node=node,
        index=index,
        model="h100-80gb",
        name="H100",
        memory_bytes=80 * GiB,
        sm_count=132,
        mig_capable=True,
        mig_enabled=False,
        backend="sim",
    )
    return GpuView(record, state or GpuState(), open_)


def node(name: str, gpus: int, busy: int = 0) -> list[GpuView]:
    taken = GpuState(claims=(Claim("other", 80 * GiB, 1000, Isolation.WHOLE),))
    return [gpu(name, i, taken if i < busy else None) for i in range(gpus)]


def shared(memory: int, compute: int, count: int = 1) -> ShapeRequest:
    return ShapeRequest(Isolation.SHARED, memory, compute, count)


def whole(count: int) -> ShapeRequest:
    return ShapeRequest(Isolation.WHOLE, 0, 1000, count)


def nodes_of(result: Placement | Unplaceable) -> list[str]:
    assert isinstance(result, Placement), result
    return [view.record.node for view, _ in result.assignments]


def test_a_multi_gpu_request_lands_on_one_node_when_one_can_hold_it() -> None:
    pool = {"a": node("a", 4, busy=1), "b": node("b", 8, busy=2)}
    assert nodes_of(place_on_nodes(whole(3), pool, "x")) == ["a"] * 3
    result = place_on_nodes(whole(6), pool, "x")
    assert nodes_of(result) == ["b"] * 6


def test_the_tightest_node_wins() -> None:
    half = GpuState(claims=(Claim("o", 40 * GiB, 500),))
    pool = {"a": [gpu("a", 0)], "b": [gpu("b", 0, half)]}
    assert nodes_of(place_on_nodes(shared(20 * GiB, 200), pool, "x")) == ["b"]


def test_only_a_spanning_gang_spreads_over_nodes() -> None:
    pool = {"a": node("a", 2), "b": node("b", 2), "c": node("c", 4, busy=3)}
    alone = place_on_nodes(whole(4), pool, "x")
    assert isinstance(alone, Unplaceable)
    assert not alone.never  # c could hold 4 once it is free
    spread = place_on_nodes(whole(5), pool, "x", span=True)
    assert sorted(nodes_of(spread)) == ["a", "a", "b", "b", "c"]


def test_a_gang_larger_than_the_pool_never_fits() -> None:
    pool = {"a": node("a", 2), "b": node("b", 2)}
    result = place_on_nodes(whole(5), pool, "x", span=True)
    assert isinstance(result, Unplaceable)
    assert result.never
    assert "whole pool" in result.message


def test_too_big_for_every_node_without_span_says_a_gang_could_span() -> None:
    result = place_on_nodes(whole(3), {"a": node("a", 2), "b": node("b", 2)}, "x")
    assert isinstance(result, Unplaceable)
    assert result.never
    assert "gang" in result.message


def test_an_empty_pool_never_fits() -> None:
    result = place_on_nodes(whole(1), {}, "x")
    assert isinstance(result, Unplaceable)
    assert result.never


def waiting(lease_id: str, request: ShapeRequest, target: str = "", *, wait: bool = True) -> Waiting:
    return Waiting(lease_id, request, target, span=False, wait=wait)


def test_queue_grants_in_order_and_the_blocked_head_holds_its_nodes() -> None:
    pool = {"a": node("a", 2, busy=1), "b": node("b", 1)}
    decisions = decide(
        [
            waiting("big", whole(2), "a"),  # a has one free GPU: waits
            waiting("small-a", whole(1), "a"),  # would fit on a, but big waits there first
            waiting("small-b", whole(1), "b"),  # b is nobody's: granted
            waiting("any", whole(1)),  # any node includes a: waits behind big
        ],
        pool,
    )
    assert [type(d) for d in decisions] == [Hold, Hold, Admit, Hold]
    assert isinstance(decisions[1], Hold)
    assert "big" in decisions[1].message


def test_admitted_capacity_is_taken_for_later_decisions() -> None:
    decisions = decide([waiting("one", whole(1)), waiting("two", whole(1))], {"a": node("a", 1)})
    assert [type(d) for d in decisions] == [Admit, Hold]


def test_fail_fast_requests_are_refused_not_held_and_down_or_unknown_nodes_are_named() -> None:
    decisions = decide(
        [
            waiting("ff", whole(2), "a", wait=False),
            waiting("down", whole(1), "gone"),
            waiting("nobody", whole(1), "nowhere"),
            waiting("huge", whole(3), "a"),
            waiting("next", whole(1), "a"),
        ],
        {"a": node("a", 2, busy=1)},
        known_nodes=frozenset({"gone"}),
    )
    assert [(type(d), getattr(d, "reason", "")) for d in decisions] == [
        (Reject, reasons.NO_CAPACITY),
        (Reject, reasons.NODE_DOWN),
        (Reject, reasons.NODE_NOT_FOUND),
        (Reject, reasons.NEVER_FITS),
        (Admit, ""),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 80), st.integers(1, 1000), st.integers(1, 3), st.sampled_from(["", "a", "b"])),
        max_size=12,
    ),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_admitted_requests_never_overcommit_any_gpu(shapes: list[tuple[int, int, int, str]], spans: list[bool]) -> None:
    pool = {"a": node("a", 2), "b": node("b", 3)}
    queue = [
        Waiting(f"r{i}", shared(m * GiB, c, n), target, span=spans[i] and not target, wait=True)
        for i, (m, c, n, target) in enumerate(shapes)
    ]
    used: dict[str, tuple[int, int]] = {}
    for decision in decide(queue, pool):
        if not isinstance(decision, Admit):
            continue
        uuids = [view.record.uuid for view, _ in decision.placement.assignments]
        assert len(set(uuids)) == len(uuids)
        for view, claim in decision.placement.assignments:
            memory, compute = used.get(view.record.uuid, (0, 0))
            used[view.record.uuid] = (memory + claim.memory_bytes, compute + claim.compute_milli)
    for memory, compute in used.values():
        assert memory <= 80 * GiB
        assert compute <= 1000
