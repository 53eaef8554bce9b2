"""Report numbers read from ClickHouse as the role account the report is for.

Finance reports log in as a finance account and team reports as a manager account, never as
the admin: ClickHouse's grants, row policies and the manager view's group-size rule decide
what a report can contain, not this code. Totals are the database's Decimal sums, unrounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from trustlog.governance import roles
from trustlog.reports.model import (
    TREND_WEEKS,
    Annotation,
    CreditUse,
    DaySpend,
    FinanceReport,
    ProviderSpend,
    TeamNet,
    TeamReport,
    TeamToolSpend,
    TeamWeekRow,
    annotations_in,
    next_month,
)
from trustlog.settings import GovernanceSettings
from trustlog.storage import client_as


class ReportError(RuntimeError):
    """The report cannot be made as asked; the message says why."""


def account_password(state_dir: Path, config: roles.RolesConfig, account: str) -> str:
    """The local stack's generated password of ``account`` (as `trustlog roles password`)."""
    acc = config.get(account)
    if acc is None:
        raise ReportError(f"no account {account!r} in the roles config")
    if acc.password_sha256_hex:
        raise ReportError(
            f"{account} has a password hash in the config, so its password is not stored "
            "here: pass it with TRUSTLOG_ACCOUNT_PASSWORD"
        )
    names = [a.name for a in config.accounts if not a.password_sha256_hex]
    return roles.load_or_create_passwords(roles.passwords_file(state_dir), names)[account]


def account_client(s: GovernanceSettings, account: str, password: str) -> Client:
    try:
        client = client_as(s, account, password)
    except Exception as exc:
        raise ReportError(
            f"cannot log in to ClickHouse at {s.ch_host}:{s.ch_port} as {account!r}: "
            f"{type(exc).__name__}"
        ) from None
    return client


def _rows(client: Client, sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
    return client.query(sql, parameters=params).result_rows


def _dec(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


def finance_report(
    client: Client,
    database: str,
    month: date,
    *,
    account: str,
    annotations: Sequence[Annotation] = (),
) -> FinanceReport:
    """Everything the monthly finance page shows, from the finance views and spend_daily."""
    end = next_month(month)
    p = {"m": month, "e": end}
    db = database
    by_team_tool = [
        TeamToolSpend(
            team=str(r[0]),
            tool=str(r[1]),
            requests=int(r[2]),
            input_tokens=int(r[3]),
            output_tokens=int(r[4]),
            errors=int(r[5]),
            retries=int(r[6]),
            blocked=int(r[7]),
            unpriced=int(r[8]),
            cost_usd=_dec(r[9]),
        )
        for r in _rows(
            client,
            "SELECT team, tool, requests, input_tokens, output_tokens, errors, retries, blocked, "
            f"unpriced, cost_usd FROM {db}.finance_spend_by_month WHERE month = {{m:Date}} "
            "ORDER BY cost_usd DESC, team, tool",
            p,
        )
    ]
    by_day = [
        DaySpend(r[0], int(r[1]), int(r[2]), _dec(r[3]))
        for r in _rows(
            client,
            "SELECT day, sum(requests), sum(unpriced), sum(cost_usd) "
            f"FROM {db}.spend_daily WHERE day >= {{m:Date}} AND day < {{e:Date}} "
            "GROUP BY day ORDER BY day",
            p,
        )
    ]
    by_provider = [
        ProviderSpend(str(r[0]), int(r[1]), _dec(r[2]))
        for r in _rows(
            client,
            "SELECT provider, sum(requests), sum(cost_usd) "
            f"FROM {db}.spend_daily WHERE day >= {{m:Date}} AND day < {{e:Date}} "
            "GROUP BY provider ORDER BY sum(cost_usd) DESC, provider",
            p,
        )
    ]
    net = [
        TeamNet(str(r[0]), _dec(r[1]), _dec(r[2]), _dec(r[3]))
        for r in _rows(
            client,
            "SELECT team, cost_usd, credit_usd, net_cost_usd "
            f"FROM {db}.finance_net_spend_by_month WHERE month = {{m:Date}} ORDER BY team",
            p,
        )
    ]
    credits = [
        CreditUse(str(r[0]), str(r[1]), str(r[2]), _dec(r[3]), _dec(r[4]), _dec(r[5]))
        for r in _rows(
            client,
            "SELECT credit, any(team), any(provider), any(amount_usd), sum(applied_usd), "
            "argMax(remaining_usd, day) "
            f"FROM {db}.finance_credit_drawdown WHERE day >= {{m:Date}} AND day < {{e:Date}} "
            "GROUP BY credit HAVING sum(applied_usd) > 0 ORDER BY credit",
            p,
        )
    ]
    return FinanceReport(
        month=month,
        account=account,
        generated_at=datetime.now(UTC),
        by_team_tool=tuple(by_team_tool),
        by_day=tuple(by_day),
        by_provider=tuple(by_provider),
        net_by_team=tuple(net),
        credits=tuple(credits),
        annotations=tuple(annotations_in(annotations, month, end)),
    )


def team_report(
    client: Client,
    database: str,
    team: str,
    week: date,
    *,
    account: str,
    min_group_size: int,
    annotations: Sequence[Annotation] = (),
) -> TeamReport:
    """The team's weekly trend by tool, as manager_team_weekly lets ``account`` see it."""
    first = week - timedelta(days=7 * (TREND_WEEKS - 1))
    rows = [
        TeamWeekRow(
            week=r[0],
            tool=str(r[1]),
            people=int(r[2]),
            requests=int(r[3]),
            input_tokens=int(r[4]),
            output_tokens=int(r[5]),
            errors=int(r[6]),
            blocked=int(r[7]),
            unpriced=int(r[8]),
            cost_usd=_dec(r[9]),
        )
        for r in _rows(
            client,
            "SELECT week, tool, people, requests, input_tokens, output_tokens, errors, blocked, "
            f"unpriced, cost_usd FROM {database}.manager_team_weekly "
            "WHERE team = {t:String} AND week >= {f:Date} AND week <= {w:Date} "
            "ORDER BY week, tool",
            {"t": team, "f": first, "w": week},
        )
    ]
    return TeamReport(
        team=team,
        week=week,
        account=account,
        generated_at=datetime.now(UTC),
        min_group_size=min_group_size,
        rows=tuple(rows),
        annotations=tuple(annotations_in(annotations, first, week + timedelta(days=7), [team])),
    )
