"""GPU fragmentation against a task mix, and placement that grows it least (FGD): pure, no I/O.

Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient
Descent" (USENIX ATC'23). A node's idle GPU capacity is a fragment for a class of task when that task could
not use it; weighting the classes by how often they come gives the node's expected fragment, and FGD puts
each task where that expectation grows least. As in the paper's simulator, idle capacity is a fragment
  - for every class when the node could not host the class at all (wrong model, too few free GPUs, too
    little free host CPU or memory, or a class that asks for no GPU: no idle GPU is of use to it);
  - else, per GPU, when that GPU alone cannot hold the class's share of one GPU (a multi-GPU class takes
    whole GPUs only, so every partly used GPU is a fragment for it).
With `host_bound` (our extension) the host counts in amounts, not only as fits/does not fit: the idle GPU
beyond what the tasks that the node's free CPU and memory can still feed would use is a fragment too (a
node with 8 idle GPUs and CPU left for 3 tasks of a class strands 5 GPUs for that class).
Idle capacity is counted in milli-GPU of compute; a GPU's idle part is what both its compute and memory
still allow, and a GPU in MIG mode has none.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from vgpu._private.units import MILLI_PER_GPU
from vgpud._private.core.host_fit import HostRoom, HostUse
from vgpud._private.core.model import Claim
from vgpud._private.core.placement import leftover
from vgpud._private.core.placement_policy import Score
from vgpud._private.core.slice_views import GpuView, Placement

_MEMO_LIMIT = 1 << 18
"""Fragments a mix remembers before it starts over (bounds memory on long replays)."""


@dataclass(frozen=True, slots=True)
class TaskClass:
    """One shape of task and its share of the mix."""

    gpus: int
    """GPUs per task: 0 asks for none, 1 for a share of one GPU, more for that many whole GPUs."""
    milli: int
    """Milli-GPU on each GPU: 1..1000 for one GPU; 1000 for several; ignored for none."""
    models: tuple[str, ...] = ()
    """GPU models it accepts; empty: any."""
    weight: float = 1.0
    """How often it comes (any positive scale: the mix normalises)."""
    cpu_milli: int = 0
    """Host CPU (milli-cores) it needs next to its GPUs; 0: not considered."""
    memory_mib: int = 0
    """Host memory (MiB) it needs next to its GPUs; 0: not considered."""

    def accepts(self, model: str) -> bool:
        """Whether this class may run on a GPU of `model`."""
        return not self.models or model in self.models


@dataclass(frozen=True, slots=True)
class _Shape:
    """The classes of one GPU shape that a model serves, with the host needs of each."""

    gpus: int
    milli: int
    weight: float
    hosts: tuple[tuple[int, int, float], ...]
    """(cpu_milli, memory_mib, weight) per class of this shape."""

    @property
    def per_task(self) -> int:
        """Milli-GPU one task of this shape takes."""
        return self.milli if self.gpus == 1 else self.gpus * MILLI_PER_GPU


@dataclass(frozen=True, slots=True)
class _ModelShapes:
    """A mix folded for one GPU model."""

    shapes: tuple[_Shape, ...]
    useless: float
    """Weight of classes that can never use this model's GPUs (no GPU asked, or another model)."""


def _fold(classes: Sequence[TaskClass], model: str) -> _ModelShapes:
    by_shape: dict[tuple[int, int], list[tuple[int, int, float]]] = {}
    useless = 0.0
    for c in classes:
        if c.gpus <= 0 or not c.accepts(model):
            useless += c.weight
        else:
            milli = min(max(c.milli, 1), MILLI_PER_GPU) if c.gpus == 1 else MILLI_PER_GPU
            by_shape.setdefault((c.gpus, milli), []).append((c.cpu_milli, c.memory_mib, c.weight))
    shapes = tuple(
        _Shape(gpus, milli, sum(w for _, _, w in hosts), tuple(hosts))
        for (gpus, milli), hosts in sorted(by_shape.items())
    )
    return _ModelShapes(shapes, useless)


