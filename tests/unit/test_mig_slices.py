"""MIG slices end to end in the pure core: requests in, claims and MIG records out.

place_mig (and place() for flexible requests) against hand-built GPU views, the never-fits and busy
messages, GpuState's MIG bookkeeping (with_claim, without_lease, JSON), and one property: no sequence of
grants, releases and node-daemon steps ever books overlapping instances or too many of one profile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpud._private.backend.geometry import MIB, GpuModel, lookup_model
from vgpud._private.core.lease_record import LeaseRecord, SliceRecord
from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState, overlapping
from vgpud._private.core.mig_slices import compute_share, mig_gpu, place_mig
from vgpud._private.core.model import Claim, GpuMode, GpuRecord, GpuState, Isolation, LeaseState, Owner, ShapeRequest
from vgpud._private.core.placement import GpuView, Placement, Unplaceable, place, proportional_compute

GiB = 1024**3
H100 = lookup_model("h100-80gb")
A100_40 = lookup_model("a100-40gb")


def record(index: int, model: str = "h100-80gb", *, mig_enabled: bool = True) -> GpuRecord:
    m = lookup_model(model)
    return GpuRecord(
        uuid=f"GPU-{index}",
        node="n1",
        index=index,
        model=m.key,
        name=m.product_name,
        memory_bytes=m.memory_bytes,
        sm_count=m.sm_count,
        mig_capable=m.mig_capable,
        mig_enabled=mig_enabled,
        backend="sim",
    )


def mig_view(index: int, model: str = "h100-80gb", *, state: GpuState | None = None, ok: bool = True) -> GpuView:
    """A GPU in MIG mode, hardware switched too (what MIG placement needs)."""
    return GpuView(record(index, model), state or GpuState(mode=GpuMode.MIG), schedulable=ok)


def shared_view(index: int, model: str = "h100-80gb", *, state: GpuState | None = None) -> GpuView:
    """A GPU in shared mode with MIG off in hardware."""
    return GpuView(record(index, model, mig_enabled=False), state or GpuState())


def slot(name: str, start: int, model: GpuModel = H100) -> MigSlot:
    p = model.mig_profile(name)
    return MigSlot(p.name, p.id, start, p.memory_slices)


def mig(
    profile: str = "", memory: int = 0, compute: int = 0, count: int = 1, models: tuple[str, ...] = ()
) -> ShapeRequest:
    return ShapeRequest(Isolation.MIG, memory, compute, count, models, mig_profile=profile)


def flexible(memory: int, count: int = 1) -> ShapeRequest:
    return ShapeRequest(Isolation.SHARED, memory, 0, count, flexible=True)


def claims_of(result: Placement | Unplaceable) -> list[tuple[str, Claim]]:
    assert isinstance(result, Placement), result
    return [(view.record.uuid, claim) for view, claim in result.assignments]


def booked(views: list[GpuView], result: Placement | Unplaceable) -> dict[str, GpuState]:
    """Each GPU's state once the placement's claims are applied, as the allocator does."""
    states = {v.record.uuid: v.state for v in views}
    for uuid, claim in claims_of(result):
        states[uuid] = states[uuid].with_claim(claim)
    return states


def refusal(result: Placement | Unplaceable) -> Unplaceable:
    assert isinstance(result, Unplaceable), result
    return result


# -- what a grant books ---------------------------------------------------------------------------------------
def test_named_profile_gets_its_slot_memory_and_compute() -> None:
    ((uuid, claim),) = claims_of(place_mig(mig("3g.40gb"), [mig_view(0)], "L1"))
    assert uuid == "GPU-0"
    assert claim.lease_id == "L1"
    assert claim.isolation is Isolation.MIG
    # 4g.40gb can only start at 0, so the 3g goes to 4 and keeps it placeable.
    assert claim.mig == MigSlot("3g.40gb", 9, 4, 4)
    assert claim.memory_bytes == 40448 * MIB
    assert claim.compute_milli == round(60 * 1000 / 132) == 455


def test_named_profile_accepts_the_nvidia_smi_spelling() -> None:
    ((_, claim),) = claims_of(place_mig(mig("MIG 7g.80gb"), [mig_view(0)], "L1"))
    assert claim.mig == MigSlot("7g.80gb", 0, 0, 8)
    assert claim.compute_milli == 1000


@pytest.mark.parametrize(
    ("model", "memory", "compute", "profile"),
    [
        ("h100-80gb", 18 * GiB, 0, "1g.20gb"),  # 1g.10gb holds 9.75 GiB; 1g.20gb has 1 compute slice, 2g.20gb 2
        ("h100-80gb", 9 * GiB, 0, "1g.10gb"),
        ("h100-80gb", 10 * GiB, 400, "3g.40gb"),  # 2g.20gb has 242 milli of SMs, 3g.40gb 454
        ("a100-40gb", 15 * GiB, 0, "3g.20gb"),  # 2g.10gb holds 9.62 GiB, 3g.20gb 19.5
        ("a100-40gb", 30 * GiB, 0, "7g.40gb"),  # 4g.20gb holds 19.5 GiB too: only 7g.40gb holds 30
        ("a30-24gb", 10 * GiB, 0, "2g.12gb"),  # the plain profile over its +me twin
    ],
)
def test_memory_only_request_takes_the_smallest_holding_profile(
    model: str, memory: int, compute: int, profile: str
) -> None:
    ((_, claim),) = claims_of(place_mig(mig(memory=memory, compute=compute), [mig_view(0, model)], "L1"))
    geometry = lookup_model(model)
    expected = geometry.mig_profile(profile)
    assert claim.mig is not None
    assert (claim.mig.profile, claim.mig.profile_id, claim.mig.size) == (profile, expected.id, expected.memory_slices)
    assert claim.memory_bytes == expected.memory_bytes >= memory
    assert claim.compute_milli == compute_share(geometry, expected)


def test_warm_instance_of_the_profile_is_reused_before_a_new_one() -> None:
    # Warm at start 3: a new 1g.10gb would go to 6 (keeping the 2-, 3- and 4-slice spans whole).
    warm = MigRecord(slot("1g.10gb", 3), MigState.WARM, uuid="MIG-warm", gpu_instance_id=9, idle_since=100.0)
    view = mig_view(0, state=GpuState(mode=GpuMode.MIG, mig=(warm,)))
    result = place_mig(mig("1g.10gb"), [view], "L1")
    ((_, claim),) = claims_of(result)
    assert claim.mig == warm.slot
    state = booked([view], result)["GPU-0"]
    (bound,) = state.mig
    assert bound == MigRecord(warm.slot, MigState.READY, "L1", "MIG-warm", 9, 0.0)
    # A second request for the same profile gets a new instance, not the one now bound.
    second = place_mig(mig("1g.10gb"), [replace(view, state=state)], "L2")
    ((_, other),) = claims_of(second)
    assert other.mig is not None
    assert other.mig.start != 3


def test_memory_only_request_reuses_a_warm_instance_of_its_profile() -> None:
    warm = MigRecord(slot("1g.20gb", 2), MigState.WARM, uuid="MIG-warm")
    view = mig_view(0, state=GpuState(mode=GpuMode.MIG, mig=(warm,)))
    ((_, claim),) = claims_of(place_mig(mig(memory=18 * GiB), [view], "L1"))
    assert claim.mig == warm.slot


def test_warm_instance_of_another_profile_is_not_taken() -> None:
    warm = MigRecord(slot("1g.20gb", 0), MigState.WARM, uuid="MIG-warm")
    view = mig_view(0, state=GpuState(mode=GpuMode.MIG, mig=(warm,)))
    result = place_mig(mig("1g.10gb"), [view], "L1")
    ((_, claim),) = claims_of(result)
    assert claim.mig is not None
    assert claim.mig.profile == "1g.10gb"
    assert claim.mig.start not in (0, 1)
    state = booked([view], result)["GPU-0"]
    assert state.mig_at(0) == warm
    assert overlapping(state.mig) == []


def test_warm_instance_on_an_unschedulable_gpu_is_not_reused() -> None:
    warm = MigRecord(slot("1g.10gb", 3), MigState.WARM, uuid="MIG-warm")
    closed = mig_view(0, state=GpuState(mode=GpuMode.MIG, mig=(warm,)), ok=False)
    ((uuid, _),) = claims_of(place_mig(mig("1g.10gb"), [closed, mig_view(1)], "L1"))
    assert uuid == "GPU-1"


def test_count_places_non_overlapping_instances_on_one_gpu() -> None:
    views = [mig_view(0)]
    result = place_mig(mig("2g.20gb", count=3), views, "L1")
    placed = claims_of(result)
    assert [uuid for uuid, _ in placed] == ["GPU-0"] * 3
    assert sorted(c.mig.start for _, c in placed if c.mig is not None) == [0, 2, 4]
    state = booked(views, result)["GPU-0"]
    assert overlapping(state.mig) == []
    assert [m.state for m in state.mig] == [MigState.CREATING] * 3
    assert {m.lease_id for m in state.mig} == {"L1"}


def test_count_spreads_over_gpus_when_one_is_too_small() -> None:
    views = [mig_view(0), mig_view(1)]
    result = place_mig(mig("3g.40gb", count=3), views, "L1")
    placed = claims_of(result)
    assert len(placed) == 3
    assert Counter(uuid for uuid, _ in placed) in (Counter({"GPU-0": 2, "GPU-1": 1}), Counter({"GPU-0": 1, "GPU-1": 2}))
    for state in booked(views, result).values():
        assert overlapping(state.mig) == []
        assert len(state.mig) <= H100.mig_profile("3g.40gb").max_instances


# -- refusals -------------------------------------------------------------------------------------------------
def test_unknown_profile_never_fits() -> None:
    refused = refusal(place_mig(mig("9g.1gb"), [mig_view(0)], "L1"))
    assert refused.never
    assert "unknown MIG profile '9g.1gb'" in refused.message
    assert "3g.40gb" in refused.message  # what the pool does have


def test_profile_of_another_model_names_the_models_here_and_their_profiles() -> None:
    refused = refusal(place_mig(mig("3g.20gb"), [mig_view(0), mig_view(1)], "L1"))
    assert refused.never
    assert "is a profile of a100-40gb" in refused.message
    assert "h100-80gb: 1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb" in refused.message


@pytest.mark.parametrize("request_", [mig("1g.10gb"), mig(memory=GiB)], ids=["named", "memory"])
def test_pool_without_mig_capable_gpu_never_fits(request_: ShapeRequest) -> None:
    views = [shared_view(0, "l4-24gb"), shared_view(1, "t4-16gb")]
    refused = refusal(place_mig(request_, views, "L1"))
    assert refused.never
    assert "MIG-capable" in refused.message
    assert "h100-80gb" in refused.message  # the models that would do


def test_too_large_for_every_profile_never_fits() -> None:
    refused = refusal(place_mig(mig(memory=100 * GiB), [mig_view(0)], "L1"))
    assert refused.never
    assert "no MIG profile of h100-80gb holds" in refused.message


def test_no_gpu_in_mig_mode_never_fits_and_says_how_to_switch() -> None:
    refused = refusal(place_mig(mig("3g.40gb"), [shared_view(0), shared_view(1)], "L1"))
    assert refused.never
    assert "vgpuctl gpu mode" in refused.message
    assert "GPU-0" in refused.message


def test_mode_switched_but_hardware_not_yet_is_busy_not_never() -> None:
    pending = GpuView(record(0, mig_enabled=False), GpuState(mode=GpuMode.MIG))
    gpu = mig_gpu(pending.record, pending.state)
    assert gpu is not None
    assert not gpu.mig_enabled
    refused = refusal(place_mig(mig("3g.40gb"), [pending], "L1"))
    assert not refused.never


def test_hardware_in_mig_but_mode_shared_is_not_used_for_mig() -> None:
    leaving = GpuView(record(0, mig_enabled=True), GpuState(mode=GpuMode.SHARED))
    gpu = mig_gpu(leaving.record, leaving.state)
    assert gpu is not None
    assert not gpu.mig_enabled


def test_busy_gpu_is_not_never_and_lists_what_still_fits() -> None:
    state = GpuState(mode=GpuMode.MIG)
    state = state.with_claim(Claim("A", 0, 0, Isolation.MIG, slot("3g.40gb", 0)))
    state = state.with_claim(Claim("B", 0, 0, Isolation.MIG, slot("2g.20gb", 4)))
    refused = refusal(place_mig(mig("3g.40gb"), [mig_view(0, state=state)], "L1"))
    assert not refused.never
    assert "no room for 3g.40gb" in refused.message
    assert "GPU-0: 1g.10gb x1, 1g.10gb+me x1, 1g.20gb x1" in refused.message


def test_releasing_instances_keep_their_slots() -> None:
    state = GpuState(mode=GpuMode.MIG).with_claim(Claim("A", 0, 0, Isolation.MIG, slot("7g.80gb", 0)))
    state = state.without_lease("A")
    assert state.claims == ()
    assert [m.state for m in state.mig] == [MigState.RELEASING]
    refused = refusal(place_mig(mig("1g.10gb"), [mig_view(0, state=state)], "L1"))
    assert not refused.never


def test_foreign_instances_keep_their_slots() -> None:
    foreign = MigRecord(slot("4g.40gb", 0), MigState.FOREIGN, uuid="MIG-theirs")
    views = [mig_view(0, state=GpuState(mode=GpuMode.MIG, mig=(foreign,)))]
    assert not refusal(place_mig(mig("3g.40gb", count=2), views, "L")).never
    ((_, claim),) = claims_of(place_mig(mig("3g.40gb"), views, "L"))
    assert claim.mig == slot("3g.40gb", 4)


def test_unschedulable_gpus_are_skipped() -> None:
    ((uuid, _),) = claims_of(place_mig(mig("7g.80gb"), [mig_view(0, ok=False), mig_view(1)], "L1"))
    assert uuid == "GPU-1"
    refused = refusal(place_mig(mig("7g.80gb"), [mig_view(0, ok=False)], "L1"))
    assert not refused.never
    assert "draining or unhealthy" in refused.message


def test_gpu_models_filter() -> None:
    views = [mig_view(0, "h100-80gb"), mig_view(1, "a100-40gb"), shared_view(2, "l4-24gb")]
    ((uuid, claim),) = claims_of(place_mig(mig(memory=15 * GiB, models=("a100-40gb",)), views, "L1"))
    assert (uuid, claim.mig.profile if claim.mig else "") == ("GPU-1", "3g.20gb")
    ((uuid, claim),) = claims_of(place_mig(mig(memory=15 * GiB, models=("h100-80gb",)), views, "L1"))
    assert (uuid, claim.mig.profile if claim.mig else "") == ("GPU-0", "1g.20gb")
    # The filter leaves only the L4: no MIG-capable GPU for this request.
    refused = refusal(place_mig(mig(memory=15 * GiB, models=("l4-24gb",)), views, "L1"))
    assert refused.never
    # A profile only the filtered-out model has.
    refused = refusal(place_mig(mig("3g.40gb", models=("a100-40gb",)), views, "L1"))
    assert refused.never
    assert "is a profile of" in refused.message


# -- flexible requests (no isolation asked) -------------------------------------------------------------------
def test_flexible_takes_a_mig_instance_when_it_is_modest() -> None:
    views = [mig_view(0), shared_view(1)]
    ((uuid, claim),) = claims_of(place(flexible(18 * GiB), views, "L1"))  # 1g.20gb: 19.62 GiB for 18 asked
    assert uuid == "GPU-0"
    assert claim.isolation is Isolation.MIG
    assert claim.mig is not None
    assert (claim.mig.profile, claim.mig.profile_id, claim.mig.size) == ("1g.20gb", 15, 2)


def test_flexible_takes_a_shared_slice_when_the_instance_would_be_over_twice_the_ask() -> None:
    views = [mig_view(0), shared_view(1)]
    # The smallest instance holding 4 GiB is 1g.10gb: 9.75 GiB, more than twice the ask.
    ((uuid, claim),) = claims_of(place(flexible(4 * GiB), views, "L1"))
    assert uuid == "GPU-1"
    assert claim == Claim("L1", 4 * GiB, proportional_compute(views[1], 4 * GiB), Isolation.SHARED)
    assert claim.compute_milli == -(-4 * GiB * 1000 // H100.memory_bytes)


@pytest.mark.parametrize("model", ["h100-80gb", "l4-24gb"])
def test_flexible_takes_a_shared_slice_without_a_mig_gpu(model: str) -> None:
    views = [shared_view(0, model)]
    ((uuid, claim),) = claims_of(place(flexible(18 * GiB), views, "L1"))
    assert uuid == "GPU-0"
    assert claim.isolation is Isolation.SHARED
    assert claim.mig is None
    assert claim.compute_milli == proportional_compute(views[0], 18 * GiB)


def test_flexible_that_fits_nowhere_ever_is_never() -> None:
    refused = refusal(place(flexible(200 * GiB), [mig_view(0), shared_view(1)], "L1"))
    assert refused.never


# -- shared and whole placement keep off MIG hardware ---------------------------------------------------------
@pytest.mark.parametrize(
    "request_",
    [ShapeRequest(Isolation.SHARED, GiB, 100), ShapeRequest(Isolation.WHOLE, 0, 1000)],
    ids=["shared", "whole"],
)
def test_shared_and_whole_refuse_a_gpu_whose_hardware_is_in_mig(request_: ShapeRequest) -> None:
    still_mig = GpuView(record(0, mig_enabled=True), GpuState(mode=GpuMode.SHARED))
    refused = refusal(place(request_, [still_mig], "L1"))
    assert not refused.never  # the switch back is under way
    ((uuid, _),) = claims_of(place(request_, [still_mig, shared_view(1)], "L1"))
    assert uuid == "GPU-1"


def test_shared_refuses_a_gpu_that_still_has_mig_records() -> None:
    releasing = MigRecord(slot("1g.10gb", 0), MigState.RELEASING, "old", "MIG-old")
    leftover = GpuView(record(0, mig_enabled=False), GpuState(mode=GpuMode.SHARED, mig=(releasing,)))
    assert isinstance(place(ShapeRequest(Isolation.SHARED, GiB, 100), [leftover], "L1"), Unplaceable)


def test_shared_request_does_not_land_on_a_mig_mode_gpu() -> None:
    refused = refusal(place(ShapeRequest(Isolation.SHARED, GiB, 100), [mig_view(0)], "L1"))
    assert refused.never
    assert "shared mode" in refused.message


# -- GpuState bookkeeping -------------------------------------------------------------------------------------
def test_with_claim_books_creating_and_without_lease_turns_it_releasing() -> None:
    state = GpuState(mode=GpuMode.MIG).with_claim(Claim("L1", 10, 121, Isolation.MIG, slot("1g.10gb", 2)))
    assert state.mig == (MigRecord(slot("1g.10gb", 2), MigState.CREATING, "L1"),)
    assert state.mig[0].held
    state = state.with_claim(Claim("L2", GiB, 100))  # a claim without MIG books no instance
    assert len(state.mig) == 1
    released = state.without_lease("L1")
    assert [c.lease_id for c in released.claims] == ["L2"]
    assert released.mig == (MigRecord(slot("1g.10gb", 2), MigState.RELEASING, "L1"),)
    assert not released.mig[0].held
    assert released.without_lease("L1") == released  # a second release changes nothing


def test_without_lease_turns_ready_releasing_and_leaves_others_alone() -> None:
    ready = MigRecord(slot("3g.40gb", 0), MigState.READY, "L1", "MIG-a", 1)
    other = MigRecord(slot("1g.10gb", 4), MigState.READY, "L2", "MIG-b", 2)
    warm = MigRecord(slot("1g.10gb", 5), MigState.WARM, uuid="MIG-c", gpu_instance_id=3, idle_since=5.0)
    foreign = MigRecord(slot("1g.10gb", 6), MigState.FOREIGN, uuid="MIG-d")
    state = GpuState(GpuMode.MIG, (Claim("L1", 1, 1, Isolation.MIG, ready.slot),), (ready, other, warm, foreign))
    after = state.without_lease("L1")
    assert after.mig == (replace(ready, state=MigState.RELEASING), other, warm, foreign)
    assert after.mig[0].uuid == "MIG-a"  # the node daemon needs it to destroy the instance
    assert after.claims == ()


def test_with_claim_binds_only_a_warm_record_of_the_same_slot() -> None:
    warm = MigRecord(slot("1g.20gb", 2), MigState.WARM, uuid="MIG-w", gpu_instance_id=4, idle_since=7.0)
    state = GpuState(GpuMode.MIG, mig=(warm,))
    bound = state.with_claim(Claim("L1", 1, 1, Isolation.MIG, warm.slot))
    assert bound.mig == (MigRecord(warm.slot, MigState.READY, "L1", "MIG-w", 4, 0.0),)
    assert bound.mig_at(2) is bound.mig[0]
    assert bound.mig_at(3) is None
    # A READY record at the slot is not rebound.
    again = bound.with_claim(Claim("L2", 1, 1, Isolation.MIG, warm.slot))
    assert [m.state for m in again.mig].count(MigState.READY) == 1
    assert overlapping(again.mig) != []  # what the invariant checker must catch


def test_with_mig_replaced_swaps_drops_and_keeps_order() -> None:
    a = MigRecord(slot("1g.10gb", 6), MigState.CREATING, "L1")
    b = MigRecord(slot("3g.40gb", 0), MigState.READY, "L2", "MIG-b")
    state = GpuState(GpuMode.MIG, mig=(a, b))
    made = replace(a, state=MigState.READY, uuid="MIG-a")
    swapped = state.with_mig_replaced(a, made)
    assert swapped.mig == (b, made)
    assert state.with_mig_replaced(b, None).mig == (a,)


def test_overlapping_pairs() -> None:
    a = MigRecord(slot("3g.40gb", 0), MigState.READY, "L1")
    b = MigRecord(slot("2g.20gb", 4), MigState.READY, "L2")
    c = MigRecord(slot("1g.20gb", 6), MigState.WARM)
    assert overlapping((a, b, c)) == []
    assert overlapping(()) == []
    d = MigRecord(slot("1g.10gb", 3), MigState.CREATING, "L3")
    assert overlapping((b, d, a)) == [(a, d)]
    e = MigRecord(slot("7g.80gb", 0), MigState.FOREIGN)
    assert len(overlapping((a, b, c, e))) == 3
    assert overlapping((a, a)) == [(a, a)]


def test_gpu_state_json_round_trip_with_mig() -> None:
    state = GpuState(
        mode=GpuMode.MIG,
        claims=(
            Claim("L1", 40448 * MIB, 455, Isolation.MIG, slot("3g.40gb", 4)),
            Claim("L2", 9984 * MIB, 121, Isolation.MIG, slot("1g.10gb", 0)),
        ),
        mig=(
            MigRecord(slot("1g.10gb", 0), MigState.CREATING, "L2"),
            MigRecord(slot("1g.10gb", 1), MigState.WARM, uuid="MIG-w", gpu_instance_id=11, idle_since=1700000000.25),
            MigRecord(slot("1g.10gb", 2), MigState.RELEASING, "L0", "MIG-r", 12),
            MigRecord(slot("1g.10gb", 3), MigState.FOREIGN, uuid="MIG-f", gpu_instance_id=13),
            MigRecord(slot("3g.40gb", 4), MigState.READY, "L1", "MIG-a", 2),
        ),
    )
    assert GpuState.from_json(state.to_json()) == state
    assert GpuState.from_json(GpuState().to_json()) == GpuState()
    assert b'"mig"' not in GpuState(claims=(Claim("L3", GiB, 10),)).to_json()


def test_lease_json_round_trip_with_mig_slices() -> None:
    waiting = SliceRecord("n1", "GPU-0", 0, "h100-80gb", Isolation.MIG, 9984 * MIB, 121, "1g.10gb", 3, 1)
    made = replace(waiting, mig_start=4, mig_uuid="MIG-x")
    lease = LeaseRecord(
        id="L1",
        token_sha256="0" * 64,
        state=LeaseState.GRANTED,
        node="n1",
        project="",
        priority="",
        owner=Owner(),
        request=ShapeRequest(Isolation.SHARED, 9 * GiB, 0, 2, flexible=True),
        slices=(waiting, made),
        created_at=1.0,
        ttl_seconds=30,
        liveness_lease=1,
    )
    assert LeaseRecord.from_json(lease.to_json()) == lease
    assert waiting.waiting_for_mig
    assert not made.waiting_for_mig
    assert lease.waiting_for_mig
    assert not replace(lease, slices=(made,)).waiting_for_mig
    assert not SliceRecord("n1", "GPU-0", 0, "h100-80gb", Isolation.SHARED, GiB, 10).waiting_for_mig


# -- counts ------------------------------------------------------------------------------------------------------
def test_busy_message_for_a_count_describes_the_gpus_as_they_are() -> None:
    one_small = GpuState(mode=GpuMode.MIG).with_claim(Claim("other", GiB, 1, Isolation.MIG, slot("1g.10gb", 0)))
    refused = refusal(place_mig(mig("3g.40gb", count=2), [mig_view(0, state=one_small)], "L1"))
    assert not refused.never
    assert "full" not in refused.message
    assert "3g.40gb x1" in refused.message


def test_count_beyond_what_the_pool_could_ever_hold_never_fits() -> None:
    assert H100.mig_profile("1g.10gb").max_instances == 7
    refused = refusal(place_mig(mig("1g.10gb", count=8), [mig_view(0)], "L1"))
    assert refused.never
    assert "at most 7" in refused.message
    assert not refusal(place_mig(mig("3g.40gb", count=3), [mig_view(0), mig_view(1, ok=False)], "L1")).never


# -- property: grants never overlap ---------------------------------------------------------------------------
POOL_MODELS = ("h100-80gb", "h100-80gb", "a100-40gb")
PROFILES = sorted({p.name for key in set(POOL_MODELS) for p in lookup_model(key).mig_profiles})


class Step(NamedTuple):
    """One thing that happens to the pool: a grant, a release, or a node-daemon step."""

    kind: str
    profile: str
    gib: int
    slices: int
    pick: int
    keep_warm: bool


STEPS = st.builds(
    Step,
    kind=st.sampled_from(["grant", "grant", "release", "realise", "realise"]),
    profile=st.sampled_from(["", *PROFILES]),
    gib=st.integers(1, 45),
    slices=st.integers(1, 3),
    pick=st.integers(0, 1000),
    keep_warm=st.booleans(),
)


def _realise(state: GpuState, pick: int, keep_warm: bool, made: int) -> GpuState:
    """One node-daemon step on one record: CREATING -> READY, RELEASING -> WARM or gone."""
    pending = [m for m in state.mig if m.state in (MigState.CREATING, MigState.RELEASING)]
    if not pending:
        return state
    target = pending[pick % len(pending)]
    if target.state is MigState.CREATING:
        return state.with_mig_replaced(target, replace(target, state=MigState.READY, uuid=f"MIG-{made}"))
    if keep_warm and target.uuid:
        return state.with_mig_replaced(target, replace(target, state=MigState.WARM, lease_id="", idle_since=1.0))
    return state.with_mig_replaced(target, None)


def _check(uuid: str, model: GpuModel, state: GpuState, memory_bytes: int) -> None:
    assert overlapping(state.mig) == [], (uuid, state.mig)
    for pid, n in Counter(m.slot.profile_id for m in state.mig).items():
        assert n <= model.mig_profile(pid).max_instances, (uuid, pid, n)
    for m in state.mig:
        assert m.start in model.mig_profile(m.slot.profile_id).allowed_starts
    # Every MIG claim is held by exactly the record at its slot, and every held record by its claim.
    held = {(m.lease_id, m.slot) for m in state.mig if m.held}
    assert {(c.lease_id, c.mig) for c in state.claims if c.mig is not None} == held
    assert state.memory_claimed <= memory_bytes
    assert state.compute_claimed <= 1000


@settings(max_examples=150, deadline=None)
@given(st.lists(STEPS, min_size=1, max_size=40))
def test_grants_releases_and_realising_never_overlap(steps: list[Step]) -> None:
    records = [record(i, model) for i, model in enumerate(POOL_MODELS)]
    states = {r.uuid: GpuState(mode=GpuMode.MIG) for r in records}
    live: list[str] = []
    for n, step in enumerate(steps):
        if step.kind == "grant":
            views = [GpuView(r, states[r.uuid]) for r in records]
            lease_id = f"L{n}"
            memory = 0 if step.profile else step.gib * GiB
            result = place_mig(mig(step.profile, memory, count=step.slices), views, lease_id)
            if isinstance(result, Placement):
                assert len(result.assignments) == step.slices
                for uuid, claim in claims_of(result):
                    states[uuid] = states[uuid].with_claim(claim)
                live.append(lease_id)
        elif step.kind == "release" and live:
            lease_id = live.pop(step.pick % len(live))
            states = {uuid: s.without_lease(lease_id) for uuid, s in states.items()}
        elif step.kind == "realise":
            uuid = records[step.pick % len(records)].uuid
            states[uuid] = _realise(states[uuid], step.pick, step.keep_warm, n)
        for r in records:
            _check(r.uuid, lookup_model(r.model), states[r.uuid], r.memory_bytes)
