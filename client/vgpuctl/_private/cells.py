"""How API values read in a table cell: short GPU uuids, enum words, sizes, shares, ages and times.

Tables are for people; `--json` keeps every value in full, so these may shorten freely.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from vgpu._private.units import MILLI_PER_GPU, format_compute, format_memory
from vgpu.api.v1 import types_pb2

_NANOS_PER_MS: Final = 1_000_000
_NANOS_PER_S: Final = 1_000_000_000
_SECONDS_PER_MINUTE: Final = 60

NONE: Final = "-"
"""What an empty cell shows, so columns stay aligned for `awk`."""

DEFAULT_PROJECT: Final = "default"
"""The project of a request that names none, as the daemon calls it (quotas, queue, `--project default`)."""

_UUID_HEX_SHOWN: Final = 8


def short_uuid(uuid: str) -> str:
    """'GPU-1a2b3c4d-....' -> 'GPU-1a2b3c4d…': enough to tell GPUs apart and to paste into `gpu mode`."""
    kind, dash, rest = uuid.partition("-")
    if not dash or len(rest) <= _UUID_HEX_SHOWN + 1:
        return uuid or NONE
    return f"{kind}-{rest[:_UUID_HEX_SHOWN]}…"


def project(name: str) -> str:
    """A project cell: the name, or 'default' for a lease that named none (one spelling in every table)."""
    return name or DEFAULT_PROJECT


def enum_word(name: str, prefix: str) -> str:
    """'GPU_MODE_SHARED' with prefix 'GPU_MODE_' -> 'shared'; UNSPECIFIED reads as 'unknown'."""
    word = name.removeprefix(prefix).lower()
    return "unknown" if word == "unspecified" else word


def node_state(node: types_pb2.Node) -> str:
    """The node's state word: ready / draining / down (from `draining` when the state is left unset)."""
    if node.state == types_pb2.NODE_STATE_UNSPECIFIED and node.draining:
        return "draining"
    return enum_word(types_pb2.NodeState.Name(node.state), "NODE_STATE_")


def gpu_mode(mode: types_pb2.GpuMode.ValueType) -> str:
    """The mode word: shared / mig / exclusive."""
    return enum_word(types_pb2.GpuMode.Name(mode), "GPU_MODE_")


def lease_state(state: types_pb2.LeaseState.ValueType) -> str:
    """The state word: granted / pending / revoked / ..."""
    return enum_word(types_pb2.LeaseState.Name(state), "LEASE_STATE_")


def memory(size: int) -> str:
    """'20GiB'; zero reads as '0' rather than '0B'."""
    return format_memory(size) if size else "0"


def usage_of(used: int, total: int) -> str:
    """Allocated over total memory, e.g. '20GiB/79.6GiB'."""
    return f"{memory(used)}/{memory(total)}"


def share_of(milli: int) -> str:
    """Allocated compute over one GPU, e.g. '0.5/1'."""
    return f"{format_compute(milli)}/1"


def owner(who: types_pb2.Owner) -> str:
    """'user@host:pid', leaving out what the client did not say."""
    text = who.user or "?"
    if who.host:
        text += f"@{who.host}"
    if who.pid:
        text += f":{who.pid}"
    return NONE if text == "?" else text


def slice_shape(piece: types_pb2.Slice) -> str:
    """'GPU-1a2b3c4d… 20GiB/0.5', '... 3g.40gb' (MIG) or '... whole'."""
    gpu = short_uuid(piece.gpu_uuid)
    if piece.isolation == types_pb2.ISOLATION_MIG:
        return f"{gpu} {piece.mig_profile or 'mig'}"
    if piece.isolation == types_pb2.ISOLATION_WHOLE:
        return f"{gpu} whole"
    return f"{gpu} {memory(piece.memory_bytes)}/{format_compute(piece.compute_milli)}"


def request_shape(request: types_pb2.ResourceRequest) -> str:
    """What a lease without slices (pending) waits for: 'wants 20GiB/0.5 x2', 'wants 3g.40gb'."""
    return f"wants {shape(request)}"


