"""Which placement policy a daemon runs, and the task mix its FGD placement expects (pure, no I/O).

A daemon has no pod list to learn its task mix from, so it uses the shapes of the pool's most recent
requests, as the FGD paper suggests for an online scheduler: a shared slice is a class of one GPU at the
larger of its compute share and its memory's share of the pool's largest GPU; a whole GPU (or several)
is a class of that many whole GPUs. MIG requests are placed by MIG geometry and take no part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from vgpu._private.units import MILLI_PER_GPU
from vgpud._private.core.fragmentation import FragmentationGradient, TaskClass, TaskMix
from vgpud._private.core.model import Isolation, ShapeRequest
from vgpud._private.core.placement_policy import PlacementPolicy

PlacementName = Literal["best-fit", "fgd"]
PLACEMENT_NAMES: tuple[PlacementName, ...] = ("best-fit", "fgd")


def request_class(request: ShapeRequest, gpu_memory_bytes: int) -> TaskClass | None:
    """The task class of one request at its minimum (None for MIG instances and empty requests)."""
    if request.isolation is Isolation.MIG or request.count <= 0:
        return None
    if request.isolation is Isolation.WHOLE:
        return TaskClass(request.count, MILLI_PER_GPU, request.gpu_models, float(request.count))
    memory_milli = -(-request.memory_bytes * MILLI_PER_GPU // gpu_memory_bytes) if gpu_memory_bytes > 0 else 0
    milli = min(max(request.compute_milli, memory_milli, 1), MILLI_PER_GPU)
    # Shared slices of one request sit on distinct GPUs but are sized alone: `count` one-GPU tasks.
    return TaskClass(1, milli, request.gpu_models, float(request.count))


def request_mix(requests: Iterable[ShapeRequest], gpu_memory_bytes: int) -> TaskMix | None:
    """The mix of these requests' classes, weighted by slices asked (None when none has a class)."""
    classes = [c for c in (request_class(r, gpu_memory_bytes) for r in requests) if c is not None]
    return TaskMix.of(classes) if classes else None


def placement_policy(name: PlacementName, mix: TaskMix | None) -> PlacementPolicy | None:
    """The policy placement should rank with; None means best fit (also FGD's choice before any request)."""
    if name == "fgd" and mix is not None:
        return FragmentationGradient(mix)
    return None
