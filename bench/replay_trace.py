"""Read the openb node and pod lists (shared/traces/openb/README.md) into plain values, or say what is wrong.

Any CSV with the openb columns works: the node list needs `sn,cpu_milli,memory_mib,gpu,model`; a pod list
needs `name,cpu_milli,memory_mib,num_gpu,gpu_milli`, and the other openb columns (gpu_spec, qos,
creation_time, deletion_time, ...) default when absent or empty. Every problem is one TraceError line
naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
MILLI_PER_GPU = 1000


class TraceError(Exception):
    """A trace file that cannot be replayed, with a one-line reason."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the node list."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str


@dataclass(frozen=True, slots=True)
class PodSpec:
    """One pod of a pod list."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    """Milli-GPU on each GPU: a share of one GPU when num_gpu == 1; whole GPUs (1000) otherwise."""
    gpu_spec: tuple[str, ...] = ()
    """GPU models it accepts; empty: any."""
    qos: str = ""
    creation_time: float = 0.0
    deletion_time: float | None = None
    """None: it never leaves (no deletion time in the trace)."""

    @property
    def gpu_demand(self) -> int:
        """Milli-GPU it asks for (the FGD protocol's arrived demand)."""
        if self.num_gpu > 1:
            return self.num_gpu * MILLI_PER_GPU
        return self.gpu_milli if self.num_gpu == 1 else 0

    @property
    def whole(self) -> bool:
        """Whether it takes whole GPUs (several, or all of one)."""
        return self.num_gpu > 1 or (self.num_gpu == 1 and self.gpu_milli >= MILLI_PER_GPU)


def read_nodes(path: Path) -> list[NodeSpec]:
    """The node list; at least one node, unique names."""
    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    for line, row in _rows(path, NODE_COLUMNS):
        name = _text(path, line, row, "sn")
        if name in seen:
            raise TraceError(f"{path}:{line}: node {name!r} is listed twice")
        seen.add(name)
        nodes.append(
            NodeSpec(
                name=name,
                cpu_milli=_count(path, line, row, "cpu_milli"),
                memory_mib=_count(path, line, row, "memory_mib"),
                gpus=_count(path, line, row, "gpu"),
                model=row.get("model", "").strip(),
            )
        )
    if not nodes:
        raise TraceError(f"{path}: no nodes listed")
    return nodes


def read_pods(path: Path) -> list[PodSpec]:
    """The pod list; at least one pod."""
    pods: list[PodSpec] = []
    for line, row in _rows(path, POD_COLUMNS):
        num_gpu = _count(path, line, row, "num_gpu")
        gpu_milli = _count(path, line, row, "gpu_milli")
        if num_gpu == 1 and not 1 <= gpu_milli <= MILLI_PER_GPU:
            raise TraceError(f"{path}:{line}: gpu_milli is {gpu_milli}; a one-GPU pod asks for 1..1000")
        if num_gpu > 1:
            gpu_milli = MILLI_PER_GPU  # several GPUs are whole GPUs (the FGD protocol's demand)
        if num_gpu == 0:
            gpu_milli = 0
        spec = tuple(part.strip() for part in (row.get("gpu_spec") or "").split("|") if part.strip())
        pods.append(
            PodSpec(
                name=_text(path, line, row, "name"),
                cpu_milli=_count(path, line, row, "cpu_milli"),
                memory_mib=_count(path, line, row, "memory_mib"),
                num_gpu=num_gpu,
                gpu_milli=gpu_milli,
                gpu_spec=spec,
                qos=(row.get("qos") or "").strip(),
                creation_time=_time(path, line, row, "creation_time") or 0.0,
                deletion_time=_time(path, line, row, "deletion_time"),
            )
        )
    if not pods:
        raise TraceError(f"{path}: no pods listed")
    return pods


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row, after checking the header names every required column."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in required if c not in header]
            if missing:
                found = ",".join(header) if header else "nothing"
                raise TraceError(f"{path}: the header lacks column(s) {','.join(missing)} (found: {found})")
            reader.fieldnames = header
            for row in reader:
                if None in row:
                    raise TraceError(f"{path}:{reader.line_num}: more fields than the header names")
                if not any((v or "").strip() for v in row.values()):
                    continue  # a blank line
                yield reader.line_num, {k: (v or "") for k, v in row.items()}
    except OSError as exc:
        raise TraceError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise TraceError(f"{path}: not a readable CSV ({exc})") from None


def _text(path: Path, line: int, row: dict[str, str], column: str) -> str:
    value = row.get(column, "").strip()
    if not value:
        raise TraceError(f"{path}:{line}: column {column!r} is empty")
    return value


def _count(path: Path, line: int, row: dict[str, str], column: str) -> int:
    """A non-negative whole number."""
    raw = row.get(column, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise TraceError(f"{path}:{line}: column {column!r} is {raw!r}, not a whole number") from None
    if value < 0:
        raise TraceError(f"{path}:{line}: column {column!r} is {value}, less than 0")
    return value


def _time(path: Path, line: int, row: dict[str, str], column: str) -> float | None:
    """Seconds, or None when the column is absent or empty."""
    raw = (row.get(column) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise TraceError(f"{path}:{line}: column {column!r} is {raw!r}, not a number of seconds")
    return value
