"""Time-boxed deeper review: a case lets one security account read the detail it covers.

A case names a reason, a scope (one pseudonym, team or tool), the period of event time it
covers and an expiry (at most ``cases.max_days`` of config/roles.yaml). It is opened by the
security account that will read (the reader) and does nothing until a *different* security
account, named at opening, approves it. From approval until it is closed or expires, the
reader's row policy on ``events`` shows the rows it covers; the expiry is checked by
ClickHouse at query time (view ``my_cases``), so access ends on time with nothing running.

Approval records a notice to the people concerned (the pseudonym's owner, the team, or the
tool's users) in ``notifications``, and closing records the outcome and another notice,
unless the case is under legal hold, which needs its own reason.

The functions below the storage line trust their caller: they write as the admin account.
The CLI (trustlog.governance.cli) authenticates the acting account with its own ClickHouse
password before calling them.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from trustlog.governance.roles import RolesConfig

ScopeKind = Literal["pseudonym", "team", "tool"]
SCOPE_KINDS: tuple[ScopeKind, ...] = ("pseudonym", "team", "tool")
OUTCOMES = ("no_finding", "finding_resolved", "escalated", "withdrawn")
MIN_REASON_CHARS = 10
MAX_TEXT_CHARS = 2000
# The redactor's pseudonym format (services/redactor/identity.py). Checking it keeps a raw
# user id or e-mail from ever being typed into a case (and so into a notice).
PSEUDONYM_RE = re.compile(r"^p_[0-9a-f]{32}$")


class CaseError(ValueError):
    """A case action was refused; the message says why."""


@dataclass(frozen=True)
class Case:
    case_id: str
    state: str  # pending | open | closed (expiry is not a state: see effective_state)
    reader: str
    approver: str
    reason: str
    scope_kind: str
    scope_value: str
    period_start: datetime
    period_end: datetime
    opened_at: datetime
    expires_at: datetime
    approved_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str = ""
    outcome: str = ""
    outcome_note: str = ""
    legal_hold: bool = False
    legal_hold_reason: str = ""
    version: int = 0

    def effective_state(self, now: datetime) -> str:
        """pending | open | expired | closed, as ClickHouse would enforce it at ``now``."""
        if self.state == "closed":
            return "closed"
        if now >= self.expires_at:
            return "expired"
        return self.state

    def grants_access(self, now: datetime) -> bool:
        return self.effective_state(now) == "open" and self.approved_at is not None

    def access_window(self) -> tuple[datetime, datetime] | None:
        """When the reader could read under this case, or None if it never opened."""
        if self.approved_at is None:
            return None
        end = self.expires_at
        if self.closed_at is not None and self.closed_at < end:
            end = self.closed_at
        return (self.approved_at, end)


@dataclass(frozen=True)
class Notification:
    notification_id: str
    case_id: str
    kind: str  # case_opened | case_closed
    recipient_kind: str
    recipient: str
    message: str
    created_at: datetime
    # The case's period: a team or tool notice reaches the employees with records of their
    # own in it (row policy on `notifications`, trustlog/governance/roles.py).
    period_start: datetime | None = None
    period_end: datetime | None = None


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise CaseError("timestamps must carry a time zone")
    return dt.astimezone(UTC)


def _text(value: str | None, what: str, min_chars: int = MIN_REASON_CHARS) -> str:
    text = (value or "").strip()
    if len(text) < min_chars:
        raise CaseError(f"{what} is required (at least {min_chars} characters): say why")
    if len(text) > MAX_TEXT_CHARS:
        raise CaseError(f"{what} is longer than {MAX_TEXT_CHARS} characters")
    return text


def _security(config: RolesConfig, name: str, what: str) -> str:
    if name not in config.security_names:
        known = ", ".join(sorted(config.security_names)) or "none configured"
        raise CaseError(f"{what} {name!r} is not a security account ({known})")
    return name


def check_scope(kind: str, value: str) -> tuple[str, str]:
    if kind not in SCOPE_KINDS:
        raise CaseError(f"scope must be one of {', '.join(SCOPE_KINDS)}, got {kind!r}")
    value = value.strip()
    if kind == "pseudonym" and not PSEUDONYM_RE.match(value):
        raise CaseError("a pseudonym scope must be a pseudonym (p_ and 32 hex), never a user id")
    if not value or len(value) > 200:
        raise CaseError(f"{kind} scope must name one {kind} (1..200 characters)")
    return kind, value


def new_case(
    config: RolesConfig,
    *,
    reader: str,
    approver: str,
    reason: str,
    scope_kind: str,
    scope_value: str,
    period_start: datetime,
    period_end: datetime | None,
    expires_in: timedelta,
    now: datetime,
    legal_hold_reason: str | None = None,
) -> Case:
    """A pending case, after every check that does not need the database."""
    now = _utc(now)
    _security(config, reader, "reader")
    _security(config, approver, "approver")
    if approver == reader:
        raise CaseError("the approver must be a different security account than the reader")
    reason = _text(reason, "a reason")
    kind, value = check_scope(scope_kind, scope_value)
    limit = timedelta(days=config.cases.max_days)
    if expires_in <= timedelta(0):
        raise CaseError("the expiry must be in the future")
    if expires_in > limit:
        raise CaseError(f"a case may stay open at most {config.cases.max_days} days")
    expires_at = now + expires_in
    start = _utc(period_start)
    end = _utc(period_end) if period_end is not None else now
    if end <= start:
        raise CaseError("the period must end after it starts")
    if end > expires_at:
        raise CaseError("the period cannot reach past the case's expiry")
    if end - start > timedelta(days=config.cases.max_period_days):
        raise CaseError(f"a case may cover at most {config.cases.max_period_days} days of events")
    hold_reason = ""
    if legal_hold_reason is not None:
        hold_reason = _text(legal_hold_reason, "a legal-hold reason")
    return Case(
        case_id=str(uuid.uuid4()),
        state="pending",
        reader=reader,
        approver=approver,
        reason=reason,
        scope_kind=kind,
        scope_value=value,
        period_start=start,
        period_end=end,
        opened_at=now,
        expires_at=expires_at,
        legal_hold=bool(hold_reason),
        legal_hold_reason=hold_reason,
        version=time.time_ns(),
    )


def approved(case: Case, config: RolesConfig, approver: str, now: datetime) -> Case:
    now = _utc(now)
    _security(config, approver, "approver")
    if approver != case.approver:
        raise CaseError(f"case {case.case_id} names {case.approver!r} as its approver")
    state = case.effective_state(now)
    if state != "pending":
        raise CaseError(f"case {case.case_id} is {state}, not pending")
    return replace(case, state="open", approved_at=now, version=time.time_ns())


def closed(
    case: Case, config: RolesConfig, actor: str, outcome: str, note: str, now: datetime
) -> Case:
    now = _utc(now)
    _security(config, actor, "actor")
    if case.state == "closed":
        raise CaseError(f"case {case.case_id} is already closed")
    if outcome not in OUTCOMES:
        raise CaseError(f"outcome must be one of {', '.join(OUTCOMES)}")
    note = (note or "").strip()
    if len(note) > MAX_TEXT_CHARS:
        raise CaseError(f"the note is longer than {MAX_TEXT_CHARS} characters")
    return replace(
        case,
        state="closed",
        closed_at=now,
        closed_by=actor,
        outcome=outcome,
        outcome_note=note,
        version=time.time_ns(),
    )


def _scope_words(case: Case) -> str:
    if case.scope_kind == "pseudonym":
        return "your AI usage records"
    if case.scope_kind == "team":
        return f"AI usage records of team {case.scope_value}"
    return f"AI usage records of the tool {case.scope_value}"


def _fmt(dt: datetime) -> str:
    return f"{dt:%Y-%m-%d %H:%M} UTC"


def notification_for(case: Case, kind: str, now: datetime) -> Notification | None:
    """The notice a case event owes the people it concerns; None under legal hold."""
    if case.legal_hold:
        return None
    period = f"from {_fmt(case.period_start)} to {_fmt(case.period_end)}"
    if kind == "case_opened":
        message = (
            f"A security review of {_scope_words(case)} {period} started on {_fmt(now)}. "
            f"Reason: {case.reason} Reviewer: {case.reader}, approved by {case.approver}. "
            f"Access ends no later than {_fmt(case.expires_at)}; no message content is kept, "
            "only the metadata of each call."
        )
    elif kind == "case_closed":
        note = f" Note: {case.outcome_note}" if case.outcome_note else ""
        message = (
            f"The security review of {_scope_words(case)} {period} ended on {_fmt(now)} "
            f"with outcome {case.outcome.replace('_', ' ')}.{note} Access to the records "
            "under this review has ended."
        )
    else:
        raise ValueError(f"unknown notification kind {kind!r}")
    return Notification(
        notification_id=str(uuid.uuid4()),
        case_id=case.case_id,
        kind=kind,
        recipient_kind=case.scope_kind,
        recipient=case.scope_value,
        message=message,
        created_at=_utc(now),
        period_start=case.period_start,
        period_end=case.period_end,
    )


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '12h', '7d'."""
    match = _DURATION.match(text)
    if not match:
        raise CaseError(f"{text!r} is not a duration like 30s, 15m, 12h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_time(text: str, now: datetime) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or a duration ago ('7d')."""
    if _DURATION.match(text):
        return _utc(now) - parse_duration(text)
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CaseError(f"{text!r} is neither an ISO time (2025-01-31T12:00) nor e.g. 7d") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# --------------------------------------------------------------------------- storage

_CASE_COLUMNS = [
    "case_id",
    "state",
    "reader",
    "approver",
    "reason",
    "scope_kind",
    "scope_value",
    "period_start",
    "period_end",
    "opened_at",
    "expires_at",
    "approved_at",
    "closed_at",
    "closed_by",
    "outcome",
    "outcome_note",
    "legal_hold",
    "legal_hold_reason",
    "version",
]


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


_NOTIFICATION_COLUMNS = [
    "notification_id",
    "case_id",
    "contest_id",
    "kind",
    "recipient_kind",
    "recipient",
    "message",
    "created_at",
    "period_start",
    "period_end",
    "version",
]


def insert_notification(
    client: Any,
    database: str,
    *,
    notification_id: str,
    kind: str,
    recipient_kind: str,
    recipient: str,
    message: str,
    created_at: datetime,
    case_id: str = "",
    contest_id: str = "",
    period_start: datetime | None = None,
    period_end: datetime | None = None,
) -> None:
    """One notice (cases and contests write the same table); the person concerned reads it
    with `trustlog notices`, under their row policy."""
    row = [
        notification_id,
        case_id,
        contest_id,
        kind,
        recipient_kind,
        recipient,
        message,
        created_at,
        period_start,
        period_end,
        time.time_ns(),
    ]
    client.insert(f"{database}.notifications", [row], column_names=_NOTIFICATION_COLUMNS)


class CaseStore:
    """Cases and notices in ClickHouse (admin client): one row per case version."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.db = database

    def save(self, case: Case) -> None:
        row = [getattr(case, c) for c in _CASE_COLUMNS]
        row[_CASE_COLUMNS.index("legal_hold")] = int(case.legal_hold)
        self.client.insert(f"{self.db}.cases", [row], column_names=_CASE_COLUMNS)

    def notify(self, note: Notification) -> None:
        insert_notification(
            self.client,
            self.db,
            notification_id=note.notification_id,
            kind=note.kind,
            recipient_kind=note.recipient_kind,
            recipient=note.recipient,
            message=note.message,
            created_at=note.created_at,
            case_id=note.case_id,
            period_start=note.period_start,
            period_end=note.period_end,
        )

    def _select(self, where: str, parameters: dict[str, Any], limit: int = 1000) -> list[Case]:
        res = self.client.query(
            f"SELECT {', '.join(_CASE_COLUMNS)} FROM {self.db}.cases FINAL {where} "
            f"ORDER BY opened_at DESC LIMIT {int(limit)}",
            parameters=parameters,
        )
        out = []
        for row in res.result_rows:
            values = dict(zip(_CASE_COLUMNS, (_aware(v) for v in row), strict=True))
            values["legal_hold"] = bool(values["legal_hold"])
            out.append(Case(**values))
        return out

    def get(self, case_id: str) -> Case:
        """By id or a unique prefix of 6+ characters."""
        case_id = case_id.strip()
        if len(case_id) < 6:
            raise CaseError("give the case id or at least its first 6 characters")
        found = self._select("WHERE startsWith(case_id, {p:String})", {"p": case_id}, limit=2)
        if not found:
            raise CaseError(f"no case {case_id!r}")
        if len(found) > 1:
            raise CaseError(f"{case_id!r} matches more than one case; give more characters")
        return found[0]

    def recent(self, *, since: datetime | None = None, limit: int = 200) -> list[Case]:
        if since is None:
            return self._select("", {}, limit)
        return self._select("WHERE opened_at >= {s:DateTime64(3, 'UTC')}", {"s": since}, limit)

    def overlapping(self, start: datetime, end: datetime) -> list[Case]:
        """Cases opened before ``end`` whose access could reach past ``start``."""
        return self._select(
            "WHERE opened_at < {e:DateTime64(3, 'UTC')} AND expires_at >= {s:DateTime64(3, 'UTC')}",
            {"s": start, "e": end},
            limit=100_000,
        )

    def notifications(self, case_id: str) -> list[Notification]:
        res = self.client.query(
            f"SELECT notification_id, case_id, kind, recipient_kind, recipient, message, "
            f"created_at, period_start, period_end FROM {self.db}.notifications FINAL WHERE case_id = {{c:String}} "
            "ORDER BY created_at",
            parameters={"c": case_id},
        )
        return [Notification(*(_aware(v) for v in row)) for row in res.result_rows]


def _now() -> datetime:
    return datetime.now(UTC)


def open_case(
    store: CaseStore,
    config: RolesConfig,
    *,
    reader: str,
    approver: str,
    reason: str,
    scope_kind: str,
    scope_value: str,
    period_start: datetime,
    period_end: datetime | None = None,
    expires_in: timedelta,
    legal_hold_reason: str | None = None,
    now: datetime | None = None,
) -> Case:
    """Record a pending case; it grants nothing until its approver approves it."""
    case = new_case(
        config,
        reader=reader,
        approver=approver,
        reason=reason,
        scope_kind=scope_kind,
        scope_value=scope_value,
        period_start=period_start,
        period_end=period_end,
        expires_in=expires_in,
        now=now or _now(),
        legal_hold_reason=legal_hold_reason,
    )
    store.save(case)
    return case


def approve_case(
    store: CaseStore, config: RolesConfig, case_id: str, approver: str, now: datetime | None = None
) -> Case:
    """Open the case for its reader and record the notice (unless under legal hold)."""
    now = now or _now()
    case = approved(store.get(case_id), config, approver, now)
    store.save(case)
    note = notification_for(case, "case_opened", now)
    if note is not None:
        store.notify(note)
    return case


def close_case(
    store: CaseStore,
    config: RolesConfig,
    case_id: str,
    actor: str,
    outcome: str,
    note: str = "",
    now: datetime | None = None,
) -> Case:
    """Close a case with its outcome; people notified of its opening hear that it ended."""
    now = now or _now()
    before = store.get(case_id)
    case = closed(before, config, actor, outcome, note, now)
    store.save(case)
    if before.approved_at is not None:
        notice = notification_for(case, "case_closed", now)
        if notice is not None:
            store.notify(notice)
    return case


def describe_scope(case: Case) -> str:
    return f"{case.scope_kind}:{case.scope_value}"


def active_case_ids(cases: Sequence[Case], reader: str, at: datetime) -> list[str]:
    """Ids of the reader's cases that granted access at ``at`` (for the read audit)."""
    out = []
    for case in cases:
        window = case.access_window()
        if case.reader == reader and window is not None and window[0] <= at < window[1]:
            out.append(case.case_id)
    return sorted(out)
