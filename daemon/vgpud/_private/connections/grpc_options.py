"""gRPC server options from the [limits] table: streams per connection, keepalive rules, idle and handshake timeouts."""

from __future__ import annotations

from typing import Final

from vgpud._private.config_limits import LimitsConfig

MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_HANDSHAKE_TIMEOUT_MS: Final = 120_000
"""A TLS client that has not finished its handshake by then is dropped (slow-handshake floods)."""
_PING_STRIKES: Final = 2
_MAX_PENDING: Final = 20_000
"""Calls gRPC accepted but the daemon has not picked up yet; past this gRPC turns new ones away with
RESOURCE_EXHAUSTED (the SDK retries those after a pause) instead of letting them age."""
_MAX_PENDING_HARD: Final = 40_000
_MAX_UNREQUESTED_S: Final = 600
"""gRPC cancels a call left unpicked this long, with a bare CANCELLED; vgpud sheds by the pending caps first."""


def server_options(limits: LimitsConfig) -> list[tuple[str, int]]:
    """Channel arguments for vgpud's grpc.aio server."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", round(limits.idle_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", _HANDSHAKE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", round(limits.keepalive_min_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", _PING_STRIKES),
        ("grpc.server.max_pending_requests", _MAX_PENDING),
        ("grpc.server.max_pending_requests_hard_limit", _MAX_PENDING_HARD),
        ("grpc.server_max_unrequested_time_in_server", _MAX_UNREQUESTED_S),
    ]
