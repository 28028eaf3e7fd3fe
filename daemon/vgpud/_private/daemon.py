"""vgpud's life: check the host, start etcd if embedded, register, serve gRPC, shut down cleanly.

Start-up problems (state dir, socket, backend, etcd) end the process with exit code 3 and one line that
says what to change. A clean stop leaves every lease in etcd for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health

from vgpu._private import reasons
from vgpud._private import sdnotify
from vgpud._private.auth.wiring import AuthParts, build_auth
from vgpud._private.backend import make_backend
from vgpud._private.backend.base import BackendError, DiscoveredGpu, GpuBackend
from vgpud._private.backend.geometry import all_models, known_models
from vgpud._private.config import DaemonConfig
from vgpud._private.connections.file_limit import raise_file_limit
from vgpud._private.connections.unix_door import UnixDoor
from vgpud._private.core.model import GpuRecord, LeaseState, NodeRecord
from vgpud._private.core.priorities import PriorityClasses
from vgpud._private.fair_pass import QueueRanking
from vgpud._private.grants.allocator import Allocator
from vgpud._private.grpc_server import prepare_socket, start_grpc_server
from vgpud._private.jobs.config import advertised
from vgpud._private.jobs.service import JobService
from vgpud._private.leader import Leadership
from vgpud._private.log import configure_logging
from vgpud._private.log_limit import LogLimit
from vgpud._private.metrics import DaemonMetrics
from vgpud._private.metrics.feed import MetricsFeed
from vgpud._private.mps_control import MpsDaemons
from vgpud._private.node_parts import NodeParts, StartupError
from vgpud._private.placement_source import PlacementSource
from vgpud._private.pool_view import PoolView
from vgpud._private.queueing.pool_queue import PoolQueue
from vgpud._private.refusal import Refusal
from vgpud._private.registry import Keys, register_gpus
from vgpud._private.services.serving import Serving
from vgpud._private.store.base import Put, Store, StoreError, StorePermissionError
from vgpud._private.store.embedded_etcd import EmbeddedEtcd
from vgpud._private.store.embedded_pki import EtcdTlsFiles
from vgpud._private.store.etcd_store import EtcdStore

log = structlog.get_logger("vgpud")

EXIT_OK = 0
EXIT_CANNOT_START = 3
_NODE_TTL = 10
_HEALTH_POLL_S = 10.0
_ELECTION_TTL = 5
_STORE_TIMEOUT = 5.0


def run(config: DaemonConfig) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit code."""
    configure_logging(config.log.format, config.log.level)
    open_files = raise_file_limit()
    log.debug("open-file limit", soft=open_files)
    embedded: EmbeddedEtcd | None = None
    try:
        _prepare_state_dir(config.state_dir)
        prepare_socket(config.socket_path)
        backend = make_backend(config.backend, config.sim_spec, config.node_name, config.state_dir)
        gpus = backend.discover()
        endpoints = list(config.etcd.endpoints)
        if not endpoints:
            # Started from the main thread on purpose: the child's death signal is tied to this thread.
            embedded = EmbeddedEtcd(config.state_dir / "etcd")
            embedded.start()
            endpoints = [embedded.endpoint]
            log.info("embedded etcd started", endpoint=embedded.endpoint, data_dir=str(config.state_dir / "etcd"))
        etcd_tls = embedded.client_tls if embedded is not None else None
        return asyncio.run(Daemon(config, backend, gpus, endpoints, etcd_tls=etcd_tls).serve())
    except (StartupError, BackendError, StoreError, OSError) as exc:
        # One plain line, on a TTY or off it: a log event as well would print the same error twice.
        print(f"vgpud: error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    finally:
        if embedded is not None:
            embedded.stop()


def _prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".vgpud-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"state dir {path} is not writable ({exc.strerror or exc}); choose another with --state-dir"
        ) from None


@dataclass(slots=True)
class _Tasks:
    running: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, coro: object, name: str) -> None:
        self.running.append(asyncio.get_running_loop().create_task(coro, name=name))  # type: ignore[arg-type]  # coroutine objects

    async def cancel_all(self) -> None:
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


