"""gRPC channels to vgpud for the SDK (sync and asyncio): plaintext on the Unix socket, mutual TLS over TCP.

The daemon is usually local, so a restart takes seconds: reconnect backoff is capped low so that a call
waiting for the daemon to come back notices it quickly. On the Unix socket every call carries a credential
(local_credential.py); over TCP the client certificate is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc

from vgpu._private.endpoint import CHANNEL_OPTIONS, EndpointError, resolve_endpoint
from vgpu._private.errors import InvalidRequestError
from vgpu._private.local_credential import LocalCredential, Metadata, socket_of
from vgpu._private.tls import TlsConfig

SDK_CHANNEL_OPTIONS: Final[tuple[tuple[str, int | str], ...]] = (
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
Options = Sequence[tuple[str, int | str]]


def target_for(endpoint: str | None) -> str:
    """The endpoint to dial (argument, else $VGPU_ENDPOINT, else the default socket)."""
    try:
        return resolve_endpoint(endpoint)
    except EndpointError as exc:
        raise InvalidRequestError(str(exc)) from None


def tls_for(target: str, tls: TlsConfig | None) -> TlsConfig | None:
    """The TLS files a channel to `target` uses: none on a Unix socket; for TCP `tls`, else $VGPU_TLS_*."""
    if target.startswith("unix:"):
        return None
    chosen = tls if tls is not None else TlsConfig.from_env()
    if chosen is None:
        raise InvalidRequestError(
            f"{target} is a TCP endpoint, and vgpud serves TCP only with mutual TLS: pass "
            "tls=vgpu.TlsConfig(cert=..., key=..., ca=...) or set VGPU_TLS_CERT, VGPU_TLS_KEY and VGPU_TLS_CA"
        )
    return chosen


def credential_for(target: str) -> LocalCredential | None:
    """The credential source of a Unix socket target (None over TCP, where the certificate speaks)."""
    path = socket_of(target)
    return LocalCredential(path) if path is not None else None


def _options(target: str, tls: TlsConfig | None, base: Options) -> list[tuple[str, int | str]]:
    options = list(base)
    if target.startswith("unix:"):
        # The socket path is no host name; keep it out of the :authority header.
        options.append(("grpc.default_authority", "localhost"))
    elif tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def open_sync_channel(
    target: str, tls: TlsConfig | None = None, options: Options = SDK_CHANNEL_OPTIONS
) -> grpc.Channel:
    """A channel to `target`: plaintext on a Unix socket, mutual TLS over TCP (`tls` from tls_for)."""
    if tls is None:
        return grpc.insecure_channel(target, options=_options(target, tls, options))
    return grpc.secure_channel(target, tls.channel_credentials(), options=_options(target, tls, options))


def open_aio_channel(
    target: str, tls: TlsConfig | None = None, options: Options = SDK_CHANNEL_OPTIONS
) -> grpc.aio.Channel:
    """The asyncio twin of `open_sync_channel`."""
    opts = _options(target, tls, options)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=opts)


class _WithCredential(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the credential to every call of a channel built for tools that use raw stubs (vgpuctl, tests)."""

    def __init__(self, metadata: Callable[[], Metadata]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata()))

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Send the call with the credential."""
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Send the stream with the credential."""
        return continuation(self._details(client_call_details), request)


def authenticated_channel(
    target: str, tls: TlsConfig | None = None, options: Options = CHANNEL_OPTIONS, timeout: float = 10.0
) -> grpc.Channel:
    """A channel whose every call proves who is calling: for raw stubs (vgpuctl, tests, benchmarks).

    The SDK's own clients pass the credential per call instead, which costs less than an interceptor.
    """
    chosen = tls_for(target, tls)
    channel = open_sync_channel(target, chosen, options)
    credential = credential_for(target)
    if credential is None:
        return channel
    return grpc.intercept_channel(channel, _WithCredential(lambda: credential.metadata(timeout)))
