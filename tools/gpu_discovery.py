"""vgpud's NVML discovery checked against `nvidia-smi -q -x`, field by field, on this host's GPUs.

    python tools/gpu_discovery.py [--json-out FILE] [--nvidia-smi PATH]

Per GPU, matched by UUID: product name, model (the geometry table's key for each side's name and memory),
total memory in MiB, MIG mode (current), SM count where nvidia-smi reports one, and the MIG instances (GPU and
compute instance ids, SMs, memory); and the driver and CUDA versions. Prints one line per field and a result
line; with --json-out writes every field as {"nvml", "nvidia_smi", "match"}. Exit 0 when everything compared
matches, 1 on a mismatch, 2 when it cannot compare (no nvidia-smi, NVML does not start).

The XML parsing and the comparison need only the standard library and vgpud's geometry table, so tests feed
them a fixture and hand-made DiscoveredGpu records; only `main` talks to NVML.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vgpud._private.backend.base import DiscoveredGpu, MigInstance

MIB = 1024 * 1024
MEMORY_TOLERANCE_MIB = 1
"""nvidia-smi prints whole MiB; NVML gives bytes: they agree to the MiB."""
MIG_MEMORY_TOLERANCE_MIB = 512
"""An instance's memory as nvidia-smi shows it and its profile's size as NVML gives it differ by a few hundred MiB."""
SMI_TIMEOUT_S = 60


class SmiError(Exception):
    """nvidia-smi is missing, failed, or printed something that is not its XML report."""


@dataclass(frozen=True)
class SmiMigDevice:
    """One `<mig_device>` of a GPU in MIG mode."""

    gpu_instance_id: int | None
    compute_instance_id: int | None
    sm_count: int | None
    memory_mib: int | None


@dataclass(frozen=True)
class SmiGpu:
    """One `<gpu>` of the report: what is compared with NVML."""

    uuid: str
    name: str
    pci_bus_id: str
    memory_mib: int | None
    mig_current: str
    """"Enabled", "Disabled", or "N/A" (a GPU without MIG)."""
    sm_count: int | None
    """Only where nvidia-smi reports one for the whole GPU (most drivers do not)."""
    mig_devices: tuple[SmiMigDevice, ...]


@dataclass(frozen=True)
class SmiReport:
    """`nvidia-smi -q -x`, parsed."""

    driver_version: str
    cuda_version: str
    gpus: tuple[SmiGpu, ...]


def _text(element: ET.Element | None, path: str) -> str:
    found = None if element is None else element.find(path)
    return (found.text or "").strip() if found is not None else ""


def _int(text: str) -> int | None:
    """'81559 MiB' -> 81559, '60' -> 60; None for 'N/A', '' and the like."""
    head = text.split(maxsplit=1)[0] if text.strip() else ""
    return int(head) if head.isdigit() else None


def parse_smi_xml(text: str) -> SmiReport:
    """Parse `nvidia-smi -q -x` output; SmiError when it is not that report."""
    try:
        root = ET.fromstring(text)  # noqa: S314 -- nvidia-smi's own output on this host, not untrusted input
    except ET.ParseError as exc:
        raise SmiError(f"nvidia-smi -q -x printed no valid XML: {exc}") from None
    if root.tag != "nvidia_smi_log":
        raise SmiError(f"nvidia-smi -q -x printed <{root.tag}>, not <nvidia_smi_log>")
    gpus = []
    for gpu in root.findall("gpu"):
        devices = tuple(
            SmiMigDevice(
                gpu_instance_id=_int(_text(device, "gpu_instance_id")),
                compute_instance_id=_int(_text(device, "compute_instance_id")),
                sm_count=_int(_text(device, "device_attributes/shared/multiprocessor_count")),
                memory_mib=_int(_text(device, "fb_memory_usage/total")),
            )
            for device in gpu.findall("mig_devices/mig_device")
        )
        gpus.append(
            SmiGpu(
                uuid=_text(gpu, "uuid"),
                name=_text(gpu, "product_name"),
                pci_bus_id=gpu.get("id", "") or _text(gpu, "pci/pci_bus_id"),
                memory_mib=_int(_text(gpu, "fb_memory_usage/total")),
                mig_current=_text(gpu, "mig_mode/current_mig") or "N/A",
                sm_count=_int(_text(gpu, "device_attributes/shared/multiprocessor_count")),
                mig_devices=devices,
            )
        )
    return SmiReport(_text(root, "driver_version"), _text(root, "cuda_version"), tuple(gpus))


def run_nvidia_smi(exe: str = "nvidia-smi", *args: str) -> str:
    """The output of `nvidia-smi ARGS` (default `-q -x`); SmiError when it is missing or fails."""
    argv = [exe, *(args or ("-q", "-x"))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise SmiError(f"{exe} not found") from None
    except subprocess.TimeoutExpired:
        raise SmiError(f"{' '.join(argv)} did not answer within {SMI_TIMEOUT_S} s") from None
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        raise SmiError(f"{' '.join(argv)} exited {done.returncode}: {said[0] if said else 'no output'}")
    return done.stdout


def _field(nvml: Any, smi: Any, match: bool | None, note: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {"nvml": nvml, "nvidia_smi": smi, "match": match}
    if note:
        entry["note"] = note
    return entry


def _model_of(name: str, memory_mib: int | None) -> str:
    from vgpud._private.backend.geometry import model_for_product_name

    model = model_for_product_name(name, (memory_mib or 0) * MIB)
    return model.key if model is not None else "unknown"


def _mig_mode(gpu: DiscoveredGpu) -> str:
    """NVML's answer in nvidia-smi's words."""
    if not gpu.mig_capable:
        return "N/A"
    return "Enabled" if gpu.mig_enabled else "Disabled"


def _instances(found: Sequence[MigInstance] | str, smi: SmiGpu) -> dict[str, Any]:
    """NVML's MIG instances against nvidia-smi's MIG devices, by (GPU instance id, compute instance id)."""
    if isinstance(found, str):
        return _field(None, len(smi.mig_devices), None, f"NVML could not list instances: {found}")
    nvml = {
        f"{i.gpu_instance_id}/{i.compute_instance_id}": {"sm_count": i.sm_count, "memory_mib": i.memory_bytes // MIB}
        for i in found
    }
    seen = {
        f"{d.gpu_instance_id}/{d.compute_instance_id}": {"sm_count": d.sm_count, "memory_mib": d.memory_mib}
        for d in smi.mig_devices
    }
    problems = []
    if set(nvml) != set(seen):
        problems.append(f"GI/CI ids differ: NVML {sorted(nvml)}, nvidia-smi {sorted(seen)}")
    for key in sorted(set(nvml) & set(seen)):
        mine, theirs = nvml[key], seen[key]
        if theirs["sm_count"] is not None and mine["sm_count"] != theirs["sm_count"]:
            problems.append(f"{key}: SMs NVML {mine['sm_count']}, nvidia-smi {theirs['sm_count']}")
        far = theirs["memory_mib"] is not None and abs(mine["memory_mib"] - theirs["memory_mib"])
        if far and far > MIG_MEMORY_TOLERANCE_MIB:
            problems.append(f"{key}: memory NVML {mine['memory_mib']} MiB, nvidia-smi {theirs['memory_mib']} MiB")
    return _field(nvml, seen, not problems, "; ".join(problems))


def compare_gpu(gpu: DiscoveredGpu, smi: SmiGpu, instances: Sequence[MigInstance] | str | None) -> dict[str, Any]:
    """Every compared field of one GPU; `instances` is NVML's MIG instances, or why it has none to give."""
    nvml_mib = gpu.memory_bytes // MIB
    smi_model = _model_of(smi.name, smi.memory_mib)
    fields = {
        "name": _field(gpu.name, smi.name, gpu.name == smi.name),
        "model": _field(gpu.model, smi_model, gpu.model == smi_model),
        "memory_mib": _field(
            nvml_mib,
            smi.memory_mib,
            None if smi.memory_mib is None else abs(nvml_mib - smi.memory_mib) <= MEMORY_TOLERANCE_MIB,
        ),
        "mig_mode": _field(_mig_mode(gpu), smi.mig_current, _mig_mode(gpu) == smi.mig_current),
        "sm_count": _field(
            gpu.sm_count,
            smi.sm_count,
            None if smi.sm_count is None else gpu.sm_count == smi.sm_count,
            "" if smi.sm_count is not None else "nvidia-smi reports no SM count for a whole GPU",
        ),
    }
    if gpu.mig_enabled or smi.mig_devices:
        fields["mig_instances"] = _instances(instances if instances is not None else [], smi)
    return {"uuid": gpu.uuid, "index": gpu.index, "pci_bus_id": smi.pci_bus_id, "fields": fields}


