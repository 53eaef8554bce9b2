"""Pure tests of case rules, notices and the access review (no ClickHouse).

The same rules run against a real server in tests/integration/test_governance_access.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from trustlog.governance import audit, cases, roles

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
PSEUDONYM = "p_" + "0123456789abcdef" * 2

CONFIG = roles.parse_roles(
    {
        "version": 1,
        "cases": {"max_days": 14, "max_period_days": 31},
        "accounts": [
            {"name": "lead", "role": "security", "title": "Security lead"},
            {"name": "owner", "role": "security", "title": "System owner"},
            {"name": "backup", "role": "security", "title": "Backup"},
            {"name": "fin", "role": "finance"},
            {"name": "emp", "role": "employee", "user_id": "u-1"},
        ],
    }
)


def _case(**over: Any) -> cases.Case:
    kw: dict[str, Any] = {
        "reader": "lead",
        "approver": "owner",
        "reason": "Card numbers flagged in support drafts on Monday",
        "scope_kind": "pseudonym",
        "scope_value": PSEUDONYM,
        "period_start": NOW - timedelta(days=2),
        "period_end": None,
        "expires_in": timedelta(days=3),
        "now": NOW,
    }
    kw.update(over)
    return cases.new_case(CONFIG, **kw)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"reader": "fin"}, "reader 'fin' is not a security account"),
        ({"approver": "lead"}, "approver must be a different security account"),
        ({"approver": "emp"}, "approver 'emp' is not a security account"),
        ({"reason": "   because "}, "a reason is required"),
        ({"scope_kind": "person"}, "scope must be one of pseudonym, team, tool"),
        ({"scope_value": "alice@example.com"}, "never a user id"),
        ({"scope_kind": "team", "scope_value": " "}, "team scope must name one team"),
        ({"expires_in": timedelta(days=15)}, "at most 14 days"),
        ({"expires_in": timedelta(0)}, "expiry must be in the future"),
        ({"period_end": NOW - timedelta(days=3)}, "period must end after it starts"),
        ({"period_end": NOW + timedelta(days=4)}, "cannot reach past the case's expiry"),
        ({"period_start": NOW - timedelta(days=40)}, "at most 31 days of events"),
        ({"legal_hold_reason": "hold"}, "a legal-hold reason is required"),
        ({"now": datetime(2026, 3, 10, 12)}, "time zone"),
    ],
)
def test_a_case_needs_reason_scope_expiry_and_a_second_person(
    over: dict[str, Any], message: str
) -> None:
    with pytest.raises(cases.CaseError, match=message):
        _case(**over)


def test_a_new_case_is_pending_and_grants_nothing() -> None:
    case = _case()
    assert case.state == "pending" and case.effective_state(NOW) == "pending"
    assert not case.grants_access(NOW)
    assert case.access_window() is None
    assert case.period_end == NOW and case.expires_at == NOW + timedelta(days=3)


def test_only_the_named_approver_approves_and_only_while_pending() -> None:
    case = _case()
    for who, message in (("backup", "names 'owner'"), ("fin", "not a security account")):
        with pytest.raises(cases.CaseError, match=message):
            cases.approved(case, CONFIG, who, NOW)
    late = NOW + timedelta(days=3)
    with pytest.raises(cases.CaseError, match="expired, not pending"):
        cases.approved(case, CONFIG, "owner", late)
    opened = cases.approved(case, CONFIG, "owner", NOW + timedelta(hours=1))
    assert opened.grants_access(NOW + timedelta(hours=2))
    assert not opened.grants_access(opened.expires_at)  # ends at expiry by itself
    assert opened.effective_state(opened.expires_at) == "expired"
    with pytest.raises(cases.CaseError, match="open, not pending"):
        cases.approved(opened, CONFIG, "owner", NOW + timedelta(hours=2))


def test_closing_ends_access_and_records_the_outcome() -> None:
    opened = cases.approved(_case(), CONFIG, "owner", NOW)
    with pytest.raises(cases.CaseError, match="outcome must be one of"):
        cases.closed(opened, CONFIG, "lead", "done", "", NOW)
    with pytest.raises(cases.CaseError, match="not a security account"):
        cases.closed(opened, CONFIG, "emp", "no_finding", "", NOW)
    done = cases.closed(
        opened, CONFIG, "backup", "no_finding", " nothing found ", NOW + timedelta(hours=1)
    )
    assert (done.state, done.closed_by, done.outcome_note) == ("closed", "backup", "nothing found")
    assert not done.grants_access(NOW + timedelta(hours=2))
    assert done.access_window() == (NOW, NOW + timedelta(hours=1))
    with pytest.raises(cases.CaseError, match="already closed"):
        cases.closed(done, CONFIG, "lead", "no_finding", "", NOW)


def test_notices_say_why_what_and_until_when_unless_on_legal_hold() -> None:
    opened = cases.approved(_case(), CONFIG, "owner", NOW)
    note = cases.notification_for(opened, "case_opened", NOW)
    assert note is not None
    assert (note.recipient_kind, note.recipient, note.kind) == (
        "pseudonym",
        PSEUDONYM,
        "case_opened",
    )
    for part in ("your AI usage records", "Card numbers flagged", "lead", "owner",
                 "2026-03-08 12:00 UTC", "2026-03-13 12:00 UTC"):  # fmt: skip
        assert part in note.message, part
    team = cases.approved(_case(scope_kind="team", scope_value="support"), CONFIG, "owner", NOW)
    team_note = cases.notification_for(team, "case_opened", NOW)
    assert team_note is not None and "team support" in team_note.message
    # The case's period travels with the notice: the row policy on `notifications` shows a
    # team or tool notice to the employees with records of their own in it.
    assert (team_note.period_start, team_note.period_end) == (team.period_start, team.period_end)
    closed = cases.closed(opened, CONFIG, "lead", "finding_resolved", "card revoked", NOW)
    end = cases.notification_for(closed, "case_closed", NOW)
    assert end is not None and "finding resolved" in end.message and "card revoked" in end.message
    held = _case(legal_hold_reason="Litigation hold LH-17 forbids notice")
    assert held.legal_hold
    assert (
        cases.notification_for(cases.approved(held, CONFIG, "owner", NOW), "case_opened", NOW)
        is None
    )


def test_durations_and_times() -> None:
    assert cases.parse_duration("90s") == timedelta(seconds=90)
    assert cases.parse_duration(" 7d ") == timedelta(days=7)
    with pytest.raises(cases.CaseError):
        cases.parse_duration("7 weeks")
    assert cases.parse_time("2d", NOW) == NOW - timedelta(days=2)
    assert cases.parse_time("2026-03-01", NOW) == datetime(2026, 3, 1, tzinfo=UTC)
    assert cases.parse_time("2026-03-01T10:00+01:00", NOW) == datetime(2026, 3, 1, 9, tzinfo=UTC)
    with pytest.raises(cases.CaseError):
        cases.parse_time("last tuesday", NOW)


def test_reads_are_attributed_to_the_cases_active_at_that_moment() -> None:
    a = cases.approved(_case(), CONFIG, "owner", NOW)
    b = cases.approved(_case(scope_kind="tool", scope_value="chat"), CONFIG, "owner", NOW)
    b = cases.closed(b, CONFIG, "lead", "no_finding", "", NOW + timedelta(hours=1))
    other = cases.approved(_case(reader="backup"), CONFIG, "owner", NOW)
    both = cases.active_case_ids([a, b, other], "lead", NOW + timedelta(minutes=30))
    assert both == sorted([a.case_id, b.case_id])
    assert cases.active_case_ids([a, b, other], "lead", NOW + timedelta(hours=2)) == [a.case_id]
    assert cases.active_case_ids([a, b], "lead", NOW - timedelta(seconds=1)) == []


# --------------------------------------------------------------------------- access review


def _read(account: str, when: datetime, **over: Any) -> audit.Read:
    kw: dict[str, Any] = {
        "query_id": f"q-{account}-{when.timestamp()}",
        "event_time": when,
        "account": account,
        "objects": ("trustlog.events", "trustlog.my_cases"),
        "case_ids": (),
        "result_rows": 3,
        "refused": False,
        "error_code": 0,
        "query": "SELECT ...",
    }
    kw.update(over)
    return audit.Read(**kw)


def test_month_bounds() -> None:
    assert audit.month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    for bad in ("2026-13", "26-01", "2026/01"):
        with pytest.raises(ValueError):
            audit.month_bounds(bad)


def test_access_review_answers_the_monthly_questions() -> None:
    used = cases.approved(_case(), CONFIG, "owner", NOW)
    used = cases.closed(used, CONFIG, "lead", "no_finding", "", NOW + timedelta(hours=2))
    unused = cases.approved(_case(reader="owner", approver="lead", scope_kind="team",
                                  scope_value="ops"), CONFIG, "lead", NOW)  # fmt: skip
    unused = cases.closed(unused, CONFIG, "owner", "withdrawn", "", NOW + timedelta(hours=1))
    earlier = cases.approved(
        _case(now=NOW - timedelta(days=40), period_start=NOW - timedelta(days=41)),
        CONFIG, "owner", NOW - timedelta(days=40),
    )  # fmt: skip
    reads = [
        _read("lead", NOW + timedelta(hours=1), case_ids=(used.case_id,)),
        _read("emp", NOW, objects=("trustlog.employee_events", "trustlog.events")),
        _read("trustlog_admin", NOW, objects=("trustlog.events",)),
        _read("fin", NOW, objects=(), refused=True, error_code=497, result_rows=0),
        _read("backup", NOW - timedelta(days=45), case_ids=(earlier.case_id,)),
    ]
    server = {
        "lead": "SELECT ON trustlog.events(columns)",
        "owner": "SELECT ON trustlog.events(columns)",
        "emp": "SELECT ON trustlog.events(columns)",
        "trustlog_admin": "ALL ON *.*",
        "old_contractor": "SELECT ON trustlog.events",
    }
    review = audit.build_review(
        month="2026-03", database="trustlog", config=CONFIG, server_holders=server,
        cases=[used, unused, earlier], reads=reads, now=NOW + timedelta(days=1),
    )  # fmt: skip
    holders = {h.account: h for h in review.holders}
    assert set(holders) == {"lead", "owner", "backup", "emp", "trustlog_admin", "old_contractor"}
    assert (
        holders["lead"].last_detail_read == NOW + timedelta(hours=1) and not holders["lead"].unused
    )
    assert holders["owner"].unused and holders["backup"].unused  # backup read 46 days ago
    assert not holders["emp"].unused  # employees reading their own rows rarely is normal
    assert holders["trustlog_admin"].role == "admin"
    assert [r.account for r in review.case_reads] == ["lead"]
    assert review.own_reads == {"emp": 1}
    assert review.other_detail_reads == {"trustlog_admin": 1}
    assert [r.account for r in review.refused] == ["fin"]
    lines = {line.case.case_id: line for line in review.cases}
    assert set(lines) == {used.case_id, unused.case_id}  # the earlier case ended in February
    assert (lines[used.case_id].reads, lines[used.case_id].rows) == (1, 3)
    text = "\n".join(review.findings)
    assert f"case {unused.case_id[:8]} (team:ops) granted access that was never used" in text
    assert "owner (System owner) holds detail access and has not read detail ever" in text
    assert "backup (Backup) holds detail access and has not read detail since" in text
    assert "backup is a security account in the config but the server grants it no detail" in text
    assert "old_contractor can read detail on the server" in text
    assert "trustlog_admin" not in text and "lead (" not in text


def test_service_reads_of_bookkeeping_columns_are_not_detail_reads() -> None:
    agg, alerts = "trustlog_aggregator", "trustlog_alerts"
    reads = [
        _read(agg, NOW, objects=("trustlog.events",)),
        _read(agg, NOW + timedelta(minutes=1), objects=("trustlog.events",)),
        _read("trustlog_admin", NOW, objects=("trustlog.events",)),
    ]
    server = {agg: "SELECT ON trustlog.events(columns)", "trustlog_admin": "ALL ON *.*"}
    narrow = {agg: frozenset({"events.kafka_offset", "events.event_id"}), "trustlog_admin": None}

    def review(columns: dict[str, frozenset[str] | None]) -> audit.AccessReview:
        return audit.build_review(
            month="2026-03", database="trustlog", config=CONFIG, server_holders=server,
            cases=[], reads=reads, now=NOW + timedelta(days=1), server_columns=columns,
        )  # fmt: skip

    ok = review(narrow)
    holders = {h.account: h for h in ok.holders}
    assert holders[agg].role == "service" and holders[agg].title == "the aggregator service"
    assert holders[agg].access.startswith("bookkeeping columns of events only")
    assert holders[agg].last_detail_read is None and holders[agg].in_config
    assert alerts not in holders  # no detail grant at all
    assert ok.bookkeeping_reads == {agg: 2}
    assert ok.other_detail_reads == {"trustlog_admin": 1}
    assert not [f for f in ok.findings if agg in f]
    # One column beyond the bookkeeping ones (or a whole-table grant) and it is detail again.
    for wider in (narrow | {agg: narrow[agg] | {"events.user_pseudonym"}}, narrow | {agg: None}):
        bad = review(wider)
        assert bad.bookkeeping_reads == {}
        assert bad.other_detail_reads == {agg: 2, "trustlog_admin": 1}
        assert any(
            f.startswith(f"{agg} (the aggregator service) can read detail") for f in bad.findings
        )
    # No column facts (an old caller): not taken on trust.
    assert review({}).other_detail_reads[agg] == 2
    assert audit.bookkeeping_only(frozenset()) and not audit.bookkeeping_only(None)


def test_review_of_a_past_month_judges_use_at_its_end() -> None:
    read = _read("lead", datetime(2026, 1, 20, tzinfo=UTC))
    review = audit.build_review(
        month="2026-01", database="trustlog", config=replace(CONFIG), server_holders={},
        cases=[], reads=[read], now=NOW,
    )  # fmt: skip
    holders = {h.account: h for h in review.holders}
    assert review.as_of == datetime(2026, 2, 1, tzinfo=UTC)
    assert not holders["lead"].unused  # 12 days before the month's end