def shape(request: types_pb2.ResourceRequest) -> str:
    """What a request asks for: '20GiB/0.5 x2', '3g.40gb', 'whole GPU x4'."""
    if request.mig_profile:
        what = request.mig_profile
    elif request.isolation == types_pb2.ISOLATION_WHOLE:
        what = "whole GPU"
    else:
        what = f"{memory(request.memory_bytes)}/{format_compute(request.compute_milli)}"
    count = f" x{request.count}" if request.count > 1 else ""
    return f"{what}{count}"


def slices(lease: types_pb2.Lease) -> str:
    """Every slice of a lease, comma-separated; a lease without slices shows what it asked for."""
    if lease.slices:
        return ", ".join(slice_shape(piece) for piece in lease.slices)
    if lease.HasField("request"):
        return request_shape(lease.request)
    return NONE


def lease_nodes(lease: types_pb2.Lease) -> str:
    """The nodes a lease's slices are on ('n1,n2' for a gang across nodes); without slices, the granting node."""
    spanned = sorted({piece.node for piece in lease.slices if piece.node})
    if spanned:
        return ",".join(spanned)
    return lease.node or NONE


def gpu_health(gpu: types_pb2.Gpu, *, node_down: bool = False) -> str:
    """'ok', 'unhealthy', or 'node-down' when the GPU's daemon is gone (the GPU is then unusable anyway)."""
    if node_down:
        return "node-down"
    return "ok" if gpu.healthy else "unhealthy"


def age(since: Timestamp, now: dt.datetime) -> str:
    """How long ago, kubectl style: '45s', '12m', '3h', '2d'; unset reads as '-'."""
    if not since.seconds and not since.nanos:
        return NONE
    seconds = max(0, int((now - since.ToDatetime(dt.UTC)).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def timestamp(when: Timestamp) -> str:
    """UTC to the second, e.g. '2025-03-01T12:00:03Z'; unset reads as '-'."""
    if not when.seconds and not when.nanos:
        return NONE
    return when.ToDatetime(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gpus(milli: int) -> str:
    """Milli-GPU as whole GPUs, exact to the milli: 4000 -> '4 GPU', 2500 -> '2.5 GPU', 125 -> '0.125 GPU'."""
    whole, rest = divmod(milli, MILLI_PER_GPU)
    number = f"{whole}.{rest:03d}".rstrip("0").rstrip(".") if rest else str(whole)
    return f"{number} GPU"


def capacity(milli: int, memory_bytes: int = 0) -> str:
    """GPUs, and memory when there is any: '4 GPU', '4 GPU, 320GiB'."""
    return f"{gpus(milli)}, {memory(memory_bytes)}" if memory_bytes else gpus(milli)


def limit(milli: int, memory_bytes: int = 0) -> str:
    """A hard cap where 0 means none: 'none', '8 GPU', '8 GPU, 640GiB', 'any GPU, 640GiB'."""
    if not milli and not memory_bytes:
        return "none"
    gpu_part = gpus(milli) if milli else "any GPU"
    return f"{gpu_part}, {memory(memory_bytes)}" if memory_bytes else gpu_part


def weight(value: float) -> str:
    """An over-quota weight: '1', '2', '0.5'."""
    return f"{value:g}"


def duration(span: Duration) -> str:
    """A span kubectl style, exact enough to act on: '250ms', '2.5s', '30s', '2m30s', '1h5m'."""
    nanos = span.ToNanoseconds()
    if nanos <= 0:
        return "0s"
    if nanos < _NANOS_PER_S:
        return f"{max(1, round(nanos / _NANOS_PER_MS))}ms"
    if nanos < _SECONDS_PER_MINUTE * _NANOS_PER_S:
        return f"{nanos / _NANOS_PER_S:.3g}s"
    seconds = round(nanos / _NANOS_PER_S)
    hours, rest = divmod(seconds, 3_600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m{seconds}s" if seconds else f"{minutes}m"


def until(when: Timestamp, now: dt.datetime) -> str:
    """How long from now until `when`: 'in 30s', 'in 2m', or 'passed'; unset reads as '-'."""
    if not when.seconds and not when.nanos:
        return NONE
    left = (when.ToDatetime(dt.UTC) - now).total_seconds()
    if left <= 0:
        return "passed"
    span = Duration()
    span.FromNanoseconds(int(left * _NANOS_PER_S))
    return f"in {duration(span)}"


def yes_no(flag: bool) -> str:
    """'yes' or 'no'."""
    return "yes" if flag else "no"
