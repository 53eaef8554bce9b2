"""Reports on the real stack, read as the role accounts, and opened in a real browser.

Known calls are inserted into `events` of the session stack's database (the rollups fill
through their materialized views, as in production) in two periods nobody else writes to: a
month three or more months back (finance) and settled weeks of team 'support' (team lead).
The reports are made through the CLI, which logs in as fin_ops / mgr_support from
config/roles.yaml with the stack's generated passwords; their numbers must equal Decimal sums
computed here, the CSV must match the HTML, and no pseudonym may appear anywhere.
"""

from __future__ import annotations

import csv
import random
import re
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from typer.testing import CliRunner

from services.aggregator.app import CREDIT_COLUMNS, EVENT_COLUMNS
from tests.browser import browser, check_page  # noqa: F401  (fixture)
from trustlog.cli import app
from trustlog.governance import roles
from trustlog.reports import render
from trustlog.reports.model import OTHER, iso_week_label, next_month
from trustlog.settings import GovernanceSettings, default_state_dir
from trustlog.storage import admin_client

RUN = uuid.uuid4().hex[:8]
TODAY = datetime.now(UTC).date()
THIS_MONDAY = TODAY - timedelta(days=TODAY.weekday())


@dataclass(frozen=True)
class Call:
    when: datetime
    team: str
    tool: str
    provider: str
    person: str
    priced: bool
    cost: Decimal
    status: str = "ok"


def _pseudonym(i: int) -> str:
    return f"p{RUN}{i:04d}"


def _row(i: int, c: Call) -> list[Any]:
    row = {
        "event_id": f"rpt-{RUN}-{i}",
        "event_time": c.when,
        "producer": "reports-test",
        "tool": c.tool,
        "model": "m-" + c.provider,
        "provider": c.provider,
        "workspace": f"ws-{RUN}",
        "user_pseudonym": c.person,
        "pseudonym_key_version": "1",
        "team": c.team,
        "task_label": "other",
        "input_tokens": 1000,
        "output_tokens": 100,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "status": c.status,
        "retry_count": 0,
        "policy_flags": [],
        "sensitive_classes": {},
        "content_chars": 10,
        "cost_usd": c.cost,
        "priced": 1 if c.priced else 0,
        "price_source": "test",
        "price_version": "v",
        "kafka_partition": 0,
        "kafka_offset": i,
        "kafka_topic": f"reports-test-{RUN}",
    }
    return [row[k] for k in EVENT_COLUMNS]


def _empty(ch: Client, db: str, sql: str, **params: Any) -> bool:
    return int(ch.query(sql.replace("{db}", db), parameters=params).result_rows[0][0]) == 0


def _pick_month(ch: Client, db: str) -> date:
    """A month within the rollup retention that holds no spend yet (a reused state dir)."""
    month = TODAY.replace(day=1)
    for back in range(1, 12):
        month = (month - timedelta(days=1)).replace(day=1)
        if back >= 3 and _empty(
            ch, db, "SELECT count() FROM {db}.spend_daily WHERE toStartOfMonth(day) = {m:Date}",
            m=month,
        ):  # fmt: skip
            return month
    raise AssertionError("no empty month in the stack to test with")


def _pick_week(ch: Client, db: str) -> date:
    """A settled week (shown by the manager view) with no 'support' rows around it."""
    for back in (3, 4, 5):
        week = THIS_MONDAY - timedelta(days=7 * back)
        if _empty(
            ch, db, "SELECT count() FROM {db}.events WHERE team = 'support' AND "
            "event_time >= {a:Date} AND event_time < {b:Date}",
            a=week - timedelta(days=21), b=week + timedelta(days=7),
        ):  # fmt: skip
            return week
    raise AssertionError("no free settled week for team support in the stack")


def _finance_calls(month: date, rng: random.Random) -> list[Call]:
    out = []
    lanes = [("fin-a", "chat", "openai"), ("fin-a", "code", "anthropic"),
             ("fin-b", "chat", "openai"), ("fin-b", "drafts", "")]  # fmt: skip
    day = month
    while day < next_month(month):
        for team, tool, provider in lanes:
            for k in range(rng.randint(0, 4)):
                priced = bool(provider) and rng.random() > 0.1
                cost = Decimal(rng.randint(1, 2 * 10**9)) / 10**9 if priced else Decimal(0)
                when = datetime(day.year, day.month, day.day, 8 + k, tzinfo=UTC)
                out.append(Call(when, team, tool, provider, _pseudonym(rng.randint(0, 30)), priced, cost))  # fmt: skip
        day += timedelta(days=1)
    return out


