"""Corrections and appeals: an employee contests one of their own records; the security group decides.

An employee (role ``employee``) contests an event or an incident they can see themselves
("not me", "shared account", "automation misfired", "other"), with a few words of context.
Whether the record is theirs is decided by ClickHouse: the CLI reads it *as the employee*,
through their row policy (:func:`find_own_record`), and copies the record's pseudonym, team,
tool, day and cost into the contest. The contest then waits in the queue of the security
group (any security account of config/roles.yaml: security lead, system owner, backup),
who may take it under review and decides: upheld, rejected or corrected, with a note. The
person gets a notice with the outcome and sees it with ``trustlog contest mine``.

``contests`` is append-only: each change is a new full row, the newest is the contest now.
Reports get :func:`annotations` (view ``contest_annotations``): team, tool, day, cost and a
fixed outcome label, never a pseudonym, record id, context or note.

As in :mod:`trustlog.governance.cases`, the storage functions trust their caller (they write
as the admin account); the CLI authenticates the acting account first.
"""

import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from trustlog.governance.cases import PSEUDONYM_RE, insert_notification
from trustlog.governance.roles import RolesConfig

Kind = Literal["not_me", "shared_account", "automation_misfired", "other"]
KINDS: tuple[str, ...] = ("not_me", "shared_account", "automation_misfired", "other")
OUTCOMES: tuple[str, ...] = ("upheld", "rejected", "corrected")
PENDING: tuple[str, ...] = ("open", "under_review")
STATES: tuple[str, ...] = (*PENDING, *OUTCOMES)
# Who may move a contest where. Terminal states are final: new facts make a new contest.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "open": ("under_review", *OUTCOMES),
    "under_review": OUTCOMES,
}
# Upheld with one of these kinds, the record is not this person's own use: attributed = 0.
NOT_THEIRS_KINDS: tuple[str, ...] = ("not_me", "shared_account", "automation_misfired")
RECORD_KINDS: tuple[str, ...] = ("event", "incident")
# The employee's context is about their own record, not a statement: short by design. The
# same bounds are CHECK constraints on the table (0005_contests.sql).
MAX_CONTEXT_CHARS = 1000
MIN_CONTEXT_CHARS_OTHER = 10  # "other" says nothing by itself
MAX_NOTE_CHARS = 2000
MIN_NOTE_CHARS = 10  # rejecting or correcting owes the person a reason
MAX_RECORD_ID_CHARS = 200


class ContestError(ValueError):
    """A contest action was refused; the message says why."""


@dataclass(frozen=True)
class Record:
    """One of the employee's own records, as their ClickHouse account reads it."""

    record_kind: str  # event | incident
    record_id: str
    pseudonym: str
    team: str
    tool: str
    day: date
    cost_usd: Decimal


@dataclass(frozen=True)
class Contest:
    contest_id: str
    state: str
    record_kind: str
    record_id: str
    pseudonym: str
    kind: str
    context: str
    team: str
    tool: str
    record_day: date
    cost_usd: Decimal
    opened_at: datetime
    at: datetime  # when this version was made
    from_state: str = ""
    actor: str = ""  # the security account that made this change; "" when the employee opened it
    note: str = ""
    version: int = 0

    @property
    def outcome(self) -> str:
        return self.state if self.state in OUTCOMES else ""

    @property
    def attributed(self) -> bool:
        """False once upheld as not the person's own use (see NOT_THEIRS_KINDS)."""
        return not (self.state == "upheld" and self.kind in NOT_THEIRS_KINDS)


@dataclass(frozen=True)
class Annotation:
    """One contest as a report may show it: no pseudonym, record id, context or note."""

    contest_id: str
    record_kind: str
    kind: str
    status: str
    outcome: str
    team: str
    tool: str
    day: date
    cost_usd: Decimal
    outcome_label: str
    group_ok: bool


def outcome_label(kind: str, state: str) -> str:
    """The fixed phrase reports show; the view contest_annotations says the same in SQL."""
    if state == "open":
        return "contested, not yet reviewed"
    if state == "under_review":
        return "contested, under review"
    if state == "rejected":
        return "contest rejected"
    if state == "corrected":
        return "corrected after contest"
    return {
        "not_me": "upheld: not this person's use",
        "shared_account": "upheld: shared account",
        "automation_misfired": "upheld: automation misfired",
    }.get(kind, "upheld")


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ContestError("timestamps must carry a time zone")
    return dt.astimezone(UTC)