class Daemon:
    """One running vgpud: its store connection, view, servers and background tasks."""

    def __init__(
        self,
        config: DaemonConfig,
        backend: GpuBackend,
        gpus: list[DiscoveredGpu],
        endpoints: list[str],
        *,
        etcd_tls: EtcdTlsFiles | None = None,
    ) -> None:
        """`etcd_tls`: the embedded etcd's client files (an external etcd's come from the config)."""
        self._config = config
        self._backend = backend
        self._gpus = gpus
        self._endpoints = endpoints
        self._etcd_tls = etcd_tls
        self._keys = Keys(config.etcd.cluster)
        self._metrics = DaemonMetrics(config.node_name)
        self._tasks = _Tasks()
        self._node_lease = 0
        self._node_alive_until = float("inf")
        """Monotonic time until which this node's etcd lease surely holds (from its last refresh)."""
        self._health_by_gpu: dict[str, bool] = {g.uuid: True for g in gpus}
        self._stop = asyncio.Event()
        self._expiring: asyncio.Queue[str] = asyncio.Queue()
        self._mps: MpsDaemons | None = None
        self._parts = NodeParts(config, backend, self._keys, self._metrics, self._tasks.start, _STORE_TIMEOUT)

    @property
    def endpoint(self) -> str:
        """What local clients dial."""
        return f"unix://{self._config.socket_path}"

    async def serve(self) -> int:
        """Serve metrics, connect, register, serve until a stop signal, then shut down cleanly."""
        cfg = self._config
        if cfg.metrics.port is not None:
            # First: a busy port must fail the start before anything is registered or running.
            self._metrics.start_http(cfg.metrics.host, cfg.metrics.port)
        try:
            return await self._connect_and_serve()
        finally:
            self._metrics.stop_http()

    async def _connect_and_serve(self) -> int:
        cfg = self._config
        try:
            tls = self._etcd_tls
            store = await EtcdStore.connect(
                self._endpoints,
                ca_file=tls.ca_file if tls is not None else cfg.etcd.ca_file,
                cert_file=tls.cert_file if tls is not None else cfg.etcd.cert_file,
                key_file=tls.key_file if tls is not None else cfg.etcd.key_file,
                connect_timeout=cfg.etcd.connect_timeout_s,
            )
        except StoreError as exc:
            raise StartupError(f"cannot reach etcd at {', '.join(self._endpoints)}: {exc}") from None
        try:
            return await self._serve_with(store)
        finally:
            await self._tasks.cancel_all()  # a start-up error part-way leaves no task at a closed store
            await store.close()

    async def _serve_with(self, store: Store) -> int:
        # Before anything is registered: a bad TLS file or credential key must not leave a node record behind.
        auth = build_auth(self._config, store, self._metrics, _STORE_TIMEOUT)
        await self._check_pool(store)
        self._mps, pipes = await self._parts.start_mps(self._gpus)
        try:
            return await self._serve_registered(store, pipes, auth)
        finally:
            if self._mps is not None:
                await asyncio.to_thread(self._mps.stop)

    async def _serve_registered(self, store: Store, pipes: dict[str, str], auth: AuthParts) -> int:
        cfg = self._config
        records = [self._gpu_record(g, pipes.get(g.uuid, "")) for g in self._gpus]
        await register_gpus(store, self._keys, self._config.node_name, records, timeout=_STORE_TIMEOUT)
        await self._register_node(store)
        view = PoolView(store, self._keys, timeout=_STORE_TIMEOUT)
        view.on_liveness_lost = self._expiring.put_nowait
        self._tasks.start(view.run(), "pool-view")
        async with asyncio.timeout(cfg.etcd.connect_timeout_s):
            await view.wait_ready()

        sched = cfg.scheduling
        placement = PlacementSource(
            view, sched.placement, window=sched.placement_window, refresh_s=sched.placement_refresh_s
        )

        def make_allocator(fence: Leadership | None = None) -> Allocator:
            return Allocator(
                store,
                self._keys,
                view,
                timeout=_STORE_TIMEOUT,
                history_ttl=cfg.lease.history_retention_s,
                default_ttl=cfg.lease.default_ttl_s,
                healthy=lambda uuid: self._health_by_gpu.get(uuid, True),
                fence=fence,
                local_node=cfg.node_name,
                node_alive_until=lambda: self._node_alive_until,
                auto_mode=cfg.mig.auto_mode,
                placement=placement,
            )

        allocator = make_allocator()
        await self._reconcile(view, allocator)
        classes = PriorityClasses.of(cfg.priority_classes, cfg.scheduling.default_priority)
        leadership = Leadership(
            store,
            self._keys,
            view,
            cfg.node_name,
            ttl=_ELECTION_TTL,
            timeout=_STORE_TIMEOUT,
            make_allocator=make_allocator,
            classes=classes,
            scheduling=cfg.scheduling,
            on_preempted=self._metrics.observe_preemption,
        )
        watchdog = self._parts.start_watchdog(view, allocator)
        ledger = await self._parts.start_ledger(store, view, watchdog)
        stopping = asyncio.Event()
        queue = PoolQueue(
            store,
            self._keys,
            view,
            allocator,
            node=cfg.node_name,
            node_lease=lambda: self._node_lease,
            holds=lambda: leadership.holds,
            timeout=_STORE_TIMEOUT,
            ranking=QueueRanking(
                view, classes, time.time, held_order=lambda: leadership.held_order if leadership.leading else None
            ),
            stopping=stopping,
            max_length=cfg.max_queue_length,
            max_per_user=cfg.scheduling.max_waiting_per_user,
            update_interval=cfg.scheduling.position_update_interval_s,
            on_position_message=self._metrics.count_position_message,
            on_cap_refusal=self._metrics.count_queue_refusal,
        )
        serving = Serving(
            log_limit=LogLimit(cfg.limits.bad_input_log_per_s, on_dropped=self._metrics.count_log_dropped),
            store=store,
            keys=self._keys,
            view=view,
            allocator=allocator,
            queue=queue,
            node=cfg.node_name,
            endpoint=self.endpoint,
            known_models=frozenset(known_models()),
            known_profiles=frozenset(p.name for m in all_models() for p in m.mig_profiles),
            default_ttl=cfg.lease.default_ttl_s,
            ttl_bounds=(cfg.lease.min_ttl_s, cfg.lease.max_ttl_s),
            rpc_timeout=_STORE_TIMEOUT,
            max_queue_wait=24 * 3600.0,
            stopping=stopping,
            gate=auth.gate,
            audit=auth.audit,
            audit_retention_days=cfg.audit.retention_days,
            access=auth.access,
            classes=classes,
            scheduling=cfg.scheduling,
            on_preempted=self._metrics.observe_preemption,
            on_error=self._metrics.count_rpc_error,
            on_acquire=self._metrics.observe_acquire,
            healthy=lambda uuid: self._health_by_gpu.get(uuid, True),
            watchdog=watchdog,
            ledger=ledger,
            usage_retention_days=cfg.accounting.retention_days,
        )
        self._tasks.start(leadership.run(), "leadership")
        self._tasks.start(queue.board.run(), "queue-positions")
        self._tasks.start(allocator.liveness.run(), "liveness-leases")
        self._tasks.start(self._reap(allocator), "reaper")
        self._parts.start_realiser(view, allocator)
        self._tasks.start(self._keep_node_alive(store, view), "node-lease")
        self._tasks.start(self._watch_gpu_health(store), "gpu-health")
        feed = MetricsFeed(
            self._metrics,
            view=view,
            node=cfg.node_name,
            backend=self._backend,
            leading=lambda: leadership.leading,
            uses=(lambda: watchdog.uses) if watchdog is not None else dict,
            classes=classes,
        )
        self._tasks.start(feed.run(), "metrics")
        audit_task = await auth.start(stopping)
        jobs = JobService.for_daemon(serving, cfg, socket.gethostname())
        server, health_servicer, door = await start_grpc_server(serving, self._config, auth.tls, self._metrics, jobs)
        self._install_signals(auth)
        sdnotify.ready()
        sdnotify.status(f"serving {len(self._gpus)} GPU(s) on {self.endpoint}")
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            self._tasks.start(self._watchdog(interval / 2), "watchdog")
        log.info("vgpud ready", node=cfg.node_name, endpoint=self.endpoint, gpus=len(self._gpus))
        await self._stop.wait()
        await self._shut_down(
            server, health_servicer=health_servicer, door=door, serving=serving, queue=queue, leadership=leadership
        )
        await auth.stop()
        await jobs.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(audit_task, _STORE_TIMEOUT)  # `stopping` is set: it writes what is left
        return EXIT_OK

    async def _shut_down(
        self,
        server: grpc.aio.Server,
        *,
        health_servicer: health.aio.HealthServicer,
        door: UnixDoor,
        serving: Serving,
        queue: PoolQueue,
        leadership: Leadership,
    ) -> None:
        """Stop taking RPCs, let in-flight ones finish within the grace, then stop the background tasks."""
        log.info("vgpud stopping; leases stay in etcd")
        sdnotify.stopping()
        await health_servicer.enter_graceful_shutdown()
        serving.stopping.set()
        door.stop_accepting()
        await server.stop(self._config.shutdown_grace_s)
        await door.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STORE_TIMEOUT):
                await queue.settled()  # waiters the stop turned away leave the queue now, not at lease lapse
        await self._tasks.cancel_all()
        await leadership.resign()
        # The node lease is left to lapse, not revoked: a restart within its TTL takes the node over
        # again, so its leases are not revoked as NODE_LOST by the leader meanwhile.
        self._config.socket_path.unlink(missing_ok=True)
        await asyncio.to_thread(self._backend.close)

    def _gpu_record(self, gpu: DiscoveredGpu, mps_pipe_dir: str) -> GpuRecord:
        return GpuRecord(
            uuid=gpu.uuid,
            node=self._config.node_name,
            index=gpu.index,
            model=gpu.model,
            name=gpu.name,
            memory_bytes=gpu.memory_bytes,
            sm_count=gpu.sm_count,
            mig_capable=gpu.mig_capable,
            mig_enabled=gpu.mig_enabled,
            backend=self._backend.name,
            mps_pipe_dir=mps_pipe_dir,
        )

    async def _check_pool(self, store: Store) -> None:
        """Refuse an etcd that holds another pool, or a node name a live daemon elsewhere holds."""
        try:
            kvs = (await store.get_prefix("/vgpu/", timeout=_STORE_TIMEOUT)).kvs
        except StorePermissionError:
            # With etcd auth this daemon's role covers only its own pool's prefixes (README): other pools are
            # out of its reach, and a wrong --cluster fails at its first read below, naming the permission.
            kvs = []
        clusters = {kv.key.removeprefix("/vgpu/").partition("/")[0] for kv in kvs}
        others = sorted(clusters - {self._keys.cluster, ""})
        if others:
            raise StartupError(
                f"etcd at {', '.join(self._endpoints)} holds another pool's data (cluster {others[0]!r}); "
                f"pass --cluster {others[0]} to join it, or use an etcd of this pool"
            )
        kv = await store.get(self._keys.node(self._config.node_name), timeout=_STORE_TIMEOUT)
        if kv is None:
            return
        previous = NodeRecord.from_json(kv.value)
        if previous.host and previous.host != socket.gethostname():
            raise StartupError(
                f"node name {self._config.node_name!r} is held by a live daemon on host {previous.host}; "
                "give this one another --node-name"
            )

    async def _reconcile(self, view: PoolView, allocator: Allocator) -> None:
        """Before serving: drop claims on this node's GPUs that no live lease holds (a crash mid-way)."""
        for record in view.gpus_of(self._config.node_name):
            for claim in view.gpu_state(record.uuid).value.claims:
                lease = await allocator.lookup(claim.lease_id)
                if lease is None or lease.value.state.ended:
                    log.warning("dropping an orphaned claim", gpu=record.uuid, lease=claim.lease_id)
                    await allocator.drop_claims(record.uuid, claim.lease_id)

    async def _register_node(self, store: Store) -> None:
        asked = time.monotonic()
        self._node_lease = await store.grant(_NODE_TTL, timeout=_STORE_TIMEOUT)
        self._node_alive_until = asked + _NODE_TTL
        await self._publish_node(store)

    async def _publish_node(self, store: Store) -> None:
        """Write this node's record (bound to its etcd lease), with the GPUs its backend finds unhealthy."""
        address, tcp_endpoint = advertised(self._config.node, self._config.tcp_listen, socket.gethostname())
        record = NodeRecord(
            name=self._config.node_name,
            endpoint=self.endpoint,
            version=version("vgpu"),
            started_at=time.time(),
            backend=self._backend.name,
            gpu_count=len(self._gpus),
            gpus=tuple(g.uuid for g in self._gpus),
            host=socket.gethostname(),
            unhealthy=tuple(uuid for uuid, ok in self._health_by_gpu.items() if not ok),
            address=address,
            tcp_endpoint=tcp_endpoint,
        )
        key = self._keys.node(self._config.node_name)
        await store.txn([], [Put(key, record.to_json(), lease=self._node_lease)], timeout=_STORE_TIMEOUT)

    async def _keep_node_alive(self, store: Store, view: PoolView) -> None:
        """Refresh the node's etcd lease; register again if it lapsed (etcd outage) or the key went away."""
        while True:
            await asyncio.sleep(_NODE_TTL / 3)
            try:
                asked = time.monotonic()
                left = await store.refresh(self._node_lease, timeout=_STORE_TIMEOUT)
                lapsed = left <= 0
                if not lapsed:
                    self._node_alive_until = asked + left
                if lapsed or view.node(self._config.node_name) is None:
                    log.warning("node registration lost; registering again", lease_lapsed=lapsed)
                    await self._register_node(store)
            except StoreError as exc:
                log.warning("cannot refresh node lease", error=str(exc))

    async def _reap(self, allocator: Allocator) -> None:
        """Expire leases whose liveness key vanished (their client stopped heartbeating)."""
        while True:
            lease_id = await self._expiring.get()
            try:
                ended = await allocator.end(
                    lease_id, LeaseState.EXPIRED, reasons.END_EXPIRED, "no heartbeat within the lease TTL"
                )
                log.info("lease expired", lease=lease_id, state=ended.state.value)
            except Refusal as refusal:
                log.info("lease not expired", lease=lease_id, reason=refusal.reason)
            except StoreError as exc:
                log.warning("cannot expire lease yet; retrying", lease=lease_id, error=str(exc))
                await asyncio.sleep(1.0)
                self._expiring.put_nowait(lease_id)

    async def _watch_gpu_health(self, store: Store) -> None:
        """Poll the backend; publish changes in the node record so the leader places nothing on a bad GPU."""
        stale = False
        while True:
            for uuid in list(self._health_by_gpu):
                try:
                    ok = await asyncio.to_thread(self._backend.healthy, uuid)
                except BackendError:
                    ok = False
                if ok != self._health_by_gpu[uuid]:
                    log.warning("GPU health changed", gpu=uuid, healthy=ok)
                    stale = True
                self._health_by_gpu[uuid] = ok
            if stale:
                try:
                    await self._publish_node(store)
                    stale = False
                except StoreError as exc:
                    log.warning("cannot publish GPU health yet; retrying", error=str(exc))
            await asyncio.sleep(_HEALTH_POLL_S)

    async def _watchdog(self, period: float) -> None:
        while True:
            sdnotify.watchdog_ping()
            await asyncio.sleep(period)

    def _install_signals(self, auth: AuthParts) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, auth.reload_tls)
