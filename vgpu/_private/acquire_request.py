"""Turn `acquire(...)` keyword arguments into an AcquireRequest, refusing bad input before any RPC.

Units are read with the shared parser so the SDK, the daemon and vgpuctl agree on "20GiB" and "50%".
A (min, max) pair for compute, count or gpus makes the request elastic: granted at the minimum as soon
as that fits, grown toward the maximum (and shrunk back to it under pressure) by the pool.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Final

from google.protobuf import duration_pb2

from vgpu._private.errors import InvalidRequestError
from vgpu._private.units import UnitError, parse_compute, parse_memory
from vgpu.api.v1 import types_pb2, workload_pb2

DEFAULT_QUEUE_TIMEOUT: Final = 600.0
"""How long a waiting acquire stays in the queue when the caller gives no timeout."""

Share = float | str
"""One compute share: a fraction (0.5), a percentage ("50%") or milli-GPU ("500m")."""
ComputeArg = Share | tuple[Share, Share]
"""A fixed compute share, or an elastic (min, max) range of them."""
CountArg = int | tuple[int, int]
"""A fixed number of slices / whole GPUs, or an elastic (min, max) range."""

_ISOLATION: Final = {
    "shared": types_pb2.ISOLATION_SHARED,
    "mig": types_pb2.ISOLATION_MIG,
    "whole": types_pb2.ISOLATION_WHOLE,
}


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _owner_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (e.g. some containers)
        return str(os.getuid())


def acquire_timeout(timeout: float | None, *, wait: bool, call_timeout: float) -> float:
    """The acquire call's deadline in seconds: the queue wait when waiting, else the normal call timeout."""
    if timeout is None:
        return DEFAULT_QUEUE_TIMEOUT if wait else call_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidRequestError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


_EXAMPLE: Final = {"compute": "(0.25, 1.0)", "count": "(2, 4)", "gpus": "(2, 8)"}


def _pair(name: str, value: object) -> tuple[object, object] | None:
    """(min, max) when `value` is an elastic range, None for a plain value; a malformed range is refused."""
    if isinstance(value, str) or not isinstance(value, tuple | list):
        return None
    if len(value) != 2:  # noqa: PLR2004 -- a range has two ends
        raise InvalidRequestError(
            f"{name}={value!r}: an elastic range is a (min, max) pair, e.g. {name}={_EXAMPLE[name]}; "
            "or give one value for a fixed size"
        )
    return value[0], value[1]


def _ordered(name: str, value: object, low: int, high: int) -> tuple[int, int]:
    """(min, max-or-0): a range whose ends are equal is no range; max 0 tells the daemon "not elastic"."""
    if low > high:
        raise InvalidRequestError(
            f"{name}={value!r}: the minimum is above the maximum; give (min, max) with min <= max"
        )
    return low, (high if high > low else 0)


def _milli(value: object) -> int:
    """One compute share in milli-GPU; UnitError says what is accepted."""
    if not isinstance(value, int | float | str):
        raise UnitError(
            f"cannot read compute share {value!r}: use a fraction (0.5), a percentage ('50%') or milli-GPU ('500m')"
        )
    return parse_compute(value)


def _compute_range(compute: object) -> tuple[int, int]:
    """Milli-GPU (min, max-or-0) of a fixed share or an elastic (min, max) pair of shares."""
    pair = _pair("compute", compute)
    try:
        if pair is None:
            return _milli(compute), 0
    except UnitError as exc:
        raise InvalidRequestError(str(exc)) from None
    ends: list[int] = []
    for label, end in zip(("minimum", "maximum"), pair, strict=True):
        try:
            ends.append(_milli(end))
        except UnitError as exc:
            raise InvalidRequestError(f"compute={compute!r}: the {label}: {exc}") from None
    return _ordered("compute", compute, ends[0], ends[1])


def count_range(name: str, value: object) -> tuple[int, int]:
    """(min, max-or-0) of a count (slices or whole GPUs): a whole number >= 1, or an elastic (min, max) pair."""
    pair = _pair(name, value)
    if pair is None:
        return _positive_int(name, value), 0
    ends: list[int] = []
    for label, end in zip(("minimum", "maximum"), pair, strict=True):
        if isinstance(end, bool) or not isinstance(end, int) or end < 1:
            raise InvalidRequestError(f"{name}={value!r}: the {label} must be a whole number >= 1, got {end!r}")
        ends.append(end)
    return _ordered(name, value, ends[0], ends[1])


def _share(res: types_pb2.ResourceRequest, memory: str | int | None, compute: ComputeArg | None) -> None:
    """Memory and compute of a shared slice, read with the shared unit parser; compute may be a range."""
    if memory is not None:
        if not isinstance(memory, str | int):
            raise InvalidRequestError(
                f"memory={memory!r}: give one size such as '20GiB' (memory is not elastic; compute and count are)"
            )
        try:
            res.memory_bytes = parse_memory(memory)
        except UnitError as exc:
            raise InvalidRequestError(str(exc)) from None
    if compute is not None:
        res.compute_milli, res.compute_milli_max = _compute_range(compute)


