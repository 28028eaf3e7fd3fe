"""EtcdStore and vgpud against a real 3-member etcd cluster on loopback: failover, TLS, frozen members."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.etcd_cluster import EtcdCluster, TlsFiles
from tests.integration.conftest import Admin
from tests.parent_death import assert_etcd_dies_with_killed_parent
from tests.support import open_pidfd, wait_pidfd, watcher_streams
from vgpu._private import pki
from vgpu.testing import local_pool
from vgpud._private.store.base import Put, StoreError, StorePermissionError, StoreUnavailableError, WatchEvent
from vgpud._private.store.etcd_store import EtcdStore

T = 5.0  # per-call deadline, as the daemon uses
RECOVERY_S = 10.0  # after losing a member, every kind of call works again within this
CHECK_AFTER_S = 1.0  # the watches' silence check in these tests (the daemon's default is 5 s)


def tls_args(files: TlsFiles) -> dict[str, Path]:
    return {"ca_file": files.ca_file, "cert_file": files.cert_file, "key_file": files.key_file}


@contextlib.asynccontextmanager
async def connected(cluster: EtcdCluster) -> AsyncIterator[EtcdStore]:
    """A store given every member's endpoint (TLS files when the cluster serves TLS)."""
    files = tls_args(cluster.tls_files) if cluster.tls_files is not None else {}
    store = await EtcdStore.connect(cluster.endpoints, connect_timeout=10, watch_check_after=CHECK_AFTER_S, **files)
    try:
        yield store
    finally:
        await store.close()


class Watcher:
    """A watch_prefix consumed by a task into a queue, so the test can write while it runs."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self.events: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self.seen: list[WatchEvent] = []
        self._task = asyncio.create_task(self._run(store.watch_prefix(prefix, start_revision=start_revision)))

    async def _run(self, events: AsyncIterator[WatchEvent]) -> None:
        async for event in events:
            self.events.put_nowait(event)

    async def until(self, key: str, timeout: float = 10.0) -> list[WatchEvent]:
        """The events up to and including the one for `key`; fails the test when it does not come in time."""
        got: list[WatchEvent] = []
        try:
            async with asyncio.timeout(timeout):
                while not got or got[-1].kv.key != key:
                    got.append(await self.events.get())
        except TimeoutError:
            raise AssertionError(f"the watch did not deliver {key} within {timeout} s (got {got})") from None
        finally:
            self.seen += got
        return got

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def one_round(store: EtcdStore, lease: int, key: str) -> None:
    """One get, txn, grant and refresh, each within the per-call deadline."""
    await store.get("/f/0", timeout=T)
    assert (await store.txn([], [Put(key, b"")], timeout=T)).succeeded
    await store.grant(10, timeout=T)
    assert await store.refresh(lease, timeout=T) > 0


async def rounds_after_losing_a_member(store: EtcdStore, lease: int, tag: str) -> float:
    """Run rounds until one succeeds whole (in RECOVERY_S), then three more that must all succeed at once.

    Returns how long recovery took. A transaction sent while the cluster had not yet noticed its lost
    leader may end "outcome unknown" (etcd drops it): that is the only failure the first rounds may see.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            await one_round(store, lease, f"/f/{tag}-recover-{attempt}")
            break
        except StoreUnavailableError:
            if time.monotonic() - started > RECOVERY_S:
                raise
    recovered = time.monotonic() - started
    assert recovered < RECOVERY_S
    for i in range(3):
        begun = time.monotonic()
        await one_round(store, lease, f"/f/{tag}-after-{i}")
        assert time.monotonic() - begun < 2.0, "calls after failover should not wait on the lost member"
    return recovered


async def assert_watch_matches_history(store: EtcdStore, watcher: Watcher, marker: str) -> None:
    """Every put under /f/ arrived on the watch exactly once, in revision order (keys are written once each)."""
    await store.txn([], [Put(marker, b"")], timeout=T)
    await watcher.until(marker)
    history = sorted((kv.mod_revision, kv.key) for kv in (await store.get_prefix("/f/", timeout=T)).kvs)
    assert [(e.kv.mod_revision, e.kv.key) for e in watcher.seen] == history


