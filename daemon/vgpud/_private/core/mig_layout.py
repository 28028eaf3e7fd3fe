"""Declarative MIG layouts for `vgpuctl mig plan LAYOUT.toml`: what to create and destroy. Pure, no I/O.

A layout lists, per GPU uuid or per model, the instances a GPU should hold; "name@start" pins a start:

    [models."h100-80gb"]
    profiles = ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]

    [gpus."GPU-5d3c0e2a"]
    profiles = ["4g.40gb@0", "3g.40gb@4"]

A GPU entry wins over its model's entry; GPUs the layout matches in neither way are left alone. For each
matched GPU the plan keeps as many of its instances as the layout allows (leased ones first), places the
rest so the free space keeps the largest profiles placeable, and destroys what is left over. A leased
instance that must go is a conflict: the plan cannot be carried out until that lease ends.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vgpud._private.backend.geometry import GpuModel, MigProfile, UnknownModelError, lookup_model
from vgpud._private.core.mig_placement import MigGpu, MigInstance, fits, profile_named, profile_of, room_score


class LayoutError(ValueError):
    """A layout that cannot be read or cannot be met; the message names the field (TOML errors: the line)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """One instance a layout asks for."""

    profile: str
    """Profile name as written (resolved per GPU model when planning)."""
    start: int | None
    """Pinned start, or None to let the planner choose."""
    field: str
    """Where it was written, e.g. `gpus."GPU-1".profiles[2]`, for error messages."""


@dataclass(frozen=True, slots=True)
class Layout:
    """A parsed layout."""

    by_gpu: Mapping[str, tuple[Wanted, ...]]
    """GPU uuid -> the instances it should hold."""
    by_model: Mapping[str, tuple[Wanted, ...]]
    """Model key -> the instances every GPU of that model (without a GPU entry) should hold."""


@dataclass(frozen=True, slots=True)
class Step:
    """One instance to create or destroy, or one that blocks the plan."""

    gpu_uuid: str
    profile: str
    """Profile name ("?" plus the ID for an instance of a profile the table lacks)."""
    instance: MigInstance


@dataclass(frozen=True, slots=True)
class Plan:
    """What it takes to reach a layout from the current occupancy: destroy first, then create."""

    create: tuple[Step, ...]
    destroy: tuple[Step, ...]
    conflicts: tuple[Step, ...]
    """Instances that must go but hold a lease; nothing on their GPU may change until the lease ends."""
    enable_mig: tuple[str, ...]
    """GPUs that must be switched to MIG mode before their instances can be created."""

    @property
    def ok(self) -> bool:
        """True when the plan can be carried out now."""
        return not self.conflicts


