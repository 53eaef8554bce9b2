"""Finance views over the daily rollup, checked against sums computed here from the same rows.

A database of this test's own (the movers view ranks every team, so other tests' rows must not
be in it) is migrated with the real migrations; five weeks of priced calls are inserted into
events, so spend_daily is filled by its materialized view exactly as in production. Costs have
at most 6 decimals, so every expected total is exact.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from services.aggregator.app import EVENT_COLUMNS, sync_credits
from services.aggregator.pricing import Credit
from trustlog.migrate import apply_migrations
from trustlog.storage import admin_client

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
DB = f"tl_finance_{RUN}"
TODAY = datetime.now(UTC).date()
MONDAY = TODAY - timedelta(days=TODAY.weekday())
LAST_WEEK, WEEK_BEFORE = MONDAY - timedelta(days=7), MONDAY - timedelta(days=14)
FIRST_DAY = MONDAY - timedelta(days=35)
TEAMS = ("alpha", "beta", "gamma")
LANES = [  # (team, tool, provider, model)
    ("alpha", "chat", "openai", "gpt-4o-mini"),
    ("alpha", "code", "anthropic", "claude-sonnet-4-5"),
    ("beta", "chat", "openai", "gpt-4o-mini"),
    ("beta", "legacy", "openai", "gpt-4o"),  # stops before the last complete week
    ("beta", "new", "anthropic", "claude-haiku-4-5"),  # starts in the last complete week
    ("gamma", "drafts", "openai", "gpt-4o-mini"),
]


@dataclass(frozen=True)
class Call:
    day: date
    team: str
    tool: str
    provider: str
    input_tokens: int
    output_tokens: int
    status: str
    retries: int
    priced: bool
    cost: Decimal


def _calls() -> list[Call]:
    rng = random.Random(RUN)
    out: list[Call] = []
    day = FIRST_DAY
    while day <= TODAY:
        for team, tool, provider, _ in LANES:
            if tool == "legacy" and day >= LAST_WEEK:
                continue
            if tool == "new" and day < LAST_WEEK:
                continue
            # gamma ramps up hard in the last complete week: the top mover
            n = rng.randint(1, 6) * (8 if team == "gamma" and day >= LAST_WEEK else 1)
            for _ in range(n):
                status = rng.choice(["ok"] * 12 + ["error", "blocked"])
                priced = rng.random() > 0.05
                out.append(
                    Call(
                        day, team, tool, provider, rng.randint(10, 90_000), rng.randint(0, 4_000),
                        status, rng.choice([0, 0, 0, 1, 2]), priced,
                        Decimal(rng.randint(0, 3_000_000)) / 1_000_000 if priced else Decimal(0),
                    )
                )  # fmt: skip
        day += timedelta(days=1)
    return out


def _row(i: int, c: Call, model: str) -> list[Any]:
    t = datetime.combine(c.day, time(0), UTC) + timedelta(seconds=(i * 7919) % 86_400)
    return [
        f"{RUN}-{i}", t, "fin", c.tool, model, c.provider, "ws", "p_1", "1", c.team, "other",
        c.input_tokens, c.output_tokens, 0, 0, c.status, c.retries, [], {}, 0, c.cost,
        1 if c.priced else 0, "test", "v", 0, i, "finance-test",
    ]  # fmt: skip


@dataclass
class Data:
    ch: Client
    calls: list[Call]


@pytest.fixture(scope="module")
def data(stack: object) -> Iterator[Data]:
    ch = admin_client()
    apply_migrations(ch, database=DB, detail_ttl_days=60, rollup_ttl_days=400)
    calls = _calls()
    models = {(t, tool): m for t, tool, _, m in LANES}
    rows = [_row(i, c, models[(c.team, c.tool)]) for i, c in enumerate(calls)]
    for k in range(0, len(rows), 500):  # several inserts, like the aggregator's batches
        ch.insert(f"{DB}.events", rows[k : k + 500], column_names=EVENT_COLUMNS)
    yield Data(ch, calls)
    ch.command(f"DROP DATABASE IF EXISTS {DB}")
    ch.close()


def _month(d: date) -> date:
    return d.replace(day=1)


def _week(d: date) -> date:
    return d - timedelta(days=d.weekday())


def _totals(calls: list[Call], period: Any) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    acc: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0, Decimal(0)])
    for c in calls:
        a = acc[(period(c.day), c.team, c.tool)]
        a[0] += 1
        a[1] += c.input_tokens
        a[2] += c.output_tokens
        a[3] += c.status == "error"
        a[4] += c.retries
        a[5] += c.status == "blocked"
        a[6] += not c.priced
        a[7] += c.cost
    return {k: tuple(v) for k, v in acc.items()}


def _view(ch: Client, view: str, period: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    rows = ch.query(
        f"SELECT {period}, team, tool, requests, input_tokens, output_tokens, errors, retries, "
        f"blocked, unpriced, cost_usd FROM {DB}.{view}"
    ).result_rows
    return {(r[0], r[1], r[2]): (*r[3:10], Decimal(r[10])) for r in rows}


def test_spend_by_team_tool_and_month(data: Data) -> None:
    assert _view(data.ch, "finance_spend_by_month", "month") == _totals(data.calls, _month)
    # a filter on the period is pushed into the view, answered from the by_month projection
    month = _month(TODAY)
    one = data.ch.query(
        f"SELECT team, tool, cost_usd FROM {DB}.finance_spend_by_month WHERE month = {{m:Date}}",
        parameters={"m": month},
    ).result_rows
    want = {(k[1], k[2]): v[7] for k, v in _totals(data.calls, _month).items() if k[0] == month}
    assert {(r[0], r[1]): Decimal(r[2]) for r in one} == want
    plan = "\n".join(
        str(r[0])
        for r in data.ch.query(
            f"EXPLAIN indexes = 1 SELECT * FROM {DB}.finance_spend_by_month "
            "WHERE month = {m:Date}",
            parameters={"m": month},
        ).result_rows
    )
    assert "ReadFromMergeTree (by_month)" in plan  # the aggregate projection, not the rollup


def test_spend_by_team_tool_and_week(data: Data) -> None:
    assert _view(data.ch, "finance_spend_by_week", "week") == _totals(data.calls, _week)


def _weekly_cost(calls: list[Call]) -> dict[tuple[date, str, str], Decimal]:
    out: dict[tuple[date, str, str], Decimal] = defaultdict(Decimal)
    for c in calls:
        out[(_week(c.day), c.team, c.tool)] += c.cost
    return out


def test_week_over_week(data: Data) -> None:
    weekly = _weekly_cost(data.calls)
    keys = set(weekly) | {(w + timedelta(days=7), t, tool) for (w, t, tool) in weekly}
    want = {}
    for week, team, tool in keys:
        if week > MONDAY:
            continue
        cur = weekly.get((week, team, tool), Decimal(0))
        prev = weekly.get((week - timedelta(days=7), team, tool), Decimal(0))
        ratio = None if prev == 0 else float(cur - prev) / float(prev)
        want[(week, team, tool)] = (cur, prev, cur - prev, ratio)
    rows = data.ch.query(
        "SELECT week, team, tool, cost_usd, prev_week_cost_usd, change_usd, change_ratio "
        f"FROM {DB}.finance_week_over_week"
    ).result_rows
    got = {(r[0], r[1], r[2]): (Decimal(r[3]), Decimal(r[4]), Decimal(r[5]), r[6]) for r in rows}
    assert got.keys() == want.keys()
    for k, (cur, prev, change, ratio) in want.items():
        assert got[k][:3] == (cur, prev, change), k
        assert (got[k][3] is None) == (ratio is None), k
        if ratio is not None:
            assert got[k][3] == pytest.approx(ratio, rel=1e-9), k
    # the stopped and the new tool show up, with the ratio undefined for the new one
    assert got[(LAST_WEEK, "beta", "legacy")][0] == 0
    assert got[(LAST_WEEK, "beta", "new")][1] == 0 and got[(LAST_WEEK, "beta", "new")][3] is None


def test_top_movers_rank_last_complete_week_by_absolute_change(data: Data) -> None:
    weekly = _weekly_cost(data.calls)
    pairs = {(t, tool) for (_, t, tool) in weekly}
    changes = []
    for team, tool in pairs:
        cur = weekly.get((LAST_WEEK, team, tool), Decimal(0))
        prev = weekly.get((WEEK_BEFORE, team, tool), Decimal(0))
        if cur or prev or (LAST_WEEK, team, tool) in weekly or (WEEK_BEFORE, team, tool) in weekly:
            changes.append((team, tool, cur, prev, cur - prev))
    changes.sort(key=lambda c: (-abs(c[4]), c[0], c[1]))
    rows = data.ch.query(
        f"SELECT week, team, tool, cost_usd, prev_week_cost_usd, change_usd FROM {DB}.finance_top_movers"
    ).result_rows
    assert all(r[0] == LAST_WEEK for r in rows)
    got = [(r[1], r[2], Decimal(r[3]), Decimal(r[4]), Decimal(r[5])) for r in rows]
    assert got == changes[:20]
    assert got[0][:2] == ("gamma", "drafts")


CREDITS = (
    # provider-wide: shared by alpha, beta and gamma's openai spend; runs out mid-period
    Credit("oa", Decimal("25.5"), WEEK_BEFORE - timedelta(days=7), MONDAY - timedelta(days=1), provider="openai"),
    # one team's anthropic spend, never expires, never runs out here
    Credit("alpha-anthropic", Decimal("100000"), LAST_WEEK - timedelta(days=3), None, team="alpha", provider="anthropic"),
)  # fmt: skip


def _in_scope(c: Call, credit: Credit) -> bool:
    return (
        credit.starts <= c.day <= (credit.expires or date.max)
        and (not credit.team or c.team == credit.team)
        and (not credit.provider or c.provider == credit.provider)
    )


def _drawdown(calls: list[Call], credit: Credit) -> dict[date, Decimal]:
    per_day: dict[date, Decimal] = defaultdict(Decimal)
    for c in calls:
        if _in_scope(c, credit):
            per_day[c.day] += c.cost
    applied, to_date = {}, Decimal(0)
    for day in sorted(per_day):
        before = min(credit.amount_usd, to_date)
        to_date += per_day[day]
        applied[day] = min(credit.amount_usd, to_date) - before
    return applied


def test_credits_are_drawn_down_by_day_and_netted_per_team(data: Data) -> None:
    ch = data.ch
    sync_credits(ch, DB, CREDITS, "test-v1")
    rows = ch.query(
        f"SELECT credit, day, applied_usd, remaining_usd FROM {DB}.finance_credit_drawdown"
    ).result_rows
    got: dict[str, dict[date, Decimal]] = defaultdict(dict)
    remaining: dict[str, Decimal] = {}
    for credit, day, applied, left in sorted(rows, key=lambda r: (r[0], r[1])):
        got[credit][day] = Decimal(applied)
        remaining[credit] = Decimal(left)
    oa, alpha = CREDITS
    assert got["oa"] == _drawdown(data.calls, oa)
    assert got["alpha-anthropic"] == _drawdown(data.calls, alpha)
    assert sum(got["oa"].values()) == oa.amount_usd and remaining["oa"] == 0  # used up
    alpha_spend = sum((c.cost for c in data.calls if _in_scope(c, alpha)), Decimal(0))
    assert remaining["alpha-anthropic"] == alpha.amount_usd - alpha_spend > 0

    # Net per team and month: a team credit is all that team's; the provider-wide credit is
    # shared by in-scope spend that day (shares truncated to 1e-12 USD).
    want_credit: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    for credit in CREDITS:
        applied = _drawdown(data.calls, credit)
        day_team: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
        for c in data.calls:
            if _in_scope(c, credit):
                day_team[(c.day, c.team)] += c.cost
        for (day, team), cost in day_team.items():
            scope = sum((v for (d, _), v in day_team.items() if d == day), Decimal(0))
            if applied[day]:
                want_credit[(_month(day), team)] += applied[day] * cost / scope
    gross: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    for c in data.calls:
        gross[(_month(c.day), c.team)] += c.cost
    net = ch.query(
        f"SELECT month, team, cost_usd, credit_usd, net_cost_usd FROM {DB}.finance_net_spend_by_month"
    ).result_rows
    assert {(r[0], r[1]) for r in net} == set(gross)
    tolerance = Decimal("1e-11")
    for month, team, cost, credit_usd, net_usd in net:
        assert Decimal(cost) == gross[(month, team)]
        assert abs(Decimal(credit_usd) - want_credit[(month, team)]) < tolerance, (month, team)
        assert Decimal(net_usd) == Decimal(cost) - Decimal(credit_usd)
    total_credit = sum((Decimal(r[3]) for r in net), Decimal(0))
    total_applied = sum((sum(got[c.name].values(), Decimal(0)) for c in CREDITS), Decimal(0))
    assert total_applied - tolerance < total_credit <= total_applied

    # Removing a credit from the file removes it from the views (tombstone, not a DELETE).
    sync_credits(ch, DB, CREDITS[1:], "test-v2")
    names = {
        r[0]
        for r in ch.query(f"SELECT DISTINCT credit FROM {DB}.finance_credit_drawdown").result_rows
    }
    assert names == {"alpha-anthropic"}
