"""What the gRPC servicers share: the pool view, the allocator, the queue and this node's settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass

from vgpud._private.allocator import Allocator
from vgpud._private.pool_queue import PoolQueue
from vgpud._private.pool_view import PoolView
from vgpud._private.registry import Keys
from vgpud._private.store.base import Store


@dataclass(slots=True)
class Serving:
    """Handles the servicers need; built once by daemon.py."""

    store: Store
    keys: Keys
    view: PoolView
    allocator: Allocator
    queue: PoolQueue
    node: str
    """This daemon's node name."""
    endpoint: str
    """What clients on this node dial (put into lease environments)."""
    known_models: Collection[str]
    known_profiles: Collection[str]
    """Every MIG profile name of the geometry table (what a mig= request may name)."""
    default_ttl: int
    ttl_bounds: tuple[int, int]
    rpc_timeout: float
    """Deadline for store calls when the client sent none."""
    max_queue_wait: float
    """Longest a waiting acquire is held when the client sent no deadline."""
    stopping: asyncio.Event
    on_error: Callable[[str, str], None] = lambda _method, _code: None
    on_acquire: Callable[[float, str], None] = lambda _seconds, _outcome: None
    healthy: Callable[[str], bool] = lambda _uuid: True
