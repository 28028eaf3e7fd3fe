"""Test helpers for code that uses vgpu: a real, throwaway vgpud with simulated GPUs.

from vgpu.testing import local_pool

with local_pool("h100-80gb:2") as daemon, daemon.pool() as pool:
    with pool.acquire(memory="20GiB", compute=0.5) as lease:
        ...
"""

from __future__ import annotations

from vgpu._private.local_pool import LocalPool, local_pool

__all__ = ["LocalPool", "local_pool"]
