"""The daemon's placement policy ([scheduling] placement): FGD against the pool's recent requests, or best fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import config_args
from vgpu.testing import local_pool


@pytest.mark.parametrize(("placement", "expected_gpu"), [("fgd", 2), ("best-fit", 1)])
def test_fgd_keeps_room_for_what_the_pool_is_asked_for(tmp_path: Path, placement: str, expected_gpu: int) -> None:
    toml = f'[scheduling]\nplacement = "{placement}"\nplacement_refresh_s = 0\n'
    with local_pool("h100-80gb:3", extra_args=config_args(tmp_path, toml)) as daemon, daemon.pool() as pool:
        # Two halves fill GPU 0 (equal fragments: ties go to best fit), 0.4 goes to GPU 1, leaving 0.6 there.
        halves = [pool.acquire(memory="40GB", compute=0.5, wait=False) for _ in range(2)]
        assert [h.slices[0].gpu_index for h in halves] == [0, 0]
        forty = pool.acquire(memory="32GB", compute=0.4, wait=False)
        assert forty.slices[0].gpu_index == 1
        # Best fit squeezes 0.3 into GPU 1's 0.6 and leaves 0.3 that none of the recent requests fit; FGD puts
        # it on the empty GPU 2, where the 0.7 left still takes a half.
        small = pool.acquire(memory="24GB", compute=0.3, wait=False)
        assert small.slices[0].gpu_index == expected_gpu
        for lease in (*halves, forty, small):
            lease.release()
