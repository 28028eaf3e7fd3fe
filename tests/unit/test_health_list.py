"""Health/List over what the daemon set: every service name, and NOT_SERVING for all once shutting down."""

from __future__ import annotations

from typing import Any, cast

from grpc_health.v1 import health_pb2

from vgpud._private.services.health import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def listed(servicer: HealthServicer) -> dict[str, int]:
    answer: Any = await servicer.List(cast(Any, None), cast(Any, None))
    return {name: status.status for name, status in answer.statuses.items()}


async def test_list_names_every_service_set_and_follows_shutdown() -> None:
    servicer = HealthServicer()
    assert await listed(servicer) == {"": SERVING}
    await servicer.set("vgpu.api.v1.AdminService", SERVING)
    await servicer.set("vgpu.api.v1.JobService", NOT_SERVING)
    assert await listed(servicer) == {
        "": SERVING,
        "vgpu.api.v1.AdminService": SERVING,
        "vgpu.api.v1.JobService": NOT_SERVING,
    }
    await servicer.enter_graceful_shutdown()
    await servicer.set("vgpu.api.v1.AdminService", SERVING)  # ignored from now on, as Check does
    assert await listed(servicer) == dict.fromkeys(
        ["", "vgpu.api.v1.AdminService", "vgpu.api.v1.JobService"], NOT_SERVING
    )
