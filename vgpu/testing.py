"""Test helpers for code that uses vgpu: a real, throwaway vgpud with simulated GPUs.

from vgpu.testing import local_pool

with local_pool("h100-80gb:2") as daemon:  # VGPU_ENDPOINT names the daemon inside the block
    with vgpu.acquire(memory="20GiB", compute=0.5) as lease:
        ...

With pytest, the `vgpu_pool` fixture (vgpu's pytest plugin, loaded when vgpu is installed) gives each test
one; `@pytest.mark.vgpu_pool("a100-40gb:1")` or the ini option `vgpu_pool_gpus` choose its GPUs.
"""

from __future__ import annotations

from vgpu._private.local_pool import LocalPool, local_pool

__all__ = ["LocalPool", "local_pool"]
