"""A bounded chaos run: real daemons on a 3-member etcd, SDK clients, seeded kill -9 faults, then the invariants.

    .venv/bin/python -m tests.chaos.run --daemons 3 --seconds 60 --seed 7

Clients acquire, hold briefly, release or abandon leases while daemons and etcd members are killed and
restarted (at most one etcd member down at a time); a few long-lived leases are held through it all, and a
monitor samples etcd meanwhile for the invariants that hold at every revision (no over-commit, no orphaned
or missing claim, no lost or unhonoured lease). Then faults stop, everything down is restarted, and the
full check runs twice: with the long-lived leases still held (the daemons must agree with etcd on non-zero
allocations), and after they are released and abandoned leases have ended by TTL (the pool must be idle).
The exit code is 0 only when there are no violations and some operations succeeded; `run_chaos` is the
same for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog

import vgpu
from tests.chaos.invariants import ClientView, Report, check_pool, read_contents, static_violations
from tests.etcd_cluster import EtcdCluster, EtcdClusterError
from vgpu.testing import LocalPool
from vgpud._private.store.base import StoreError
from vgpud._private.store.etcd_store import EtcdStore

CLUSTER: Final = "chaos"
SIM: Final = "h100-80gb:1"
"""One GPU per daemon: 4 GiB slices of 0.1-0.3 compute fill it quickly, so refusals and queueing happen."""
CLIENT_TIMEOUT: Final = 3.0
ENDED: Final = frozenset({"released", "expired", "revoked"})
RESTART_TRIES: Final = 3
MONITOR_INTERVAL: Final = 0.5
SURVIVOR_TTL: Final = 20
"""TTL of the long-lived leases: long enough to ride out a daemon restart (the clients' TTL is shorter)."""
UNRECOVERABLE: Final = "unrecoverable"
SDK_CONTRACT: Final = "sdk contract"


@dataclass
class ClientStats:
    """What the client workers did, shared between their threads (update under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    granted: dict[str, ClientView] = field(default_factory=dict)
    acquired: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    released: int = 0
    release_failed: Counter[str] = field(default_factory=Counter)
    abandoned: int = 0
    lost_before_release: int = 0
    unexpected: list[str] = field(default_factory=list)

    def count(self, counter: Counter[str], exc: vgpu.VgpuError) -> None:
        """Tally an error by class and reason, e.g. DaemonUnavailableError(STORE_UNAVAILABLE)."""
        with self.lock:
            counter[f"{type(exc).__name__}({exc.reason})"] += 1


@dataclass
class ChaosResult:
    """Everything the summary prints; `ok` is the verdict."""

    seed: int
    daemons: int
    etcd_members: int
    workers: int
    seconds: float
    ttl: int
    clients: ClientStats
    faults: Counter[str]
    fault_errors: list[str]
    violations: list[str]
    reports: list[tuple[str, Report, float]]
    """(when, report, seconds waited for the pool to settle first) of each final check."""
    monitor_samples: int
    monitor_skipped: int
    survivors: int
    survivors_live: int
    survivors_lost: list[str]
    """Why the SDK gave up long-lived leases (not a violation: a slow restart may outlast their TTL)."""
    unseen_grants: int
    late_grants: list[str]
    """Leases no client saw, and those granted after the clients stopped (see `unseen_grants`)."""
    evidence: dict[str, str]
    kept_dir: Path | None = None

    @property
    def operations(self) -> int:
        """Operations that succeeded: granted acquires and confirmed releases."""
        return self.clients.acquired + self.clients.released

    @property
    def faults_injected(self) -> int:
        """Kills of daemons and etcd members (an overlapping pair counts as two)."""
        return self.faults["daemon kill -9"] + self.faults["etcd member kill -9"]

    @property
    def ok(self) -> bool:
        """No violation, and the run did something."""
        return not self.violations and self.clients.acquired > 0

    def summary(self) -> str:
        """The one summary a run prints."""
        c = self.clients

        def by_class(counter: Counter[str]) -> str:
            return ", ".join(f"{k}={n}" for k, n in counter.most_common()) or "none"

        attempts = c.acquired + sum(c.refused.values()) + sum(c.failed.values())
        lines = [
            f"vgpu chaos run: seed {self.seed}, {self.daemons} daemons ({SIM} each) on {self.etcd_members} etcd "
            f"members, {self.workers} client threads, {self.seconds:g} s of faults, lease TTL {self.ttl} s",
            f"operations: {attempts} acquires (ok {c.acquired}, refused {sum(c.refused.values())}, "
            f"failed {sum(c.failed.values())}); releases ok {c.released}, failed {sum(c.release_failed.values())}; "
            f"abandoned {c.abandoned}, lost before release {c.lost_before_release}",
            f"  refused by class: {by_class(c.refused)}",
            f"  failed by class: {by_class(c.failed)}",
            f"  release failures by class: {by_class(c.release_failed)}",
            f"faults injected: {self.faults_injected} ({by_class(self.faults)})",
            f"  fault errors: {len(self.fault_errors)}",
            *(f"    - {e}" for e in self.fault_errors),
            f"mid-run checks: {self.monitor_samples} etcd samples ({self.monitor_skipped} skipped: etcd unavailable)",
            f"long-lived leases (TTL {SURVIVOR_TTL} s): {self.survivors_live} of {self.survivors} held to the end",
            *(f"  lost: {why}" for why in self.survivors_lost),
            f"leases no client saw granted: {self.unseen_grants} ({len(self.late_grants)} after the clients stopped)",
            *(f"  {late}" for late in self.late_grants),
            *(f"final check {label} (settled in {waited:.1f} s): {r.describe()}" for label, r, waited in self.reports),
            f"violations: {len(self.violations)}",
            *(f"  - {v}" for v in self.violations),
        ]
        if self.violations and self.evidence:
            lines.append("evidence (daemon log tails):")
            for name, tail in self.evidence.items():
                lines.append(f"--- {name}")
                lines.extend(f"    {line}" for line in tail.splitlines())
        if self.kept_dir is not None:
            lines.append(f"logs kept in {self.kept_dir}")
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Shape:
    """Where a client's request may land: its daemon's node, any node (the pool leader places it), or a gang."""

    name: str
    node: str | None
    count: int = 1
    gang: bool = False


SHAPES: Final = (
    Shape("local", node=""),
    Shape("any-node", node=None),
    Shape("gang of 2 across nodes", node=None, count=2, gang=True),
)


@dataclass(frozen=True)
class ClientPlan:
    """What every client thread shares: the daemons to use, the lease TTL, the stop signal, the tallies."""

    endpoints: Sequence[str]
    seed: int
    ttl: int
    stop: threading.Event
    stats: ClientStats


def client_worker(index: int, plan: ClientPlan) -> None:
    """Acquire, hold, release (or abandon) in a loop until `stop`; every outcome is counted, nothing escapes."""
    rng = random.Random(f"{plan.seed}/client/{index}")
    pools = [vgpu.Pool(endpoint, timeout=CLIENT_TIMEOUT) for endpoint in plan.endpoints]
    stop, stats = plan.stop, plan.stats
    try:
        while not stop.is_set():
            try:
                one_lease(rng, pools, plan.ttl, stop, stats)
            except Exception as exc:  # noqa: BLE001 -- the SDK promises VgpuError only; anything else is reported
                with stats.lock:
                    stats.unexpected.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                stop.wait(0.1)
    finally:
        for pool in pools:
            with contextlib.suppress(vgpu.VgpuError):
                pool.close()


def one_lease(rng: random.Random, pools: Sequence[vgpu.Pool], ttl: int, stop: threading.Event, s: ClientStats) -> None:
    """One client cycle: acquire (fail-fast, or queued briefly), hold, then release or walk away."""
    pool = rng.choice(pools)
    wait = rng.random() < 0.25
    shape = rng.choices(SHAPES, weights=(6, 3, 1))[0]
    try:
        lease = pool.acquire(
            memory="4GiB",
            compute=rng.choice((0.1, 0.2, 0.3)),
            count=shape.count,
            node=shape.node,
            gang=shape.gang,
            wait=wait,
            timeout=rng.uniform(0.5, 2.0) if wait else None,
            description=f"chaos {shape.name}",
        )
    except (vgpu.NoCapacityError, vgpu.QueueTimeoutError) as exc:
        s.count(s.refused, exc)
        stop.wait(rng.uniform(0.02, 0.2))
        return
    except vgpu.VgpuError as exc:
        s.count(s.failed, exc)
        stop.wait(rng.uniform(0.05, 0.3))
        return
    with s.lock:
        s.acquired += 1
        s.granted[lease.id] = ClientView(lease.id)
    # Mostly short holds; some outlive a TTL so that heartbeats have to cross a fault.
    stop.wait(rng.uniform(0.05, 0.8) if rng.random() < 0.9 else rng.uniform(ttl, 2.0 * ttl))
    if rng.random() < 0.15:
        lease.close()  # a client that dies: no release, its lease must end by TTL
        with s.lock:
            s.abandoned += 1
        return
    release_and_record(lease, s)


def release_and_record(lease: vgpu.Lease, s: ClientStats) -> None:
    """Release `lease` and record what the client learnt, which the checker then holds etcd to."""
    try:
        lease.release()
    except vgpu.VgpuError as exc:
        s.count(s.release_failed, exc)  # outcome unknown: the lease is released or expires; both are fine
        return
    released_at = time.time()
    state = lease.status
    with s.lock:
        if state in ENDED or not lease.lost:
            # The daemon answered: with the ended lease, or "already ended" (then the state is not updated).
            s.released += 1
            s.granted[lease.id] = ClientView(lease.id, released_at, state if state in ENDED else "")
        else:
            s.lost_before_release += 1  # the SDK gave the lease up earlier; release() reached nobody


class Faults:
    """Seeded kill -9 of daemons and etcd members, never more than one etcd member down at a time."""

    def __init__(self, rng: random.Random, daemons: list[LocalPool], etcd: EtcdCluster) -> None:
        self.rng = rng
        self.daemons = daemons
        self.etcd = etcd
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    @property
    def kills(self) -> int:
        """Processes killed so far."""
        return self.counts["daemon kill -9"] + self.counts["etcd member kill -9"]

    def inject(self, stop: threading.Event) -> None:
        """One fault, chosen by the RNG, including the restart of what it killed."""
        kind = self.rng.choices(("daemon", "etcd", "both"), weights=(5, 4, 1))[0]
        if kind == "daemon":
            self._kill_daemon(stop)
        elif kind == "etcd":
            self._with_etcd_member_down(stop, lambda: None)
        else:
            self.counts["daemon killed during etcd outage"] += 1
            self._with_etcd_member_down(stop, lambda: self._kill_daemon(stop))

    def _kill_daemon(self, stop: threading.Event) -> None:
        i = self.rng.randrange(len(self.daemons))
        self.daemons[i].kill()
        self.counts["daemon kill -9"] += 1
        stop.wait(self.rng.uniform(0.2, 2.0))  # downtime: nothing to wait for but time
        self.start_daemon(i)

    def _with_etcd_member_down(self, stop: threading.Event, meanwhile: Callable[[], None]) -> None:
        if self.rng.random() < 0.5:
            try:
                i = self.etcd.leader(timeout=5.0)
            except EtcdClusterError as exc:
                self.errors.append(f"no etcd leader found to kill: {exc}")
                i = self.rng.randrange(self.etcd.size)
            else:
                self.counts["etcd leader among them"] += 1
        else:
            i = self.rng.randrange(self.etcd.size)
        self.etcd.kill(i)
        self.counts["etcd member kill -9"] += 1
        try:
            stop.wait(self.rng.uniform(0.3, 2.5))
            meanwhile()
        finally:
            self.start_etcd(i)

    def start_daemon(self, i: int) -> bool:
        """Start daemon `i` if it is down; a failed start is recorded and tried again (True once it runs)."""
        for attempt in range(RESTART_TRIES):
            if self.daemons[i].pid is not None:
                return True
            try:
                self.daemons[i].start()
            except vgpu.VgpuError as exc:
                self.errors.append(f"daemon {i} restart try {attempt + 1} failed: {exc}")
        return self.daemons[i].pid is not None

    def start_etcd(self, i: int) -> bool:
        """Restart etcd member `i` if it is down; failures are recorded and tried again (True once it runs)."""
        for attempt in range(RESTART_TRIES):
            if self.etcd.running(i):
                return True
            try:
                self.etcd.restart(i)
            except EtcdClusterError as exc:
                self.errors.append(f"etcd member {i} restart try {attempt + 1} failed: {exc}")
        return self.etcd.running(i)


class Monitor:
    """Samples etcd while faults run and checks what must hold at every revision; nothing here needs settling.

    The clients' views are copied before each read, so every lease in the copy was granted (or released)
    before etcd was read, and etcd reads are linearizable: a lease missing from the read is really lost.
    """

    def __init__(self, endpoints: Sequence[str], stats: ClientStats) -> None:
        self.endpoints = list(endpoints)
        self.stats = stats
        self.stop = threading.Event()
        self.samples = 0
        self.skipped = 0
        self.found: dict[str, int] = {}
        """Each distinct violation and the etcd revision it was first seen at."""
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-monitor")

    def start(self) -> None:
        """Sample in a thread of its own (its own event loop) until `close`."""
        self._thread.start()

    def close(self) -> None:
        """Stop sampling and wait for the thread."""
        self.stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            asyncio.run(self._loop())
        except Exception as exc:  # noqa: BLE001 -- reported in the summary; a dead monitor must not pass silently
            self.error = f"{type(exc).__name__}: {exc}"

    async def _loop(self) -> None:
        store = await EtcdStore.connect(self.endpoints, connect_timeout=15.0)
        try:
            while not self.stop.is_set():
                with self.stats.lock:
                    granted = dict(self.stats.granted)
                try:
                    pool = await read_contents(store, CLUSTER)
                except StoreError:
                    self.skipped += 1  # etcd lost its quorum or leader for a moment: the next sample will do
                else:
                    self.samples += 1
                    for violation in static_violations(pool, granted):
                        self.found.setdefault(violation, pool.revision)
                await asyncio.to_thread(self.stop.wait, MONITOR_INTERVAL)
        finally:
            await store.close()


async def wait_live_within(store: EtcdStore, allowed: set[str], timeout: float) -> float:
    """Poll etcd until every live lease is in `allowed` and none waits; the seconds waited (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            contents = await read_contents(store, CLUSTER)
        except StoreError:
            contents = None
        # Nothing may still wait in the queue either: a request left by a dead daemon can be granted late.
        if (
            contents is not None
            and not contents.queued
            and all(i in allowed for i, r in contents.leases.items() if not r.state.ended)
        ):
            break
        # Expiry is only visible in etcd: poll it, within the deadline.
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def settle_and_check(
    endpoints: Sequence[str],
    granted: dict[str, ClientView],
    daemons: Sequence[str],
    *,
    held: set[str],
    timeout: float,
) -> tuple[Report, float]:
    """Wait (bounded) until only the `held` leases are live, then check everything (idle when none is held)."""
    store = await EtcdStore.connect(endpoints, connect_timeout=15.0)
    try:
        waited = await wait_live_within(store, held, timeout)
        report = await check_pool(
            store, CLUSTER, granted=granted, daemons=daemons, expect_idle=not held, settle_timeout=20.0
        )
        return report, waited
    finally:
        await store.close()


async def unseen_grants(
    endpoints: Sequence[str], since: float, granted: dict[str, ClientView]
) -> tuple[int, list[str]]:
    """How many leases no client saw granted, and those granted after every client had stopped, described.

    Not a violation: a caller that gave up (client deadline, dead daemon holding its queued request) leaves
    a grant nobody holds, which ends by TTL. Late ones are worth seeing: they held capacity for nobody.
    """
    store = await EtcdStore.connect(endpoints, connect_timeout=15.0)
    try:
        contents = await read_contents(store, CLUSTER)
    finally:
        await store.close()
    unseen = sorted((r for r in contents.leases.values() if r.id not in granted), key=lambda r: r.created_at)
    late = [
        f"{r.id} ({r.owner.description}, {len(r.slices)} slice(s) on {sorted({s.node for s in r.slices})}) granted "
        f"{r.created_at - since:.1f} s after the clients stopped, ended {r.state.value} ({r.end_reason})"
        for r in unseen
        if r.created_at > since
    ]
    return len(unseen), late


class ChaosRun:
    """One session: bring the pool up, run clients under faults, recover, check, tear down."""

    def __init__(
        self, *, daemons: int, seconds: float, seed: int, workers: int, ttl: int, max_faults: int, base: Path
    ) -> None:
        self.daemons, self.seconds, self.seed, self.workers = daemons, seconds, seed, workers
        self.ttl, self.max_faults, self.base = ttl, max_faults, base
        self.survivor_ttl = max(SURVIVOR_TTL, ttl)
        self.etcd = EtcdCluster(base / "etcd", size=3)
        self.pools: list[LocalPool] = []
        self.faults = Faults(random.Random(seed), self.pools, self.etcd)
        self.stats = ClientStats()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.monitor: Monitor | None = None
        self.survivor_pools: list[vgpu.Pool] = []
        self.survivors: list[vgpu.Lease] = []
        self.survivors_live = 0
        self.violations: list[str] = []
        self.reports: list[tuple[str, Report, float]] = []
        self.evidence: dict[str, str] = {}
        self.clients_stopped_at = 0.0
        self.unseen = 0
        self.late: list[str] = []

    def start(self) -> None:
        """etcd, the daemons on it, one long-lived lease per daemon, the monitor, then the client threads."""
        self.etcd.start()
        args = ["--etcd", ",".join(self.etcd.endpoints), "--cluster", CLUSTER]
        for _ in range(self.daemons):
            self.pools.append(LocalPool(SIM, extra_args=args, ttl=self.ttl))
            self.pools[-1].start()
        for pool in self.pools:
            self.survivor_pools.append(vgpu.Pool(pool.endpoint, timeout=CLIENT_TIMEOUT))
            lease = self.survivor_pools[-1].acquire(
                memory="4GiB", compute=0.1, wait=False, ttl=self.survivor_ttl, description="survivor"
            )
            self.survivors.append(lease)
            self.stats.granted[lease.id] = ClientView(lease.id)
        self.monitor = Monitor(self.etcd.endpoints, self.stats)
        self.monitor.start()
        plan = ClientPlan([p.endpoint for p in self.pools], self.seed, self.ttl, self.stop, self.stats)
        for i in range(self.workers):
            thread = threading.Thread(target=client_worker, args=(i, plan), name=f"chaos-client-{i}")
            thread.start()
            self.threads.append(thread)

    def fault_window(self) -> None:
        """Inject faults at seeded intervals until the window or the fault budget is used up."""
        rng, faults = self.faults.rng, self.faults
        started = time.monotonic()
        end = started + self.seconds
        next_fault = started + rng.uniform(1.0, 3.0)
        while next_fault < end and faults.kills < self.max_faults:
            self.stop.wait(max(0.0, next_fault - time.monotonic()))  # clients work meanwhile; stop is not set yet
            faults.inject(self.stop)
            next_fault = time.monotonic() + rng.uniform(0.5, 3.0)
        self.stop.wait(max(0.0, end - time.monotonic()))  # the rest of the window, without faults

    def stop_clients(self) -> None:
        """Stop the client threads; each ends its current lease (release or abandon) first."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.clients_stopped_at = time.time()
        for thread in self.threads:
            if thread.is_alive():
                self.violations.append(f"{UNRECOVERABLE}: client thread {thread.name} did not stop within 60 s")
        self.violations += [f"{SDK_CONTRACT}: non-VgpuError from the SDK: {u}" for u in self.stats.unexpected]

    def recover(self) -> None:
        """Restart whatever is down, then stop the monitor and take its findings."""
        for i in range(self.etcd.size):
            if not self.faults.start_etcd(i):
                self.violations.append(f"{UNRECOVERABLE}: etcd member {i} did not come back")
        for i, pool in enumerate(self.pools):
            if not self.faults.start_daemon(i):
                self.violations.append(f"{UNRECOVERABLE}: daemon {i} did not come back:\n{pool.log_tail()}")
        assert self.monitor is not None
        self.monitor.close()
        self.violations += [f"{v} (first seen mid-run at revision {r})" for v, r in self.monitor.found.items()]
        if self.monitor.error is not None:
            self.violations.append(f"{UNRECOVERABLE}: the mid-run monitor failed: {self.monitor.error}")

    def check(self) -> None:
        """Check with the long-lived leases held (allocations to agree on), then idle after releasing them."""
        held = {lease.id for lease in self.survivors if not lease.lost}
        self.survivors_live = len(held)
        self._final_check("with the long-lived leases held", held)
        for lease in self.survivors:
            release_and_record(lease, self.stats)
        self._final_check("idle", set())
        with self.stats.lock:
            granted = dict(self.stats.granted)
        self.unseen, self.late = asyncio.run(unseen_grants(self.etcd.endpoints, self.clients_stopped_at, granted))

    def _final_check(self, label: str, held: set[str]) -> None:
        running = [p.endpoint for p in self.pools if p.pid is not None]
        with self.stats.lock:
            granted = dict(self.stats.granted)
        report, waited = asyncio.run(
            settle_and_check(self.etcd.endpoints, granted, running, held=held, timeout=30.0 + 2 * self.survivor_ttl)
        )
        self.reports.append((label, report, waited))
        self.violations += [v for v in report.violations if v not in self.violations]

    def teardown(self, *, keep: bool) -> None:
        """Stop everything; the daemons' logs are copied next to etcd's and their tails kept as evidence."""
        self.stop.set()
        if self.monitor is not None:
            self.monitor.close()
        for thread in self.threads:
            thread.join(timeout=60)
        for sdk_pool in self.survivor_pools:
            with contextlib.suppress(vgpu.VgpuError):
                sdk_pool.close()
        for i, daemon in enumerate(self.pools):
            self.evidence[f"daemon {i} ({daemon.node_name})"] = daemon.log_tail(60)
            if keep:
                with contextlib.suppress(OSError):
                    shutil.copyfile(daemon.log_path, self.base / f"daemon-{i}.log")
            daemon.cleanup()
        self.etcd.close()

    def result(self, kept_dir: Path | None) -> ChaosResult:
        """The outcome, for the summary and the verdict."""
        return ChaosResult(
            seed=self.seed,
            daemons=self.daemons,
            etcd_members=self.etcd.size,
            workers=self.workers,
            seconds=self.seconds,
            ttl=self.ttl,
            clients=self.stats,
            faults=self.faults.counts,
            fault_errors=self.faults.errors,
            violations=self.violations,
            reports=self.reports,
            monitor_samples=self.monitor.samples if self.monitor else 0,
            monitor_skipped=self.monitor.skipped if self.monitor else 0,
            survivors=len(self.survivors),
            survivors_live=self.survivors_live,
            survivors_lost=[f"{lease.id}: {lease.lost_reason}" for lease in self.survivors if lease.lost],
            unseen_grants=self.unseen,
            late_grants=self.late,
            evidence=self.evidence,
            kept_dir=kept_dir,
        )


def run_chaos(
    *,
    daemons: int = 3,
    seconds: float = 60.0,
    seed: int = 0,
    workers: int | None = None,
    ttl: int = 4,
    max_faults: int | None = None,
    base_dir: Path | None = None,
    keep_logs: bool = False,
) -> ChaosResult:
    """Run one chaos session and check the pool afterwards; logs are kept (and named) when it fails."""
    base = Path(tempfile.mkdtemp(prefix="vgpu-chaos-")) if base_dir is None else base_dir
    run = ChaosRun(
        daemons=daemons,
        seconds=seconds,
        seed=seed,
        workers=workers if workers is not None else 2 * daemons + 1,
        ttl=ttl,
        max_faults=max_faults if max_faults is not None else max(1, int(seconds / 2)),
        base=base,
    )
    completed = False
    try:
        run.start()
        run.fault_window()
        run.stop_clients()
        run.recover()
        run.check()
        completed = True
    finally:
        keep = keep_logs or bool(run.violations) or not completed
        run.teardown(keep=keep)
        if base_dir is None and not keep:
            shutil.rmtree(base, ignore_errors=True)
    return run.result(base if keep else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run, print the summary, exit 0 only on a clean run that did some work."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--daemons", type=int, default=3, help="vgpud processes (default 3)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the fault window (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault and client RNGs (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="client threads (default 2 per daemon + 1)")
    parser.add_argument("--ttl", type=int, default=4, help="lease TTL in seconds (default 4)")
    parser.add_argument("--max-faults", type=int, default=None, help="cap on kills (default seconds / 2)")
    parser.add_argument("--keep-logs", action="store_true", help="keep etcd and daemon logs even on success")
    args = parser.parse_args(argv)
    # The store client's retries log at debug level; the summary is what this command prints.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = run_chaos(
        daemons=args.daemons,
        seconds=args.seconds,
        seed=args.seed,
        workers=args.workers,
        ttl=args.ttl,
        max_faults=args.max_faults,
        keep_logs=args.keep_logs,
    )
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
