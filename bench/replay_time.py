"""Time-driven replay: pods arrive at creation_time and leave after their lifetime; the queue decides waiters.

An arriving pod is placed at once (through the policy) when nobody waits; otherwise, or when it does not
fit, it joins a FIFO queue unless it could never fit even on an empty cluster (then it fails). Whenever a
pod leaves, the queue is drained by the core's `decide()`: its head is offered one node per group of
identical nodes whose host CPU and memory fit it (what placement would pick from each group anyway), and
is admitted, refused (never fits) or held, which stops the drain (FIFO). A pod granted late keeps its
lifetime (deletion - creation). A pod without GPUs at the head waits only for host room. Pods still
waiting when nothing is left to leave count as failed. Each pod gets a synthetic project (a stable hash
of its name into 4) and a priority class from its qos, reported per class and project; decide() is called
with its positional parameters only (projects and quotas are not modelled here).
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from replay_cluster import NO_GPU, Policy, SimCluster, shape_request
from replay_trace import NodeSpec, PodSpec

from vgpud._private.core.host_fit import HostUse
from vgpud._private.core.queue_order import Admit, Hold, Waiting, decide

PROJECTS = 4
PRIORITY_BY_QOS = {"LS": "inference", "Guaranteed": "inference", "Burstable": "train", "BE": "best-effort"}
DEFAULT_PRIORITY = "train"


def project_of(pod: PodSpec) -> str:
    """A synthetic project: a stable hash of the pod's name into PROJECTS buckets."""
    return f"project-{zlib.crc32(pod.name.encode()) % PROJECTS}"


def priority_of(pod: PodSpec) -> str:
    """The priority class for the pod's qos (LS -> inference, Burstable -> train, BE -> best-effort)."""
    return PRIORITY_BY_QOS.get(pod.qos, DEFAULT_PRIORITY)


@dataclass(slots=True)
class Tally:
    """Counts and queueing delays of one slice of the pods (all, a priority class, a project)."""

    pods: int = 0
    placed: int = 0
    waited: int = 0
    failed: int = 0
    delays: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        """The tally as JSON-ready numbers."""
        return {
            "pods": self.pods,
            "placed": self.placed,
            "waited": self.waited,
            "failed": self.failed,
            "queue_delay_p50_s": percentile(self.delays, 50),
            "queue_delay_p95_s": percentile(self.delays, 95),
        }


@dataclass(frozen=True, slots=True)
class TimeResult:
    """One policy's time-driven replay."""

    overall: dict[str, float | int]
    by_priority: dict[str, dict[str, float | int]]
    by_project: dict[str, dict[str, float | int]]
    mean_alloc_ratio: float
    peak_alloc_ratio: float
    never_fits: int
    decide_calls: int
    span_s: float


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return float(ordered[int(rank) - 1])


