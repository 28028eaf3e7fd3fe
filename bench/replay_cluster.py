"""The openb cluster as the scheduling core sees it, and pods placed on it through the core's placement.

Every node's GPUs are GpuRecord/GpuState/GpuView values; a GPU pod becomes a ShapeRequest and lands where
`place_on_nodes` (with the policy given) puts it, among the nodes whose host CPU, memory and GPU model fit.

Speed without a private re-implementation: a node's score is a pure function of its GPU model, the multiset
of its GPUs' idle milli-GPU (requests ask memory in proportion to compute, so memory follows compute) and
what of its host room the policy looks at (Policy.host_key) before and after the pod. Nodes are grouped by
(model, idle multiset, free CPU, free memory); only the first node (by name) of a group is offered, which is
the node `place_on_nodes` would pick from that group anyway (same score, ties to the first name). The core's
`place` and the policy score each (group, request) once; the score is remembered, and the groups tied for
the best go to `place_on_nodes` for the final choice. A pod without GPUs gets an empty placement, which
does not say where it went: it takes the first of the best-scored nodes, the rule `place_on_nodes` applies.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

from replay_trace import NodeSpec, PodSpec

from vgpu._private.units import MILLI_PER_GPU
from vgpud._private.core.cluster_placement import place_on_nodes
from vgpud._private.core.fragmentation import TaskMix, node_fragment, node_idle
from vgpud._private.core.host_fit import HostRoom, HostUse
from vgpud._private.core.model import GpuRecord, GpuState, Isolation, ShapeRequest
from vgpud._private.core.placement import place
from vgpud._private.core.placement_policy import PlacementPolicy, Score
from vgpud._private.core.slice_views import GpuView, Placement

GIB = 1 << 30
GPU_MEMORY_GIB = {"P100": 16, "T4": 16, "V100M16": 16, "V100M32": 32, "A10": 24, "G1": 16, "G2": 32, "G3": 80}
"""Per-model GPU memory. G1/G2/G3 are undisclosed models: 16, 32 and 80 GiB are guesses. Memory never binds
here (see BYTES_PER_MILLI), so the guesses move no result. Unknown models get 16 GiB."""
DEFAULT_GPU_GIB = 16
BYTES_PER_MILLI = min(GPU_MEMORY_GIB.values()) * GIB // MILLI_PER_GPU
"""A pod asks gpu_milli x this many bytes: proportional to compute at the smallest GPU's rate, so memory
never binds before compute and a GPU's free memory follows from its free compute."""

GroupKey = tuple[str, tuple[int, ...], int, int]
"""(GPU model, sorted idle milli-GPU of the node's GPUs, free host CPU, free host memory)."""


