"""The [node] and [jobs] tables: where other hosts reach this node, and what processes it starts for jobs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

_MIN_GRACE_S = 0.1
_MAX_GRACE_S = 300.0
_MAX_JOBS = 10_000
_MAX_ADDRESS = 253


@dataclass(frozen=True, slots=True)
class NodeAddressConfig:
    """This host on the network ([node] table)."""

    address: str = ""
    """Where other hosts reach this one: a job's MASTER_ADDR when its first node is here, and the host other
    daemons dial on tcp_listen's port. Default: tcp_listen's host unless it is a wildcard, else the host name."""


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """Processes this daemon starts for multi-node `vgpu run` ([jobs] table)."""

    enabled: bool = True
    """Start processes for jobs of leases with slices here; false refuses them (JOB_REFUSED)."""
    allow_root: bool = False
    """Start jobs launched by root; off by default, so a node that vouches for root cannot run code as root here."""
    stop_grace_s: float = 10.0
    """After SIGTERM (job stopped, lease ended), a job's processes have this long before SIGKILL; 0.1 to 300 s."""
    max_jobs: int = 64
    """Most jobs running here at once; more are refused with RESOURCE_EXHAUSTED. 1 to 10000."""
    cgroups: bool = True
    """Put each job in its own cgroup (v2) where the host lets vgpud create one, so a stop reaches every process
    the job started; else (or false) each rank's process group."""


def validate_node_address(node: NodeAddressConfig, fail: Callable[[str, str], NoReturn]) -> None:
    """Fail with the key and what to change for a bad [node] value."""
    address = node.address
    if len(address) > _MAX_ADDRESS or any(c.isspace() or c in "/[]" for c in address):
        fail("node.address", f"{address[:80]!r} is not a host name or IP address; e.g. 10.0.0.5 or gpu-07.lab")


def validate_jobs(jobs: JobsConfig, fail: Callable[[str, str], NoReturn]) -> None:
    """Fail with the key and what to change for a [jobs] value outside its range."""
    if not (math.isfinite(jobs.stop_grace_s) and _MIN_GRACE_S <= jobs.stop_grace_s <= _MAX_GRACE_S):
        fail(
            "jobs.stop_grace_s",
            f"{jobs.stop_grace_s} must be a finite number from {_MIN_GRACE_S} to {_MAX_GRACE_S} seconds",
        )
    if not 1 <= jobs.max_jobs <= _MAX_JOBS:
        fail("jobs.max_jobs", f"{jobs.max_jobs} must be from 1 to {_MAX_JOBS}")


_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 -- names of the wildcard, not a bind


def advertised(node: NodeAddressConfig, tcp_listen: str | None, host_name: str) -> tuple[str, str]:
    """(address, tcp_endpoint) this node publishes: MASTER_ADDR for jobs, and HOST:PORT other daemons dial."""
    if tcp_listen is None:
        return node.address or host_name, ""
    host, _, port = tcp_listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    address = node.address or (host if host not in _WILDCARDS else host_name)
    dial = f"[{address}]" if ":" in address else address
    return address, f"{dial}:{port}"