def check_record_id(record_id: str) -> str:
    rid = (record_id or "").strip()
    if not rid or len(rid) > MAX_RECORD_ID_CHARS:
        raise ContestError(f"a record id is 1..{MAX_RECORD_ID_CHARS} characters")
    return rid


def check_request(kind: str, context: str | None) -> tuple[str, str]:
    """Validate what the employee typed before anything is looked up."""
    if kind not in KINDS:
        raise ContestError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    text = (context or "").strip()
    if len(text) > MAX_CONTEXT_CHARS:
        raise ContestError(
            f"the context is {len(text)} characters; keep it under {MAX_CONTEXT_CHARS}: "
            "say what happened, not more"
        )
    if kind == "other" and len(text) < MIN_CONTEXT_CHARS_OTHER:
        raise ContestError(
            f"kind 'other' needs context (at least {MIN_CONTEXT_CHARS_OTHER} characters)"
        )
    return kind, text


def new_contest(record: Record, kind: str, context: str | None, now: datetime) -> Contest:
    """An open contest of ``record``, which the caller has read as the employee."""
    kind, text = check_request(kind, context)
    if record.record_kind not in RECORD_KINDS:
        raise ContestError(f"unknown record kind {record.record_kind!r}")
    if not PSEUDONYM_RE.match(record.pseudonym):
        # Only a pseudonym may be stored; anything else here is a bug upstream.
        raise ContestError("the record carries no pseudonym; it cannot be contested")
    now = _utc(now)
    return Contest(
        contest_id=str(uuid.uuid4()),
        state="open",
        record_kind=record.record_kind,
        record_id=check_record_id(record.record_id),
        pseudonym=record.pseudonym,
        kind=kind,
        context=text,
        team=record.team,
        tool=record.tool,
        record_day=record.day,
        cost_usd=record.cost_usd,
        opened_at=now,
        at=now,
        version=time.time_ns(),
    )


def transition(
    contest: Contest, config: RolesConfig, actor: str, to_state: str, note: str, now: datetime
) -> Contest:
    """The contest after a security account moves it to ``to_state`` (a new version)."""
    if actor not in config.security_names:
        known = ", ".join(sorted(config.security_names)) or "none configured"
        raise ContestError(f"{actor!r} is not a security account ({known}): only they decide")
    if to_state not in STATES:
        raise ContestError(f"state must be one of {', '.join(STATES)}")
    allowed = TRANSITIONS.get(contest.state, ())
    if to_state not in allowed:
        if not allowed:
            raise ContestError(f"contest {contest.contest_id} is already {contest.state}")
        raise ContestError(
            f"contest {contest.contest_id} is {contest.state}: it can go to {', '.join(allowed)}"
        )
    text = (note or "").strip()
    if len(text) > MAX_NOTE_CHARS:
        raise ContestError(f"the note is longer than {MAX_NOTE_CHARS} characters")
    if to_state in ("rejected", "corrected") and len(text) < MIN_NOTE_CHARS:
        raise ContestError(
            f"{to_state} needs a note (at least {MIN_NOTE_CHARS} characters): the person "
            "is owed the reason or what was corrected"
        )
    now = _utc(now)
    return replace(
        contest,
        state=to_state,
        from_state=contest.state,
        actor=actor,
        note=text,
        at=now,
        version=max(time.time_ns(), contest.version + 1),
    )


@dataclass(frozen=True)
class ContestNotice:
    notification_id: str
    contest_id: str
    kind: str  # contest_resolved
    recipient_kind: str  # pseudonym
    recipient: str
    message: str
    created_at: datetime


_KIND_WORDS = {
    "not_me": "not me",
    "shared_account": "shared account",
    "automation_misfired": "automation misfired",
    "other": "other",
}
_EFFECT = {
    "upheld": "It is marked as upheld in every report that shows it",
    "rejected": "The record stands as it was",
    "corrected": "The record is annotated with the correction",
}


def notice_for(contest: Contest) -> ContestNotice:
    """The notice a decided contest owes the person who contested (by pseudonym)."""
    if contest.state not in OUTCOMES:
        raise ValueError(f"contest {contest.contest_id} is not decided")
    what = "AI usage record" if contest.record_kind == "event" else "incident"
    effect = _EFFECT[contest.state]
    if not contest.attributed:
        effect += " and it no longer counts as your own use"
    note = f" Note: {contest.note}" if contest.note else ""
    message = (
        f"Your contest ({_KIND_WORDS[contest.kind]}) of an {what} of {contest.record_day:%Y-%m-%d} "
        f"(tool {contest.tool}) was {contest.state} on {contest.at:%Y-%m-%d %H:%M} UTC by "
        f"{contest.actor}.{note} {effect}. See `trustlog contest mine`."
    )
    return ContestNotice(
        notification_id=str(uuid.uuid4()),
        contest_id=contest.contest_id,
        kind="contest_resolved",
        recipient_kind="pseudonym",
        recipient=contest.pseudonym,
        message=message,
        created_at=contest.at,
    )


