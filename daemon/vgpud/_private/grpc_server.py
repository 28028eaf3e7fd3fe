"""vgpud's gRPC door: the Unix socket (and optional TCP listener), its services, health and reflection."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vgpu._private.local_credential import CREDENTIAL_SUFFIX
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, workload_pb2, workload_pb2_grpc
from vgpud._private.auth.server_tls import ServerTls
from vgpud._private.config import DaemonConfig
from vgpud._private.node_parts import StartupError
from vgpud._private.services.admin import AdminService
from vgpud._private.services.serving import Serving
from vgpud._private.services.workload import WorkloadService

log = structlog.get_logger("vgpud")

_SUN_PATH_MAX = 107
"""A Unix socket path holds 108 bytes with its terminating NUL; the credential socket's name is longer still."""


def prepare_socket(path: Path) -> None:
    """Refuse when another daemon answers on the socket; clear a stale socket file left by a crash."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the socket directory {path.parent}: {exc.strerror or exc}") from None
    if len(str(path)) > _SUN_PATH_MAX - len(CREDENTIAL_SUFFIX):
        raise StartupError(f"socket path {path} is too long for a Unix socket; use a shorter --socket")
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise StartupError(f"another process is already listening on {path}; stop it or choose another --socket")


async def start_grpc_server(
    serving: Serving, cfg: DaemonConfig, tls: ServerTls | None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The gRPC server on the Unix socket (and, with mutual TLS only, on TCP), serving and reporting SERVING."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)])
    workload_pb2_grpc.add_WorkloadServiceServicer_to_server(WorkloadService(serving), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(serving), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        workload_pb2.DESCRIPTOR.services_by_name["WorkloadService"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    try:
        server.add_insecure_port(f"unix:{cfg.socket_path}")
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {cfg.socket_path}: {exc}") from None
    # Every local user may connect: each call proves its caller with a credential (auth/credentials.py).
    if cfg.tcp_listen:
        if tls is None:  # config validation refuses tcp_listen without TLS files; never serve TCP in the clear
            raise StartupError("TCP is served only with mutual TLS: set --tls-cert, --tls-key and --tls-client-ca")
        try:
            port = server.add_secure_port(cfg.tcp_listen, tls.credentials())
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {cfg.tcp_listen}: {exc}") from None
        if port == 0:
            raise StartupError(f"cannot listen on {cfg.tcp_listen}: the address is in use or invalid")
    await server.start()
    os.chmod(cfg.socket_path, 0o666)  # noqa: S103, PTH101 -- the socket is the local door for every user
    for name in ("", *names[:2]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer
