"""`vgpuctl health`: the standard gRPC health check, for scripts and probes (exit 0 when SERVING)."""

from __future__ import annotations

from typing import Annotated

import typer
from grpc_health.v1 import health_pb2

from vgpuctl._private import exit_codes, render
from vgpuctl._private.render import JsonFlag
from vgpuctl._private.transport import connect, target_of

Service = Annotated[
    str,
    typer.Option(
        "--service",
        metavar="NAME",
        help="A gRPC service to ask about, e.g. vgpu.api.v1.AdminService; default: the daemon as a whole.",
    ),
]


def health(ctx: typer.Context, service: Service = "", as_json: JsonFlag = False) -> None:
    """Ask vgpud whether it is serving; exit 0 when SERVING, 1 when not."""
    with connect(target_of(ctx)) as daemon:
        response = daemon.call(daemon.health_check, health_pb2.HealthCheckRequest(service=service))
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if as_json:
        render.print_json({"service": service, "status": status, "endpoint": daemon.endpoint})
    else:
        render.print_line(status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(exit_codes.REFUSED)
