"""How API values read in a table cell: short GPU uuids, enum words, sizes, shares, ages and times.

Tables are for people; `--json` keeps every value in full, so these may shorten freely.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from vgpu._private.units import format_compute, format_memory
from vgpu.api.v1 import types_pb2

NONE: Final = "-"
"""What an empty cell shows, so columns stay aligned for `awk`."""

_UUID_HEX_SHOWN: Final = 8


def short_uuid(uuid: str) -> str:
    """'GPU-1a2b3c4d-....' -> 'GPU-1a2b3c4d…': enough to tell GPUs apart and to paste into `gpu mode`."""
    kind, dash, rest = uuid.partition("-")
    if not dash or len(rest) <= _UUID_HEX_SHOWN + 1:
        return uuid or NONE
    return f"{kind}-{rest[:_UUID_HEX_SHOWN]}…"


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
    if request.mig_profile:
        shape = request.mig_profile
    elif request.isolation == types_pb2.ISOLATION_WHOLE:
        shape = "whole GPU"
    else:
        shape = f"{memory(request.memory_bytes)}/{format_compute(request.compute_milli)}"
    count = f" x{request.count}" if request.count > 1 else ""
    return f"wants {shape}{count}"


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