def _fragment(folded: _ModelShapes, idle: Sequence[int], room: HostRoom | None, host_bound: bool) -> float:
    """Expected fragment (milli-GPU) of GPUs of one model with these idle milli-GPU and host room."""
    ordered = sorted(r for r in idle if r > 0)
    total = sum(ordered)
    if total == 0:
        return 0.0
    suffix = [*reversed(list(accumulate(reversed(ordered)))), 0]  # suffix[i]: idle on GPUs ordered[i:]
    whole = len(ordered) - bisect.bisect_left(ordered, MILLI_PER_GPU)
    out = folded.useless * total
    free_cpu, free_memory = (room.cpu_milli, room.memory_mib) if room is not None else (0, 0)
    for shape in folded.shapes:
        if shape.gpus == 1:
            usable = suffix[bisect.bisect_left(ordered, shape.milli)]
        else:
            usable = whole * MILLI_PER_GPU if whole >= shape.gpus else 0
        if room is None or usable == 0:
            out += shape.weight * (total - usable)
            continue
        per_task = shape.per_task
        for cpu, memory, weight in shape.hosts:  # hot in replays: no min() calls
            if cpu > free_cpu or memory > free_memory:
                out += weight * total
                continue
            fed = usable
            if host_bound and (cpu or memory):
                tasks = free_cpu // cpu if cpu else total
                if memory and free_memory // memory < tasks:
                    tasks = free_memory // memory
                fed = min(fed, tasks * per_task)
            out += weight * (total - fed)
    return out


@dataclass(frozen=True)
class TaskMix:
    """The classes of task to expect and how often, folded per GPU model on first use."""

    classes: tuple[TaskClass, ...]
    cpu_steps: tuple[int, ...] = ()
    """The classes' distinct CPU needs, ascending: without host_bound a node's free CPU matters only by how
    many it meets."""
    memory_steps: tuple[int, ...] = ()
    """The same for host memory."""
    _folded: dict[str, _ModelShapes] = field(default_factory=dict, compare=False, repr=False)
    _memo: dict[tuple[str, tuple[int, ...], tuple[int, int] | None, bool], float] = field(
        default_factory=dict, compare=False, repr=False
    )
    """Memos of pure functions of `classes` (folding per model; fragments), so the mix stays a value."""

    @classmethod
    def of(cls, classes: Iterable[TaskClass]) -> TaskMix:
        """A mix whose weights sum to 1; classes of the same shape are merged."""
        merged: dict[tuple[int, int, tuple[str, ...], int, int], float] = {}
        for c in classes:
            if c.weight < 0:
                raise ValueError(f"task class {c} has a negative weight")
            milli = c.milli if c.gpus > 0 else 0
            key = (max(c.gpus, 0), milli, tuple(sorted(c.models)), max(c.cpu_milli, 0), max(c.memory_mib, 0))
            merged[key] = merged.get(key, 0.0) + c.weight
        total = sum(merged.values())
        if total <= 0:
            raise ValueError("a task mix needs at least one class with a positive weight")
        folded = tuple(TaskClass(g, m, mod, w / total, cpu, mem) for (g, m, mod, cpu, mem), w in sorted(merged.items()))
        return cls(folded, tuple(sorted({c.cpu_milli for c in folded})), tuple(sorted({c.memory_mib for c in folded})))

    def host_level(self, room: HostRoom) -> tuple[int, int]:
        """How many CPU and memory steps `room` meets: all that a fragment without host_bound depends on."""
        return bisect.bisect_right(self.cpu_steps, room.cpu_milli), bisect.bisect_right(
            self.memory_steps, room.memory_mib
        )

    def fragment(
        self, model: str, idle: Sequence[int], room: HostRoom | None = None, *, host_bound: bool = False
    ) -> float:
        """Expected fragment (milli-GPU) of a node's GPUs of `model` with these idle milli-GPU and host room."""
        key = (model, tuple(sorted(idle)), (room.cpu_milli, room.memory_mib) if room else None, host_bound)
        found = self._memo.get(key)
        if found is None:
            folded = self._folded.get(model)
            if folded is None:
                folded = self._folded[model] = _fold(self.classes, model)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[key] = _fragment(folded, idle, room, host_bound)
        return found


