"""`Pool` (the explicit sync client), the one-line `acquire()` and `attach()`.

A Pool owns one channel and the heartbeats of the leases acquired through it: closing the Pool releases
them, so `with vgpu.Pool() as pool:` leaves nothing behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from vgpu._private.acquire_request import ComputeArg, CountArg, acquire_timeout, build_acquire_request
from vgpu._private.acquire_retry import AcquireAttempts
from vgpu._private.errors import InvalidRequestError, LeaseEndedError, VgpuError
from vgpu._private.follower import OnLeaseChange, OnPreempt
from vgpu._private.lease import Lease
from vgpu._private.lease_base import log
from vgpu._private.lease_records import ENDED_STATES, LeaseInfo, QueueInfo, lease_state_name
from vgpu._private.loss_notice import LostCallback
from vgpu._private.progress import start_progress
from vgpu._private.runtime.runtime import RuntimeOptions
from vgpu._private.sync_client import SyncClient
from vgpu._private.tls import TlsConfig

LEASE_ENV = "VGPU_LEASE"


class Pool:
    """A connection to vgpud: acquire leases, list and read them. Thread-safe; a context manager."""

    def __init__(self, endpoint: str | None = None, timeout: float = 10.0, tls: TlsConfig | None = None) -> None:
        """`endpoint`: argument, else $VGPU_ENDPOINT, else the default socket; `timeout`: per call.

        `tls`: for a TCP endpoint, this client's certificate and key and the pool's CA (else $VGPU_TLS_*);
        vgpud serves TCP only with mutual TLS. On the Unix socket the kernel says who is calling.
        """
        self._client = SyncClient(endpoint, timeout, tls)
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()
        self._leases_own_client = False

    @classmethod
    def _single_use(cls, endpoint: str | None, timeout: float = 10.0) -> Pool:
        """A pool for one lease (module-level acquire/attach): the lease closes the channel when done."""
        pool = cls(endpoint, timeout)
        pool._leases_own_client = True
        return pool

    @property
    def endpoint(self) -> str:
        """The gRPC target this pool dials."""
        return self._client.endpoint

    @property
    def timeout(self) -> float:
        """Deadline in seconds of each ordinary call."""
        return self._client.timeout

    def acquire(
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
        on_preempt: OnPreempt | None = None,
        on_resume: OnLeaseChange | None = None,
        on_resize: OnLeaseChange | None = None,
        on_lost: LostCallback | None = None,
        raise_on_lost: bool = True,
        runtime: RuntimeOptions | None = None,
        progress: bool | None = None,
        apply: bool = False,
    ) -> Lease:
        """Acquire slices; waits in the queue (up to `timeout`, default 600 s) unless wait=False.

        `node`: "" (the default) places the slices on the node of the daemon asked, a name on that node,
        None on any node of the pool (the pool leader decides). `gang=True` grants (and later preempts)
        all `count` slices as one unit, all or nothing; with node=None they may span several nodes:
        `lease.nodes` lists them and `lease.environment(node)` gives each node's environment.

        Elastic requests: `compute=(0.25, 1.0)`, `count=(2, 4)` or `gpus=(2, 8)` are granted at the minimum
        as soon as it fits and grown toward the maximum as capacity frees (`on_resize` hears of it).
        `project`/`priority` choose the quota charged and the priority class (which decides preemption).

        Preemption: `on_preempt(lease, notice)` saves what must survive and frees the GPU memory;
        `on_resume(lease)` restores once the lease holds GPUs again (see `Lease.checkpoint()` for which
        thread runs them). `runtime=vgpu.RuntimeOptions(...)` tunes the in-process runtime (backend,
        throttle policy, where checkpoints spill): see `lease.runtime`.

        Loss: the lease hears within a second when the pool revokes, expires or evicts it; `lease.lost` turns
        True, `lease.status` shows the end state, `on_lost(reason)` runs once, and a `with` block that ends
        afterwards raises LeaseLostError (unless its body raised). raise_on_lost=False leaves that check
        to code that reads `lease.lost` itself.

        `progress`: show the wait on stderr ("vgpu: waiting for memory=20GiB compute=0.5: position 3 of 7,
        about 40s"), a live line on a terminal, one line per change elsewhere. None (the default) shows it
        when stderr is a terminal and no `on_queued` was given; True always; False never.
        `apply=True` exports the lease's environment into this process at grant, before its runtime starts,
        and restores it when the lease is let go: see `Lease.apply()`.
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
            msg = self._client.acquire(request, attempts, on_queued)
        else:
            try:
                msg = self._client.acquire(request, attempts, shown.wrap(on_queued))
            except BaseException as error:
                shown.finish(error)
                raise
            shown.finish()
        return self._track(
            Lease(
                self._client,
                msg,
                msg.token,
                owns_client=self._leases_own_client,
                on_finish=self._untrack,
                on_preempt=on_preempt,
                on_resume=on_resume,
                on_resize=on_resize,
                on_lost=on_lost,
                raise_on_lost=raise_on_lost,
                runtime=runtime,
                apply=apply,
            )
        )

    def attach(
        self,
        token: str,
        *,
        release: bool = False,
        on_preempt: OnPreempt | None = None,
        on_resume: OnLeaseChange | None = None,
        on_resize: OnLeaseChange | None = None,
        on_lost: LostCallback | None = None,
        raise_on_lost: bool = True,
        runtime: RuntimeOptions | None = None,
    ) -> Lease:
        """Take over following a lease by its token ('<lease_id>.<secret>'), e.g. in a child process.

        The callbacks (and raise_on_lost) are as for `acquire`: a child that holds the training state
        checkpoints itself.
        """
        lease_id, _, secret = token.partition(".")
        if not lease_id or not secret:
            raise InvalidRequestError("a lease token looks like '<lease_id>.<secret>' (the VGPU_LEASE value)")
        msg = self._client.get_lease(lease_id, token)
        if lease_state_name(msg.state) in ENDED_STATES:
            detail = msg.end_message or msg.end_reason
            raise LeaseEndedError(f"lease {lease_id} already ended ({lease_state_name(msg.state)}): {detail}")
        lease = Lease(
            self._client,
            msg,
            token,
            release_on_exit=release,
            owns_client=self._leases_own_client,
            on_finish=self._untrack,
            on_preempt=on_preempt,
            on_resume=on_resume,
            on_resize=on_resize,
            on_lost=on_lost,
            raise_on_lost=raise_on_lost,
            runtime=runtime,
        )
        return self._track(lease)

    def leases(self, owner_user: str | None = None, project: str | None = None) -> list[LeaseInfo]:
        """Live leases of the pool, of one owner user / project when given (all users by default)."""
        return [LeaseInfo.from_proto(m) for m in self._client.list_leases(owner_user or "", project or "")]

    def get_lease(self, lease_id: str, token: str) -> LeaseInfo:
        """A snapshot of one lease (its token proves you may read it)."""
        return LeaseInfo.from_proto(self._client.get_lease(lease_id, token))

    def close(self) -> None:
        """Release the leases acquired through this pool (attached ones are only let go), then disconnect."""
        with self._lock:
            held = list(self._leases)
        for lease in held:
            if not lease.release_on_exit:
                lease.close()
                continue
            try:
                lease.release()
            except VgpuError as error:
                log.warning("vgpu: could not release lease %s while closing the pool: %s", lease.id, error)
                lease.close()
        self._client.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Pool {self.endpoint}>"

    def _track(self, lease: Lease) -> Lease:
        with self._lock:
            self._leases.add(lease)
        return lease

    def _untrack(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)


def acquire(
    memory: str | int | None = None,
    compute: ComputeArg | None = None,
    *,
    endpoint: str | None = None,
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
    on_preempt: OnPreempt | None = None,
    on_resume: OnLeaseChange | None = None,
    on_resize: OnLeaseChange | None = None,
    on_lost: LostCallback | None = None,
    raise_on_lost: bool = True,
    runtime: RuntimeOptions | None = None,
    progress: bool | None = None,
    apply: bool = False,
) -> Lease:
    """One-liner: connect, acquire and return a Lease that disconnects when released (use it in `with`).

    Arguments as `Pool.acquire`: node="" (the default) means the node of the daemon asked, node=None any
    node (the pool leader decides), node="name" that node; gang=True makes the slices one all-or-nothing
    unit, which with node=None may span nodes (see `lease.nodes` and `lease.environment(node)`).
    compute=(min, max), count=(min, max) and gpus=(min, max) ask for elastic leases; on_preempt and
    on_resume take part in preemption (see `Lease.checkpoint()`); on_lost and raise_on_lost as `Pool.acquire`.
    The wait shows on a terminal's stderr unless progress=False; apply=True exports the lease's environment
    into this process for the lease's life (see `Lease.apply()`).
    """
    pool = Pool._single_use(endpoint)
    try:
        return pool.acquire(
            memory,
            compute,
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
            timeout=timeout,
            ttl=ttl,
            labels=labels,
            description=description,
            on_queued=on_queued,
            on_preempt=on_preempt,
            on_resume=on_resume,
            on_resize=on_resize,
            on_lost=on_lost,
            raise_on_lost=raise_on_lost,
            runtime=runtime,
            progress=progress,
            apply=apply,
        )
    except BaseException:
        pool.close()
        raise


def attach(
    *,
    endpoint: str | None = None,
    token: str | None = None,
    release: bool = False,
    timeout: float = 10.0,
    on_preempt: OnPreempt | None = None,
    on_resume: OnLeaseChange | None = None,
    on_resize: OnLeaseChange | None = None,
    on_lost: LostCallback | None = None,
    raise_on_lost: bool = True,
    runtime: RuntimeOptions | None = None,
) -> Lease:
    """Pick up the lease this process was started with (VGPU_LEASE, VGPU_ENDPOINT) and heartbeat it.

    Leaving a `with` block only stops following the lease unless release=True; the parent stays in charge.
    The callbacks are as for `acquire`, for a child process that checkpoints its own state.
    """
    value = token or os.environ.get(LEASE_ENV, "")
    if not value:
        raise InvalidRequestError(
            f"{LEASE_ENV} is not set: attach() runs in a process started with a lease's env (lease.env)"
        )
    pool = Pool._single_use(endpoint, timeout)
    try:
        return pool.attach(
            value,
            release=release,
            on_preempt=on_preempt,
            on_resume=on_resume,
            on_resize=on_resize,
            on_lost=on_lost,
            raise_on_lost=raise_on_lost,
            runtime=runtime,
        )
    except BaseException:
        pool.close()
        raise


def client_of(pool: Pool) -> SyncClient:
    """The pool's transport, for vgpu's own launchers (`vgpu run` calls JobService over the same connection)."""
    return pool._client
