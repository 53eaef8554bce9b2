"""The incident lifecycle as an explicit state machine. Pure: no I/O, no clock.

States are the enum of ``schemas/incident.v1.avsc``::

    (new signal) ──▶ open ──ack──▶ acknowledged ──resolve──▶ resolved
                      │  ▲                                    │  ▲
                      │  └── escalate (owner changes,         │  │
                      │       state stays)                    │  │
                      └─────────────resolve───────────────────┘  │
    resolved ──recur (a signal after resolution)──▶ reopened ────┘ resolve
    reopened ──ack──▶ acknowledged;  reopened ──escalate──▶ reopened

Everything not in :data:`TRANSITIONS` is refused with :class:`IllegalTransition`: acking an
acknowledged or resolved incident, resolving twice, escalating an incident someone already
acknowledged, a signal "recurring" an incident that is not resolved (that is an update).
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"


class Event(StrEnum):
    ACKNOWLEDGE = "acknowledge"  # an owner took it (CLI/API, with actor and reason)
    RESOLVE = "resolve"  # an owner closed it (CLI/API, with actor and reason)
    RECUR = "recur"  # a signal for a resolved incident
    ESCALATE = "escalate"  # nobody acknowledged in time: hand to the second owner


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.OPEN, Event.ACKNOWLEDGE): State.ACKNOWLEDGED,
    (State.REOPENED, Event.ACKNOWLEDGE): State.ACKNOWLEDGED,
    (State.OPEN, Event.RESOLVE): State.RESOLVED,
    (State.ACKNOWLEDGED, Event.RESOLVE): State.RESOLVED,
    (State.REOPENED, Event.RESOLVE): State.RESOLVED,
    (State.RESOLVED, Event.RECUR): State.REOPENED,
    # Escalation moves the incident to another owner; the state says nobody has it yet.
    (State.OPEN, Event.ESCALATE): State.OPEN,
    (State.REOPENED, Event.ESCALATE): State.REOPENED,
}

# States in which the owner still wants to hear about new activity. An acknowledged incident
# keeps counting but stays quiet: someone is already on it.
NOTIFYING = frozenset({State.OPEN, State.REOPENED})
# States that wait for an owner to acknowledge (and escalate when nobody does).
UNACKNOWLEDGED = NOTIFYING


class IllegalTransition(ValueError):
    """``event`` is not allowed in ``state``; the message is fit for an operator."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"cannot {event.value} an incident that is {state.value}")
        self.state = state
        self.event = event


def transition(state: str, event: str) -> State:
    """The state after ``event``, or :class:`IllegalTransition`. Unknown names raise ValueError."""
    s, e = State(state), Event(event)
    nxt = TRANSITIONS.get((s, e))
    if nxt is None:
        raise IllegalTransition(s, e)
    return nxt


def allowed(state: str, event: str) -> bool:
    return (State(state), Event(event)) in TRANSITIONS