def idle_milli(view: GpuView, claim: Claim | None = None) -> int:
    """Milli-GPU still usable on the GPU (after `claim`, when given): compute and memory both allow it."""
    record = view.record
    state = view.state
    if record.mig_enabled or state.mig or record.memory_bytes <= 0:
        return 0
    memory = record.memory_bytes
    compute = MILLI_PER_GPU
    for held in state.claims if claim is None else (*state.claims, claim):  # one pass (hot in replays)
        memory -= held.memory_bytes
        compute -= held.compute_milli
    return max(0, min(compute, memory * MILLI_PER_GPU // record.memory_bytes))


def node_fragment(
    mix: TaskMix,
    node: Sequence[GpuView],
    claims: Mapping[str, Claim] | None = None,
    room: HostRoom | None = None,
    *,
    host_bound: bool = False,
) -> float:
    """Expected fragment (milli-GPU) of one node's GPUs, with `claims` (by GPU uuid) applied when given.

    `room` is the node's free host CPU and memory (None: not considered). A node with GPUs of several models
    is measured per model (a class counts as hostable on the GPUs of one model at a time).
    """
    by_model: dict[str, list[int]] = {}
    for view in node:
        claim = claims.get(view.record.uuid) if claims else None
        by_model.setdefault(view.record.model, []).append(idle_milli(view, claim))
    return sum(mix.fragment(model, idle, room, host_bound=host_bound) for model, idle in by_model.items())


def node_idle(node: Sequence[GpuView]) -> int:
    """Idle milli-GPU of one node's GPUs (the denominator of the fragmentation rate)."""
    return sum(idle_milli(view) for view in node)


@dataclass(frozen=True, slots=True)
class FragmentationGradient:
    """FGD as a placement policy for one task: the GPU and node whose expected fragment grows least win.

    Ties (common: every empty GPU of a model scores the same) go to best fit, which keeps emptier GPUs
    whole for later multi-GPU tasks, then to the node left with the least idle GPU (a task without GPUs
    goes where it strands none).
    """

    mix: TaskMix
    hosts: Mapping[str, HostRoom] | None = None
    """Each node's host room before the task, by node name; None: the host is not considered."""
    task: HostUse = field(default_factory=HostUse)
    """The host CPU and memory the task takes next to its GPUs."""
    host_bound: bool = False
    """Count idle GPU that the host's free CPU and memory could not feed as fragment too (see module doc)."""

    def gpu_score(self, view: GpuView, claim: Claim, node: Sequence[GpuView]) -> Score:
        """Growth of the node's fragment if this GPU takes the claim, then room left on the GPU."""
        grown, _ = self._growth(node, {view.record.uuid: claim})
        return (grown, leftover(view, claim))

    def node_score(self, node: Sequence[GpuView], placement: Placement) -> Score:
        """Growth of the node's fragment under the placement, room left on the GPUs used, idle GPU left."""
        grown, idle = self._growth(node, {view.record.uuid: claim for view, claim in placement.assignments})
        return (grown, sum(leftover(view, claim) for view, claim in placement.assignments), idle)

    def _growth(self, node: Sequence[GpuView], claims: Mapping[str, Claim]) -> tuple[float, int]:
        """(fragment after minus before, idle milli-GPU after) of the node under `claims`.

        The growth is rounded so that equal growths on differently loaded nodes tie exactly (float noise).
        """
        before = after = None
        if self.hosts is not None and node:
            before = self.hosts.get(node[0].record.node)
            if before is not None:
                use = self.task
                after = HostRoom(before.cpu_milli - use.cpu_milli, before.memory_mib - use.memory_mib)
        idle_before: dict[str, list[int]] = {}
        idle_after: dict[str, list[int]] = {}
        for view in node:
            idle = idle_milli(view)
            claim = claims.get(view.record.uuid)
            idle_before.setdefault(view.record.model, []).append(idle)
            idle_after.setdefault(view.record.model, []).append(idle if claim is None else idle_milli(view, claim))
        fragment = self.mix.fragment
        bound = self.host_bound
        grown = sum(fragment(model, idle, after, host_bound=bound) for model, idle in idle_after.items()) - sum(
            fragment(model, idle, before, host_bound=bound) for model, idle in idle_before.items()
        )
        return round(grown, 6), sum(sum(idle) for idle in idle_after.values())
