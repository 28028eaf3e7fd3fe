"""The one way vgpuctl talks to vgpud: a channel to the resolved endpoint and a deadline on every call.

Every `grpc.RpcError` is turned into a `CliError` (exit code + one line) before it can reach the user.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
import typer
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from vgpu._private.channels import authenticated_channel, tls_for
from vgpu._private.endpoint import CHANNEL_OPTIONS, EndpointError, resolve_endpoint
from vgpu._private.errors import InvalidRequestError
from vgpu._private.local_credential import CredentialError
from vgpu._private.tls import TlsConfig
from vgpu.api.v1 import admin_pb2_grpc
from vgpuctl._private import exit_codes
from vgpuctl._private.errors import CliError, describe_rpc_error

DEFAULT_TIMEOUT_S = 10.0

Req_contra = TypeVar("Req_contra", bound=Message, contravariant=True)
Resp_co = TypeVar("Resp_co", covariant=True)


class UnaryMethod(Protocol[Req_contra, Resp_co]):
    """What `Daemon.call` needs of a stub attribute: a unary RPC that takes a deadline."""

    def __call__(self, request: Req_contra, *, timeout: float | None = ...) -> Resp_co: ...


@dataclass(frozen=True)
class Target:
    """The global flags: where vgpud is (`--endpoint`; None: $VGPU_ENDPOINT or the default), the deadline.

    For a TCP endpoint also the TLS files (`--tls-cert/--tls-key/--tls-ca`; None: $VGPU_TLS_*).
    """

    endpoint: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    tls: TlsConfig | None = None


class Daemon:
    """An open channel to one vgpud with its stubs; `call` applies the deadline and translates errors."""

    def __init__(self, channel: grpc.Channel, endpoint: str, timeout: float, tls: TlsConfig | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.tls = tls
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        # The health stubs' typing lacks the generated methods; the method is built the way the stub does it.
        self.health_check: grpc.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    def call(self, method: UnaryMethod[Req_contra, Resp_co], request: Req_contra) -> Resp_co:
        """One unary RPC with the deadline; a refusal or a dead daemon raises `CliError`."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            rpc = type(request).DESCRIPTOR.name.removesuffix("Request")
            raise describe_rpc_error(
                error, endpoint=self.endpoint, timeout=self.timeout, rpc=rpc, subject=subject_of(request), tls=self.tls
            ) from None
        except CredentialError as error:
            raise CliError(exit_codes.UNREACHABLE, f"cannot reach vgpud at {self.endpoint}: {error}") from None


def subject_of(request: Message) -> dict[str, str]:
    """What a request is about, for error hints: {'lease': id} and/or {'project': name} when it names them."""
    subject: dict[str, str] = {}
    for field, value in request.ListFields():  # only the fields that are set
        if field.name == "lease_id":
            subject["lease"] = str(value)
        elif field.name == "project":
            subject["project"] = str(value)
        elif field.name == "quota" and value.project:
            subject["project"] = str(value.project)
    return subject


@contextmanager
def connect(target: Target) -> Iterator[Daemon]:
    """Open a channel for one command and close it after; a malformed endpoint is a usage error."""
    try:
        endpoint = resolve_endpoint(target.endpoint)
    except EndpointError as exc:
        raise CliError(exit_codes.USAGE, f"{exc} (set by --endpoint or VGPU_ENDPOINT)") from None
    try:
        tls = tls_for(endpoint, target.tls)
        channel = authenticated_channel(endpoint, tls, CHANNEL_OPTIONS, target.timeout)
    except InvalidRequestError as exc:
        hint = str(exc).replace("tls=vgpu.TlsConfig(cert=..., key=..., ca=...)", "--tls-cert, --tls-key and --tls-ca")
        raise CliError(exit_codes.USAGE, hint) from None
    with channel:
        yield Daemon(channel, endpoint, target.timeout, tls)


def target_of(ctx: typer.Context) -> Target:
    """The global flags the app callback stored on the click context (defaults when run without it)."""
    root = ctx.find_root().obj
    return root if isinstance(root, Target) else Target()
