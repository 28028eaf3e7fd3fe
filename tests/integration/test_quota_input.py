"""Quota input against a real daemon: absurd values are refused (INVALID_ARGUMENT, INVALID_REQUEST), by vgpuctl
before anything is sent, and a tiny limit on the default project is taken as typed but warned about and
enforced with a prompt refusal, not a wait that never ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import vgpu
from tests.integration.conftest import Admin, vgpuctl
from vgpu._private import reasons
from vgpu._private.rpc_errors import failure_of_sync_call
from vgpu.api.v1 import admin_pb2, types_pb2
from vgpu.testing import LocalPool, local_pool

U64_MAX = 2**64 - 1

ABSURD: list[tuple[dict[str, int | float], str]] = [
    # (quota fields, what the refusal names)
    ({"limit_memory_bytes": U64_MAX}, "limit_memory_bytes 18446744073709551615 is beyond any pool"),
    ({"deserved_memory_bytes": U64_MAX}, "deserved_memory_bytes 18446744073709551615 is beyond any pool"),
    ({"deserved_memory_bytes": 2**60 + 1}, "at most 1152921504606846976 bytes, 1 EiB"),
    ({"deserved_milli": U64_MAX}, "deserved_milli 18446744073709551615 is beyond any pool"),
    ({"limit_milli": 10**9 + 1}, "limit_milli 1000000001 is beyond any pool"),
    ({"over_quota_weight": 5e-324}, "over_quota_weight 5e-324 must be 0 (no share of idle capacity) or from 0.001"),
    ({"over_quota_weight": 1e308}, "over_quota_weight 1e+308 must be 0"),
    ({"over_quota_weight": 1e6 + 1}, "to 1000000"),
    ({"over_quota_weight": float("nan")}, "over_quota_weight nan must be 0"),
    ({"over_quota_weight": float("inf")}, "over_quota_weight inf must be 0"),
    ({"over_quota_weight": float("-inf")}, "over_quota_weight -inf must be 0"),
    ({"over_quota_weight": -1.0}, "over_quota_weight -1.0 must be 0"),
]


@pytest.fixture(scope="module")
def rpc() -> Iterator[Admin]:
    """Admin stubs on one daemon for the module's SetQuota checks (each names its own project)."""
    with local_pool("h100-80gb:2") as pool:
        stubs = Admin(pool.endpoint)
        yield stubs
        stubs.close()


def set_quota(admin: Admin, project: str, **fields: float) -> admin_pb2.SetQuotaResponse:
    quota = types_pb2.Quota(project=project, **fields)  # type: ignore[arg-type]  # test kwargs
    response: admin_pb2.SetQuotaResponse = admin.admin.SetQuota(admin_pb2.SetQuotaRequest(quota=quota), timeout=10)
    return response


def test_absurd_quotas_are_refused_as_invalid_argument(rpc: Admin) -> None:
    for fields, expected in ABSURD:
        with pytest.raises(grpc.RpcError) as exc:
            set_quota(rpc, "absurd", **fields)
        failure = failure_of_sync_call(exc.value)
        assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_REQUEST), fields
        assert expected in failure.message, (fields, failure.message)
        assert "\n" not in failure.message
    with pytest.raises(grpc.RpcError) as exc:  # nothing was written
        rpc.admin.GetQuota(admin_pb2.GetQuotaRequest(project="absurd"), timeout=10)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_largest_sane_quota_and_weight_zero_are_accepted(rpc: Admin) -> None:
    done = set_quota(
        rpc,
        "big",
        deserved_milli=10**9,
        deserved_memory_bytes=2**60,
        limit_memory_bytes=2**60,
        over_quota_weight=1e6,
    )
    assert done.project.quota.deserved_memory_bytes == 2**60
    assert set_quota(rpc, "big", over_quota_weight=0.0).project.quota.over_quota_weight == 0
    assert set_quota(rpc, "big", over_quota_weight=1e-3).project.quota.over_quota_weight == 1e-3


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--limit-memory", str(U64_MAX)], "is more memory than any pool holds (at most 1 EiB"),
        (["--deserved-memory", "99999999TiB"], "is more memory than any pool holds"),
        (["--limit-memory", "9" * 400], "is more memory than any pool holds"),
        (["--deserved", "99999999999999999999999gpu"], "is more than any pool holds (at most 1000000gpu)"),
        (["--limit", "1000001"], "is more than any pool holds"),
        (["--over-quota-weight", "5e-324"], "the weight '5e-324' is outside 0.001 to 1000000"),
        (["--over-quota-weight", "1e308"], "the weight '1e308' is outside 0.001 to 1000000"),
        (["--over-quota-weight", "nan"], "the weight must be a number above 0, got 'nan'"),
        (["--over-quota-weight", "inf"], "the weight must be a number above 0, got 'inf'"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40],
)
def test_vgpuctl_refuses_absurd_quota_input_itself(tmp_path: Path, flags: list[str], expected: str) -> None:
    nobody = f"unix://{tmp_path}/no-daemon.sock"  # refused before any daemon is asked: none is there
    done = subprocess.run(
        [sys.executable, "-m", "vgpuctl", "--endpoint", nobody, "quota", "set", "vision", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_a_tiny_default_limit_is_warned_about_and_refuses_larger_requests_at_once(daemon: LocalPool) -> None:
    made = vgpuctl(daemon, "quota", "set", "default", "--limit", "1m")
    assert made.returncode == 0, made.stderr
    assert "limit 0.001 GPU" in made.stdout
    assert made.stderr.startswith("warning: project default's limit of 0.001 GPU is less than one GPU")
    assert "refused at once (OVER_QUOTA)" in made.stderr
    with daemon.pool() as pool:
        for ask in ({"memory": "20GiB"}, {"gpus": 1}, {"memory": "1GiB", "compute": 0.5}):
            # wait=True (the default): a request alone above the limit is refused, not queued for ever
            with pytest.raises(vgpu.QuotaExceededError, match=r"above project default's limit of 1\b"):
                pool.acquire(timeout=30, **ask)
        with pool.acquire(memory="1MiB", compute=0.001, wait=False) as lease:  # the limit is exactly what fits
            assert len(lease.slices) == 1


def test_a_tiny_memory_limit_is_warned_about(rpc: Admin) -> None:
    answer = set_quota(rpc, "small", limit_memory_bytes=1, over_quota_weight=1)
    assert any("memory limit of 1B is less than 1GiB" in w for w in answer.warnings), answer.warnings
    assert not set_quota(rpc, "small", limit_milli=1000, over_quota_weight=1).warnings
