from hypothesis import given, settings
from hypothesis import strategies as st

from vgpud._private.core.model import Claim, GpuMode, GpuRecord, GpuState, Isolation, ShapeRequest
from vgpud._private.core.placement import GpuView, Placement, Unplaceable, place

GiB = 1024**3


def gpu(index: int, memory: int = 80 * GiB, model: str = "h100-80gb", node: str = "n1") -> GpuRecord:
    return GpuRecord(
        uuid=f"GPU-{index:08d}",
        node=node,
        index=index,
        model=model,
        name=model,
        memory_bytes=memory,
        sm_count=132,
        mig_capable=True,
        mig_enabled=False,
        backend="sim",
    )


def shared(memory: int, compute: int, count: int = 1, models: tuple[str, ...] = ()) -> ShapeRequest:
    return ShapeRequest(Isolation.SHARED, memory, compute, count, models)


def test_best_fit_picks_the_tightest_gpu() -> None:
    busy = GpuState(claims=(Claim("a", 60 * GiB, 700),))
    views = [GpuView(gpu(0), GpuState()), GpuView(gpu(1), busy)]
    result = place(shared(10 * GiB, 200), views, "new")
    assert isinstance(result, Placement)
    assert [v.record.uuid for v, _ in result.assignments] == ["GPU-00000001"]
    assert result.assignments[0][1] == Claim("new", 10 * GiB, 200)


def test_no_capacity_says_what_would_fit() -> None:
    full = GpuState(claims=(Claim("a", 70 * GiB, 900),))
    result = place(shared(20 * GiB, 500), [GpuView(gpu(0), full)], "x")
    assert isinstance(result, Unplaceable)
    assert not result.never
    assert "largest free slice: 10GiB and 0.1 GPU" in result.message


def test_larger_than_any_gpu_never_fits() -> None:
    result = place(shared(100 * GiB, 100), [GpuView(gpu(0), GpuState())], "x")
    assert isinstance(result, Unplaceable)
    assert result.never
    assert "more than the largest shared GPU" in result.message


def test_count_takes_distinct_gpus_all_or_nothing() -> None:
    views = [GpuView(gpu(0), GpuState()), GpuView(gpu(1), GpuState(claims=(Claim("a", 79 * GiB, 10),)))]
    result = place(shared(10 * GiB, 100, count=2), views, "x")
    assert isinstance(result, Unplaceable)
    assert not result.never
    views.append(GpuView(gpu(2), GpuState()))
    ok = place(shared(10 * GiB, 100, count=2), views, "x")
    assert isinstance(ok, Placement)
    assert len({v.record.uuid for v, _ in ok.assignments}) == 2


def test_count_beyond_the_node_never_fits() -> None:
    result = place(shared(GiB, 100, count=3), [GpuView(gpu(0), GpuState()), GpuView(gpu(1), GpuState())], "x")
    assert isinstance(result, Unplaceable)
    assert result.never


def test_model_selector_filters() -> None:
    views = [GpuView(gpu(0, model="a100-40gb", memory=40 * GiB), GpuState()), GpuView(gpu(1), GpuState())]
    result = place(shared(GiB, 100, models=("a100-40gb",)), views, "x")
    assert isinstance(result, Placement)
    assert result.assignments[0][0].record.model == "a100-40gb"
    missing = place(shared(GiB, 100, models=("l4-24gb",)), views, "x")
    assert isinstance(missing, Unplaceable)
    assert missing.never


def test_mode_rules() -> None:
    exclusive = GpuView(gpu(0), GpuState(mode=GpuMode.EXCLUSIVE))
    assert isinstance(place(shared(GiB, 100), [exclusive], "x"), Unplaceable)
    whole = place(ShapeRequest(Isolation.WHOLE, 0, 1000), [exclusive], "x")
    assert isinstance(whole, Placement)
    assert whole.assignments[0][1] == Claim("x", 80 * GiB, 1000, Isolation.WHOLE)
    used = GpuView(gpu(1), GpuState(claims=(Claim("a", GiB, 1),)))
    assert isinstance(place(ShapeRequest(Isolation.WHOLE, 0, 1000), [used], "x"), Unplaceable)
    held = GpuView(gpu(2), GpuState(claims=(Claim("a", 80 * GiB, 1000, Isolation.WHOLE),)))
    assert isinstance(place(shared(1, 1), [held], "x"), Unplaceable)


def test_unschedulable_gpus_are_skipped_but_not_never() -> None:
    result = place(shared(GiB, 100), [GpuView(gpu(0), GpuState(), schedulable=False)], "x")
    assert isinstance(result, Unplaceable)
    assert not result.never
    assert "draining or unhealthy" in result.message


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 80), st.integers(1, 1000), st.integers(1, 3)),
        min_size=1,
        max_size=60,
    )
)
def test_greedy_sequence_never_overcommits(requests: list[tuple[int, int, int]]) -> None:
    """Placing a random sequence, one by one, never puts more on a GPU than it has."""
    states = {i: GpuState() for i in range(3)}
    records = {i: gpu(i) for i in range(3)}
    for n, (gib, milli, count) in enumerate(requests):
        views = [GpuView(records[i], states[i]) for i in states]
        result = place(shared(gib * GiB, milli, count), views, f"l{n}")
        if isinstance(result, Placement):
            assert len({v.record.uuid for v, _ in result.assignments}) == count
            for view, claim in result.assignments:
                states[view.record.index] = states[view.record.index].with_claim(claim)
    for i, state in states.items():
        assert state.memory_claimed <= records[i].memory_bytes
        assert state.compute_claimed <= 1000