# -- (a) failover --------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["first", "second", "third", "leader"])
async def test_calls_and_watch_survive_losing_any_member(etcd_cluster: EtcdCluster, victim: str) -> None:
    async with connected(etcd_cluster) as store:
        lease = await store.grant(60, timeout=T)
        start = (await store.txn([], [Put("/f/0", b"")], timeout=T)).revision
        watcher = Watcher(store, "/f/", start)
        try:
            await one_round(store, lease, "/f/before")
            await watcher.until("/f/before")
            index = {"first": 0, "second": 1, "third": 2}.get(victim)
            etcd_cluster.kill(etcd_cluster.leader() if index is None else index)
            await rounds_after_losing_a_member(store, lease, victim)
            await assert_watch_matches_history(store, watcher, "/f/done")
        finally:
            await watcher.close()


async def test_a_frozen_member_s_watch_resumes_on_another_member(etcd_cluster: EtcdCluster) -> None:
    async with connected(etcd_cluster) as store:
        lease = await store.grant(60, timeout=T)
        start = (await store.txn([], [Put("/f/0", b"")], timeout=T)).revision
        watcher = Watcher(store, "/f/", start)
        try:
            await watcher.until("/f/0")
            hosts = [e.removeprefix("http://") for e in etcd_cluster.endpoints]
            streams = [await watcher_streams(host) for host in hosts]
            assert sorted(streams) == [0, 0, 1]
            serving = streams.index(1)
            # A quiet but healthy stream: progress is asked for and answered; nothing is yielded and the
            # stream is kept (a silence check that fired here would move it).
            await asyncio.sleep(3 * CHECK_AFTER_S)  # the silence itself is what is tested
            assert watcher.events.empty()
            assert await watcher_streams(hosts[serving]) == 1
            others = [e for i, e in enumerate(etcd_cluster.endpoints) if i != serving]
            etcd_cluster.pause(serving)
            try:
                paused_at = time.monotonic()
                # Written through the live members by another client: a transaction this store sent to the
                # frozen member would rightly end "outcome unknown", which is not what this test is about.
                writer = await EtcdStore.connect(others, connect_timeout=10)
                try:
                    await writer.txn([], [Put("/f/while-frozen", b"")], timeout=T)
                finally:
                    await writer.close()
                got = await watcher.until("/f/while-frozen", timeout=4 * CHECK_AFTER_S + 2)
                assert [e.kv.key for e in got] == ["/f/while-frozen"]
                assert time.monotonic() - paused_at < 4 * CHECK_AFTER_S + 2
                assert sum([await watcher_streams(e.removeprefix("http://")) for e in others]) == 1
                # The store's other calls get past the frozen member too (the keep-alive stream may sit on it).
                await rounds_after_losing_a_member(store, lease, "frozen")
            finally:
                etcd_cluster.resume(serving)
            await assert_watch_matches_history(store, watcher, "/f/done")
        finally:
            await watcher.close()


# -- (b) TLS -------------------------------------------------------------------------------------------
@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """3 members serving clients over TLS with client certificates required; member 0's certificate names
    only "localhost" and the others' only "127.0.0.1", as with per-member certificates in production.
    """
    with EtcdCluster(tmp_path / "tls", tls=True, server_names=["localhost", "127.0.0.1", "127.0.0.1"]) as cluster:
        yield cluster


async def test_tls_with_client_certificates_fails_over_between_differently_named_members(
    tls_cluster: EtcdCluster,
) -> None:
    assert tls_cluster.endpoints[0].startswith("https://localhost:")
    async with connected(tls_cluster) as store:
        lease = await store.grant(60, timeout=T)
        start = (await store.txn([], [Put("/f/0", b"")], timeout=T)).revision
        watcher = Watcher(store, "/f/", start)
        try:
            tls_cluster.kill(0)  # only the other members remain, and their certificates do not name "localhost"
            await rounds_after_losing_a_member(store, lease, "tls-0")
            tls_cluster.restart(0)
            tls_cluster.kill(1)
            await rounds_after_losing_a_member(store, lease, "tls-1")
            await assert_watch_matches_history(store, watcher, "/f/done")
        finally:
            await watcher.close()


