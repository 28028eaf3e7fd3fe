"""The pytest plugin of vgpu (entry point `pytest11: vgpu`): a `vgpu_pool` fixture for code that uses vgpu.

    def test_training_step(vgpu_pool):
        with vgpu.acquire(memory="10GiB", compute=0.5) as lease:  # VGPU_ENDPOINT names vgpu_pool
            ...

    @pytest.mark.vgpu_pool("a100-40gb:1")  # other simulated GPUs for one test
    def test_on_an_a100(vgpu_pool): ...

Each test gets its own throwaway vgpud (a `vgpu.testing.LocalPool`) with simulated GPUs: the ini option
`vgpu_pool_gpus` sets the default spec ("h100-80gb:2"). `-p no:vgpu` turns the plugin off.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import pytest

from vgpu._private.local_pool import LocalPool, local_pool

DEFAULT_GPUS: Final = "h100-80gb:2"
INI_GPUS: Final = "vgpu_pool_gpus"
MARKER: Final = "vgpu_pool"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini option with the default simulated GPUs of `vgpu_pool`."""
    parser.addini(
        INI_GPUS,
        help=f"simulated GPUs of the vgpu_pool fixture, e.g. 'h100-80gb:2,a100-40gb:1' (default {DEFAULT_GPUS})",
        default=DEFAULT_GPUS,
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, so that suites running --strict-markers accept it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(gpus): the simulated GPUs of this test's vgpu_pool fixture, e.g. 'h100-80gb:2,a100-40gb:1'",
    )


def _gpus_for(request: pytest.FixtureRequest) -> str:
    """The spec of the closest `vgpu_pool` marker (test, class, module), else the ini option."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return str(request.config.getini(INI_GPUS) or DEFAULT_GPUS)
    gpus = marker.args[0] if marker.args else marker.kwargs.get("gpus")
    if not isinstance(gpus, str) or not gpus.strip():
        pytest.fail(f"@pytest.mark.{MARKER} takes the simulated GPUs as a string, e.g. 'h100-80gb:2'", pytrace=False)
    return gpus


@pytest.fixture
def vgpu_pool(request: pytest.FixtureRequest) -> Iterator[LocalPool]:
    """A running vgpud with simulated GPUs for this test; VGPU_ENDPOINT names it while the test runs."""
    with local_pool(_gpus_for(request)) as pool:
        yield pool
