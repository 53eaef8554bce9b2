"""`trustlog policy render` and `trustlog report finance | team | sample`.

Mounted by trustlog/cli.py. Reports read ClickHouse as a role account (finance or manager)
with its own password: TRUSTLOG_ACCOUNT_PASSWORD, else the local stack's generated one
(`trustlog roles password NAME`). Exit codes: 0 written, 1 refused or failed (the message says
why), 2 bad input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from trustlog.governance import roles
from trustlog.governance.cli import StateOpt, _settings
from trustlog.registry import RegistryError, registry
from trustlog.reports import render
from trustlog.reports.model import (
    Annotation,
    PeriodError,
    next_month,
    parse_iso_week,
    parse_month,
)
from trustlog.reports.policy import policy_page
from trustlog.settings import GovernanceSettings, default_state_dir

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

policy_app = typer.Typer(no_args_is_help=True, help="The plain-language policy page.")
report_app = typer.Typer(
    no_args_is_help=True, help="Finance and team lead reports, and the pre-launch sample."
)
console = Console(stderr=True)

OutDir = Annotated[Path, typer.Option("--out", help="Directory for the HTML page and CSV files")]
PasswordEnv = "TRUSTLOG_ACCOUNT_PASSWORD"


def _fail(message: str, code: int) -> typer.Exit:
    console.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


def _roles(s: GovernanceSettings) -> roles.RolesConfig:
    try:
        return roles.load_roles(s.roles_file)
    except roles.RolesError as exc:
        raise _fail(str(exc), 2) from None


def _contested(
    client: Client, database: str, start: date, end: date, team: str | None
) -> list[Annotation]:
    """The contests of [start, end) as this account may see them (contest_annotations: no
    person in it; a manager sees only own teams and large enough groups, by row policy)."""
    from trustlog.governance.contests import annotations

    return [
        Annotation(
            team=a.team,
            tool=a.tool,
            day=a.day,
            kind=a.kind,
            status=a.status,
            outcome=a.outcome,
            note=a.outcome_label,  # a fixed phrase, never the employee's or decider's words
        )
        for a in annotations(client, start=start, end=end, team=team, database=database)
    ]


@contextmanager
def _steps(first: str) -> Iterator[Progress]:
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as prog:
        prog.add_task(first, total=None)
        yield prog


def _say(prog: Progress, what: str) -> None:
    prog.update(prog.task_ids[0], description=what)


def _written(paths: list[Path]) -> None:
    for p in paths:
        console.print(f"wrote {p}", markup=False, highlight=False)


# --------------------------------------------------------------------------- policy


@policy_app.command("render")
def policy_render(
    out: Annotated[
        Path | None, typer.Option("--out", help="File to write; standard output if omitted")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="html or md (default: from --out, else html)")
    ] = None,
    state_dir: StateOpt = None,
) -> None:
    """The one-page policy, generated from schemas/fields.yaml and config/roles.yaml."""
    fmt = fmt or (
        "md" if out is not None and out.suffix.lower() in (".md", ".markdown") else "html"
    )
    if fmt not in ("html", "md"):
        raise _fail(f"--format must be html or md, got {fmt!r}", 2)
    s = _settings(state_dir)
    try:
        page = policy_page(registry(), _roles(s))
    except RegistryError as exc:
        raise _fail(str(exc), 2) from None
    text = render.render_policy(page, fmt)
    if out is None:
        print(text, end="")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    _written([out])


# --------------------------------------------------------------------------- reports


def _account(config: roles.RolesConfig, name: str | None, role: str, team: str | None) -> str:
    if name is not None:
        acc = config.get(name)
        if acc is None or acc.role != role:
            raise _fail(f"{name!r} is not a {role} account in the roles config", 2)
        if team is not None and team not in acc.teams:
            raise _fail(f"{name} may not read team {team!r} (its teams: {', '.join(acc.teams)})", 1)
        return name
    fits = [a for a in config.by_role(role) if team is None or team in a.teams]
    if not fits:
        what = f"a {role} account" + (f" for team {team!r}" if team else "")
        raise _fail(f"the roles config has no {what}", 1)
    return fits[0].name


def _client(s: GovernanceSettings, config: roles.RolesConfig, account: str) -> Client:
    from trustlog.reports.queries import ReportError, account_client, account_password

    try:
        password = os.environ.get(PasswordEnv) or account_password(
            default_state_dir(), config, account
        )
        return account_client(s, account, password)
    except ReportError as exc:
        raise _fail(str(exc), 1) from None


@report_app.command("finance")
def report_finance(
    month: Annotated[str, typer.Option("--month", help="e.g. 2026-11")],
    out: OutDir = Path("reports"),
    account: Annotated[
        str | None, typer.Option("--account", help="Finance account (default: the first)")
    ] = None,
    state_dir: StateOpt = None,
) -> None:
    """Monthly spend for finance: HTML with charts plus CSV, read as the finance account."""
    from trustlog.reports.queries import finance_report

    try:
        first = parse_month(month)
    except PeriodError as exc:
        raise _fail(str(exc), 2) from None
    s = _settings(state_dir)
    config = _roles(s)
    name = _account(config, account, "finance", None)
    with _steps(f"logging in to ClickHouse as {name}") as prog:
        client = _client(s, config, name)
        _say(prog, f"reading {month} totals as {name}")
        try:
            notes = _contested(client, s.ch_database, first, next_month(first), None)
            r = finance_report(client, s.ch_database, first, account=name, annotations=notes)
        except Exception as exc:
            raise _fail(f"ClickHouse refused or failed the finance queries: {exc}", 1) from None
        _say(prog, "drawing charts and writing files")
        paths = render.write(
            out, f"finance-{r.label}.html", render.render_finance(r), render.finance_tables(r)
        )
    console.print(
        f"{r.label}: {r.total_requests:,} calls, {render.usd(r.total_cost)} gross, "
        f"{render.usd(r.total_net)} net, {r.total_unpriced:,} unpriced calls",
        markup=False,
        highlight=False,
    )
    _written(paths)


@report_app.command("team")
def report_team(
    week: Annotated[str, typer.Option("--week", help="ISO week, e.g. 2026-W47")],
    team: Annotated[str, typer.Option("--team", help="The team (one of the account's teams)")],
    out: OutDir = Path("reports"),
    account: Annotated[
        str | None,
        typer.Option("--account", help="Manager account (default: the one for --team)"),
    ] = None,
    state_dir: StateOpt = None,
) -> None:
    """A team lead's weekly trend by tool, read as the manager account (own team only)."""
    from trustlog.reports.queries import team_report

    try:
        monday = parse_iso_week(week)
    except PeriodError as exc:
        raise _fail(str(exc), 2) from None
    s = _settings(state_dir)
    config = _roles(s)
    name = _account(config, account, "manager", team)
    with _steps(f"logging in to ClickHouse as {name}") as prog:
        client = _client(s, config, name)
        _say(prog, f"reading team {team}, weeks up to {week}, as {name}")
        try:
            notes = _contested(client, s.ch_database, monday, monday + timedelta(days=7), team)
            r = team_report(
                client,
                s.ch_database,
                team,
                monday,
                account=name,
                min_group_size=config.min_group_size,
                annotations=notes,
            )
        except Exception as exc:
            raise _fail(f"ClickHouse refused or failed the team query: {exc}", 1) from None
        _say(prog, "drawing charts and writing files")
        paths = render.write(
            out,
            f"team-{render.slug(team)}-{r.label}.html",
            render.render_team(r),
            render.team_tables(r),
        )
    shown = "shown" if r.week in r.shown_weeks else "not shown (too few people or not settled)"
    console.print(f"team {team}, week {r.label}: {shown}", markup=False, highlight=False)
    _written(paths)


@report_app.command("sample")
def report_sample(
    out: OutDir = Path("reports"),
    state_dir: StateOpt = None,
) -> None:
    """A SAMPLE of every report from made-up data (no database), to show staff before launch."""
    from trustlog.reports.sample import sample_reports

    s = _settings(state_dir)
    config = _roles(s)
    reg = registry()
    with _steps("making up a month of usage") as prog:
        f, t, e = sample_reports(reg, config)
        _say(prog, "drawing charts and writing files")
        html = render.render_sample(f, t, e, policy_page(reg, config))
        tables = [
            render.Table("SAMPLE-" + tb.name, tb.header, tb.rows)
            for tb in [*render.finance_tables(f), *render.team_tables(t)]
        ]
        paths = render.write(out, "SAMPLE-report.html", html, tables)
    _written(paths)
