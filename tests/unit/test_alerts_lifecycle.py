"""The incident lifecycle: state machine, commands, reopening, escalation; unapproved tools."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.alerts.approved_tools import (
    ApprovedTools,
    ApprovedToolsError,
    ToolUsage,
    UnapprovedToolWatch,
)
from services.alerts.commands import CommandError, check_request, new_command
from services.alerts.incidents import IncidentBook, to_ms
from services.alerts.lifecycle import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    allowed,
    transition,
)
from services.alerts.routing import Routing, default_routing
from tests.unit.test_alerts_logic import apply1, make_signal

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
T0_MS = to_ms(T0)
MIN = 60_000


# --- the state machine --------------------------------------------------------------------


def test_legal_transitions_are_exactly_the_lifecycle() -> None:
    assert TRANSITIONS == {
        (State.OPEN, Event.ACKNOWLEDGE): State.ACKNOWLEDGED,
        (State.REOPENED, Event.ACKNOWLEDGE): State.ACKNOWLEDGED,
        (State.OPEN, Event.RESOLVE): State.RESOLVED,
        (State.ACKNOWLEDGED, Event.RESOLVE): State.RESOLVED,
        (State.REOPENED, Event.RESOLVE): State.RESOLVED,
        (State.RESOLVED, Event.RECUR): State.REOPENED,
        (State.OPEN, Event.ESCALATE): State.OPEN,
        (State.REOPENED, Event.ESCALATE): State.REOPENED,
    }
    # the states are exactly the incident schema's enum
    from trustlog.avro import incident_codec

    schema: Any = incident_codec().schema
    field = next(f for f in schema["fields"] if f["name"] == "state")
    assert [s.value for s in State] == field["type"]["symbols"]


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_other_transition_is_refused(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert transition(state, event) == TRANSITIONS[(state, event)]
        assert allowed(state, event)
    else:
        with pytest.raises(IllegalTransition) as exc:
            transition(state, event)
        assert str(exc.value) == f"cannot {event.value} an incident that is {state.value}"
        assert not allowed(state, event)


def test_unknown_names_are_errors_not_transitions() -> None:
    with pytest.raises(ValueError):
        transition("closed", "acknowledge")
    with pytest.raises(ValueError):
        transition("open", "delete")


# --- commands through the book ---------------------------------------------------------------


def _cmd(u: Any, action: str, actor: str = "alice", **kw: Any) -> dict[str, Any]:
    cmd = {
        "command_id": str(uuid.uuid4()),
        "incident_id": u.incident["incident_id"],
        "dedup_key": u.incident["dedup_key"],
        "action": action,
        "actor": actor,
        "reason": f"{actor} says so",
        "requested_at": T0_MS,
        "source": "cli",
    }
    cmd.update(kw)
    return cmd


@pytest.fixture
def book() -> IncidentBook:
    return IncidentBook(default_routing(), cooldown_seconds=600, reopen_window_seconds=86400)


def test_acknowledge_then_resolve_records_who_when_why(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)
    ack = book.command(_cmd(u, "acknowledge", "alice"), T0_MS + MIN)
    assert (ack.outcome, ack.detail) == ("applied", "open -> acknowledged")
    assert ack.update is not None and ack.update.incident["state"] == "acknowledged"
    assert ack.update.history is not None
    assert (ack.update.history.actor, ack.update.history.reason) == ("alice", "alice says so")
    assert ack.update.history.from_state == "open" and ack.update.notify is None
    assert ack.update.lifecycle["acknowledged_by"] == "alice"
    assert ack.update.lifecycle["acknowledged_at_ms"] == T0_MS + MIN
    assert ack.update.version == 2

    res = book.command(_cmd(u, "resolve", "bob"), T0_MS + 2 * MIN)
    assert (res.outcome, res.detail) == ("applied", "acknowledged -> resolved")
    assert res.update is not None and res.update.lifecycle["resolved_by"] == "bob"


def test_illegal_commands_are_refused_and_change_nothing(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)
    key = u.incident["dedup_key"]
    assert book.command(_cmd(u, "acknowledge"), T0_MS).outcome == "applied"
    before = book.state(key)
    again = book.command(_cmd(u, "acknowledge", "bob"), T0_MS)
    assert (again.outcome, again.detail, again.update) == (
        "refused",
        "cannot acknowledge an incident that is acknowledged",
        None,
    )
    esc = book.command(_cmd(u, "escalate", "trustlog-alerts"), T0_MS + 10 * 3600_000)
    assert esc.outcome == "refused" and "acknowledged" in esc.detail
    assert book.command(_cmd(u, "resolve"), T0_MS).outcome == "applied"
    twice = book.command(_cmd(u, "resolve"), T0_MS)
    assert twice.detail == "cannot resolve an incident that is resolved"
    late_ack = book.command(_cmd(u, "acknowledge"), T0_MS)
    assert late_ack.detail == "cannot acknowledge an incident that is resolved"
    assert before is not None and book.state(key) != before  # only the applied ones changed it


def test_commands_for_unknown_or_replaced_incidents_are_refused(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)
    wrong = book.command(_cmd(u, "acknowledge", incident_id=str(uuid.uuid4())), T0_MS)
    assert (wrong.outcome, wrong.detail) == ("refused", "unknown incident")
    nowhere = book.command(_cmd(u, "acknowledge", dedup_key="cost_spike|x|y"), T0_MS)
    assert nowhere.outcome == "refused"


def test_a_replayed_command_is_applied_once(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)
    cmd = _cmd(u, "acknowledge")
    assert book.command(cmd, T0_MS).outcome == "applied"
    dup = book.command(dict(cmd), T0_MS)
    assert (dup.outcome, dup.update) == ("duplicate", None)


def test_acknowledged_incident_counts_but_stays_quiet(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)
    book.command(_cmd(u, "acknowledge"), T0_MS)
    upd = apply1(book, make_signal(minutes=30), T0_MS)
    assert upd.incident["signal_count"] == 2 and upd.notify is None
    assert upd.incident["state"] == "acknowledged"


# --- reopening ---------------------------------------------------------------------------------


def test_resolved_incident_that_recurs_is_reopened_and_owner_told_again(
    book: IncidentBook,
) -> None:
    first = apply1(book, make_signal(), T0_MS)
    book.command(_cmd(first, "resolve", "bob"), T0_MS + MIN)
    again = apply1(book, make_signal(minutes=5), T0_MS + 5 * MIN)
    assert again.action == "reopened" and again.notify == "reopened"
    assert again.incident["incident_id"] == first.incident["incident_id"]
    assert again.incident["state"] == "reopened" and again.incident["signal_count"] == 2
    assert again.history is not None and again.history.from_state == "resolved"
    assert again.lifecycle["reopen_count"] == 1
    assert (
        again.lifecycle["resolved_by"] == "" and again.lifecycle["opened_at_ms"] == T0_MS + 5 * MIN
    )
    # reopened: a regular incident again (acknowledge, resolve, cooldown)
    assert apply1(book, make_signal(minutes=6), T0_MS).notify is None
    ack = book.command(_cmd(first, "acknowledge"), T0_MS + 6 * MIN)
    assert ack.detail == "reopened -> acknowledged"


def test_activity_from_before_the_resolution_does_not_reopen(book: IncidentBook) -> None:
    first = apply1(book, make_signal(minutes=0), T0_MS)
    book.command(_cmd(first, "resolve"), T0_MS + 10 * MIN)
    late = apply1(book, make_signal(minutes=3), T0_MS + 11 * MIN)  # happened before it
    assert (late.action, late.notify, late.incident["state"]) == ("updated", None, "resolved")
    assert late.incident["signal_count"] == 2


def test_recurrence_after_the_reopen_window_opens_a_new_incident(book: IncidentBook) -> None:
    first = apply1(book, make_signal(), T0_MS)
    book.command(_cmd(first, "resolve"), T0_MS)
    later = apply1(book, make_signal(minutes=24 * 60 + 1), T0_MS + 86400_000 + MIN)
    assert later.action == "created" and later.notify == "opened"
    assert later.incident["incident_id"] != first.incident["incident_id"]
    assert later.incident["state"] == "open" and later.incident["signal_count"] == 1


# --- escalation -------------------------------------------------------------------------------


def test_unacknowledged_incident_escalates_to_the_second_owner_once(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)  # cost_spike: medium, finops -> finops-lead after 2h
    assert book.escalations_due(T0_MS + 119 * MIN) == []
    (cmd,) = book.escalations_due(T0_MS + 120 * MIN)
    assert cmd["action"] == "escalate" and cmd["actor"] == "trustlog-alerts"
    assert cmd["reason"] == "unacknowledged for 2h: finops -> finops-lead"
    # asking again before the command was applied yields the same command id
    assert book.escalations_due(T0_MS + 121 * MIN)[0]["command_id"] == cmd["command_id"]

    res = book.command(cmd, T0_MS + 121 * MIN)
    assert res.outcome == "applied" and res.update is not None
    inc = res.update.incident
    assert (inc["owner"], inc["channel"], inc["state"]) == ("finops-lead", "#ai-cost", "open")
    assert res.update.notify == "escalated" and res.update.history is not None
    assert res.update.history.action == "escalated"
    assert res.update.lifecycle["primary_owner"] == "finops"
    assert res.update.lifecycle["escalated_at_ms"] == T0_MS + 121 * MIN
    assert book.escalations_due(T0_MS + 500 * MIN) == []  # one hop only
    assert book.command(cmd, T0_MS).outcome == "duplicate"
    assert book.command({**cmd, "command_id": "other"}, T0_MS + 600 * MIN).detail == (
        "already escalated"
    )
    # the second owner acknowledges
    ack = book.command(_cmd(u, "acknowledge", "cfo"), T0_MS + 130 * MIN)
    assert ack.outcome == "applied"


def test_acknowledged_or_resolved_incidents_do_not_escalate(book: IncidentBook) -> None:
    a = apply1(book, make_signal(tool="a"), T0_MS)
    r = apply1(book, make_signal(tool="r"), T0_MS)
    apply1(book, make_signal(tool="open"), T0_MS)
    book.command(_cmd(a, "acknowledge"), T0_MS)
    book.command(_cmd(r, "resolve"), T0_MS)
    due = book.escalations_due(T0_MS + 10 * 3600_000)
    assert [c["dedup_key"] for c in due] == ["cost_spike|payments|open"]


def test_an_early_escalate_command_is_refused(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)
    res = book.command(_cmd(u, "escalate", "trustlog-alerts"), T0_MS + MIN)
    assert (res.outcome, res.detail) == ("refused", "escalation not due yet")


def test_reopen_restarts_the_escalation_clock_with_the_primary_owner(book: IncidentBook) -> None:
    u = apply1(book, make_signal(), T0_MS)
    (cmd,) = book.escalations_due(T0_MS + 120 * MIN)
    book.command(cmd, T0_MS + 120 * MIN)
    book.command(_cmd(u, "resolve"), T0_MS + 130 * MIN)
    again = apply1(book, make_signal(minutes=200), T0_MS + 200 * MIN)
    assert again.incident["owner"] == "finops" and again.lifecycle["escalated_at_ms"] is None
    assert book.escalations_due(T0_MS + 300 * MIN) == []
    (cmd2,) = book.escalations_due(T0_MS + 320 * MIN)
    assert cmd2["command_id"] != cmd["command_id"]


def test_rules_without_a_second_owner_never_escalate() -> None:
    routing = Routing.from_dict(
        {
            "owners": {"o": {"kind": "group", "name": "O", "channel": "#o"}},
            "rules": {"r": {"category": "cost", "severity": "low", "title": "t", "owner": "o"}},
            "fallback": {"owner": "o"},
            "escalation": {"after": {"low": "1s"}},
        }
    )
    book = IncidentBook(routing, 60)
    u = apply1(book, make_signal("r"), T0_MS)
    assert book.escalations_due(T0_MS + 3600_000) == []
    res = book.command(_cmd(u, "escalate", "trustlog-alerts"), T0_MS + 3600_000)
    assert res.detail == "no escalation owner configured"


# --- requests from the CLI and API ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "actor", "reason"),
    [
        ("delete", "alice", "r"),
        ("ack", "", "r"),
        ("ack", "alice smith", "r"),  # a handle, not a name with spaces
        ("ack", "a" * 65, "r"),
        ("ack", "alice", ""),
        ("ack", "alice", "   "),
        ("resolve", "alice", "x" * 501),
    ],
)
def test_requests_need_a_valid_actor_and_a_reason(action: str, actor: str, reason: str) -> None:
    with pytest.raises(CommandError):
        check_request(action, actor, reason)


def test_new_command_is_a_valid_avro_record() -> None:
    from services.alerts.commands import command_codec

    cmd = new_command(
        {"incident_id": "i-1", "dedup_key": "k"}, "ack", " alice@corp ", " on it ", "cli"
    )
    assert (cmd["action"], cmd["actor"], cmd["reason"]) == ("acknowledge", "alice@corp", "on it")
    decoded = command_codec().decode(command_codec().encode(cmd))
    assert decoded["command_id"] == cmd["command_id"] and decoded["source"] == "cli"


# --- unapproved tools ----------------------------------------------------------------------------


def test_approved_tools_config() -> None:
    from trustlog.settings import CONFIG_DIR

    approved = ApprovedTools.load(CONFIG_DIR / "approved_tools.yaml")
    # the demo traffic's tools are approved, so `trustlog up` stays quiet
    from trustlog.demo import TEAMS

    for team, (tool, _, _) in TEAMS.items():
        assert approved.is_approved(team, tool), tool
    assert not approved.is_approved("support", "shadow-gpt")
    custom = ApprovedTools.from_dict({"approved": {"*": ["chat"], "research": ["notebook-*"]}})
    assert custom.is_approved("research", "notebook-lm")
    assert not custom.is_approved("sales", "notebook-lm")
    with pytest.raises(ApprovedToolsError):
        ApprovedTools.from_dict({"approved": {"x": "chat"}})
    with pytest.raises(ApprovedToolsError):
        ApprovedTools.from_dict({})


def test_unapproved_tool_usage_becomes_signals_only_when_it_grows() -> None:
    watch = UnapprovedToolWatch(ApprovedTools({"*": ["chat"]}))
    hour = T0_MS - T0_MS % 3600_000

    def usage(n: int, tool: str = "shadow") -> ToolUsage:
        return ToolUsage("sales", tool, hour, n, Decimal("1.5"))

    (sig,) = watch.signals([usage(3), usage(99, "chat")], now_ms=T0_MS)
    assert (sig["rule"], sig["team"], sig["tool"], sig["observed"]) == (
        "unapproved_tool",
        "sales",
        "shadow",
        3.0,
    )
    assert sig["window_end"] == T0_MS and sig["user_pseudonym"] is None
    assert sig["evidence"] == {"requests": "3", "cost_usd": "1.5000", "window_seconds": "3600"}
    assert watch.signals([usage(3)], now_ms=T0_MS) == []  # nothing new
    (more,) = watch.signals([usage(5)], now_ms=T0_MS)
    assert more["signal_id"] != sig["signal_id"]
    # a restarted watch repeats the last observation with the same id (a replay for the book)
    fresh = UnapprovedToolWatch(ApprovedTools({"*": ["chat"]}))
    assert fresh.signals([usage(5)], now_ms=T0_MS)[0]["signal_id"] == more["signal_id"]


def test_unapproved_tool_incident_is_security_and_deduplicated() -> None:
    book = IncidentBook(default_routing(), 3600)
    watch = UnapprovedToolWatch(ApprovedTools({"*": ["chat"]}))
    hour = T0_MS - T0_MS % 3600_000
    updates = []
    for n in (1, 2, 3):
        for sig in watch.signals([ToolUsage("sales", "shadow", hour, n, Decimal(0))], T0_MS):
            sig["window_start"] = datetime.fromtimestamp(sig["window_start"] / 1000, tz=UTC)
            sig["window_end"] = datetime.fromtimestamp(sig["window_end"] / 1000, tz=UTC)
            updates.extend(book.apply(sig, T0_MS))
    assert [u.action for u in updates] == ["created", "updated", "updated"]
    inc = updates[-1].incident
    assert (inc["category"], inc["owner"], inc["signal_count"]) == (
        "security",
        "security-oncall",
        3,
    )


def test_window_end_never_runs_ahead_of_now() -> None:
    watch = UnapprovedToolWatch(ApprovedTools({}))
    now = T0_MS + 5 * MIN
    (sig,) = watch.signals([ToolUsage("t", "x", T0_MS, 1, Decimal(0))], now_ms=now)
    assert sig["window_end"] == now
    (old,) = watch.signals([ToolUsage("t", "x", T0_MS - 3600_000, 1, Decimal(0))], now_ms=now)
    assert old["window_end"] == T0_MS
    assert timedelta(milliseconds=old["window_end"] - old["window_start"]) == timedelta(hours=1)