def age(contest: Contest, now: datetime) -> str:
    """How long the contest has waited, e.g. '3d 4h', '2h 10m', '45m'."""
    seconds = max(0, int((_utc(now) - contest.opened_at).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


# --------------------------------------------------------------------------- storage

_COLUMNS = [
    "contest_id",
    "version",
    "at",
    "state",
    "from_state",
    "actor",
    "note",
    "record_kind",
    "record_id",
    "pseudonym",
    "kind",
    "context",
    "team",
    "tool",
    "record_day",
    "cost_usd",
    "opened_at",
]


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _contest(row: Any) -> Contest:
    values = dict(zip(_COLUMNS, (_aware(v) for v in row), strict=True))
    return Contest(**values)


def find_own_record(employee_client: Any, database: str, record_id: str) -> Record | None:
    """The record as the employee's own ClickHouse account reads it; None if it cannot.

    The client must be logged in as the employee: their row policies (events and incidents,
    by their own pseudonyms) decide whether the record is theirs, not this code.
    """
    rid = check_record_id(record_id)
    res = employee_client.query(
        "SELECT user_pseudonym, toString(team), toString(tool), toDate(event_time), cost_usd "
        f"FROM {database}.employee_events WHERE event_id = {{r:String}} LIMIT 1",
        parameters={"r": rid},
    )
    if res.result_rows:
        pseudonym, team, tool, day, cost = res.result_rows[0]
        return Record("event", rid, str(pseudonym), str(team), str(tool), day, Decimal(cost))
    res = employee_client.query(
        "SELECT user_pseudonym, toString(team), toString(tool), toDate(first_seen) "
        f"FROM {database}.employee_incidents WHERE incident_id = {{r:String}} "
        "AND user_pseudonym IS NOT NULL LIMIT 1",
        parameters={"r": rid},
    )
    if res.result_rows:
        pseudonym, team, tool, day = res.result_rows[0]
        return Record("incident", rid, str(pseudonym), str(team), str(tool), day, Decimal(0))
    return None


def own_contests(employee_client: Any, database: str) -> list[Contest]:
    """The employee's contests as they stand, read as the employee (their row policy)."""
    res = employee_client.query(
        f"SELECT {', '.join(_COLUMNS)} FROM {database}.contests "
        "ORDER BY contest_id, version DESC LIMIT 1 BY contest_id"
    )
    return sorted((_contest(r) for r in res.result_rows), key=lambda c: c.opened_at, reverse=True)


class ContestStore:
    """Contests and their notices in ClickHouse (admin client)."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.db = database

    def save(self, contest: Contest) -> None:
        row = [getattr(contest, c) for c in _COLUMNS]
        self.client.insert(f"{self.db}.contests", [row], column_names=_COLUMNS)

    def notify(self, notice: ContestNotice) -> None:
        insert_notification(
            self.client,
            self.db,
            notification_id=notice.notification_id,
            kind=notice.kind,
            recipient_kind=notice.recipient_kind,
            recipient=notice.recipient,
            message=notice.message,
            created_at=notice.created_at,
            contest_id=notice.contest_id,
        )

    def _latest(self, where: str, parameters: dict[str, Any], limit: int) -> list[Contest]:
        res = self.client.query(
            f"SELECT {', '.join(_COLUMNS)} FROM {self.db}.contests "
            f"WHERE contest_id IN (SELECT contest_id FROM {self.db}.contests {where}) "
            f"ORDER BY contest_id, version DESC LIMIT 1 BY contest_id",
            parameters=parameters,
        )
        found = [_contest(r) for r in res.result_rows]
        return sorted(found, key=lambda c: c.opened_at)[:limit]

    def get(self, contest_id: str) -> Contest:
        """By id or a unique prefix of 6+ characters."""
        cid = contest_id.strip()
        if len(cid) < 6:
            raise ContestError("give the contest id or at least its first 6 characters")
        found = self._latest("WHERE startsWith(contest_id, {p:String})", {"p": cid}, 2)
        if not found:
            raise ContestError(f"no contest {cid!r}")
        if len(found) > 1:
            raise ContestError(f"{cid!r} matches more than one contest; give more characters")
        return found[0]

    def history(self, contest_id: str) -> list[Contest]:
        res = self.client.query(
            f"SELECT {', '.join(_COLUMNS)} FROM {self.db}.contests "
            "WHERE contest_id = {c:String} ORDER BY version",
            parameters={"c": contest_id},
        )
        return [_contest(r) for r in res.result_rows]

    def pending_for(self, record_kind: str, record_id: str) -> list[Contest]:
        found = self._latest(
            "WHERE record_kind = {k:String} AND record_id = {r:String}",
            {"k": record_kind, "r": record_id},
            1000,
        )
        return [c for c in found if c.state in PENDING]

    def queue(self, *, include_decided: bool = False, limit: int = 500) -> list[Contest]:
        """Contests waiting for a decision, oldest first (with --all also decided ones)."""
        found = self._latest("", {}, 100_000)
        if not include_decided:
            found = [c for c in found if c.state in PENDING]
        return found[:limit]

    def notices(self, contest_id: str) -> list[ContestNotice]:
        res = self.client.query(
            "SELECT notification_id, contest_id, kind, recipient_kind, recipient, message, "
            f"created_at FROM {self.db}.notifications FINAL WHERE contest_id = {{c:String}} "
            "ORDER BY created_at",
            parameters={"c": contest_id},
        )
        return [ContestNotice(*(_aware(v) for v in row)) for row in res.result_rows]


def _now() -> datetime:
    return datetime.now(UTC)


def open_contest(
    store: ContestStore, record: Record, kind: str, context: str | None, now: datetime | None = None
) -> Contest:
    """Record a contest of ``record`` (already read as the employee: see find_own_record)."""
    contest = new_contest(record, kind, context, now or _now())
    if store.pending_for(record.record_kind, record.record_id):
        raise ContestError(
            f"this {record.record_kind} already has a contest waiting for a decision"
        )
    store.save(contest)
    return contest


def review_contest(
    store: ContestStore,
    config: RolesConfig,
    contest_id: str,
    actor: str,
    now: datetime | None = None,
) -> Contest:
    """A security account takes the contest: under_review, with their name on it."""
    contest = transition(store.get(contest_id), config, actor, "under_review", "", now or _now())
    store.save(contest)
    return contest


def resolve_contest(
    store: ContestStore,
    config: RolesConfig,
    contest_id: str,
    actor: str,
    outcome: str,
    note: str = "",
    now: datetime | None = None,
) -> Contest:
    """Decide a contest and record the notice to the person who contested."""
    if outcome not in OUTCOMES:
        raise ContestError(f"outcome must be one of {', '.join(OUTCOMES)}")
    contest = transition(store.get(contest_id), config, actor, outcome, note, now or _now())
    store.save(contest)
    store.notify(notice_for(contest))
    return contest


# --------------------------------------------------------------------------- reports

_ANNOTATION_COLUMNS = [
    "contest_id",
    "record_kind",
    "kind",
    "status",
    "outcome",
    "team",
    "tool",
    "day",
    "cost_usd",
    "outcome_label",
    "group_ok",
]


def annotations(
    client: Any,
    *,
    start: date,
    end: date,
    team: str | None = None,
    database: str = "trustlog",
) -> list[Annotation]:
    """Contest annotations for records of days in [start, end), optionally of one team.

    Reads the view ``contest_annotations`` with whatever account ``client`` is: finance sees
    every team, a manager only their own teams and only rows whose group was large enough
    (row policy), the admin everything. Ordered by day, team, tool.
    """
    if end <= start:
        raise ContestError("the period must end after it starts")
    where = "day >= {s:Date} AND day < {e:Date}"
    params: dict[str, Any] = {"s": start, "e": end}
    if team is not None:
        where += " AND team = {t:String}"
        params["t"] = team
    res = client.query(
        f"SELECT {', '.join(_ANNOTATION_COLUMNS)} FROM {database}.contest_annotations "
        f"WHERE {where} ORDER BY day, team, tool, contest_id",
        parameters=params,
    )
    out = []
    for row in res.result_rows:
        values = dict(zip(_ANNOTATION_COLUMNS, row, strict=True))
        values["cost_usd"] = Decimal(values["cost_usd"])
        values["group_ok"] = bool(values["group_ok"])
        out.append(Annotation(**values))
    return out
