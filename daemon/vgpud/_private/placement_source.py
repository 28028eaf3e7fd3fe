"""This daemon's placement policy, its FGD task mix rebuilt from the pool view's recent requests."""

from __future__ import annotations

import time
from collections.abc import Callable

from vgpud._private.core.fragmentation import TaskMix
from vgpud._private.core.model import ShapeRequest
from vgpud._private.core.placement_mix import PlacementName, placement_policy, request_mix
from vgpud._private.core.placement_policy import PlacementPolicy
from vgpud._private.pool_view import PoolView


class PlacementSource:
    """Hands placement the policy to rank with; the mix is rebuilt when the view changed, at most every refresh_s.

    The mix is the pool's last `window` requests (live, recently ended and waiting leases), so it follows
    what the pool is asked for without a pass over the whole history on every acquire.
    """

    def __init__(
        self,
        view: PoolView,
        name: PlacementName,
        *,
        window: int,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._name: PlacementName = name
        self._window = window
        self._refresh_s = refresh_s
        self._clock = clock
        self._mix: TaskMix | None = None
        self._policy: PlacementPolicy | None = None
        self._built: tuple[int, float] | None = None
        """(view generation, clock) of the last rebuild."""

    @property
    def name(self) -> PlacementName:
        """The configured policy ("best-fit" or "fgd")."""
        return self._name

    @property
    def mix(self) -> TaskMix | None:
        """The task mix FGD ranks against now (None: no request seen yet, or best fit)."""
        return self._mix

    def __call__(self) -> PlacementPolicy | None:
        """The policy for a placement now (None: best fit)."""
        if self._name == "best-fit":
            return None
        now = self._clock()
        generation = self._view.generation
        if self._built is not None and (generation == self._built[0] or now - self._built[1] < self._refresh_s):
            return self._policy
        self._built = (generation, now)
        mix = request_mix(self._recent(), self._largest_gpu_memory())
        if mix is None or self._mix is None or mix.classes != self._mix.classes:
            self._mix = mix  # an unchanged mix is kept with what it has memoised
            self._policy = placement_policy(self._name, mix)
        return self._policy

    def _recent(self) -> list[ShapeRequest]:
        """The requests of the pool's `window` newest leases and waiting requests."""
        view = self._view
        leases = [v.value for v in view.live_leases()] + [v.value for v in view.ended_leases()]
        leases += [q.request.lease for q in view.queue()]
        leases.sort(key=lambda lease: lease.created_at)
        newest = {lease.id: lease.request for lease in leases}  # a waiting request's pending lease counts once
        return list(newest.values())[-self._window :]

    def _largest_gpu_memory(self) -> int:
        return max((g.memory_bytes for g in self._view.gpus().values() if not g.mig_enabled), default=0)
