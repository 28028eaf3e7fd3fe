"""vgpu: acquire slices of a pooled fleet of NVIDIA GPUs.

    import vgpu
    with vgpu.acquire(memory="20GiB", compute=0.5) as lease:
        run(env=lease.env)

Every error raised here derives from `vgpu.VgpuError`; see `vgpu.testing` for a local pool in tests.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from vgpu._private.async_lease import AsyncLease
from vgpu._private.async_pool import AsyncPool
from vgpu._private.errors import (
    AuthenticationError,
    ConflictError,
    DaemonUnavailableError,
    GpuBusyError,
    InternalError,
    InvalidRequestError,
    LeaseEndedError,
    LeaseLostError,
    LeaseNotFoundError,
    LeasePermissionError,
    LeaseStateError,
    MemoryBudgetError,
    NeverFitsError,
    NoCapacityError,
    NodeDrainingError,
    NotPreemptibleError,
    NotSupportedError,
    PermissionDeniedError,
    QueueFullError,
    QueueTimeoutError,
    QuotaExceededError,
    VgpuError,
)
from vgpu._private.lease import Lease
from vgpu._private.lease_records import LeaseEvent, LeaseInfo, Owner, PreemptNotice, QueueInfo, Slice
from vgpu._private.pool import Pool, acquire, attach
from vgpu._private.process_environment import AppliedEnvironment
from vgpu._private.runtime.compute_throttle import ThrottlePolicy
from vgpu._private.runtime.preemptible_kernel import (
    CudaPreemptibleKernel,
    HostPreemptibleKernel,
    PreemptibleKernel,
    Progress,
)
from vgpu._private.runtime.runtime import Runtime, RuntimeOptions
from vgpu._private.tls import TlsConfig

try:
    __version__: str = version("vgpu")
    """The installed distribution's version (pyproject.toml's), e.g. '0.1.0'."""
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
del PackageNotFoundError, version

__all__ = [
    "AppliedEnvironment",
    "AsyncLease",
    "AsyncPool",
    "AuthenticationError",
    "ConflictError",
    "CudaPreemptibleKernel",
    "DaemonUnavailableError",
    "GpuBusyError",
    "HostPreemptibleKernel",
    "InternalError",
    "InvalidRequestError",
    "Lease",
    "LeaseEndedError",
    "LeaseEvent",
    "LeaseInfo",
    "LeaseLostError",
    "LeaseNotFoundError",
    "LeasePermissionError",
    "LeaseStateError",
    "MemoryBudgetError",
    "NeverFitsError",
    "NoCapacityError",
    "NodeDrainingError",
    "NotPreemptibleError",
    "NotSupportedError",
    "Owner",
    "PermissionDeniedError",
    "Pool",
    "PreemptNotice",
    "PreemptibleKernel",
    "Progress",
    "QueueFullError",
    "QueueInfo",
    "QueueTimeoutError",
    "QuotaExceededError",
    "Runtime",
    "RuntimeOptions",
    "Slice",
    "ThrottlePolicy",
    "TlsConfig",
    "VgpuError",
    "__version__",
    "acquire",
    "attach",
]
