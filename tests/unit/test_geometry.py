"""The GPU model table: lookups, product-name matching and MIG geometry against the reference."""

from __future__ import annotations

import pytest

from vgpud._private.backend import geometry
from vgpud._private.backend.geometry import MIB, UnknownModelError, lookup_model, model_for_product_name

MIG_MODELS = ["a100-40gb", "a100-80gb", "h100-80gb", "h100-94gb", "h200-141gb", "a30-24gb"]


def test_known_models_include_the_required_keys() -> None:
    keys = set(geometry.known_models())
    assert set(MIG_MODELS) <= keys
    assert {"l4-24gb", "a10-24gb", "t4-16gb", "rtx4090-24gb", "l40s-48gb"} <= keys
    assert len(keys) == len(geometry.known_models()), "duplicate keys"


@pytest.mark.parametrize(
    ("key", "sms"),
    [
        ("h100-80gb", 132),
        ("a100-40gb", 108),
        ("a100-80gb", 108),
        ("h200-141gb", 132),
        ("h100-94gb", 132),
        ("a30-24gb", 56),
        ("l4-24gb", 58),
        ("a10-24gb", 72),
        ("t4-16gb", 40),
        ("l40s-48gb", 142),
        ("rtx4090-24gb", 128),
    ],
)
def test_sm_counts(key: str, sms: int) -> None:
    assert lookup_model(key).sm_count == sms


def test_h100_memory_is_what_nvml_reports() -> None:
    model = lookup_model("h100-80gb")
    assert model.memory_bytes == 85520809984 == 81559 * MIB
    assert model.product_name == "NVIDIA H100 80GB HBM3"


def test_lookup_is_case_insensitive() -> None:
    assert lookup_model(" H100-80GB ") is lookup_model("h100-80gb")


def test_unknown_key_lists_known_keys() -> None:
    with pytest.raises(UnknownModelError, match=r"known models: a100-40gb, .*h100-80gb") as info:
        lookup_model("v100-16gb")
    assert "'v100-16gb'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "memory_mib", "key"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "h100-80gb"),
        ("NVIDIA A100-SXM4-40GB", 40960, "a100-40gb"),
        ("NVIDIA A100-PCIE-40GB", 40536, "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", 81920, "a100-80gb"),
        ("NVIDIA H100 NVL", 95830, "h100-94gb"),
        ("NVIDIA H200", 143771, "h200-141gb"),
        ("NVIDIA A30", 24576, "a30-24gb"),
        ("Tesla T4", 15360, "t4-16gb"),
        ("NVIDIA GeForce RTX 4090", 24564, "rtx4090-24gb"),
        ("  nvidia   l4 ", 23034, "l4-24gb"),
    ],
)
def test_product_names_map_to_models(name: str, memory_mib: int, key: str) -> None:
    model = model_for_product_name(name, memory_mib * MIB)
    assert model is not None
    assert model.key == key


def test_unknown_product_name_is_none() -> None:
    assert model_for_product_name("NVIDIA B200", 180 * 1024 * MIB) is None


def test_h100_pcie_is_not_taken_for_sxm() -> None:
    model = model_for_product_name("NVIDIA H100 PCIe", 81559 * MIB)
    assert model is not None
    assert model.key != "h100-80gb"
    assert model.sm_count == 114


def test_every_product_name_belongs_to_one_model() -> None:
    seen: dict[str, str] = {}
    for model in geometry.all_models():
        for name in model.product_names:
            assert name not in seen, f"{name} in {seen.get(name)} and {model.key}"
            seen[name] = model.key


def test_non_mig_models_have_no_profiles() -> None:
    for key in ("l4-24gb", "a10-24gb", "t4-16gb", "rtx4090-24gb", "l40s-48gb"):
        model = lookup_model(key)
        assert not model.mig_capable
        assert model.memory_slices == 0