def compare(
    gpus: Sequence[DiscoveredGpu],
    smi: SmiReport,
    *,
    instances: Mapping[str, Sequence[MigInstance] | str] | None = None,
    driver_version: str | None = None,
    cuda_version: str | None = None,
) -> dict[str, Any]:
    """NVML's view (discovery, MIG instances by GPU UUID, versions) against nvidia-smi's; "ok" when all match."""
    by_uuid = {g.uuid: g for g in smi.gpus}
    rows = [compare_gpu(g, by_uuid[g.uuid], (instances or {}).get(g.uuid)) for g in gpus if g.uuid in by_uuid]
    mismatches = [f"GPU {g.uuid} seen by NVML, not by nvidia-smi" for g in gpus if g.uuid not in by_uuid]
    known = {g.uuid for g in gpus}
    mismatches += [f"GPU {s.uuid} seen by nvidia-smi, not by NVML" for s in smi.gpus if s.uuid not in known]
    for row in rows:
        for name, entry in row["fields"].items():
            if entry["match"] is False:
                detail = f" ({entry['note']})" if entry.get("note") else ""
                mismatches.append(
                    f"GPU {row['uuid']} {name}: NVML {entry['nvml']!r}, nvidia-smi {entry['nvidia_smi']!r}{detail}"
                )
    versions = {
        "driver_version": _field(
            driver_version, smi.driver_version, None if driver_version is None else driver_version == smi.driver_version
        ),
        "cuda_version": _field(
            cuda_version, smi.cuda_version, None if cuda_version is None else cuda_version == smi.cuda_version
        ),
    }
    for name, entry in versions.items():
        if entry["match"] is False:
            mismatches.append(f"{name}: NVML {entry['nvml']!r}, nvidia-smi {entry['nvidia_smi']!r}")
    return {
        "ok": not mismatches,
        "gpu_count": {"nvml": len(gpus), "nvidia_smi": len(smi.gpus)},
        "versions": versions,
        "gpus": rows,
        "mismatches": mismatches,
    }


