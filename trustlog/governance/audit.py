"""Read audit and the monthly access review.

Every query ClickHouse runs is in ``system.query_log`` with its user, time, text and the
tables it touched (for a view: the view and the tables under it). :func:`collect_reads`
copies the reads of governed objects, and every refused query (ACCESS_DENIED), into
``read_audit``, stamping each read of detail by a security account with the cases that
allowed it at that moment; the copy outlives query_log rotation. :func:`access_review`
answers the monthly questions: who holds detail access (per the config and per the server's
own grants, with any drift between them), who read what under which case, what was refused,
and which access went unused for 30 days.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from trustlog.governance.cases import Case, CaseStore, active_case_ids, describe_scope
from trustlog.governance.roles import (
    AGGREGATOR_EVENT_COLUMNS,
    DETAIL_TABLE,
    SERVICE_ACCOUNTS,
    SERVICE_ROLE,
    RolesConfig,
)
from trustlog.stack.clickhouse import ADMIN_USER

DETAIL_OBJECTS = (DETAIL_TABLE, "security_events", "employee_events", "held_events")
# Also audited: aggregates built from detail and the views that scope a reader.
GOVERNED_OBJECTS = (
    *DETAIL_OBJECTS,
    "manager_team_weekly",
    "my_cases",
    "my_pseudonyms",
    # contests hold an employee's own words; their incidents name their pseudonym
    "employee_incidents",
    "contests",
    "contests_current",
    "contest_annotations",
)
ACCESS_DENIED = 497
UNUSED_AFTER = timedelta(days=30)
MAX_QUERY_CHARS = 2000
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class Read:
    query_id: str
    event_time: datetime
    account: str
    objects: tuple[str, ...]
    case_ids: tuple[str, ...]
    result_rows: int
    refused: bool
    error_code: int
    query: str

    def touches_detail(self, database: str) -> bool:
        return any(o in self.objects for o in detail_names(database))


def detail_names(database: str) -> tuple[str, ...]:
    return tuple(f"{database}.{o}" for o in DETAIL_OBJECTS)


def month_bounds(month: str) -> tuple[datetime, datetime]:
    match = _MONTH.match(month.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"month must be YYYY-MM, got {month!r}")
    first = date(int(match.group(1)), int(match.group(2)), 1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return (
        datetime(first.year, first.month, 1, tzinfo=UTC),
        datetime(nxt.year, nxt.month, 1, tzinfo=UTC),
    )


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------- collection


def query_log_reads(
    client: Any, database: str, since: datetime, config: RolesConfig, cases: Sequence[Case]
) -> list[Read]:
    """Reads of governed objects and refused queries since ``since``, from system.query_log."""
    client.command("SYSTEM FLUSH LOGS")
    governed = [f"{database}.{o}" for o in GOVERNED_OBJECTS]
    res = client.query(
        "SELECT query_id, query_start_time_microseconds, user, tables, result_rows, exception_code, "
        "substring(query, 1, {n:UInt32}) "
        "FROM system.query_log "
        "WHERE event_time >= {since:DateTime('UTC')} AND type != 'QueryStart' AND ("
        "  (type = 'QueryFinish' AND query_kind IN ('Select', 'Explain') "
        "   AND hasAny(tables, {governed:Array(String)}))"
        "  OR exception_code = {denied:Int32})",
        parameters={
            "since": since.astimezone(UTC).replace(tzinfo=None),
            "governed": governed,
            "denied": ACCESS_DENIED,
            "n": MAX_QUERY_CHARS,
        },
    )
    security = config.security_names
    detail = set(detail_names(database))
    reads = []
    for qid, when, user, tables, rows, code, text in res.result_rows:
        when = _aware(when)
        objects = tuple(sorted(str(t) for t in tables))
        case_ids: list[str] = []
        if user in security and detail.intersection(objects):
            case_ids = active_case_ids(cases, user, when)
        reads.append(
            Read(
                query_id=str(qid),
                event_time=when,
                account=str(user),
                objects=objects,
                case_ids=tuple(case_ids),
                result_rows=int(rows),
                refused=int(code) != 0,
                error_code=int(code),
                query=str(text),
            )
        )
    return reads


_READ_COLUMNS = [
    "query_id",
    "event_time",
    "account",
    "objects",
    "case_ids",
    "result_rows",
    "refused",
    "error_code",
    "query",
]


def store_reads(client: Any, database: str, reads: Sequence[Read]) -> None:
    if not reads:
        return
    rows = [
        [
            r.query_id,
            r.event_time,
            r.account,
            list(r.objects),
            list(r.case_ids),
            r.result_rows,
            int(r.refused),
            r.error_code,
            r.query,
        ]
        for r in reads
    ]
    client.insert(f"{database}.read_audit", rows, column_names=_READ_COLUMNS)


def load_reads(client: Any, database: str, start: datetime, end: datetime) -> list[Read]:
    res = client.query(
        f"SELECT {', '.join(_READ_COLUMNS)} FROM {database}.read_audit FINAL "
        "WHERE event_time >= {s:DateTime64(3, 'UTC')} AND event_time < {e:DateTime64(3, 'UTC')} "
        "ORDER BY event_time",
        parameters={"s": start, "e": end},
    )
    return [
        Read(
            query_id=str(q),
            event_time=_aware(t),
            account=str(a),
            objects=tuple(o),
            case_ids=tuple(c),
            result_rows=int(n),
            refused=bool(r),
            error_code=int(code),
            query=str(text),
        )
        for q, t, a, o, c, n, r, code, text in res.result_rows
    ]


def collect_reads(
    client: Any, database: str, config: RolesConfig, since: datetime, now: datetime | None = None
) -> int:
    """Copy reads since ``since`` from query_log into read_audit; returns how many."""
    now = now or datetime.now(UTC)
    cases = CaseStore(client, database).overlapping(since - timedelta(days=31), now)
    reads = query_log_reads(client, database, since, config, cases)
    store_reads(client, database, reads)
    return len(reads)


def _detail_grants(client: Any, database: str) -> list[tuple[str, str, str, str, str | None]]:
    """(account, access, database, table, column) of every grant that reads detail."""
    res = client.query(
        "SELECT coalesce(g.user_name, rg.user_name) AS account, g.access_type, g.database, "
        "g.table, g.column "
        "FROM system.grants AS g "
        "LEFT JOIN system.role_grants AS rg ON g.role_name = rg.granted_role_name "
        "WHERE g.is_partial_revoke = 0 AND g.access_type IN ('SELECT', 'ALL') "
        "AND (g.database IS NULL OR g.database = {db:String}) "
        "AND (g.table IS NULL OR g.table IN {objs:Array(String)}) "
        "AND account != ''",
        parameters={"db": database, "objs": list(DETAIL_OBJECTS)},
    )
    return [
        (str(a), str(access), db or "*", table or "*", None if col is None else str(col))
        for a, access, db, table, col in res.result_rows
    ]


def server_detail_holders(client: Any, database: str) -> dict[str, str]:
    """Accounts the server itself lets read detail, with how (grant as the server has it)."""
    holders: dict[str, list[str]] = {}
    for account, access, db, table, column in _detail_grants(client, database):
        target = f"{db}.{table}" + ("(columns)" if column else "")
        holders.setdefault(account, []).append(f"{access} ON {target}")
    return {a: ", ".join(sorted(set(v))) for a, v in holders.items()}


def server_detail_columns(client: Any, database: str) -> dict[str, frozenset[str] | None]:
    """Per account holding detail access: the ``table.column`` it may read, or None when a
    grant covers whole tables (every column). Tells bookkeeping-only accounts apart."""
    out: dict[str, frozenset[str] | None] = {}
    for account, _, _, table, column in _detail_grants(client, database):
        if column is None or table == "*":
            out[account] = None
        elif account not in out or out[account] is not None:
            out[account] = (out.get(account) or frozenset()) | {f"{table}.{column}"}
    return out


BOOKKEEPING_COLUMNS = frozenset(f"{DETAIL_TABLE}.{c}" for c in AGGREGATOR_EVENT_COLUMNS)
_SERVICE_OF = {name: service for service, name in SERVICE_ACCOUNTS.items()}


def bookkeeping_only(columns: frozenset[str] | None) -> bool:
    """Can an account with these detail columns (server_detail_columns) see no person, team,
    tool or content class in `events`, only where rows came from and when?"""
    return columns is not None and columns <= BOOKKEEPING_COLUMNS


# --------------------------------------------------------------------------- review (pure)


@dataclass(frozen=True)
class Holder:
    account: str
    role: str  # finance | manager | security | employee | service | admin | unknown
    title: str
    access: str
    in_config: bool
    on_server: bool
    last_detail_read: datetime | None
    unused: bool


@dataclass(frozen=True)
class CaseLine:
    case: Case
    state: str
    reads: int
    rows: int


@dataclass(frozen=True)
class AccessReview:
    month: str
    start: datetime
    end: datetime
    as_of: datetime
    holders: list[Holder]
    cases: list[CaseLine]
    case_reads: list[Read]
    own_reads: dict[str, int]
    other_detail_reads: dict[str, int]
    refused: list[Read]
    findings: list[str] = field(default_factory=list)
    # Reads of `events` by service accounts that can read bookkeeping columns only (per the
    # server's grants when the review ran): where rows came from and when, never who or what.
    bookkeeping_reads: dict[str, int] = field(default_factory=dict)


def build_review(
    *,
    month: str,
    database: str,
    config: RolesConfig,
    server_holders: Mapping[str, str],
    cases: Sequence[Case],
    reads: Sequence[Read],
    now: datetime,
    server_columns: Mapping[str, frozenset[str] | None] | None = None,
) -> AccessReview:
    """The access review of ``month`` from already loaded facts (no I/O).

    ``reads`` must cover from 30 days before the month's end (or now) to that point, so that
    "unused for 30 days" can be judged; only reads inside the month are listed.
    ``server_columns`` (server_detail_columns) shows which service accounts are limited to
    bookkeeping columns; without it every service read of detail counts as a detail read.
    """
    server_columns = server_columns or {}
    bookkeeping = {
        a for a in _SERVICE_OF if a in server_columns and bookkeeping_only(server_columns[a])
    }
    start, end = month_bounds(month)
    as_of = min(end, now)
    in_month = [r for r in reads if start <= r.event_time < end]
    detail_reads = [
        r
        for r in reads
        if not r.refused and r.account not in bookkeeping and r.touches_detail(database)
    ]
    last_read: dict[str, datetime] = {}
    for r in detail_reads:
        if r.event_time < as_of and (
            r.account not in last_read or r.event_time > last_read[r.account]
        ):
            last_read[r.account] = r.event_time

    findings: list[str] = []
    holders: list[Holder] = []
    detail_accounts = [a for a in config.accounts if a.role in ("security", "employee")]
    names = {a.name for a in detail_accounts}
    for acc in detail_accounts:
        on_server = acc.name in server_holders
        last = last_read.get(acc.name)
        # Employees reading their own rows rarely is normal; standing security access is
        # what the monthly review is for.
        unused = acc.role == "security" and (last is None or as_of - last > UNUSED_AFTER)
        holders.append(
            Holder(
                account=acc.name,
                role=acc.role,
                title=acc.title,
                access="detail under an approved case"
                if acc.role == "security"
                else "own records only",
                in_config=True,
                on_server=on_server,
                last_detail_read=last,
                unused=unused,
            )
        )
        if not on_server:
            findings.append(
                f"{acc.name} is a {acc.role} account in the config but the server grants it no "
                "detail access (users.xml not regenerated or SQL not applied)"
            )
        if unused:
            since = f"since {last:%Y-%m-%d}" if last else "ever"
            findings.append(
                f"{acc.name} ({acc.title or acc.role}) holds detail access and has not read detail "
                f"{since}: confirm it is still needed or remove the account"
            )
    for account, how in sorted(server_holders.items()):
        if account in names:
            continue
        role = "admin" if account == ADMIN_USER else "unknown"
        configured = config.get(account)
        if configured is not None:
            role = configured.role
        service = _SERVICE_OF.get(account)
        if service is not None:
            role = SERVICE_ROLE
            if account in bookkeeping:
                how = f"bookkeeping columns of {DETAIL_TABLE} only (no person, team or tool)"
        holders.append(
            Holder(
                account=account,
                role=role,
                title=f"the {service} service" if service else "",
                access=how,
                # services are defined in code (trustlog.governance.roles), not roles.yaml
                in_config=configured is not None or service is not None,
                on_server=True,
                last_detail_read=last_read.get(account),
                unused=False,
            )
        )
        if service is not None:
            if account not in bookkeeping:
                findings.append(
                    f"{account} (the {service} service) can read detail on the server ({how}); "
                    f"it needs only {', '.join(AGGREGATOR_EVENT_COLUMNS)}: revoke the rest"
                )
        elif role != "admin":
            findings.append(
                f"{account} can read detail on the server ({how}) but is not a security or "
                "employee account in the config: revoke it"
            )

    case_lines = []
    for case in cases:
        window = case.access_window()
        touches_month = case.opened_at < end and (
            (window is not None and window[1] >= start)
            or (window is None and case.expires_at >= start)
        )
        if not touches_month:
            continue
        mine = [r for r in in_month if case.case_id in r.case_ids]
        case_lines.append(
            CaseLine(case, case.effective_state(now), len(mine), sum(r.result_rows for r in mine))
        )
        if (
            window is not None
            and window[1] <= as_of
            and not any(case.case_id in r.case_ids for r in detail_reads)
        ):
            findings.append(
                f"case {case.case_id[:8]} ({describe_scope(case)}) granted access that was never used"
            )
        if case.reader not in config.security_names:
            findings.append(
                f"case {case.case_id[:8]} was opened for {case.reader}, no longer a security account"
            )

    sec = config.security_names
    case_reads = [
        r for r in in_month if not r.refused and r.account in sec and r.touches_detail(database)
    ]
    for r in case_reads:
        if not r.case_ids and r.result_rows:
            findings.append(
                f"{r.account} read {r.result_rows} detail rows at {r.event_time:%Y-%m-%d %H:%M} "
                "with no case active: check the row policy"
            )
    emp = {a.name for a in config.by_role("employee")}
    own = Counter(
        r.account
        for r in in_month
        if not r.refused and r.account in emp and r.touches_detail(database)
    )
    other = Counter(
        r.account
        for r in in_month
        if not r.refused and r.account not in sec | emp | bookkeeping and r.touches_detail(database)
    )
    books = Counter(
        r.account
        for r in in_month
        if not r.refused and r.account in bookkeeping and r.touches_detail(database)
    )
    refused = [r for r in in_month if r.refused]
    return AccessReview(
        month=month,
        start=start,
        end=end,
        as_of=as_of,
        holders=holders,
        cases=case_lines,
        case_reads=case_reads,
        own_reads=dict(own),
        other_detail_reads=dict(other),
        refused=refused,
        findings=findings,
        bookkeeping_reads=dict(books),
    )


def access_review(
    client: Any, database: str, config: RolesConfig, month: str, now: datetime | None = None
) -> AccessReview:
    """Collect the latest reads, then build the review of ``month`` (see build_review)."""
    now = now or datetime.now(UTC)
    start, end = month_bounds(month)
    as_of = min(end, now)
    window_start = min(start, as_of - UNUSED_AFTER)
    collect_reads(client, database, config, window_start, now)
    reads = load_reads(client, database, window_start, as_of)
    cases = CaseStore(client, database).overlapping(start - timedelta(days=31), end)
    return build_review(
        month=month,
        database=database,
        config=config,
        server_holders=server_detail_holders(client, database),
        cases=cases,
        reads=reads,
        now=now,
        server_columns=server_detail_columns(client, database),
    )
