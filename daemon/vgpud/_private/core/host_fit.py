"""A host's CPU and memory next to its GPUs: a task lands on a node only where these fit too (pure).

GPU placement sees GPUs only; a trace's tasks also ask for host CPU (milli-cores) and memory (MiB), and a
node out of either cannot take a task whatever its GPUs hold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class HostUse:
    """CPU (milli-cores) and host memory (MiB) that a task takes."""

    cpu_milli: int = 0
    memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class HostRoom:
    """CPU and host memory still free on one node."""

    cpu_milli: int
    memory_mib: int

    def fits(self, use: HostUse) -> bool:
        """Whether the node can still take `use`."""
        return use.cpu_milli <= self.cpu_milli and use.memory_mib <= self.memory_mib

    def taking(self, use: HostUse) -> HostRoom:
        """The room left after `use` lands (the caller checked `fits`)."""
        if not self.fits(use):
            raise ValueError(f"{use} does not fit in {self}")
        return replace(self, cpu_milli=self.cpu_milli - use.cpu_milli, memory_mib=self.memory_mib - use.memory_mib)

    def giving_back(self, use: HostUse) -> HostRoom:
        """The room after `use` leaves."""
        return replace(self, cpu_milli=self.cpu_milli + use.cpu_milli, memory_mib=self.memory_mib + use.memory_mib)
