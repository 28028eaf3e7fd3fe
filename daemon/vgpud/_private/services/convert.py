"""Core records -> API messages. One place, so every RPC shows a lease the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from google.protobuf import duration_pb2, timestamp_pb2

from vgpu.api.v1 import types_pb2
from vgpud._private.core.environment import lease_environment
from vgpud._private.core.lease_record import LeaseRecord
from vgpud._private.core.mig_placement import still_fits
from vgpud._private.core.mig_records import MigState
from vgpud._private.core.mig_slices import mig_gpu
from vgpud._private.core.model import GpuMode, GpuRecord, GpuState, Isolation, LeaseState, NodeConfig, NodeRecord

ISOLATION: Final = {
    Isolation.SHARED: types_pb2.ISOLATION_SHARED,
    Isolation.MIG: types_pb2.ISOLATION_MIG,
    Isolation.WHOLE: types_pb2.ISOLATION_WHOLE,
}
LEASE_STATE: Final = {
    LeaseState.PENDING: types_pb2.LEASE_STATE_PENDING,
    LeaseState.GRANTED: types_pb2.LEASE_STATE_GRANTED,
    LeaseState.RESIZING: types_pb2.LEASE_STATE_RESIZING,
    LeaseState.PREEMPTING: types_pb2.LEASE_STATE_PREEMPTING,
    LeaseState.SUSPENDED: types_pb2.LEASE_STATE_SUSPENDED,
    LeaseState.RELEASED: types_pb2.LEASE_STATE_RELEASED,
    LeaseState.REVOKED: types_pb2.LEASE_STATE_REVOKED,
    LeaseState.EXPIRED: types_pb2.LEASE_STATE_EXPIRED,
}
GPU_MODE: Final = {
    GpuMode.SHARED: types_pb2.GPU_MODE_SHARED,
    GpuMode.MIG: types_pb2.GPU_MODE_MIG,
    GpuMode.EXCLUSIVE: types_pb2.GPU_MODE_EXCLUSIVE,
}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Unix seconds as a Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def lease(
    record: LeaseRecord,
    *,
    node: str,
    endpoint: str,
    token: str = "",
    endpoints: Mapping[str, str] | None = None,
    mps_pipes: Mapping[str, str] | None = None,
) -> types_pb2.Lease:
    """A lease as clients see it; the token only when given (acquire answers), in `env` and every node's env.

    `node`/`endpoint`: the answering daemon's; `endpoints`: what clients on the other nodes dial (live
    node records), for VGPU_ENDPOINT in those nodes' environments ("" where unknown: the default socket);
    `mps_pipes`: GPU UUID -> MPS pipe directory of the GPUs whose nodes run MPS.
    """
    msg = types_pb2.Lease(
        id=record.id,
        state=LEASE_STATE[record.state],
        project=record.project,
        priority=record.priority,
        owner=types_pb2.Owner(
            user=record.owner.user,
            host=record.owner.host,
            pid=record.owner.pid,
            description=record.owner.description,
            identity=record.owner.identity,
            uid=record.owner.uid,
        ),
        request=types_pb2.ResourceRequest(
            memory_bytes=record.request.memory_bytes if record.request.isolation is not Isolation.WHOLE else 0,
            compute_milli=record.request.compute_milli if record.request.isolation is not Isolation.WHOLE else 0,
            isolation=types_pb2.ISOLATION_UNSPECIFIED
            if record.request.flexible
            else ISOLATION[record.request.isolation],
            mig_profile=record.request.mig_profile,
            count=record.request.count,
            gpu_models=list(record.request.gpu_models),
            node=record.target_node,
            any_node=record.any_node,
            gang=record.gang,
            compute_milli_max=record.request.compute_milli_max,
            count_max=record.request.count_max,
        ),
        slices=[
            types_pb2.Slice(
                node=s.node,
                gpu_uuid=s.gpu_uuid,
                gpu_index=s.gpu_index,
                gpu_model=s.gpu_model,
                isolation=ISOLATION[s.isolation],
                memory_bytes=s.memory_bytes,
                compute_milli=s.compute_milli,
                mig_profile=s.mig_profile,
                mig_uuid=s.mig_uuid,
                mig_start=s.mig_start,
                mig_size=s.mig_size,
            )
            for s in record.slices
        ],
        created_at=timestamp(record.created_at),
        ttl=duration_pb2.Duration(seconds=record.ttl_seconds),
        node=record.node,
        end_reason=record.end_reason,
        end_message=record.end_message,
        token=token,
        labels=record.labels,
        preempt_reason=record.preempt_reason,
        preemptions=record.preemptions,
        steps=[types_pb2.LeaseStep(step=name, time=timestamp(at)) for name, at in record.steps],
    )
    if record.preempt_deadline and record.state is LeaseState.PREEMPTING:
        msg.preempt_deadline.CopyFrom(timestamp(record.preempt_deadline))
    if record.idle_since:
        msg.idle_since.CopyFrom(timestamp(record.idle_since))
    if record.warning:
        msg.warning = record.warning
        msg.warning_deadline.CopyFrom(timestamp(record.warning_deadline))
    if not record.state.ended:
        _environments(
            msg, record, node=node, endpoint=endpoint, token=token, endpoints=endpoints or {}, mps_pipes=mps_pipes or {}
        )
    else:
        msg.ended_at.CopyFrom(timestamp(record.ended_at))
    return msg


def _environments(
    msg: types_pb2.Lease,
    record: LeaseRecord,
    *,
    node: str,
    endpoint: str,
    token: str,
    endpoints: Mapping[str, str],
    mps_pipes: Mapping[str, str],
) -> None:
    """One environment per node the slices span; `env` is the answering node's, else the first node's."""
    spanned = sorted({s.node for s in record.slices})
    by_node = {
        name: lease_environment(record, name, endpoint if name == node else endpoints.get(name, ""), token, mps_pipes)
        for name in spanned
    }
    for name in spanned:
        msg.node_environments.add(node=name, env=by_node[name])
    if node in by_node:
        msg.env.update(by_node[node])
    elif spanned:
        msg.env.update(by_node[spanned[0]])
    else:  # no slices (yet): the answering node's environment without budgets, as before
        msg.env.update(lease_environment(record, node, endpoint, token))


def gpu(record: GpuRecord, state: GpuState, *, healthy: bool = True) -> types_pb2.Gpu:
    """A GPU with what is allocated on it."""
    return types_pb2.Gpu(
        uuid=record.uuid,
        node=record.node,
        index=record.index,
        model=record.model,
        name=record.name,
        memory_bytes=record.memory_bytes,
        sm_count=record.sm_count,
        mode=GPU_MODE[state.mode],
        mig_capable=record.mig_capable,
        mig_enabled=record.mig_enabled,
        allocated=types_pb2.GpuAllocation(
            memory_bytes=state.memory_claimed,
            compute_milli=state.compute_claimed,
            slices=len(state.claims),
        ),
        healthy=healthy,
        backend=record.backend,
        mode_pending=(state.mode is GpuMode.MIG) != record.mig_enabled,
        **_mig_part(record, state, schedulable=healthy),
    )


_MIG_STATE: Final = {
    MigState.CREATING: types_pb2.MIG_INSTANCE_STATE_CREATING,
    MigState.READY: types_pb2.MIG_INSTANCE_STATE_READY,
    MigState.WARM: types_pb2.MIG_INSTANCE_STATE_WARM,
    MigState.RELEASING: types_pb2.MIG_INSTANCE_STATE_RELEASING,
    MigState.FOREIGN: types_pb2.MIG_INSTANCE_STATE_FOREIGN,
}


def _mig_part(record: GpuRecord, state: GpuState, *, schedulable: bool) -> dict[str, Any]:
    """The MIG fields of a GPU message: slots, instances and what still fits (nothing for non-MIG models)."""
    mig = mig_gpu(record, state, schedulable=schedulable)
    if mig is None:
        return {}
    return {
        "mig_memory_slices": mig.model.memory_slices,
        "mig_instances": [
            types_pb2.MigInstance(
                profile=m.slot.profile,
                start=m.slot.start,
                size=m.slot.size,
                uuid=m.uuid,
                lease_id=m.lease_id if m.state is not MigState.FOREIGN else "",
                state=_MIG_STATE[m.state],
            )
            for m in state.mig
        ],
        "mig_fits": [
            types_pb2.MigFit(profile=room.profile.name, more=room.more)
            for room in sorted(still_fits(mig), key=lambda r: -r.profile.memory_slices)
        ],
    }


def node(name: str, record: NodeRecord | None, config: NodeConfig, gpu_count: int) -> types_pb2.Node:
    """A node; without a live record it is DOWN."""
    if record is None:
        state = types_pb2.NODE_STATE_DOWN
    elif config.draining:
        state = types_pb2.NODE_STATE_DRAINING
    else:
        state = types_pb2.NODE_STATE_READY
    msg = types_pb2.Node(name=name, state=state, draining=config.draining, gpu_count=gpu_count)
    if record is not None:
        msg.endpoint = record.endpoint
        msg.version = record.version
        msg.started_at.CopyFrom(timestamp(record.started_at))
        msg.backend = record.backend
        msg.labels.update(record.labels)
        msg.address = record.address
        msg.tcp_endpoint = record.tcp_endpoint
    return msg


def redacted(msg: types_pb2.Lease) -> types_pb2.Lease:
    """Someone else's lease as a user sees it: no owner, no environment (paths, endpoints, budgets), no labels."""
    for name in ("owner", "env", "node_environments", "labels", "request_id"):
        msg.ClearField(name)
    return msg
