"""HTML (jinja2, autoescaped) and CSV for the policy page and the reports.

Money is shown rounded to cents and carried exactly (``data-value``, the CSV): the database
stores 12 decimals and finance must be able to tie a report to it to the last digit.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from trustlog.reports import charts
from trustlog.reports.model import (
    OTHER,
    EmployeeView,
    FinanceReport,
    TeamReport,
    iso_week_label,
)
from trustlog.reports.policy import PolicyPage

CENT = Decimal("0.01")


def exact(value: Decimal | int) -> str:
    """The stored value, every digit (CSV cells, data-value attributes)."""
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def usd(value: Decimal) -> str:
    return f"${value.quantize(CENT, rounding=ROUND_HALF_UP):,}"


def slug(name: str) -> str:
    """A team name as a safe file name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "team"


def count(value: int) -> str:
    return f"{value:,}"


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("trustlog.reports", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(exact=exact, usd=usd, count=count, week=iso_week_label)
    return env


ENV = _env()


# --------------------------------------------------------------------------- policy


def render_policy(page: PolicyPage, fmt: str = "html") -> str:
    if fmt not in ("html", "md"):
        raise ValueError(f"format must be html or md, got {fmt!r}")
    return ENV.get_template(f"policy.{fmt}.j2").render(p=page, sample=False)


# --------------------------------------------------------------------------- charts


def finance_charts(r: FinanceReport) -> dict[str, Markup]:
    out = {
        "by_team": charts.hbar(
            "spend-by-team", [t.key for t in r.by_team], [t.cost_usd for t in r.by_team], "USD"
        ),
        "by_tool": charts.hbar(
            "spend-by-tool", [t.key for t in r.by_tool], [t.cost_usd for t in r.by_tool], "USD"
        ),
        "by_day": charts.daily(
            "spend-by-day",
            [f"{d.day:%m-%d}" for d in r.by_day],
            [d.cost_usd for d in r.by_day],
            [d.unpriced > 0 for d in r.by_day],
        ),
    }
    if r.credits:
        out["credits"] = charts.hbar(
            "credits-applied",
            [c.credit for c in r.credits],
            [c.applied_usd for c in r.credits],
            "USD applied this month",
        )
    return {k: Markup(v) for k, v in out.items()}  # our own matplotlib output


def team_chart(r: TeamReport) -> Markup:
    weeks = r.weeks
    series: dict[str, list[Decimal | None]] = {}
    for tool in r.tools:
        by_week = {x.week: x.cost_usd for x in r.rows if x.tool == tool}
        series[tool] = [by_week.get(w) for w in weeks]
    svg = charts.weekly_by_tool("weekly-spend-by-tool", [iso_week_label(w) for w in weeks], series)
    return Markup(svg)  # our own matplotlib output


# --------------------------------------------------------------------------- pages


def render_finance(r: FinanceReport, *, sample: bool = False) -> str:
    return ENV.get_template("finance.html.j2").render(
        r=r, charts=finance_charts(r), sample=sample, other=OTHER
    )


def render_team(r: TeamReport, *, sample: bool = False) -> str:
    return ENV.get_template("team.html.j2").render(
        r=r, chart=team_chart(r), sample=sample, other=OTHER
    )


def render_sample(
    finance: FinanceReport, team: TeamReport, employee: EmployeeView, policy: PolicyPage
) -> str:
    return ENV.get_template("sample.html.j2").render(
        f=finance,
        fcharts=finance_charts(finance),
        t=team,
        tchart=team_chart(team),
        e=employee,
        p=policy,
        sample=True,
        other=OTHER,
    )


# --------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class Table:
    name: str
    header: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.header)
        for row in self.rows:
            w.writerow([_cell(v) for v in row])
        return buf.getvalue()


def _cell(v: Any) -> str:
    if isinstance(v, Decimal | int):
        return exact(v)
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


def finance_tables(r: FinanceReport) -> list[Table]:
    p = f"finance-{r.label}"
    tables = [
        Table(
            f"{p}-by-team-tool.csv",
            (
                "month",
                "team",
                "tool",
                "requests",
                "input_tokens",
                "output_tokens",
                "errors",
                "retries",
                "blocked",
                "unpriced",
                "cost_usd",
            ),
            [
                (
                    r.month,
                    x.team,
                    x.tool,
                    x.requests,
                    x.input_tokens,
                    x.output_tokens,
                    x.errors,
                    x.retries,
                    x.blocked,
                    x.unpriced,
                    x.cost_usd,
                )
                for x in r.by_team_tool
            ],
        ),
        Table(
            f"{p}-by-team.csv",
            ("month", "team", "requests", "unpriced", "cost_usd", "credit_usd", "net_cost_usd"),
            [
                (
                    r.month,
                    t.key,
                    t.requests,
                    t.unpriced,
                    t.cost_usd,
                    n.credit_usd if n else Decimal(0),
                    n.net_cost_usd if n else t.cost_usd,
                )
                for t in r.by_team
                for n in [r.net(t.key)]
            ],
        ),
        Table(
            f"{p}-by-day.csv",
            ("day", "requests", "unpriced", "cost_usd"),
            [(d.day, d.requests, d.unpriced, d.cost_usd) for d in r.by_day],
        ),
        Table(
            f"{p}-by-provider.csv",
            ("month", "provider", "requests", "cost_usd"),
            [(r.month, x.provider, x.requests, x.cost_usd) for x in r.by_provider],
        ),
    ]
    if r.credits:
        tables.append(
            Table(
                f"{p}-credits.csv",
                (
                    "month",
                    "credit",
                    "team",
                    "provider",
                    "amount_usd",
                    "applied_usd",
                    "remaining_usd",
                ),
                [
                    (
                        r.month,
                        c.credit,
                        c.team or "(any)",
                        c.provider or "(any)",
                        c.amount_usd,
                        c.applied_usd,
                        c.remaining_usd,
                    )
                    for c in r.credits
                ],
            )
        )
    return tables


def team_tables(r: TeamReport) -> list[Table]:
    return [
        Table(
            f"team-{slug(r.team)}-{r.label}.csv",
            (
                "week",
                "team",
                "tool",
                "people",
                "requests",
                "input_tokens",
                "output_tokens",
                "errors",
                "blocked",
                "unpriced",
                "cost_usd",
            ),
            [
                (
                    iso_week_label(x.week),
                    r.team,
                    x.tool,
                    x.people,
                    x.requests,
                    x.input_tokens,
                    x.output_tokens,
                    x.errors,
                    x.blocked,
                    x.unpriced,
                    x.cost_usd,
                )
                for w in r.weeks
                for x in r.week_rows(w)
            ],
        )
    ]


def write(out_dir: Path, html_name: str, html: str, tables: Sequence[Table]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / html_name]
    paths[0].write_text(html, encoding="utf-8")
    for t in tables:
        path = out_dir / t.name
        path.write_text(t.csv(), encoding="utf-8")
        paths.append(path)
    return paths
