"""The etcd key layout (docs/ARCHITECTURE.md) and typed reads of it.

Every daemon of a cluster uses the same prefix `/vgpu/<cluster>/`; writes that claim capacity live in
allocator.py, where the transactions are.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgpud._private.core.model import GpuMode, GpuRecord, GpuState
from vgpud._private.store.base import Delete, ModRevisionIs, Put, Store


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds and parses the keys of one cluster."""

    cluster: str

    @property
    def root(self) -> str:
        """Prefix of every key of this cluster."""
        return f"/vgpu/{self.cluster}/"

    def node(self, name: str) -> str:
        """Live node record, bound to the node's etcd lease."""
        return f"{self.root}nodes/{name}"

    def nodecfg(self, name: str) -> str:
        """Persistent admin settings of a node."""
        return f"{self.root}nodecfg/{name}"

    def gpu(self, uuid: str) -> str:
        """Static facts of a GPU."""
        return f"{self.root}gpus/{uuid}"

    def gpustate(self, uuid: str) -> str:
        """Mode and claims of a GPU."""
        return f"{self.root}gpustate/{uuid}"

    def lease(self, lease_id: str) -> str:
        """A lease record."""
        return f"{self.root}leases/{lease_id}"

    def alive(self, lease_id: str) -> str:
        """A lease's liveness key, bound to its own etcd lease."""
        return f"{self.root}alive/{lease_id}"

    def project(self, name: str) -> str:
        """A project's quota."""
        return f"{self.root}projects/{name}"

    def projgate(self, name: str) -> str:
        """A limited project's guard: rewritten by every write that raises its holdings (project_gate.py)."""
        return f"{self.root}projgate/{name}"

    def queue(self, lease_id: str) -> str:
        """A request waiting in the pool-wide queue, bound to the asking node's etcd lease."""
        return f"{self.root}queue/{lease_id}"

    @property
    def leader(self) -> str:
        """The election key: the leader's node name, bound to its election lease."""
        return f"{self.root}leader/pool"

    @property
    def usage_root(self) -> str:
        """Prefix of the usage buckets: outside `root`, so that the pool view's watch does not carry them."""
        return f"/vgpu-usage/{self.cluster}/"

    def usage(self, hour: int, node: str) -> str:
        """One node's usage bucket of the hour starting at `hour` (zero-padded: keys sort by time)."""
        return f"{self.usage_root}{hour:012d}/{node}"

    def usage_hour(self, hour: int) -> str:
        """The first key of the hour starting at `hour` (range reads and deletes go from one to another)."""
        return f"{self.usage_root}{hour:012d}/"

    def split(self, key: str) -> tuple[str, str] | None:
        """('gpustate', uuid) for a key of this cluster, None for anything else."""
        if not key.startswith(self.root):
            return None
        kind, sep, name = key[len(self.root) :].partition("/")
        return (kind, name) if sep and name else None


async def register_gpus(store: Store, keys: Keys, node: str, gpus: list[GpuRecord], *, timeout: float) -> None:
    """Write every GPU's facts, and a fresh shared-mode state for GPUs seen for the first time.

    Existing states (claims of leases that outlived a restart, an admin-set mode) are kept. GPUs this
    node registered before but the backend no longer finds are removed when nothing holds them; one
    that still has claims stays listed (its leases can end normally) but takes no new work.
    """
    for gpu in gpus:
        facts = Put(keys.gpu(gpu.uuid), gpu.to_json())
        fresh = Put(keys.gpustate(gpu.uuid), GpuState(GpuMode.MIG if gpu.mig_enabled else GpuMode.SHARED).to_json())
        await store.txn([ModRevisionIs(keys.gpustate(gpu.uuid), 0)], [facts, fresh], [facts], timeout=timeout)
    present = {g.uuid for g in gpus}
    listed = await store.get_prefix(keys.root + "gpus/", timeout=timeout)
    for kv in listed.kvs:
        record = GpuRecord.from_json(kv.value)
        if record.node != node or record.uuid in present:
            continue
        state = await store.get(keys.gpustate(record.uuid), timeout=timeout)
        held = GpuState.from_json(state.value) if state is not None else GpuState()
        if held.claims or held.mig:
            continue
        guard = [ModRevisionIs(keys.gpustate(record.uuid), state.mod_revision if state else 0)]
        await store.txn(guard, [Delete(keys.gpu(record.uuid)), Delete(keys.gpustate(record.uuid))], timeout=timeout)
