"""Legal holds on records: named detail rows kept past their retention, read by a few.

A hold names the records (event ids, or one pseudonym over a period), a reason, the security
accounts that may read the held copies (at most :data:`MAX_READERS`) and an expiry, capped at
the ``hold`` retention class (TRUSTLOG_HOLD_MAX_DAYS, at most the class's max_days). It is
placed by one security account with a different one approving, both logged in. Placing
copies the rows into ``held_events``, whose TTL is the hold's expiry: ClickHouse deletes
them then like any expired row, and the originals in ``events`` expire on their own schedule.
Releasing deletes the copies at once. Every placement and release is recorded in
``record_holds`` (who, when, why), kept a year past the expiry.

Not to be confused with the ``legal_hold`` flag of a case (trustlog.governance.cases), which
only withholds the notice to the people a case concerns and preserves nothing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from trustlog.governance.cases import (
    PSEUDONYM_RE,
    CaseError,
    _security,
    _text,
    _utc,
)
from trustlog.governance.roles import RolesConfig

MAX_READERS = 3
MAX_EVENT_IDS = 10_000
HELD_TABLE = "held_events"
# Columns of held_events that are about the hold, not copied from events.
HOLD_COLUMNS = ("hold_id", "hold_expires_at", "hold_readers", "held_at")


class HoldError(CaseError):
    """A hold action was refused; the message says why."""


@dataclass(frozen=True)
class RecordHold:
    hold_id: str
    state: str  # active | released (expiry is not a state: see effective_state)
    placed_by: str
    approver: str
    reason: str
    readers: tuple[str, ...]
    scope_kind: str  # events | pseudonym
    scope_value: str
    event_ids: tuple[str, ...]
    period_start: datetime | None
    period_end: datetime | None
    placed_at: datetime
    expires_at: datetime
    held_rows: int = 0
    released_at: datetime | None = None
    released_by: str = ""
    release_reason: str = ""
    version: int = 0

    def effective_state(self, now: datetime) -> str:
        if self.state == "released":
            return "released"
        return "expired" if now >= self.expires_at else "active"


def new_hold(
    config: RolesConfig,
    *,
    placed_by: str,
    approver: str,
    reason: str,
    readers: list[str],
    expires_at: datetime,
    max_days: int,
    now: datetime,
    event_ids: list[str] | None = None,
    pseudonym: str | None = None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
) -> RecordHold:
    """Validate a hold request; raises HoldError with the reason it is refused."""
    try:
        _security(config, placed_by, "account")
        _security(config, approver, "approver")
        reason = _text(reason, "reason")
        readers = sorted({r.strip() for r in readers if r.strip()})
        if not 1 <= len(readers) <= MAX_READERS:
            raise HoldError(f"name 1..{MAX_READERS} readers (security accounts)")
        for r in readers:
            _security(config, r, "reader")
    except CaseError as exc:
        raise HoldError(str(exc)) from None
    if approver == placed_by:
        raise HoldError("the approver must be a different security account")
    now, expires_at = _utc(now), _utc(expires_at)
    if expires_at <= now:
        raise HoldError("the expiry must be in the future")
    if expires_at - now > timedelta(days=max_days):
        raise HoldError(f"a hold lasts at most {max_days} days (TRUSTLOG_HOLD_MAX_DAYS)")
    ids = tuple(sorted({e.strip() for e in event_ids or [] if e.strip()}))
    if bool(ids) == bool(pseudonym):
        raise HoldError("name the records: --event-id ... or --pseudonym with --from/--to")
    if ids:
        if len(ids) > MAX_EVENT_IDS:
            raise HoldError(f"at most {MAX_EVENT_IDS} event ids per hold")
        kind, value, start, end = "events", f"{len(ids)} event(s)", None, None
    else:
        assert pseudonym is not None
        if not PSEUDONYM_RE.match(pseudonym.strip()):
            raise HoldError("--pseudonym must be a pseudonym (p_ and 32 hex), never a user id")
        if period_start is None or period_end is None:
            raise HoldError("--pseudonym needs --from and --to")
        start, end = _utc(period_start), _utc(period_end)
        if end <= start:
            raise HoldError("--to must be after --from")
        kind, value = "pseudonym", pseudonym.strip()
    return RecordHold(
        hold_id=uuid.uuid4().hex,
        state="active",
        placed_by=placed_by,
        approver=approver,
        reason=reason,
        readers=tuple(readers),
        scope_kind=kind,
        scope_value=value,
        event_ids=ids,
        period_start=start,
        period_end=end,
        placed_at=now,
        expires_at=expires_at,
        version=time.time_ns(),
    )


_COLUMNS = [
    "hold_id",
    "state",
    "placed_by",
    "approver",
    "reason",
    "readers",
    "scope_kind",
    "scope_value",
    "event_ids",
    "period_start",
    "period_end",
    "placed_at",
    "expires_at",
    "held_rows",
    "released_at",
    "released_by",
    "release_reason",
    "version",
]


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class HoldStore:
    """Holds and held rows in ClickHouse, written as the admin account."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.db = database

    def save(self, hold: RecordHold) -> None:
        row = [getattr(hold, c) for c in _COLUMNS]
        row[_COLUMNS.index("readers")] = list(hold.readers)
        row[_COLUMNS.index("event_ids")] = list(hold.event_ids)
        self.client.insert(f"{self.db}.record_holds", [row], column_names=_COLUMNS)

    def copy_rows(self, hold: RecordHold) -> int:
        """Copy the records the hold names from events into held_events; returns how many."""
        cols = [
            str(r[0])
            for r in self.client.query(
                "SELECT name FROM system.columns WHERE database = {db:String} "
                f"AND table = '{HELD_TABLE}' ORDER BY position",
                parameters={"db": self.db},
            ).result_rows
            if str(r[0]) not in HOLD_COLUMNS
        ]
        if hold.scope_kind == "events":
            where = "event_id IN {ids:Array(String)}"
            params: dict[str, Any] = {"ids": list(hold.event_ids)}
        else:
            where = (
                "user_pseudonym = {p:String} AND event_time >= {s:DateTime64(3, 'UTC')} "
                "AND event_time < {e:DateTime64(3, 'UTC')}"
            )
            params = {"p": hold.scope_value, "s": hold.period_start, "e": hold.period_end}
        params.update({"h": hold.hold_id, "x": hold.expires_at, "r": list(hold.readers)})
        collist = ", ".join(cols)
        # LIMIT 1 BY event_id: a row replayed into events twice is held once
        self.client.command(
            f"INSERT INTO {self.db}.{HELD_TABLE} (hold_id, hold_expires_at, hold_readers, "
            f"{collist}) SELECT {{h:String}}, toDateTime({{x:DateTime64(3, 'UTC')}}), "
            f"{{r:Array(String)}}, {collist} FROM {self.db}.events WHERE {where} "
            "LIMIT 1 BY event_id",
            parameters=params,
            settings={"insert_deduplicate": 0},
        )
        return int(
            str(
                self.client.command(
                    f"SELECT count() FROM {self.db}.{HELD_TABLE} WHERE hold_id = {{h:String}}",
                    parameters={"h": hold.hold_id},
                )
            )
        )

    def delete_rows(self, hold_id: str) -> None:
        # a mutation, not a lightweight delete: the rows must be gone from disk, not masked
        self.client.command(
            f"ALTER TABLE {self.db}.{HELD_TABLE} DELETE WHERE hold_id = {{h:String}}",
            parameters={"h": hold_id},
            settings={"mutations_sync": 2},
        )

    def list(self, *, include_ended: bool = False) -> list[RecordHold]:
        where = "" if include_ended else "WHERE state = 'active' AND expires_at > now64(3)"
        res = self.client.query(
            f"SELECT {', '.join(_COLUMNS)} FROM {self.db}.record_holds FINAL {where} "
            "ORDER BY placed_at DESC LIMIT 1000"
        )
        out = []
        for row in res.result_rows:
            values = dict(zip(_COLUMNS, (_aware(v) for v in row), strict=True))
            values["readers"] = tuple(values["readers"])
            values["event_ids"] = tuple(values["event_ids"])
            out.append(RecordHold(**values))
        return out

    def get(self, hold_id: str) -> RecordHold:
        hold_id = hold_id.strip()
        if len(hold_id) < 6:
            raise HoldError("give the hold id or at least its first 6 characters")
        found = [h for h in self.list(include_ended=True) if h.hold_id.startswith(hold_id)]
        if not found:
            raise HoldError(f"no hold {hold_id!r}")
        if len(found) > 1:
            raise HoldError(f"{hold_id!r} matches more than one hold; give more characters")
        return found[0]


def place_hold(store: HoldStore, hold: RecordHold) -> RecordHold:
    """Record the hold, copy its rows, record how many were held."""
    store.save(hold)
    n = store.copy_rows(hold)
    placed = replace(hold, held_rows=n, version=time.time_ns())
    store.save(placed)
    return placed


def release_hold(
    store: HoldStore,
    config: RolesConfig,
    hold_id: str,
    actor: str,
    reason: str,
    now: datetime | None = None,
) -> RecordHold:
    """End a hold early: its copies are deleted now; the record says who, when and why."""
    try:
        _security(config, actor, "account")
        reason = _text(reason, "reason")
    except CaseError as exc:
        raise HoldError(str(exc)) from None
    hold = store.get(hold_id)
    if hold.state == "released":
        raise HoldError(f"hold {hold.hold_id} was already released")
    released = replace(
        hold,
        state="released",
        released_at=_utc(now or datetime.now(UTC)),
        released_by=actor,
        release_reason=reason,
        version=time.time_ns(),
    )
    store.save(released)
    store.delete_rows(hold.hold_id)
    return released
