"""Declarative MIG layouts: parsing errors name the field, plans keep leased instances, plans reach the layout."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_mig_placement import A30, H100, MIG_MODELS, assert_valid, gpu, inst
from vgpud._private.backend.geometry import lookup_model
from vgpud._private.core.mig_layout import LayoutError, Plan, Step, apply_plan, parse_layout, plan
from vgpud._private.core.mig_placement import MigGpu, MigInstance, choose, profile_of

H100_LAYOUT = """
[models.h100-80gb]
profiles = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
"""


def steps(p: Plan) -> dict[str, list[str]]:
    """The plan as readable "gpu:profile@start" lists."""

    def show(ss: tuple[Step, ...]) -> list[str]:
        return [f"{s.gpu_uuid}:{s.profile}@{s.instance.start}" for s in ss]

    return {"create": show(p.create), "destroy": show(p.destroy), "conflicts": show(p.conflicts)}


def name_of(g: MigGpu, i: MigInstance) -> str:
    profile = profile_of(g.model, i)
    assert profile is not None
    return profile.name


# -- parsing -------------------------------------------------------------------------------------------------
def test_parse_model_and_gpu_entries() -> None:
    layout = parse_layout(H100_LAYOUT + '[gpus."GPU-1"]\nprofiles = ["4g.40gb@0", "3g.40gb@4"]\n')
    assert [w.profile for w in layout.by_model["h100-80gb"]] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert [(w.profile, w.start) for w in layout.by_gpu["GPU-1"]] == [("4g.40gb", 0), ("3g.40gb", 4)]
    assert layout.by_gpu["GPU-1"][1].field == "gpus.GPU-1.profiles[1]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.h100-80gb]\nprofiles = [3g.40gb]\n", r"not valid TOML: .*\(at line 2, "),
        ("[nodes.a]\nprofiles = []\n", "unknown top-level key.*nodes"),
        ('[models.h100-80gb]\nprofile = ["3g.40gb"]\n', "models.h100-80gb: unknown key.*profile"),
        ("[models.h100-80gb]\nprofiles = 3\n", r"models.h100-80gb.profiles: missing or not a list"),
        ('[models.h999]\nprofiles = ["3g.40gb"]\n', "models.h999: unknown GPU model 'h999'"),
        (
            '[models.h100-80gb]\nprofiles = ["1g.10gb", "3g.20gb"]\n',
            r"profiles\[1\]: h100-80gb has no MIG profile '3g.20gb'",
        ),
        ('[models.h100-80gb]\nprofiles = ["3g.40gb@x"]\n', r"profiles\[0\]: '3g.40gb@x': the start after @"),
        ('[models.h100-80gb]\nprofiles = ["3g.40gb@2"]\n', r"3g.40gb cannot start at 2 \(allowed starts: 0, 4\)"),
        ("[models.h100-80gb]\nprofiles = [7]\n", r"profiles\[0\]: 7 is not a string"),
        ('[models.h100-80gb]\nprofiles = ["4g.40gb", "4g.40gb"]\n', r"\[4g.40gb, 4g.40gb\] does not fit one h100-80gb"),
        ('[models.a30-24gb]\nprofiles = ["2g.12gb", "2g.12gb", "1g.6gb"]\n', "does not fit one a30-24gb"),
    ],
)
def test_bad_layouts_name_the_line_or_field(text: str, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        parse_layout(text)


# -- planning: hand-worked cases -----------------------------------------------------------------------------
def test_plan_on_empty_gpus_places_large_first_and_keeps_nothing_to_destroy() -> None:
    """3g takes 4..7 (0..3 then takes 2g@0, 1g@2, 1g@3: every order fills the GPU, lowest starts win)."""
    p = plan(parse_layout(H100_LAYOUT), [gpu(uuid="a")])
    assert steps(p) == {
        "create": ["a:3g.40gb@4", "a:2g.20gb@0", "a:1g.10gb@2", "a:1g.10gb@3"],
        "destroy": [],
        "conflicts": [],
    }
    assert p.ok


def test_plan_keeps_what_already_matches() -> None:
    g = MigGpu("a", H100, True, (inst(H100, "3g.40gb", 4, lease="L1"), inst(H100, "1g.10gb", 0)))
    p = plan(parse_layout(H100_LAYOUT), [g])
    assert steps(p) == {"create": ["a:2g.20gb@2", "a:1g.10gb@1"], "destroy": [], "conflicts": []}


def test_a_leased_3g_in_the_lower_half_blocks_a_full_layout() -> None:
    """3g+2g+1g+1g uses all 8 slices, and slice 7 only serves it through a 3g at 4: the leased 3g@0 must go."""
    g = MigGpu("a", H100, True, (inst(H100, "3g.40gb", 0, lease="L1"), inst(H100, "1g.10gb", 6)))
    p = plan(parse_layout(H100_LAYOUT), [g])
    assert steps(p) == {
        "create": ["a:3g.40gb@4", "a:2g.20gb@0", "a:1g.10gb@2", "a:1g.10gb@3"],
        "destroy": ["a:1g.10gb@6"],
        "conflicts": ["a:3g.40gb@0"],
    }


def test_plan_destroys_idle_instances_and_reports_leased_ones() -> None:
    g = MigGpu("a", H100, True, (inst(H100, "1g.10gb", 0, lease="L1"), inst(H100, "1g.10gb", 1)))
    p = plan(parse_layout('[models.h100-80gb]\nprofiles = ["4g.40gb", "3g.40gb"]\n'), [g])
    assert steps(p) == {
        "create": ["a:4g.40gb@0", "a:3g.40gb@4"],
        "destroy": ["a:1g.10gb@1"],
        "conflicts": ["a:1g.10gb@0"],
    }
    assert not p.ok
    with pytest.raises(LayoutError, match="1 conflict"):
        apply_plan([g], p)


def test_plan_moves_the_free_instances_around_a_leased_one() -> None:
    """A leased 1g@5 stays, so the 3g goes to 0 and the idle 1g@0 is destroyed to make room."""
    g = MigGpu("a", H100, True, (inst(H100, "1g.10gb", 5, lease="L1"), inst(H100, "1g.10gb", 0)))
    p = plan(parse_layout('[models.h100-80gb]\nprofiles = ["3g.40gb", "1g.10gb"]\n'), [g])
    assert steps(p) == {"create": ["a:3g.40gb@0"], "destroy": ["a:1g.10gb@0"], "conflicts": []}


def test_gpu_entry_wins_and_unmatched_gpus_are_left_alone() -> None:
    layout = parse_layout(H100_LAYOUT + '[gpus.b]\nprofiles = ["7g.80gb"]\n')
    pool = [gpu(uuid="a"), gpu(uuid="b"), gpu(A30, ("4g.24gb", 0), uuid="c")]
    p = plan(layout, pool)
    assert [s for s in steps(p)["create"] if s.startswith("b:")] == ["b:7g.80gb@0"]
    assert len([s for s in steps(p)["create"] if s.startswith("a:")]) == 4
    assert not [s for s in steps(p)["create"] if s.startswith("c:")]


def test_pinned_starts_are_honoured() -> None:
    p = plan(parse_layout('[gpus.a]\nprofiles = ["1g.10gb@0", "3g.40gb"]\n'), [gpu(uuid="a")])
    assert steps(p)["create"] == ["a:3g.40gb@4", "a:1g.10gb@0"]


def test_empty_profiles_list_clears_the_gpu() -> None:
    p = plan(parse_layout("[gpus.a]\nprofiles = []\n"), [gpu(H100, ("3g.40gb", 0), ("3g.40gb", 4), uuid="a")])
    assert steps(p) == {"create": [], "destroy": ["a:3g.40gb@0", "a:3g.40gb@4"], "conflicts": []}


def test_gpu_off_mig_must_be_switched_first() -> None:
    p = plan(parse_layout('[gpus.a]\nprofiles = ["7g.80gb"]\n'), [gpu(uuid="a", mig=False)])
    assert p.enable_mig == ("a",)
    (after,) = apply_plan([gpu(uuid="a", mig=False)], p)
    assert after.mig_enabled
    assert [(i.profile_id, i.start) for i in after.instances] == [(0, 0)]


@pytest.mark.parametrize(
    ("text", "pool", "message"),
    [
        ('[gpus."GPU-x"]\nprofiles = []\n', [gpu(uuid="a")], "gpus.GPU-x: no GPU with this uuid in the pool"),
        ('[gpus.a]\nprofiles = ["1g.10gb"]\n', [gpu(A30, uuid="a")], r"gpus.a.profiles\[0\]: a30-24gb has no MIG"),
        (
            '[gpus.a]\nprofiles = ["1g.10gb"]\n',
            [MigGpu("a", lookup_model("l4-24gb"), False)],
            "gpus.a: a is a l4-24gb, which has no MIG",
        ),
    ],
)
def test_plan_errors_name_the_gpu_entry(text: str, pool: list[MigGpu], message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        plan(parse_layout(text), pool)


# -- property: applying a plan yields the layout -------------------------------------------------------------
@st.composite
def filled(draw: st.DrawFn, model_key: str, uuid: str, leases: bool) -> MigGpu:
    """One GPU filled by random `choose` calls (some instances leased when `leases`)."""
    model = lookup_model(model_key)
    g = MigGpu(uuid, model, True)
    for _ in range(draw(st.integers(0, 8))):
        c = choose([g], draw(st.sampled_from([p.name for p in model.mig_profiles])))
        if c is not None:
            lease = "L" if leases and draw(st.booleans()) else ""
            g = g.with_instance(inst(model, c.profile.name, c.start, lease))
    return g


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[MigGpu], str, dict[str, tuple[list[str], dict[str, int]]]]:
    """A pool, a layout text for it, and per GPU the profiles it asks for and the starts it pins."""
    key = draw(st.sampled_from(MIG_MODELS))
    leases = draw(st.booleans())
    pool = [draw(filled(key, f"GPU-{i}", leases)) for i in range(draw(st.integers(1, 3)))]
    lines, wanted = [], {}
    for g in pool:
        target = draw(filled(key, g.uuid, False))  # a reachable layout, so it always fits
        items, pinned = [], {}
        for i in target.instances:
            name = name_of(target, i)
            if draw(st.booleans()):
                items.append(f"{name}@{i.start}")
                pinned[name + f"@{i.start}"] = i.start
            else:
                items.append(name)
        lines.append(f'[gpus."{g.uuid}"]\nprofiles = {json.dumps(items)}\n')
        wanted[g.uuid] = ([x.partition("@")[0] for x in items], pinned)
    return pool, "".join(lines), wanted


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_applying_a_plan_yields_the_layout(
    scenario: tuple[list[MigGpu], str, dict[str, tuple[list[str], dict[str, int]]]],
) -> None:
    pool, text, wanted = scenario
    p = plan(parse_layout(text), pool)
    for c in p.conflicts:
        assert c.instance.lease_id, "only leased instances are conflicts"
    assert all(not d.instance.lease_id for d in p.destroy)
    if not p.ok:
        return
    for before, after in zip(pool, apply_plan(pool, p), strict=True):
        assert_valid(after)
        names, pinned = wanted[after.uuid]
        have = [name_of(after, i) for i in after.instances]
        assert Counter(have) == Counter(names)
        starts = {(name_of(after, i), i.start) for i in after.instances}
        assert all((key.partition("@")[0], start) in starts for key, start in pinned.items())
        leased = {i for i in before.instances if i.lease_id}
        assert leased <= set(after.instances), "leased instances are never destroyed"
