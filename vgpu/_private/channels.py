"""gRPC channels to vgpud for the SDK (sync and asyncio), with the shared options plus fast reconnects.

The daemon is usually local, so a restart takes seconds: reconnect backoff is capped low so that a call
waiting for the daemon to come back notices it quickly.
"""

from __future__ import annotations

from typing import Final

import grpc

from vgpu._private.endpoint import CHANNEL_OPTIONS, EndpointError, resolve_endpoint
from vgpu._private.errors import InvalidRequestError

SDK_CHANNEL_OPTIONS: Final[tuple[tuple[str, int | str], ...]] = (
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def target_for(endpoint: str | None) -> str:
    """The endpoint to dial (argument, else $VGPU_ENDPOINT, else the default socket)."""
    try:
        return resolve_endpoint(endpoint)
    except EndpointError as exc:
        raise InvalidRequestError(str(exc)) from None


def _options(target: str) -> list[tuple[str, int | str]]:
    options = list(SDK_CHANNEL_OPTIONS)
    if target.startswith("unix:"):
        # The socket path is no host name; keep it out of the :authority header.
        options.append(("grpc.default_authority", "localhost"))
    return options


def open_sync_channel(target: str) -> grpc.Channel:
    """A plaintext channel (unix sockets and loopback; TLS arrives with the security model)."""
    return grpc.insecure_channel(target, options=_options(target))


def open_aio_channel(target: str) -> grpc.aio.Channel:
    """The asyncio twin of `open_sync_channel`."""
    return grpc.aio.insecure_channel(target, options=_options(target))
