"""Report pages and CSV from the report model: exact totals, contested records, group rule."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from trustlog.governance.roles import load_roles
from trustlog.registry import registry
from trustlog.reports import render
from trustlog.reports.model import (
    OTHER,
    PeriodError,
    TeamReport,
    TeamWeekRow,
    annotations_from_rows,
    annotations_in,
    parse_iso_week,
    parse_month,
)
from trustlog.reports.policy import policy_page
from trustlog.reports.sample import merge_small_groups, sample_finance, sample_reports
from trustlog.settings import CONFIG_DIR


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _total(html: str, key: str) -> Decimal:
    m = re.search(rf'data-total="{key}" data-value="([^"]+)"', html)
    assert m, key
    return Decimal(m.group(1))


def test_periods() -> None:
    assert parse_month("2026-11") == date(2026, 11, 1)
    assert parse_iso_week("2026-W47") == date(2026, 11, 16)
    assert parse_iso_week("2026-W01") == date(2025, 12, 29)
    for bad in ("2026-13", "11-2026", "2026-11-01"):
        with pytest.raises(PeriodError):
            parse_month(bad)
    for bad in ("2026-47", "2026-W54", "2025-W53"):
        with pytest.raises(PeriodError):
            parse_iso_week(bad)


def test_finance_html_and_csv_carry_the_same_exact_numbers() -> None:
    r = sample_finance(date(2026, 10, 1))
    html = render.render_finance(r)
    tables = {t.name: _csv(t.csv()) for t in render.finance_tables(r)}
    by_tt = tables["finance-2026-10-by-team-tool.csv"]
    csv_total = sum((Decimal(x["cost_usd"]) for x in by_tt), Decimal(0))
    want = sum((x.cost_usd for x in r.by_team_tool), Decimal(0))
    assert csv_total == want == _total(html, "cost_usd")
    assert sum(int(x["requests"]) for x in by_tt) == _total(html, "requests")
    assert sum(int(x["unpriced"]) for x in by_tt) == _total(html, "unpriced") > 0
    by_team = tables["finance-2026-10-by-team.csv"]
    assert sum((Decimal(x["net_cost_usd"]) for x in by_team), Decimal(0)) == _total(
        html, "net_cost_usd"
    )
    by_day = tables["finance-2026-10-by-day.csv"]
    assert sum((Decimal(x["cost_usd"]) for x in by_day), Decimal(0)) == want
    # every team row of the HTML table shows the CSV's exact value
    for x in by_team:
        row = re.search(rf'<tr data-team="{re.escape(x["team"])}">(.*?)</tr>', html, re.S)
        assert row and f'data-value="{x["cost_usd"]}"' in row.group(1)
    assert 'id="unpriced-warning"' in html
    assert "SAMPLE" not in html  # only the sample page is marked
    for chart in ("spend-by-team", "spend-by-tool", "spend-by-day", "credits-applied"):
        assert f'data-chart="{chart}"><svg' in html
    # self-contained: nothing to fetch (the browser test also watches for requests)
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_contested_records_section() -> None:
    r = sample_finance(date(2026, 10, 1))
    empty = render.render_finance(type(r)(**{**r.__dict__, "annotations": ()}))
    assert 'data-contested="none">None.' in empty
    rows = annotations_from_rows(
        [
            {"team": "support", "tool": "chat", "day": "2026-10-03", "kind": "not_me",
             "status": "open", "note": "<script>alert(1)</script> " + "x" * 400},
            {"team": "support", "tool": "chat", "day": "2026-11-03", "kind": "not_me",
             "status": "open"},
        ]
    )  # fmt: skip
    shown = annotations_in(rows, date(2026, 10, 1), date(2026, 11, 1))
    assert len(shown) == 1
    html = render.render_finance(type(r)(**{**r.__dict__, "annotations": tuple(shown)}))
    assert 'data-table="contested"' in html and "<script>alert" not in html
    assert "&lt;script&gt;" in html and "x" * 200 not in html
    assert annotations_in(rows, date(2026, 10, 1), date(2026, 12, 1), ["billing"]) == []
    with pytest.raises(ValueError, match="missing kind"):
        annotations_from_rows([{"team": "a", "tool": "b", "day": "2026-10-01", "status": "x"}])


def _row(week: date, tool: str, people: int, cost: str) -> TeamWeekRow:
    return TeamWeekRow(week, tool, people, 10, 100, 10, 0, 0, 0, Decimal(cost))


def test_group_rule_of_the_sample_matches_the_manager_view() -> None:
    w = date(2026, 11, 16)
    rows = [_row(w, "a", 6, "1"), _row(w, "b", 2, "2"), _row(w, "c", 3, "3")]
    merged = merge_small_groups(rows, 5)
    assert [(r.tool, r.people, r.cost_usd) for r in merged] == [
        ("a", 6, Decimal(1)),
        (OTHER, 5, Decimal(5)),
    ]
    assert [r.tool for r in merge_small_groups([_row(w, "a", 6, "1"), _row(w, "b", 4, "1")], 5)] == ["a"]  # fmt: skip
    assert merge_small_groups([_row(w, "a", 2, "1"), _row(w, "b", 2, "1")], 5) == []


def test_team_page_shows_merging_and_hidden_weeks_without_pseudonyms() -> None:
    w = date(2026, 11, 16)
    r = TeamReport(
        "support", w, "mgr_support", datetime.now(UTC), 5,
        (_row(w, "chat", 7, "4.5"), _row(w, OTHER, 5, "1.25")),
    )  # fmt: skip
    html = render.render_team(r)
    assert "merged into (other)" in html and "merged: tools used by fewer than 5 people" in html
    assert html.count("not shown: fewer than 5 people") == 3  # the three earlier weeks
    assert 'data-value="5.75"' in html  # the week's total of shown tools
    (t,) = render.team_tables(r)
    assert t.name == "team-support-2026-W47.csv"
    assert [(x["tool"], x["cost_usd"]) for x in _csv(t.csv())] == [("chat", "4.5"), (OTHER, "1.25")]


def test_sample_page_is_marked_and_shows_every_reader() -> None:
    reg = registry()
    cfg = load_roles(CONFIG_DIR / "roles.yaml")
    f, t, e = sample_reports(reg, cfg, today=date(2026, 11, 28))
    html = render.render_sample(f, t, e, policy_page(reg, cfg))
    assert 'id="sample-banner"' in html and "<title>SAMPLE" in html
    for anchor in ('id="finance"', 'id="team-lead"', 'id="employee"', 'id="contested"'):
        assert anchor in html
    assert f.label == "2026-10" and t.label == "2026-W46"
    assert OTHER in {r.tool for r in t.rows}  # the group rule is visible
    assert "your pseudonym" in html and "@" not in html
    for col in e.columns:
        assert f"<th>{col}</th>" in html