def _kind(
    res: types_pb2.ResourceRequest,
    *,
    mig: str | None,
    isolation: str | None,
    gpus: CountArg | None,
    has_share: bool,
) -> None:
    """Isolation, MIG profile and whole-GPU count, refusing combinations that contradict each other."""
    if isolation is not None:
        if isolation not in _ISOLATION:
            raise InvalidRequestError(f"isolation must be 'shared', 'mig' or 'whole', got {isolation!r}")
        res.isolation = _ISOLATION[isolation]
    if mig is not None:
        if not isinstance(mig, str) or not mig.strip():
            raise InvalidRequestError(f"mig must be a MIG profile name such as '3g.40gb', got {mig!r}")
        if isolation not in (None, "mig"):
            raise InvalidRequestError(
                f"mig={mig!r} asks for a MIG slice; it cannot be combined with isolation={isolation!r}"
            )
        res.mig_profile = mig.strip()
        res.isolation = types_pb2.ISOLATION_MIG
    if gpus is not None:
        whole, whole_max = count_range("gpus", gpus)
        if has_share or mig is not None or isolation not in (None, "whole"):
            raise InvalidRequestError(
                "gpus= asks for whole GPUs; drop memory/compute/mig/isolation, or ask for slices instead"
            )
        if res.count != 1 or res.count_max:
            raise InvalidRequestError("gpus= already says how many whole GPUs; do not pass count= as well")
        res.isolation = types_pb2.ISOLATION_WHOLE
        res.count, res.count_max = whole, whole_max


def _placement(res: types_pb2.ResourceRequest, node: object, gang: object) -> None:
    """Where the slices may land: "" the asked daemon's node, None any node (the leader picks), else that node.

    `gang` makes the request all-or-nothing as one unit; with node=None its slices may span nodes.
    """
    if node is None:
        res.any_node = True
    elif not isinstance(node, str) or (node and not node.strip()):
        raise InvalidRequestError(
            f"node must be a node name, '' (the asked daemon's node) or None (any node), got {node!r}"
        )
    elif node:
        res.node = node.strip()
    if not isinstance(gang, bool):
        raise InvalidRequestError(f"gang must be True or False, got {gang!r}")
    res.gang = gang


def _models(gpu_model: str | Sequence[str] | None) -> list[str]:
    if gpu_model is None:
        return []
    models = [gpu_model] if isinstance(gpu_model, str) else list(gpu_model)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise InvalidRequestError(f"gpu_model must be a model name or a list of them, got {gpu_model!r}")
    return models


def _resources(
    *,
    memory: str | int | None,
    compute: ComputeArg | None,
    mig: str | None,
    isolation: str | None,
    count: CountArg,
    gpus: CountArg | None,
    gpu_model: str | Sequence[str] | None,
    node: str | None,
    gang: bool,
) -> types_pb2.ResourceRequest:
    low, high = count_range("count", count)
    res = types_pb2.ResourceRequest(count=low, count_max=high)
    _share(res, memory, compute)
    _kind(res, mig=mig, isolation=isolation, gpus=gpus, has_share=memory is not None or compute is not None)
    res.gpu_models.extend(_models(gpu_model))
    _placement(res, node, gang)
    return res


def build_acquire_request(
    *,
    memory: str | int | None = None,
    compute: ComputeArg | None = None,
    mig: str | None = None,
    isolation: str | None = None,
    count: CountArg = 1,
    gpus: CountArg | None = None,
    gpu_model: str | Sequence[str] | None = None,
    node: str | None = "",
    gang: bool = False,
    project: str = "",
    priority: str = "",
    wait: bool = True,
    ttl: float | None = None,
    labels: Mapping[str, str] | None = None,
    description: str = "",
) -> workload_pb2.AcquireRequest:
    """The AcquireRequest for one acquire call, with a fresh request_id (the idempotency key for retries)."""
    request = workload_pb2.AcquireRequest(
        request_id=uuid.uuid4().hex,
        resources=_resources(
            memory=memory,
            compute=compute,
            mig=mig,
            isolation=isolation,
            count=count,
            gpus=gpus,
            gpu_model=gpu_model,
            node=node,
            gang=gang,
        ),
        project=project or "",
        priority=priority or "",
        wait=bool(wait),
        owner=types_pb2.Owner(
            user=_owner_user(), host=socket.gethostname(), pid=os.getpid(), description=description or ""
        ),
    )
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 1:
            raise InvalidRequestError(f"ttl must be a number of seconds >= 1, got {ttl!r}")
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(ttl)))
    if labels:
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidRequestError(f"labels must map strings to strings, got {key!r}: {value!r}")
            request.labels[key] = value
    return request
