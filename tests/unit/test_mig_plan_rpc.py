"""PlanMigLayout's answer: a layout against GPU records and states, as steps with node, GPU, start and blockers."""

from __future__ import annotations

import pytest

from vgpu._private import reasons
from vgpu.api.v1 import admin_pb2
from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState
from vgpud._private.core.model import GpuMode, GpuRecord, GpuState
from vgpud._private.refusal import Refusal
from vgpud._private.services.mig_plan import FOREIGN_BLOCK, plan_response

UUID_A = "GPU-aaaaaaaa-0000-4000-8000-000000000001"
UUID_B = "GPU-bbbbbbbb-0000-4000-8000-000000000002"
UUID_T4 = "GPU-cccccccc-0000-4000-8000-000000000003"

H100_LAYOUT = '[models."h100-80gb"]\nprofiles = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]\n'

# h100-80gb profile ids (geometry.py): name -> (id, memory slices).
H100_PROFILES = {"1g.10gb": (19, 1), "2g.20gb": (14, 2), "3g.40gb": (9, 4), "4g.40gb": (5, 4), "7g.80gb": (0, 8)}

Row = tuple[str, str, str, str, int, str]


def record(uuid: str = UUID_A, *, node: str = "node-a", index: int = 0, model: str = "h100-80gb") -> GpuRecord:
    mig = model != "t4-16gb"
    return GpuRecord(uuid, node, index, model, model.upper(), 80 * 1024**3, 132, mig, mig, "sim")


def mig(profile: str, start: int, state: MigState = MigState.WARM, lease: str = "", uuid: str = "") -> MigRecord:
    profile_id, size = H100_PROFILES[profile]
    return MigRecord(MigSlot(profile, profile_id, start, size), state, lease, uuid or f"MIG-{start}")


def mig_state(*instances: MigRecord) -> GpuState:
    return GpuState(mode=GpuMode.MIG, mig=instances)


def rows(response: admin_pb2.PlanMigLayoutResponse) -> list[Row]:
    """Each step as (action, node, gpu, profile, start, blocked_by), action as the lower-case word."""
    return [
        (
            admin_pb2.MigPlanStep.Action.Name(s.action).removeprefix("ACTION_").lower(),
            s.node,
            s.gpu_uuid,
            s.profile,
            s.start,
            s.blocked_by,
        )
        for s in response.steps
    ]


def test_empty_gpu_in_mig_mode_gets_creates_largest_first_with_its_node() -> None:
    response = plan_response([(record(node="node-7"), mig_state(), True)], H100_LAYOUT)
    assert rows(response) == [
        ("create", "node-7", UUID_A, "3g.40gb", 4, ""),
        ("create", "node-7", UUID_A, "2g.20gb", 0, ""),
        ("create", "node-7", UUID_A, "1g.10gb", 2, ""),
        ("create", "node-7", UUID_A, "1g.10gb", 3, ""),
    ]


def test_existing_instances_the_layout_allows_are_kept() -> None:
    """The leased 3g@4 and the warm 1g@0 both fit the layout, so only a 2g and one more 1g are made."""
    state = mig_state(mig("1g.10gb", 0), mig("3g.40gb", 4, MigState.READY, "lease-aaa"))
    assert rows(plan_response([(record(), state, True)], H100_LAYOUT)) == [
        ("create", "node-a", UUID_A, "2g.20gb", 2, ""),
        ("create", "node-a", UUID_A, "1g.10gb", 1, ""),
        ("keep", "node-a", UUID_A, "1g.10gb", 0, ""),
        ("keep", "node-a", UUID_A, "3g.40gb", 4, ""),
    ]


def test_warm_instance_in_the_way_is_destroyed_before_the_creates() -> None:
    state = mig_state(mig("4g.40gb", 0), mig("1g.10gb", 5))
    layout = f'[gpus."{UUID_A}"]\nprofiles = ["7g.80gb"]\n'
    assert rows(plan_response([(record(), state, True)], layout)) == [
        ("destroy", "node-a", UUID_A, "4g.40gb", 0, ""),
        ("destroy", "node-a", UUID_A, "1g.10gb", 5, ""),
        ("create", "node-a", UUID_A, "7g.80gb", 0, ""),
    ]


