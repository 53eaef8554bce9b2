"""What a report holds: periods, rows read from the database, contested-record annotations."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
OTHER = "(other)"  # the manager view's name for tools merged below the group size
TREND_WEEKS = 4
NOTE_MAX_CHARS = 200


class PeriodError(ValueError):
    pass


def parse_month(text: str) -> date:
    """'2026-11' -> the month's first day."""
    m = _MONTH.match(text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise PeriodError(f"month must look like 2026-11, got {text!r}")
    return date(int(m.group(1)), int(m.group(2)), 1)


def next_month(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def parse_iso_week(text: str) -> date:
    """'2026-W47' -> that ISO week's Monday."""
    m = _WEEK.match(text.strip())
    if not m:
        raise PeriodError(f"week must look like 2026-W47, got {text!r}")
    try:
        return date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
    except ValueError:
        raise PeriodError(f"{text!r} is not a week of that year") from None


def iso_week_label(monday: date) -> str:
    y, w, _ = monday.isocalendar()
    return f"{y}-W{w:02d}"


# --------------------------------------------------------------------------- contests


@dataclass(frozen=True)
class Annotation:
    """One contested record as a report may show it: where and when, never who.

    The caller reads these (e.g. from the contests table) and passes them in; a report only
    renders them. ``note`` is cut to NOTE_MAX_CHARS: a report is not the place for a case file.
    """

    team: str
    tool: str
    day: date
    kind: str
    status: str
    outcome: str = ""
    note: str = ""

    @property
    def short_note(self) -> str:
        n = " ".join(self.note.split())
        return n if len(n) <= NOTE_MAX_CHARS else n[: NOTE_MAX_CHARS - 1] + "…"


ANNOTATION_FIELDS = ("team", "tool", "day", "kind", "status", "outcome", "note")


def annotations_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Annotation]:
    """Annotations from mappings with ANNOTATION_FIELDS (a query result or a JSON file)."""
    out = []
    for i, r in enumerate(rows):
        missing = [k for k in ANNOTATION_FIELDS[:5] if k not in r]
        if missing:
            raise ValueError(f"annotation {i}: missing {', '.join(missing)}")
        day = r["day"]
        if isinstance(day, datetime):
            day = day.date()
        elif not isinstance(day, date):
            day = date.fromisoformat(str(day))
        out.append(
            Annotation(
                team=str(r["team"]),
                tool=str(r["tool"]),
                day=day,
                kind=str(r["kind"]),
                status=str(r["status"]),
                outcome=str(r.get("outcome") or ""),
                note=str(r.get("note") or ""),
            )
        )
    return out


def annotations_in(
    annotations: Sequence[Annotation],
    start: date,
    end: date,
    teams: Iterable[str] | None = None,
) -> list[Annotation]:
    """The annotations a report may show: inside [start, end) and, if given, these teams."""
    allowed = None if teams is None else set(teams)
    return sorted(
        (a for a in annotations if start <= a.day < end and (allowed is None or a.team in allowed)),
        key=lambda a: (a.day, a.team, a.tool, a.kind),
    )


# --------------------------------------------------------------------------- finance


@dataclass(frozen=True)
class TeamToolSpend:
    team: str
    tool: str
    requests: int
    input_tokens: int
    output_tokens: int
    errors: int
    retries: int
    blocked: int
    unpriced: int
    cost_usd: Decimal


@dataclass(frozen=True)
class DaySpend:
    day: date
    requests: int
    unpriced: int
    cost_usd: Decimal


@dataclass(frozen=True)
class ProviderSpend:
    provider: str
    requests: int
    cost_usd: Decimal


@dataclass(frozen=True)
class TeamNet:
    team: str
    cost_usd: Decimal
    credit_usd: Decimal
    net_cost_usd: Decimal


@dataclass(frozen=True)
class CreditUse:
    credit: str
    team: str  # '' = any team
    provider: str  # '' = any provider
    amount_usd: Decimal
    applied_usd: Decimal  # drawn in this month
    remaining_usd: Decimal  # left at the end of the month's last day with spend


@dataclass(frozen=True)
class Total:
    key: str
    requests: int
    unpriced: int
    cost_usd: Decimal


def _totals(rows: Iterable[TeamToolSpend], key: str) -> list[Total]:
    acc: dict[str, list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for r in rows:
        a = acc[getattr(r, key)]
        a[0] += r.requests
        a[1] += r.unpriced
        a[2] += r.cost_usd
    return sorted(
        (Total(k, v[0], v[1], v[2]) for k, v in acc.items()), key=lambda t: (-t.cost_usd, t.key)
    )


@dataclass(frozen=True)
class FinanceReport:
    month: date
    account: str
    generated_at: datetime
    by_team_tool: tuple[TeamToolSpend, ...]
    by_day: tuple[DaySpend, ...]
    by_provider: tuple[ProviderSpend, ...]
    net_by_team: tuple[TeamNet, ...]
    credits: tuple[CreditUse, ...]
    annotations: tuple[Annotation, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.month:%Y-%m}"

    @property
    def by_team(self) -> list[Total]:
        return _totals(self.by_team_tool, "team")

    @property
    def by_tool(self) -> list[Total]:
        return _totals(self.by_team_tool, "tool")

    @property
    def total_cost(self) -> Decimal:
        return sum((r.cost_usd for r in self.by_team_tool), Decimal(0))

    @property
    def total_requests(self) -> int:
        return sum(r.requests for r in self.by_team_tool)

    @property
    def total_unpriced(self) -> int:
        return sum(r.unpriced for r in self.by_team_tool)

    def net(self, team: str) -> TeamNet | None:
        return next((n for n in self.net_by_team if n.team == team), None)

    @property
    def total_credit(self) -> Decimal:
        return sum((n.credit_usd for n in self.net_by_team), Decimal(0))

    @property
    def total_net(self) -> Decimal:
        return sum((n.net_cost_usd for n in self.net_by_team), Decimal(0))


# --------------------------------------------------------------------------- team lead


@dataclass(frozen=True)
class TeamWeekRow:
    week: date
    tool: str  # a tool, or OTHER for tools merged because too few people used them
    people: int
    requests: int
    input_tokens: int
    output_tokens: int
    errors: int
    blocked: int
    unpriced: int
    cost_usd: Decimal


@dataclass(frozen=True)
class TeamReport:
    team: str
    week: date  # Monday of the requested week; the trend shows the TREND_WEEKS up to it
    account: str
    generated_at: datetime
    min_group_size: int
    rows: tuple[TeamWeekRow, ...]
    annotations: tuple[Annotation, ...] = ()

    @property
    def label(self) -> str:
        return iso_week_label(self.week)

    @property
    def weeks(self) -> list[date]:
        return [self.week - timedelta(days=7 * k) for k in range(TREND_WEEKS - 1, -1, -1)]

    @property
    def shown_weeks(self) -> set[date]:
        return {r.week for r in self.rows}

    def week_rows(self, week: date) -> list[TeamWeekRow]:
        return sorted(
            (r for r in self.rows if r.week == week),
            key=lambda r: (r.tool == OTHER, -r.cost_usd, r.tool),
        )

    def week_cost(self, week: date) -> Decimal:
        return sum((r.cost_usd for r in self.rows if r.week == week), Decimal(0))

    @property
    def tools(self) -> list[str]:
        named = sorted({r.tool for r in self.rows if r.tool != OTHER})
        return named + ([OTHER] if any(r.tool == OTHER for r in self.rows) else [])

    @property
    def has_other(self) -> bool:
        return any(r.tool == OTHER for r in self.rows)


# --------------------------------------------------------------------------- employee (sample)


@dataclass(frozen=True)
class EmployeeView:
    """What an employee sees about themself: their own rows, the columns their role reads."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
