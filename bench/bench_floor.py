"""What the benchmarks compare against, measured in the same run: an empty gRPC round trip plus one etcd txn."""

from __future__ import annotations

import statistics
import time
import uuid

import grpc
from grpc_health.v1 import health_pb2

from vgpud._private.store.base import ModRevisionIs, Put
from vgpud._private.store.embedded_pki import EtcdTlsFiles
from vgpud._private.store.etcd_store import EtcdStore

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of `samples`, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure_floor(
    daemon_endpoint: str, etcd_endpoint: str, samples: int, etcd_tls: EtcdTlsFiles | None = None
) -> tuple[float, float]:
    """p50 of an empty gRPC round trip and of one etcd compare-and-put transaction, in ms.

    `etcd_tls`: the client files of a TLS etcd (an embedded etcd's, as vgpud itself connects).
    """
    async with grpc.aio.insecure_channel(daemon_endpoint) as channel:
        check = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        rtts = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await check(health_pb2.HealthCheckRequest(), timeout=5)
            rtts.append(time.perf_counter() - t0)
    store = (
        await EtcdStore.connect([etcd_endpoint])
        if etcd_tls is None
        else await EtcdStore.connect([etcd_endpoint], **etcd_tls.store_args())
    )
    try:
        key = f"/bench/floor/{uuid.uuid4().hex}"
        txns = []
        revision = 0
        for i in range(samples):
            t0 = time.perf_counter()
            result = await store.txn([ModRevisionIs(key, revision)], [Put(key, str(i).encode())], timeout=5)
            txns.append(time.perf_counter() - t0)
            revision = result.revision
    finally:
        await store.close()
    return statistics.median(rtts) * 1e3, statistics.median(txns) * 1e3