async def test_tls_without_the_right_certificates_is_a_clear_error_at_connect(
    tls_cluster: EtcdCluster, tmp_path: Path
) -> None:
    files = tls_cluster.tls_files
    assert files is not None
    other_ca, _ = pki.create_ca(tmp_path / "other", cluster="another")
    stranger_cert, stranger_key = pki.issue(tmp_path / "other", "client", role="user")
    cases: list[tuple[Path, Path | None, Path | None, str]] = [
        (files.ca_file, None, None, "refused this client's certificate"),  # no client certificate
        (files.ca_file, stranger_cert, stranger_key, "refused this client's certificate"),  # from another CA
        (other_ca, files.cert_file, files.key_file, "certificate could not be verified"),  # etcd's CA not trusted
    ]
    for ca_file, cert_file, key_file, message in cases:
        started = time.monotonic()
        with pytest.raises(StoreError, match=message) as caught:
            await EtcdStore.connect(
                tls_cluster.endpoints, ca_file=ca_file, cert_file=cert_file, key_file=key_file, connect_timeout=10
            )
        assert not isinstance(caught.value, StoreUnavailableError), "a refused certificate is not an outage"
        assert time.monotonic() - started < 5.0, "certificate problems are reported without waiting them out"
    async with connected(tls_cluster) as store:  # and the right files work
        assert await store.get("/nothing", timeout=T) is None


# -- (c) a whole vgpud ---------------------------------------------------------------------------------
def test_vgpud_serves_while_a_member_is_down_and_after_it_returns(tls_cluster: EtcdCluster) -> None:
    files = tls_cluster.tls_files
    assert files is not None
    etcd_args = ["--etcd", ",".join(tls_cluster.endpoints), "--etcd-ca", str(files.ca_file)]
    etcd_args += ["--etcd-cert", str(files.cert_file), "--etcd-key", str(files.key_file)]
    with local_pool("h100-80gb:1", extra_args=etcd_args) as daemon, daemon.pool() as pool:
        admin = Admin(daemon.endpoint)
        try:

            def acquire_and_release() -> float:
                started = time.monotonic()
                lease = pool.acquire(memory="1GiB", compute=0.1)
                assert lease.status == "granted"
                assert admin.allocated_memory() == 1024**3
                lease.release()
                assert admin.allocated_memory() == 0
                return time.monotonic() - started

            acquire_and_release()
            tls_cluster.kill(0)  # the first listed member, which the daemon talks to first
            tls_cluster.leader()  # the rest have a leader (what any etcd client must wait for)
            assert acquire_and_release() < RECOVERY_S
            tls_cluster.restart(0)
            tls_cluster.kill(1)  # now the quorum needs the restarted member
            tls_cluster.leader()
            assert acquire_and_release() < RECOVERY_S
            assert acquire_and_release() < 2.0
        finally:
            admin.close()