# team 'support' people per tool, in the week and the week before: chat 6; code 2 + search 3
# merge into (other) = 5; the week before code 2 + search 2 = 4, so (other) is left out.
TEAM_PEOPLE = {0: {"chat": 6, "code": 2, "search": 3}, 1: {"chat": 6, "code": 2, "search": 2}}


def _team_calls(week: date, rng: random.Random) -> list[Call]:
    out = []
    n = 100
    for back, tools in TEAM_PEOPLE.items():
        monday = week - timedelta(days=7 * back)
        for tool, people in tools.items():
            for _ in range(people):
                n += 1
                for k in range(rng.randint(1, 4)):
                    when = datetime(monday.year, monday.month, monday.day, 9, tzinfo=UTC) + timedelta(days=k, minutes=n)  # fmt: skip
                    cost = Decimal(rng.randint(1, 5_000_000)) / 10**9
                    out.append(Call(when, "support", tool, "openai", _pseudonym(n), True, cost))
    # another team the same week, 5 people: never in the support lead's report
    for i in range(5):
        when = datetime(week.year, week.month, week.day, 10, tzinfo=UTC)
        out.append(Call(when, "engineering", "secret-tool", "openai", _pseudonym(900 + i), True, Decimal("1.5")))  # fmt: skip
    return out


@dataclass
class World:
    ch: Client
    db: str
    month: date
    week: date
    finance: list[Call]
    team: list[Call]
    credit: Decimal
    out: Path


