"""Every daemon reason (and bare status code) becomes the right VgpuError; no grpc.RpcError escapes."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import grpc
import pytest

import vgpu
from tests.unit.test_sdk_support import TOKEN, Fail, FakeWorkload, fake_daemon, short_tmp_dir
from vgpu._private import errors, reasons

BY_REASON: list[tuple[str, grpc.StatusCode, type[vgpu.VgpuError]]] = [
    (reasons.INVALID_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, vgpu.InvalidRequestError),
    (reasons.UNKNOWN_GPU_MODEL, grpc.StatusCode.INVALID_ARGUMENT, vgpu.InvalidRequestError),
    (reasons.UNKNOWN_MIG_PROFILE, grpc.StatusCode.INVALID_ARGUMENT, vgpu.InvalidRequestError),
    (reasons.NO_CAPACITY, grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.NoCapacityError),
    (reasons.QUEUE_FULL, grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.QueueFullError),
    (reasons.TOO_MANY_WAITING, grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.QueueFullError),
    (reasons.TOO_MANY_CONNECTIONS, grpc.StatusCode.UNAVAILABLE, vgpu.DaemonUnavailableError),
    (reasons.NEVER_FITS, grpc.StatusCode.FAILED_PRECONDITION, vgpu.NeverFitsError),
    (reasons.QUEUE_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED, vgpu.QueueTimeoutError),
    (reasons.LEASE_NOT_FOUND, grpc.StatusCode.NOT_FOUND, vgpu.LeaseNotFoundError),
    (reasons.LEASE_TOKEN_MISMATCH, grpc.StatusCode.PERMISSION_DENIED, vgpu.LeasePermissionError),
    (reasons.LEASE_ENDED, grpc.StatusCode.FAILED_PRECONDITION, vgpu.LeaseEndedError),
    (reasons.GPU_BUSY, grpc.StatusCode.FAILED_PRECONDITION, vgpu.GpuBusyError),
    (reasons.NODE_DRAINING, grpc.StatusCode.FAILED_PRECONDITION, vgpu.NodeDrainingError),
    (reasons.NODE_DOWN, grpc.StatusCode.FAILED_PRECONDITION, vgpu.NodeDrainingError),
    (reasons.NO_LEADER, grpc.StatusCode.UNAVAILABLE, vgpu.DaemonUnavailableError),
    (reasons.NOT_IMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED, vgpu.NotSupportedError),
    (reasons.CONFLICT, grpc.StatusCode.ABORTED, vgpu.ConflictError),
    (reasons.STORE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, vgpu.DaemonUnavailableError),
    (reasons.SHUTTING_DOWN, grpc.StatusCode.UNAVAILABLE, vgpu.DaemonUnavailableError),
    (reasons.INTERNAL, grpc.StatusCode.INTERNAL, vgpu.InternalError),
    (reasons.OVER_MEMORY_BUDGET, grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.MemoryBudgetError),
    (reasons.JOB_REFUSED, grpc.StatusCode.FAILED_PRECONDITION, vgpu.PermissionDeniedError),
    (reasons.TOO_MANY_JOBS, grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.NoCapacityError),
    (reasons.JOB_NODE_LOST, grpc.StatusCode.UNAVAILABLE, vgpu.DaemonUnavailableError),
    (reasons.GPU_NOT_FOUND, grpc.StatusCode.NOT_FOUND, vgpu.InvalidRequestError),
    (reasons.NODE_NOT_FOUND, grpc.StatusCode.NOT_FOUND, vgpu.InvalidRequestError),
    (reasons.UNKNOWN_PROJECT, grpc.StatusCode.INVALID_ARGUMENT, vgpu.InvalidRequestError),
    (reasons.UNKNOWN_PRIORITY, grpc.StatusCode.INVALID_ARGUMENT, vgpu.InvalidRequestError),
    (reasons.PROJECT_NOT_FOUND, grpc.StatusCode.NOT_FOUND, vgpu.InvalidRequestError),
    (reasons.OVER_QUOTA, grpc.StatusCode.FAILED_PRECONDITION, vgpu.QuotaExceededError),
    (reasons.OVER_QUOTA, grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.QuotaExceededError),
    (reasons.NOT_PREEMPTIBLE, grpc.StatusCode.FAILED_PRECONDITION, vgpu.NotPreemptibleError),
    (reasons.NOT_PREEMPTING, grpc.StatusCode.FAILED_PRECONDITION, vgpu.LeaseStateError),
    (reasons.PROJECT_BUSY, grpc.StatusCode.FAILED_PRECONDITION, vgpu.ConflictError),
    (reasons.CREDENTIAL_MISSING, grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (reasons.CREDENTIAL_INVALID, grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (reasons.CREDENTIAL_EXPIRED, grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (reasons.CERTIFICATE_INVALID, grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (reasons.CERTIFICATE_EXPIRED, grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (reasons.CERTIFICATE_UNTRUSTED, grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (reasons.WRONG_CLUSTER, grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (reasons.ROLE_NOT_ALLOWED, grpc.StatusCode.PERMISSION_DENIED, vgpu.PermissionDeniedError),
    (reasons.NOT_PROJECT_MEMBER, grpc.StatusCode.PERMISSION_DENIED, vgpu.PermissionDeniedError),
    (reasons.PRIORITY_NOT_ALLOWED, grpc.StatusCode.PERMISSION_DENIED, vgpu.PermissionDeniedError),
    (reasons.NOT_LEASE_OWNER, grpc.StatusCode.PERMISSION_DENIED, vgpu.LeasePermissionError),
]

BY_CODE: list[tuple[grpc.StatusCode, type[vgpu.VgpuError]]] = [
    (grpc.StatusCode.INVALID_ARGUMENT, vgpu.InvalidRequestError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, vgpu.DaemonUnavailableError),  # gRPC's own overload refusal: retried
    (grpc.StatusCode.NOT_FOUND, vgpu.LeaseNotFoundError),
    (grpc.StatusCode.PERMISSION_DENIED, vgpu.PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, vgpu.AuthenticationError),
    (grpc.StatusCode.UNIMPLEMENTED, vgpu.NotSupportedError),
    (grpc.StatusCode.ABORTED, vgpu.ConflictError),
    (grpc.StatusCode.UNAVAILABLE, vgpu.DaemonUnavailableError),
    (grpc.StatusCode.INTERNAL, vgpu.InternalError),
    (grpc.StatusCode.UNKNOWN, vgpu.InternalError),
]


@pytest.fixture
def daemon() -> Iterator[tuple[FakeWorkload, vgpu.Pool]]:
    with fake_daemon() as (servicer, endpoint, _), vgpu.Pool(endpoint, timeout=5.0) as pool:
        yield servicer, pool


def test_every_reason_constant_is_mapped() -> None:
    constants = {
        value
        for name, value in vars(reasons).items()
        if name.isupper() and isinstance(value, str) and not name.startswith(("END_", "DOMAIN"))
    }
    assert constants == {reason for reason, _, _ in BY_REASON}


def test_every_error_class_is_exported_and_derives_from_vgpu_error() -> None:
    for cls in errors.ERROR_CLASSES:
        assert getattr(vgpu, cls.__name__) is cls
        assert issubclass(cls, vgpu.VgpuError)
    assert issubclass(vgpu.InvalidRequestError, ValueError)
    assert issubclass(vgpu.QueueTimeoutError, TimeoutError)
    exported = {name for name, obj in inspect.getmembers(vgpu, inspect.isclass) if issubclass(obj, Exception)}
    assert exported == {cls.__name__ for cls in errors.ERROR_CLASSES}


@pytest.mark.parametrize(("reason", "code", "expected"), BY_REASON, ids=[r for r, _, _ in BY_REASON])
def test_unary_error_maps_by_reason(
    daemon: tuple[FakeWorkload, vgpu.Pool], reason: str, code: grpc.StatusCode, expected: type[vgpu.VgpuError]
) -> None:
    servicer, pool = daemon
    servicer.unary_scripts["GetLease"] = [Fail(code, reason, f"daemon says {reason}")]
    with pytest.raises(vgpu.VgpuError) as info:
        pool.get_lease("lease-0123456789ab", TOKEN)
    assert type(info.value) is expected
    assert grpc.RpcError not in type(info.value).__mro__
    assert info.value.reason == reason
    assert info.value.code == code.name
    assert info.value.message == f"daemon says {reason}"
    assert info.value.__cause__ is None


@pytest.mark.parametrize(("reason", "code", "expected"), BY_REASON, ids=[r for r, _, _ in BY_REASON])
def test_acquire_stream_error_maps_by_reason(
    daemon: tuple[FakeWorkload, vgpu.Pool], reason: str, code: grpc.StatusCode, expected: type[vgpu.VgpuError]
) -> None:
    servicer, pool = daemon
    # Retryable reasons are resent until the deadline, so give every attempt the same answer.
    servicer.acquire_scripts = [[Fail(code, reason, f"daemon says {reason}")] for _ in range(100)]
    with pytest.raises(vgpu.VgpuError) as info:
        pool.acquire(memory="1GiB", compute=0.1, wait=False, timeout=1.0)
    assert type(info.value) is expected
    assert info.value.reason == reason


@pytest.mark.parametrize(("code", "expected"), BY_CODE, ids=[c.name for c, _ in BY_CODE])
def test_status_code_alone_maps_when_there_is_no_error_info(
    daemon: tuple[FakeWorkload, vgpu.Pool], code: grpc.StatusCode, expected: type[vgpu.VgpuError]
) -> None:
    servicer, pool = daemon
    servicer.unary_scripts["ListLeases"] = [Fail(code, None, "no details")]
    with pytest.raises(vgpu.VgpuError) as info:
        pool.leases()
    assert type(info.value) is expected
    assert info.value.code == code.name


def test_unknown_reason_falls_back_to_the_status_code(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    servicer, pool = daemon
    servicer.unary_scripts["ListLeases"] = [Fail(grpc.StatusCode.NOT_FOUND, "SOMETHING_NEW", "new reason")]
    with pytest.raises(vgpu.LeaseNotFoundError) as info:
        pool.leases()
    assert info.value.reason == "SOMETHING_NEW"
    assert info.value.message == "new reason"


@pytest.mark.timeout(20)
def test_missing_socket_is_daemon_unavailable_at_once() -> None:
    with short_tmp_dir() as tmp:
        endpoint = f"unix://{tmp / 'nobody-home.sock'}"
        with vgpu.Pool(endpoint) as pool:
            # wait=True with the default 10-minute queue wait must still fail at once: nothing answers.
            with pytest.raises(vgpu.DaemonUnavailableError) as info:
                pool.acquire(memory="1GiB", compute=0.1)
            assert str(info.value).startswith(
                f"cannot reach vgpud at {endpoint}: is it running? set VGPU_ENDPOINT or pass endpoint= ("
            )
            assert info.value.code == "UNAVAILABLE"
            with pytest.raises(vgpu.DaemonUnavailableError):
                pool.leases()


@pytest.mark.timeout(20)
def test_endpoint_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with short_tmp_dir() as tmp:
        monkeypatch.setenv("VGPU_ENDPOINT", str(tmp / "env.sock"))
        with vgpu.Pool() as pool:
            assert pool.endpoint == f"unix://{tmp / 'env.sock'}"
            with pytest.raises(vgpu.DaemonUnavailableError, match=r"env\.sock"):
                pool.leases()


def test_bad_endpoint_is_an_invalid_request() -> None:
    with pytest.raises(vgpu.InvalidRequestError, match="endpoint"):
        vgpu.Pool("http://example:80")


def test_closed_pool_raises_vgpu_error(daemon: tuple[FakeWorkload, vgpu.Pool]) -> None:
    _, pool = daemon
    pool.close()
    with pytest.raises(vgpu.VgpuError) as info:
        pool.leases()
    assert info.value.reason == errors.CLIENT_CLOSED