def parse_layout(text: str) -> Layout:
    """Read a layout file's text; LayoutError names the line (TOML syntax) or the field (content)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"layout is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"gpus", "models"})
    if unknown:
        raise LayoutError(f"unknown top-level key(s) {', '.join(unknown)}: a layout has [gpus.UUID] and [models.KEY]")
    by_gpu = {uuid: _entry(f"gpus.{_quote(uuid)}", entry) for uuid, entry in _tables(data, "gpus").items()}
    by_model: dict[str, tuple[Wanted, ...]] = {}
    for key, entry in _tables(data, "models").items():
        where = f"models.{_quote(key)}"
        try:
            model = lookup_model(key)
        except UnknownModelError as exc:
            raise LayoutError(f"{where}: {exc}") from None
        wanted = _entry(where, entry)
        _solve(MigGpu(f"<any {model.key}>", model, mig_enabled=True), wanted, where)  # fits an empty GPU?
        by_model[model.key] = wanted
    return Layout(by_gpu=by_gpu, by_model=by_model)


def _quote(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else f'"{key}"'


def _tables(data: dict[str, Any], name: str) -> dict[str, Any]:
    tables = data.get(name, {})
    if not isinstance(tables, dict):
        raise LayoutError(f"{name}: must be a table of tables, e.g. [{name}.KEY]")
    return tables


def _entry(where: str, entry: Any) -> tuple[Wanted, ...]:
    """The instances of one [gpus.X] or [models.X] table."""
    if not isinstance(entry, dict):
        raise LayoutError(f"{where}: must be a table with a profiles list")
    unknown = sorted(set(entry) - {"profiles"})
    if unknown:
        raise LayoutError(f"{where}: unknown key(s) {', '.join(unknown)}; the only key is profiles")
    profiles = entry.get("profiles")
    if not isinstance(profiles, list):
        raise LayoutError(f'{where}.profiles: missing or not a list, e.g. profiles = ["3g.40gb", "1g.10gb@6"]')
    return tuple(_wanted(f"{where}.profiles[{i}]", item) for i, item in enumerate(profiles))


def _wanted(where: str, item: Any) -> Wanted:
    if not isinstance(item, str):
        raise LayoutError(f'{where}: {item!r} is not a string such as "3g.40gb" or "3g.40gb@4"')
    name, at, start = item.partition("@")
    if not at:
        return Wanted(name.strip(), None, where)
    if not start.strip().isdigit():
        raise LayoutError(f"{where}: {item!r}: the start after @ must be a memory-slice number, e.g. 3g.40gb@4")
    return Wanted(name.strip(), int(start), where)


def plan(layout: Layout, gpus: Sequence[MigGpu]) -> Plan:
    """Create/destroy steps that turn `gpus` into the layout; LayoutError when the layout cannot be met."""
    known = {g.uuid for g in gpus}
    missing = [uuid for uuid in layout.by_gpu if uuid not in known]
    if missing:
        raise LayoutError(f"gpus.{_quote(missing[0])}: no GPU with this uuid in the pool")
    create: list[Step] = []
    destroy: list[Step] = []
    conflicts: list[Step] = []
    enable: list[str] = []
    for gpu in gpus:
        where = f"gpus.{_quote(gpu.uuid)}" if gpu.uuid in layout.by_gpu else f"models.{_quote(gpu.model.key)}"
        wanted = layout.by_gpu.get(gpu.uuid, layout.by_model.get(gpu.model.key))
        if wanted is None:
            continue
        if wanted and not gpu.model.mig_capable:
            raise LayoutError(f"{where}: {gpu.uuid} is a {gpu.model.key}, which has no MIG")
        if wanted and not gpu.mig_enabled:
            enable.append(gpu.uuid)
        target = _solve(gpu, wanted, where)
        keep = set(target) & set(gpu.instances)
        for inst in gpu.instances:
            if inst not in keep:
                (conflicts if inst.lease_id else destroy).append(_step(gpu, inst))
        new = [inst for inst in target if inst not in keep]
        create.extend(_step(gpu, inst) for inst in sorted(new, key=lambda i: (-i.size, i.start)))
    return Plan(tuple(create), tuple(destroy), tuple(conflicts), tuple(enable))


def apply_plan(gpus: Sequence[MigGpu], steps: Plan) -> tuple[MigGpu, ...]:
    """The GPUs after the plan (MIG enabled where it says), checking every create with `fits` as it goes."""
    if not steps.ok:
        raise LayoutError(f"the plan has {len(steps.conflicts)} conflict(s) with leased instances")
    out: list[MigGpu] = []
    for gpu in gpus:
        now = gpu if gpu.uuid not in steps.enable_mig else MigGpu(gpu.uuid, gpu.model, True, gpu.instances)
        for s in steps.destroy:
            if s.gpu_uuid == gpu.uuid:
                now = now.without_instance(s.instance.start)
        for s in steps.create:
            if s.gpu_uuid == gpu.uuid:
                if s.instance.start not in fits(now, s.profile):
                    raise LayoutError(f"{s.profile}@{s.instance.start} does not fit on {gpu.uuid}")
                now = now.with_instance(s.instance)
        out.append(now)
    return tuple(out)


def _step(gpu: MigGpu, inst: MigInstance) -> Step:
    profile = profile_of(gpu.model, inst)
    return Step(gpu.uuid, profile.name if profile is not None else f"?{inst.profile_id}", inst)


def _resolve(model: GpuModel, item: Wanted) -> MigProfile:
    profile = profile_named(model, item.profile)
    if profile is None:
        known = ", ".join(p.name for p in model.mig_profiles) or "none: no MIG"
        raise LayoutError(f"{item.field}: {model.key} has no MIG profile {item.profile!r}; its profiles: {known}")
    if item.start is not None and item.start not in profile.allowed_starts:
        allowed = ", ".join(map(str, profile.allowed_starts))
        raise LayoutError(f"{item.field}: {profile.name} cannot start at {item.start} (allowed starts: {allowed})")
    return profile


def _solve(gpu: MigGpu, wanted: tuple[Wanted, ...], where: str) -> tuple[MigInstance, ...]:
    """The instances to have on `gpu`, leases and existing ones kept where possible.

    Tries every placement (pinned items first, then largest first; equal unpinned items in rising start
    order, so no permutation is tried twice). The best keeps the most leased instances, then the most
    instances, then leaves the most room for large profiles (`room_score`), then has the lowest starts.
    """
    items = sorted(
        ((item, _resolve(gpu.model, item)) for item in wanted),
        key=lambda ip: (ip[0].start is None, -ip[1].memory_slices, -ip[1].compute_slices, ip[1].id),
    )
    existing = {(i.profile_id, i.start): i for i in gpu.instances}
    empty = MigGpu(gpu.uuid, gpu.model, mig_enabled=True)
    best: tuple[tuple[int, ...], tuple[MigInstance, ...]] | None = None

    def search(k: int, placed: MigGpu, chosen: tuple[MigInstance, ...]) -> None:
        nonlocal best
        if k == len(items):
            kept = [existing[(i.profile_id, i.start)] for i in chosen if (i.profile_id, i.start) in existing]
            leased = sum(1 for i in kept if i.lease_id)
            starts = tuple(i.start for i in chosen)
            key = (-leased, -len(kept), *(-r for r in room_score(placed)), *starts)
            if best is None or key < best[0]:
                best = (key, tuple(existing.get((i.profile_id, i.start), i) for i in chosen))
            return
        item, profile = items[k]
        prev = items[k - 1] if k else None
        floor = chosen[-1].start + 1 if prev and prev[0].start is None and prev[1] == profile else 0
        for start in fits(placed, profile):
            if start >= floor and (item.start is None or start == item.start):
                inst = MigInstance(profile.id, start, profile.memory_slices)
                search(k + 1, placed.with_instance(inst), (*chosen, inst))

    search(0, empty, ())
    if best is None:
        names = ", ".join(item.profile + (f"@{item.start}" if item.start is not None else "") for item, _ in items)
        raise LayoutError(
            f"{where}.profiles: [{names}] does not fit one {gpu.model.key} "
            f"({gpu.model.memory_slices} memory slices, {gpu.model.compute_slices} compute slices, max instances "
            f"per profile: {', '.join(f'{p.name} x{p.max_instances}' for p in gpu.model.mig_profiles)})"
        )
    return best[1]
