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
UNKNOWN_PROJECT: Final = "UNKNOWN_PROJECT"
"""The project has no quota set in this pool (INVALID_ARGUMENT); vgpuctl quota set creates it."""
UNKNOWN_PRIORITY: Final = "UNKNOWN_PRIORITY"
"""The priority class is not in the daemon's config (INVALID_ARGUMENT); the message lists the classes."""
OVER_QUOTA: Final = "OVER_QUOTA"
"""The request is above what its project may hold: its limit, or the deserved quota for an in-quota-only
class (RESOURCE_EXHAUSTED)."""
NOT_PREEMPTIBLE: Final = "NOT_PREEMPTIBLE"
"""The lease's priority class may not be preempted (FAILED_PRECONDITION)."""
NOT_PREEMPTING: Final = "NOT_PREEMPTING"
"""AckPreempt for a lease that was not asked to yield (FAILED_PRECONDITION)."""
PROJECT_BUSY: Final = "PROJECT_BUSY"
"""The project still holds leases or waits in the queue, so its quota cannot be removed (FAILED_PRECONDITION)."""
PROJECT_NOT_FOUND: Final = "PROJECT_NOT_FOUND"
"""No quota is set for this project (NOT_FOUND)."""
NO_CAPACITY: Final = "NO_CAPACITY"
"""Nothing fits right now; waiting could help (RESOURCE_EXHAUSTED)."""
QUEUE_FULL: Final = "QUEUE_FULL"
"""The pool's queue holds max_queue_length waiting requests already; retry later (RESOURCE_EXHAUSTED)."""
TOO_MANY_WAITING: Final = "TOO_MANY_WAITING"
"""The caller has max_waiting_per_user requests waiting already (RESOURCE_EXHAUSTED)."""
TOO_MANY_CONNECTIONS: Final = "TOO_MANY_CONNECTIONS"
"""The caller's uid holds max_connections_per_uid connections to vgpud already (UNAVAILABLE, connection closed)."""
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
JOB_REFUSED: Final = "JOB_REFUSED"
"""A node will not start the job's processes: no account for the user there, root not allowed, jobs off, no TLS
between the daemons; the message names the node and what to change (FAILED_PRECONDITION)."""
TOO_MANY_JOBS: Final = "TOO_MANY_JOBS"
"""The node runs [jobs] max_jobs jobs already (RESOURCE_EXHAUSTED)."""
JOB_NODE_LOST: Final = "JOB_NODE_LOST"
"""A node of a running job stopped answering; the job was stopped everywhere (a NodeFailed event)."""
OVER_MEMORY_BUDGET: Final = "OVER_MEMORY_BUDGET"
"""An allocation would take the lease past its memory budget (raised in-process by the runtime)."""

# Identity and authorization (UNAUTHENTICATED: who is calling is not proven; PERMISSION_DENIED: proven, not allowed).
CREDENTIAL_MISSING: Final = "CREDENTIAL_MISSING"
"""A call on the Unix socket carried no vgpu credential (UNAUTHENTICATED): use the SDK or vgpuctl, which fetch one."""
CREDENTIAL_INVALID: Final = "CREDENTIAL_INVALID"
"""The credential is malformed, altered or was minted by another vgpud (UNAUTHENTICATED)."""
CREDENTIAL_EXPIRED: Final = "CREDENTIAL_EXPIRED"
"""The credential's lifetime is over (UNAUTHENTICATED); clients fetch a new one and retry."""
CERTIFICATE_INVALID: Final = "CERTIFICATE_INVALID"
"""The client certificate carries no usable spiffe://CLUSTER/ROLE/NAME identity (UNAUTHENTICATED)."""
CERTIFICATE_EXPIRED: Final = "CERTIFICATE_EXPIRED"
"""The client certificate is past its validity (UNAUTHENTICATED): issue a new one."""
CERTIFICATE_UNTRUSTED: Final = "CERTIFICATE_UNTRUSTED"
"""The client certificate was not issued by the CA the daemon trusts now, e.g. after a CA change (UNAUTHENTICATED)."""
WRONG_CLUSTER: Final = "WRONG_CLUSTER"
"""The client certificate names another pool (cluster) than this daemon's (UNAUTHENTICATED)."""
ROLE_NOT_ALLOWED: Final = "ROLE_NOT_ALLOWED"
"""The caller's role may not call this method, e.g. a user calling an admin mutation (PERMISSION_DENIED)."""
NOT_PROJECT_MEMBER: Final = "NOT_PROJECT_MEMBER"
"""The caller is not a member of the project it asked to acquire in (PERMISSION_DENIED)."""
PRIORITY_NOT_ALLOWED: Final = "PRIORITY_NOT_ALLOWED"
"""The priority class is limited to other projects (PERMISSION_DENIED)."""
NOT_LEASE_OWNER: Final = "NOT_LEASE_OWNER"
"""The lease belongs to another identity; only its owner or an admin may act on it (PERMISSION_DENIED)."""

AUTHENTICATION_REASONS: Final = frozenset(
    {
        CREDENTIAL_MISSING,
        CREDENTIAL_INVALID,
        CREDENTIAL_EXPIRED,
        CERTIFICATE_INVALID,
        CERTIFICATE_EXPIRED,
        CERTIFICATE_UNTRUSTED,
        WRONG_CLUSTER,
    }
)
"""Reasons answered with UNAUTHENTICATED."""
PERMISSION_REASONS: Final = frozenset(
    {ROLE_NOT_ALLOWED, NOT_PROJECT_MEMBER, PRIORITY_NOT_ALLOWED, NOT_LEASE_OWNER, LEASE_TOKEN_MISMATCH}
)
"""Reasons answered with PERMISSION_DENIED."""

# End reasons recorded on leases.
END_RELEASED: Final = "RELEASED_BY_CLIENT"
END_EVICTED: Final = "EVICTED_BY_ADMIN"
END_EXPIRED: Final = "HEARTBEAT_TIMEOUT"
END_NODE_LOST: Final = "NODE_LOST"
END_MIG_FAILED: Final = "MIG_CREATE_FAILED"
"""The node daemon could not create the lease's MIG instance; the message carries NVML's error."""
END_MIG_LOST: Final = "MIG_INSTANCE_LOST"
"""The lease's MIG instance vanished from the GPU (destroyed outside vgpu)."""
END_PREEMPT_MISSED: Final = "PREEMPT_DEADLINE_MISSED"
"""The lease was asked to yield and did not acknowledge before its deadline, so it was revoked."""
END_OVER_BUDGET: Final = "MEMORY_BUDGET_EXCEEDED"
"""The lease's processes used more GPU memory than its budget past the watchdog's grace period."""