# -- the launcher itself -------------------------------------------------------------------------------
def test_members_die_with_a_killed_test_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from tests.etcd_cluster import EtcdCluster
        cluster = EtcdCluster(Path(sys.argv[1]), size=1)
        cluster.start()
        print(cluster.pid(0), flush=True)
        sys.stdin.read()
        """
    )
    assert_etcd_dies_with_killed_parent(script, str(tmp_path / "c"))


def test_a_member_restarted_from_a_thread_outlives_that_thread(tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "c", size=1) as cluster:
        cluster.stop(0)
        restarter = threading.Thread(target=cluster.restart, args=(0,))
        restarter.start()
        restarter.join()
        pid = cluster.pid(0)
        assert pid is not None
        pidfd = open_pidfd(pid)
        try:
            # The parent-death signal fires as its spawning thread ends: half a second shows it did not.
            assert not wait_pidfd(pidfd, timeout=0.5), "the member died with the thread that restarted it"
            assert cluster.healthy(0)
        finally:
            os.close(pidfd)


# -- (d) etcd auth: vgpud's etcd user may touch only its pool's prefixes -----------------------------------
@pytest.fixture
def auth_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """3 TLS members with etcd auth on, set up as the README says: user `vgpud` (the CN of the client
    certificate the daemons get) holds a role with readwrite on pool `default`'s prefixes and nothing else.
    """
    with EtcdCluster(tmp_path / "auth", tls=True, auth_pool="default") as cluster:
        yield cluster


def daemon_args(cluster: EtcdCluster, files: TlsFiles) -> list[str]:
    tls = ["--etcd-ca", str(files.ca_file), "--etcd-cert", str(files.cert_file), "--etcd-key", str(files.key_file)]
    return ["--etcd", ",".join(cluster.endpoints), *tls]


def test_vgpud_serves_on_an_etcd_with_auth_holding_only_its_prefixes(auth_cluster: EtcdCluster) -> None:
    files = auth_cluster.tls_files
    assert files is not None
    args = daemon_args(auth_cluster, files)
    with local_pool("h100-80gb:1", extra_args=args) as a, local_pool("h100-80gb:1", extra_args=args) as b:
        for daemon in (a, b):
            with daemon.pool() as pool:
                lease = pool.acquire(memory="1GiB", compute=0.1)
                assert lease.status == "granted"
                lease.release()
        with a.pool() as pool:  # through the pool-wide queue: the leader's election, watch and grant
            lease = pool.acquire(gpus=1, node=b.node_name)
            assert [s.node for s in lease.slices] == [b.node_name]
            lease.release()
        logs = a.log_tail(200) + b.log_tail(200)
    assert "permission denied" not in logs.lower()
    keys = auth_cluster.etcdctl("get", "--prefix", "--keys-only", "/")  # as root
    assert f"/vgpu/default/nodes/{a.node_name}" in keys


async def test_an_etcd_user_without_the_role_is_refused(auth_cluster: EtcdCluster) -> None:
    intruder = auth_cluster.client_files("intruder")
    auth_cluster.etcdctl("user", "add", "intruder", "--no-password")  # a user of this etcd, with no role
    store = await EtcdStore.connect(
        auth_cluster.endpoints,
        ca_file=intruder.ca_file,
        cert_file=intruder.cert_file,
        key_file=intruder.key_file,
        connect_timeout=10,
    )
    try:
        with pytest.raises(StorePermissionError, match="permission denied"):
            await store.get("/vgpu/default/leader/pool", timeout=T)
        with pytest.raises(StorePermissionError, match="permission denied"):
            await store.txn([], [Put("/vgpu/default/projects/evil", b"{}")], timeout=T)
    finally:
        await store.close()
    async with connected(auth_cluster) as vgpud:  # vgpud's own user: its prefixes yes, anything else no
        await vgpud.txn([], [Put("/vgpu/default/probe", b"")], timeout=T)
        with pytest.raises(StorePermissionError):
            await vgpud.txn([], [Put("/elsewhere", b"")], timeout=T)
        with pytest.raises(StorePermissionError):
            await vgpud.get_prefix("/vgpu/", timeout=T)
        assert await vgpud.get("/vgpu/default/projects/evil", timeout=T) is None


def test_a_daemon_of_another_pool_is_refused_naming_the_permission(auth_cluster: EtcdCluster, tmp_path: Path) -> None:
    files = auth_cluster.tls_files
    assert files is not None
    state = tmp_path / "state"
    result = subprocess.run(
        [
            *[sys.executable, "-m", "vgpud", "--sim", "h100-80gb:1", "--cluster", "blue"],
            *["--state-dir", str(state), "--socket", str(state / "vgpud.sock"), *daemon_args(auth_cluster, files)],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "permission denied" in result.stderr
    assert "role for vgpud" in result.stderr
