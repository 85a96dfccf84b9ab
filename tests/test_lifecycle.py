"""The migration state machine table."""

from __future__ import annotations

import itertools

import grpc
import pytest

from liftshift.daemon.lifecycle import FINAL, TRANSITIONS, Event, IllegalTransition, State, allowed, transition


def test_happy_path() -> None:
    s = State.CREATED
    for event in (Event.START, Event.CONVERGED, Event.CUTOVER, Event.COMPLETED):
        s = transition(s, event)
    assert s is State.COMPLETED


def test_every_pair_is_either_in_the_table_or_refused() -> None:
    for state, event in itertools.product(State, Event):
        if (state, event) in TRANSITIONS:
            assert transition(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(IllegalTransition) as info:
                transition(state, event)
            assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert state.value in str(info.value) and event.value in str(info.value)


def test_final_states_accept_nothing() -> None:
    for state in FINAL:
        assert allowed(state) == []


def test_cutover_before_convergence_says_what_to_do() -> None:
    with pytest.raises(IllegalTransition, match="wait until it has converged, or force"):
        transition(State.SYNCING, Event.CUTOVER)
    assert transition(State.SYNCING, Event.FORCE_CUTOVER) is State.CUTTING_OVER


def test_every_state_is_reachable_from_created() -> None:
    seen = {State.CREATED}
    frontier = [State.CREATED]
    while frontier:
        s = frontier.pop()
        for e in allowed(s):
            n = transition(s, e)
            if n not in seen:
                seen.add(n)
                frontier.append(n)
    assert seen == set(State)
