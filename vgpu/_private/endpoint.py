"""Where the daemon is: `--endpoint`, else `$VGPU_ENDPOINT`, else the systemd socket path.

Shared by the SDK and vgpuctl so both find vgpud the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

DEFAULT_ENDPOINT: Final = "unix:///run/vgpu/vgpud.sock"
ENV_ENDPOINT: Final = "VGPU_ENDPOINT"

# Lease RPCs are small; these keep a dead daemon from hanging a client for long and let keepalive
# notice a half-open connection.
CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # One connection per Pool, not one shared by every Pool of the process: vgpud bounds the calls of one
    # connection ([limits] max_streams_per_connection), so a process that needs more calls opens more Pools.
    ("grpc.use_local_subchannel_pool", 1),
)


class EndpointError(ValueError):
    """The endpoint string is not one vgpu can dial; the message shows accepted forms."""


def resolve_endpoint(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The gRPC target to dial, normalised: 'unix:///abs/path' or 'host:port'."""
    env = os.environ if environ is None else environ
    raw = explicit or env.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT
    return normalise_endpoint(raw)


def normalise_endpoint(raw: str) -> str:
    """Accepts unix:///path, unix:path, a bare /path, host:port, tcp://host:port."""
    text = raw.strip()
    if not text:
        raise EndpointError("empty endpoint: use unix:///run/vgpu/vgpud.sock or HOST:PORT")
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        path = "/" + path.lstrip("/") if path.startswith("//") else path
        if not path.startswith("/"):
            path = os.path.abspath(path)  # noqa: PTH100 -- a socket path string, not a Path
        return f"unix://{path}"
    if text.startswith("/"):
        return f"unix://{text}"
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    if "://" in text:
        raise EndpointError(f"unsupported endpoint {raw!r}: use unix:///path/to/vgpud.sock or HOST:PORT")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004 -- TCP port range
        raise EndpointError(f"endpoint {raw!r} is not HOST:PORT or unix:///path")
    return text