def cuda_text(version: int) -> str:
    """NVML's CUDA driver version (13000) as nvidia-smi prints it ("13.0")."""
    return f"{version // 1000}.{version % 1000 // 10}"


def nvml_view() -> tuple[list[DiscoveredGpu], dict[str, Sequence[MigInstance] | str], str | None, str | None]:
    """What vgpud's NvmlBackend discovers here, the MIG instances of GPUs in MIG mode, driver and CUDA versions.

    Raises BackendError when NVML does not start.
    """
    import pynvml

    from vgpud._private.backend.base import BackendError
    from vgpud._private.backend.nvml import NvmlBackend
    from vgpud._private.backend.nvml_codes import nvml_str

    backend = NvmlBackend()
    try:
        gpus = backend.discover()
        instances: dict[str, Sequence[MigInstance] | str] = {}
        for gpu in gpus:
            if gpu.mig_enabled:
                try:
                    instances[gpu.uuid] = backend.mig_instances(gpu.uuid)
                except BackendError as exc:
                    instances[gpu.uuid] = str(exc)
        try:
            driver: str | None = nvml_str(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError:
            driver = None
        try:
            cuda: str | None = cuda_text(int(pynvml.nvmlSystemGetCudaDriverVersion()))
        except pynvml.NVMLError:
            cuda = None
    finally:
        backend.close()
    return gpus, instances, driver, cuda


def _print(result: dict[str, Any]) -> None:
    for row in result["gpus"]:
        print(f"GPU {row['index']} {row['uuid']} ({row['pci_bus_id']})")
        for name, entry in row["fields"].items():
            verdict = {True: "match", False: "MISMATCH", None: "not compared"}[entry["match"]]
            note = f"  [{entry['note']}]" if entry.get("note") else ""
            print(f"  {name:<14} {verdict:<12} NVML {entry['nvml']!r}  nvidia-smi {entry['nvidia_smi']!r}{note}")
    for name, entry in result["versions"].items():
        verdict = {True: "match", False: "MISMATCH", None: "not compared"}[entry["match"]]
        print(f"{name:<16} {verdict:<12} NVML {entry['nvml']!r}  nvidia-smi {entry['nvidia_smi']!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Compare, print, write JSON; the exit code says match (0), mismatch (1) or could not compare (2)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", type=Path, help="write the comparison here as JSON")
    parser.add_argument("--nvidia-smi", default="nvidia-smi", help="the nvidia-smi to ask (default: from PATH)")
    args = parser.parse_args(argv)
    result: dict[str, Any]
    try:
        smi = parse_smi_xml(run_nvidia_smi(args.nvidia_smi))
    except SmiError as exc:
        result = {"ok": False, "error": f"cannot compare: {exc}"}
    else:
        from vgpud._private.backend.base import BackendError

        try:
            gpus, instances, driver, cuda = nvml_view()
        except BackendError as exc:
            result = {"ok": False, "error": f"cannot compare: NVML: {exc}", "nvidia_smi": asdict(smi)}
        else:
            result = compare(gpus, smi, instances=instances, driver_version=driver, cuda_version=cuda)
            result["nvidia_smi"] = asdict(smi)
            _print(result)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    if "error" in result:
        print(f"result: {result['error']}", file=sys.stderr)
        return 2
    if result["mismatches"]:
        print(f"result: {len(result['mismatches'])} mismatches: " + "; ".join(result["mismatches"]))
        return 1
    count = result["gpu_count"]["nvml"]
    print(f"result: NVML discovery matches nvidia-smi on {count} GPU{'s' if count != 1 else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
