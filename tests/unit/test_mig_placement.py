"""MIG placement: occupancy rules per the reference, the choose rule on hand-worked cases, profile sizing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpud._private.backend.geometry import GpuModel, MigProfile, lookup_model
from vgpud._private.core.mig_placement import (
    Choice,
    MigErrorKind,
    MigGpu,
    MigInstance,
    MigProfileError,
    capacity,
    choose,
    choose_first_fit,
    fits,
    no_room_message,
    profile_named,
    profile_of,
    slot_owners,
    smallest_profile_for,
    still_fits,
)

GiB = 1024**3
H100 = lookup_model("h100-80gb")
A100_40 = lookup_model("a100-40gb")
A30 = lookup_model("a30-24gb")
MIG_MODELS = ("a100-40gb", "a100-80gb", "h100-80gb", "h100-94gb", "h200-141gb", "a30-24gb")


def inst(model: GpuModel, name: str, start: int, lease: str = "") -> MigInstance:
    profile = profile_named(model, name)
    assert profile is not None, name
    return MigInstance(profile.id, start, profile.memory_slices, lease)


def gpu(model: GpuModel = H100, *placed: tuple[str, int], uuid: str = "GPU-0", mig: bool = True) -> MigGpu:
    return MigGpu(uuid, model, mig, tuple(inst(model, name, start) for name, start in placed))


def where(choice: Choice | None) -> tuple[int, int] | None:
    """(gpu index, start) of a Choice, None for None."""
    return None if choice is None else (choice.index, choice.start)


def assert_valid(g: MigGpu) -> None:
    """The reference's rules, checked from the raw table (not through `fits`)."""
    seen = [0] * g.model.memory_slices
    compute = 0
    counts: dict[int, int] = {}
    for i in g.instances:
        p = profile_of(g.model, i)
        assert p is not None
        assert i.start in p.allowed_starts
        assert i.size == p.memory_slices
        for s in range(i.start, i.start + i.size):
            seen[s] += 1
        compute += p.compute_slices
        counts[p.id] = counts.get(p.id, 0) + 1
        assert counts[p.id] <= p.max_instances, f"{p.name} x{counts[p.id]}"
    assert max(seen, default=0) <= 1, f"overlap: {seen}"
    assert compute <= g.model.compute_slices


# -- occupancy rules ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "starts"),
    [
        ("1g.10gb", (0, 1, 2, 3, 4, 5, 6)),
        ("1g.10gb+me", (0, 1, 2, 3, 4, 5, 6)),
        ("1g.20gb", (0, 2, 4, 6)),
        ("2g.20gb", (0, 2, 4)),
        ("3g.40gb", (0, 4)),
        ("4g.40gb", (0,)),
        ("7g.80gb", (0,)),
    ],
)
def test_h100_empty_gpu_offers_the_allowed_starts(name: str, starts: tuple[int, ...]) -> None:
    assert fits(gpu(), name) == starts


@pytest.mark.parametrize(
    ("name", "starts"), [("1g.6gb", (0, 1, 2, 3)), ("2g.12gb", (0, 2)), ("2g.12gb+me", (0, 2)), ("4g.24gb", (0,))]
)
def test_a30_empty_gpu_offers_the_allowed_starts(name: str, starts: tuple[int, ...]) -> None:
    assert fits(gpu(A30), name) == starts


@pytest.mark.parametrize(
    ("placed", "name", "starts"),
    [
        ([("3g.40gb", 4)], "1g.10gb", (0, 1, 2, 3)),
        ([("3g.40gb", 4)], "2g.20gb", (0, 2)),
        ([("3g.40gb", 4)], "3g.40gb", (0,)),
        ([("3g.40gb", 4)], "4g.40gb", (0,)),
        ([("3g.40gb", 4)], "7g.80gb", ()),
        ([("1g.20gb", 6)], "1g.10gb", (0, 1, 2, 3, 4, 5)),  # covers slices 6 and 7
        ([("1g.20gb", 6)], "3g.40gb", (0,)),
        ([("1g.20gb", 6)], "2g.20gb", (0, 2, 4)),
        ([("1g.10gb", 3)], "4g.40gb", ()),
        ([("1g.10gb", 3)], "2g.20gb", (0, 4)),
        ([("2g.20gb", 0), ("2g.20gb", 2), ("2g.20gb", 4)], "1g.10gb", (6,)),
        ([("2g.20gb", 0), ("2g.20gb", 2), ("2g.20gb", 4)], "1g.20gb", (6,)),
    ],
)
def test_h100_overlaps_block_starts(placed: list[tuple[str, int]], name: str, starts: tuple[int, ...]) -> None:
    assert fits(gpu(H100, *placed), name) == starts


