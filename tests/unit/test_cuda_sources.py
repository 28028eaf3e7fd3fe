"""The CUDA C the runtime generates compiles, with no GPU: nvcc builds the preemptible-kernel source for the
A100 and H100 architectures, and the name the runtime hands CuPy is the kernel's unmangled entry point.

On a GPU, CuPy compiles the same source with NVRTC at the first launch; a template edit that breaks it would
otherwise surface only there. The compile tests skip where no CUDA toolkit (nvcc) is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vgpu._private.runtime.preemptible_kernel import CudaPreemptibleKernel

_TOOLKIT_NVCC = Path("/usr/local/cuda/bin/nvcc")
NVCC = shutil.which("nvcc") or (str(_TOOLKIT_NVCC) if _TOOLKIT_NVCC.is_file() else None)
"""The CUDA compiler: on PATH, or where the toolkit installs it by default."""

needs_nvcc = pytest.mark.skipif(
    NVCC is None, reason="no nvcc here: the generated CUDA C is compiled only with a toolkit"
)

ITEM_SOURCE = r"""
__device__ void update(unsigned long long i, float* y, const float* x, float a, volatile int* seen) {
    if (i == 0) {
        *seen = 1;
        __threadfence_system();
    }
    y[i] = a * x[i] + y[i];
}
"""
ARG_TYPES = ("float*", "const float*", "float", "volatile int*")
FIXED_PARAMS = 5
"""stop flag, chunk counter, begin, total, chunk: what `CudaPreemptibleKernel._run_from` passes first."""


class RecordingRawKernel:
    """cupy.RawKernel as far as the constructor goes: it records what it was given (and compiles nothing)."""

    def __init__(self, code: str, name: str, options: tuple[str, ...] = ()) -> None:
        if not isinstance(options, tuple):
            raise TypeError("cupy.RawKernel declares `tuple options`: anything else is a TypeError there")
        self.code = code
        self.name = name
        self.options = options


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> CudaPreemptibleKernel:
    """A preemptible kernel built against a stand-in cupy module, so no CuPy or GPU is needed."""
    fake = types.ModuleType("cupy")
    fake.RawKernel = RecordingRawKernel  # type: ignore[attr-defined]  # a stand-in module gets its attributes set
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return CudaPreemptibleKernel(ITEM_SOURCE, ARG_TYPES, 1 << 20, item_name="update", options=["-lineinfo"])


def test_kernel_name_and_options_reach_rawkernel(kernel: CudaPreemptibleKernel) -> None:
    raw = kernel._kernel
    assert isinstance(raw, RecordingRawKernel)
    assert (raw.code, raw.name, raw.options) == (kernel.source, "vgpu_preemptible_update", ("-lineinfo",))
    assert f'extern "C" __global__ void {raw.name}(' in raw.code


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_preemptible_kernel_source_compiles(kernel: CudaPreemptibleKernel, arch: str, tmp_path: Path) -> None:
    assert NVCC is not None
    source = tmp_path / "kernel.cu"
    source.write_text(kernel.source)
    ptx = tmp_path / "kernel.ptx"
    result = subprocess.run(
        [NVCC, f"-arch={arch}", "-ptx", "-x", "cu", "-o", str(ptx), str(source)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = ptx.read_text()
    entry = re.search(rf"\.entry\s+{kernel.kernel_name}\s*\(([^)]*)\)", text)
    assert entry is not None, f"no unmangled entry point {kernel.kernel_name!r} in the PTX"
    # What the host passes must match in order and size: two device pointers and three np.uint64 counts
    # first (CuPy sends NumPy scalars by their own size), then the user's (pointers, and a 4-byte float).
    params = re.findall(r"\.param\s+\.(\w+)", entry.group(1))
    assert params == ["u64"] * FIXED_PARAMS + ["u64", "u64", "f32", "u64"]
    assert "ld.volatile.global.u32" in text, "the stop flag must be read with a volatile load every poll"
    assert "atom.global.add.u64" in text, "chunks are claimed with a 64-bit atomic add"
