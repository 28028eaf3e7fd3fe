"""`AsyncPool`: the asyncio twin of `Pool` (grpc.aio); create and use it inside a running event loop."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from vgpu._private.acquire_request import ComputeArg, CountArg, acquire_timeout, build_acquire_request
from vgpu._private.acquire_retry import AcquireAttempts
from vgpu._private.async_client import AsyncClient
from vgpu._private.async_follower import AsyncOnLeaseChange, AsyncOnPreempt
from vgpu._private.async_lease import AsyncLease
from vgpu._private.errors import InvalidRequestError, LeaseEndedError, VgpuError
from vgpu._private.lease_base import log
from vgpu._private.lease_records import ENDED_STATES, LeaseInfo, QueueInfo, lease_state_name
from vgpu._private.loss_notice import LostCallback
from vgpu._private.progress import start_progress
from vgpu._private.runtime.runtime import RuntimeOptions
from vgpu._private.tls import TlsConfig


class AsyncPool:
    """A grpc.aio connection to vgpud: `async with vgpu.AsyncPool() as pool: await pool.acquire(...)`."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0, tls: TlsConfig | None = None) -> None:
        """`endpoint`: argument, else $VGPU_ENDPOINT, else the default socket; `timeout`: per call; `tls`: as Pool."""
        self._client = AsyncClient(endpoint, timeout, tls)
        self._leases: set[AsyncLease] = set()

    @property
    def endpoint(self) -> str:
        """The gRPC target this pool dials."""
        return self._client.endpoint

    @property
    def timeout(self) -> float:
        """Deadline in seconds of each ordinary call."""
        return self._client.timeout

    async def acquire(
        self,
        memory: str | int | None = None,
        compute: ComputeArg | None = None,
        *,
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
        timeout: float | None = None,
        ttl: float | None = None,
        labels: Mapping[str, str] | None = None,
        description: str = "",
        on_queued: Callable[[QueueInfo], object] | None = None,
        on_preempt: AsyncOnPreempt | None = None,
        on_resume: AsyncOnLeaseChange | None = None,
        on_resize: AsyncOnLeaseChange | None = None,
        on_lost: LostCallback | None = None,
        raise_on_lost: bool = True,
        runtime: RuntimeOptions | None = None,
        progress: bool | None = None,
        apply: bool = False,
    ) -> AsyncLease:
        """Acquire slices (same arguments as `Pool.acquire`; the callbacks may also be coroutine functions).

        `node`: "" (the default) the node of the daemon asked, a name that node, None any node (the pool
        leader decides); `gang=True` makes the slices one all-or-nothing unit, spanning nodes with node=None.
        compute=(min, max), count=(min, max) and gpus=(min, max) ask for elastic leases; on_preempt and
        on_resume take part in preemption (see `AsyncLease.checkpoint()`). `on_lost` and `raise_on_lost` as
        for `Pool.acquire`: an `async with` block that ends after a loss raises LeaseLostError. `progress`
        (the wait on stderr) and `apply` (export the lease's environment for its life) as for `Pool.acquire`.
        """
        request = build_acquire_request(
            memory=memory,
            compute=compute,
            mig=mig,
            isolation=isolation,
            count=count,
            gpus=gpus,
            gpu_model=gpu_model,
            node=node,
            gang=gang,
            project=project,
            priority=priority,
            wait=wait,
            ttl=ttl,
            labels=labels,
            description=description,
        )
        deadline = acquire_timeout(timeout, wait=wait, call_timeout=self._client.timeout)
        attempts = AcquireAttempts(timeout=deadline, wait=wait, endpoint=self._client.endpoint)
        shown = start_progress(progress, on_queued, request)
        if shown is None:
            msg = await self._client.acquire(request, attempts, on_queued)
        else:
            try:
                msg = await self._client.acquire(request, attempts, shown.wrap(on_queued))
            except BaseException as error:
                shown.finish(error)
                raise
            shown.finish()
        lease = AsyncLease(
            self._client,
            msg,
            msg.token,
            on_finish=self._leases.discard,
            on_preempt=on_preempt,
            on_resume=on_resume,
            on_resize=on_resize,
            on_lost=on_lost,
            raise_on_lost=raise_on_lost,
            runtime=runtime,
        )
        self._leases.add(lease)
        if apply:
            await lease._export_env_or_release()
        return lease

    async def attach(
        self,
        token: str,
        *,
        release: bool = False,
        on_preempt: AsyncOnPreempt | None = None,
        on_resume: AsyncOnLeaseChange | None = None,
        on_resize: AsyncOnLeaseChange | None = None,
        on_lost: LostCallback | None = None,
        raise_on_lost: bool = True,
        runtime: RuntimeOptions | None = None,
    ) -> AsyncLease:
        """Take over following a lease by its token ('<lease_id>.<secret>', the VGPU_LEASE value).

        The callbacks are as for `acquire`, for a process that checkpoints its own state.
        """
        lease_id, _, secret = token.partition(".")
        if not lease_id or not secret:
            raise InvalidRequestError("a lease token looks like '<lease_id>.<secret>' (the VGPU_LEASE value)")
        msg = await self._client.get_lease(lease_id, token)
        if lease_state_name(msg.state) in ENDED_STATES:
            detail = msg.end_message or msg.end_reason
            raise LeaseEndedError(f"lease {lease_id} already ended ({lease_state_name(msg.state)}): {detail}")
        lease = AsyncLease(
            self._client,
            msg,
            token,
            release_on_exit=release,
            on_finish=self._leases.discard,
            on_preempt=on_preempt,
            on_resume=on_resume,
            on_resize=on_resize,
            on_lost=on_lost,
            raise_on_lost=raise_on_lost,
            runtime=runtime,
        )
        self._leases.add(lease)
        return lease

    async def leases(self, owner_user: str | None = None, project: str | None = None) -> list[LeaseInfo]:
        """Live leases of the pool, of one owner user / project when given (all users by default)."""
        return [LeaseInfo.from_proto(m) for m in await self._client.list_leases(owner_user or "", project or "")]

    async def get_lease(self, lease_id: str, token: str) -> LeaseInfo:
        """A snapshot of one lease (its token proves you may read it)."""
        return LeaseInfo.from_proto(await self._client.get_lease(lease_id, token))

    async def close(self) -> None:
        """Release the leases acquired through this pool (attached ones are only let go), then disconnect."""
        for lease in list(self._leases):
            if not lease.release_on_exit:
                await lease.close()
                continue
            try:
                await lease.release()
            except VgpuError as error:
                log.warning("vgpu: could not release lease %s while closing the pool: %s", lease.id, error)
                await lease.close()
        await self._client.close()

    async def __aenter__(self) -> AsyncPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncPool {self.endpoint}>"