@pytest.fixture(scope="module")
def world(stack: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    s = GovernanceSettings()
    ch = admin_client(s)
    db = s.ch_database
    month, week = _pick_month(ch, db), _pick_week(ch, db)
    rng = random.Random(RUN)
    fin, team = _finance_calls(month, rng), _team_calls(week, rng)
    rows = [_row(i, c) for i, c in enumerate(fin + team)]
    for k in range(0, len(rows), 400):
        ch.insert(f"{db}.events", rows[k : k + 400], column_names=EVENT_COLUMNS)
    # a prepaid credit for team fin-a, smaller than its spend: drawn in full this month
    credit = Decimal("12.5")
    ch.insert(
        f"{db}.credits",
        [
            [
                f"rpt-{RUN}",
                "fin-a",
                "",
                credit,
                month,
                next_month(month) - timedelta(days=1),
                "reports-test",
                1,
                0,
            ]
        ],
        column_names=CREDIT_COLUMNS,
    )
    _contest(
        ch, db, "fin-a", "chat", month + timedelta(days=2), "shared_account", ["open", "upheld"]
    )
    # support on the report week's Monday: chat had 6 people (the lead sees it), code 2 (not)
    _contest(ch, db, "support", "chat", week, "not_me", ["open"])
    _contest(ch, db, "support", "code", week, "automation_misfired", ["open", "under_review"])
    out = Path(tmp_path_factory.mktemp("reports"))
    yield World(ch, db, month, week, fin, team, credit, out)
    ch.command(
        f"INSERT INTO {db}.credits (name, team, provider, amount_usd, starts, expires, source, "
        "version, is_deleted) VALUES ({n:String}, '', '', 0, today(), today(), 'reports-test', 2, 1)",
        parameters={"n": f"rpt-{RUN}"},
    )
    ch.close()


CONTEST_CONTEXT = f"context-canary-{RUN}"
CONTEST_NOTE = f"note-canary-{RUN}"


def _contest(
    ch: Client, db: str, team: str, tool: str, day: date, kind: str, states: list[str]
) -> None:
    """A contest as trustlog contest open/review/resolve store it (tests/integration/
    test_contests.py covers that path); here only where reports place it matters."""
    cid = uuid.uuid4().hex[:16]
    now = datetime.now(UTC)
    rows = [
        [cid, v, now + timedelta(seconds=v), state, states[v - 2] if v > 1 else "",
         "" if v == 1 else "sys_owner", "" if v == 1 else CONTEST_NOTE, "event",
         str(uuid.uuid4()), "p_" + uuid.uuid4().hex, kind, CONTEST_CONTEXT, team, tool, day,
         Decimal("0.25"), now]
        for v, state in enumerate(states, start=1)
    ]  # fmt: skip
    ch.insert(
        f"{db}.contests",
        rows,
        column_names=["contest_id", "version", "at", "state", "from_state", "actor", "note",
                      "record_kind", "record_id", "pseudonym", "kind", "context", "team",
                      "tool", "record_day", "cost_usd", "opened_at"],
    )  # fmt: skip


def _contested_rows(html: str) -> list[list[str]]:
    table = _values(html, r'<table data-table="contested">(.*?)</table>')
    if not table:
        return []
    return [re.findall(r"<td>(.*?)</td>", tr) for tr in _values(table[0], r"<tr>(.*?)</tr>")[1:]]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _values(html: str, pattern: str) -> list[str]:
    return re.findall(pattern, html, re.S)


def _no_pseudonyms(paths: list[Path], calls: list[Call]) -> None:
    people = {c.person for c in calls}
    for p in paths:
        text = p.read_text()
        assert not [x for x in people if x in text], p
        assert f"p{RUN}" not in text and "user_pseudonym" not in text, p
        assert CONTEST_CONTEXT not in text and CONTEST_NOTE not in text, p


@pytest.mark.integration
def test_finance_report_as_the_finance_account(world: World, browser: Any) -> None:  # noqa: F811
    label = f"{world.month:%Y-%m}"
    res = CliRunner().invoke(app, ["report", "finance", "--month", label, "--out", str(world.out)])
    assert res.exit_code == 0, res.output
    html_path = world.out / f"finance-{label}.html"
    html = html_path.read_text()
    assert "as <code>fin_ops</code>" in html

    # independent Decimal sums of the inserted calls
    by_tt: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for c in world.finance:
        a = by_tt[(c.team, c.tool)]
        a[0] += 1
        a[1] += not c.priced
        a[2] += c.cost
    total = sum((c.cost for c in world.finance), Decimal(0))
    unpriced = sum(1 for c in world.finance if not c.priced)
    assert unpriced > 0

    rows = _read_csv(world.out / f"finance-{label}-by-team-tool.csv")
    got = {(r["team"], r["tool"]): [int(r["requests"]), int(r["unpriced"]), Decimal(r["cost_usd"])]
           for r in rows}  # fmt: skip
    assert got == {k: v for k, v in by_tt.items()}
    day_rows = _read_csv(world.out / f"finance-{label}-by-day.csv")
    assert sum((Decimal(r["cost_usd"]) for r in day_rows), Decimal(0)) == total
    team_rows = {r["team"]: r for r in _read_csv(world.out / f"finance-{label}-by-team.csv")}
    gross_a = sum((c.cost for c in world.finance if c.team == "fin-a"), Decimal(0))
    assert gross_a > world.credit
    assert Decimal(team_rows["fin-a"]["credit_usd"]) == world.credit
    assert Decimal(team_rows["fin-a"]["net_cost_usd"]) == gross_a - world.credit
    assert Decimal(team_rows["fin-b"]["credit_usd"]) == 0
    credits = _read_csv(world.out / f"finance-{label}-credits.csv")
    assert [(c["credit"], Decimal(c["applied_usd"])) for c in credits] == [
        (f"rpt-{RUN}", world.credit)
    ]

    # the HTML carries the same exact numbers as the CSV and the database
    assert _values(html, r'data-total="cost_usd" data-value="([^"]+)"') == [render.exact(Decimal(sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))))]  # fmt: skip
    assert Decimal(_values(html, r'data-total="cost_usd" data-value="([^"]+)"')[0]) == total
    assert Decimal(_values(html, r'data-total="net_cost_usd" data-value="([^"]+)"')[0]) == total - world.credit  # fmt: skip
    for team, r in team_rows.items():
        cells = _values(html, rf'<tr data-team="{team}">(.*?)</tr>')[0]
        assert (
            f'data-value="{r["cost_usd"]}"' in cells
            and f'data-value="{r["net_cost_usd"]}"' in cells
        )
    db_total = world.ch.query(
        f"SELECT sum(cost_usd) FROM {world.db}.spend_daily WHERE toStartOfMonth(day) = {{m:Date}}",
        parameters={"m": world.month},
    ).result_rows[0][0]
    assert Decimal(db_total) == total
    _no_pseudonyms(sorted(world.out.glob(f"finance-{label}*")), world.finance)
    # the contest of that month, read through contest_annotations as the finance account
    assert _contested_rows(html) == [
        [f"{world.month + timedelta(days=2)}", "fin-a", "chat", "shared_account", "upheld",
         "upheld", "upheld: shared account"]
    ]  # fmt: skip

    page = check_page(browser, html_path, f"finance-{label}")
    assert page.errors == []
    for chart in ("spend-by-team", "spend-by-tool", "spend-by-day", "credits-applied"):
        w, h = page.charts[chart]
        assert w > 200 and h > 50, (chart, w, h)
    shown, exact = page.totals["cost_usd"]
    assert shown == render.usd(total) and Decimal(exact) == total
    assert page.totals["unpriced"][0] == f"{unpriced:,}"
    assert "used a model without a known price" in page.text
    assert page.screenshot.stat().st_size > 10_000


