"""Make this node's GPUs match the MIG books in etcd: create, destroy and keep instances, switch MIG mode.

Grants only write records (CREATING); this loop, run by the daemon that owns the GPUs, turns them into
hardware and writes back the MIG UUID, which is when the lease is delivered. It is level-triggered: each
round compares the books with the hardware, so a crash anywhere is finished by the next round or the next
start. It never destroys an instance it has no record of creating (those are booked FOREIGN) nor one with
processes on it (the backend refuses; the round retries later).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from vgpu._private import reasons
from vgpud._private.backend.base import BackendError, GpuBackend, MigInstance
from vgpud._private.core.mig_placement import MigProfileError
from vgpud._private.core.mig_records import MigRecord, MigSlot, MigState
from vgpud._private.core.mig_slices import model_of, profile_for
from vgpud._private.core.model import GpuMode, GpuRecord, GpuState, Isolation, LeaseState, ShapeRequest
from vgpud._private.core.slice_views import Unplaceable
from vgpud._private.grants.allocator import Allocator
from vgpud._private.grants.gpu_modes import switchable_now
from vgpud._private.grants.write_batch import Overlay
from vgpud._private.pool_view import PoolView
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys
from vgpud._private.store.base import Put, StoreError

log = structlog.get_logger("vgpud.mig")

_RETRY_S = 1.0
"""Round period when nothing changes (a destroy refused while processes run is retried this often)."""
_RESCAN_S = 30.0
"""How often the hardware is listed to find instances created or destroyed outside vgpu."""


class MigRealiser:
    """One per daemon: realises the MIG records of this node's GPUs."""

    def __init__(
        self,
        backend: GpuBackend,
        allocator: Allocator,
        view: PoolView,
        keys: Keys,
        node: str,
        *,
        keep_warm_s: float = 0.0,
        auto_mode: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._allocator = allocator
        self._view = view
        self._keys = keys
        self._node = node
        self._keep_warm_s = keep_warm_s
        self._auto_mode = auto_mode
        self._clock = clock
        self._complained: set[tuple[str, str]] = set()

    async def run(self) -> None:
        """Rediscover, then realise on every change of the pool (and every second) until cancelled."""
        next_scan = 0.0
        while True:
            generation = self._view.generation
            try:
                if time.monotonic() >= next_scan:
                    await self.rediscover()
                    next_scan = time.monotonic() + _RESCAN_S
                await self.realise()
            except (StoreError, Refusal) as exc:
                log.warning("MIG round failed; retrying", error=str(exc))
            await self._view.wait_changed(generation, timeout=_RETRY_S)

    # -- one round -----------------------------------------------------------------------------------
    async def realise(self) -> None:
        """One pass over this node's GPUs: mode first, then every record that waits for the hardware."""
        for record in self._view.gpus_of(self._node):
            state = self._view.gpu_state(record.uuid).value
            await self._mode(record, state)
            waiting = any(m.state in (MigState.CREATING, MigState.RELEASING) for m in state.mig)
            hardware = await self._hardware(record.uuid) if waiting else []  # one listing per GPU and round
            for mig in state.mig:
                if mig.state is MigState.CREATING:
                    await self._create(record, mig, hardware)
                elif mig.state is MigState.RELEASING:
                    await self._release(record, mig, hardware)
                elif mig.state is MigState.WARM and self._expired(mig, state):
                    await self._unwarm(record, mig)
        if self._auto_mode:
            await self._auto_switch()

    async def _auto_switch(self) -> None:
        """Switch one idle GPU of this node to the mode a waiting request needs and nothing can give it now."""
        waiting = [q.request for q in self._view.queue() if not q.request.refused]
        for record in self._view.gpus_of(self._node):
            state = self._view.gpu_state(record.uuid).value
            if not (record.mig_capable and switchable_now(state) and record.mig_enabled == (state.mode is GpuMode.MIG)):
                continue
            for request in waiting:
                if request.target_node not in ("", self._node):
                    continue
                wanted = _mode_for(request.lease.request, record)
                if wanted is None or wanted is state.mode:
                    continue
                if not isinstance(
                    self._allocator.try_place_in_pool(request.lease.request, request.target_node), Unplaceable
                ):
                    continue  # the leader can grant it as things are
                try:
                    await self._allocator.set_mode(record.uuid, wanted)
                except Refusal as exc:
                    log.info("auto mode switch refused", gpu=record.uuid, error=exc.message)
                    return
                log.info("auto mode: switched an idle GPU for a waiting request", gpu=record.uuid, mode=wanted.value)
                return

    def _expired(self, mig: MigRecord, state: GpuState) -> bool:
        """A warm instance past its keep-warm time, or on a GPU leaving MIG mode."""
        return state.mode is not GpuMode.MIG or self._clock() - mig.idle_since >= self._keep_warm_s

    async def _hardware(self, gpu: str) -> list[MigInstance]:
        try:
            return await asyncio.to_thread(self._backend.mig_instances, gpu)
        except BackendError as exc:
            self._complain(gpu, "list", str(exc))
            return []

    async def _create(self, record: GpuRecord, mig: MigRecord, hardware: list[MigInstance]) -> None:
        """Create the instance (or adopt one a crash left between create and booking) and book its UUID."""
        found = _at(hardware, mig.slot)
        if found is None or found.mig_uuid in {m.uuid for m in self._view.gpu_state(record.uuid).value.mig}:
            try:
                found = await asyncio.to_thread(
                    self._backend.create_mig_instance, record.uuid, mig.slot.profile_id, mig.slot.start
                )
            except BackendError as exc:
                await self._failed(record, mig, str(exc))
                return
        log.info(
            "MIG instance created", gpu=record.uuid, profile=mig.slot.profile, start=mig.start, uuid=found.mig_uuid
        )
        await self._allocator.commit(lambda overlay: _book_created(overlay, record.uuid, mig, found))

    async def _failed(self, record: GpuRecord, mig: MigRecord, error: str) -> None:
        """The create failed: the lease ends with NVML's words, the slot is freed (nothing was left behind)."""
        log.warning("MIG instance could not be created", gpu=record.uuid, profile=mig.slot.profile, error=error)
        message = f"creating MIG {mig.slot.profile} at slot {mig.start} of {record.uuid} failed: {error}"
        if mig.lease_id:
            await self._allocator.end(mig.lease_id, LeaseState.REVOKED, reasons.END_MIG_FAILED, message)
        await self._allocator.commit(lambda overlay: _drop(overlay, record.uuid, mig.slot, MigState.RELEASING))

    async def _release(self, record: GpuRecord, mig: MigRecord, hardware: list[MigInstance]) -> None:
        """A lease ended: keep the instance warm when configured, else destroy it."""
        if self._keep_warm_s > 0 and mig.uuid and self._view.gpu_state(record.uuid).value.mode is GpuMode.MIG:
            now = self._clock()
            await self._allocator.commit(
                lambda overlay: _swap(
                    overlay, record.uuid, mig, replace(mig, state=MigState.WARM, lease_id="", idle_since=now)
                )
            )
            return
        await self._destroy(record, mig, hardware)

    async def _unwarm(self, record: GpuRecord, mig: MigRecord) -> None:
        """Book a warm instance RELEASING first, so no grant can bind it while it is being destroyed."""
        await self._allocator.commit(
            lambda overlay: _swap(overlay, record.uuid, mig, replace(mig, state=MigState.RELEASING))
        )

    async def _destroy(self, record: GpuRecord, mig: MigRecord, hardware: list[MigInstance]) -> None:
        """Destroy the instance if it is on the GPU (a record without UUID may be one a crash left), then unbook it."""
        booked = {m.uuid for m in self._view.gpu_state(record.uuid).value.mig if m.uuid}
        if mig.uuid:
            found = next((h for h in hardware if h.mig_uuid == mig.uuid), None)
        else:
            found = _at(hardware, mig.slot)
            found = None if found is None or found.mig_uuid in booked else found
        if found is not None and found.mig_uuid:
            try:
                await asyncio.to_thread(
                    self._backend.destroy_mig_instance,
                    record.uuid,
                    found.gpu_instance_id,
                    owned=frozenset({found.mig_uuid}),
                )
            except BackendError as exc:
                self._complain(record.uuid, found.mig_uuid, f"cannot destroy yet: {exc}")
                return
            log.info("MIG instance destroyed", gpu=record.uuid, profile=mig.slot.profile, uuid=found.mig_uuid)
        await self._allocator.commit(lambda overlay: _drop(overlay, record.uuid, mig.slot, mig.state))

    # -- mode ----------------------------------------------------------------------------------------
    async def _mode(self, record: GpuRecord, state: GpuState) -> None:
        """Switch the hardware to the booked mode once nothing but warm instances stands in the way."""
        want_mig = state.mode is GpuMode.MIG
        if want_mig == record.mig_enabled:
            return
        if not want_mig:
            if any(m.state is not MigState.WARM for m in state.mig):
                return  # instances still go away first; foreign ones keep it in MIG (the admin was told)
            if state.mig:
                for mig in state.mig:
                    await self._unwarm(record, mig)
                return  # the next rounds destroy them, then switch
        try:
            mode = await asyncio.to_thread(self._backend.set_mig_mode, record.uuid, want_mig)
        except BackendError as exc:
            self._complain(record.uuid, "mode", str(exc))
            return
        if mode.current != want_mig:
            self._complain(record.uuid, "mode", f"MIG {'on' if want_mig else 'off'} is pending a GPU reset")
            return
        log.info("MIG mode switched", gpu=record.uuid, mig=want_mig)
        updated = replace(record, mig_enabled=want_mig)
        await self._allocator.commit(lambda overlay: overlay.stage(Put(self._keys.gpu(record.uuid), updated.to_json())))
        self._complained.discard((record.uuid, "mode"))

    # -- rediscovery ---------------------------------------------------------------------------------
    async def rediscover(self) -> None:
        """Book instances found on the GPUs but not in etcd as FOREIGN; drop records of vanished ones."""
        for record in self._view.gpus_of(self._node):
            if not record.mig_enabled:
                continue
            hardware = await self._hardware(record.uuid)
            await self._allocator.commit(functools.partial(_reconcile, gpu=record.uuid, hardware=hardware))
            for lease_id in _lost_leases(self._view.gpu_state(record.uuid).value, hardware):
                await self._allocator.end(
                    lease_id, LeaseState.REVOKED, reasons.END_MIG_LOST, f"its MIG instance on {record.uuid} vanished"
                )

    def _complain(self, gpu: str, what: str, error: str) -> None:
        """Log a hardware refusal once per GPU and subject (rounds repeat every second)."""
        if (gpu, what) not in self._complained:
            self._complained.add((gpu, what))
            log.warning("MIG action waits", gpu=gpu, subject=what, error=error)


def _mode_for(request: ShapeRequest, record: GpuRecord) -> GpuMode | None:
    """The mode `record` must be in to serve `request` (None: it cannot, or either mode would do)."""
    if request.gpu_models and record.model not in request.gpu_models:
        return None
    if request.isolation is Isolation.MIG:
        model = model_of(record)
        try:
            return GpuMode.MIG if model is not None and profile_for(model, request) else None
        except MigProfileError:
            return None
    if request.flexible:
        return None
    return GpuMode.SHARED


def _at(hardware: list[MigInstance], slot: MigSlot) -> MigInstance | None:
    return next((h for h in hardware if h.start == slot.start and h.profile_id == slot.profile_id), None)


def _swap(overlay: Overlay, gpu: str, old: MigRecord, new: MigRecord | None) -> None:
    """Replace one record, if the books still hold it as read (else another round sees the news)."""
    state = overlay.gpu_state(gpu)
    if old in state.mig:
        overlay.put_gpu_state(gpu, state.with_mig_replaced(old, new))


def _drop(overlay: Overlay, gpu: str, slot: MigSlot, was: MigState) -> None:
    state = overlay.gpu_state(gpu)
    current = state.mig_at(slot.start)
    if current is not None and current.slot == slot and current.state in (was, MigState.RELEASING):
        overlay.put_gpu_state(gpu, state.with_mig_replaced(current, None))


def _book_created(overlay: Overlay, gpu: str, mig: MigRecord, made: MigInstance) -> None:
    """Record the new instance: READY with its UUID in the lease's slice, or RELEASING if the lease ended."""
    state = overlay.gpu_state(gpu)
    current = state.mig_at(mig.start)
    if current is None or current.slot != mig.slot:
        return
    created = replace(current, uuid=made.mig_uuid or "", gpu_instance_id=made.gpu_instance_id)
    lease = overlay.lease(mig.lease_id) if mig.lease_id else None
    if current.state is MigState.CREATING and lease is not None and not lease.state.ended:
        created = replace(created, state=MigState.READY)
        slices = tuple(
            replace(s, mig_uuid=created.uuid) if s.gpu_uuid == gpu and s.mig_start == mig.start else s
            for s in lease.slices
        )
        overlay.put_lease(replace(lease, slices=slices))
    elif current.state is MigState.CREATING:
        created = replace(created, state=MigState.RELEASING)
    overlay.put_gpu_state(gpu, state.with_mig_replaced(current, created))


def _reconcile(overlay: Overlay, gpu: str, hardware: list[MigInstance]) -> None:
    state = overlay.gpu_state(gpu)
    present = {h.mig_uuid for h in hardware}
    kept = [m for m in state.mig if not m.uuid or m.uuid in present or m.state is MigState.READY]
    booked = {m.uuid for m in kept if m.uuid}
    pending = {(m.slot.start, m.slot.profile_id) for m in kept if not m.uuid}
    for h in hardware:
        if h.mig_uuid in booked or (h.start, h.profile_id) in pending:
            continue
        slot = MigSlot(h.profile_name, h.profile_id, h.start, h.size)
        kept.append(MigRecord(slot, MigState.FOREIGN, uuid=h.mig_uuid or "", gpu_instance_id=h.gpu_instance_id))
        log.warning("found a MIG instance vgpu did not create; its slots are off limits", gpu=gpu, uuid=h.mig_uuid)
    if tuple(sorted(kept, key=lambda m: m.start)) != state.mig:
        overlay.put_gpu_state(gpu, replace(state, mig=tuple(sorted(kept, key=lambda m: m.start))))


def _lost_leases(state: GpuState, hardware: list[MigInstance]) -> list[str]:
    """Leases whose READY instance is gone from the GPU (ending them turns the record RELEASING, then dropped)."""
    present = {h.mig_uuid for h in hardware}
    return [m.lease_id for m in state.mig if m.state is MigState.READY and m.uuid not in present and m.lease_id]
