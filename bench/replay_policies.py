"""The placement policies the replay compares, built from the pod list's task mix.

bestfit    the core's default ranking (tightest GPU, tightest node).
fgd        Fragmentation Gradient Descent as in the paper: the task classes are the pod list's distinct
           (CPU, GPU count, milli-GPU, GPU models) shapes by frequency, so a node whose free CPU no longer
           meets a class counts its idle GPUs as fragment for it.
fgd-gpu    FGD over GPU shapes only (num_gpu, gpu_milli, gpu_spec): blind to host CPU.
fgd-host   ours: FGD whose fragment also counts the idle GPU that a node's free CPU could not feed (a
           node with 8 idle GPUs and CPU left for 3 tasks of a class strands 5 GPUs for that class), over
           the same classes as fgd.
fgd-host-typical   fgd-host over the FGD simulator's "typical pods" only: the most popular shapes, 10 at a
           time, until they cover 60 % of the pods (its DefaultTypicalPodPopularityThreshold and step).
fgd-lean   fgd-host over one class per GPU shape (num_gpu, gpu_milli, gpu_spec), weighted by how often the
           shape comes, whose CPU is the least any pod of that shape asks: idle GPU counts as stranded only
           where even the leanest pod of a shape could not be fed, and rare CPU variants do not split a
           shape into classes of their own.
daemon     what vgpud runs ([scheduling] placement = "fgd"): FGD over the GPU shapes of the last 1000
           requests seen (not the pod list), rebuilt every 100; best fit until the first rebuild. It sees no
           host CPU or memory, as the daemon does not.
All FGD policies break ties by best fit, then by the idle GPU left on the node.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence

from replay_cluster import GIB, GPU_MEMORY_GIB, Policy
from replay_trace import PodSpec

from vgpud._private.core.fragmentation import FragmentationGradient, TaskClass, TaskMix
from vgpud._private.core.host_fit import HostRoom, HostUse
from vgpud._private.core.model import ShapeRequest
from vgpud._private.core.placement_mix import placement_policy, request_mix
from vgpud._private.core.placement_policy import BestFit, PlacementPolicy

NAMES = ("bestfit", "fgd", "fgd-gpu", "fgd-host", "fgd-host-typical", "fgd-lean", "daemon")
DAEMON_WINDOW = 1000
"""[scheduling] placement_window's default."""
DAEMON_REBUILD = 100
"""Requests between rebuilds of the daemon policy's mix (the daemon rebuilds on time, at most every 5 s)."""
TYPICAL_SHARE = 0.6
TYPICAL_STEP = 10
"""The FGD simulator's defaults for its typical pods (DefaultTypicalPodPopularityThreshold, ...IncreaseStep)."""

Shape = tuple[int, int, tuple[str, ...], int, int]
"""(num_gpu, gpu_milli, gpu_spec, cpu_milli, memory_mib); 0 for a host need that is not counted."""


def shapes(pods: Sequence[PodSpec], *, cpu: bool = False, memory: bool = False) -> Counter[Shape]:
    """How often each shape occurs in the pod list (with host CPU/memory in the shape when asked)."""
    return Counter(
        (p.num_gpu, p.gpu_milli, p.gpu_spec, p.cpu_milli if cpu else 0, p.memory_mib if memory else 0) for p in pods
    )


def typical(counts: Counter[Shape]) -> Counter[Shape]:
    """The most popular shapes, TYPICAL_STEP at a time, until they cover TYPICAL_SHARE of the pods."""
    ranked = counts.most_common()
    needed = TYPICAL_SHARE * sum(counts.values())
    kept: Counter[Shape] = Counter()
    for start in range(0, len(ranked), TYPICAL_STEP):
        if sum(kept.values()) >= needed:
            break
        kept.update(dict(ranked[start : start + TYPICAL_STEP]))
    return kept


def task_mix(pods: Sequence[PodSpec], *, cpu: bool = False, memory: bool = False) -> TaskMix:
    """The pod list's distinct shapes weighted by how often they occur (with host CPU/memory when asked)."""
    return mix_of(shapes(pods, cpu=cpu, memory=memory))


def lean(counts: Counter[Shape]) -> Counter[Shape]:
    """One shape per GPU shape, with the least CPU any of its pods asks and all of their counts."""
    least: dict[tuple[int, int, tuple[str, ...]], int] = {}
    weight: Counter[tuple[int, int, tuple[str, ...]]] = Counter()
    for (gpus, milli, spec, cpu, _memory), n in counts.items():
        key = (gpus, milli, spec)
        least[key] = min(cpu, least.get(key, cpu))
        weight[key] += n
    return Counter({(g, m, spec, least[g, m, spec], 0): n for (g, m, spec), n in weight.items()})


def mix_of(counts: Counter[Shape]) -> TaskMix:
    """The task mix of these shapes, weighted by their counts."""
    return TaskMix.of(TaskClass(g, m, spec, float(n), c, mem) for (g, m, spec, c, mem), n in counts.items())


def build(name: str, pods: Sequence[PodSpec]) -> Policy:
    """The policy called `name` (one of NAMES) for this pod list."""
    if name == "bestfit":
        best = BestFit()
        return Policy(name, lambda _use, _rooms: best)
    if name == "fgd-gpu":
        gpu_only = FragmentationGradient(task_mix(pods))
        return Policy(name, lambda _use, _rooms: gpu_only)
    if name == "fgd":
        mix = task_mix(pods, cpu=True)

        def fgd(use: HostUse, rooms: Mapping[str, HostRoom]) -> PlacementPolicy:
            return FragmentationGradient(mix, rooms, use)

        return Policy(name, fgd, lambda cpu, memory: mix.host_level(HostRoom(cpu, memory)))
    if name in ("fgd-host", "fgd-host-typical", "fgd-lean"):
        counts = shapes(pods, cpu=True)
        kept = {"fgd-host": counts, "fgd-host-typical": typical(counts), "fgd-lean": lean(counts)}[name]
        host_mix = mix_of(kept)

        def fgd_host(use: HostUse, rooms: Mapping[str, HostRoom]) -> PlacementPolicy:
            return FragmentationGradient(host_mix, rooms, use, host_bound=True)

        return Policy(name, fgd_host, _exact_cpu)
    if name == "daemon":
        return _daemon(max(GPU_MEMORY_GIB.values()) * GIB)
    raise ValueError(f"unknown policy {name!r} (known: {', '.join(NAMES)})")


class _OnlineMix:
    """The daemon's placement: FGD over the mix of the requests seen so far, as PlacementSource builds it."""

    def __init__(self, gpu_memory_bytes: int) -> None:
        self._memory = gpu_memory_bytes
        self._recent: deque[ShapeRequest] = deque(maxlen=DAEMON_WINDOW)
        self._seen = 0
        self.policy: PlacementPolicy = BestFit()

    def observe(self, request: ShapeRequest) -> bool:
        """Count a request in; every DAEMON_REBUILD of them, rebuild the policy (True: it changed)."""
        self._recent.append(request)
        self._seen += 1
        if self._seen % DAEMON_REBUILD:
            return False
        self.policy = placement_policy("fgd", request_mix(self._recent, self._memory)) or BestFit()
        return True


def _daemon(gpu_memory_bytes: int) -> Policy:
    """The daemon's online FGD as a replay policy."""
    online = _OnlineMix(gpu_memory_bytes)
    return Policy("daemon", lambda _use, _rooms: online.policy, observe=online.observe)


def _exact_cpu(cpu: int, _memory: int) -> int:
    """Host-bound scores over CPU-aware classes depend on the exact free CPU."""
    return cpu
