"""Alerts logic without a broker: routing, dedup and cooldown, Block Kit, privacy, pipeline."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.alerts.app import (
    COMMAND,
    SIGNAL,
    AlertsPipeline,
    IncidentStore,
    command_row,
    history_row,
    incident_row,
)
from services.alerts.commands import command_codec
from services.alerts.incidents import BatchStore, IncidentBook, dedup_key, expand, to_ms
from services.alerts.routing import Routing, RoutingError, default_routing, parse_duration, route
from services.alerts.slack import Notification, SlackNotifier, ack_command, build_message
from tests.slack_receiver import validate_payload
from trustlog.avro import incident_codec, signal_codec
from trustlog.runtime import Health, Metrics

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = to_ms(T0)


def make_signal(rule: str = "cost_spike", *, minutes: float = 0, **kw: Any) -> dict[str, Any]:
    end = T0 + timedelta(minutes=minutes)
    sig: dict[str, Any] = {
        "signal_id": str(uuid.uuid4()),
        "rule": rule,
        "team": "payments",
        "tool": "copilot",
        "model": "",
        "window_start": end - timedelta(minutes=1),
        "window_end": end,
        "observed": 12.5,
        "baseline": 3.25,
        "threshold": 6.5,
        "detected_at": end,
        "user_pseudonym": None,
        "evidence": {"requests": "420", "factor": "3.85"},
    }
    sig.update(kw)
    return sig


def roundtrip(sig: dict[str, Any]) -> dict[str, Any]:
    """What the agent sees: the signal after Avro (timestamps come back as datetimes)."""
    c = signal_codec()
    return c.decode(c.encode(sig))


def apply1(book: IncidentBook, sig: dict[str, Any], now_ms: int = NOW_MS) -> Any:
    (update,) = book.apply(sig, now_ms)
    return update


@pytest.fixture
def book() -> IncidentBook:
    return IncidentBook(default_routing(), cooldown_seconds=3600)


# --- routing ------------------------------------------------------------------------------


def test_every_rule_of_the_issue_is_configured_with_category_severity_owner() -> None:
    r = default_routing()
    wanted = {
        "cost_spike": "cost",
        "budget_threshold": "cost",
        "unknown_model": "cost",
        "error_storm": "reliability",
        "retry_storm": "reliability",
        "task_spend_spike": "cost",
        "task_error_storm": "reliability",
        "task_retry_storm": "reliability",
        "unapproved_tool": "security",
        "blocked_action": "security",
        "policy_flag": "security",
    }
    for rule, category in wanted.items():
        spec = r.rules[rule]
        assert spec.category == category and spec.owner in r.owners and spec.severity
    # one rule per sensitive-data class the redactor can flag
    from services.redactor.detect import CLASSES

    for cls in CLASSES:
        assert f"sensitive_data.{cls}" in r.rules, cls
    assert r.rules["sensitive_data.payment_card"].severity == "critical"
    assert r.rules["sensitive_data.email"].severity == "low"


def test_routes_known_rules_from_config() -> None:
    r = route("cost_spike", "payments")
    assert (r.owner, r.channel, r.category, r.severity, r.title) == (
        "finops",
        "#ai-cost",
        "cost",
        "medium",
        "Spend rate jumped",
    )
    assert (r.escalate_to, r.escalate_after_s) == ("finops-lead", 7200.0)
    s = route("sensitive_data.secret", "payments")
    assert (s.owner, s.channel, s.category, s.severity) == (
        "security-oncall",
        "#ai-security",
        "security",
        "critical",
    )
    assert s.escalate_after_s == 900.0


def test_unknown_class_falls_back_to_the_base_rule() -> None:
    r = route("sensitive_data.brand_new_class", "payments")
    assert (r.category, r.severity, r.owner) == ("security", "high", "security-oncall")
    assert "brand_new_class" in r.title


def test_unknown_rule_goes_to_fallback_as_reliability_low() -> None:
    r = route("brand_new_detector", "payments")
    assert (r.owner, r.channel, r.category, r.severity) == (
        "platform-oncall",
        "#ai-usage-alerts",
        "reliability",
        "low",
    )
    assert "brand_new_detector" in r.title


def _routing(**over: Any) -> Routing:
    data: dict[str, Any] = {
        "owners": {
            "finops": {
                "kind": "group",
                "name": "FinOps",
                "channel": "#cost",
                "escalate_to": "cfo",
            },
            "cfo": {"kind": "person", "name": "CFO", "channel": "#cost-esc"},
            "ml-lead": {"kind": "person", "name": "ML lead", "channel": "#ml"},
            "oncall": {"kind": "group", "name": "On-call", "channel": "#oncall"},
        },
        "rules": {
            "cost_spike": {"category": "cost", "severity": "high", "title": "x", "owner": "finops"}
        },
        "routes": [],
        "fallback": {"owner": "oncall"},
        "escalation": {"after": {"high": "30m"}},
    }
    data.update(over)
    return Routing.from_dict(data)


def test_team_route_beats_the_rule_owner_and_may_name_its_own_escalation() -> None:
    routing = _routing(
        routes=[{"team": "ml", "category": "cost", "owner": "ml-lead", "escalate_to": "cfo"}]
    )
    ml = routing.route("cost_spike", "ml")
    assert (ml.owner, ml.channel, ml.escalate_to, ml.escalate_channel) == (
        "ml-lead",
        "#ml",
        "cfo",
        "#cost-esc",
    )
    web = routing.route("cost_spike", "web")
    assert (web.owner, web.escalate_to, web.escalate_after_s) == ("finops", "cfo", 1800.0)


def test_no_escalation_without_second_owner_or_deadline() -> None:
    routing = _routing(escalation={"after": {}})
    assert routing.route("cost_spike", "web").escalate_to is None
    routing = _routing(routes=[{"team": "ml", "category": "cost", "owner": "ml-lead"}])
    assert routing.route("cost_spike", "ml").escalate_to is None  # ml-lead names nobody


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0)],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value, "x") == seconds


@pytest.mark.parametrize(
    "over",
    [
        {"rules": {"r": {"category": "money", "severity": "low", "title": "t", "owner": "oncall"}}},
        {
            "rules": {
                "r": {"category": "cost", "severity": "urgent", "title": "t", "owner": "oncall"}
            }
        },
        {"rules": {"r": {"category": "cost", "severity": "low", "title": "t"}}},  # no owner
        {"rules": {"r": {"category": "cost", "severity": "low", "title": "t", "owner": "ghost"}}},
        {"routes": [{"team": "*", "category": "cost", "owner": "finops"}]},
        {"routes": [{"team": "a", "category": "cost", "owner": "ghost"}]},
        {"fallback": None},
        {"fallback": {"owner": "ghost"}},
        {"escalation": {"after": {"high": "soon"}}},
        {"escalation": {"after": {"urgent": "1h"}}},
        {"owners": {"x": {"kind": "robot", "name": "X", "channel": "#x"}}},
        {"owners": {"x": {"kind": "group", "name": "X", "channel": "no-hash"}}},
        {"owners": {"x": {"kind": "group", "name": "X", "channel": "#x", "escalate_to": "x"}}},
    ],
)
def test_bad_routing_config_fails_at_load(over: dict[str, Any]) -> None:
    with pytest.raises(RoutingError):
        _routing(**over)


def test_pseudonym_channels() -> None:
    r = default_routing()
    assert r.shows_pseudonym("security", "#ai-security")
    assert not r.shows_pseudonym("security", "#ai-cost")
    assert not r.shows_pseudonym("cost", "#ai-security")


# --- dedup and cooldown ---------------------------------------------------------------------


def test_dedup_key_parts_and_escaping() -> None:
    assert dedup_key(make_signal()) == "cost_spike|payments|copilot"
    assert (
        dedup_key(make_signal("unknown_model", model="m-1")) == "unknown_model|payments|copilot|m-1"
    )
    assert (
        dedup_key(make_signal("policy_flag", evidence={"flag": "pii_export"}))
        == "policy_flag|payments|copilot|pii_export"
    )
    budget = make_signal(
        "budget_threshold",
        tool="",
        evidence={"period": "month", "period_start": "2025-03-01", "threshold_percent": "80"},
    )
    assert dedup_key(budget) == "budget_threshold|payments||2025-03-01|80"
    # model is not part of the key for other rules
    assert dedup_key(make_signal(model="m-1")) == "cost_spike|payments|copilot"
    a = dedup_key(make_signal(team="a|b", tool="c"))
    b = dedup_key(make_signal(team="a", tool="b|c"))
    assert a != b


def test_sensitive_data_splits_into_one_rule_per_class() -> None:
    sig = make_signal(
        "sensitive_data", evidence={"classes": "payment_card,email, bad class!,email"}
    )
    derived = expand(sig)
    assert [d["rule"] for d in derived] == [
        "sensitive_data.email",
        "sensitive_data.payment_card",
    ]
    assert [d["signal_id"] for d in derived] == [
        f"{sig['signal_id']}#email",
        f"{sig['signal_id']}#payment_card",
    ]
    assert derived[1]["evidence"]["class"] == "payment_card"
    # no usable class: stays the generic rule
    assert [d["rule"] for d in expand(make_signal("sensitive_data", evidence={}))] == [
        "sensitive_data"
    ]


def test_new_key_creates_open_incident_and_notifies(book: IncidentBook) -> None:
    u = apply1(book, roundtrip(make_signal()))
    assert (u.notify, u.action, u.version) == ("opened", "created", 1)
    assert u.notification_id == f"{u.incident['incident_id']}:1"
    inc = u.incident
    assert inc["state"] == "open"
    assert inc["signal_count"] == 1
    assert inc["owner"] == "finops" and inc["category"] == "cost"
    assert uuid.UUID(inc["incident_id"]).version == 4
    assert inc["first_seen"] == inc["last_seen"] == to_ms(T0)
    assert u.history is not None and u.history.action == "created"
    assert u.lifecycle["primary_owner"] == "finops" and u.lifecycle["opened_at_ms"] == NOW_MS
    # the record is publishable as is
    assert (
        incident_codec().decode(incident_codec().encode(inc))["incident_id"] == inc["incident_id"]
    )


def test_repeats_fold_into_one_incident_without_renotifying(book: IncidentBook) -> None:
    first = apply1(book, roundtrip(make_signal(minutes=0)))
    updates = [
        apply1(book, roundtrip(make_signal(minutes=m, observed=20.0 + m))) for m in range(1, 50)
    ]
    assert {u.incident["incident_id"] for u in updates} == {first.incident["incident_id"]}
    assert [u.action for u in updates] == ["updated"] * 49
    assert not any(u.notify for u in updates)
    assert not any(u.history for u in updates)  # counts are not state changes
    last = updates[-1]
    assert last.incident["signal_count"] == 50
    assert [u.version for u in updates] == list(range(2, 51))  # monotonic per incident
    assert last.incident["first_seen"] == to_ms(T0)
    assert last.incident["last_seen"] == to_ms(T0 + timedelta(minutes=49))
    assert last.incident["evidence"]["observed"] == "69"  # latest evidence wins


def test_out_of_order_signal_widens_the_window(book: IncidentBook) -> None:
    apply1(book, make_signal(minutes=10))
    upd = apply1(book, make_signal(minutes=2))
    assert upd.incident["first_seen"] == to_ms(T0 + timedelta(minutes=2))
    assert upd.incident["last_seen"] == to_ms(T0 + timedelta(minutes=10))


def test_renotifies_only_after_cooldown_of_event_time() -> None:
    book = IncidentBook(default_routing(), cooldown_seconds=600)
    assert apply1(book, make_signal(minutes=0)).notify == "opened"
    assert apply1(book, make_signal(minutes=9)).notify is None
    assert apply1(book, make_signal(minutes=10)).notify == "reminder"  # 600 s since the last
    assert apply1(book, make_signal(minutes=15)).notify is None  # cooldown restarts from there
    u = apply1(book, make_signal(minutes=20))
    assert u.notify == "reminder" and u.notification_id.endswith(":3")


@pytest.mark.parametrize(("cooldown_s", "expected"), [(3600, 1), (60, 5), (120, 3)])
def test_ten_thousand_signals_in_five_minutes_one_incident_one_post_per_cooldown(
    cooldown_s: int, expected: int
) -> None:
    """The no-flood rule on the pure book; the integration test runs it through the service."""
    book = IncidentBook(default_routing(), cooldown_seconds=cooldown_s)
    span_ms, n = 300_000, 10_000
    notified = []
    ids = set()
    for i in range(n):
        end = T0 + timedelta(milliseconds=i * span_ms // n)
        u = apply1(book, make_signal(window_end=end, window_start=end - timedelta(minutes=1)))
        ids.add(u.incident["incident_id"])
        if u.notify:
            notified.append(to_ms(end))
    assert len(ids) == 1 and u.incident["signal_count"] == n
    assert len(notified) == expected
    # never two notifications closer than the cooldown
    assert all(b - a >= cooldown_s * 1000 for a, b in itertools.pairwise(notified))


def test_replayed_signal_is_not_counted_twice(book: IncidentBook) -> None:
    sig = make_signal()
    apply1(book, sig)
    again = apply1(book, dict(sig))
    assert (again.action, again.notify, again.version) == ("duplicate", None, 1)
    assert again.incident["signal_count"] == 1


def test_separate_keys_make_separate_incidents(book: IncidentBook) -> None:
    a = apply1(book, make_signal(tool="copilot"))
    b = apply1(book, make_signal(tool="chat"))
    c = apply1(book, make_signal("unknown_model", model="m-1"))
    d = apply1(book, make_signal("unknown_model", model="m-2"))
    ids = {u.incident["incident_id"] for u in (a, b, c, d)}
    assert len(ids) == 4 and all(u.notify for u in (a, b, c, d))
    assert d.incident["evidence"]["model"] == "m-2"


def test_state_is_plain_json_and_survives_a_restart(book: IncidentBook) -> None:
    """The faust Table stores JSON; a new book over the restored values keeps dedup."""
    apply1(book, roundtrip(make_signal()))
    restored = json.loads(json.dumps(dict(book.store)))
    again = IncidentBook(default_routing(), 3600, restored)
    upd = apply1(again, roundtrip(make_signal(minutes=1)))
    assert (upd.action, upd.notify, upd.incident["signal_count"]) == ("updated", None, 2)


def test_batch_store_writes_back_once_per_key() -> None:
    writes: list[str] = []

    class Table(dict[str, Any]):
        def __setitem__(self, k: str, v: Any) -> None:
            writes.append(k)
            super().__setitem__(k, v)

    table = Table()
    store = BatchStore(table)
    book = IncidentBook(default_routing(), 3600, store)
    for m in range(100):
        apply1(book, make_signal(minutes=m))
    assert writes == [] and len(store) == 1
    assert store.flush() == 1
    assert writes == ["cost_spike|payments|copilot"]
    assert table["cost_spike|payments|copilot"]["incident"]["signal_count"] == 100


# --- privacy --------------------------------------------------------------------------------


def test_cost_incidents_never_carry_a_pseudonym(book: IncidentBook) -> None:
    # A detector bug sends a pseudonym on a cost rule: the incident and the message drop it.
    upd = apply1(book, roundtrip(make_signal(user_pseudonym="ps_cost_leak")))
    assert upd.incident["user_pseudonym"] is None
    upd = apply1(book, roundtrip(make_signal(minutes=1, user_pseudonym="ps_cost_leak")))
    assert upd.incident["user_pseudonym"] is None
    assert "ps_cost_leak" not in json.dumps(build_message(upd.incident, show_pseudonym=True))
    unknown = apply1(book, make_signal("new_rule", user_pseudonym="ps_rel_leak"))
    assert unknown.incident["user_pseudonym"] is None


def test_security_incidents_keep_the_pseudonym_shown_only_where_allowed(
    book: IncidentBook,
) -> None:
    sig = make_signal("sensitive_data", user_pseudonym="ps_123", evidence={"classes": "secret"})
    upd = apply1(book, roundtrip(sig))
    assert upd.incident["category"] == "security"
    assert upd.incident["user_pseudonym"] == "ps_123"
    # a later signal without one keeps the known pseudonym
    upd = apply1(
        book, roundtrip(make_signal("sensitive_data", minutes=1, evidence={"classes": "secret"}))
    )
    assert upd.incident["user_pseudonym"] == "ps_123"
    assert "ps_123" in json.dumps(build_message(upd.incident, show_pseudonym=True))
    assert "ps_123" not in json.dumps(build_message(upd.incident, show_pseudonym=False))


def test_message_drops_pseudonym_unless_security_even_if_present() -> None:
    book = IncidentBook(default_routing(), 3600)
    inc = apply1(book, make_signal()).incident
    inc["user_pseudonym"] = "ps_should_not_show"
    assert "ps_should_not_show" not in json.dumps(build_message(inc, show_pseudonym=True))


# --- Block Kit ----------------------------------------------------------------------------


def test_message_is_valid_block_kit_with_metadata(book: IncidentBook) -> None:
    inc = apply1(book, roundtrip(make_signal())).incident
    msg = build_message(inc, link="https://ops.example/i/x")
    assert validate_payload(msg) is None
    assert msg["text"] and len(msg["blocks"]) <= 50
    header = msg["blocks"][0]
    assert header["type"] == "header" and "MEDIUM" in header["text"]["text"]
    assert "Spend rate jumped" in header["text"]["text"]
    body = json.dumps(msg)
    for expected in ("payments", "copilot", "cost_spike", "finops", "2025-03-01 12:00:00 UTC"):
        assert expected in body
    for number in ("12.5", "3.25", "6.5", "420"):
        assert number in body
    assert any(b["type"] == "actions" for b in msg["blocks"])  # the link button
    context = msg["blocks"][-1]
    assert context["type"] == "context"
    assert inc["incident_id"] in context["elements"][0]["text"]
    assert "trustlog incidents ack" in context["elements"][0]["text"]
    assert ack_command(inc["incident_id"]).startswith("trustlog incidents ack ")


def test_message_kinds_say_what_changed(book: IncidentBook) -> None:
    inc = apply1(book, make_signal()).incident
    assert (
        "Escalated"
        in build_message(inc, kind="escalated", note="unacknowledged for 2h")["blocks"][0]["text"][
            "text"
        ]
    )
    assert "unacknowledged for 2h" in json.dumps(
        build_message(inc, kind="escalated", note="unacknowledged for 2h")
    )
    assert "Reopened" in build_message(inc, kind="reopened")["text"]
    assert "Still happening" in build_message(inc, kind="reminder")["text"]


def test_message_shows_identifier_evidence_but_no_free_text(book: IncidentBook) -> None:
    inc = apply1(
        book,
        make_signal(
            "policy_flag", evidence={"flag": "pii_export", "note": "some words here", "n": "3"}
        ),
    ).incident
    body = json.dumps(build_message(inc))
    assert "pii_export" in body and "some words here" not in body


def test_message_stays_valid_with_hostile_names(book: IncidentBook) -> None:
    sig = make_signal(
        team="<!channel> " + "t" * 400,
        tool="x" * 5000,
        evidence={f"k{i}": str(i) for i in range(40)} | {"note": "free text ignored"},
    )
    msg = build_message(apply1(book, sig).incident)
    assert validate_payload(msg) is None
    body = json.dumps(msg)
    assert "<!channel>" not in body  # escaped, cannot ping a channel
    assert "free text ignored" not in body  # non-numeric evidence is not shown
    assert len(msg["blocks"][0]["text"]["text"]) <= 150


def test_validator_rejects_what_slack_rejects() -> None:
    assert validate_payload({}) == "no_text"
    assert validate_payload({"text": "   "}) == "no_text"
    assert validate_payload({"text": "ok"}) is None
    assert validate_payload({"blocks": [{"type": "nope"}]}) == "invalid_blocks"
    assert validate_payload({"blocks": [{"type": "divider"}] * 51}) == "invalid_blocks"
    long_header = {"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}
    assert validate_payload({"blocks": [long_header]}) == "invalid_blocks"
    mrkdwn_header = {"type": "header", "text": {"type": "mrkdwn", "text": "h"}}
    assert validate_payload({"blocks": [mrkdwn_header]}) == "invalid_blocks"
    long_section = {"type": "section", "text": {"type": "mrkdwn", "text": "s" * 3001}}
    assert validate_payload({"blocks": [long_section]}) == "invalid_blocks"
    f = {"type": "mrkdwn", "text": "f"}
    assert (
        validate_payload({"blocks": [{"type": "section", "fields": [f] * 11}]}) == "invalid_blocks"
    )
    assert validate_payload({"blocks": [{"type": "section"}]}) == "invalid_blocks"
    assert validate_payload({"blocks": [{"type": "context", "elements": []}]}) == "invalid_blocks"
    assert validate_payload([1]) == "invalid_payload"


# --- pipeline without a broker -------------------------------------------------------------


class _FakeStore(IncidentStore):
    def __init__(self, fail_times: int = 0) -> None:
        self.writes: list[tuple[list[Any], list[Any], list[Any]]] = []
        self.fail_times = fail_times

    def write(self, incidents: list[Any], history: list[Any], commands: list[Any]) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("clickhouse down")
        self.writes.append((incidents, history, commands))

    def close(self) -> None:
        pass


class _MemoryOutbox:
    def __init__(self) -> None:
        self.put_ids: list[str] = []

    async def put(self, n: Notification) -> None:
        self.put_ids.append(n.id)

    async def done(self, notification_id: str) -> None:
        pass


def _pipeline(
    book: IncidentBook, store: _FakeStore, published: list[tuple[bytes, bytes]]
) -> tuple[AlertsPipeline, SlackNotifier, Health]:
    async def publish(k: bytes, v: bytes) -> None:
        published.append((k, v))

    # A URL nothing listens on: the sender is not running here, only the queue is checked.
    notifier = SlackNotifier("http://127.0.0.1:9/hook", outbox=_MemoryOutbox())
    health = Health()
    p = AlertsPipeline(
        book, store, publish, notifier, health, Metrics("alerts_t"), max_backoff=0.01
    )
    p.clock = lambda: NOW_MS / 1000
    return p, notifier, health


async def test_pipeline_skips_undecodable_and_writes_publishes_notifies(
    book: IncidentBook, caplog: pytest.LogCaptureFixture
) -> None:
    store = _FakeStore(fail_times=1)
    published: list[tuple[bytes, bytes]] = []
    p, notifier, health = _pipeline(book, store, published)
    caplog.set_level("WARNING")
    assert await p.handle(b"\x00garbage") == []
    assert await p.handle(b"") == []
    assert await p.handle(None) == []
    sig = make_signal()
    t0 = asyncio.get_running_loop().time()
    (upd,) = await p.handle(signal_codec().encode(sig))
    assert asyncio.get_running_loop().time() - t0 >= 0.45  # first retry waits the initial delay
    assert upd.action == "created"
    assert health.as_dict()["checks"]["clickhouse"]["ok"]
    (incidents, history, commands) = store.writes[0]
    assert len(incidents) == 1 and len(history) == 1 and commands == []
    assert published[0][0] == b"finops"
    assert incident_codec().decode(published[0][1])["incident_id"] == upd.incident["incident_id"]
    assert list(notifier.pending) == [upd.notification_id]
    # replay of the same bytes: incident row rewritten at the same version, no history row
    (dup,) = await p.handle(signal_codec().encode(sig))
    assert dup.action == "duplicate" and dup.version == 1
    assert store.writes[-1][1] == []
    assert "undecodable signal skipped" in caplog.text
    reasons = [getattr(r, "reason", None) for r in caplog.records]
    assert "not_avro_single_object" in reasons and "empty_message" in reasons


async def test_pipeline_batch_coalesces_rows_and_applies_commands(book: IncidentBook) -> None:
    store = _FakeStore()
    published: list[tuple[bytes, bytes]] = []
    p, notifier, _ = _pipeline(book, store, published)
    codec = signal_codec()
    batch = [(SIGNAL, codec.encode(make_signal(minutes=m / 10))) for m in range(500)]
    updates, _ = await p.handle_batch(batch)
    assert len(updates) == 500
    ((incidents, history, _),) = store.writes
    assert len(incidents) == 1 and incidents[0][10] == 500  # one row: the latest version
    assert len(history) == 1  # "created"
    assert len(published) == 1 and len(notifier.pending) == 1
    iid = updates[0].incident["incident_id"]
    key = updates[0].incident["dedup_key"]

    def cmd(action: str, actor: str = "alice") -> tuple[str, bytes]:
        return (
            COMMAND,
            command_codec().encode(
                {
                    "command_id": str(uuid.uuid4()),
                    "incident_id": iid,
                    "dedup_key": key,
                    "action": action,
                    "actor": actor,
                    "reason": "on it",
                    "requested_at": NOW_MS,
                    "source": "cli",
                }
            ),
        )

    _, results = await p.handle_batch([cmd("acknowledge"), cmd("acknowledge", "bob")])
    assert [(r.outcome, r.detail) for r in results] == [
        ("applied", "open -> acknowledged"),
        ("refused", "cannot acknowledge an incident that is acknowledged"),
    ]
    incidents, history, commands = store.writes[-1]
    assert [h[2] for h in history] == ["acknowledged"] and history[0][3] == "alice"
    assert [c[8] for c in commands] == ["applied", "refused"]
    assert incidents[0][5] == "acknowledged" and incidents[0][21] == "alice"


def test_rows_match_the_clickhouse_columns(book: IncidentBook) -> None:
    from services.alerts.app import COMMAND_COLUMNS, HISTORY_COLUMNS, INCIDENT_COLUMNS

    u = apply1(book, make_signal())
    now = datetime.now(tz=UTC)
    assert len(incident_row(u, now)) == len(INCIDENT_COLUMNS)
    assert len(history_row(u, now)) == len(HISTORY_COLUMNS)
    res = book.command(
        {
            "command_id": "c1",
            "incident_id": u.incident["incident_id"],
            "dedup_key": u.incident["dedup_key"],
            "action": "resolve",
            "actor": "a",
            "reason": "r",
        },
        NOW_MS,
    )
    assert len(command_row({"actor": "a"}, res, now)) == len(COMMAND_COLUMNS)
