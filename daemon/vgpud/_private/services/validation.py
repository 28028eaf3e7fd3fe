"""Turn what a client sent into core values, or a Refusal that says what to change.

Everything a client controls is bounded here (sizes, counts, string lengths, character sets), so the
logic behind never sees a value it was not written for.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Final

from vgpu._private import reasons
from vgpu._private.process_identity import PREFIX as IDENTITY_PREFIX
from vgpu._private.units import MILLI_PER_GPU, format_memory
from vgpu.api.v1 import types_pb2, workload_pb2
from vgpud._private import process_map
from vgpud._private.core.mig_placement import profile_key
from vgpud._private.core.model import GpuMode, Isolation, Owner, ShapeRequest
from vgpud._private.core.priorities import PriorityClasses
from vgpud._private.core.projects import DEFAULT_PROJECT
from vgpud._private.grants.allocator import AcquireSpec
from vgpud._private.refusal import Refusal

MAX_SLICE_MEMORY: Final = 16 * 1024**4
"""No GPU comes close to 16 TiB; anything above is a unit mistake."""
MAX_COUNT: Final = 64
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ID_RE: Final = re.compile(r"^[A-Za-z0-9._-]{16,128}$")
_LEASE_ID_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_TEXT: Final = 256
_MAX_LABELS: Final = 32

_MODES: Final[dict[int, GpuMode]] = {
    types_pb2.GPU_MODE_SHARED: GpuMode.SHARED,
    types_pb2.GPU_MODE_MIG: GpuMode.MIG,
    types_pb2.GPU_MODE_EXCLUSIVE: GpuMode.EXCLUSIVE,
}


def _bad(message: str) -> Refusal:
    return Refusal(reasons.INVALID_REQUEST, message)


def _name(field: str, value: str, *, required: bool = False) -> str:
    if not value and not required:
        return ""
    if not _NAME_RE.match(value):
        raise _bad(f"{field} {value[:80]!r} must be 1-63 characters of letters, digits, '.', '_' or '-'")
    return value


def bounded_text(field: str, value: str) -> str:
    """`value` when within the length limit, else a Refusal naming `field`."""
    if len(value) > _MAX_TEXT:
        raise _bad(f"{field} is {len(value)} characters; the limit is {_MAX_TEXT}")
    return value


def labels(raw: Mapping[str, str]) -> dict[str, str]:
    """Bounded labels."""
    if len(raw) > _MAX_LABELS:
        raise _bad(f"{len(raw)} labels; the limit is {_MAX_LABELS}")
    return {_name("label key", k, required=True): bounded_text(f"label {k}", v) for k, v in raw.items()}


def shape(
    raw: types_pb2.ResourceRequest, known_models: Collection[str], known_profiles: Collection[str] = ()
) -> ShapeRequest:
    """A ResourceRequest as a core ShapeRequest (`known_profiles`: MIG profile names of the pool's models)."""
    count = raw.count or 1
    if count > MAX_COUNT:
        raise _bad(f"count {count} is above the limit of {MAX_COUNT} slices per request")
    count_max = _elastic_count(raw, count)
    if len(raw.gpu_models) > 16:  # noqa: PLR2004 -- a selector longer than the model table is a mistake
        raise _bad("gpu_models lists more than 16 models")
    for model in raw.gpu_models:
        if model not in known_models:
            raise Refusal(
                reasons.UNKNOWN_GPU_MODEL,
                f"unknown GPU model {model[:80]!r}; known models: {', '.join(sorted(known_models))}",
            )
    models = tuple(dict.fromkeys(raw.gpu_models))
    whole = raw.isolation == types_pb2.ISOLATION_WHOLE
    if whole:
        if raw.memory_bytes or raw.compute_milli:
            raise _bad("a whole-GPU request takes no memory or compute; drop them or ask for a shared slice")
        if raw.compute_milli_max:
            raise _bad("a whole GPU has no compute range; use gpus=(min, max) for an elastic count")
        return ShapeRequest(Isolation.WHOLE, 0, MILLI_PER_GPU, count, models, count_max=count_max)
    if raw.mig_profile or raw.isolation == types_pb2.ISOLATION_MIG:
        if raw.compute_milli_max:
            raise _bad("a MIG instance has a fixed compute share; drop the compute range or ask for a shared slice")
        return replace(_mig_shape(raw, count, models, known_profiles), count_max=count_max)
    if raw.memory_bytes == 0:
        raise _bad("memory is required for a shared slice, e.g. memory='20GiB'")
    _memory_and_compute(raw)
    compute_max = _elastic_compute(raw)
    flexible = raw.isolation == types_pb2.ISOLATION_UNSPECIFIED and raw.compute_milli == 0 and not compute_max
    return ShapeRequest(
        Isolation.SHARED,
        raw.memory_bytes,
        raw.compute_milli,
        count,
        models,
        flexible=flexible,
        compute_milli_max=compute_max,
        count_max=count_max,
    )


def _elastic_count(raw: types_pb2.ResourceRequest, count: int) -> int:
    """The elastic upper bound of the count (0: fixed)."""
    if not raw.count_max or raw.count_max == count:
        return 0
    if raw.count_max < count:
        raise _bad(f"count range {count}..{raw.count_max}: the minimum is above the maximum; give min <= max")
    if raw.count_max > MAX_COUNT:
        raise _bad(f"count_max {raw.count_max} is above the limit of {MAX_COUNT} slices per request")
    return raw.count_max


def _elastic_compute(raw: types_pb2.ResourceRequest) -> int:
    """The elastic upper bound of a shared slice's compute share (0: fixed)."""
    if not raw.compute_milli_max or raw.compute_milli_max == raw.compute_milli:
        return 0
    if raw.compute_milli == 0:
        raise _bad("an elastic compute range needs its minimum too, e.g. compute=(0.25, 1.0)")
    if raw.compute_milli_max < raw.compute_milli:
        raise _bad(
            f"compute range {raw.compute_milli}..{raw.compute_milli_max} milli-GPU: the minimum is above the "
            "maximum; give (min, max) with min <= max"
        )
    if raw.compute_milli_max > MILLI_PER_GPU:
        raise _bad(f"compute_milli_max {raw.compute_milli_max} is above 1000 (a whole GPU)")
    return raw.compute_milli_max


def project_and_priority(spec: AcquireSpec, projects: Collection[str], classes: PriorityClasses) -> AcquireSpec:
    """The spec with its priority class resolved; Refusal for a project without quota or an unknown class."""
    if spec.project and spec.project != DEFAULT_PROJECT and spec.project not in projects:
        raise Refusal(
            reasons.UNKNOWN_PROJECT,
            f"project {spec.project!r} has no quota in this pool; an admin creates it with "
            f"`vgpuctl quota set {spec.project} --deserved 1gpu` (or leave project empty for '{DEFAULT_PROJECT}')",
        )
    if spec.priority and spec.priority not in classes.by_name:
        raise Refusal(
            reasons.UNKNOWN_PRIORITY,
            f"unknown priority class {spec.priority!r}; this pool has: {', '.join(classes.names())}",
        )
    return replace(spec, priority=spec.priority or classes.default)


def _memory_and_compute(raw: types_pb2.ResourceRequest) -> None:
    """Bounds of memory and compute (compute 0: in proportion to memory, or the profile's own)."""
    if raw.memory_bytes > MAX_SLICE_MEMORY:
        raise _bad(f"memory {raw.memory_bytes} bytes is larger than any GPU (limit {format_memory(MAX_SLICE_MEMORY)})")
    if not 0 <= raw.compute_milli <= MILLI_PER_GPU:
        raise _bad(
            f"compute_milli {raw.compute_milli} is outside 1..1000; "
            "ask for a share such as compute=0.25 (250 milli-GPU)"
        )


def _profile_order(name: str) -> tuple[int, str]:
    """Sort "1g.10gb" before "3g.40gb" before "7g.80gb"."""
    head = name.partition("g.")[0]
    return (int(head) if head.isdigit() else 99, name)


def _mig_shape(
    raw: types_pb2.ResourceRequest, count: int, models: tuple[str, ...], known_profiles: Collection[str]
) -> ShapeRequest:
    """A MIG request: a profile by name, or memory (and compute) for the smallest profile holding them."""
    profile = profile_key(raw.mig_profile)
    if profile:
        if raw.memory_bytes or raw.compute_milli:
            raise _bad(f"mig profile {profile!r} fixes memory and compute; drop memory/compute or drop the profile")
        if profile not in known_profiles:
            listed = ", ".join(sorted(known_profiles, key=_profile_order))
            raise Refusal(
                reasons.UNKNOWN_MIG_PROFILE,
                f"unknown MIG profile {raw.mig_profile[:40]!r}; MIG profiles are named like: {listed}",
            )
        return ShapeRequest(Isolation.MIG, 0, 0, count, models, mig_profile=profile)
    if raw.memory_bytes == 0:
        raise _bad("a MIG slice needs a profile (mig='3g.40gb') or memory (memory='18GiB', isolation='mig')")
    _memory_and_compute(raw)
    return ShapeRequest(Isolation.MIG, raw.memory_bytes, raw.compute_milli, count, models)


def acquire(
    request: workload_pb2.AcquireRequest,
    *,
    local_node: str,
    known_models: Collection[str],
    default_ttl: int,
    ttl_bounds: tuple[int, int],
    known_profiles: Collection[str] = (),
) -> AcquireSpec:
    """An AcquireRequest as an AcquireSpec."""
    if request.request_id and not _ID_RE.match(request.request_id):
        raise _bad("request_id must be 16-128 characters of letters, digits, '.', '_' or '-' (use a random uuid)")
    ttl = default_ttl
    if request.HasField("ttl"):
        ttl = request.ttl.seconds
        low, high = ttl_bounds
        if not low <= ttl <= high:
            raise _bad(f"ttl {ttl}s is outside the allowed {low}..{high} seconds")
    owner = Owner(
        user=bounded_text("owner.user", request.owner.user),
        host=bounded_text("owner.host", request.owner.host),
        pid=request.owner.pid,
        description=bounded_text("owner.description", request.owner.description),
    )
    named = _name("node", request.resources.node)
    if named and request.resources.any_node:
        raise _bad(f"node {named!r} and any_node conflict: name a node, or ask for any node, not both")
    node = "" if request.resources.any_node else (named or local_node)
    return AcquireSpec(
        any_node=request.resources.any_node,
        span=request.resources.gang and request.resources.any_node,
        gang=request.resources.gang,
        shape=shape(request.resources, known_models, known_profiles),
        node=node,
        ttl_seconds=ttl,
        project=_name("project", request.project),
        priority=_name("priority", request.priority),
        owner=owner,
        labels=labels(request.labels),
        request_id=request.request_id,
    )


def lease_ref(lease_id: str, token: str) -> tuple[str, str]:
    """A lease id and token as sent by a client."""
    if not _LEASE_ID_RE.match(lease_id):
        raise _bad(f"lease_id {lease_id[:80]!r} is not a lease id (expected e.g. lease-0123456789ab)")
    if not token or len(token) > _MAX_TEXT:
        raise _bad("token is required: pass the lease's VGPU_LEASE value")
    return lease_id, token


def gpu_mode(mode: int) -> GpuMode:
    """A GpuMode enum value from the wire."""
    if mode not in _MODES:
        raise _bad("mode must be shared, mig or exclusive")
    return _MODES[mode]


def node_name(value: str) -> str:
    """A node name from the wire."""
    return _name("node", value, required=True)


def gpu_uuid(value: str) -> str:
    """A GPU uuid from the wire."""
    if not value or len(value) > 128 or not value.isascii():  # noqa: PLR2004 -- NVML uuids are ~40 chars
        raise _bad(f"gpu_uuid {value[:80]!r} is not a GPU uuid (see vgpuctl gpus)")
    return value


def identity_socket(name: str) -> str:
    """The identity socket a heartbeat names (empty: none); only vgpu's own socket names are accepted."""
    if name and not process_map.valid_identity_name(name):
        raise _bad(
            f"usage.identity_socket {name[:80]!r} is not a vgpu identity socket "
            f"(expected {IDENTITY_PREFIX}<pid>-<hex>, as the SDK sends)"
        )
    return name
