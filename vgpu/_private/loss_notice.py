"""How a held lease is lost and how the workload hears of it: at once, not at the next heartbeat.

A mixin of `LeaseBase`. Every lease follows its own event stream (the follower: a thread for `Lease`, a task
for `AsyncLease`), so a revocation, expiry or eviction that the daemon pushes marks it lost within a round
trip; heartbeats stay the fallback (an unreachable daemon, a broken stream). Whoever notices first marks the
loss and runs `on_lost`, once. A `with` block that ends after the loss raises LeaseLostError unless
`raise_on_lost` is False, so a workload cannot finish "successfully" on GPUs it no longer held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from vgpu._private.errors import LeaseLostError

log = logging.getLogger("vgpu")

LostCallback = Callable[[str], object]
"""on_lost(reason): a plain function (or, for an AsyncLease, a coroutine function too)."""

LOSS_WATCH_DELAY: float | None = 0.2
"""Seconds after the grant before a lease without preemption callbacks opens its event stream.

The stream is there to hear of a loss; a lease released sooner (acquire/release loops) never opens one, and
a loss within the delay is still heard when it opens (its first event shows the ended lease). None: no stream
until one is needed (preemption use), for tests of a scripted daemon whose streams the test reads itself.
"""


class Cancellers(set[Callable[[], object]]):
    """The cancels of a lease's open watch streams; once closed, a stream that opens late is cancelled at once.

    Closing (release, close, loss) can race with a stream just opening on another thread (the follower):
    the stream adds its cancel and then looks at `closed`; closing sets `closed` and then cancels what is
    there, so one of the two always sees the other and no stream is left open.
    """

    closed = False

    def add(self, cancel: Callable[[], object]) -> None:
        """Remember an open stream's cancel (or cancel it now, once closed)."""
        super().add(cancel)
        if self.closed:
            cancel()

    def cancel_all(self) -> None:
        """Cancel every open stream, and any that opens from now on."""
        self.closed = True
        for cancel in list(self):
            cancel()


class LossNotice:
    """Lost-tracking of a lease this process holds (mixed into LeaseBase, which sets the fields below)."""

    _lock: threading.Lock
    _id: str
    _state: str
    _end_reason: str
    _released: bool

    def _init_loss(self, on_lost: LostCallback | None, raise_on_lost: bool) -> None:
        self._lost_reason: str | None = None
        self._end_heard = False
        """The daemon said the lease ended (a heartbeat's LEASE_ENDED) before its end event was read."""
        self.on_lost = on_lost
        """Called once with the reason when the SDK marks the lease lost (on the follower or heartbeat thread/task)."""
        self.raise_on_lost = raise_on_lost
        """Whether a `with` block that ends after a loss raises LeaseLostError (False: check `lost` yourself)."""

    @property
    def lost(self) -> bool:
        """True once the SDK stopped being able to keep the lease (ended under us, daemon gone past TTL)."""
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was marked lost, in words."""
        return self._lost_reason

    def _mark_lost(self, reason: str) -> bool:
        """Record the loss; True for the first caller only (who then calls on_lost)."""
        with self._lock:
            if self._lost_reason is not None or self._released:
                return False
            self._lost_reason = reason
        log.warning("vgpu lease %s lost: %s", self._id, reason)
        return True

    def _ended_under_us(self) -> bool:
        """Whether the last answer shows the lease ended by someone else than this process's release."""
        return self._state in ("revoked", "expired")

    def _raise_if_lost(self, body_raised: bool) -> None:
        """At the end of a `with` block: raise LeaseLostError for a lost lease, unless the body raised or opted out."""
        if body_raised or not self.raise_on_lost or self._lost_reason is None:
            return
        raise LeaseLostError(
            f"lease {self._id} was lost before the with block ended: {self._lost_reason}",
            reason=self._end_reason or None,
        )