class _Replay:
    """The event loop of one time-driven replay (mutable state kept together)."""

    def __init__(self, nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], policy: Policy) -> None:
        self.nodes = nodes
        self.pods = pods
        self.cluster = SimCluster(nodes, policy)
        self.queue: list[tuple[int, float]] = []
        """(pod index, submit time) in arrival order."""
        self.leaving: list[tuple[float, int]] = []
        """Heap of (departure time, pod index)."""
        self.tallies: dict[str, Tally] = {}
        self.fits_ever: dict[tuple[int, tuple[str, ...], int, int], bool] = {}
        self.never_fits = 0
        self.decide_calls = 0
        self.now = 0.0
        self.area = 0.0
        self.peak = 0.0
        self.start: float | None = None

    def run(self) -> TimeResult:
        order = sorted(range(len(self.pods)), key=lambda i: (self.pods[i].creation_time, i))
        for i in order:
            pod = self.pods[i]
            self._leave_until(pod.creation_time)
            self._advance(pod.creation_time)
            self._arrive(i)
        self._leave_until(float("inf"))
        for i, _ in self.queue:  # nothing left to leave: these are never granted
            for tally in self._tallies(self.pods[i]):
                tally.failed += 1
        span = self.now - (self.start or 0.0)
        capacity = self.cluster.total_gpus or 1
        return TimeResult(
            overall=self._tally("all").summary(),
            by_priority={k[9:]: t.summary() for k, t in sorted(self.tallies.items()) if k.startswith("priority:")},
            by_project={k[8:]: t.summary() for k, t in sorted(self.tallies.items()) if k.startswith("project:")},
            mean_alloc_ratio=self.area / (1000 * capacity * span) if span > 0 else self.cluster.alloc_ratio,
            peak_alloc_ratio=self.peak,
            never_fits=self.never_fits,
            decide_calls=self.decide_calls,
            span_s=span,
        )

    def _tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    def _tallies(self, pod: PodSpec) -> list[Tally]:
        return [
            self._tally("all"),
            self._tally(f"priority:{priority_of(pod)}"),
            self._tally(f"project:{project_of(pod)}"),
        ]

    def _advance(self, t: float) -> None:
        """Move the clock to `t`, integrating the allocation."""
        if self.start is None:
            self.start = self.now = t
        if t > self.now:
            self.area += self.cluster.allocated_milli * (t - self.now)
            self.now = t

    def _arrive(self, i: int) -> None:
        pod = self.pods[i]
        for tally in self._tallies(pod):
            tally.pods += 1
        if not self._could_ever_fit(pod):
            self.never_fits += 1
            for tally in self._tallies(pod):
                tally.failed += 1
            return
        if not self.queue and self.cluster.place(pod, f"pod-{i}"):
            self._granted(i, 0.0)
            return
        self.queue.append((i, self.now))

    def _granted(self, i: int, delay: float) -> None:
        pod = self.pods[i]
        for tally in self._tallies(pod):
            tally.placed += 1
            tally.delays.append(delay)
            if delay > 0:
                tally.waited += 1
        self.peak = max(self.peak, self.cluster.alloc_ratio)
        if pod.deletion_time is not None and pod.deletion_time >= pod.creation_time:
            heapq.heappush(self.leaving, (self.now + pod.deletion_time - pod.creation_time, i))

    def _leave_until(self, t: float) -> None:
        while self.leaving and self.leaving[0][0] <= t:
            when, i = heapq.heappop(self.leaving)
            self._advance(when)
            self.cluster.release(f"pod-{i}")
            if self.queue:
                self._drain()

    def _drain(self) -> None:
        """Grant waiters from the head while they fit (FIFO: a held head stops the drain)."""
        while self.queue:
            i, submitted = self.queue[0]
            pod = self.pods[i]
            lease_id = f"pod-{i}"
            request = shape_request(pod)
            if request is None:
                if not self.cluster.place(pod, lease_id):
                    return
            else:
                use = HostUse(pod.cpu_milli, pod.memory_mib)
                offered = self.cluster.offered(pod, use)
                if not offered:
                    return
                self.decide_calls += 1
                decision = decide(
                    [Waiting(lease_id=lease_id, request=request, target_node="", span=False, wait=True)], offered
                )[0]
                if isinstance(decision, Hold):
                    return
                if not isinstance(decision, Admit):  # refused: no node could ever hold it
                    self.queue.pop(0)
                    for tally in self._tallies(pod):
                        tally.failed += 1
                    continue
                self.cluster.admit(lease_id, use, decision.placement)
            self.queue.pop(0)
            self._granted(i, self.now - submitted)

    def _could_ever_fit(self, pod: PodSpec) -> bool:
        """Whether some node, empty, could take the pod (model, GPU count, CPU, memory)."""
        count = (shape_request(pod) or NO_GPU).count
        key = (count, pod.gpu_spec, pod.cpu_milli, pod.memory_mib)
        found = self.fits_ever.get(key)
        if found is None:
            found = self.fits_ever[key] = any(
                n.cpu_milli >= pod.cpu_milli
                and n.memory_mib >= pod.memory_mib
                and n.gpus >= count
                and (not pod.gpu_spec or count == 0 or n.model in pod.gpu_spec)
                for n in self.nodes
            )
        return found


def replay_time(nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], policy: Policy) -> TimeResult:
    """Replay `pods` in creation order with departures; see the module doc."""
    return _Replay(nodes, pods, policy).run()