def test_a30_overlaps_on_its_four_slices() -> None:
    assert fits(gpu(A30, ("2g.12gb", 2)), "1g.6gb") == (0, 1)
    assert fits(gpu(A30, ("2g.12gb", 2)), "2g.12gb") == (0,)
    assert fits(gpu(A30, ("2g.12gb", 2)), "4g.24gb") == ()
    assert fits(gpu(A30, ("1g.6gb", 0), ("1g.6gb", 1), ("2g.12gb", 2)), "1g.6gb") == ()


def test_me_profiles_count_apart_from_their_plain_twins() -> None:
    """instanceCount is per profile ID: one 1g.10gb+me at most, and it does not use up 1g.10gb's seven."""
    g = gpu(H100, ("1g.10gb+me", 0))
    assert fits(g, "1g.10gb+me") == ()
    assert fits(g, "1g.10gb") == (1, 2, 3, 4, 5, 6)
    assert fits(gpu(A30, ("2g.12gb+me", 0)), "2g.12gb+me") == ()
    assert fits(gpu(A30, ("2g.12gb+me", 0)), "2g.12gb") == (2,)


def toy_model(compute_slices: int, *profiles: MigProfile) -> GpuModel:
    """A made-up 4-memory-slice model, for rules the real tables never exercise."""
    return GpuModel("toy", ("toy",), 4 * GiB, 4, "toy", 4, compute_slices, profiles)


def test_compute_slice_limit_binds_when_memory_alone_would_not() -> None:
    """A toy model with fewer compute than memory slices: the compute sum stops placement."""
    toy = toy_model(2, MigProfile(1, "1g.1gb", 0, 1, 1, 4, (0, 1, 2, 3), 1024, 1))
    assert fits(gpu(toy, ("1g.1gb", 0)), "1g.1gb") == (1, 2, 3)
    assert fits(gpu(toy, ("1g.1gb", 0), ("1g.1gb", 1)), "1g.1gb") == ()
    assert capacity(gpu(toy), "1g.1gb") == 2


def test_capacity_counts_disjoint_placements_when_starts_overlap() -> None:
    """A toy profile of size 2 allowed at 0, 1 and 2 of 4 slices: three free starts, but only two fit at once."""
    toy = toy_model(
        4,
        MigProfile(3, "1g.1gb+me", 0, 1, 1, 1, (0, 1, 2, 3), 1024, 1),
        MigProfile(4, "1g.1gb", 0, 1, 1, 4, (0, 1, 2, 3), 1024, 1),
        MigProfile(5, "2g.2gb", 0, 1, 2, 3, (0, 1, 2), 2048, 2),  # neither compute nor count binds
    )
    assert fits(gpu(toy), "2g.2gb") == (0, 1, 2)
    assert capacity(gpu(toy), "2g.2gb") == 2
    assert capacity(gpu(toy, ("1g.1gb", 0)), "2g.2gb") == 1
    assert smallest_profile_for(toy, GiB).name == "1g.1gb", "a plain profile wins over its +me twin"


def test_an_instance_of_a_profile_the_table_lacks_still_takes_its_slices() -> None:
    unknown = MigInstance(profile_id=99, start=0, size=4)
    g = MigGpu("GPU-0", H100, True, (unknown,))
    assert fits(g, "3g.40gb") == (4,)
    assert fits(g, "1g.10gb") == (4, 5, 6)


def test_mig_off_offers_nothing() -> None:
    g = gpu(mig=False)
    assert fits(g, "1g.10gb") == ()
    assert still_fits(g) == ()
    assert capacity(g, "7g.80gb") == 0


