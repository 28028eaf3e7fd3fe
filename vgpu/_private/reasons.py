"""Reason constants carried in google.rpc.ErrorInfo on every error the daemon returns.

The daemon sets them, the SDK maps them to exception classes and vgpuctl prints them; one list keeps the
three in step.
"""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "vgpu.dev"

INVALID_REQUEST: Final = "INVALID_REQUEST"
"""A field is missing, malformed or out of range (INVALID_ARGUMENT)."""
UNKNOWN_GPU_MODEL: Final = "UNKNOWN_GPU_MODEL"
"""The GPU model selector names no model this pool knows (INVALID_ARGUMENT)."""
UNKNOWN_MIG_PROFILE: Final = "UNKNOWN_MIG_PROFILE"
"""The MIG profile is not one of the pool's MIG-capable models (INVALID_ARGUMENT); the message lists them."""
NO_CAPACITY: Final = "NO_CAPACITY"
"""Nothing fits right now; waiting could help (RESOURCE_EXHAUSTED)."""
NEVER_FITS: Final = "NEVER_FITS"
"""No GPU of the pool could hold this request even when empty (FAILED_PRECONDITION)."""
QUEUE_TIMEOUT: Final = "QUEUE_TIMEOUT"
"""The request waited until its deadline without being granted (DEADLINE_EXCEEDED)."""
LEASE_NOT_FOUND: Final = "LEASE_NOT_FOUND"
"""No lease with this id exists (NOT_FOUND)."""
LEASE_TOKEN_MISMATCH: Final = "LEASE_TOKEN_MISMATCH"  # noqa: S105 -- a reason name, not a secret
"""The token does not belong to this lease (PERMISSION_DENIED)."""
LEASE_ENDED: Final = "LEASE_ENDED"
"""The lease was released, revoked or expired (FAILED_PRECONDITION)."""
GPU_NOT_FOUND: Final = "GPU_NOT_FOUND"
"""No GPU with this uuid is registered (NOT_FOUND)."""
GPU_BUSY: Final = "GPU_BUSY"
"""The GPU has leases on it, so its mode cannot change (FAILED_PRECONDITION)."""
NODE_NOT_FOUND: Final = "NODE_NOT_FOUND"
"""No node with this name is registered (NOT_FOUND)."""
NODE_DRAINING: Final = "NODE_DRAINING"
"""The node takes no new work (FAILED_PRECONDITION)."""
NODE_DOWN: Final = "NODE_DOWN"
"""The node's daemon is not alive in the pool (its etcd lease expired) (FAILED_PRECONDITION)."""
NO_LEADER: Final = "NO_LEADER"
"""No pool leader is elected right now (or it was just deposed); retry in a moment (UNAVAILABLE)."""
NOT_IMPLEMENTED: Final = "NOT_IMPLEMENTED"
"""The request needs a capability this release does not have yet (UNIMPLEMENTED)."""
CONFLICT: Final = "CONFLICT"
"""Concurrent writers kept winning the race for the same capacity; retry (ABORTED)."""
STORE_UNAVAILABLE: Final = "STORE_UNAVAILABLE"
"""etcd did not answer in time (UNAVAILABLE)."""
SHUTTING_DOWN: Final = "SHUTTING_DOWN"
"""The daemon is stopping; retry against it once it is back (UNAVAILABLE)."""
INTERNAL: Final = "INTERNAL"
"""A bug in vgpud; the message says what failed (INTERNAL)."""

# End reasons recorded on leases.
END_RELEASED: Final = "RELEASED_BY_CLIENT"
END_EVICTED: Final = "EVICTED_BY_ADMIN"
END_EXPIRED: Final = "HEARTBEAT_TIMEOUT"
END_NODE_LOST: Final = "NODE_LOST"
END_MIG_FAILED: Final = "MIG_CREATE_FAILED"
"""The node daemon could not create the lease's MIG instance; the message carries NVML's error."""
END_MIG_LOST: Final = "MIG_INSTANCE_LOST"
"""The lease's MIG instance vanished from the GPU (destroyed outside vgpu)."""
