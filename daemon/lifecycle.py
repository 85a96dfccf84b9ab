"""The migration state machine: every state and transition, in one table.

Everything that changes a migration's state goes through :func:`transition`;
an event not allowed in the current state raises
:class:`IllegalTransition`, a typed error the client shows as it is
("cannot cutover a migration that is syncing: wait until it has converged,
or force it").  No other module assigns a state.

::

    created ──start──▶ syncing ──converged──▶ converged ──cutover──▶ cutting-over ──completed──▶ completed
                        │  ▲                      │                      │
                        │  └──────diverged────────┘                      └──failed──▶ failed ──retry──▶ syncing
                 pause/resume (paused)    abort from any non-final state ──▶ aborted    │
                                                                                        └──rollback──▶ rolled-back

A forced cutover goes from syncing straight to cutting-over.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import FailedPrecondition


class State(StrEnum):
    """Where a migration stands."""

    CREATED = "created"
    SYNCING = "syncing"
    CONVERGED = "converged"
    PAUSED = "paused"
    CUTTING_OVER = "cutting-over"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled-back"


class Event(StrEnum):
    """What can happen to a migration."""

    START = "start"
    CONVERGED = "converged"
    DIVERGED = "diverged"
    PAUSE = "pause"
    RESUME = "resume"
    CUTOVER = "cutover"
    FORCE_CUTOVER = "force-cutover"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    ABORT = "abort"
    ROLLBACK = "rollback"


S, E = State, Event

# (state, event) -> next state.  The whole machine.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.CREATED, E.START): S.SYNCING,
    (S.SYNCING, E.CONVERGED): S.CONVERGED,
    (S.CONVERGED, E.DIVERGED): S.SYNCING,
    (S.SYNCING, E.PAUSE): S.PAUSED,
    (S.CONVERGED, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.RESUME): S.SYNCING,
    (S.CONVERGED, E.CUTOVER): S.CUTTING_OVER,
    (S.SYNCING, E.FORCE_CUTOVER): S.CUTTING_OVER,
    (S.CONVERGED, E.FORCE_CUTOVER): S.CUTTING_OVER,
    (S.CUTTING_OVER, E.COMPLETED): S.COMPLETED,
    (S.CUTTING_OVER, E.FAILED): S.FAILED,
    (S.SYNCING, E.FAILED): S.FAILED,
    (S.FAILED, E.RETRY): S.SYNCING,
    (S.FAILED, E.ROLLBACK): S.ROLLED_BACK,
    **{(s, E.ABORT): S.ABORTED for s in (S.CREATED, S.SYNCING, S.CONVERGED, S.PAUSED, S.FAILED)},
}

FINAL = frozenset({S.COMPLETED, S.ABORTED, S.ROLLED_BACK})

# What to tell a person who asked for something the state does not allow.
_HINTS: dict[Event, str] = {
    E.START: "only a created migration can be started",
    E.CUTOVER: "wait until it has converged, or force the cutover",
    E.RESUME: "only a paused migration can be resumed",
    E.PAUSE: "only a syncing or converged migration can be paused",
    E.ABORT: "a completed or aborted migration cannot be aborted; a cutting-over one must finish or fail first",
    E.RETRY: "only a failed migration can be retried",
    E.ROLLBACK: "only a VM whose cutover failed can be rolled back (abort stops a migration before cutover)",
}


class IllegalTransition(FailedPrecondition):
    """An event that the migration's current state does not allow."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"cannot {event.value} a migration that is {state.value}", hint=_HINTS.get(event))
        self.state = state
        self.event = event


def transition(state: State, event: Event) -> State:
    """The state after ``event``; raises :class:`IllegalTransition` if not allowed."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def allowed(state: State) -> list[Event]:
    """Events the state accepts, for status displays and docs."""
    return [e for (s, e) in TRANSITIONS if s == state]


# How a group's state reads when its VMs differ: the first state on this list
# that any VM is in (a failure or a cutover in progress is what a person
# needs to see first; "completed" only when every VM is).
_SUMMARY_ORDER = (S.FAILED, S.CUTTING_OVER, S.PAUSED, S.CREATED, S.SYNCING, S.CONVERGED, S.COMPLETED,
                  S.ROLLED_BACK, S.ABORTED)


def summarize(states: list[State]) -> State:
    """The state of a migration whose VMs are in ``states``.

    Aborted VMs count only when every VM is aborted; a migration with some
    VMs completed and the others aborted reads as completed.
    """
    live: list[State] = [s for s in states if s is not S.ABORTED] or list(states)
    for s in _SUMMARY_ORDER:
        if s in live:
            return s
    return S.CREATED