def test_still_fits_counts_remaining_capacity() -> None:
    """The reference's example: a 3g at 0:4 leaves room for three 1g."""
    rooms = {r.profile.name: r.more for r in still_fits(gpu(H100, ("3g.40gb", 0)))}
    assert rooms == {"1g.10gb": 3, "1g.10gb+me": 1, "1g.20gb": 2, "2g.20gb": 1, "3g.40gb": 1}
    assert {r.profile.name: r.more for r in still_fits(gpu())}["1g.10gb"] == 7
    assert {r.profile.name: r.more for r in still_fits(gpu())}["1g.20gb"] == 4
    assert still_fits(gpu(H100, ("7g.80gb", 0))) == ()


def test_slot_owners_for_an_occupancy_bar() -> None:
    g = gpu(H100, ("1g.10gb", 0), ("3g.40gb", 4))
    owners = slot_owners(g)
    assert len(owners) == 8
    assert owners[0] == g.instances[0]
    assert owners[1:4] == (None, None, None)
    assert owners[4:] == (g.instances[1],) * 4
    assert slot_owners(gpu(A30)) == (None,) * 4


# -- choose: hand-worked cases -------------------------------------------------------------------------------
def test_first_1g_goes_to_slot_6_where_it_breaks_the_fewest_spans() -> None:
    """On an empty H100 a 1g at 6 leaves 4g@0, 3g@0 and 2g@0/2/4 placeable; at 0 it would kill 4g and 2g@0.
    First fit takes start 0."""
    pool = [gpu(uuid="a"), gpu(uuid="b")]
    assert where(choose(pool, "1g.10gb")) == (0, 6)
    assert where(choose_first_fit(pool, "1g.10gb")) == (0, 0)


def test_second_1g_joins_the_used_gpu_and_keeps_the_other_whole() -> None:
    """GPU a has 1g@6. On b a 1g would cost the pool a 7g; on a, starts 4 and 5 keep 4g@0/3g@0 and leave
    2g@0/2 (equal counts everywhere), so the lower start, 4, wins."""
    pool = [gpu(H100, ("1g.10gb", 6), uuid="a"), gpu(uuid="b")]
    assert where(choose(pool, "1g.10gb")) == (0, 4)


def test_3g_on_an_empty_gpu_takes_the_upper_half_so_a_4g_still_fits() -> None:
    assert where(choose([gpu()], "3g.40gb")) == (0, 4)
    assert where(choose_first_fit([gpu()], "3g.40gb")) == (0, 0)


def test_3g_fills_a_used_gpu_rather_than_break_an_empty_one() -> None:
    """a has 1g@6, so its only 3g start is 0; b is empty. Using b would cost the pool its second 7g."""
    pool = [gpu(uuid="b0"), gpu(H100, ("1g.10gb", 6), uuid="a"), gpu(uuid="b1")]
    assert where(choose(pool, "3g.40gb")) == (1, 0)


def test_2g_fills_the_tightest_gpu_and_keeps_a_4g_span() -> None:
    """a: 3g@4 (slices 0-3 free: a 4g still fits). b: 3g@4 + 2g@0 (slices 2-3 free). 2g on b at 2 keeps a's 4g."""
    pool = [gpu(H100, ("3g.40gb", 4), uuid="a"), gpu(H100, ("3g.40gb", 4), ("2g.20gb", 0), uuid="b")]
    assert where(choose(pool, "2g.20gb")) == (1, 2)
    assert where(choose_first_fit(pool, "2g.20gb")) == (0, 0)


def test_a30_second_1g_keeps_the_other_2g_span() -> None:
    """A30 [1g@0]: a 1g at 1 leaves 2g@2; at 2 or 3 no 2g would fit."""
    assert where(choose([gpu(A30, ("1g.6gb", 0))], "1g.6gb")) == (0, 1)


