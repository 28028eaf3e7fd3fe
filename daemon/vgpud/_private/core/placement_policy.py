"""How placement ranks the GPUs and nodes a request fits: best fit unless a policy is passed in.

`place` and `place_on_nodes` take an optional policy so that other rankings (fragmentation gradient, see
fragmentation.py) run through the same placement code; lower scores win, ties still go to the lower GPU
index and the first node name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vgpud._private.core.model import Claim
from vgpud._private.core.placement import leftover
from vgpud._private.core.slice_views import GpuView, Placement

Score = tuple[float, ...]
"""Compared lexicographically, lower is better: later entries break ties of earlier ones."""


class PlacementPolicy(Protocol):
    """Scores candidates; placement keeps the mechanics (what fits, distinct GPUs, all or nothing)."""

    def gpu_score(self, view: GpuView, claim: Claim, node: Sequence[GpuView]) -> Score:
        """Rank one GPU of `node` that can take `claim`."""
        ...

    def node_score(self, node: Sequence[GpuView], placement: Placement) -> Score:
        """Rank a whole placement on `node` against the same request's placements on other nodes."""
        ...


@dataclass(frozen=True, slots=True)
class BestFit:
    """Today's default as a policy: the tightest GPU, the node left with the least room on the GPUs used."""

    def gpu_score(self, view: GpuView, claim: Claim, node: Sequence[GpuView]) -> Score:  # noqa: ARG002 -- best fit looks at the one GPU only
        """Room left on this GPU after the claim."""
        return (leftover(view, claim),)

    def node_score(self, node: Sequence[GpuView], placement: Placement) -> Score:  # noqa: ARG002 -- best fit looks at the GPUs used only
        """Room left on the GPUs the placement uses."""
        return (sum(leftover(view, claim) for view, claim in placement.assignments),)
