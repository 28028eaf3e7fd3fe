"""The FGD paper's protocol: sample pods with replacement, place them one by one, no departures.

Per seed the sample is drawn once (until arrived GPU demand reaches 130 % of the cluster's GPUs) and every
policy replays the same sample on a fresh cluster. Recorded when arrived demand first reaches 100 % and
at 130 %: allocation ratio, and at 100 % the fragmentation rate against the pod list's task mix.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from replay_cluster import Policy, SimCluster
from replay_trace import NodeSpec, PodSpec

from vgpu._private.units import MILLI_PER_GPU
from vgpud._private.core.fragmentation import TaskMix

FULL = 1.0
END = 1.3


@dataclass(frozen=True, slots=True)
class SeedResult:
    """One policy on one seed's sample."""

    seed: int
    pods: int
    alloc_ratio_100: float
    alloc_ratio_130: float
    frag_rate_100: float
    """Against the pod list's GPU shapes."""
    frag_rate_cpu_100: float
    """Against its (CPU, GPU) shapes, each node's free CPU considered (the paper's simulator's measure)."""
    failed_pods: int
    """Pods that found no place, up to 130 % arrived demand."""
    failed_gpu_milli: int
    """Their GPU demand."""


def draw(pods: Sequence[PodSpec], total_gpus: int, seed: int) -> list[int]:
    """Pod indices sampled with replacement until arrived GPU demand reaches 130 % of capacity.

    Stops early (never loops forever) when the pod list asks for no GPU at all: then 10x as many pods as
    there are GPUs.
    """
    rng = random.Random(seed)
    target = END * MILLI_PER_GPU * total_gpus
    if all(p.gpu_demand == 0 for p in pods) or total_gpus == 0:
        return [rng.randrange(len(pods)) for _ in range(10 * max(total_gpus, 1))]
    picks: list[int] = []
    arrived = 0
    while arrived < target:
        i = rng.randrange(len(pods))
        picks.append(i)
        arrived += pods[i].gpu_demand
    return picks


def replay(
    nodes: Sequence[NodeSpec],
    pods: Sequence[PodSpec],
    sample: Sequence[int],
    *,
    policy: Policy,
    mix: TaskMix,
    cpu_mix: TaskMix,
    seed: int,
) -> SeedResult:
    """Place the sampled pods in order with `policy`; measure at 100 % and 130 % arrived demand."""
    cluster = SimCluster(nodes, policy)
    capacity = MILLI_PER_GPU * cluster.total_gpus
    arrived = 0
    failed = 0
    failed_milli = 0
    at_full: tuple[float, float, float] | None = None
    for n, i in enumerate(sample):
        pod = pods[i]
        arrived += pod.gpu_demand
        if not cluster.place(pod, f"pod-{n}"):
            failed += 1
            failed_milli += pod.gpu_demand
        if at_full is None and arrived >= FULL * capacity:
            at_full = _measure(cluster, mix, cpu_mix)
    if at_full is None:  # the sample never reached 100 % (a pod list without GPU demand)
        at_full = _measure(cluster, mix, cpu_mix)
    return SeedResult(
        seed=seed,
        pods=len(sample),
        alloc_ratio_100=at_full[0],
        alloc_ratio_130=cluster.alloc_ratio,
        frag_rate_100=at_full[1],
        frag_rate_cpu_100=at_full[2],
        failed_pods=failed,
        failed_gpu_milli=failed_milli,
    )


def _measure(cluster: SimCluster, mix: TaskMix, cpu_mix: TaskMix) -> tuple[float, float, float]:
    """(allocation ratio, fragmentation rate, CPU-aware fragmentation rate) now."""
    fragment, idle = cluster.fragmentation(mix)
    cpu_fragment, _ = cluster.fragmentation(cpu_mix)
    return cluster.alloc_ratio, fragment / idle if idle else 0.0, cpu_fragment / idle if idle else 0.0
