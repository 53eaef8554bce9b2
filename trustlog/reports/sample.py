"""The sample report staff see before launch: made-up usage, no database, no names.

Numbers are synthetic (a seeded generator over the demo's teams, tools and models) and pass
through the same report model and templates as the real reports, so the sample shows exactly
the real pages' level of detail. The team lead's part applies the manager view's group-size
rule to made-up per-tool head counts; real team reports get it from ClickHouse itself.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from trustlog.demo import PROVIDERS
from trustlog.governance.roles import RolesConfig, detail_columns
from trustlog.registry import Registry
from trustlog.reports.model import (
    OTHER,
    TREND_WEEKS,
    Annotation,
    CreditUse,
    DaySpend,
    EmployeeView,
    FinanceReport,
    ProviderSpend,
    TeamNet,
    TeamReport,
    TeamToolSpend,
    TeamWeekRow,
    next_month,
)

SAMPLE_ACCOUNT = "(sample)"
# team -> tools with (people using it, model); small groups on purpose, to show merging
LANES: dict[str, list[tuple[str, int, str]]] = {
    "support": [
        ("support-drafts", 11, "gpt-4o-mini"),
        ("chat-assistant", 6, "claude-haiku-4-5"),
        ("translate", 3, "gemini-2.5-flash"),
        ("code-helper", 2, "claude-sonnet-4-5"),
    ],
    "engineering": [
        ("code-helper", 14, "claude-sonnet-4-5"),
        ("chat-assistant", 9, "gpt-4.1-mini"),
        ("internal-search", 4, "internal-llm-v0"),  # no public price: flagged
    ],
    "marketing": [("chat-assistant", 7, "gpt-4o-mini"), ("image-briefs", 5, "gemini-2.5-flash")],
    "finance-ops": [("chat-assistant", 4, "gpt-4o-mini")],
}
TEAM_LEAD_TEAM = "support"


def _ints(v: list[int | Decimal], n: int) -> tuple[int, int, int, int, int, int, int]:
    a = [int(x) for x in v[:n]]
    return a[0], a[1], a[2], a[3], a[4], a[5], a[6]


def _month_before(today: date) -> date:
    return (today.replace(day=1) - timedelta(days=1)).replace(day=1)


def _cost(rng: random.Random, model: str, calls: int) -> Decimal:
    if not PROVIDERS.get(model):
        return Decimal(0)
    per_call = {"claude-sonnet-4-5": 2_400, "gpt-4.1-mini": 900, "claude-haiku-4-5": 700}
    micro = sum(rng.randint(1_000, 10 * per_call.get(model, 350)) for _ in range(calls))
    return Decimal(micro) / 1_000_000


def sample_finance(month: date, seed: int = 7) -> FinanceReport:
    rng = random.Random(seed)
    acc: dict[tuple[str, str], list[int | Decimal]] = defaultdict(
        lambda: [0, 0, 0, 0, 0, 0, 0, Decimal(0)]
    )
    days: dict[date, list[int | Decimal]] = defaultdict(lambda: [0, 0, Decimal(0)])
    providers: dict[str, list[int | Decimal]] = defaultdict(lambda: [0, Decimal(0)])
    day = month
    while day < next_month(month):
        weekday = day.weekday() < 5
        for team, lanes in LANES.items():
            for tool, people, model in lanes:
                if not PROVIDERS.get(model) and rng.random() > 0.25:
                    continue  # the unpriced in-house model is tried on a few days only
                calls = rng.randint(2, 9) * people * (3 if weekday else 1)
                cost = _cost(rng, model, calls)
                unpriced = 0 if PROVIDERS.get(model) else calls
                a = acc[(team, tool)]
                a[0] += calls
                a[1] += calls * rng.randint(400, 2500)
                a[2] += calls * rng.randint(80, 600)
                a[3] += rng.randint(0, calls // 40)
                a[4] += rng.randint(0, calls // 30)
                a[5] += rng.randint(0, 1) if rng.random() < 0.1 else 0
                a[6] += unpriced
                a[7] += cost
                d = days[day]
                d[0] += calls
                d[1] += unpriced
                d[2] += cost
                pr = providers[PROVIDERS.get(model) or ""]
                pr[0] += calls
                pr[1] += cost
        day += timedelta(days=1)
    rows = tuple(
        sorted(
            (TeamToolSpend(t, tool, *_ints(v, 7), Decimal(v[7])) for (t, tool), v in acc.items()),
            key=lambda r: (-r.cost_usd, r.team, r.tool),
        )
    )
    # one prepaid credit for engineering's Anthropic use, drawn down in full this month
    credit_amount = Decimal(150)
    eng = sum((r.cost_usd for r in rows if r.team == "engineering"), Decimal(0))
    applied = min(credit_amount, eng)
    team_cost: dict[str, Decimal] = defaultdict(Decimal)
    for r in rows:
        team_cost[r.team] += r.cost_usd
    net = tuple(
        TeamNet(
            t,
            c,
            applied if t == "engineering" else Decimal(0),
            c - (applied if t == "engineering" else 0),
        )
        for t, c in sorted(team_cost.items())
    )
    return FinanceReport(
        month=month,
        account=SAMPLE_ACCOUNT,
        generated_at=datetime.now(UTC),
        by_team_tool=rows,
        by_day=tuple(
            DaySpend(d, int(v[0]), int(v[1]), Decimal(v[2])) for d, v in sorted(days.items())
        ),
        by_provider=tuple(
            sorted(
                (ProviderSpend(p, int(v[0]), Decimal(v[1])) for p, v in providers.items()),
                key=lambda x: (-x.cost_usd, x.provider),
            )
        ),
        net_by_team=net,
        credits=(
            CreditUse(
                "engineering-prepaid",
                "engineering",
                "",
                credit_amount,
                applied,
                credit_amount - applied,
            ),
        ),
        annotations=(
            Annotation(
                "support",
                "translate",
                month + timedelta(days=9),
                "not_me",
                "resolved",
                "corrected",
                "Shared kiosk account; calls moved to 'unassigned'.",
            ),
            Annotation(
                "engineering",
                "code-helper",
                month + timedelta(days=17),
                "wrong_team",
                "open",
                "",
                "Contractor billed to the wrong team.",
            ),
        ),
    )


def merge_small_groups(rows: list[TeamWeekRow], min_group_size: int) -> list[TeamWeekRow]:
    """The manager view's rule on made-up rows: tools under the size merge into '(other)',
    which is dropped if still too small. Made-up users of different tools are distinct people,
    so '(other)' counts their sum (the view counts distinct pseudonyms)."""
    keep = [r for r in rows if r.people >= min_group_size]
    small = [r for r in rows if r.people < min_group_size]
    if small and sum(r.people for r in small) >= min_group_size:
        keep.append(
            TeamWeekRow(
                small[0].week,
                OTHER,
                sum(r.people for r in small),
                sum(r.requests for r in small),
                sum(r.input_tokens for r in small),
                sum(r.output_tokens for r in small),
                sum(r.errors for r in small),
                sum(r.blocked for r in small),
                sum(r.unpriced for r in small),
                sum((r.cost_usd for r in small), Decimal(0)),
            )
        )
    return keep if sum(r.people for r in keep) >= min_group_size else []


def sample_team(week: date, min_group_size: int, seed: int = 11) -> TeamReport:
    rng = random.Random(seed)
    rows: list[TeamWeekRow] = []
    for k in range(TREND_WEEKS - 1, -1, -1):
        w = week - timedelta(days=7 * k)
        week_rows = []
        for tool, people, model in LANES[TEAM_LEAD_TEAM]:
            # the second week: one translate user is away, so '(other)' is too small and is
            # left out; shows both sides of the rule
            n = people - 1 if (k == 2 and tool == "translate") else people
            calls = rng.randint(20, 45) * n
            week_rows.append(
                TeamWeekRow(
                    w,
                    tool,
                    n,
                    calls,
                    calls * rng.randint(400, 2500),
                    calls * rng.randint(80, 600),
                    rng.randint(0, calls // 40),
                    0,
                    0,
                    _cost(rng, model, calls),
                )
            )
        rows += merge_small_groups(week_rows, min_group_size)
    return TeamReport(
        team=TEAM_LEAD_TEAM,
        week=week,
        account=SAMPLE_ACCOUNT,
        generated_at=datetime.now(UTC),
        min_group_size=min_group_size,
        rows=tuple(rows),
        annotations=(),
    )


def sample_employee(reg: Registry, day: date, seed: int = 5) -> EmployeeView:
    """A few made-up rows of one employee's own records, in the columns their role reads."""
    rng = random.Random(seed)
    cols = detail_columns("employee", reg)
    rows = []
    for i in range(4):
        tool, _, model = LANES[TEAM_LEAD_TEAM][i % 2]
        tokens_in, tokens_out = rng.randint(300, 3000), rng.randint(60, 700)
        values = {
            "event_id": f"sample-{i + 1:04d}",
            "event_time": f"{day + timedelta(days=i // 2):%Y-%m-%d} {9 + i}:{rng.randint(10, 59)}",
            "tool": tool,
            "model": model,
            "provider": PROVIDERS.get(model, ""),
            "workspace": "support-ws",
            "user_pseudonym": "your pseudonym",
            "team": TEAM_LEAD_TEAM,
            "task_label": "support",
            "input_tokens": str(tokens_in),
            "output_tokens": str(tokens_out),
            "cached_tokens": "0",
            "reasoning_tokens": "0",
            "status": "ok",
            "retry_count": "0",
            "policy_flags": "",
            "sensitive_classes": "payment_card: 1" if i == 2 else "",
            "content_chars": str(tokens_in * 4),
            "cost_usd": f"{Decimal(tokens_in * 150 + tokens_out * 600) / 10**9:.6f}",
            "priced": "1",
        }
        rows.append(tuple(values.get(c, "") for c in cols))
    return EmployeeView(cols, tuple(rows))


def sample_reports(
    reg: Registry, cfg: RolesConfig, today: date | None = None
) -> tuple[FinanceReport, TeamReport, EmployeeView]:
    today = today or datetime.now(UTC).date()
    month = _month_before(today)
    week = today - timedelta(days=today.weekday() + 14)
    return (
        sample_finance(month),
        sample_team(week, cfg.min_group_size),
        sample_employee(reg, week),
    )
