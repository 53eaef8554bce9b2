"""Alerts logic without a broker: routing, dedup and cooldown, Block Kit, privacy rules."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.alerts.app import AlertsPipeline, IncidentStore, history_row, incident_row
from services.alerts.incidents import IncidentBook, dedup_key, to_ms
from services.alerts.routing import Route, Routing, RoutingError, default_routing, route
from services.alerts.slack import SlackNotifier, _Pending, ack_command, build_message
from tests.slack_receiver import SlackReceiver, validate_payload
from trustlog.avro import incident_codec, signal_codec
from trustlog.runtime import Health, Metrics

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


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


@pytest.fixture
def book() -> IncidentBook:
    return IncidentBook(default_routing(), cooldown_seconds=3600)


# --- routing ------------------------------------------------------------------------------


def test_routes_known_rules_from_config() -> None:
    assert route("cost_spike", "payments") == Route(
        "finops", "#ai-cost", "cost", "medium", "Spend rate jumped"
    )
    r = route("sensitive_data", "payments")
    assert (r.owner, r.channel, r.category, r.severity) == (
        "security-lead",
        "#ai-security",
        "security",
        "high",
    )


def test_unknown_rule_goes_to_fallback_as_reliability_low() -> None:
    r = route("brand_new_detector", "payments")
    assert (r.owner, r.channel, r.category, r.severity) == (
        "platform-oncall",
        "#ai-usage-alerts",
        "reliability",
        "low",
    )
    assert "brand_new_detector" in r.title


def test_team_entry_beats_wildcard_regardless_of_order() -> None:
    routing = Routing.from_dict(
        {
            "rules": {"cost_spike": {"category": "cost", "severity": "high", "title": "x"}},
            "fallback": {"owner": "fb", "channel": "#fb"},
            "owners": [
                {"team": "*", "category": "cost", "owner": "finops", "channel": "#cost"},
                {"team": "ml", "category": "cost", "owner": "ml-lead", "channel": "#ml"},
            ],
        }
    )
    assert routing.route("cost_spike", "ml").owner == "ml-lead"
    assert routing.route("cost_spike", "web").owner == "finops"


def test_no_owner_for_category_uses_fallback() -> None:
    routing = Routing.from_dict(
        {
            "rules": {"policy_flag": {"category": "security", "severity": "low", "title": "p"}},
            "fallback": {"owner": "fb", "channel": "#fb"},
            "owners": [],
        }
    )
    r = routing.route("policy_flag", "x")
    assert (r.owner, r.channel) == ("fb", "#fb")


_FB = {"owner": "o", "channel": "#c"}


@pytest.mark.parametrize(
    "bad",
    [
        {"rules": {"r": {"category": "money", "severity": "low", "title": "t"}}, "fallback": _FB},
        {"rules": {"r": {"category": "cost", "severity": "urgent", "title": "t"}}, "fallback": _FB},
        {"rules": {"r": {"category": "cost", "severity": "low"}}, "fallback": _FB},
        {"rules": {}, "fallback": _FB, "owners": [{"team": "*", "category": "x"}]},
        {"rules": {}},  # no fallback
    ],
)
def test_bad_routing_config_fails_at_load(bad: dict[str, Any]) -> None:
    with pytest.raises(RoutingError):
        Routing.from_dict(bad)


# --- dedup and cooldown ---------------------------------------------------------------------


def test_dedup_key_parts_and_escaping() -> None:
    assert dedup_key(make_signal()) == "cost_spike|payments|copilot"
    assert (
        dedup_key(make_signal("unknown_model", model="m-1")) == "unknown_model|payments|copilot|m-1"
    )
    # model is not part of the key for other rules
    assert dedup_key(make_signal(model="m-1")) == "cost_spike|payments|copilot"
    a = dedup_key(make_signal(team="a|b", tool="c"))
    b = dedup_key(make_signal(team="a", tool="b|c"))
    assert a != b


def test_new_key_creates_open_incident_and_notifies(book: IncidentBook) -> None:
    inc, notify, action, version = book.apply(roundtrip(make_signal()))
    assert (notify, action, version) == (True, "created", 1)
    assert inc["state"] == "open"
    assert inc["signal_count"] == 1
    assert inc["owner"] == "finops" and inc["category"] == "cost"
    assert uuid.UUID(inc["incident_id"]).version == 4
    assert inc["first_seen"] == inc["last_seen"] == to_ms(T0)
    # the record is publishable as is
    assert (
        incident_codec().decode(incident_codec().encode(inc))["incident_id"] == inc["incident_id"]
    )


def test_repeats_fold_into_one_incident_without_renotifying(book: IncidentBook) -> None:
    first = book.apply(roundtrip(make_signal(minutes=0)))
    updates = [
        book.apply(roundtrip(make_signal(minutes=m, observed=20.0 + m))) for m in range(1, 50)
    ]
    assert {u.incident["incident_id"] for u in updates} == {first.incident["incident_id"]}
    assert [u.action for u in updates] == ["updated"] * 49
    assert not any(u.notify for u in updates)
    last = updates[-1]
    assert last.incident["signal_count"] == 50
    assert [u.version for u in updates] == list(range(2, 51))  # monotonic per incident
    assert last.incident["first_seen"] == to_ms(T0)
    assert last.incident["last_seen"] == to_ms(T0 + timedelta(minutes=49))
    assert last.incident["evidence"]["observed"] == "69"  # latest evidence wins


def test_out_of_order_signal_widens_the_window(book: IncidentBook) -> None:
    book.apply(make_signal(minutes=10))
    upd = book.apply(make_signal(minutes=2))
    assert upd.incident["first_seen"] == to_ms(T0 + timedelta(minutes=2))
    assert upd.incident["last_seen"] == to_ms(T0 + timedelta(minutes=10))


def test_renotifies_only_after_cooldown_of_event_time() -> None:
    book = IncidentBook(default_routing(), cooldown_seconds=600)
    assert book.apply(make_signal(minutes=0)).notify
    assert not book.apply(make_signal(minutes=9)).notify
    assert book.apply(make_signal(minutes=10)).notify  # 600 s since the last notification
    assert not book.apply(make_signal(minutes=15)).notify  # cooldown restarts from there
    assert book.apply(make_signal(minutes=20)).notify


def test_replayed_signal_is_not_counted_twice(book: IncidentBook) -> None:
    sig = make_signal()
    book.apply(sig)
    again = book.apply(dict(sig))
    assert (again.action, again.notify, again.version) == ("duplicate", False, 1)
    assert again.incident["signal_count"] == 1


def test_separate_keys_make_separate_incidents(book: IncidentBook) -> None:
    a = book.apply(make_signal(tool="copilot"))
    b = book.apply(make_signal(tool="chat"))
    c = book.apply(make_signal("unknown_model", model="m-1"))
    d = book.apply(make_signal("unknown_model", model="m-2"))
    ids = {u.incident["incident_id"] for u in (a, b, c, d)}
    assert len(ids) == 4 and all(u.notify for u in (a, b, c, d))
    assert d.incident["evidence"]["model"] == "m-2"


def test_state_is_plain_json_and_survives_a_restart(book: IncidentBook) -> None:
    """The faust Table stores JSON; a new book over the restored values keeps dedup."""
    book.apply(roundtrip(make_signal()))
    restored = json.loads(json.dumps(dict(book.store)))
    again = IncidentBook(default_routing(), 3600, restored)
    upd = again.apply(roundtrip(make_signal(minutes=1)))
    assert (upd.action, upd.notify, upd.incident["signal_count"]) == ("updated", False, 2)


def test_resolved_incident_is_not_reopened_in_place(book: IncidentBook) -> None:
    first = book.apply(make_signal())
    key = first.incident["dedup_key"]
    st = book.state(key)
    assert st is not None
    st["incident"]["state"] = "resolved"
    book.store[key] = st
    nxt = book.apply(make_signal(minutes=5))
    assert nxt.action == "created" and nxt.notify
    assert nxt.incident["incident_id"] != first.incident["incident_id"]


def test_acknowledged_incident_counts_but_stays_quiet() -> None:
    book = IncidentBook(default_routing(), cooldown_seconds=60)
    first = book.apply(make_signal())
    key = first.incident["dedup_key"]
    st = book.state(key)
    assert st is not None
    st["incident"]["state"] = "acknowledged"
    book.store[key] = st
    upd = book.apply(make_signal(minutes=30))
    assert upd.incident["signal_count"] == 2 and not upd.notify


# --- privacy --------------------------------------------------------------------------------


def test_cost_incidents_never_carry_a_pseudonym(book: IncidentBook) -> None:
    # A detector bug sends a pseudonym on a cost rule: the incident and the message drop it.
    upd = book.apply(roundtrip(make_signal(user_pseudonym="ps_cost_leak")))
    assert upd.incident["user_pseudonym"] is None
    upd = book.apply(roundtrip(make_signal(minutes=1, user_pseudonym="ps_cost_leak")))
    assert upd.incident["user_pseudonym"] is None
    assert "ps_cost_leak" not in json.dumps(build_message(upd.incident))
    unknown = book.apply(make_signal("new_rule", user_pseudonym="ps_rel_leak"))
    assert unknown.incident["user_pseudonym"] is None


def test_security_incidents_keep_the_pseudonym(book: IncidentBook) -> None:
    upd = book.apply(roundtrip(make_signal("sensitive_data", user_pseudonym="ps_123")))
    assert upd.incident["category"] == "security"
    assert upd.incident["user_pseudonym"] == "ps_123"
    # a later signal without one keeps the known pseudonym
    upd = book.apply(roundtrip(make_signal("sensitive_data", minutes=1)))
    assert upd.incident["user_pseudonym"] == "ps_123"
    assert "ps_123" in json.dumps(build_message(upd.incident))


def test_message_drops_pseudonym_unless_security_even_if_present() -> None:
    book = IncidentBook(default_routing(), 3600)
    inc = book.apply(make_signal()).incident
    inc["user_pseudonym"] = "ps_should_not_show"
    assert "ps_should_not_show" not in json.dumps(build_message(inc))


# --- Block Kit ----------------------------------------------------------------------------


def test_message_is_valid_block_kit_with_metadata(book: IncidentBook) -> None:
    inc = book.apply(roundtrip(make_signal())).incident
    msg = build_message(inc)
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
    context = msg["blocks"][-1]
    assert context["type"] == "context"
    assert ack_command(inc["incident_id"]) in context["elements"][0]["text"]


def test_message_stays_valid_with_hostile_names(book: IncidentBook) -> None:
    sig = make_signal(
        team="<!channel> " + "t" * 400,
        tool="x" * 5000,
        evidence={f"k{i}": str(i) for i in range(40)} | {"note": "free text ignored"},
    )
    msg = build_message(book.apply(sig).incident)
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


# --- Slack sender against the local receiver -----------------------------------------------


@pytest.fixture
def receiver() -> Iterator[SlackReceiver]:
    r = SlackReceiver().start()
    yield r
    r.stop()


async def test_notifier_retries_429_honouring_retry_after(
    receiver: SlackReceiver, book: IncidentBook
) -> None:
    inc = book.apply(make_signal()).incident
    receiver.fail_next(1, status=429, retry_after=1)
    n = SlackNotifier(receiver.url, metrics=Metrics("alerts_test"))
    t0 = asyncio.get_running_loop().time()
    try:
        assert await n.notify(inc)
    finally:
        await n.close()
    assert asyncio.get_running_loop().time() - t0 >= 1.0
    assert [r.status for r in receiver.requests] == [429, 200]
    assert len(receiver.accepted) == 1 and not n.pending


async def test_notifier_retries_5xx_then_queues_and_delivers_later(
    receiver: SlackReceiver, book: IncidentBook
) -> None:
    inc = book.apply(make_signal()).incident
    receiver.fail_next(2, status=502)
    n = SlackNotifier(receiver.url, max_retries=1, backoff_factor=0.01)
    try:
        assert not await n.notify(inc)  # 502, one retry, 502 again
        assert list(n.pending) == [inc["incident_id"]]
        assert await n.retry_pending() == 1
    finally:
        await n.close()
    assert [r.status for r in receiver.requests] == [502, 502, 200]
    assert not n.pending


async def test_notifier_drops_payload_slack_rejects(
    receiver: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    n = SlackNotifier(receiver.url)
    item = _Pending("i-1", {"blocks": [{"type": "bogus"}]}, 0)
    try:
        assert not await n._deliver(item)
    finally:
        await n.close()
    assert [r.status for r in receiver.requests] == [400]
    assert not n.pending  # resending an invalid payload cannot help
    assert "bogus" not in caplog.text


async def test_submit_and_run_post_off_the_caller(
    receiver: SlackReceiver, book: IncidentBook
) -> None:
    n = SlackNotifier(receiver.url)
    task = asyncio.create_task(n.run(retry_interval=0.2))
    try:
        n.submit(book.apply(make_signal()).incident)
        n.submit(book.apply(make_signal(tool="other")).incident)
        for _ in range(100):
            if len(receiver.accepted) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await n.close()
    assert len(receiver.accepted) == 2


async def test_notifier_without_url_is_disabled(book: IncidentBook) -> None:
    n = SlackNotifier(None)
    assert not n.enabled
    assert not await n.notify(book.apply(make_signal()).incident)
    n.submit(book.apply(make_signal(tool="t2")).incident)
    assert not n.pending


# --- pipeline without a broker -------------------------------------------------------------


class _FakeStore(IncidentStore):
    def __init__(self, fail_times: int = 0) -> None:
        self.rows: list[tuple[str, Any]] = []
        self.fail_times = fail_times

    def write(self, update: Any, reason: str | None) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("clickhouse down")
        now = datetime.now(tz=UTC)
        self.rows.append(("incident", incident_row(update, now)))
        if reason is not None:
            self.rows.append(("history", history_row(update, now, reason)))

    def close(self) -> None:
        pass


async def test_pipeline_skips_undecodable_and_writes_publishes_notifies(
    book: IncidentBook, caplog: pytest.LogCaptureFixture
) -> None:
    store = _FakeStore(fail_times=1)
    published: list[tuple[bytes, bytes]] = []

    async def publish(k: bytes, v: bytes) -> None:
        published.append((k, v))

    notifier = SlackNotifier(None)
    health = Health()
    p = AlertsPipeline(
        book, store, publish, notifier, health, Metrics("alerts_t"), max_backoff=0.01
    )
    p_delay_floor = 0.5  # first retry waits the initial delay
    caplog.set_level("WARNING")
    assert await p.handle(b"\x00garbage") is None
    assert await p.handle(b"") is None
    assert await p.handle(None) is None
    sig = make_signal()
    t0 = asyncio.get_running_loop().time()
    upd = await p.handle(signal_codec().encode(sig))
    assert asyncio.get_running_loop().time() - t0 >= p_delay_floor * 0.9
    assert upd is not None and upd.action == "created"
    assert health.as_dict()["checks"]["clickhouse"]["ok"]
    assert [kind for kind, _ in store.rows] == ["incident", "history"]
    assert published[0][0] == b"finops"
    assert incident_codec().decode(published[0][1])["incident_id"] == upd.incident["incident_id"]
    # replay of the same bytes: incident row rewritten at the same version, no history row
    dup = await p.handle(signal_codec().encode(sig))
    assert dup is not None and dup.action == "duplicate" and dup.version == 1
    assert [kind for kind, _ in store.rows] == ["incident", "history", "incident"]
    assert "undecodable signal skipped" in caplog.text
    reasons = [getattr(r, "reason", None) for r in caplog.records]
    assert "not_avro_single_object" in reasons and "empty_message" in reasons
