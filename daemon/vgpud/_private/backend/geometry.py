"""The GPU model table as data: memory, SMs and MIG geometry per model, from shared/reference/gpu-slicing.md.

The sim backend builds its GPUs from this table and the nvml backend names real GPUs with it, so both see
the same facts. Values the reference marks as inferred or unverified carry `verified=False` and a note.
MIG profile IDs are `nvmlGpuInstanceProfileInfo.id`; `nvml_index` is the NVML_GPU_INSTANCE_PROFILE_*
constant used to query them (that index->ID mapping is itself inferred by the reference from go-nvml mocks
plus `nvidia-smi mig -lgip` captures).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


class UnknownModelError(LookupError):
    """A model key that the table does not have; the message lists the known keys."""


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU-instance profile of a MIG-capable model (a row of `nvidia-smi mig -lgip`)."""

    id: int
    """Profile ID as NVML reports it in `info.id` (what create calls take)."""
    name: str
    """Profile name without the "MIG " prefix, e.g. "3g.40gb"."""
    nvml_index: int
    """The NVML_GPU_INSTANCE_PROFILE_* constant that queries this profile (inferred mapping)."""
    compute_slices: int
    """Compute slices of one instance."""
    memory_slices: int
    """Memory slices of one instance: the placement size."""
    max_instances: int
    """`instanceCount`: how many instances of this profile can exist at once on an empty GPU."""
    allowed_starts: tuple[int, ...]
    """Memory-slice indexes where an instance may start (`-lgipp` placements)."""
    memory_mib: int
    """`memorySizeMB` as `-lgip` reports it (driver-dependent by a few hundred MiB)."""
    sm_count: int
    """`multiprocessorCount` of one instance."""
    verified: bool = True
    """False where the reference marks this row (or part of it) inferred or unverified."""
    note: str = ""
    """What is inferred or unverified, when `verified` is False."""

    @property
    def memory_bytes(self) -> int:
        """Instance memory in bytes."""
        return self.memory_mib * MIB

    def placements(self) -> tuple[tuple[int, int], ...]:
        """Every allowed (start, size) placement in memory slices."""
        return tuple((start, self.memory_slices) for start in self.allowed_starts)


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One GPU model: the facts the scheduler and the simulator need."""

    key: str
    """Stable lower-case key used in sim specs and model selectors, e.g. "h100-80gb"."""
    product_names: tuple[str, ...]
    """Names `nvmlDeviceGetName` returns for this model; the first is the one the simulator reports."""
    memory_bytes: int
    """Total memory as NVML reports it (`nvmlDeviceGetMemoryInfo().total`)."""
    sm_count: int
    """Streaming multiprocessors of the whole GPU."""
    architecture: str
    """"turing", "ampere", "ada" or "hopper": what NVML features to expect."""
    memory_slices: int = 0
    """MIG memory slices (8 on A100/H100/H200, 4 on A30, 0 without MIG)."""
    compute_slices: int = 0
    """MIG compute slices (7 on A100/H100/H200, 4 on A30, 0 without MIG)."""
    mig_profiles: tuple[MigProfile, ...] = ()
    """GPU-instance profiles, in `-lgip` order; empty when the model has no MIG."""
    memory_verified: bool = True
    """False when `memory_bytes` was not seen in a real `nvidia-smi` capture."""
    note: str = ""
    """Where the numbers come from and what is uncertain."""

    @property
    def product_name(self) -> str:
        """The name the simulator reports for this model."""
        return self.product_names[0]

    @property
    def mig_capable(self) -> bool:
        """True when the model supports MIG."""
        return bool(self.mig_profiles)

    def mig_profile(self, profile: int | str) -> MigProfile:
        """The profile with this ID (int) or name ("3g.40gb" or "MIG 3g.40gb")."""
        for p in self.mig_profiles:
            if p.id == profile or (isinstance(profile, str) and profile.removeprefix("MIG ") == p.name):
                return p
        known = ", ".join(f"{p.name} (id {p.id})" for p in self.mig_profiles) or "none: no MIG"
        raise UnknownModelError(f"{self.key} has no MIG profile {profile!r}; its profiles: {known}")


# Rows shared by A100, H100 and H200 (8 memory slices, 7 compute slices), in -lgip order:
# (profile id, nvml index, compute slices, memory slices, max instances, allowed starts).
_HOPPER_AMPERE_SHAPES: tuple[tuple[int, int, int, int, int, tuple[int, ...]], ...] = (
    (19, 0x0, 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
    (20, 0x7, 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
    (15, 0x9, 1, 2, 4, (0, 2, 4, 6)),
    (14, 0x1, 2, 2, 3, (0, 2, 4)),
    (9, 0x2, 3, 4, 2, (0, 4)),
    (5, 0x3, 4, 4, 1, (0,)),
    (0, 0x4, 7, 8, 1, (0,)),
)


def _family_profiles(
    names: tuple[str, ...],
    memory_mib: tuple[int, ...],
    sm_counts: tuple[int, ...],
    unverified: dict[int, str],
) -> tuple[MigProfile, ...]:
    """Profiles of an 8-slice model; `unverified` maps a row index to what is unverified in it."""
    return tuple(
        MigProfile(
            id=pid,
            name=name,
            nvml_index=index,
            compute_slices=compute,
            memory_slices=memory,
            max_instances=count,
            allowed_starts=starts,
            memory_mib=mib,
            sm_count=sms,
            verified=row not in unverified,
            note=unverified.get(row, ""),
        )
        for row, ((pid, index, compute, memory, count, starts), name, mib, sms) in enumerate(
            zip(_HOPPER_AMPERE_SHAPES, names, memory_mib, sm_counts, strict=True)
        )
    )


_A100_SMS = (14, 14, 14, 28, 42, 56, 98)
_H100_SMS = (16, 16, 26, 32, 60, 64, 132)
_H100_80GB_MIB = (9984, 9984, 20096, 20096, 40448, 40448, 81152)  # 9.75, 19.62, 39.50, 79.25 GiB

_PLACEMENTS_INFERRED = "placements inferred (profile IDs match real captures; names differ only)"

_A100_40GB = GpuModel(
    key="a100-40gb",
    product_names=("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"),
    memory_bytes=40960 * MIB,
    sm_count=108,
    architecture="ampere",
    memory_slices=8,
    compute_slices=7,
    mig_profiles=_family_profiles(
        ("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
        # -lgip GiB 4.75, 4.75, 9.62, 9.62, 19.50, 19.50, 39.25 (newer drivers: 9.75, 19.62, 39.50).
        (4864, 4864, 9856, 9856, 19968, 19968, 40192),
        _A100_SMS,
        {},
    ),
    note="40960 MiB total on most drivers; some captures show 40536 MiB",
)

_A100_80GB = GpuModel(
    key="a100-80gb",
    product_names=("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"),
    memory_bytes=81920 * MIB,
    sm_count=108,
    architecture="ampere",
    memory_slices=8,
    compute_slices=7,
    mig_profiles=_family_profiles(
        ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        # Reference: 1g 9.50-9.75 GiB, 2-slot 19.50-19.62, 3g/4g 39.25-39.50; upper ends taken.
        _H100_80GB_MIB,
        _A100_SMS,
        {
            **dict.fromkeys(range(6), _PLACEMENTS_INFERRED),
            6: _PLACEMENTS_INFERRED + "; 7g memory size unverified",
        },
    ),
)

_H100_80GB = GpuModel(
    key="h100-80gb",
    product_names=("NVIDIA H100 80GB HBM3",),
    memory_bytes=81559 * MIB,
    sm_count=132,
    architecture="hopper",
    memory_slices=8,
    compute_slices=7,
    mig_profiles=_family_profiles(
        ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        _H100_80GB_MIB,
        _H100_SMS,
        {},
    ),
    note="H100 SXM5; every MIG row from real -lgip/-lgipp captures",
)

_H100_PCIE_SMS = (14, 14, 22, 28, 52, 55, 114)  # H100 SXM counts scaled by 114/132: estimates
_H100_PCIE = GpuModel(
    key="h100-pcie-80gb",
    product_names=("NVIDIA H100 PCIe",),
    memory_bytes=81559 * MIB,
    sm_count=114,
    architecture="hopper",
    memory_slices=8,
    compute_slices=7,
    mig_profiles=_family_profiles(
        ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
        _H100_80GB_MIB,
        _H100_PCIE_SMS,
        dict.fromkeys(range(7), "H100 PCIe MIG SM counts unverified (scaled estimates); geometry as H100 SXM"),
    ),
)

_H100_NVL = GpuModel(
    key="h100-94gb",
    product_names=("NVIDIA H100 NVL",),
    memory_bytes=95830 * MIB,
    sm_count=132,
    architecture="hopper",
    memory_slices=8,
    compute_slices=7,
    mig_profiles=_family_profiles(
        ("1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"),
        # -lgip GiB 10.75, 10.75, 21.62, 21.62, 46.38, 46.38; the 7g size is an estimate.
        (11008, 11008, 22144, 22144, 47488, 47488, 95232),
        _H100_SMS,
        {
            4: "SM count unverified (taken from H100 SXM)",
            5: "SM count unverified (taken from H100 SXM)",
            6: "memory size and SM count unverified (estimates)",
        },
    ),
    note="H100 NVL (94 GB); placements from real -lgipp captures, identical to H100 SXM",
)

_H200 = GpuModel(
    key="h200-141gb",
    product_names=("NVIDIA H200",),
    memory_bytes=143771 * MIB,
    sm_count=132,
    architecture="hopper",
    memory_slices=8,
    compute_slices=7,
    mig_profiles=_family_profiles(
        ("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
        # -lgip GiB 16.00, 16.00, 32.25, 32.25, 69.50, 69.50; the 7g size is an estimate.
        (16384, 16384, 33024, 33024, 71168, 71168, 142336),
        _H100_SMS,
        {
            **dict.fromkeys(range(6), _PLACEMENTS_INFERRED),
            6: _PLACEMENTS_INFERRED + "; 7g memory size and SM count unverified",
        },
    ),
)

_A30 = GpuModel(
    key="a30-24gb",
    product_names=("NVIDIA A30",),
    memory_bytes=24576 * MIB,
    sm_count=56,
    architecture="ampere",
    memory_slices=4,
    compute_slices=4,
    mig_profiles=(
        MigProfile(14, "1g.6gb", 0x0, 1, 1, 4, (0, 1, 2, 3), 5952, 14),
        MigProfile(21, "1g.6gb+me", 0x7, 1, 1, 1, (0, 1, 2, 3), 5952, 14),
        MigProfile(5, "2g.12gb", 0x1, 2, 2, 2, (0, 2), 11968, 28),
        MigProfile(6, "2g.12gb+me", 0x8, 2, 2, 1, (0, 2), 11968, 28, note="driver R525 and newer"),
        # -lgip shows 23.44-23.69 GiB depending on the driver; the lower value is used.
        MigProfile(0, "4g.24gb", 0x3, 4, 4, 1, (0,), 24000, 56),
    ),
    note="MIG table from [PROF] and a real -lgip capture on R535",
)


def _plain(key: str, name: str, memory_mib: int, sm_count: int, architecture: str) -> GpuModel:
    """A model without MIG; memory totals are from public `nvidia-smi --query-gpu` captures."""
    return GpuModel(
        key=key,
        product_names=(name,),
        memory_bytes=memory_mib * MIB,
        sm_count=sm_count,
        architecture=architecture,
    )


_MODELS: tuple[GpuModel, ...] = (
    _A100_40GB,
    _A100_80GB,
    _H100_80GB,
    _H100_PCIE,
    _H100_NVL,
    _H200,
    _A30,
    _plain("l4-24gb", "NVIDIA L4", 23034, 58, "ada"),
    _plain("a10-24gb", "NVIDIA A10", 23028, 72, "ampere"),
    _plain("t4-16gb", "Tesla T4", 15360, 40, "turing"),
    _plain("rtx4090-24gb", "NVIDIA GeForce RTX 4090", 24564, 128, "ada"),
    _plain("l40s-48gb", "NVIDIA L40S", 46068, 142, "ada"),
)
_BY_KEY = {m.key: m for m in _MODELS}


def known_models() -> tuple[str, ...]:
    """Every model key, in table order."""
    return tuple(_BY_KEY)


def all_models() -> tuple[GpuModel, ...]:
    """Every model, in table order."""
    return _MODELS


def lookup_model(key: str) -> GpuModel:
    """The model with this key (case-insensitive); UnknownModelError names the known keys."""
    model = _BY_KEY.get(key.strip().lower())
    if model is None:
        raise UnknownModelError(f"unknown GPU model {key!r}; known models: {', '.join(_BY_KEY)}")
    return model


def _normalise(name: str) -> str:
    return " ".join(name.split()).casefold()


def model_for_product_name(name: str, memory_bytes: int) -> GpuModel | None:
    """The model NVML's product name belongs to; None when the table does not know it.

    Names decide; memory only breaks a tie between models sharing a name (the closest total wins).
    """
    wanted = _normalise(name)
    candidates = [m for m in _MODELS if any(_normalise(n) == wanted for n in m.product_names)]
    if not candidates:
        return None
    return min(candidates, key=lambda m: abs(m.memory_bytes - memory_bytes))