def test_leased_instance_in_the_way_blocks_every_change_on_its_gpu() -> None:
    state = mig_state(mig("4g.40gb", 0, MigState.READY, "lease-aaa"), mig("1g.10gb", 4))
    layout = f'[gpus."{UUID_A}"]\nprofiles = ["3g.40gb", "3g.40gb"]\n'
    waits = "waits for 4g.40gb@0: lease lease-aaa"
    assert rows(plan_response([(record(), state, True)], layout)) == [
        ("destroy", "node-a", UUID_A, "4g.40gb", 0, "lease lease-aaa"),
        ("destroy", "node-a", UUID_A, "1g.10gb", 4, waits),
        ("create", "node-a", UUID_A, "3g.40gb", 0, waits),
        ("create", "node-a", UUID_A, "3g.40gb", 4, waits),
    ]


def test_creating_instance_names_its_lease_too() -> None:
    state = mig_state(mig("7g.80gb", 0, MigState.CREATING, "lease-new"))
    layout = f'[gpus."{UUID_A}"]\nprofiles = ["4g.40gb"]\n'
    steps = rows(plan_response([(record(), state, True)], layout))
    assert steps[0] == ("destroy", "node-a", UUID_A, "7g.80gb", 0, "lease lease-new")
    assert steps[1:] == [("create", "node-a", UUID_A, "4g.40gb", 0, "waits for 7g.80gb@0: lease lease-new")]


def test_releasing_instance_says_the_node_daemon_is_destroying_it() -> None:
    state = mig_state(mig("7g.80gb", 0, MigState.RELEASING, "lease-old"))
    layout = f'[gpus."{UUID_A}"]\nprofiles = ["4g.40gb"]\n'
    first = rows(plan_response([(record(), state, True)], layout))[0]
    assert first[:5] == ("destroy", "node-a", UUID_A, "7g.80gb", 0)
    assert first[5] == "lease lease-old ended; the node daemon is still destroying the instance"


def test_foreign_instance_in_the_way_is_never_destroyed() -> None:
    state = mig_state(mig("1g.10gb", 0, MigState.FOREIGN))
    layout = f'[gpus."{UUID_A}"]\nprofiles = ["4g.40gb@0"]\n'
    assert rows(plan_response([(record(), state, True)], layout)) == [
        ("destroy", "node-a", UUID_A, "1g.10gb", 0, FOREIGN_BLOCK),
        ("create", "node-a", UUID_A, "4g.40gb", 0, f"waits for 1g.10gb@0: {FOREIGN_BLOCK}"),
    ]
    assert FOREIGN_BLOCK == "not created by vgpu; never destroyed"


def test_foreign_instance_the_layout_allows_is_kept() -> None:
    state = mig_state(mig("1g.10gb", 0, MigState.FOREIGN))
    layout = f'[gpus."{UUID_A}"]\nprofiles = ["1g.10gb", "3g.40gb"]\n'
    assert rows(plan_response([(record(), state, True)], layout)) == [
        ("create", "node-a", UUID_A, "3g.40gb", 4, ""),
        ("keep", "node-a", UUID_A, "1g.10gb", 0, ""),
    ]


def test_gpu_in_shared_mode_gets_creates_blocked_on_the_mode_switch() -> None:
    layout = '[models."h100-80gb"]\nprofiles = ["7g.80gb"]\n'
    response = plan_response([(record(), GpuState(mode=GpuMode.SHARED), True)], layout)
    assert rows(response) == [
        ("create", "node-a", UUID_A, "7g.80gb", 0, f"GPU not in MIG mode: vgpuctl gpu mode {UUID_A} mig"),
    ]


def test_gpu_switched_to_mig_but_not_yet_on_the_hardware_says_pending() -> None:
    hardware_off = GpuRecord(UUID_A, "node-a", 0, "h100-80gb", "H100", 80 * 1024**3, 132, True, False, "sim")
    response = plan_response([(hardware_off, mig_state(), True)], '[models."h100-80gb"]\nprofiles = ["7g.80gb"]\n')
    assert [step.blocked_by for step in response.steps] == [
        "MIG mode pending: the node daemon has yet to switch the hardware"
    ]


