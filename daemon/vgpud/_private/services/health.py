"""grpc.health.v1.Health with List: grpcio-health-checking serves Check and Watch but leaves List unimplemented.

vgpud advertises the whole Health service (reflection lists List), so a List call must answer: here it
returns the status of every service name the daemon has set, "" (the whole server) included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2

_LIST_RESPONSE: Final[Callable[..., Message]] = message_factory.GetMessageClass(
    descriptor_pool.Default().FindMessageTypeByName("grpc.health.v1.HealthListResponse")
)
"""HealthListResponse (the typing stubs of grpc_health predate List, so the class is looked up by descriptor)."""


class HealthServicer(health.aio.HealthServicer):
    """The library's asyncio servicer, plus List over the statuses set through `set`."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._closing = False

    async def set(self, service: str, status: int) -> None:
        """Set a service's status (ignored after `enter_graceful_shutdown`, as the library does)."""
        await super().set(service, status)
        if not self._closing:
            self._statuses[service] = status

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on."""
        await super().enter_graceful_shutdown()
        self._closing = True
        self._statuses = dict.fromkeys(self._statuses, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def List(  # noqa: N802 -- gRPC method name
        self, request: Message, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Message:
        """The status of every service name the daemon serves."""
        return _LIST_RESPONSE(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status) for name, status in sorted(self._statuses.items())
            }
        )
