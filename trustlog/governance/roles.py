"""Role accounts from ``config/roles.yaml``, enforced by ClickHouse itself.

One model, :class:`AccessSpec` (an account's grants and row filters), is built from the config
and rendered twice: as users.xml users for the local server, whose users come from users.xml
only, and as SQL statements (CREATE USER, GRANT, CREATE ROW POLICY) for a production server.
What a role may read is fixed here; which detail columns follows each field's ``roles`` in
``schemas/fields.yaml``.

Detail (``events``) is reached through column grants plus a row policy, never through a
DEFINER view: ClickHouse pushes a reader's own WHERE below a view's filter, which turns
``throwIf`` into an oracle for rows the view hides, while a row policy is applied as the table
is read (see 0004_governance.sql). Aggregates for managers come from a DEFINER view the
manager has no way around: their account is read-only, so no setting can change how it runs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trustlog.registry import Registry, registry
from trustlog.stack.clickhouse import (
    ADMIN_USER,
    LOOPBACK_NETWORKS,
    UserDef,
    admin_user,
    render_users_xml,
    sha256_hex,
)

ROLES = ("finance", "manager", "security", "employee")
DETAIL_TABLE = "events"
# Every role account gets this profile: readonly = 1 means no setting can be changed, so
# nobody can, e.g., cut a scan short (read_overflow_mode=break) and subtract two aggregates.
READER_PROFILE = "trustlog_reader"
READER_PROFILE_SETTINGS: Mapping[str, int] = {"readonly": 1}

# Objects (tables or views in the trustlog database) each role may SELECT whole. Detail
# columns of `events` come on top for security and employee (detail_columns()).
ROLE_OBJECTS: Mapping[str, tuple[str, ...]] = {
    # Totals by team, tool and period; the finance_* views run as their invoker, so the
    # rollups (no pseudonyms), the credits and the credit view under them are granted too
    # (without credit_spend_by_day the two credit views refused finance: ACCESS_DENIED).
    "finance": (
        "spend_daily",
        "spend_hourly",
        "credits",
        "credit_spend_by_day",
        "finance_spend_by_month",
        "finance_spend_by_week",
        "finance_week_over_week",
        "finance_top_movers",
        "finance_credit_drawdown",
        "finance_net_spend_by_month",
        # What was contested, without any person in it (0005_contests.sql).
        "contest_annotations",
    ),
    "manager": ("manager_team_weekly", "contest_annotations"),
    # Detail only under a case (row policy below); rollups and incidents to know where to look;
    # contests, whose queue the security group works.
    "security": (
        "security_events",
        "my_cases",
        "spend_daily",
        "spend_hourly",
        "incidents",
        "contests",
        "contests_current",
    ),
    # Contests: only their own (row policy on `contests`, by their pseudonyms). Notices: the
    # ones that concern them (row policy on `notifications`, employee_notice_filter).
    "employee": (
        "employee_events",
        "my_pseudonyms",
        "employee_incidents",
        "contests",
        "contests_current",
        "notifications",
    ),
}
DETAIL_ROLES = ("security", "employee")
# Employees read the incidents that name one of their pseudonyms (employee_incidents), these
# columns only: not the owner routing, evidence map or lifecycle bookkeeping.
INCIDENTS_TABLE = "incidents"
EMPLOYEE_INCIDENT_COLUMNS = (
    "incident_id", "rule", "category", "severity", "state", "team", "tool", "first_seen",
    "last_seen", "signal_count", "summary", "user_pseudonym",
)  # fmt: skip
CONTESTS_TABLE = "contests"
NOTICES_TABLE = "notifications"
ANNOTATIONS_VIEW = "contest_annotations"

MAX_SECURITY_ACCOUNTS = 5
MIN_GROUP_SIZE_FLOOR = 3  # also the floor inside manager_team_weekly
MAX_CASE_DAYS_CEILING = 30
# Service accounts (below) are not in roles.yaml; their names are taken.
SERVICE_ACCOUNTS: Mapping[str, str] = {
    "aggregator": "trustlog_aggregator",
    "alerts": "trustlog_alerts",
}
RESERVED_NAMES = frozenset({"default", ADMIN_USER, *SERVICE_ACCOUNTS.values()})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class RolesError(ValueError):
    """config/roles.yaml is invalid; the message lists every problem."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    teams: tuple[str, ...] = ()
    title: str = ""
    # Employees only: the id producers send. Never written to ClickHouse; only its
    # pseudonyms are (employee_pseudonyms, by sync()).
    user_id: str | None = field(default=None, repr=False)
    password_sha256_hex: str | None = field(default=None, repr=False)
    networks: tuple[str, ...] = LOOPBACK_NETWORKS