@pytest.mark.parametrize("key", MIG_MODELS)
def test_mig_profiles_fit_the_slice_axis(key: str) -> None:
    model = lookup_model(key)
    assert model.mig_capable
    ids = [p.id for p in model.mig_profiles]
    assert len(ids) == len(set(ids))
    for p in model.mig_profiles:
        for start, size in p.placements():
            assert start >= 0
            assert start + size <= model.memory_slices, f"{key} {p.name} at {start}"
        assert p.compute_slices <= model.compute_slices
        # Without the +me profiles, max_instances copies fit side by side on the memory axis.
        if "+me" not in p.name:
            assert p.max_instances * p.memory_slices <= model.memory_slices
        assert 0 < p.memory_bytes < model.memory_bytes
        assert 0 < p.sm_count <= model.sm_count
        if not p.verified:
            assert p.note, f"{key} {p.name} is unverified without saying why"


def test_h100_80gb_rows_match_the_reference() -> None:
    model = lookup_model("h100-80gb")
    rows = [
        (p.id, p.name, p.compute_slices, p.memory_slices, p.max_instances, p.allowed_starts, p.sm_count)
        for p in model.mig_profiles
    ]
    assert rows == [
        (19, "1g.10gb", 1, 1, 7, (0, 1, 2, 3, 4, 5, 6), 16),
        (20, "1g.10gb+me", 1, 1, 1, (0, 1, 2, 3, 4, 5, 6), 16),
        (15, "1g.20gb", 1, 2, 4, (0, 2, 4, 6), 26),
        (14, "2g.20gb", 2, 2, 3, (0, 2, 4), 32),
        (9, "3g.40gb", 3, 4, 2, (0, 4), 60),
        (5, "4g.40gb", 4, 4, 1, (0,), 64),
        (0, "7g.80gb", 7, 8, 1, (0,), 132),
    ]
    assert all(p.verified for p in model.mig_profiles)
    assert model.mig_profile("3g.40gb").memory_mib == 40448  # 39.50 GiB in -lgip


def test_a100_40gb_names_and_sms() -> None:
    model = lookup_model("a100-40gb")
    assert [p.name for p in model.mig_profiles] == [
        "1g.5gb",
        "1g.5gb+me",
        "1g.10gb",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb",
    ]
    assert [p.sm_count for p in model.mig_profiles] == [14, 14, 14, 28, 42, 56, 98]
    assert model.mig_profile(9).name == "3g.20gb"
    assert model.mig_profile("MIG 7g.40gb").id == 0


def test_inferred_rows_are_marked_unverified() -> None:
    assert not any(p.verified for p in lookup_model("a100-80gb").mig_profiles)
    assert not any(p.verified for p in lookup_model("h200-141gb").mig_profiles)
    nvl = {p.name: p.verified for p in lookup_model("h100-94gb").mig_profiles}
    assert nvl == {
        "1g.12gb": True,
        "1g.12gb+me": True,
        "1g.24gb": True,
        "2g.24gb": True,
        "3g.47gb": False,
        "4g.47gb": False,
        "7g.94gb": False,
    }


def test_a30_axis_is_four_slices() -> None:
    model = lookup_model("a30-24gb")
    assert (model.memory_slices, model.compute_slices) == (4, 4)
    table = {p.name: (p.id, p.memory_slices, p.max_instances, p.allowed_starts) for p in model.mig_profiles}
    assert table == {
        "1g.6gb": (14, 1, 4, (0, 1, 2, 3)),
        "1g.6gb+me": (21, 1, 1, (0, 1, 2, 3)),
        "2g.12gb": (5, 2, 2, (0, 2)),
        "2g.12gb+me": (6, 2, 1, (0, 2)),
        "4g.24gb": (0, 4, 1, (0,)),
    }


def test_unknown_mig_profile_lists_the_profiles() -> None:
    with pytest.raises(UnknownModelError, match=r"3g.40gb \(id 9\)"):
        lookup_model("h100-80gb").mig_profile("5g.50gb")
    with pytest.raises(UnknownModelError, match="no MIG"):
        lookup_model("t4-16gb").mig_profile(0)