def _ignores_host(_cpu: int, _memory: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Policy:
    """A named placement policy for the replay: how to build it for one pod, and what its scores depend on."""

    name: str
    make: Callable[[HostUse, Mapping[str, HostRoom]], PlacementPolicy]
    """The core policy for a pod taking this host use, given every node's host room now."""
    host_key: Callable[[int, int], Hashable] = _ignores_host
    """What of a node's free host CPU and memory its scores depend on (default: nothing)."""
    observe: Callable[[ShapeRequest], bool] | None = None
    """Told of every GPU request once it is placed or failed (a policy that learns its mix online, as the
    daemon's does); True means the policy changed and scores remembered so far are stale."""


class SimNode:
    """One node's current GPU views (mutable: the simulator's state)."""

    __slots__ = ("key", "model", "name", "views")

    def __init__(self, spec: NodeSpec) -> None:
        self.name = spec.name
        self.model = spec.model
        memory = GPU_MEMORY_GIB.get(spec.model, DEFAULT_GPU_GIB) * GIB
        self.views: list[GpuView] = [
            GpuView(
                GpuRecord(
                    uuid=f"{spec.name}/gpu{i}",
                    node=spec.name,
                    index=i,
                    model=spec.model,
                    name=spec.model,
                    memory_bytes=memory,
                    sm_count=0,
                    mig_capable=False,
                    mig_enabled=False,
                    backend="replay",
                ),
                GpuState(),
            )
            for i in range(spec.gpus)
        ]
        self.key: GroupKey = (spec.model, (MILLI_PER_GPU,) * spec.gpus, spec.cpu_milli, spec.memory_mib)


@dataclass(frozen=True, slots=True)
class Held:
    """What one placed pod holds, to give it back when it leaves."""

    node: str
    use: HostUse
    gpus: tuple[int, ...]
    milli: int


def shape_request(pod: PodSpec) -> ShapeRequest | None:
    """The core request for a pod's GPUs (None: it asks for none)."""
    if pod.num_gpu == 0:
        return None
    if pod.whole:
        return ShapeRequest(Isolation.WHOLE, 0, MILLI_PER_GPU, count=pod.num_gpu, gpu_models=pod.gpu_spec)
    return ShapeRequest(Isolation.SHARED, pod.gpu_milli * BYTES_PER_MILLI, pod.gpu_milli, gpu_models=pod.gpu_spec)


NO_GPU = ShapeRequest(Isolation.SHARED, 0, 0, count=0)
"""What scoring a pod without GPUs asks of the core: no slice (an empty placement on any node)."""


class SimCluster:
    """Nodes, their groups by state, and the pods held, for one policy's replay."""

    def __init__(self, specs: Sequence[NodeSpec], policy: Policy) -> None:
        self.policy = policy
        ordered = sorted(specs, key=lambda s: s.name)
        self.nodes = {s.name: SimNode(s) for s in ordered}
        self.rooms: dict[str, HostRoom] = {s.name: HostRoom(s.cpu_milli, s.memory_mib) for s in ordered}
        self.total_gpus = sum(len(n.views) for n in self.nodes.values())
        self.allocated_milli = 0
        self.held: dict[str, Held] = {}
        self._groups: dict[GroupKey, list[str]] = {}
        """Every group: its nodes' names, sorted."""
        self._open: dict[GroupKey, list[str]] = {}
        """The groups with some idle GPU (the only ones a GPU pod can use): the same lists."""
        self._scores: dict[tuple[str, tuple[int, ...], Hashable, Hashable, int, int], Score | None] = {}
        for node in self.nodes.values():
            self._join(node.key, node.name)

    @property
    def alloc_ratio(self) -> float:
        """Allocated milli-GPU over all GPUs' milli-GPU."""
        return self.allocated_milli / (MILLI_PER_GPU * self.total_gpus) if self.total_gpus else 0.0

    def fragmentation(self, mix: TaskMix) -> tuple[float, int]:
        """(expected fragment, idle) in milli-GPU over the whole cluster (host room counts for host-aware classes)."""
        fragment = 0.0
        idle = 0
        for name, node in self.nodes.items():
            fragment += node_fragment(mix, node.views, room=self.rooms[name])
            idle += node_idle(node.views)
        return fragment, idle

    def place(self, pod: PodSpec, lease_id: str) -> bool:
        """Place `pod` through the core, or return False when nothing fits now."""
        use = HostUse(pod.cpu_milli, pod.memory_mib)
        request = shape_request(pod)
        offered = self._best_nodes(pod, request or NO_GPU, use)
        if not offered:
            if request is not None:
                self._observe(request)
            return False
        if request is None:
            self._take(lease_id, offered[0], use, Placement(()))
            return True
        policy = self.policy.make(use, self.rooms)
        result = place_on_nodes(request, {n: self.nodes[n].views for n in offered}, lease_id, policy=policy)
        if isinstance(result, Placement):
            self._take(lease_id, result.assignments[0][0].record.node, use, result)
        self._observe(request)
        return isinstance(result, Placement)

    def _observe(self, request: ShapeRequest) -> None:
        if self.policy.observe is not None and self.policy.observe(request):
            self._scores.clear()

    def offered(self, pod: PodSpec, use: HostUse) -> dict[str, list[GpuView]]:
        """One node per group of identical nodes whose GPU model the pod accepts, for the queue's decide.

        GPUs of a node without the host room for the pod are offered unschedulable, so that placement tells
        "busy" from "never fits".
        """
        out: dict[str, list[GpuView]] = {}
        for (model, _, cpu, memory), names in self._groups.items():
            if pod.gpu_spec and model not in pod.gpu_spec:
                continue
            views = self.nodes[names[0]].views
            if cpu < use.cpu_milli or memory < use.memory_mib:
                views = [replace(v, schedulable=False) for v in views]
            out[names[0]] = list(views)
        return out

    def admit(self, lease_id: str, use: HostUse, placement: Placement) -> None:
        """Apply a placement decided elsewhere (the queue's decide); its node must have the host room."""
        self._take(lease_id, placement.assignments[0][0].record.node, use, placement)

    def release(self, lease_id: str) -> None:
        """Give back everything `lease_id` holds."""
        held = self.held.pop(lease_id)
        node = self.nodes[held.node]
        for i in held.gpus:
            view = node.views[i]
            node.views[i] = replace(view, state=view.state.without_lease(lease_id))
        self.rooms[held.node] = self.rooms[held.node].giving_back(held.use)
        self.allocated_milli -= held.milli
        self._regroup(node)

    def _best_nodes(self, pod: PodSpec, request: ShapeRequest, use: HostUse) -> list[str]:
        """The first node of every group tied for the best score, in name order (host and GPUs fit)."""
        best: Score | None = None
        chosen: list[str] = []
        host_key = self.policy.host_key
        cpu_use, memory_use = use.cpu_milli, use.memory_mib
        spec, count, milli, whole = pod.gpu_spec, pod.num_gpu, pod.gpu_milli, pod.whole
        groups = self._open if count else self._groups
        for key, names in groups.items():
            model, idle, cpu, memory = key
            if cpu < cpu_use or memory < memory_use or (spec and model not in spec):
                continue
            if whole:
                if len(idle) < count or idle[-count] < MILLI_PER_GPU:
                    continue
            elif count and idle[-1] < milli:
                continue
            memo = (model, idle, host_key(cpu, memory), host_key(cpu - cpu_use, memory - memory_use), count, milli)
            if memo in self._scores:
                score = self._scores[memo]
            else:
                score = self._scores[memo] = self._score(names[0], request, use)
            if score is None:
                continue
            if best is None or score < best:
                best, chosen = score, [names[0]]
            elif score == best:
                chosen.append(names[0])
        return sorted(chosen)

    def _score(self, rep: str, request: ShapeRequest, use: HostUse) -> Score | None:
        """The policy's score for `request` on node `rep` through the core (None: it does not fit there)."""
        views = self.nodes[rep].views
        policy = self.policy.make(use, self.rooms)
        result = place(request, views, "score", policy=policy)
        return policy.node_score(views, result) if isinstance(result, Placement) else None

    def _take(self, lease_id: str, name: str, use: HostUse, placement: Placement) -> None:
        node = self.nodes[name]
        milli = 0
        for view, claim in placement.assignments:
            i = view.record.index
            current = node.views[i]
            node.views[i] = replace(current, state=current.state.with_claim(claim))
            milli += claim.compute_milli
        self.rooms[name] = self.rooms[name].taking(use)
        self.allocated_milli += milli
        self.held[lease_id] = Held(name, use, tuple(v.record.index for v, _ in placement.assignments), milli)
        self._regroup(node)

    def _regroup(self, node: SimNode) -> None:
        room = self.rooms[node.name]
        key = (node.model, tuple(sorted(v.free_compute for v in node.views)), room.cpu_milli, room.memory_mib)
        if key == node.key:
            return
        names = self._groups[node.key]
        names.remove(node.name)
        if not names:
            del self._groups[node.key]
            self._open.pop(node.key, None)
        self._join(key, node.name)
        node.key = key

    def _join(self, key: GroupKey, name: str) -> None:
        names = self._groups.get(key)
        if names is None:
            names = self._groups[key] = []
            if key[1] and key[1][-1] > 0:
                self._open[key] = names
        bisect.insort(names, name)