@dataclass(frozen=True)
class CaseLimits:
    max_days: int = 14
    max_period_days: int = 31


@dataclass(frozen=True)
class RolesConfig:
    accounts: tuple[Account, ...]
    min_group_size: int = 5
    cases: CaseLimits = field(default_factory=CaseLimits)

    def by_role(self, role: str) -> tuple[Account, ...]:
        return tuple(a for a in self.accounts if a.role == role)

    @property
    def security_names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.by_role("security"))

    def get(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)


def _str_list(value: Any, where: str, errors: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        errors.append(f"{where}: must be a list of non-empty strings")
        return ()
    return tuple(v.strip() for v in value)


def _int(
    data: Mapping[str, Any], key: str, default: int, lo: int, hi: int, where: str, errors: list[str]
) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        errors.append(f"{where}{key}: must be an integer in {lo}..{hi}, got {value!r}")
        return default
    return value


_ACCOUNT_KEYS = {"name", "role", "teams", "title", "user_id", "password_sha256_hex", "networks"}


def _account(index: int, spec: Any, errors: list[str]) -> Account | None:
    where = f"accounts[{index}]"
    if not isinstance(spec, dict):
        errors.append(f"{where}: must be a mapping")
        return None
    unknown = sorted(set(spec) - _ACCOUNT_KEYS)
    if unknown:
        errors.append(f"{where}: unknown keys {unknown}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors.append(f"{where}: name {name!r} must be letters, digits and _ (max 64)")
        return None
    where = f"account {name!r}"
    if name in RESERVED_NAMES:
        errors.append(f"{where}: the name is reserved")
    role = spec.get("role")
    if role not in ROLES:
        errors.append(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
        return None
    teams = _str_list(spec.get("teams"), f"{where}: teams", errors)
    if role == "manager" and not teams:
        errors.append(f"{where}: a manager needs `teams` (the teams whose trend they see)")
    if role != "manager" and teams:
        errors.append(f"{where}: only managers have `teams`")
    user_id = spec.get("user_id")
    if role == "employee":
        if not isinstance(user_id, str) or not user_id.strip():
            errors.append(f"{where}: an employee needs `user_id` (the id producers send)")
            user_id = None
    elif user_id is not None:
        errors.append(f"{where}: only employees have `user_id`")
        user_id = None
    pw_hash = spec.get("password_sha256_hex")
    if pw_hash is not None and (not isinstance(pw_hash, str) or not _SHA256_HEX.match(pw_hash)):
        errors.append(f"{where}: password_sha256_hex must be 64 lowercase hex characters")
        pw_hash = None
    networks = _str_list(spec.get("networks"), f"{where}: networks", errors) or LOOPBACK_NETWORKS
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            errors.append(f"{where}: network {net!r} is not an IP address or CIDR")
    title = spec.get("title", "")
    if not isinstance(title, str):
        errors.append(f"{where}: title must be a string")
        title = ""
    return Account(
        name=name,
        role=role,
        teams=teams,
        title=title,
        user_id=user_id.strip() if isinstance(user_id, str) else None,
        password_sha256_hex=pw_hash,
        networks=networks,
    )


def parse_roles(data: Any) -> RolesConfig:
    """Validate a loaded roles.yaml; every problem is reported at once."""
    if not isinstance(data, dict):
        raise RolesError("roles config must be a mapping")
    errors: list[str] = []
    if data.get("version") != 1:
        errors.append(f"version must be 1, got {data.get('version')!r}")
    unknown = sorted(set(data) - {"version", "min_group_size", "cases", "accounts"})
    if unknown:
        errors.append(f"unknown keys {unknown}")
    min_group = _int(data, "min_group_size", 5, MIN_GROUP_SIZE_FLOOR, 1000, "", errors)
    cases_spec = data.get("cases") or {}
    if not isinstance(cases_spec, dict):
        errors.append("cases: must be a mapping")
        cases_spec = {}
    limits = CaseLimits(
        max_days=_int(cases_spec, "max_days", 14, 1, MAX_CASE_DAYS_CEILING, "cases.", errors),
        max_period_days=_int(cases_spec, "max_period_days", 31, 1, 366, "cases.", errors),
    )
    raw_accounts = data.get("accounts") or []
    if not isinstance(raw_accounts, list):
        errors.append("accounts: must be a list")
        raw_accounts = []
    accounts = [a for i, s in enumerate(raw_accounts) if (a := _account(i, s, errors))]
    names = [a.name for a in accounts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        errors.append(f"accounts declared twice: {dupes}")
    security = [a.name for a in accounts if a.role == "security"]
    if len(security) > MAX_SECURITY_ACCOUNTS:
        errors.append(
            f"{len(security)} security accounts; detail access is for a small named list "
            f"(at most {MAX_SECURITY_ACCOUNTS}: security lead, system owner, backup)"
        )
    if errors:
        raise RolesError("invalid roles config:\n  " + "\n  ".join(errors))
    return RolesConfig(accounts=tuple(accounts), min_group_size=min_group, cases=limits)


def load_roles(path: Path) -> RolesConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RolesError(f"cannot read {path}: {exc.strerror}") from None
    return parse_roles(data)


# --------------------------------------------------------------------------- access model


@dataclass(frozen=True)
class AccessSpec:
    """What one account may read, in ClickHouse terms; both renderers start from this."""

    account: str
    role: str
    # users.xml form, without a grantee: "GRANT SELECT ON db.x" / "GRANT SELECT(a, b) ON db.t"
    grants: tuple[str, ...]
    # "db.table" -> boolean SQL expression: the only rows of that table the account sees
    row_filters: Mapping[str, str]


def sql_string(value: str) -> str:
    """A ClickHouse string literal (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def detail_columns(role: str, reg: Registry | None = None) -> tuple[str, ...]:
    """Columns of `events` the role may read: fields and storage columns naming the role."""
    reg = reg or registry()
    cols = [n for n, f in reg.fields.items() if role in f.roles]
    cols += [n for n, c in reg.storage_columns.items() if role in c.roles]
    return tuple(cols)


def security_row_filter(database: str) -> str:
    """Rows of `events` one of the reader's open cases covers (scope and period).

    my_cases holds only the reader's approved, unclosed cases with now() < expires_at, so
    access ends at expiry with no job running; with no case the array is empty: no rows.
    """
    return (
        "arrayExists(c -> event_time >= c.1 AND event_time < c.2 AND multiIf("
        "c.3 = 'pseudonym', user_pseudonym = c.4, c.3 = 'team', team = c.4, "
        "c.3 = 'tool', tool = c.4, 0), "
        f"(SELECT groupArray((period_start, period_end, scope_kind, scope_value)) "
        f"FROM {database}.my_cases))"
    )


# Legal holds on records (trustlog/governance/holds.py): held copies of detail rows, each row
# naming the security accounts that may read it. Not the case flag `legal_hold`.
HELD_TABLE = "held_events"
HELD_EXTRA_COLUMNS = ("hold_id", "hold_expires_at", "held_at")


def held_row_filter() -> str:
    """Rows of holds that list the reader, and only before the hold's expiry (checked at query
    time, so reading ends on time even before the TTL merge deletes the rows)."""
    return "has(hold_readers, currentUser()) AND hold_expires_at > now()"


def employee_row_filter(database: str) -> str:
    return employee_pseudonym_filter(database, "user_pseudonym")


def employee_pseudonym_filter(database: str, column: str) -> str:
    """Rows whose ``column`` is one of the reader's own pseudonyms."""
    return f"{column} IN (SELECT pseudonym FROM {database}.my_pseudonyms)"


def employee_notice_filter(database: str) -> str:
    """Notices that concern the reader (0008_employee_notices.sql): addressed to one of their
    pseudonyms, or to a team or tool in which they have a record of their own (their row
    policy on `events` applies inside this subquery) within the case's period. A notice
    without a period (written before 0008) falls back to any kept record in that team/tool.
    """
    # One scan of the reader's own rows, as (kind, name, event times) per team and per tool.
    # ARRAY JOIN rather than UNION ALL: a row policy's UNION is not normalized (BAD_ARGUMENTS).
    own = (
        "SELECT groupArray((k, v, ts)) FROM (SELECT kv.1 AS k, kv.2 AS v, "
        f"groupArray(event_time) AS ts FROM {database}.events "
        "ARRAY JOIN [('team', toString(team)), ('tool', toString(tool))] AS kv GROUP BY k, v)"
    )
    in_period = (
        "arrayExists(t -> t >= coalesce(period_start, toDateTime64(0, 3, 'UTC')) "
        "AND t < coalesce(period_end, toDateTime64('2299-12-31 00:00:00', 3, 'UTC')), r.3)"
    )
    return (
        "multiIf(recipient_kind = 'pseudonym', "
        f"{employee_pseudonym_filter(database, 'recipient')}, "
        "recipient_kind IN ('team', 'tool'), "
        f"arrayExists(r -> r.1 = recipient_kind AND r.2 = recipient AND {in_period}, ({own})), "
        "0)"
    )


def manager_row_filter(teams: Sequence[str]) -> str:
    return f"team IN ({', '.join(sql_string(t) for t in teams)})"


def manager_annotation_filter(teams: Sequence[str]) -> str:
    """Own teams' contest annotations, and only where min_group_size people used the tool
    that day (group_ok, computed in the view): a contest in a smaller group points at one."""
    return f"{manager_row_filter(teams)} AND group_ok = 1"


def access_spec(account: Account, database: str, reg: Registry | None = None) -> AccessSpec:
    if not _NAME.match(database):
        raise RolesError(f"invalid database name {database!r}")
    grants = [f"GRANT SELECT ON {database}.{obj}" for obj in ROLE_OBJECTS[account.role]]
    filters: dict[str, str] = {}
    if account.role in DETAIL_ROLES:
        cols = ", ".join(detail_columns(account.role, reg))
        grants.insert(0, f"GRANT SELECT({cols}) ON {database}.{DETAIL_TABLE}")
        filters[f"{database}.{DETAIL_TABLE}"] = (
            security_row_filter(database)
            if account.role == "security"
            else employee_row_filter(database)
        )
    if account.role == "employee":
        cols = ", ".join(EMPLOYEE_INCIDENT_COLUMNS)
        grants.insert(1, f"GRANT SELECT({cols}) ON {database}.{INCIDENTS_TABLE}")
        filters[f"{database}.{INCIDENTS_TABLE}"] = employee_row_filter(database)
        filters[f"{database}.{CONTESTS_TABLE}"] = employee_pseudonym_filter(database, "pseudonym")
        filters[f"{database}.{NOTICES_TABLE}"] = employee_notice_filter(database)
    if account.role == "security":
        cols = ", ".join((*HELD_EXTRA_COLUMNS, *detail_columns("security", reg)))
        grants.append(f"GRANT SELECT({cols}) ON {database}.{HELD_TABLE}")
        filters[f"{database}.{HELD_TABLE}"] = held_row_filter()
    if account.role == "manager":
        filters[f"{database}.manager_team_weekly"] = manager_row_filter(account.teams)
        filters[f"{database}.{ANNOTATIONS_VIEW}"] = manager_annotation_filter(account.teams)
    return AccessSpec(account.name, account.role, tuple(grants), filters)


def access_specs(
    config: RolesConfig, database: str, reg: Registry | None = None
) -> list[AccessSpec]:
    return [access_spec(a, database, reg) for a in config.accounts]


def describe_access(account: Account, reg: Registry | None = None) -> tuple[str, str]:
    """(what the account reads, which rows) in words, for `trustlog roles show`."""
    reads = list(ROLE_OBJECTS[account.role])
    if account.role in DETAIL_ROLES:
        n = len(detail_columns(account.role, reg))
        reads.insert(0, f"{DETAIL_TABLE} ({n} {account.role} columns)")
    rows = {
        "finance": "all teams' totals; no detail, no pseudonyms",
        "manager": f"teams {', '.join(account.teams)}; groups of fewer people hidden",
        "security": "detail only while an approved case covers it; every contest; held "
        "records of holds naming them",
        "employee": "their own rows, incidents and contests (own pseudonyms); notices to "
        "them or to a team/tool of their own records",
    }[account.role]
    return ", ".join(reads), rows


# --------------------------------------------------------------------------- service accounts

# The only columns of `events` the aggregator reads: where each stored row came from in Kafka
# (resume after a crash), its event id and times (retry dedup, partition pruning). No person,
# team, tool or content class: its reads of `events` are bookkeeping, not detail.
AGGREGATOR_EVENT_COLUMNS = (
    "event_id", "event_time", "ingested_at", "kafka_topic", "kafka_partition", "kafka_offset",
)  # fmt: skip
SERVICE_ROLE = "service"
# Service accounts keep the server's default profile: the aggregator sets insert settings
# (deduplication token, block sizes, query id) on every insert, which readonly forbids. What
# they may touch is limited by their grants alone.
SERVICE_PROFILE = "default"


def service_grants(service: str, database: str) -> tuple[str, ...]:
    """Exactly what each service does in ClickHouse; migrations and TTLs stay with the admin."""
    if not _NAME.match(database):
        raise RolesError(f"invalid database name {database!r}")
    db = database
    if service == "aggregator":
        return (
            f"GRANT INSERT ON {db}.{DETAIL_TABLE}",
            f"GRANT SELECT({', '.join(AGGREGATOR_EVENT_COLUMNS)}) ON {db}.{DETAIL_TABLE}",
            # warm start of the spike baselines and budgets (no pseudonyms in the rollup)
            f"GRANT SELECT ON {db}.spend_hourly",
            # credits mirror the price overrides file (sync_credits)
            f"GRANT SELECT, INSERT ON {db}.credits",
            # wait_for_running_inserts: a killed predecessor's insert, found by its query id
            "GRANT SELECT(query_id) ON system.processes",
        )
    if service == "alerts":
        tables = ("incidents", "incident_history", "incident_commands")
        return (
            *(f"GRANT SELECT, INSERT ON {db}.{t}" for t in tables),
            # the unapproved-tool check reads tool usage per team and hour
            f"GRANT SELECT ON {db}.spend_hourly",
        )
    raise RolesError(f"no service account for {service!r}")


def service_access_specs(database: str) -> list[AccessSpec]:
    return [
        AccessSpec(name, SERVICE_ROLE, service_grants(service, database), {})
        for service, name in SERVICE_ACCOUNTS.items()
    ]


def _check_networks(networks: Sequence[str]) -> None:
    if not networks:
        raise RolesError("service accounts need at least one network")
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise RolesError(f"service network {net!r} is not an IP address or CIDR") from None


def service_passwords_file(state_dir: Path) -> Path:
    return state_dir / "governance" / "service_passwords.json"


def local_service_passwords(state_dir: Path) -> dict[str, str]:
    """Service account -> password, generated once into the state dir (mode 0600).

    A file of its own: ``load_or_create_passwords`` prunes names it is not asked for, and
    role-account callers only know the roles.
    """
    return load_or_create_passwords(
        service_passwords_file(state_dir), list(SERVICE_ACCOUNTS.values())
    )


def service_password_hashes(
    state_dir: Path, given: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """sha256 per service account: of the password in ``given`` (service -> password, e.g.
    from TRUSTLOG_AGGREGATOR_CH_PASSWORD) where set, else of the state dir's generated one."""
    given = given or {}
    out: dict[str, str] = {}
    local: dict[str, str] | None = None
    for service, name in SERVICE_ACCOUNTS.items():
        password = given.get(service)
        if not password:
            local = local if local is not None else local_service_passwords(state_dir)
            password = local[name]
        out[name] = sha256_hex(password)
    return out


def service_env(state_dir: Path, service: str) -> dict[str, str]:
    """TRUSTLOG_CH_USER/PASSWORD of ``service``'s own account for the local stack; empty for
    a service without one (ingest and redactor never talk to ClickHouse) or a state dir whose
    stack has not generated the accounts (no server would know the password)."""
    name = SERVICE_ACCOUNTS.get(service)
    path = service_passwords_file(state_dir)
    if name is None or not path.exists():
        return {}
    password = load_or_create_passwords(path, list(SERVICE_ACCOUNTS.values()))[name]
    return {"TRUSTLOG_CH_USER": name, "TRUSTLOG_CH_PASSWORD": password}


def service_users_xml(
    database: str,
    password_hashes: Mapping[str, str],
    networks: Sequence[str] = LOOPBACK_NETWORKS,
) -> list[UserDef]:
    return [
        UserDef(
            name=spec.account,
            password_sha256_hex=password_hashes[spec.account],
            grants=spec.grants,
            networks=tuple(networks),
            profile=SERVICE_PROFILE,
        )
        for spec in service_access_specs(database)
    ]


def service_sql(
    database: str,
    password_hashes: Mapping[str, str],
    networks: Sequence[str] = LOOPBACK_NETWORKS,
) -> list[str]:
    """The service accounts as SQL (in render_sql's output; alone for `migrate
    --service-accounts`). Re-runnable: OR REPLACE drops the old user with its grants."""
    _check_networks(networks)
    stmts: list[str] = []
    for spec in service_access_specs(database):
        stmts.append(
            f"CREATE USER OR REPLACE {spec.account} IDENTIFIED WITH sha256_hash BY "
            f"{sql_string(password_hashes[spec.account])} {_host_clause(networks)} "
            f"SETTINGS PROFILE {sql_string(SERVICE_PROFILE)}"
        )
        stmts += [f"{g} TO {spec.account}" for g in spec.grants]
    return stmts


# --------------------------------------------------------------------------- renderers


def users_xml_users(
    config: RolesConfig,
    database: str,
    password_hashes: Mapping[str, str],
    reg: Registry | None = None,
) -> list[UserDef]:
    """The role accounts as users.xml users (pass them, with the admin, to render_users_xml)."""
    out = []
    for account, spec in zip(config.accounts, access_specs(config, database, reg), strict=True):
        out.append(
            UserDef(
                name=account.name,
                password_sha256_hex=_hash_for(account, password_hashes),
                grants=spec.grants,
                networks=account.networks,
                row_filters=dict(spec.row_filters),
                profile=READER_PROFILE,
            )
        )
    return out


def users_xml_profiles() -> dict[str, Mapping[str, int]]:
    return {READER_PROFILE: READER_PROFILE_SETTINGS}


def _hash_for(account: Account, password_hashes: Mapping[str, str]) -> str:
    if account.password_sha256_hex:
        return account.password_sha256_hex
    try:
        return password_hashes[account.name]
    except KeyError:
        raise RolesError(
            f"account {account.name!r} has no password_sha256_hex in the config and no "
            "generated password"
        ) from None


def _host_clause(networks: Sequence[str]) -> str:
    return "HOST " + ", ".join(f"IP {sql_string(n)}" for n in networks)


def policy_name(account: str, table: str) -> str:
    return f"trustlog_{account}_{table}"


def render_sql(
    config: RolesConfig,
    database: str,
    password_hashes: Mapping[str, str],
    reg: Registry | None = None,
    *,
    service_hashes: Mapping[str, str] | None = None,
    service_networks: Sequence[str] = LOOPBACK_NETWORKS,
) -> list[str]:
    """The same accounts as SQL for a server with writable access storage (production).

    With ``service_hashes`` (account -> sha256) the service accounts come too (service_sql).

    Re-runnable: users and policies are created OR REPLACE, so applying it again after a
    config change leaves exactly what the config says for these accounts. An account removed
    from the config is not dropped: run DROP USER for it (the access review lists it).
    """
    specs = access_specs(config, database, reg)
    stmts = [
        f"CREATE SETTINGS PROFILE OR REPLACE {READER_PROFILE} SETTINGS "
        + ", ".join(f"{k} = {int(v)}" for k, v in READER_PROFILE_SETTINGS.items())
    ]
    for account, spec in zip(config.accounts, specs, strict=True):
        stmts.append(
            f"CREATE USER OR REPLACE {account.name} IDENTIFIED WITH sha256_hash BY "
            f"{sql_string(_hash_for(account, password_hashes))} {_host_clause(account.networks)} "
            f"SETTINGS PROFILE {sql_string(READER_PROFILE)}"
        )
        stmts += [f"{g} TO {account.name}" for g in spec.grants]
    if service_hashes is not None:
        stmts += service_sql(database, service_hashes, service_networks)
    filtered: dict[str, list[str]] = {}
    for spec in specs:
        for target, expr in spec.row_filters.items():
            table = target.partition(".")[2]
            stmts.append(
                f"CREATE ROW POLICY OR REPLACE {policy_name(spec.account, table)} ON {target} "
                f"FOR SELECT USING {expr} AS PERMISSIVE TO {spec.account}"
            )
            filtered.setdefault(target, []).append(spec.account)
    # A table with a row policy may hide every row from users without one, depending on the
    # server's users_without_row_policies_can_read_rows; the admin and the services must keep
    # reading, so everyone else gets an explicit "all rows" policy.
    for target, accounts in filtered.items():
        table = target.partition(".")[2]
        stmts.append(
            f"CREATE ROW POLICY OR REPLACE trustlog_others_{table} ON {target} "
            f"FOR SELECT USING 1 AS PERMISSIVE TO ALL EXCEPT {', '.join(accounts)}"
        )
    return stmts


# --------------------------------------------------------------------------- passwords, stack


def passwords_file(state_dir: Path) -> Path:
    return state_dir / "governance" / "passwords.json"


def load_or_create_passwords(path: Path, names: Iterable[str]) -> dict[str, str]:
    """Random passwords for ``names``, generated once and kept in ``path`` (mode 0600).

    Passwords of names no longer asked for are dropped from the file.
    """
    wanted = list(names)
    stored: dict[str, str] = {}
    if path.exists():
        os.chmod(path, 0o600)
        try:
            loaded = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError:
            raise RolesError(f"{path} is not valid JSON; fix or delete it") from None
        stored = {str(k): str(v) for k, v in dict(loaded).items()}
    result = {n: stored.get(n) or secrets.token_urlsafe(24) for n in wanted}
    if result != stored:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    return result


def local_password_hashes(config: RolesConfig, state_dir: Path) -> dict[str, str]:
    """sha256 hashes for every account: from the config, else from generated passwords."""
    generated = load_or_create_passwords(
        passwords_file(state_dir), [a.name for a in config.accounts if not a.password_sha256_hex]
    )
    return {a.name: a.password_sha256_hex or sha256_hex(generated[a.name]) for a in config.accounts}


def stack_users_xml(
    state_dir: Path,
    admin_password: str,
    *,
    roles_file: Path | None = None,
    database: str | None = None,
) -> str:
    """The local server's complete users.xml: locked-down default, admin, service and role
    accounts. Service accounts are loopback-only here: the local services run on this host."""
    from trustlog.settings import GovernanceSettings

    if roles_file is None or database is None:
        s = GovernanceSettings()
        roles_file = roles_file or s.roles_file
        database = database or s.ch_database
    config = load_roles(roles_file)
    hashes = local_password_hashes(config, state_dir)
    users = [
        admin_user(admin_password),
        *service_users_xml(database, service_password_hashes(state_dir)),
        *users_xml_users(config, database, hashes),
    ]
    return render_users_xml(users, users_xml_profiles())


# --------------------------------------------------------------------------- data sync


PseudonymsFor = Callable[[str], Mapping[str, str]]


@dataclass(frozen=True)
class SyncResult:
    min_group_size: int
    employee_rows_added: int
    employee_rows_retired: int


def sync(
    client: Any,
    config: RolesConfig,
    database: str,
    pseudonyms_for: PseudonymsFor | None = None,
) -> SyncResult:
    """Write what the views read from the config: min_group_size and employees' pseudonyms.

    ``pseudonyms_for(user_id) -> {key version: pseudonym}``; by default the redactor's keyed
    pseudonyms under every configured key (needs TRUSTLOG_PSEUDONYM_KEYS). Rows of accounts or
    key versions no longer configured are retired, so a removed employee sees nothing.
    """
    if not _NAME.match(database):
        raise RolesError(f"invalid database name {database!r}")
    now_ns = time.time_ns()
    client.command(
        f"INSERT INTO {database}.governance_settings (name, value, updated_at) "
        "VALUES ('min_group_size', {v:UInt64}, now64(3))",
        parameters={"v": config.min_group_size},
    )
    employees = config.by_role("employee")
    desired: set[tuple[str, str, str]] = set()
    if employees:
        if pseudonyms_for is None:
            pseudonyms_for = _redactor_pseudonyms()
        for emp in employees:
            assert emp.user_id is not None  # parse_roles guarantees it
            for version, pseudonym in pseudonyms_for(emp.user_id).items():
                desired.add((emp.name, pseudonym, version))
    current_rows = client.query(
        f"SELECT account, pseudonym, key_version FROM {database}.employee_pseudonyms FINAL"
    ).result_rows
    current = {(str(a), str(p), str(v)) for a, p, v in current_rows}
    add = sorted(desired - current)
    retire = sorted(current - desired)
    rows = [[a, p, v, now_ns, 0] for a, p, v in add] + [[a, p, v, now_ns, 1] for a, p, v in retire]
    if rows:
        client.insert(
            f"{database}.employee_pseudonyms",
            rows,
            column_names=["account", "pseudonym", "key_version", "version", "is_deleted"],
        )
    return SyncResult(config.min_group_size, len(add), len(retire))


def _redactor_pseudonyms() -> PseudonymsFor:
    from services.redactor.identity import pseudonyms_for
    from trustlog.settings import RedactorSettings

    settings = RedactorSettings()
    if not settings.pseudonym_keys:
        raise RolesError(
            "employee accounts need the pseudonym keys to find their rows: set "
            "TRUSTLOG_PSEUDONYM_KEYS (the local stack keeps them in <state dir>/local.env)"
        )
    return lambda user_id: pseudonyms_for(user_id, settings)
