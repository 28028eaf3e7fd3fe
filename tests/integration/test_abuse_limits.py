"""Floods from one user stop at their caps, and other users keep being served (issue 17).

Queue caps (max_queue_length, max_waiting_per_user), the Unix socket's per-uid connection cap, and
undecodable request bodies: each refusal carries its status code and reason, and the daemon serves on.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

import vgpu
from tests.as_user import run_as
from tests.integration.conftest import config_args
from tests.integration.test_bad_input import reason_of
from vgpu._private import reasons
from vgpu._private.channels import authenticated_channel
from vgpu.testing import LocalPool, local_pool

NOBODY = 65534
CONFIG = """
max_queue_length = 5
[scheduling]
max_waiting_per_user = 3
[limits]
max_connections_per_uid = 4
bad_input_log_per_s = 1.0
"""


@pytest.fixture
def capped() -> Iterator[LocalPool]:
    """One H100, a queue of at most 5 (3 per user), 4 connections per uid; other users may reach the socket."""
    state = Path(tempfile.mkdtemp(prefix="vgpu-", dir="/tmp"))
    state.chmod(0o755)
    with local_pool("h100-80gb:1", state_dir=state, extra_args=config_args(state, CONFIG)) as pool:
        yield pool


def _wait_in_queue(pool: vgpu.Pool, queued: threading.Event, errors: list[BaseException]) -> None:
    try:
        pool.acquire(memory="40GiB", timeout=60, on_queued=lambda _info: queued.set())
    except vgpu.VgpuError as exc:
        errors.append(exc)
        queued.set()


def test_queue_caps_refuse_with_their_reason_and_other_users_still_queue(capped: LocalPool) -> None:
    with capped.pool() as root:
        holder = root.acquire(gpus=1, wait=False)
        pools = [capped.pool() for _ in range(3)]
        threads: list[threading.Thread] = []
        errors: list[BaseException] = []
        try:
            for pool in pools:
                queued = threading.Event()
                thread = threading.Thread(target=_wait_in_queue, args=(pool, queued, errors), daemon=True)
                thread.start()
                assert queued.wait(20), "the waiting acquire was never queued"
                threads.append(thread)
            assert errors == []
            with pytest.raises(vgpu.QueueFullError) as mine:
                root.acquire(memory="40GiB", timeout=20)
            assert mine.value.reason == reasons.TOO_MANY_WAITING
            assert mine.value.code == "RESOURCE_EXHAUSTED"
            assert "max_waiting_per_user = 3" in str(mine.value)
            # Another user still gets a place (2 left pool-wide), then the pool-wide cap refuses them too.
            results = run_as(
                NOBODY,
                (NOBODY,),
                f"""
import threading, vgpu
ep = {capped.endpoint!r}
seen = []
def wait_one():
    with vgpu.Pool(ep) as p:
        try:
            p.acquire(memory="40GiB", timeout=15, on_queued=lambda i: seen.append(i.position) or done.set())
        except vgpu.VgpuError as exc:
            seen.append(exc.reason); done.set()
for _ in range(2):
    done = threading.Event()
    threading.Thread(target=wait_one, daemon=True).start()
    done.wait(15)
with vgpu.Pool(ep) as p:
    try:
        p.acquire(memory="40GiB", timeout=15)
    except vgpu.QueueFullError as exc:
        emit([seen, exc.reason, str(exc)])
""",
            )
            (seen, reason, message) = results[0]
            assert all(isinstance(position, int) for position in seen), seen
            # Owners take turns: the newcomer's first request is served before root's second and third.
            assert min(seen) == 2, seen
            assert reason == reasons.QUEUE_FULL
            assert "max_queue_length = 5" in message
        finally:
            for pool in pools:
                pool.close()
            holder.release()
        for thread in threads:
            thread.join(20)


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def test_one_uid_cannot_exhaust_connections_and_others_are_still_served(capped: LocalPool) -> None:
    socket_path = capped.endpoint.removeprefix("unix://")
    results = run_as(
        NOBODY,
        (NOBODY,),
        f"""
import socket, vgpu
held, refused = [], None
for i in range(50):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({socket_path!r})
    s.settimeout(5)
    try:
        data = s.recv(4096)
    except socket.timeout:
        data = b"(open)"
    if b"TOO_MANY_CONNECTIONS" in data:
        refused = (i, data[17:].decode(errors="replace"))
        break
    held.append(s)
try:
    with vgpu.Pool(ep) as p:
        p.leases()
    emit([refused, len(held), "sdk call passed"])
except vgpu.DaemonUnavailableError as exc:
    emit([refused, len(held), exc.reason, str(exc)])
""".replace("ep)", f"{capped.endpoint!r})"),
    )
    refused, held, *sdk = results[0]
    assert refused is not None, "the uid was never refused"
    assert refused[0] == 4, refused
    assert "max_connections_per_uid = 4" in refused[1]
    assert held == 4
    assert sdk[0] == reasons.TOO_MANY_CONNECTIONS, sdk
    assert "max_connections_per_uid" in sdk[1]
    # Root is not counted: its heartbeat and acquire go through while another uid is at its cap.
    with capped.pool() as root:
        lease = root.acquire(memory="1GiB", compute=0.1, wait=False)
        lease.refresh()
        lease.release()


def test_undecodable_bodies_are_invalid_argument_without_tracebacks(capped: LocalPool) -> None:
    channel = authenticated_channel(capped.endpoint)
    try:
        for method in ("/vgpu.api.v1.WorkloadService/Heartbeat", "/grpc.health.v1.Health/Check"):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                method, request_serializer=None, response_deserializer=None
            )
            for _ in range(30):
                with pytest.raises(grpc.RpcError) as info:
                    call(b"\xff\xff\xff\xff not protobuf", timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(info.value) == reasons.INVALID_REQUEST
            assert "is not a valid" in (info.value.details() or "")
        stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/vgpu.api.v1.WorkloadService/Acquire", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stream(b"\x0a\xff\xff", timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        assert health(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
    log = capped.log_tail(400)
    assert "Traceback" not in log
    assert "Exception deserializing" not in log
    logged = log.count("undecodable request refused")
    assert 1 <= logged < 30, f"60 bad bodies were logged {logged} times; the log must be rate-limited"