def test_choose_skips_gpus_off_mig_or_closed() -> None:
    closed = MigGpu("c", H100, True, schedulable=False)
    pool = [gpu(uuid="off", mig=False), closed, gpu(uuid="open")]
    assert where(choose(pool, "7g.80gb")) == (2, 0)
    assert choose(pool[:2], "7g.80gb") is None
    assert choose_first_fit(pool[:2], "7g.80gb") is None
    message = no_room_message(pool[:2], "7g.80gb")
    assert "1 are not in MIG mode" in message
    assert "1 are draining or unhealthy" in message


def test_full_pool_says_what_still_fits() -> None:
    pool = [gpu(H100, ("4g.40gb", 0), ("3g.40gb", 4), uuid="a"), gpu(H100, ("3g.40gb", 0), uuid="b")]
    assert choose(pool, "7g.80gb") is None
    assert "b: 1g.10gb x3" in no_room_message(pool, "7g.80gb")


def test_mixed_pool_resolves_the_name_per_model() -> None:
    pool = [gpu(H100, uuid="h"), gpu(A30, uuid="a")]
    choice = choose(pool, "2g.12gb")
    assert choice is not None
    assert (choice.gpu.uuid, choice.profile.name, choice.profile.id) == ("a", "2g.12gb", 5)
    assert choice.instance == MigInstance(5, choice.start, 2)


def test_neither_policy_wins_every_sequence() -> None:
    """Why the property tests compare the policies on one state only: on the sequence 3g, 4g, 1g (one H100)
    ours places 3g@4 and 4g@0 and then has no room for the 1g; first fit places 3g@0, refuses the 4g and
    fits the 1g. Keeping big spans whole is a bet on future big requests, not a dominance."""
    ours, ff = gpu(), gpu()
    outcomes = []
    for name in ("3g.40gb", "4g.40gb", "1g.10gb"):
        a, b = choose([ours], name), choose_first_fit([ff], name)
        outcomes.append((a is not None, b is not None))
        ours = ours.with_instance(a.instance) if a else ours
        ff = ff.with_instance(b.instance) if b else ff
    assert outcomes == [(True, True), (True, False), (False, True)]


# -- errors --------------------------------------------------------------------------------------------------
def test_unknown_profile_names_the_profiles_here() -> None:
    with pytest.raises(MigProfileError) as err:
        choose([gpu(), gpu(A30)], "5g.50gb")
    assert err.value.kind is MigErrorKind.UNKNOWN_PROFILE
    assert "h100-80gb: 1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb" in str(err.value)
    assert "a30-24gb: 1g.6gb" in str(err.value)


def test_profile_of_another_model_says_whose_it_is() -> None:
    with pytest.raises(MigProfileError) as err:
        choose_first_fit([gpu()], "2g.12gb")
    assert err.value.kind is MigErrorKind.PROFILE_NOT_HERE
    assert "is a profile of a30-24gb" in str(err.value)
    with pytest.raises(MigProfileError, match=r"profiles here: a30-24gb: 1g\.6gb,"):
        fits(gpu(A30), "3g.40gb")


def test_pool_without_mig_gpus() -> None:
    l4 = MigGpu("l4", lookup_model("l4-24gb"), False)
    with pytest.raises(MigProfileError) as err:
        choose([l4], "1g.10gb")
    assert err.value.kind is MigErrorKind.NO_MIG_GPU
    assert "h100-80gb" in str(err.value)


def test_profile_names_accept_the_nvml_prefix_and_any_case() -> None:
    assert where(choose([gpu()], "MIG 7g.80gb")) == (0, 0)
    assert where(choose([gpu()], "7G.80GB")) == (0, 0)


