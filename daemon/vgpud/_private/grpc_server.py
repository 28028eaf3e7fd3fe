"""vgpud's gRPC server: the Unix socket (behind the door that caps connections per uid), TCP, health, reflection.

Health serves Check, Watch and List; reflection answers as grpc.reflection.v1 and as v1alpha.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from vgpu._private.local_credential import CREDENTIAL_SUFFIX
from vgpu.api.v1 import admin_pb2, jobs_pb2, workload_pb2
from vgpud._private.auth.server_tls import ServerTls
from vgpud._private.config import DaemonConfig
from vgpud._private.connections.grpc_options import server_options
from vgpud._private.connections.unix_door import UnixDoor
from vgpud._private.jobs.service import JobService
from vgpud._private.node_parts import StartupError
from vgpud._private.services import reflection as reflection_v1
from vgpud._private.services.admin import AdminService
from vgpud._private.services.health import HealthServicer
from vgpud._private.services.registration import BadBodies, add_service
from vgpud._private.services.serving import Serving
from vgpud._private.services.workload import WorkloadService

log = structlog.get_logger("vgpud")

_SUN_PATH_MAX = 107
"""A Unix socket path holds 108 bytes with its terminating NUL; the credential and inner sockets' names are longer."""
_INNER_EXTRA = len("/..grpc/s")


def inner_socket(path: Path) -> Path:
    """GRPC's own socket behind the door, in a 0700 directory beside the public socket (only root reaches it)."""
    return path.parent / f".{path.name}.grpc" / "s"


def prepare_socket(path: Path) -> None:
    """Refuse when another daemon answers on the socket; clear a stale socket file left by a crash."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the socket directory {path.parent}: {exc.strerror or exc}") from None
    if len(str(path)) > _SUN_PATH_MAX - max(len(CREDENTIAL_SUFFIX), _INNER_EXTRA):
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


def _prepare_inner(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.parent.chmod(0o700)
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot prepare {path.parent}: {exc.strerror or exc}") from None


async def start_grpc_server(
    serving: Serving, cfg: DaemonConfig, tls: ServerTls | None, door_metrics: DoorMetrics, jobs: JobService
) -> tuple[grpc.aio.Server, HealthServicer, UnixDoor]:
    """The gRPC server on the Unix socket (and, with mutual TLS only, on TCP), serving and reporting SERVING."""
    server = grpc.aio.server(options=server_options(cfg.limits))
    bad = BadBodies(serving.log_limit, serving.on_error)
    health_servicer = HealthServicer()
    services = (
        (WorkloadService(serving), workload_pb2.DESCRIPTOR.services_by_name["WorkloadService"]),
        (AdminService(serving), admin_pb2.DESCRIPTOR.services_by_name["AdminService"]),
        (jobs, jobs_pb2.DESCRIPTOR.services_by_name["JobService"]),
        (health_servicer, health_pb2.DESCRIPTOR.services_by_name["Health"]),
    )
    for servicer, descriptor in services:
        add_service(server, servicer, descriptor, bad)
    names = (*(descriptor.full_name for _, descriptor in services), reflection.SERVICE_NAME, reflection_v1.V1_SERVICE)
    v1alpha = reflection.aio.ReflectionServicer(names)
    add_service(server, v1alpha, reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"], bad)
    v1 = reflection_v1.DESCRIPTOR.services_by_name["ServerReflection"]
    add_service(server, reflection_v1.ReflectionV1(v1alpha), v1, bad)
    inner = inner_socket(cfg.socket_path)
    _prepare_inner(inner)
    try:
        server.add_insecure_port(f"unix:{inner}")
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {inner}: {exc}") from None
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
    door = UnixDoor(
        cfg.socket_path,
        inner,
        cfg.limits,
        log_limit=serving.log_limit,
        on_count=door_metrics.set_socket_connections,
        on_refused=door_metrics.count_connection_refusal,
    )
    try:
        await door.start()  # every local user may connect: each call proves its caller (auth/credentials.py)
    except OSError as exc:
        await server.stop(None)
        raise StartupError(f"cannot listen on {cfg.socket_path}: {exc.strerror or exc}") from None
    for name in ("", *names[:3]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, door


class DoorMetrics(Protocol):
    """What the door reports (DaemonMetrics has it)."""

    def set_socket_connections(self, n: int) -> None:
        """Connections open on the Unix socket now."""

    def count_connection_refusal(self, cap: str) -> None:
        """One connection closed at once by a cap."""
