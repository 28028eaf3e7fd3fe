"""lease.apply() and acquire(apply=True): the lease's environment in this process, refused once CUDA runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import vgpu
from tests.unit.test_sdk_support import (
    LEASE_ID,
    TOKEN,
    FakeWorkload,
    fake_daemon,
    make_lease,
    short_tmp_dir,
)
from vgpu._private import process_environment
from vgpu._private.process_environment import (
    CUDA_ALREADY_INITIALIZED,
    apply_environment,
    cuda_initializer,
    driver_initialized,
    loaded_libcuda,
)
from vgpu.api.v1 import types_pb2

LEASE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "VGPU_LEASE_ID", "VGPU_LEASE")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test without the lease's variables; monkeypatch puts the originals back afterwards."""
    for name in LEASE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cuda_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_environment, "cuda_initializer", lambda: "PyTorch")


@pytest.fixture
def cuda_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_environment, "cuda_initializer", lambda: None)


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, str]]:
    with fake_daemon() as (servicer, endpoint, _):
        yield servicer, endpoint


# -- the environment itself -------------------------------------------------------------------------------
def test_apply_sets_the_variables_and_restore_puts_the_old_ones_back(
    monkeypatch: pytest.MonkeyPatch, cuda_not_running: None
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    applied = apply_environment({"CUDA_VISIBLE_DEVICES": "GPU-aaaa", "VGPU_LEASE_ID": "lease-1"}, lease_id="lease-1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
    assert os.environ["VGPU_LEASE_ID"] == "lease-1"
    assert dict(applied) == {"CUDA_VISIBLE_DEVICES": "GPU-aaaa", "VGPU_LEASE_ID": "lease-1"}
    assert applied.previous == {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "VGPU_LEASE_ID": None}
    applied.restore()
    applied.restore()  # idempotent
    assert applied.restored
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert "VGPU_LEASE_ID" not in os.environ


def test_apply_is_a_context_manager(cuda_not_running: None) -> None:
    with apply_environment({"CUDA_VISIBLE_DEVICES": "GPU-aaaa"}, lease_id="lease-1") as applied:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        assert not applied.restored
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_once_cuda_runs_other_devices_are_refused_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, cuda_running: None
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(vgpu.InvalidRequestError) as refused:
        apply_environment({"CUDA_VISIBLE_DEVICES": "GPU-aaaa", "VGPU_LEASE_ID": "lease-1"}, lease_id="lease-1")
    assert refused.value.reason == CUDA_ALREADY_INITIALIZED
    message = str(refused.value)
    assert "CUDA is already initialised here (by PyTorch)" in message
    assert "CUDA_VISIBLE_DEVICES is '0,1', the lease's is 'GPU-aaaa'" in message
    assert "before anything in this process touches the GPU" in message
    assert "apply=True" in message
    assert "vgpu run" in message
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1", "nothing changed"
    assert "VGPU_LEASE_ID" not in os.environ


def test_once_cuda_runs_an_unset_variable_reads_as_every_gpu(cuda_running: None) -> None:
    with pytest.raises(vgpu.InvalidRequestError, match=r"CUDA_VISIBLE_DEVICES is unset \(every GPU\)"):
        apply_environment({"CUDA_VISIBLE_DEVICES": "GPU-aaaa"}, lease_id="lease-1")


def test_once_cuda_runs_the_same_devices_are_fine(monkeypatch: pytest.MonkeyPatch, cuda_running: None) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")  # e.g. started by `vgpu run` with this lease
    with apply_environment({"CUDA_VISIBLE_DEVICES": "GPU-aaaa", "VGPU_LEASE_ID": "lease-1"}, lease_id="lease-1"):
        assert os.environ["VGPU_LEASE_ID"] == "lease-1"


# -- is CUDA running here? --------------------------------------------------------------------------------
def fake_torch(*, initialized: bool) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(is_initialized=lambda: initialized)  # type: ignore[attr-defined]
    return torch


def test_pytorch_that_initialised_cuda_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_environment, "loaded_libcuda", lambda: None)
    monkeypatch.setitem(sys.modules, "torch", fake_torch(initialized=True))
    assert cuda_initializer() == "PyTorch"
    monkeypatch.setitem(sys.modules, "torch", fake_torch(initialized=False))
    assert cuda_initializer() is None, "imported torch alone does not start CUDA"


def test_a_loaded_and_initialised_driver_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(process_environment, "loaded_libcuda", lambda: "/usr/lib/libcuda.so.1")
    monkeypatch.setattr(process_environment, "driver_initialized", lambda path: path.endswith("libcuda.so.1"))
    assert cuda_initializer() == "the CUDA driver (/usr/lib/libcuda.so.1)"
    monkeypatch.setattr(process_environment, "driver_initialized", lambda _path: False)
    assert cuda_initializer() is None, "a driver loaded (by `import cupy`) but not initialised"


def test_the_driver_library_is_found_in_the_process_maps(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/local/cuda/lib64/libcudart.so.12.4.127\n"
        "7f02-7f03 rw-p 00000000 00:00 0 \n"
        "7f04-7f05 r-xp 00000000 00:00 0 [vdso]\n"
    )
    assert loaded_libcuda(maps) is None, "the runtime library is not the driver"
    with maps.open("a") as out:
        out.write("7f06-7f07 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\n")
    assert loaded_libcuda(maps) == "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15"
    assert loaded_libcuda(tmp_path / "missing") is None


FAKE_DRIVER = """
static int initialised = 0;
int cuInit(unsigned int flags) { (void)flags; initialised = 1; return 0; }
int cuDeviceGetCount(int *count) { if (!initialised) return 3; *count = 1; return 0; }
"""

PROBE = """
import ctypes, sys
from vgpu._private.process_environment import cuda_initializer, driver_initialized, loaded_libcuda
assert loaded_libcuda() is None and cuda_initializer() is None
driver = ctypes.CDLL(sys.argv[1])  # loaded, as `import cupy` loads the real one
print(loaded_libcuda() == sys.argv[1], driver_initialized(sys.argv[1]), cuda_initializer())
driver.cuInit(0)
print(driver_initialized(sys.argv[1]), cuda_initializer() is not None)
"""


def test_the_loaded_driver_is_asked_whether_cuinit_ran() -> None:
    """A stand-in libcuda.so.1, compiled here and loaded in a child process (it stays loaded once loaded)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a stand-in CUDA driver")
    with short_tmp_dir() as tmp:
        source = tmp / "fake_cuda.c"
        source.write_text(FAKE_DRIVER)
        library = tmp / "libcuda.so.1"
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(library)], capture_output=True, text=True, check=False, env=env
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True False None", "True True"]


def test_a_driver_that_cannot_be_asked_counts_as_initialised(tmp_path: Path) -> None:
    assert driver_initialized(str(tmp_path / "libcuda.so.1")), "not loaded: RTLD_NOLOAD refuses, the safe answer"


# -- through a lease --------------------------------------------------------------------------------------
def test_lease_apply_exports_its_env(daemon: tuple[FakeWorkload, str], cuda_not_running: None) -> None:
    _, endpoint = daemon
    with vgpu.acquire(gpus=1, endpoint=endpoint) as lease:
        with lease.apply() as applied:
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
            assert os.environ["VGPU_LEASE"] == TOKEN
            assert dict(applied) == lease.env
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with pytest.raises(vgpu.LeaseEndedError):
        lease.apply()


def test_a_suspended_lease_has_no_gpus_to_apply(daemon: tuple[FakeWorkload, str], cuda_not_running: None) -> None:
    servicer, endpoint = daemon
    with vgpu.acquire(gpus=1, endpoint=endpoint) as lease:
        servicer.lease = make_lease(state=types_pb2.LEASE_STATE_SUSPENDED)
        lease.refresh()
        with pytest.raises(vgpu.LeaseStateError, match="suspended"):
            lease.apply()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_acquire_apply_true_holds_the_env_for_the_leases_life(
    daemon: tuple[FakeWorkload, str], cuda_not_running: None
) -> None:
    _, endpoint = daemon
    with vgpu.acquire(gpus=1, endpoint=endpoint, apply=True) as lease:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        assert os.environ["VGPU_LEASE_ID"] == LEASE_ID
        assert lease.id == LEASE_ID
    assert not any(name in os.environ for name in LEASE_VARIABLES)


def test_acquire_apply_true_refused_gives_the_lease_back(
    daemon: tuple[FakeWorkload, str], monkeypatch: pytest.MonkeyPatch, cuda_running: None
) -> None:
    servicer, endpoint = daemon
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(vgpu.InvalidRequestError) as refused:
        vgpu.acquire(gpus=1, endpoint=endpoint, apply=True)
    assert refused.value.reason == CUDA_ALREADY_INITIALIZED
    assert [c.request.lease_id for c in servicer.calls_of("Release")] == [LEASE_ID]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


async def test_async_acquire_apply_true(
    daemon: tuple[FakeWorkload, str], monkeypatch: pytest.MonkeyPatch, cuda_not_running: None
) -> None:
    servicer, endpoint = daemon
    async with vgpu.AsyncPool(endpoint) as pool:
        async with await pool.acquire(gpus=1, apply=True):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
        monkeypatch.setattr(process_environment, "cuda_initializer", lambda: "PyTorch")
        with pytest.raises(vgpu.InvalidRequestError, match="CUDA is already initialised"):
            await pool.acquire(gpus=1, apply=True)
    assert len(servicer.calls_of("Release")) == 2
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
