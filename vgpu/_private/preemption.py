"""Where one lease stands in the preemption protocol, shared by `Lease` (threads) and `AsyncLease` (asyncio).

The protocol, seen from the workload: the daemon asks the lease to yield (a PREEMPT event, or a heartbeat
answer in state PREEMPTING, with a deadline); the workload saves its state (`on_preempt`), frees its GPU
memory and acknowledges (AckPreempt); the lease is SUSPENDED and waits in the queue; a RESUMED event hands
it slices again (maybe other ones, on another node) and the workload restores (`on_resume`).

`PreemptionTracker` only decides; it never blocks, calls back or talks to the daemon, so the thread and the
asyncio flavours run the same rules. Its owner holds the lease's lock around every call.

Who acts on a notice:
- a `checkpoint()` call, once the workload has made one (cooperative mode): the save runs on the thread (or
  task) that calls checkpoint(), at an iteration boundary, where the training state is consistent;
- otherwise the follower (the background thread or task that reads the lease's events), when an
  `on_preempt` callback was given (callback mode).
Never both for one notice: whoever claims it first moves the phase to SAVING.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from vgpu._private.lease_records import PreemptNotice


class Phase(enum.Enum):
    """The workload's side of the protocol (the daemon's lease state may run a little ahead)."""

    RUNNING = "running"
    """Holds its slices; no preemption asked."""
    PENDING = "pending"
    """Asked to yield; nobody has started to save yet."""
    SAVING = "saving"
    """on_preempt and the acknowledgement are under way (by a checkpoint() call or the follower)."""
    SUSPENDED = "suspended"
    """Acknowledged: the slices belong to others until the lease is resumed."""


class Work(enum.Enum):
    """What the follower should do after it read an event."""

    NOTHING = "nothing"
    SAVE = "save"
    """Run on_preempt with `tracker.notice`, then acknowledge (callback mode)."""
    RESUME = "resume"
    """The lease was resumed and no checkpoint() call waits for it: run on_resume."""


@dataclass
class PreemptionTracker:
    """The preemption phase of one lease and who handles it; every method is called under the lease lock."""

    phase: Phase = Phase.RUNNING
    notice: PreemptNotice | None = None
    cooperative: bool = False
    """A checkpoint() call was made: notices are left to checkpoint(), the follower only reports them."""
    in_checkpoint: bool = False
    """A checkpoint() call is saving or waiting for the resume: it runs on_resume itself."""
    resume_due: bool = False
    """The lease was resumed and on_resume has not run yet."""
    _handled: frozenset[dt.datetime] = frozenset()
    """Deadlines already acknowledged: a late answer that still shows one must not start a second round."""
    _follower_gave_up: dt.datetime | None = None
    """The deadline whose on_preempt raised in the follower: it is not retried there (checkpoint() may)."""
    _seen_suspended: bool = False
    _resumed_early: bool = False

    @property
    def requested(self) -> bool:
        """A preemption waits to be acted on (asked, not yet acknowledged)."""
        return self.phase in (Phase.PENDING, Phase.SAVING)

    @property
    def suspended(self) -> bool:
        """Acknowledged and not yet resumed."""
        return self.phase is Phase.SUSPENDED

    # -- what the daemon says -------------------------------------------------------------------------
    def observe_notice(self, notice: PreemptNotice | None) -> bool:
        """A preemption seen in a heartbeat answer or an event; True when it starts a new round."""
        if notice is None or notice.deadline in self._handled:
            return False
        if self.phase is Phase.RUNNING:
            self.phase = Phase.PENDING
            self.notice = notice
            self.resume_due = False  # an on_resume nobody ran belongs to an older round
            return True
        if self.phase is Phase.PENDING:
            self.notice = notice  # the daemon may have moved the deadline
        return False

    def observe_state(self, state: str) -> bool:
        """The state a lease message (event, refresh, answer) shows; True when the lease was resumed.

        Heartbeat answers do not come here: they carry no slices, so they cannot resume the lease.
        """
        if state == "suspended":
            if self.phase is Phase.SAVING:
                self._seen_suspended = True  # our acknowledgement went through; its answer is on the way
            elif self.phase in (Phase.RUNNING, Phase.PENDING):
                self.phase = Phase.SUSPENDED  # acknowledged elsewhere (e.g. a launcher), or attached while so
            return False
        if state not in ("granted", "resizing"):
            return False
        if self.phase is Phase.SAVING and self._seen_suspended:
            self._resumed_early = True  # suspended and resumed before our acknowledgement's answer arrived
            return False
        if self.phase is Phase.SUSPENDED:
            self._resume()
            return True
        return False

    # -- who acts -------------------------------------------------------------------------------------
    def begin_checkpoint(self) -> Phase:
        """A checkpoint() call starts; SAVING means it claimed the notice, SUSPENDED that it waits for the resume.

        RUNNING means there is nothing to do. A notice the follower is already saving is waited for too.
        """
        self.cooperative = True
        if self.phase is Phase.RUNNING:
            return Phase.RUNNING
        self.in_checkpoint = True
        if self.phase is Phase.PENDING:
            self.phase = Phase.SAVING
            return Phase.SAVING
        return Phase.SUSPENDED

    def end_checkpoint(self) -> None:
        """The checkpoint() call is over (resumed, failed or lost)."""
        self.in_checkpoint = False

    def begin_ack(self) -> Phase:
        """A direct ack_preempt() starts: SAVING when it may go ahead, else the phase that stops it."""
        if self.phase in (Phase.RUNNING, Phase.PENDING):
            self.phase = Phase.SAVING
            return Phase.SAVING
        return self.phase

    def take_resume(self) -> bool:
        """For a waiting checkpoint(): True once (the resume is then its to handle)."""
        if self.resume_due:
            self.resume_due = False
            return True
        return False

    def take_unwaited_resume(self) -> bool:
        """True once for a resume no checkpoint() call waits for (whoever takes it runs on_resume)."""
        if self.resume_due and not self.in_checkpoint:
            self.resume_due = False
            return True
        return False

    def follower_work(self, *, can_save: bool) -> Work:
        """What the follower does now; `can_save` is whether an on_preempt callback was given."""
        if self.take_unwaited_resume():
            return Work.RESUME
        notice = self.notice
        if (
            self.phase is Phase.PENDING
            and can_save
            and not self.cooperative
            and notice is not None
            and notice.deadline != self._follower_gave_up
        ):
            self.phase = Phase.SAVING
            return Work.SAVE
        return Work.NOTHING

    # -- outcomes -------------------------------------------------------------------------------------
    def save_failed(self, *, by_follower: bool) -> None:
        """on_preempt raised (or the acknowledgement failed): nothing was acknowledged, the notice stands."""
        if self.phase is Phase.SAVING:
            self.phase = Phase.PENDING if self.notice is not None else Phase.RUNNING
        if by_follower and self.notice is not None:
            self._follower_gave_up = self.notice.deadline
        self._seen_suspended = self._resumed_early = False

    def acked(self) -> bool:
        """AckPreempt succeeded; True when its answer is news (no event told of the suspension yet).

        When an event already showed the lease suspended, or even resumed, the answer is older than what
        the lease shows and must not be applied over it.
        """
        if self.notice is not None:
            self._handled |= {self.notice.deadline}
        news = not self._seen_suspended
        if self._resumed_early:
            self._resume()
        else:
            self.phase = Phase.SUSPENDED
            self.resume_due = False
        self._seen_suspended = self._resumed_early = False
        return news

    def reconcile(self, state: str) -> bool:
        """AckPreempt was refused as 'not preempting'; `state` is the lease's state read afterwards.

        Suspended: acknowledged elsewhere, wait for the resume as after our own acknowledgement. Holding its
        slices after a notice: the daemon withdrew the preemption; what was saved is restored (on_resume) at
        once. False otherwise (e.g. a direct ack_preempt() with no preemption asked): the refusal stands.
        """
        if state == "suspended":
            self.acked()
            return True
        if state in ("granted", "resizing") and self.notice is not None:
            self.withdrawn()
            return True
        self.save_failed(by_follower=False)
        return False

    def withdrawn(self) -> None:
        """The daemon no longer asks (AckPreempt refused as not preempting, and the lease holds its slices)."""
        if self.notice is not None:
            self._handled |= {self.notice.deadline}
        self._resume()
        self._seen_suspended = self._resumed_early = False

    def _resume(self) -> None:
        self.phase = Phase.RUNNING
        self.notice = None
        self.resume_due = True