def test_gpu_entry_wins_over_model_entry_and_gpus_come_in_node_and_index_order() -> None:
    layout = H100_LAYOUT + f'[gpus."{UUID_A}"]\nprofiles = ["7g.80gb"]\n'
    pool = [
        (record(UUID_A, node="node-b", index=0), mig_state(), True),
        (record(UUID_B, node="node-a", index=3), mig_state(), False),  # unschedulable: still planned
        (record(UUID_T4, node="node-a", index=0, model="t4-16gb"), GpuState(), True),  # no MIG: left alone
    ]
    steps = rows(plan_response(pool, layout))
    assert [(node, gpu, profile) for _, node, gpu, profile, _, _ in steps] == [
        ("node-a", UUID_B, "3g.40gb"),
        ("node-a", UUID_B, "2g.20gb"),
        ("node-a", UUID_B, "1g.10gb"),
        ("node-a", UUID_B, "1g.10gb"),
        ("node-b", UUID_A, "7g.80gb"),
    ]


def test_a_gpu_may_be_named_node_and_index() -> None:
    pool = [
        (record(UUID_A, node="node-a", index=0), mig_state(), True),
        (record(UUID_B, node="node-b", index=3), mig_state(), True),
    ]
    steps = rows(plan_response(pool, '[gpus."node-b:3"]\nprofiles = ["7g.80gb"]\n'))
    assert steps == [("create", "node-b", UUID_B, "7g.80gb", 0, "")]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("node-a:5", 'gpus."node-a:5": no GPU 5 on node node-a (its GPUs: 0, 1); see vgpuctl gpus'),
        ("node-z:0", 'gpus."node-z:0": no GPU 0 on node node-z (no such node in the pool); see vgpuctl gpus'),
        ("node-a:0", f'gpus."node-a:0": GPU {UUID_A} is named twice (by its uuid and as NODE:INDEX)'),
    ],
)
def test_an_unknown_node_or_index_in_a_layout_is_refused(key: str, message: str) -> None:
    pool = [(record(), mig_state(), True), (record(UUID_T4, index=1, model="t4-16gb"), GpuState(), True)]
    layout = f'[gpus."{UUID_A}"]\nprofiles = ["7g.80gb"]\n[gpus."{key}"]\nprofiles = ["7g.80gb"]\n'
    with pytest.raises(Refusal) as caught:
        plan_response(pool, layout)
    assert caught.value.reason == reasons.INVALID_REQUEST
    assert caught.value.message == message


def test_gpus_the_layout_does_not_name_get_no_steps() -> None:
    state = mig_state(mig("7g.80gb", 0, MigState.READY, "lease-aaa"))
    response = plan_response([(record(), state, True)], '[models."a100-40gb"]\nprofiles = ["7g.40gb"]\n')
    assert list(response.steps) == []


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ('[models."h100-80gb"]\nprofiles = [3g.40gb]\n', "layout is not valid TOML: "),
        ('[models."h100-80gb"]\nprofiles = ["3g.20gb"]\n', "h100-80gb has no MIG profile '3g.20gb'"),
        ('[models."h100-80gb"]\nprofiles = ["4g.40gb", "4g.40gb"]\n', "does not fit one h100-80gb"),
        ('[gpus."GPU-nope"]\nprofiles = ["7g.80gb"]\n', "no GPU with this uuid in the pool"),
        (
            f'[gpus."{UUID_T4}"]\nprofiles = []\n',
            f'gpus."{UUID_T4}": the GPU (node node-a, index 1) is a t4-16gb, which has no MIG',
        ),
        ("[nodes.x]\nprofiles = []\n", "unknown top-level key(s) nodes"),
    ],
)
def test_bad_layouts_are_refused_as_invalid_requests(layout: str, message: str) -> None:
    pool = [(record(), mig_state(), True), (record(UUID_T4, index=1, model="t4-16gb"), GpuState(), True)]
    with pytest.raises(Refusal) as caught:
        plan_response(pool, layout)
    assert caught.value.reason == reasons.INVALID_REQUEST
    assert message in caught.value.message