# -- smallest_profile_for ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "memory", "compute", "expected"),
    [
        ("h100-80gb", 1 * GiB, None, "1g.10gb"),  # not its +me twin
        ("h100-80gb", 18 * GiB, None, "1g.20gb"),  # 19.62 GiB, 1 compute slice: smaller than 2g.20gb
        ("h100-80gb", 20 * GiB, None, "3g.40gb"),  # the "20gb" profiles hold 19.62 GiB
        ("h100-80gb", 18 * GiB, 200, "2g.20gb"),  # 1g.20gb has 26/132 SMs = 0.197
        ("h100-80gb", 1 * GiB, 460, "4g.40gb"),  # 3g has 60/132 = 0.455, 4g 64/132 = 0.485
        ("h100-80gb", 40 * GiB, None, "7g.80gb"),
        ("h100-80gb", 1 * GiB, 1000, "7g.80gb"),
        ("a100-40gb", 4 * GiB, None, "1g.5gb"),
        ("a100-40gb", 5 * GiB, None, "1g.10gb"),  # 1g.5gb holds 4.75 GiB
        ("a100-40gb", 18 * GiB, None, "3g.20gb"),
        ("a100-40gb", 1 * GiB, 1000, "7g.40gb"),  # 98 of 108 SMs: all MIG can give
        ("a30-24gb", 5 * GiB, None, "1g.6gb"),
        ("a30-24gb", 6 * GiB, None, "2g.12gb"),  # 1g.6gb holds 5.81 GiB
        ("a30-24gb", 18 * GiB, None, "4g.24gb"),
    ],
)
def test_smallest_profile_for(key: str, memory: int, compute: int | None, expected: str) -> None:
    assert smallest_profile_for(lookup_model(key), memory, compute).name == expected


@pytest.mark.parametrize(
    ("key", "memory", "largest"),
    [
        ("h100-80gb", 80 * GiB, "7g.80gb (79.2GiB, 1 GPU)"),
        ("a100-40gb", 40 * GiB, "7g.40gb"),
        ("a30-24gb", 24 * GiB, "4g.24gb (23.4GiB"),
    ],
)
def test_nothing_fits_lists_what_does(key: str, memory: int, largest: str) -> None:
    with pytest.raises(MigProfileError) as err:
        smallest_profile_for(lookup_model(key), memory)
    assert err.value.kind is MigErrorKind.TOO_LARGE
    assert largest in str(err.value)


def test_smallest_profile_on_a_model_without_mig() -> None:
    with pytest.raises(MigProfileError, match="t4-16gb has no MIG"):
        smallest_profile_for(lookup_model("t4-16gb"), GiB)


# -- properties ----------------------------------------------------------------------------------------------
@st.composite
def pools(draw: st.DrawFn) -> list[MigGpu]:
    """1-4 GPUs of one MIG model, filled by a random mix of our and first-fit placements and removals."""
    model = lookup_model(draw(st.sampled_from(MIG_MODELS)))
    gpus = [MigGpu(f"GPU-{i}", model, True) for i in range(draw(st.integers(1, 4)))]
    names = [p.name for p in model.mig_profiles]
    for _ in range(draw(st.integers(0, 20))):
        g = draw(st.integers(0, len(gpus) - 1))
        if draw(st.booleans()) and gpus[g].instances:
            gpus[g] = gpus[g].without_instance(draw(st.sampled_from(gpus[g].instances)).start)
            continue
        policy = draw(st.sampled_from([choose, choose_first_fit]))
        c = policy(gpus, draw(st.sampled_from(names)))
        if c is not None:
            gpus[c.index] = c.gpu.with_instance(c.instance)
    return gpus


@settings(max_examples=300, deadline=None)
@given(pools(), st.data())
def test_choose_places_validly_and_whenever_first_fit_can(gpus: list[MigGpu], data: st.DataObject) -> None:
    for g in gpus:
        assert_valid(g)
    name = data.draw(st.sampled_from([p.name for p in gpus[0].model.mig_profiles]))
    ours, ff = choose(gpus, name), choose_first_fit(gpus, name)
    assert (ours is None) == (ff is None) == (not any(fits(g, name) for g in gpus))
    if ours is not None:
        assert ours.gpu is gpus[ours.index]
        assert ours.start in ours.profile.allowed_starts
        assert_valid(ours.gpu.with_instance(ours.instance))


@settings(max_examples=200, deadline=None)
@given(pools())
def test_capacity_is_how_many_can_really_be_created(gpus: list[MigGpu]) -> None:
    g = gpus[0]
    for room in still_fits(g):
        now = g
        for _ in range(room.more):
            now = now.with_instance(
                MigInstance(room.profile.id, fits(now, room.profile)[0], room.profile.memory_slices)
            )
        assert fits(now, room.profile) == ()
        assert_valid(now)
