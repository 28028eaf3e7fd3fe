"""SDK conveniences against real daemons: the wait on stderr, lease.apply(), VGPU_ENDPOINT and vgpu_pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from importlib.metadata import entry_points

import pytest

import vgpu
from vgpu._private.process_environment import cuda_initializer
from vgpu.testing import LocalPool, local_pool

pytest_plugins = ["pytester"]


def test_a_waiting_acquire_with_progress_writes_its_place_in_the_queue(
    daemon: LocalPool, capsys: pytest.CaptureFixture[str]
) -> None:
    with daemon.pool() as pool:
        holders = [pool.acquire(memory="70GiB", compute=0.5) for _ in range(2)]
        queued = threading.Event()
        result: dict[str, object] = {}

        def wait_for_slice() -> None:
            try:
                result["lease"] = pool.acquire(
                    memory="20GiB", compute=0.5, timeout=30, progress=True, on_queued=lambda _info: queued.set()
                )
            except vgpu.VgpuError as exc:  # pragma: no cover -- reported by the assertion below
                result["error"] = exc

        waiter = threading.Thread(target=wait_for_slice)
        waiter.start()
        assert queued.wait(20), "the request waits in the queue"
        assert capsys.readouterr().err.startswith("vgpu: waiting for memory=20GiB compute=0.5: position 1 of 1")
        holders[1].release()
        waiter.join(30)
        assert "error" not in result
        assert isinstance(result["lease"], vgpu.Lease)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("vgpu: granted memory=20GiB compute=0.5 after ")


def test_acquire_apply_true_exports_the_granted_gpu_to_this_process_and_its_children(
    daemon: LocalPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if cuda_initializer() is not None:
        pytest.skip("CUDA already runs in this test process: apply() is refused by design")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("VGPU_LEASE", raising=False)
    with vgpu.acquire(memory="1GiB", compute=0.1, apply=True) as lease:  # the endpoint comes from VGPU_ENDPOINT
        assert os.environ["CUDA_VISIBLE_DEVICES"] == lease.slices[0].gpu_uuid
        child = subprocess.run(
            [sys.executable, "-c", "import vgpu\nwith vgpu.attach() as lease: print(lease.id)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == lease.id, "a child inherits the lease (VGPU_LEASE, VGPU_ENDPOINT)"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "VGPU_LEASE" not in os.environ


def test_local_pool_points_vgpu_endpoint_at_itself_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGPU_ENDPOINT", "unix:///nowhere/vgpud.sock")
    with local_pool("h100-80gb:1") as outer:
        assert os.environ["VGPU_ENDPOINT"] == outer.endpoint
        with LocalPool("l4-24gb:1") as inner:  # the class in `with` does the same
            assert os.environ["VGPU_ENDPOINT"] == inner.endpoint
            with vgpu.acquire(memory="1GiB", compute=0.1, timeout=30) as lease:
                assert lease.slices[0].gpu_model == "l4-24gb"
        assert os.environ["VGPU_ENDPOINT"] == outer.endpoint
        with vgpu.Pool() as pool, pool.acquire(memory="1GiB", compute=0.1, timeout=30) as lease:
            assert lease.slices[0].gpu_model == "h100-80gb"
    assert os.environ["VGPU_ENDPOINT"] == "unix:///nowhere/vgpud.sock"


USES_THE_FIXTURE = textwrap.dedent(
    """
    import os

    import pytest

    import vgpu


    def test_default_gpus_from_the_ini_option(vgpu_pool):
        assert os.environ["VGPU_ENDPOINT"] == vgpu_pool.endpoint
        with vgpu.acquire(memory="1GiB", compute=0.1, timeout=30) as lease:
            assert lease.slices[0].gpu_model == "l4-24gb"


    @pytest.mark.vgpu_pool("h100-80gb:1")
    def test_gpus_from_the_marker(vgpu_pool):
        with vgpu.Pool() as pool, pool.acquire(memory="1GiB", compute=0.1, timeout=30) as lease:
            assert lease.slices[0].gpu_model == "h100-80gb"


    def test_the_endpoint_is_gone_after_the_fixture():
        assert "VGPU_ENDPOINT" not in os.environ
    """
)


def test_the_pytest_plugin_offers_vgpu_pool(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "vgpu._private.pytest_plugin" in {ep.value for ep in entry_points(group="pytest11")}, (
        "the entry point is installed (pip install -e .)"
    )
    monkeypatch.delenv("VGPU_ENDPOINT", raising=False)
    pytester.makeini(
        "[pytest]\n"
        "addopts = --strict-markers --strict-config\n"
        "filterwarnings = error\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "vgpu_pool_gpus = l4-24gb:1\n"
    )
    pytester.makepyfile(test_uses_vgpu=USES_THE_FIXTURE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # a fresh process, as a user suite runs
    result.assert_outcomes(passed=3)
    assert "VGPU_ENDPOINT" not in os.environ
