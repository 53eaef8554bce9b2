"""Pure tests of contests: what an employee may file, the state machine, notices and labels.

The integration test (tests/integration/test_contests.py) proves the database side: whose
record it is, who reads contests, and what the annotation view shows to whom.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from trustlog.governance import contests, roles
from trustlog.governance.contests import ContestError

NOW = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
PSEUDONYM = "p_" + "ab" * 16
CONFIG = roles.parse_roles(
    {
        "version": 1,
        "accounts": [
            {"name": "sec_lead", "role": "security", "title": "Security lead"},
            {"name": "sys_owner", "role": "security", "title": "System owner"},
            {"name": "fin", "role": "finance"},
            {"name": "emp", "role": "employee", "user_id": "u-1"},
        ],
    }
)
RECORD = contests.Record(
    "event", "ev-1", PSEUDONYM, "support", "chat", date(2025, 3, 7), Decimal("0.42")
)


def _open(kind: str = "not_me", context: str = "I was on leave") -> contests.Contest:
    return contests.new_contest(RECORD, kind, context, NOW)


def test_a_new_contest_copies_the_record_and_is_open() -> None:
    c = _open()
    assert (c.state, c.kind, c.context, c.actor, c.from_state) == (
        "open", "not_me", "I was on leave", "", ""
    )  # fmt: skip
    assert (c.record_kind, c.record_id, c.pseudonym, c.team, c.tool, c.record_day) == (
        "event", "ev-1", PSEUDONYM, "support", "chat", date(2025, 3, 7)
    )  # fmt: skip
    assert c.cost_usd == Decimal("0.42") and c.opened_at == c.at == NOW
    assert c.outcome == "" and c.attributed


@pytest.mark.parametrize(
    ("kind", "context", "message"),
    [
        ("mistake", "x", "kind must be one of"),
        ("not_me", "x" * (contests.MAX_CONTEXT_CHARS + 1), "keep it under 1000"),
        ("other", "short", "kind 'other' needs context"),
    ],
)
def test_what_an_employee_may_file(kind: str, context: str, message: str) -> None:
    with pytest.raises(ContestError, match=message):
        contests.new_contest(RECORD, kind, context, NOW)


def test_context_is_trimmed_and_optional_for_a_named_kind() -> None:
    assert _open("not_me", "   ").context == ""
    assert _open("other", "  on loan to another team  ").context == "on loan to another team"
    assert len(_open("not_me", "y" * contests.MAX_CONTEXT_CHARS).context) == 1000


def test_only_a_pseudonym_is_ever_stored() -> None:
    for who in ("alice@example.com", "u-1", "p_short"):
        with pytest.raises(ContestError, match="no pseudonym"):
            contests.new_contest(replace(RECORD, pseudonym=who), "not_me", "", NOW)
    with pytest.raises(ContestError, match="record id"):
        contests.new_contest(replace(RECORD, record_id=" "), "not_me", "", NOW)
    with pytest.raises(ContestError, match="time zone"):
        contests.new_contest(RECORD, "not_me", "", NOW.replace(tzinfo=None))


def test_state_machine() -> None:
    c = _open()
    review = contests.transition(c, CONFIG, "sys_owner", "under_review", "", NOW)
    assert (review.from_state, review.state, review.actor) == ("open", "under_review", "sys_owner")
    assert review.version > c.version and review.contest_id == c.contest_id
    # Decided from open or from under_review; a decided contest is final.
    for start in (c, review):
        for outcome in contests.OUTCOMES:
            done = contests.transition(start, CONFIG, "sec_lead", outcome, "reason given", NOW)
            assert done.outcome == outcome and done.from_state == start.state
            with pytest.raises(ContestError, match=f"already {outcome}"):
                contests.transition(done, CONFIG, "sys_owner", "upheld", "", NOW)
    with pytest.raises(ContestError, match="under_review: it can go to upheld"):
        contests.transition(review, CONFIG, "sys_owner", "under_review", "", NOW)
    with pytest.raises(ContestError, match="it can go to"):
        contests.transition(c, CONFIG, "sys_owner", "open", "", NOW)
    with pytest.raises(ContestError, match="state must be one of"):
        contests.transition(c, CONFIG, "sys_owner", "withdrawn", "", NOW)


def test_only_the_security_group_decides_and_a_refusal_gives_a_reason() -> None:
    c = _open()
    for who in ("emp", "fin", "nobody"):
        with pytest.raises(ContestError, match="not a security account"):
            contests.transition(c, CONFIG, who, "upheld", "", NOW)
    for outcome in ("rejected", "corrected"):
        with pytest.raises(ContestError, match=f"{outcome} needs a note"):
            contests.transition(c, CONFIG, "sys_owner", outcome, " no ", NOW)
    with pytest.raises(ContestError, match="longer than 2000"):
        contests.transition(c, CONFIG, "sys_owner", "upheld", "n" * 2001, NOW)
    assert contests.transition(c, CONFIG, "sys_owner", "upheld", "", NOW).note == ""


@pytest.mark.parametrize(
    ("kind", "outcome", "attributed"),
    [
        ("not_me", "upheld", False),
        ("shared_account", "upheld", False),
        ("automation_misfired", "upheld", False),
        ("other", "upheld", True),
        ("not_me", "rejected", True),
        ("not_me", "corrected", True),
    ],
)
def test_what_an_upheld_contest_changes(kind: str, outcome: str, attributed: bool) -> None:
    c = _open(kind, "context long enough")
    done = contests.transition(c, CONFIG, "sys_owner", outcome, "the reason for it", NOW)
    assert done.attributed is attributed
    assert _open(kind, "context long enough").attributed  # open: still counts until decided


def test_notice_to_the_person_says_what_was_decided() -> None:
    c = contests.transition(_open(), CONFIG, "sys_owner", "upheld", "Badge logs agree", NOW)
    notice = contests.notice_for(c)
    assert (notice.kind, notice.recipient_kind, notice.recipient, notice.contest_id) == (
        "contest_resolved", "pseudonym", PSEUDONYM, c.contest_id
    )  # fmt: skip
    for part in ("(not me)", "2025-03-07", "tool chat", "was upheld", "by sys_owner",
                 "Badge logs agree", "no longer counts as your own use"):  # fmt: skip
        assert part in notice.message, part
    assert "I was on leave" not in notice.message  # their own words are not echoed back
    rejected = contests.transition(_open(), CONFIG, "sec_lead", "rejected", "Logs show use", NOW)
    assert "no longer counts" not in contests.notice_for(rejected).message
    with pytest.raises(ValueError, match="not decided"):
        contests.notice_for(_open())


def test_outcome_labels_are_fixed_phrases_and_match_the_view() -> None:
    labels = {(k, s): contests.outcome_label(k, s) for k in contests.KINDS for s in contests.STATES}
    assert labels[("not_me", "upheld")] == "upheld: not this person's use"
    assert labels[("other", "upheld")] == "upheld"
    assert labels[("not_me", "open")] == "contested, not yet reviewed"
    # Each phrase is in the view's SQL (0005_contests.sql), so the two cannot drift apart.
    sql = (Path(__file__).parents[2] / "schemas/clickhouse/0005_contests.sql").read_text()
    for label in set(labels.values()):
        assert f"'{label.replace(chr(39), chr(39) * 2)}'" in sql, label
    # The CHECK constraints name the same kinds and states as the code.
    assert re.search(r"CHECK kind IN \('not_me', 'shared_account', 'automation_misfired', "
                     r"'other'\)", sql)  # fmt: skip
    assert "CHECK state IN ('open', 'under_review', 'upheld', 'rejected', 'corrected')" in sql
    assert f"lengthUTF8(context) <= {contests.MAX_CONTEXT_CHARS}" in sql


def test_queue_age() -> None:
    c = _open()
    assert contests.age(c, NOW + timedelta(minutes=45)) == "45m"
    assert contests.age(c, NOW + timedelta(hours=2, minutes=10)) == "2h 10m"
    assert contests.age(c, NOW + timedelta(days=3, hours=4)) == "3d 4h"
    assert contests.age(c, NOW - timedelta(minutes=5)) == "0m"
