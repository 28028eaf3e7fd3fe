"""Who runs where in a job, and the environment each process starts with (pure: lease in, plans out).

Nodes take ranks in the order of their names (the order `lease.nodes` lists them); node rank 0 is the
rendezvous point. Once per node, a process gets torchrun's variables (`PET_*`) and the plain ones
(MASTER_ADDR, NNODES, NODE_RANK, ...), so `torchrun train.py` needs no arguments; with per_gpu, one process
per slice gets RANK, LOCAL_RANK and WORLD_SIZE (the DDP/Horovod convention) and only its slice's GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from vgpud._private.core.lease_record import LeaseRecord

RENDEZVOUS_KEYS: Final = frozenset(
    {
        "MASTER_ADDR",
        "MASTER_PORT",
        "NNODES",
        "NODE_RANK",
        "LOCAL_WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "PET_NNODES",
        "PET_NODE_RANK",
        "PET_NPROC_PER_NODE",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
    }
)
_NOT_INHERITED_PREFIXES: Final = ("VGPU_", "CUDA_MPS_", "CUPY_GPU_MEMORY_LIMIT", "TORCHELASTIC_", "PET_")
_NOT_INHERITED: Final = frozenset({"CUDA_VISIBLE_DEVICES", "HOME", "USER", "LOGNAME", "SHELL", "MAIL", "PWD"})


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node's share of a job."""

    node: str
    node_rank: int
    devices: tuple[str, ...]
    """CUDA_VISIBLE_DEVICES entries of the lease's slices there, one per slice (MIG UUID or GPU UUID)."""
    first_rank: int
    """Global rank of this node's first process with per_gpu."""


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where the ranks meet, and how many there are."""

    master_addr: str
    master_port: int
    nnodes: int
    world_size: int


def plan(lease: LeaseRecord) -> list[NodePlan]:
    """The lease's nodes in rank order, each with its slices' devices and its first global rank."""
    nodes = sorted({s.node for s in lease.slices})
    plans = []
    first = 0
    for node_rank, node in enumerate(nodes):
        devices = tuple(s.mig_uuid or s.gpu_uuid for s in lease.slices if s.node == node)
        plans.append(NodePlan(node=node, node_rank=node_rank, devices=devices, first_rank=first))
        first += len(devices)
    return plans


def inherited(env: Mapping[str, str]) -> dict[str, str]:
    """The launcher's variables a rank keeps: not the lease's, the rendezvous' or the launching user's home."""
    return {
        k: v
        for k, v in env.items()
        if k not in _NOT_INHERITED and k not in RENDEZVOUS_KEYS and not k.startswith(_NOT_INHERITED_PREFIXES)
    }


def process_environments(
    base: Mapping[str, str],
    lease_env: Mapping[str, str],
    node: NodePlan,
    meet: Rendezvous,
    *,
    per_gpu: bool,
    node_address: str,
) -> list[dict[str, str]]:
    """The environment of each process this node starts: one per node, or one per slice with per_gpu.

    VGPU_NODE_ADDRESS is this node's advertised address (where a Ray worker or a rank's own listener binds).
    """
    common = {
        **inherited(base),
        **lease_env,
        "VGPU_NODE_ADDRESS": node_address,
        "MASTER_ADDR": meet.master_addr,
        "MASTER_PORT": str(meet.master_port),
        "NNODES": str(meet.nnodes),
        "NODE_RANK": str(node.node_rank),
        "LOCAL_WORLD_SIZE": str(len(node.devices)),
    }
    if not per_gpu:
        pet = {
            "PET_NNODES": str(meet.nnodes),
            "PET_NODE_RANK": str(node.node_rank),
            "PET_NPROC_PER_NODE": str(len(node.devices)),
            "PET_MASTER_ADDR": meet.master_addr,
            "PET_MASTER_PORT": str(meet.master_port),
        }
        return [{**common, **pet}]
    return [
        {
            **common,
            "CUDA_VISIBLE_DEVICES": device,
            "RANK": str(node.first_rank + local),
            "LOCAL_RANK": str(local),
            "WORLD_SIZE": str(meet.world_size),
        }
        for local, device in enumerate(node.devices)
    ]