@pytest.mark.integration
def test_team_report_as_the_manager_account(world: World, browser: Any) -> None:  # noqa: F811
    label = iso_week_label(world.week)
    res = CliRunner().invoke(
        app, ["report", "team", "--week", label, "--team", "support", "--out", str(world.out)]
    )
    assert res.exit_code == 0, res.output
    html_path = world.out / f"team-support-{label}.html"
    html = html_path.read_text()
    assert "as <code>mgr_support</code>" in html

    def cost(back: int, tools: set[str]) -> Decimal:
        monday = world.week - timedelta(days=7 * back)
        return sum(
            (c.cost for c in world.team if c.team == "support" and c.tool in tools
             and monday <= c.when.date() < monday + timedelta(days=7)),
            Decimal(0),
        )  # fmt: skip

    prev = iso_week_label(world.week - timedelta(days=7))
    rows = {(r["week"], r["tool"]): r for r in _read_csv(world.out / f"team-support-{label}.csv")}
    assert set(rows) == {(label, "chat"), (label, OTHER), (prev, "chat")}
    assert {r["team"] for r in rows.values()} == {"support"}
    assert Decimal(rows[(label, "chat")]["cost_usd"]) == cost(0, {"chat"})
    assert Decimal(rows[(label, OTHER)]["cost_usd"]) == cost(0, {"code", "search"})
    assert int(rows[(label, OTHER)]["people"]) == 5
    assert Decimal(rows[(prev, "chat")]["cost_usd"]) == cost(1, {"chat"})
    for (week, tool), r in rows.items():
        cells = _values(html, rf'<tr data-week="{week}" data-tool="{re.escape(tool)}">(.*?)</tr>')[
            0
        ]
        assert f'data-value="{r["cost_usd"]}"' in cells
    assert "merged: tools used by fewer than 5 people" in html
    for hidden in ("code", "search", "engineering", "secret-tool"):
        assert f">{hidden}<" not in html and f",{hidden}," not in html
    _no_pseudonyms(sorted(world.out.glob(f"team-support-{label}*")), world.team)
    # chat's contest shows; code's (2 people that day) is withheld by ClickHouse itself
    assert _contested_rows(html) == [
        [f"{world.week}", "support", "chat", "not_me", "open", "—", "contested, not yet reviewed"]
    ]

    page = check_page(browser, html_path, f"team-support-{label}")
    assert page.errors == []
    w, h = page.charts["weekly-spend-by-tool"]
    assert w > 200 and h > 50
    assert "merged into (other)" in page.text and "secret-tool" not in page.text

    # the lead may not ask for another team: refused before, and hidden by ClickHouse anyway
    res = CliRunner().invoke(
        app, ["report", "team", "--week", label, "--team", "engineering", "--account",
              "mgr_support", "--out", str(world.out)],
    )  # fmt: skip
    assert res.exit_code == 1 and "may not read team 'engineering'" in res.output
    from trustlog.reports.queries import account_client, account_password, team_report

    s = GovernanceSettings()
    cfg = roles.load_roles(s.roles_file)
    mgr = account_client(
        s, "mgr_support", account_password(default_state_dir(), cfg, "mgr_support")
    )
    direct = team_report(mgr, s.ch_database, "engineering", world.week, account="mgr_support", min_group_size=5)  # fmt: skip
    assert direct.rows == ()


def test_sample_report_in_the_browser(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    res = CliRunner().invoke(app, ["report", "sample", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    page = check_page(browser, tmp_path / "SAMPLE-report.html", "sample")
    assert page.errors == []
    assert page.title.startswith("SAMPLE")
    assert "SAMPLE — made-up numbers" in page.text
    for chart in ("spend-by-team", "spend-by-tool", "spend-by-day", "weekly-spend-by-tool"):
        w, h = page.charts[chart]
        assert w > 200 and h > 50, chart
    for heading in ("What finance sees", "What a team lead sees", "What you see about yourself",
                    "Contested records", "never used for"):  # fmt: skip
        assert heading in page.text
    assert all(p.name.startswith("SAMPLE-") for p in tmp_path.iterdir())
